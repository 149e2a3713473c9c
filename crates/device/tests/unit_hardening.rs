//! The systemd unit's sandbox, as `systemd-analyze security --offline=true` scores it: the
//! service must stay at 2.5 or lower ("OK"; the unit scored 6.3 before it was hardened), and
//! the unit must not name groups a system may lack (the package's `postinst` adds the user
//! to the groups that exist; `SupplementaryGroups=` with a missing group stops the unit).
//!
//! CI installs `systemd` (for `systemd-analyze`; it does not run as PID 1 there, see the
//! `TEST` list in `xtask/src/packages.rs`). Where the tool is absent the score test fails:
//! a check that passes without running would hide a weakened unit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn unit() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/codereader.service"
    ))
}

/// The "Overall exposure level" the analysis prints, e.g. 0.9.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for codereader.service"))?;
    line.rsplit(':')
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_unit_scores_ok_in_the_offline_security_analysis() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze could not be run ({e}): install the `systemd` package \
                 (xtask/src/packages.rs TEST) to check the unit's score"
            )
        });
    let report = String::from_utf8_lossy(&out.stdout);
    let score = exposure(&report).unwrap_or_else(|| {
        panic!(
            "no exposure level in the analysis:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{report}");
}

#[test]
fn the_unit_takes_its_groups_from_the_user_and_allows_only_its_devices() {
    let text = std::fs::read_to_string(unit()).unwrap();
    let settings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("SupplementaryGroups=")),
        "the unit names groups a system may lack"
    );
    for needed in [
        "User=codereader",
        "DevicePolicy=closed",
        "DeviceAllow=char-alsa rw",
        "DeviceAllow=char-input r",
        "DeviceAllow=char-gpiochip rw",
        "CapabilityBoundingSet=",
        "PrivateNetwork=yes",
    ] {
        assert!(settings.contains(&needed), "{needed} missing");
    }
}

#[test]
fn the_exposure_is_read_from_the_report() {
    let report = "  NAME  DESCRIPTION  EXPOSURE\n\n\
                  → Overall exposure level for codereader.service: 0.9 SAFE 😀\n";
    assert_eq!(exposure(report), Some(0.9));
    assert_eq!(exposure("no such line"), None);
}
