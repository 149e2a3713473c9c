//! Every sense, through the real binaries and real services: large print on a terminal, a
//! braille display driven by a real BRLTTY (its `tt` driver writes what the display shows to
//! a pseudo-terminal, and characters typed there arrive as the display's keys), and Speech
//! Dispatcher (a real `speech-dispatcher` with its espeak-ng module writing to ALSA's `file`
//! plugin). Outputs combine and fail alone.
//!
//! Every service is started for the test on a free port or a private socket, and killed when
//! the test ends (pass or fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use codereader_e2e::{AlsaCapture, Pty, codereader_bin, voices_dir};
use tempfile::TempDir;

const SECRET_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// A time after any build (2033-05-18); 20 s into its 30 s step, so codes stay 10 s.
const T: u64 = 2_000_000_000;
/// The TOTP code at T (RFC 6238's SHA-1 secret; `device_cli` checks it against oathtool).
const CODE_AT_T: &str = "279037";

fn command(state: &Path, config: &Path) -> Command {
    let mut c = Command::new(codereader_bin());
    c.env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("CODEREADER_CONFIG", config)
        .env_remove("BRLAPI_HOST")
        .env_remove("SPEECHD_ADDRESS");
    c
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A temporary directory with a TOTP token enrolled in `state/` and `config.toml` holding
/// `config`.
fn setup(config: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let conf = dir.path().join("config.toml");
    fs::write(&conf, config).unwrap();
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    ok(&command(&state, &conf)
        .args(["enroll", "--uri", &uri])
        .output()
        .unwrap());
    (dir, state, conf)
}

/// Collects everything written to `file` (a pty master) on a thread.
fn collect(mut file: File) -> Arc<Mutex<Vec<u8>>> {
    let data = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&data);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    data
}

fn text(data: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&data.lock().unwrap()).into_owned()
}

/// Polls `done` every 20 ms; fails with `why()` after `secs` seconds.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Waits up to `secs` for the exit; the status and how long it took.
    fn wait(&mut self, secs: u64) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "no exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP port number nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `codereader run --at T` on a pseudo-terminal (its input, output and log), `env` added.
struct OnTerminal {
    run: Killed,
    /// Everything it wrote to the terminal.
    screen: Arc<Mutex<Vec<u8>>>,
    keys: File,
    _pty: Pty,
}

impl OnTerminal {
    fn start(state: &Path, conf: &Path, env: &[(&str, &str)]) -> OnTerminal {
        OnTerminal::start_sized(state, conf, env, None)
    }

    /// [`OnTerminal::start`] on a terminal of `size` columns x rows (else one that gives no
    /// size, as a pseudo-terminal nobody sized does).
    fn start_sized(
        state: &Path,
        conf: &Path,
        env: &[(&str, &str)],
        size: Option<(u16, u16)>,
    ) -> OnTerminal {
        let pty = Pty::open().unwrap();
        if let Some((columns, rows)) = size {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            rustix::termios::tcsetwinsize(&pty.master, size).unwrap();
        }
        let run = Killed(
            command(state, conf)
                .args(["run", "--at", &T.to_string()])
                .envs(env.iter().copied())
                .stdin(pty.slave.try_clone().unwrap())
                .stdout(pty.slave.try_clone().unwrap())
                .stderr(pty.slave.try_clone().unwrap())
                .spawn()
                .unwrap(),
        );
        let term = OnTerminal {
            run,
            screen: collect(pty.master.try_clone().unwrap()),
            keys: pty.master.try_clone().unwrap(),
            _pty: pty,
        };
        wait_until(10, || term.text().contains("ready"), || term.text());
        term
    }

    fn text(&self) -> String {
        text(&self.screen)
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }
}

/// The block rendering of the code at T, as `code --large` prints it to a file.
const LARGE_279037: &str = "\
██████  ██████  ██████      ██████  ██████  ██████
██████  ██████  ██████      ██████  ██████  ██████
    ██      ██  ██  ██      ██  ██      ██      ██
    ██      ██  ██  ██      ██  ██      ██      ██
██████    ██    ██████      ██  ██    ████    ██
██████    ██    ██████      ██  ██    ████    ██
██        ██        ██      ██  ██      ██    ██
██        ██        ██      ██  ██      ██    ██
██████    ██    ██████      ██████  ██████    ██
██████    ██    ██████      ██████  ██████    ██
";

#[test]
fn code_large_prints_the_code_in_block_digits_grouped_as_spoken() {
    let (_dir, state, conf) = setup("");
    let at = T.to_string();
    let plain = ok(&command(&state, &conf)
        .args(["code", "--at", &at])
        .output()
        .unwrap());
    assert_eq!(plain.trim(), CODE_AT_T);
    let large = || {
        ok(&command(&state, &conf)
            .args(["code", "--large", "--at", &at])
            .output()
            .unwrap())
    };
    // In the user's language: Danish by default, English when chosen.
    let danish = large();
    assert_eq!(
        danish,
        format!("{LARGE_279037}\ngyldig i 10 sekunder endnu\n"),
        "\n{danish}"
    );
    // Written to a file: no colour escapes.
    assert!(!danish.contains('\x1b'));
    fs::write(&conf, "language = \"en\"\n").unwrap();
    assert_eq!(
        large(),
        format!("{LARGE_279037}\nvalid for 10 more seconds\n")
    );
}

#[test]
fn run_shows_the_code_large_counts_down_and_clears_it_when_it_expires() {
    let (_dir, state, conf) = setup("outputs = [\"large\"]\nlanguage = \"en\"\n");
    let mut term = OnTerminal::start(&state, &conf, &[]);
    term.press("s");
    wait_until(
        5,
        || term.text().contains("valid for 10 more seconds"),
        || term.text(),
    );
    let shown = term.text();
    // Bright white on black, the digits as `code --large` draws them.
    assert!(shown.contains("\x1b[1;97;40m"), "{shown:?}");
    let first_line = LARGE_279037.lines().next().unwrap();
    assert!(shown.contains(first_line), "{shown}");
    let last_line = LARGE_279037.lines().last().unwrap();
    assert!(shown.contains(last_line), "{shown}");
    wait_until(
        3,
        || term.text().contains("valid for 9 more seconds"),
        || term.text(),
    );
    // At expiry (10 s after the key) the screen is cleared and nothing is drawn again.
    wait_until(
        13,
        || term.text().contains("valid for 1 more second "),
        || term.text(),
    );
    wait_until(
        3,
        || {
            let t = term.text();
            let last = t.rfind("valid for 1 more second").unwrap();
            t[last..].contains("\x1b[2J\x1b[H")
        },
        || term.text(),
    );
    // Proves a redraw does NOT come: the countdown redraws once a second, so 1.2 s after
    // the clearing covers the tick that would draw the expired code again.
    thread::sleep(Duration::from_millis(1200));
    let t = term.text();
    let cleared = t.rfind("\x1b[2J\x1b[H").unwrap();
    assert!(!t[cleared..].contains('█'), "drawn again after expiry");
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
}

/// The screen after the last clear: what a terminal shows now, escapes taken out, and
/// without the log's lines (standard error is the same terminal; a line logged just after
/// the clear lands above the picture until the next one).
fn last_screen(all: &str) -> Vec<String> {
    let start = all.rfind("\x1b[2J\x1b[H").map_or(0, |i| i + 7);
    all[start..]
        .replace("\x1b[1;97;40m", "")
        .replace("\x1b[0m", "")
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| !l.starts_with("codereader:"))
        .collect()
}

#[test]
fn run_on_a_terminal_shows_large_print_by_default_and_not_when_outputs_leave_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let alsa = [("ALSA_CONFIG_PATH", capture.config_path.as_str())];
    // No config: speech, and large print on the terminal, in the user's language (Danish).
    let (_d, state, conf) = setup("");
    let mut term = OnTerminal::start(&state, &conf, &alsa);
    term.press("s");
    wait_until(
        5,
        || term.text().contains("gyldig i 10 sekunder endnu"),
        || term.text(),
    );
    assert!(term.text().contains(LARGE_279037.lines().next().unwrap()));
    // Quitting while the code is shown takes it off the screen.
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
    // (What it wrote last may still be on its way through the pseudo-terminal.)
    let cleared = || {
        let t = term.text();
        let last_drawn = t.rfind('█').unwrap();
        t[last_drawn..].contains("\x1b[2J\x1b[H")
    };
    wait_until(3, cleared, || {
        format!(
            "the code stays on the screen after quitting: {:?}",
            term.text()
        )
    });

    // Outputs that leave `large` out: the code is spoken, never drawn.
    let (d, state, conf) = setup("outputs = [\"speech\"]\n");
    // (A capture takes one player: a FIFO read once.)
    let capture = AlsaCapture::start(d.path()).unwrap();
    let alsa = [("ALSA_CONFIG_PATH", capture.config_path.as_str())];
    let mut term = OnTerminal::start(&state, &conf, &alsa);
    term.press("s");
    wait_until(
        5,
        || term.text().contains("speaking the code"),
        || term.text(),
    );
    // The whole code is said (large print, were it on, is drawn before that ends).
    capture
        .wait_for_sound_then_quiet(
            capture.position(),
            Duration::from_millis(1500),
            Duration::from_secs(30),
        )
        .unwrap();
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
    let t = term.text();
    assert!(!t.contains('█') && !t.contains("gyldig"), "{t}");
}

#[test]
fn large_print_fits_a_narrow_terminal_and_falls_back_to_text_when_nothing_fits() {
    // An eight-digit code: 68 columns at full size.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let conf = dir.path().join("config.toml");
    fs::write(&conf, "outputs = [\"large\"]\n").unwrap();
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank&digits=8");
    ok(&command(&state, &conf)
        .args(["enroll", "--uri", &uri])
        .output()
        .unwrap());
    let small_69279037 = [
        " ███ ███ ███ ███   ███ ███ ███ ███",
        " █   █ █   █   █   █ █ █ █   █   █",
        " ███ ███ ███  █    ███ █ █  ██  █",
        " █ █   █ █    █      █ █ █   █  █",
        " ███ ███ ███  █    ███ ███ ███  █",
    ];
    for (columns, rows, expect) in [
        (80, 24, None),
        (40, 24, Some(&small_69279037[..])),
        (20, 24, Some(&[" 6927 9037"][..])),
    ] {
        let mut term = OnTerminal::start_sized(&state, &conf, &[], Some((columns, rows)));
        term.press("s");
        wait_until(5, || term.text().contains("gyldig"), || term.text());
        term.press("q");
        let (status, _) = term.run.wait(10);
        assert!(status.success(), "{}", term.text());
        // The last picture drawn (quitting clears the screen after it).
        let t = term.text();
        let drawn = &t[..t.rfind("\x1b[2J\x1b[H").unwrap()];
        let screen = last_screen(drawn);
        for line in &screen {
            assert!(
                line.chars().count() <= usize::from(columns),
                "{columns} columns: {line:?} in\n{}",
                screen.join("\n")
            );
        }
        let shown: Vec<&str> = screen.iter().map(|l| l.trim_end()).collect();
        match expect {
            None => {
                assert!(shown[..10].iter().all(|l| l.contains('█')), "{shown:?}");
                assert_eq!(shown[11].trim(), "gyldig i 10 sekunder endnu", "{shown:?}");
            }
            Some(lines) => assert_eq!(&shown[..lines.len()], lines, "\n{}", screen.join("\n")),
        }
    }
}

#[test]
fn a_terminal_that_stops_reading_never_stops_the_device() {
    // The terminal's reader is stuck (a stalled SSH connection): nothing reads what `run`
    // writes there. Its log goes elsewhere, and it must go on answering keys.
    let (dir, state, conf) = setup("outputs = [\"large\"]\n");
    let pty = Pty::open().unwrap();
    let log = dir.path().join("run.log");
    let mut run = Killed(
        command(&state, &conf)
            .args(["run", "--at", &T.to_string()])
            .stdin(pty.slave.try_clone().unwrap())
            .stdout(pty.slave.try_clone().unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    wait_until(10, || logged().contains("ready"), logged);
    let mut keys = pty.master.try_clone().unwrap();
    // Each key draws the code anew (about 3 kB); 64 kB fill the terminal's buffer.
    for _ in 0..40 {
        keys.write_all(b"s").unwrap();
        // A person's fast typing, not a wait for the device.
        thread::sleep(Duration::from_millis(30));
    }
    wait_until(
        10,
        || logged().matches("speaking the code").count() >= 40,
        || format!("keys stopped being answered: {}", logged()),
    );
    keys.write_all(b"q").unwrap();
    let (status, _) = run.wait(10);
    assert!(status.success(), "{}", logged());
}

/// A BRLTTY started for the test: `tt` driver (a 40-cell display on a pseudo-terminal),
/// BrlAPI on TCP without authorization.
struct Brltty {
    _child: Killed,
    /// What the display shows (the pty's output).
    display: Arc<Mutex<Vec<u8>>>,
    /// Typing here presses keys of the display.
    keys: File,
    /// BrlAPI host for the config.
    host: String,
    _pty: Pty,
}

impl Brltty {
    fn start(dir: &Path) -> Brltty {
        Brltty::start_on(dir, free_port() - 4101)
    }

    /// A BRLTTY whose BrlAPI is at `127.0.0.1:n` (TCP port 4101 + n).
    fn start_on(dir: &Path, n: u16) -> Brltty {
        let pty = Pty::open().unwrap();
        let name = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        let device = name
            .to_str()
            .unwrap()
            .trim_start_matches("/dev/")
            .to_owned();
        let display = collect(pty.master.try_clone().unwrap());
        let host = format!("127.0.0.1:{n}");
        let child = Command::new("brltty")
            .args(["-n", "-q", "-b", "tt", "-d"])
            .arg(format!("serial:{device}"))
            .args(["-B", "lines=1,columns=40", "-A"])
            .arg(format!("auth=none,host={host}"))
            .args(["-x", "no", "-s", "no", "-f", "/dev/null", "-P"])
            .arg(dir.join("brltty.pid"))
            // The tt driver reads its keys through curses: arrows as an xterm sends them.
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start brltty ({e}); install it with: apt-get install brltty")
            });
        let brltty = Brltty {
            _child: Killed(child),
            display,
            keys: pty.master.try_clone().unwrap(),
            host,
            _pty: pty,
        };
        // Ready when the API port answers.
        let port = 4101 + n;
        wait_until(
            10,
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || "brltty's BrlAPI port never opened".to_owned(),
        );
        // And its display driver is up (it shows BRLTTY's own screen).
        brltty.wait_for("no screen", 10);
        brltty
    }

    fn shown(&self) -> String {
        text(&self.display)
    }

    fn wait_for(&self, needle: &str, secs: u64) {
        wait_until(
            secs,
            || self.shown().contains(needle),
            || format!("no {needle:?} on the display: {:?}", self.shown()),
        );
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }

    /// Presses `keys` and waits until `needle` is shown once more than before.
    fn press_and_wait_for(&mut self, keys: &str, needle: &str) {
        let before = self.shown().matches(needle).count();
        self.press(keys);
        wait_until(
            5,
            || self.shown().matches(needle).count() > before,
            || format!("no new {needle:?} on the display: {:?}", self.shown()),
        );
    }
}

/// Presses `q` on the display; `run` (its log in `log`) must end well.
fn quit(brltty: &mut Brltty, run: &mut Killed, log: &Path) {
    brltty.press("q");
    let (status, _) = run.wait(10);
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// `codereader speak --at T`, running (its log dropped).
fn speaking(state: &Path, conf: &Path) -> Killed {
    Killed(
        command(state, conf)
            .args(["speak", "--at", &T.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn braille_config(host: &str, outputs: &str) -> String {
    format!("outputs = [{outputs}]\n[braille]\nhost = \"{host}\"\ntty = 1\n")
}

#[test]
fn speak_writes_the_grouped_code_to_a_braille_display_until_a_key_is_pressed() {
    let dir = tempfile::tempdir().unwrap();
    let mut brltty = Brltty::start(dir.path());
    let (_d, state, conf) = setup(&braille_config(&brltty.host, "\"braille\""));
    let mut speak = Killed(
        command(&state, &conf)
            .args(["speak", "--at", &T.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    brltty.wait_for("279 037", 10);
    // The code stays (it is valid 10 s more) until a key of the display is pressed. Proves
    // an end does NOT come by itself: `speak` would end right after writing the code, well
    // within 1.5 s.
    thread::sleep(Duration::from_millis(1500));
    assert!(speak.0.try_wait().unwrap().is_none(), "speak ended early");
    brltty.press("x");
    let (status, took) = speak.wait(5);
    assert!(status.success());
    assert!(took < Duration::from_secs(3), "{took:?}");
    // And the display was cleared (BRLTTY shows its own screen again).
    wait_until(
        3,
        || {
            let shown = brltty.shown();
            let last = shown.rfind("279 037").unwrap();
            shown[last..].contains("\x1b[J")
        },
        || format!("not cleared: {:?}", brltty.shown()),
    );
    // BRLTTY stops while speak holds the code: speak ends (nobody can read it any more).
    let mut speak = speaking(&state, &conf);
    let before = brltty.shown().matches("279 037").count();
    wait_until(
        10,
        || brltty.shown().matches("279 037").count() > before,
        || brltty.shown(),
    );
    let host = brltty.host.clone();
    let n: u16 = host.rsplit_once(':').unwrap().1.parse().unwrap();
    drop(brltty);
    let (status, took) = speak.wait(5);
    assert!(status.success());
    assert!(took < Duration::from_secs(3), "{took:?}");
    let mut brltty = Brltty::start_on(dir.path(), n);
    // A failure is shown in braille in the user's language, and held there until a key.
    let mut speak = Killed(
        command(&dir.path().join("no-token"), &conf)
            .args(["speak", "--at", &T.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    brltty.wait_for("Der er endnu ikke sat en nøgle", 10);
    // Proves the message is NOT taken away by itself: `speak` would exit right after
    // writing it, well within the second.
    thread::sleep(Duration::from_millis(1000));
    assert!(
        speak.0.try_wait().unwrap().is_none(),
        "the message went at once"
    );
    brltty.press("x");
    let (status, _) = speak.wait(5);
    assert_eq!(status.code(), Some(3), "no token: its exit status");
}

#[test]
fn a_message_longer_than_the_display_is_read_on_with_the_panning_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut brltty = Brltty::start(dir.path());
    let (_d, state, conf) = setup(&braille_config(&brltty.host, "\"braille\""));
    // A damaged token: its message (57 characters) is longer than the 40 cells.
    fs::write(state.join("token.toml"), "not a token").unwrap();
    let mut speak = speaking(&state, &conf);
    brltty.wait_for("Nøglens data er beskadiget. Enheden skal", 10);
    assert!(!brltty.shown().contains("sættes op igen"));
    // The tt driver's right arrow (as an xterm in keypad mode sends it) is BRLTTY's "next
    // window": the rest of the message, and `speak` still holds it.
    brltty.press("\x1bOC");
    brltty.wait_for(" sættes op igen.", 5);
    // Proves panning does NOT end `speak`: a key that ended it would do so at once.
    thread::sleep(Duration::from_millis(500));
    assert!(speak.0.try_wait().unwrap().is_none(), "panning ended speak");
    // Left: the start again.
    brltty.press_and_wait_for("\x1bOD", "Nøglens data");
    brltty.press("x");
    let (status, _) = speak.wait(5);
    assert!(!status.success());

    // In `run` too; and where the message fits, panning right keeps its meaning (speak).
    let log = dir.path().join("run.log");
    let mut run = headless(&state, &conf, &log);
    brltty.press_and_wait_for("s", "Nøglens data");
    brltty.press_and_wait_for("\x1bOC", " sættes op igen.");
    quit(&mut brltty, &mut run, &log);
    let (_d2, state, conf) = setup(&braille_config(&brltty.host, "\"braille\""));
    let log = dir.path().join("run2.log");
    let mut run = headless(&state, &conf, &log);
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    brltty.press("\x1bOC");
    wait_until(5, || logged().contains("speaking the code"), logged);
    brltty.wait_for("279 037", 5);
    quit(&mut brltty, &mut run, &log);
}

/// `codereader run --at T` without a terminal, its log in `log`; returns once it is ready.
fn headless(state: &Path, conf: &Path, log: &Path) -> Killed {
    let run = Killed(
        command(state, conf)
            .args(["run", "--at", &T.to_string()])
            .stdin(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logged = || fs::read_to_string(log).unwrap_or_default();
    wait_until(10, || logged().contains("ready"), logged);
    run
}

#[test]
fn run_shows_codes_and_messages_in_braille_and_obeys_the_displays_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut brltty = Brltty::start(dir.path());
    let (_d, state, conf) = setup(&braille_config(&brltty.host, "\"braille\""));
    // No terminal and no other input: the display's keys are the device's keys.
    let log = dir.path().join("run.log");
    let mut run = headless(&state, &conf, &log);
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged().contains("braille: display of 40 cells"),
        "{}",
        logged()
    );
    // `s` typed on the display's keyboard: speak (the terminal's binding).
    brltty.press("s");
    brltty.wait_for("279 037", 5);
    wait_until(5, || logged().contains("speaking the code"), logged);
    // `r`: replay, shown again after the key cleared it.
    let before = brltty.shown().matches("279 037").count();
    brltty.press("r");
    wait_until(
        5,
        || brltty.shown().matches("279 037").count() > before,
        || brltty.shown(),
    );
    wait_until(5, || logged().contains("repeating the last code"), logged);
    quit(&mut brltty, &mut run, &log);

    // Without a token the spoken error is shown in braille too, in the user's language.
    let empty = dir.path().join("empty-state");
    let mut run = headless(&empty, &conf, &dir.path().join("run2.log"));
    // Said and shown at start (with the commands that enrol one), and again at the key.
    let sentence = "Der er endnu ikke sat en nøgle";
    brltty.wait_for(sentence, 5);
    let before = brltty.shown().matches(sentence).count();
    brltty.press("s");
    wait_until(
        5,
        || brltty.shown().matches(sentence).count() > before,
        || brltty.shown(),
    );
    brltty.press("q");
    let (status, _) = run.wait(10);
    assert!(status.success());
}

#[test]
fn status_with_nothing_to_report_shows_the_words_it_says_in_braille() {
    let dir = tempfile::tempdir().unwrap();
    let mut brltty = Brltty::start(dir.path());
    // A token without a serial, a set clock, no battery: nothing to report. Danish, the
    // default language, then English.
    for (language, words) in [("da", "Alt er i orden."), ("en", "All is well.")] {
        let (_d, state, conf) = setup(&format!(
            "language = \"{language}\"\n{}",
            braille_config(&brltty.host, "\"braille\"")
        ));
        let log = dir.path().join(format!("run-{language}.log"));
        let mut run = headless(&state, &conf, &log);
        let logged = || fs::read_to_string(&log).unwrap_or_default();
        wait_until(5, || logged().contains("braille: display"), logged);
        brltty.press("i");
        wait_until(
            5,
            || logged().contains("status: serial …, 0 problem(s)"),
            logged,
        );
        brltty.wait_for(words, 5);
        quit(&mut brltty, &mut run, &log);
    }
}

#[test]
fn run_takes_the_display_back_when_brltty_restarts_and_finds_one_that_comes_late() {
    let dir = tempfile::tempdir().unwrap();
    let n = free_port() - 4101;
    let host = format!("127.0.0.1:{n}");
    let (_d, state, conf) = setup(&braille_config(&host, "\"braille\""));
    // No display when run starts: logged once; run is ready all the same.
    let log = dir.path().join("run.log");
    let mut run = headless(&state, &conf, &log);
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        logged().matches("cannot reach BRLTTY").count(),
        1,
        "{}",
        logged()
    );
    // The display appears: found within the retry time, and its keys work.
    let mut brltty = Brltty::start_on(dir.path(), n);
    wait_until(5, || logged().contains("braille: display of 40"), logged);
    brltty.press("s");
    brltty.wait_for("279 037", 5);
    // BRLTTY stops (killed) and starts again: with no word for the device to show, the
    // display's keys must still reach it (for a deafblind user they are the only input).
    drop(brltty);
    wait_until(
        5,
        || logged().contains("the connection to BRLTTY ended"),
        logged,
    );
    let mut brltty = Brltty::start_on(dir.path(), n);
    wait_until(
        10,
        || logged().matches("braille: display of 40").count() == 2,
        logged,
    );
    brltty.press("s");
    brltty.wait_for("279 037", 5);
    quit(&mut brltty, &mut run, &log);
}

#[test]
fn speech_goes_on_without_the_braille_display_and_braille_without_the_sound_card() {
    let dir = tempfile::tempdir().unwrap();
    // No BRLTTY at this port: the display is missing; speech must still be heard.
    let nobody = format!("127.0.0.1:{}", free_port() - 4101);
    let (_d, state, conf) = setup(&braille_config(&nobody, "\"speech\", \"braille\""));
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let out = command(&state, &conf)
        .args(["speak", "--at", &T.to_string()])
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("cannot reach BRLTTY").count(), 1, "{log}");
    let audio = capture.audio();
    assert!(
        audio.spans(audio.loudest_frame() * 0.01, 120).len() >= 8,
        "too little speech captured while the display was missing"
    );

    // The other way round: a display, and no sound card.
    let mut brltty = Brltty::start(dir.path());
    let conf2 = dir.path().join("config2.toml");
    fs::write(
        &conf2,
        braille_config(&brltty.host, "\"speech\", \"braille\""),
    )
    .unwrap();
    let no_card = dir.path().join("no-card.conf");
    fs::write(&no_card, "pcm.!default { type hw; card 31 }\n").unwrap();
    let log = dir.path().join("speak2.log");
    let mut speak = Killed(
        command(&state, &conf2)
            .args(["speak", "--at", &T.to_string()])
            .env(
                "ALSA_CONFIG_PATH",
                format!("/usr/share/alsa/alsa.conf:{}", no_card.display()),
            )
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        10,
        || brltty.shown().contains("279 037"),
        || format!("{:?}\n{}", brltty.shown(), logged()),
    );
    brltty.press("x");
    let (status, _) = speak.wait(5);
    let log = logged();
    assert!(status.success(), "{log}");
    assert!(log.contains("no working audio output device"), "{log}");
    assert!(log.contains("the other outputs go on"), "{log}");
}

/// A Speech Dispatcher started for the test: its own copy of Debian's config (ALSA output,
/// espeak-ng module), a private runtime directory and socket, and ALSA's `file` plugin as
/// its sound card, writing a WAV file.
struct SpeechDispatcher {
    _child: Killed,
    socket: PathBuf,
    wav: PathBuf,
}

impl SpeechDispatcher {
    fn start(dir: &Path) -> SpeechDispatcher {
        let conf = dir.join("speechd-conf");
        let copied = Command::new("cp")
            .arg("-r")
            .arg("/etc/speech-dispatcher")
            .arg(&conf)
            .status()
            .unwrap();
        assert!(
            copied.success(),
            "no /etc/speech-dispatcher; install it with: apt-get install speech-dispatcher \
             speech-dispatcher-espeak-ng"
        );
        let mut main = fs::OpenOptions::new()
            .append(true)
            .open(conf.join("speechd.conf"))
            .unwrap();
        main.write_all(
            b"\nAudioOutputMethod \"alsa\"\nDefaultModule espeak-ng\n\
              AddModule \"espeak-ng\" \"sd_espeak-ng\" \"espeak-ng.conf\"\n",
        )
        .unwrap();
        let wav = dir.join("speechd.wav");
        let alsa = dir.join("speechd-asound.conf");
        fs::write(
            &alsa,
            format!(
                "pcm.!default {{ type file; slave.pcm \"null\"; file \"{}\"; format \"wav\" }}\n",
                wav.display()
            ),
        )
        .unwrap();
        let runtime = dir.join("run");
        fs::create_dir(&runtime).unwrap();
        let socket = runtime.join("speechd.sock");
        let child = Command::new("speech-dispatcher")
            .args(["-s", "-t", "0", "-C"])
            .arg(&conf)
            .arg("-S")
            .arg(&socket)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", dir)
            .env(
                "ALSA_CONFIG_PATH",
                format!("/usr/share/alsa/alsa.conf:{}", alsa.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start speech-dispatcher: {e}"));
        let sd = SpeechDispatcher {
            _child: Killed(child),
            socket,
            wav,
        };
        wait_until(
            20,
            || sd.socket.exists(),
            || "speech-dispatcher never opened its socket".to_owned(),
        );
        sd
    }

    /// What it played: the WAV header's rate, the samples after it (the `file` plugin
    /// writes the header's sizes only when it closes, so they are not trusted).
    fn audio(&self) -> codereader_e2e::Audio {
        written_wav(&self.wav)
    }
}

/// What ALSA's `file` plugin wrote to `wav`: the WAV header's rate, the samples after it (the
/// plugin writes the header's sizes only when it closes, so they are not trusted).
fn written_wav(wav: &Path) -> codereader_e2e::Audio {
    let bytes = fs::read(wav).unwrap();
    assert!(bytes.len() > 44 && bytes.starts_with(b"RIFF"), "no WAV");
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    assert_eq!(&bytes[22..24], &[1, 0], "mono");
    codereader_e2e::Audio::from_s16le(&bytes[44..], rate)
}

#[test]
fn speak_via_speech_dispatcher_says_the_six_digits_grouped_with_earcons_on_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let sd = SpeechDispatcher::start(dir.path());
    let (_d, state, conf) = setup("");
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let out = command(&state, &conf)
        .args(["speak", "--output", "speechd", "--lang", "en", "--at"])
        .arg(T.to_string())
        .env(
            "SPEECHD_ADDRESS",
            format!("unix_socket:{}", sd.socket.display()),
        )
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    // Speech Dispatcher's audio: "Your code is", then six words; the longest silence between
    // words is the pause between the groups (279 037), as on the device.
    let spoken = sd.audio();
    let spans = spoken.spans(spoken.loudest_frame() * 0.01, 120);
    assert_eq!(
        spans.len(),
        7,
        "expected the intro and six digit words: {spans:?}"
    );
    let digits = &spans[1..];
    for (i, d) in digits.iter().enumerate() {
        let s = d.seconds(spoken.rate);
        assert!((0.1..1.2).contains(&s), "word {i} lasts {s} s");
    }
    let gaps: Vec<usize> = digits.windows(2).map(|w| w[1].start - w[0].end).collect();
    let widest = gaps
        .iter()
        .enumerate()
        .max_by_key(|(_, g)| **g)
        .map(|(i, _)| i)
        .unwrap();
    assert_eq!(
        widest, 2,
        "the group pause is after the third digit: {gaps:?}"
    );
    // Which words: each is compared with the ten digit words said by the same Speech
    // Dispatcher (same voice, same rate) after it; the closest envelope must be its digit.
    let words: Vec<String> = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ]
    .iter()
    .map(|w| (*w).to_owned())
    .collect();
    // One message per word, as a code's last word is said: alone at the end of a message.
    for word in &words {
        let said = Command::new("spd-say")
            .args(["-w", "-l", "en", "-x"])
            .arg(format!("<speak>{word}<break time=\"700ms\"/></speak>"))
            .env(
                "SPEECHD_ADDRESS",
                format!("unix_socket:{}", sd.socket.display()),
            )
            .status()
            .unwrap();
        assert!(said.success());
    }
    let all = sd.audio();
    let all_spans = all.spans(all.loudest_frame() * 0.01, 120);
    assert_eq!(all_spans.len(), 17, "{all_spans:?}");
    // Per 10 ms frame: loudness, and the share of it above a first-difference high-pass
    // (a fricative /s/ is high, a voiced /z/ or vowel low), each stretched to one length
    // (a word at the end of a group or code is said longer than the same word alone).
    let envelope = |span: codereader_e2e::Span| {
        let word = all.slice(span);
        let frame = (word.rate / 100) as usize;
        let mut loud = Vec::new();
        let mut hiss = Vec::new();
        for f in word.samples.chunks(frame) {
            let energy = (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt();
            let high =
                (f.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f32>() / f.len() as f32).sqrt();
            loud.push(energy);
            hiss.push(high / (energy + 1e-4));
        }
        let stretch =
            |v: &[f32]| -> Vec<f32> { (0..64).map(|i| v[i * (v.len() - 1) / 63]).collect() };
        (stretch(&loud), stretch(&hiss))
    };
    let score = |a: &(Vec<f32>, Vec<f32>), b: &(Vec<f32>, Vec<f32>)| {
        codereader_e2e::correlation(&a.0, &b.0) + codereader_e2e::correlation(&a.1, &b.1)
    };
    let references: Vec<_> = all_spans[7..].iter().map(|s| envelope(*s)).collect();
    let mut heard = String::new();
    for span in &all_spans[1..7] {
        let word = envelope(*span);
        let scores: Vec<f64> = references.iter().map(|r| score(&word, r)).collect();
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(d, _)| d)
            .unwrap();
        heard.push(char::from(b'0' + u8::try_from(best).unwrap()));
    }
    assert_eq!(heard, CODE_AT_T);
    // The earcons played on the sound card: two short tones, nothing else. (On a loaded
    // machine the paced capture has been seen to miss the first tone, the stream's start
    // running late; the end tone, after Speech Dispatcher finished, is always there.)
    let card = capture.audio();
    let tones = card.spans(card.loudest_frame() * 0.01, 120);
    assert!((1..=2).contains(&tones.len()), "{tones:?}");
    for tone in tones {
        assert!(tone.seconds(card.rate) < 0.6, "{tone:?}");
    }
}

#[test]
fn run_speaks_through_speech_dispatcher_when_it_is_the_configured_voice() {
    let dir = tempfile::tempdir().unwrap();
    let sd = SpeechDispatcher::start(dir.path());
    let (_d, state, conf) = setup(&format!(
        "outputs = [\"speechd\"]\nlanguage = \"en\"\n[speechd]\naddress = \"unix_socket:{}\"\n",
        sd.socket.display()
    ));
    let mut term = OnTerminal::start(&state, &conf, &[]);
    term.press("s");
    wait_until(
        5,
        || term.text().contains("speaking the code"),
        || term.text(),
    );
    let words = || {
        let long = fs::metadata(&sd.wav).is_ok_and(|m| m.len() > 44);
        long.then(|| {
            let a = sd.audio();
            a.spans(a.loudest_frame() * 0.01, 120).len()
        })
    };
    wait_until(
        10,
        || words().is_some_and(|n| n >= 7),
        || {
            format!(
                "Speech Dispatcher did not say the code ({:?} parts): {}",
                words(),
                term.text()
            )
        },
    );
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
    let spoken = sd.audio();
    assert_eq!(
        spoken.spans(spoken.loudest_frame() * 0.01, 120).len(),
        7,
        "{}",
        term.text()
    );
    assert!(!term.text().contains("error"), "{}", term.text());
}

/// Waits until `capture` holds a spoken code: the start earcon, the intro and six digits,
/// the end earcon; fails with `why()` after 15 s.
fn wait_until_heard(capture: &AlsaCapture, why: impl Fn() -> String) {
    wait_until(
        15,
        || {
            let audio = capture.audio();
            audio.loudest_frame() > 0.0 && audio.spans(audio.loudest_frame() * 0.01, 120).len() >= 9
        },
        why,
    );
}

#[test]
fn run_without_speech_dispatcher_speaks_the_code_on_the_sound_card_instead() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = dir.path().join("nobody.sock");
    let (_d, state, conf) = setup(&format!(
        "outputs = [\"speechd\"]\n[speechd]\naddress = \"unix_socket:{}\"\n",
        nobody.display()
    ));
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut term = OnTerminal::start(&state, &conf, &[("ALSA_CONFIG_PATH", &capture.config_path)]);
    term.press("s");
    wait_until(
        5,
        || {
            term.text()
                .contains("own voice speaks on the sound card instead")
        },
        || term.text(),
    );
    wait_until_heard(&capture, || {
        format!("silence without Speech Dispatcher: {}", term.text())
    });
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
    assert_eq!(
        term.text()
            .matches("cannot reach Speech Dispatcher")
            .count(),
        1
    );
}

#[test]
fn run_gives_the_code_in_speech_braille_and_large_print_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let brltty = Brltty::start(dir.path());
    let (_d, state, conf) = setup(&braille_config(
        &brltty.host,
        "\"speech\", \"braille\", \"large\"",
    ));
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut term = OnTerminal::start(&state, &conf, &[("ALSA_CONFIG_PATH", &capture.config_path)]);
    term.press(" ");
    brltty.wait_for("279 037", 5);
    wait_until(
        5,
        || term.text().contains("gyldig i 10 sekunder endnu"),
        || term.text(),
    );
    wait_until_heard(&capture, || format!("too little speech: {}", term.text()));
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
    assert!(!term.text().contains("error"), "{}", term.text());
}

/// `speak --output speechd` on a desktop where Speech Dispatcher cannot speak: the code is
/// said by the device's own voice on the sound card, with one line saying why.
fn speak_via_speechd(state: &Path, conf: &Path, capture: &AlsaCapture) -> Command {
    let mut c = command(state, conf);
    c.args(["speak", "--output", "speechd", "--lang", "en", "--at"])
        .arg(T.to_string())
        .env("ALSA_CONFIG_PATH", &capture.config_path);
    c
}

/// The whole code on the sound card: start earcon, intro, six digits, end earcon.
fn heard_whole_code(capture: &AlsaCapture) -> usize {
    let card = capture.audio();
    card.spans(card.loudest_frame() * 0.01, 120).len()
}

#[test]
fn speak_without_speech_dispatcher_and_no_way_to_start_it_says_the_code_on_the_sound_card() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, state, conf) = setup("");
    let capture = AlsaCapture::start(dir.path()).unwrap();
    // No Speech Dispatcher listens, and none can be started (not on the PATH).
    let empty = dir.path().join("empty-bin");
    fs::create_dir(&empty).unwrap();
    let out = speak_via_speechd(&state, &conf, &capture)
        .env(
            "SPEECHD_ADDRESS",
            format!("unix_socket:{}", dir.path().join("nobody.sock").display()),
        )
        .env("PATH", &empty)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Speech Dispatcher"))
        .collect();
    assert_eq!(why.len(), 1, "{log}");
    assert!(
        why[0].contains("cannot reach Speech Dispatcher")
            && why[0].contains("not installed")
            && why[0].ends_with("the device's own voice speaks on the sound card instead"),
        "{log}"
    );
    // The cause is said once, not repeated by the error chain.
    assert_eq!(why[0].matches("not running").count(), 1, "{log}");
    // The paced capture reads in real time: the end may still be on its way.
    wait_until(10, || heard_whole_code(&capture) >= 9, || log.clone());
}

#[test]
fn speak_starts_speech_dispatcher_when_it_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, state, conf) = setup("");
    let capture = AlsaCapture::start(dir.path()).unwrap();
    // The user's Speech Dispatcher settings (as ~/.config/speech-dispatcher): Debian's, with
    // espeak-ng speaking to an ALSA device of the capture's config that writes a WAV file.
    let config_home = dir.path().join("config");
    fs::create_dir(&config_home).unwrap();
    let user_conf = config_home.join("speech-dispatcher");
    let copied = Command::new("cp")
        .arg("-r")
        .arg("/etc/speech-dispatcher")
        .arg(&user_conf)
        .status()
        .unwrap();
    assert!(copied.success(), "no /etc/speech-dispatcher");
    fs::OpenOptions::new()
        .append(true)
        .open(user_conf.join("speechd.conf"))
        .unwrap()
        .write_all(
            b"\nAudioOutputMethod \"alsa\"\nAudioALSADevice \"speechd\"\nDefaultModule espeak-ng\n\
              AddModule \"espeak-ng\" \"sd_espeak-ng\" \"espeak-ng.conf\"\n",
        )
        .unwrap();
    let wav = dir.path().join("speechd.wav");
    fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("asound.conf"))
        .unwrap()
        .write_all(
            format!(
                "pcm.speechd {{ type file; slave.pcm \"null\"; file \"{}\"; format \"wav\" }}\n",
                wav.display()
            )
            .as_bytes(),
        )
        .unwrap();
    let runtime = dir.path().join("run");
    fs::create_dir(&runtime).unwrap();
    /// Kills the spawned daemon (found by its pid file) when the test ends.
    struct Daemon(PathBuf);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let pid = self.0.join("speech-dispatcher/pid/speech-dispatcher.pid");
            if let Ok(pid) = fs::read_to_string(pid) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _daemon = Daemon(runtime.clone());
    // No address given: the user's default socket, where the client libraries spawn it too.
    let out = speak_via_speechd(&state, &conf, &capture)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_CONFIG_HOME", &config_home)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("Speech Dispatcher") && !log.contains("own voice"),
        "{log}"
    );
    assert!(
        runtime.join("speech-dispatcher/speechd.sock").exists(),
        "no daemon socket: {log}"
    );
    // Speech Dispatcher said the intro and six words; the card got only the two earcons.
    let spoken = written_wav(&wav);
    assert_eq!(
        spoken.spans(spoken.loudest_frame() * 0.01, 120).len(),
        7,
        "{log}"
    );
    let tones = heard_whole_code(&capture);
    assert!((1..=2).contains(&tones), "{tones} parts on the card: {log}");
}

#[test]
fn speak_with_a_speech_dispatcher_that_never_starts_speaking_says_the_code_on_the_sound_card() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let (_d, state, conf) = setup("");
    let capture = AlsaCapture::start(dir.path()).unwrap();
    // A broken daemon: it answers every SSIP command as Speech Dispatcher does and queues the
    // message, but its output module never begins speaking (no 701 event ever comes).
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut in_message = false;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let reply: &[u8] = if in_message {
                        if line != "." {
                            continue;
                        }
                        in_message = false;
                        b"225-1\r\n225 OK MESSAGE QUEUED\r\n"
                    } else if line == "SPEAK" {
                        in_message = true;
                        b"230 OK RECEIVING DATA\r\n"
                    } else if line == "QUIT" {
                        b"231 HAPPY HACKING\r\n"
                    } else {
                        b"208 OK\r\n"
                    };
                    if writer.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let started = Instant::now();
    let out = speak_via_speechd(&state, &conf, &capture)
        .env(
            "SPEECHD_ADDRESS",
            format!("unix_socket:{}", socket.display()),
        )
        .output()
        .unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Speech Dispatcher"))
        .collect();
    assert_eq!(why.len(), 1, "{log}");
    assert!(
        why[0].contains("did not start speaking within 4 s")
            && why[0].ends_with("the device's own voice speaks on the sound card instead"),
        "{log}"
    );
    // The paced capture reads in real time: the end may still be on its way.
    wait_until(10, || heard_whole_code(&capture) >= 9, || log.clone());
    // Four seconds of waiting and the code, not a minute of silence.
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Large print shows everything the device says: the digits as large as the terminal fits
/// (160 x 40: 30 rows, not the 10 of an 80-column one), and a message (the help, an error)
/// in place of the code, which is then gone rather than counted down.
#[test]
fn large_print_grows_with_the_terminal_and_shows_every_message_in_place_of_the_code() {
    let (_dir, state, conf) = setup("outputs = [\"large\"]\nlanguage = \"en\"\n");
    let mut term = OnTerminal::start_sized(&state, &conf, &[], Some((160, 40)));
    term.press("s");
    wait_until(
        5,
        || term.text().contains("valid for 10 more seconds"),
        || term.text(),
    );
    let screen = last_screen(&term.text());
    let rows = screen.iter().filter(|l| l.contains('█')).count();
    assert_eq!(rows, 30, "{}", screen.join("\n"));
    assert!(screen.iter().all(|l| l.chars().count() <= 160));
    // The help is said, and shown instead of the code.
    term.press("h");
    wait_until(
        5,
        || {
            last_screen(&term.text())
                .join(" ")
                .contains("Hear your code")
        },
        || term.text(),
    );
    assert!(!last_screen(&term.text()).join("").contains('█'));
    // The code again, then an error: the token's data is damaged. The error replaces the
    // code, and the code is not drawn again.
    term.press("s");
    wait_until(
        5,
        || last_screen(&term.text()).join("").contains('█'),
        || term.text(),
    );
    fs::write(state.join("token.toml"), "damaged").unwrap();
    term.press("s");
    wait_until(
        5,
        || {
            last_screen(&term.text())
                .join(" ")
                .contains("data is damaged")
        },
        || term.text(),
    );
    // More than a second of the old code's countdown passes: nothing redraws it (proves a
    // redraw does NOT come: the countdown ticks once a second).
    let before = term.text().len();
    thread::sleep(Duration::from_millis(1500));
    let screen = last_screen(&term.text());
    assert!(!screen.join("").contains('█'), "{}", screen.join("\n"));
    assert!(
        !term.text()[before..].contains("more second"),
        "{}",
        term.text()
    );
    term.press("q");
    let (status, _) = term.run.wait(10);
    assert!(status.success(), "{}", term.text());
}
