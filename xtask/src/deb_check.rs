//! `cargo xtask deb-check`: the Debian package, checked the way a user meets it.
//!
//! Packages the debug build of `codereader` (already built by the tests) with the voice
//! packs and clips for speed step 0 only (rendering every voice at every step is what
//! `dist` does and takes minutes), then:
//!
//! 1. `dpkg-deb --info`/`--contents`: the control fields, conffiles, maintainer scripts and
//!    every file the package must hold;
//! 2. `lintian --fail-on error`;
//! 3. `dpkg -i` on this machine (no systemd runs here, so the scripts must not need it): the
//!    `codereader` user exists in exactly those of `audio`, `input`, `gpio` that exist, the
//!    state directory is its own with mode 0700;
//! 4. as that user, the installed `/usr/bin/codereader` enrols a token and speaks its code to
//!    WAV, once with the installed conffile (Danish) and once with `synth = "clips"`
//!    (English: the installed clips, not espeak-ng, must speak);
//! 5. `dpkg -r` removes the program and keeps the conffile; `dpkg --purge` removes the
//!    conffile, the state and the user.
//!
//! The verifier's package is checked first, by `deb_verifier::check`.
//!
//! It changes the machine (installs and purges a package, creates and deletes a user), so it
//! needs root, refuses to run where `codereader` is installed already, and is what CI runs.

use std::path::Path;
use std::process::{Command, Output};

use crate::{cargo, deb, dpkg, ensure, ok, output, packages, run};
use crate::{root, target_dir};

/// RFC 6238's test secret: public, nothing real is exposed.
const TEST_URI: &str = "otpauth://totp/deb-check:test?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=deb-check&digits=6&period=30";

pub(crate) fn deb_check(args: &[String]) -> Result<(), String> {
    packages::ensure(packages::DEB_CHECK)?;
    let uid = output(Command::new("id").arg("-u"))?;
    ensure(String::from_utf8_lossy(&uid.stdout).trim() == "0", || {
        "deb-check installs a package and creates a user: run it as root (CI does)".to_owned()
    })?;
    // The verifier's package (`deb_verifier.rs`) first: it takes seconds, the device's more.
    crate::deb_verifier::check()?;
    if args.iter().any(|a| a == "--verifier-only") {
        return Ok(());
    }
    dpkg::refuse_if_installed("codereader", "its token")?;
    run(
        "building codereader and codereader-speak (debug)",
        cargo().args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "codereader",
            "--package",
            "codereader-speech",
            "--bin",
            "codereader",
            "--bin",
            "codereader-speak",
        ]),
    )?;
    let work = target_dir().join("deb-check");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    let voices = work.join("voices");
    render_step_zero(&voices)?;
    let file = deb::build(&deb::Deb {
        binary: &target_dir().join("debug/codereader"),
        arch: deb::debian_arch(std::env::consts::ARCH)?,
        strip: "strip",
        voices: &voices,
        epoch: "1767225600",
        out_dir: &work,
    })?;
    dpkg::inspect(&file, &EXPECTED)?;
    dpkg::purge_after(
        install_and_use(&file),
        "codereader",
        &["/etc/codereader/config.toml", "/var/lib/codereader"],
    )?;
    println!("xtask: deb-check passed: {}", file.display());
    Ok(())
}

/// Copies each pack's `voice.toml` into `voices` and renders all its voices at step 0.
pub(crate) fn render_step_zero(voices: &Path) -> Result<(), String> {
    let source = root().join("voices");
    let mut tags = Vec::new();
    for entry in std::fs::read_dir(&source).map_err(|e| format!("{}: {e}", source.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.join("voice.toml").is_file() {
            let tag = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let dir = voices.join(&tag);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::copy(path.join("voice.toml"), dir.join("voice.toml"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tags.push(tag);
        }
    }
    tags.sort();
    for tag in tags {
        run(
            &format!("rendering the clips of `{}` at speed step 0", tag.display()),
            Command::new(target_dir().join("debug/codereader-speak"))
                .args(["clips", "--voices"])
                .arg(voices)
                .arg("--lang")
                .arg(&tag)
                .args(["--speeds", "0"]),
        )?;
    }
    Ok(())
}

/// What the device's package must hold: every file root's and world-readable, the program
/// executable.
const EXPECTED: dpkg::Expected<'static> = dpkg::Expected {
    package: "codereader",
    info: &[
        "Package: codereader",
        "Depends: libc6",
        "libespeak-ng1",
        "libasound2",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ],
    conffile: "/etc/codereader/config.toml",
    files: &[
        ("./usr/bin/codereader", "-rwxr-xr-x root/root"),
        ("./etc/codereader/config.toml", "-rw-r--r-- root/root"),
        (
            "./lib/systemd/system/codereader.service",
            "-rw-r--r-- root/root",
        ),
        (
            "./lib/udev/rules.d/60-codereader.rules",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/doc/codereader/copyright",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/doc/codereader/changelog.gz",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/codereader/voices/da/voice.toml",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/codereader/voices/da/clips/espeak/clips.toml",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/codereader/voices/da/clips/espeak/digit-7@0.wav",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/codereader/voices/en/clips/flite-slt/clips.toml",
            "-rw-r--r-- root/root",
        ),
    ],
};

/// Installs the package, checks what `postinst` did and speaks a code with the installed
/// program, then removes it (keeping the conffile).
fn install_and_use(file: &Path) -> Result<(), String> {
    dpkg::install(file)?;
    // The user and its groups: exactly those of audio, input, gpio this machine has.
    let groups = ok(
        "id -nG codereader",
        &output(Command::new("id").args(["-nG", "codereader"]))?,
    )?;
    let mut have: Vec<&str> = groups.split_whitespace().collect();
    have.sort_unstable();
    let mut want: Vec<&str> = ["audio", "input", "gpio"]
        .into_iter()
        .filter(|g| dpkg::getent("group", g))
        .chain(["codereader"])
        .collect();
    want.sort_unstable();
    ensure(have == want, || {
        format!("codereader's groups are {have:?}, expected {want:?}")
    })?;
    let state = ok(
        "stat /var/lib/codereader",
        &output(Command::new("stat").args(["-c", "%a %U %G", "/var/lib/codereader"]))?,
    )?;
    ensure(state.trim() == "700 codereader codereader", || {
        format!("/var/lib/codereader is `{}`", state.trim())
    })?;

    // As the service user, with nothing of this environment leaking in.
    let as_user = |args: &[&str], stdin: Option<&str>| -> Result<Output, String> {
        use std::io::Write as _;
        let mut command = Command::new("runuser");
        command
            .args(["-u", "codereader", "--", "/usr/bin/codereader"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/var/lib/codereader")
            .env("CODEREADER_STATE", "/var/lib/codereader")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run runuser: {e}"))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("codereader's stdin: {e}"))?;
        }
        drop(child.stdin.take());
        child
            .wait_with_output()
            .map_err(|e| format!("codereader: {e}"))
    };
    ok(
        "codereader enroll",
        &as_user(&["enroll", "--uri", "-"], Some(TEST_URI))?,
    )?;
    let config = Path::new("/var/lib/codereader/clips-only.toml");
    std::fs::write(config, "synth = \"clips\"\nlanguage = \"en\"\n")
        .map_err(|e| format!("{}: {e}", config.display()))?;
    for (lang, config) in [("da", None), ("en", Some(config))] {
        let wav = format!("/var/lib/codereader/{lang}.wav");
        let mut args = vec!["speak", "--wav", &wav, "--lang", lang];
        if let Some(config) = config.and_then(Path::to_str) {
            args.extend(["--config", config]);
        }
        let out = as_user(&args, None)?;
        ok(&format!("codereader speak --lang {lang}"), &out)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(!stderr.contains("no clips"), || {
            format!("{lang}: spoken without the installed clips: {stderr}")
        })?;
        check_wav(Path::new(&wav))?;
    }
    dpkg::remove(
        "codereader",
        "/usr/bin/codereader",
        "/etc/codereader/config.toml",
    )
}

/// A spoken six-digit code: a mono 16-bit WAV of 2 to 30 seconds that is not silence.
fn check_wav(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let le16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let le32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(channels), Some(rate), Some(bits)) = (le16(22), le32(24), le16(34)) else {
        return Err(format!("{}: not a WAV file", file.display()));
    };
    ensure(
        bytes.starts_with(b"RIFF") && channels == 1 && bits == 16 && rate > 0,
        || format!("{}: not mono 16-bit PCM", file.display()),
    )?;
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .and_then(|at| bytes.get(at + 8..))
        .ok_or_else(|| format!("{}: no data chunk", file.display()))?;
    let samples: Vec<f64> = data
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let seconds = samples.len() as f64 / f64::from(rate);
    #[allow(clippy::cast_precision_loss)]
    let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len().max(1) as f64).sqrt();
    // Up to 30 s: near the end of a time step the device says that the code is about to
    // change and waits (up to 10 s) for the next one.
    ensure((2.0..=30.0).contains(&seconds) && rms > 0.01, || {
        format!(
            "{}: {seconds:.2} s, RMS {rms:.4}: not a spoken code",
            file.display()
        )
    })?;
    println!(
        "xtask: {}: {seconds:.2} s at {rate} Hz, RMS {rms:.3}",
        file.display()
    );
    Ok(())
}
