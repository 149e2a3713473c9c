//! The code on the desktop's clipboard (`code --copy`, `speak --copy`, `[desktop] copy`), on a
//! real X server (Xvfb, read back with `xclip -o`) and a real Wayland compositor (sway's
//! headless backend, read back with `wl-paste`): there while the code is valid, gone when it
//! expires, and left alone when something else was copied meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use codereader_e2e::{AlsaCapture, codereader_bin, voices_dir};

const SECRET_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// A time after any build (2033-05-18), 20 s into its 30 s step; its code is 279037.
const T: u64 = 2_000_000_000;
const CODE_AT_T: &str = "279037";

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A desktop session: its environment for clients, and how to read and replace the clipboard.
struct Session {
    _server: Killed,
    env: Vec<(String, String)>,
    paste: &'static [&'static str],
    copy: &'static [&'static str],
}

fn run(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

impl Session {
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = run(program, args);
        c.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// What the clipboard holds (`None`: nothing).
    fn clipboard(&self) -> Option<String> {
        let out = self
            .command(self.paste[0], &self.paste[1..])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.paste[0]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Another program copies `text` (and keeps serving it until killed).
    fn copy_other(&self, text: &str) -> Killed {
        use std::io::Write;
        let mut child = Killed(
            self.command(self.copy[0], &self.copy[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        child
            .0
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        wait_until(
            10,
            || self.clipboard().as_deref() == Some(text),
            "the other copy",
        );
        child
    }
}

/// Xvfb on a free display number.
fn x11(dir: &Path) -> Session {
    let ready = dir.join("x-display");
    // Xvfb picks a free display and writes its number to the file descriptor given.
    use std::os::unix::process::CommandExt;
    let server = Command::new("sh")
        .args(["-c", "exec Xvfb -nolisten tcp -displayfd 3 3>\"$1\"", "sh"])
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Xvfb ({e}); apt-get install xvfb"));
    let server = Killed(server);
    wait_until(
        20,
        || fs::read_to_string(&ready).is_ok_and(|s| s.ends_with('\n')),
        "Xvfb to start",
    );
    let display = format!(":{}", fs::read_to_string(&ready).unwrap().trim());
    Session {
        _server: server,
        env: vec![("DISPLAY".into(), display)],
        paste: &["xclip", "-o", "-selection", "clipboard"],
        copy: &["xclip", "-quiet", "-selection", "clipboard", "-in"],
    }
}

/// sway's headless backend (a wlroots compositor with the data-control protocol); sway
/// refuses to run as root, so it runs as `nobody`.
fn wayland(dir: &Path) -> Session {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = dir.join("wayland-run");
    fs::create_dir(&runtime).unwrap();
    let chown = run("chown", &["65534:65534"])
        .arg(&runtime)
        .status()
        .unwrap();
    assert!(chown.success());
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let conf = dir.join("sway.conf");
    fs::write(&conf, "output HEADLESS-1 resolution 640x480\n").unwrap();
    let server = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sway",
            "-c",
        ],
    )
    .arg(&conf)
    .env("WLR_BACKENDS", "headless")
    .env("WLR_LIBINPUT_NO_DEVICES", "1")
    .env("WLR_RENDERER", "pixman")
    .env("XDG_RUNTIME_DIR", &runtime)
    .env("HOME", &runtime)
    .env_remove("DISPLAY")
    .env_remove("WAYLAND_DISPLAY")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap_or_else(|e| panic!("cannot start sway ({e}); apt-get install sway"));
    let server = Killed(server);
    let socket: PathBuf = runtime.join("wayland-1");
    wait_until(20, || socket.exists(), "sway's Wayland socket");
    Session {
        _server: server,
        env: vec![
            ("WAYLAND_DISPLAY".into(), socket.display().to_string()),
            ("XDG_RUNTIME_DIR".into(), runtime.display().to_string()),
        ],
        paste: &["wl-paste", "--no-newline"],
        copy: &["wl-copy", "--foreground"],
    }
}

fn wait_until(secs: u64, mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A state directory with the RFC 6238 TOTP token, and a config file.
fn setup(dir: &Path, config: &str) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let conf = dir.join("config.toml");
    fs::write(&conf, config).unwrap();
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    let out = Command::new(codereader_bin())
        .args(["enroll", "--uri", &uri])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_CONFIG", &conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    (state, conf)
}

fn codereader(session: &Session, state: &Path, conf: &Path, args: &[&str]) -> Output {
    session
        .command(codereader_bin().to_str().unwrap(), args)
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_CONFIG", conf)
        .env("CODEREADER_VOICES", voices_dir())
        .output()
        .unwrap()
}

fn check(session: &Session, dir: &Path) {
    let (state, conf) = setup(dir, "");
    // 2 s before the code expires: on the clipboard at once, off it at expiry.
    let copied = Instant::now();
    let out = codereader(
        session,
        &state,
        &conf,
        &["code", "--copy", "--at", &(T + 8).to_string()],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CODE_AT_T);
    assert!(log.contains("on the clipboard for 2 s"), "{log}");
    assert_eq!(session.clipboard().as_deref(), Some(CODE_AT_T), "{log}");
    wait_until(
        10,
        || session.clipboard().is_none(),
        "the code to leave the clipboard",
    );
    assert!(
        copied.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        copied.elapsed()
    );

    // Something else copied meanwhile stays after the code's expiry (3 s here).
    let copied = Instant::now();
    let out = codereader(
        session,
        &state,
        &conf,
        &["code", "--copy", "--at", &(T + 7).to_string()],
    );
    assert!(out.status.success());
    assert_eq!(session.clipboard().as_deref(), Some(CODE_AT_T));
    let _other = session.copy_other("a letter to the bank");
    while copied.elapsed() < Duration::from_secs(5) {
        assert_eq!(session.clipboard().as_deref(), Some("a letter to the bank"));
        thread::sleep(Duration::from_millis(200));
    }

    // `speak` with `[desktop] copy = true`: the code is spoken and on the clipboard.
    fs::write(&conf, "[desktop]\ncopy = true\n").unwrap();
    let capture = AlsaCapture::start(dir).unwrap();
    let out = session
        .command(
            codereader_bin().to_str().unwrap(),
            &["speak", "--at", &T.to_string()],
        )
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_CONFIG", &conf)
        .env("CODEREADER_VOICES", voices_dir())
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("on the clipboard for 10 s"), "{log}");
    assert_eq!(session.clipboard().as_deref(), Some(CODE_AT_T), "{log}");
    // The paced capture reads in real time: the end may still be on its way.
    let parts = || {
        let heard = capture.audio();
        heard.spans(heard.loudest_frame() * 0.01, 120).len()
    };
    wait_until(10, || parts() >= 9, "the spoken code");
}

#[test]
fn the_code_is_on_the_x11_clipboard_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let session = x11(dir.path());
    check(&session, dir.path());
    // Without a session: an error line, the code still printed.
    let (state, conf) = (dir.path().join("state"), dir.path().join("config.toml"));
    let out = Command::new(codereader_bin())
        .args(["code", "--copy", "--at", &T.to_string()])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_CONFIG", &conf)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CODE_AT_T);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither WAYLAND_DISPLAY nor DISPLAY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_code_is_on_the_wayland_clipboard_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let session = wayland(dir.path());
    check(&session, dir.path());
}
