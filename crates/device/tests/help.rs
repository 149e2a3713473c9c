//! The binary's help: every command is listed, with the exit statuses. (Also makes
//! `cargo test -p codereader` build the binary that the end-to-end tests in `tests/` run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn help_lists_every_command_and_the_exit_statuses() {
    let out = Command::new(env!("CARGO_BIN_EXE_codereader"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in [
        "enroll", "code", "speak", "settings", "run", "clock", "status",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from\n{help}"
        );
    }
    assert!(help.contains("6 no audio device"), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_codereader"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad command line exits with 2"
    );
}
