//! Project chores, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `demo`: the README's main job: install what it needs, enrol a demo token and speak its
//!   current code (into `target/demo/code.wav` when there is no sound card).
//! - `dist`: a release tarball and a Debian package of the device program (`--target
//!   aarch64-unknown-linux-gnu` for a Raspberry Pi; see `crates/device/PACKAGING.md`), and
//!   the verifier service's Debian package (for this machine's architecture;
//!   `xtask/src/deb_verifier.rs`).
//! - `deb-check`: what CI runs after the tests: package a debug build with the clips it
//!   speaks, check it with `dpkg-deb` and lintian, install it with dpkg (systemd is not
//!   started), speak a code to WAV with the installed program and voices, then remove and
//!   purge it (`xtask/src/deb_check.rs`); the same for the verifier's package, whose
//!   installed program serves `/healthz` with the packaged settings (`--verifier-only`: just
//!   that part).
//! - `test`: the README's test command and what CI runs: install the Debian packages the
//!   tests need, then `cargo fmt --check`, `cargo clippy -D warnings`, `cargo doc` without
//!   warnings, `cargo test --workspace`, then `deb-check`, then `system-test`.
//! - `image [--arch amd64|arm64]`: the appliance, a bootable Debian bookworm disk image with
//!   the device program (`xtask/src/image.rs`, `crates/device/PACKAGING.md`).
//! - `system-test [--arch amd64|arm64] [--power-cuts N]`: boots the test image in QEMU and
//!   checks it from outside: its sound card recorded, its USB keypad pressed and unplugged,
//!   its GPIO button (a `gpio-sim` line built for the image's kernel, `xtask/src/gpio_sim.rs`)
//!   pressed, power cuts, the codes checked by a verifier (`xtask/src/system_test.rs`; the
//!   hearing in `xtask/src/hearing.rs`); `--hear WAV` decodes a kept recording instead.
//! - `voices [--check] [TAG...]`: render every voice's clips (`voices/<lang>/clips/<voice>/`)
//!   at every speed step with the engine the voice names (espeak-ng, flite), with a progress
//!   bar, through the speech crate's `codereader-speak clips`; `--check` validates recorded
//!   voices instead (`voices/RECORDING.md`).
//! - `intelligibility [--count N] [--seed S] [--speed STEP] [--only ID,...]`: share of random
//!   six-digit codes an offline recognizer (PocketSphinx) hears exactly, per English voice, at
//!   a rate step (default 0) (`docs/voices.md`).
//! - `bench-verifier`: load-test the verifier HTTP service on loopback (SQLite and
//!   PostgreSQL) and print verifies/s and p50/p99 latency; extra arguments go to the load
//!   generator (`crates/server/benches/load.rs`).
//!
//! Kept to the standard library so it compiles in seconds on a fresh machine.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod deb;
mod deb_check;
mod deb_verifier;
mod demo;
mod dist;
mod dpkg;
mod gpio_sim;
mod hearing;
mod image;
mod intelligibility;
mod packages;
mod system_test;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::demo(&args[1..]),
        Some("dist") => dist::dist(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("deb-check") => deb_check::deb_check(&args[1..]),
        Some("voices") => voices(&args[1..]),
        Some("image") => image::image(&args[1..]),
        Some("system-test") => system_test::system_test(&args[1..]),
        Some("intelligibility") => intelligibility::intelligibility(&args[1..]),
        Some("bench-verifier") => bench_verifier(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown task '{other}'; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         Tasks:\n  \
         demo    speak the current code of a demo token (installs what it needs)\n  \
         dist    release tarball and .deb of the device program [--target TRIPLE],\n          \
                 and the verifier's .deb (this machine's architecture; --verifier-only)\n  \
         deb-check [--verifier-only]\n          \
                 build, lint, install, use and purge test .debs (root; CI)\n  \
         test    install test dependencies, then fmt --check, clippy -D warnings, doc, test,\n          \
                 deb-check and system-test\n  \
         image [--arch amd64|arm64]\n          \
                 the appliance: a bootable Debian disk image with the device (target/image/)\n  \
         system-test [--arch amd64|arm64] [--power-cuts N]\n          \
                 boot the test image in QEMU and drive it like a person (root);\n          \
                 --hear WAV [VOICES]: decode a kept recording of it\n  \
         voices [--check] [TAG...]\n          \
                 render every voice's clips with its engine at every speed step;\n          \
                 --check: validate recorded voices (voices/RECORDING.md)\n  \
         intelligibility [--count N] [--seed S] [--speed STEP] [--only ID,...]\n          \
                 share of random codes an offline recognizer hears exactly, per English voice\n          \
                 (--only flite-slt,espeak,espeak-ng:en-us,...: just those voices)\n  \
         bench-verifier [--seconds S] [--connections C] [--stores sqlite,postgres]\n          \
                 load-test the verifier service on loopback; prints verifies/s, p50, p99\n  \
         help    this text"
    );
}

/// The cargo that runs this xtask, so that the same toolchain does the work.
/// The project's version (xtask takes the workspace's), for package and tarball names.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The workspace root (xtask lives in `<root>/xtask`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion; a non-zero exit is an error naming the step.
fn run(step: &str, command: &mut Command) -> Result<(), String> {
    println!("xtask: {step}");
    let status = timed(step, || {
        command
            .status()
            .map_err(|e| format!("{step}: cannot start: {e}"))
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step}: failed ({status})"))
    }
}

/// Runs `task` and prints how long it took, so a CI log shows where its minutes went.
fn timed<T>(step: &str, task: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let started = std::time::Instant::now();
    let result = task();
    println!("xtask: {step}: {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// Runs a command and keeps what it printed; only a failure to start it is an error.
pub(crate) fn output(command: &mut Command) -> Result<std::process::Output, String> {
    command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))
}

/// A finished command's standard output, or an error naming `step` with all it printed.
pub(crate) fn ok(step: &str, out: &std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{step}: failed ({})\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `message()` as the error when `condition` does not hold.
pub(crate) fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

fn test(_args: &[String]) -> Result<(), String> {
    packages::ensure(packages::TEST)?;
    // The speech crate's intelligibility test needs PocketSphinx (PyPI, pinned, in a
    // virtualenv under target/); it is told where with CODEREADER_ASR_PYTHON.
    let asr_python = intelligibility::recognizer_python()?;
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo doc",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "cargo test",
        cargo()
            .args(["test", "--workspace", "--all-targets", "--locked"])
            .env("CODEREADER_ASR_PYTHON", &asr_python)
            // The device's default language follows the locale (Danish without one); the
            // tests expect that default, whatever the machine's locale is.
            .env("LC_ALL", "C.UTF-8"),
    )?;
    // `--all-targets` skips doc tests; run them too.
    run(
        "cargo test --doc",
        cargo().args(["test", "--workspace", "--doc", "--locked"]),
    )?;
    // The Debian package, installed, used and purged on this machine.
    timed("deb-check", || deb_check::deb_check(&[]))?;
    // The appliance booted in QEMU and used like a person (it installs QEMU, mmdebstrap and
    // the firmware itself; the image is cached by content under /var/cache/codereader).
    timed("system-test", || system_test::system_test(&[]))
}

/// Renders the clips of every voice of every pack in `voices/` (or of the tags given as
/// arguments) with the engine each voice names; with `--check`, validates the recorded voices
/// instead (nothing is rendered).
pub(crate) fn voices(args: &[String]) -> Result<(), String> {
    let check = args.iter().any(|a| a == "--check");
    let args: Vec<String> = args.iter().filter(|a| *a != "--check").cloned().collect();
    let args = args.as_slice();
    packages::ensure(if check {
        packages::DEMO
    } else {
        packages::VOICES
    })?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .join("voices");
    let mut tags: Vec<String> = Vec::new();
    let entries = std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", root.display()))?
            .path();
        let tag = path.file_name().and_then(|n| n.to_str());
        if let (true, Some(tag)) = (path.join("voice.toml").is_file(), tag) {
            tags.push(tag.to_owned());
        }
    }
    tags.sort();
    if let Some(unknown) = args.iter().find(|a| !tags.contains(a)) {
        return Err(format!("no voice pack `{unknown}` in {}", root.display()));
    }
    if !args.is_empty() {
        tags.retain(|t| args.contains(t));
    }
    let command = if check { "check" } else { "clips" };
    for tag in &tags {
        run(
            &format!("{command} voices of `{tag}`"),
            cargo()
                .args(["run", "--quiet", "--package", "codereader-speech"])
                .args(["--bin", "codereader-speak", "--", command, "--voices"])
                .arg(&root)
                .args(["--lang", tag]),
        )?;
    }
    Ok(())
}

fn bench_verifier(args: &[String]) -> Result<(), String> {
    // PostgreSQL (and everything else the server's tests need) comes from the TEST list.
    packages::ensure(packages::TEST)?;
    run(
        "verifier load benchmark",
        cargo()
            .args([
                "bench",
                "--package",
                "codereader-verifier-server",
                "--bench",
                "load",
                "--",
            ])
            .args(args),
    )
}
