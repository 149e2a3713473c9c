//! Project chores, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `demo`: the README's main job: install what it needs, then show a demo token's code.
//! - `test`: the README's test command and what CI runs: install the Debian packages the
//!   tests need, then `cargo fmt --check`, `cargo clippy -D warnings`, `cargo doc` without
//!   warnings and `cargo test --workspace`.
//! - `bench-verifier`: load-test the verifier HTTP service on loopback (SQLite and
//!   PostgreSQL) and print verifies/s and p50/p99 latency; extra arguments go to the load
//!   generator (`crates/server/benches/load.rs`).
//!
//! Kept to the standard library so it compiles in seconds on a fresh machine.

use std::env;
use std::process::{Command, ExitCode};

mod packages;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
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
         demo    show the current code of a demo token (installs what it needs)\n  \
         test    install test dependencies, then fmt --check, clippy -D warnings, doc, test\n  \
         bench-verifier [--seconds S] [--connections C] [--stores sqlite,postgres]\n          \
                 load-test the verifier service on loopback; prints verifies/s, p50, p99\n  \
         help    this text"
    );
}

/// The cargo that runs this xtask, so that the same toolchain does the work.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion; a non-zero exit is an error naming the step.
fn run(step: &str, command: &mut Command) -> Result<(), String> {
    println!("xtask: {step}");
    let status = command
        .status()
        .map_err(|e| format!("{step}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step}: failed ({status})"))
    }
}

fn demo(_args: &[String]) -> Result<(), String> {
    packages::ensure(packages::DEMO)?;
    run(
        "demo token",
        cargo().args([
            "run",
            "--quiet",
            "--package",
            "codereader-otp",
            "--example",
            "demo",
        ]),
    )
}

fn test(_args: &[String]) -> Result<(), String> {
    packages::ensure(packages::TEST)?;
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
        cargo().args(["test", "--workspace", "--all-targets", "--locked"]),
    )?;
    // `--all-targets` skips doc tests; run them too.
    run(
        "cargo test --doc",
        cargo().args(["test", "--workspace", "--doc", "--locked"]),
    )
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
