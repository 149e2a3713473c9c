//! The systemd unit shipped for the server stays hardened: `systemd-analyze security` rates
//! its exposure 2.5 or lower. Needs systemd-analyze (CI installs the `systemd` package, see
//! `TEST` in `xtask/src/packages.rs`); without it the test fails rather than pass unchecked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/codereader-verifier.service"
);

/// The exposure figure from `systemd-analyze security` output.
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{output}"));
    let figure = line
        .rsplit_once(": ")
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap();
    figure.parse().unwrap()
}

#[test]
fn server_unit_exposure_at_most_2_5() {
    let run = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", UNIT])
        .env("SYSTEMD_COLORS", "0")
        .output();
    let out = run.unwrap_or_else(|e| {
        panic!(
            "systemd-analyze could not be run ({e}): install the `systemd` package \
             (xtask/src/packages.rs TEST) to check the unit's rating"
        )
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let level = exposure(&text);
    assert!(level <= 2.5, "exposure {level} > 2.5:\n{text}");
}

#[test]
fn exposure_is_read_from_the_last_line() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for a.service: 1.4 OK :-)\n"),
        1.4
    );
}
