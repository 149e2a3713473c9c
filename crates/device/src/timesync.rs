//! Whether the clock can be trusted for a time-based code: synchronised since boot, or not.
//!
//! A Raspberry Pi has no battery-backed clock. At boot, systemd-timesyncd sets the time saved
//! at the last shutdown or sync (`/var/lib/systemd/timesync/clock`); after a power cut without
//! network that time is stale, minutes or days behind, and a TOTP code from it is wrong while
//! looking right. The "earlier than the build" check cannot see that.
//!
//! systemd-timesyncd creates `/run/systemd/timesync/synchronized` when it first synchronises
//! the kernel clock (the kernel's own `STA_UNSYNC` flag clears at the same moment); `/run` is
//! a tmpfs, so the file means "synchronised since this boot". The kernel flag itself is not
//! read: `adjtimex(2)` needs `unsafe` (which this crate forbids) and the service's
//! `ProtectClock=` refuses it even read-only. Devices with a battery-backed clock (an RTC
//! HAT) or another time daemon set `[clock] unsynced = "ignore"` (or point `sync_flag` at
//! what their daemon writes).
//!
//! Where the flag's directory does not exist at all, no systemd-timesyncd runs on this system
//! (a desktop with chrony or ntpd, a container): nothing here can tell whether the clock is
//! synchronised, so nothing is said. Saying "the clock may be wrong" before every code on a
//! machine whose clock is fine would be a wrong word, and a user who hears it every time
//! learns to ignore it. The unit starts after `systemd-timesyncd.service`, so on a Pi the
//! directory exists before the first code.
//!
//! Only TOTP tokens depend on the clock, and only when the time is not given (`--at`).

use std::path::Path;

use crate::config::{ClockConfig, UnsyncedClock};
use crate::token_file::Progress;

/// What to do about the clock before a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVerdict {
    /// Synchronised, not needed (HOTP, `--at`), or not checked (`ignore`): speak the code.
    Trusted,
    /// Not synchronised since boot: say "the clock may be wrong", then the code.
    Warn,
    /// Not synchronised since boot and the config says refuse: say so, give no code.
    Refuse,
}

/// What is known of the clock's synchronisation since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// `flag` exists: synchronised since boot.
    Synchronised,
    /// The time daemon runs (the flag's directory exists) but has not synchronised yet.
    NotYet,
    /// No daemon writes the flag here (its directory is missing): unknown, not doubted.
    Unknown,
}

/// Whether the clock was synchronised since boot, judged by `flag`.
pub fn sync_state(flag: &Path) -> SyncState {
    if flag.exists() {
        SyncState::Synchronised
    } else if flag.parent().is_some_and(Path::is_dir) {
        SyncState::NotYet
    } else {
        SyncState::Unknown
    }
}

/// The verdict for a code of a token with `progress` (`None`: no usable token, nothing to
/// check) at `at` (`Some`: a given time, not the clock).
pub fn verdict(config: &ClockConfig, at: Option<u64>, progress: Option<&Progress>) -> ClockVerdict {
    let uses_clock = at.is_none() && matches!(progress, Some(Progress::Totp { .. }));
    if !uses_clock
        || config.unsynced == UnsyncedClock::Ignore
        || sync_state(&config.sync_flag) != SyncState::NotYet
    {
        return ClockVerdict::Trusted;
    }
    match config.unsynced {
        UnsyncedClock::Refuse => ClockVerdict::Refuse,
        _ => ClockVerdict::Warn,
    }
}

/// The log line for a verdict other than [`ClockVerdict::Trusted`].
pub fn explain(config: &ClockConfig, verdict: ClockVerdict) -> Option<String> {
    let why = format!(
        "the clock has not been synchronised since boot ({} does not exist)",
        config.sync_flag.display()
    );
    match verdict {
        ClockVerdict::Trusted => None,
        ClockVerdict::Warn => Some(format!(
            "warning: {why}; saying \"the clock may be wrong\" before the code"
        )),
        ClockVerdict::Refuse => Some(format!(
            "{why}, and [clock] unsynced = \"refuse\": no code given"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use codereader_otp::{Counter, Period, UnixTime};

    fn totp() -> Progress {
        Progress::Totp {
            period: Period::new(30).unwrap(),
            t0: UnixTime(0),
            last_step: None,
        }
    }

    #[test]
    fn only_a_totp_code_from_an_unsynchronised_clock_is_doubted() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("synchronized");
        let mut config = ClockConfig {
            unsynced: UnsyncedClock::Warn,
            sync_flag: flag.clone(),
        };
        let hotp = Progress::Hotp { next: Counter(0) };
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Warn);
        assert!(
            explain(&config, ClockVerdict::Warn)
                .unwrap()
                .contains("synchronized")
        );
        assert_eq!(verdict(&config, None, Some(&hotp)), ClockVerdict::Trusted);
        assert_eq!(
            verdict(&config, Some(5), Some(&totp())),
            ClockVerdict::Trusted
        );
        assert_eq!(verdict(&config, None, None), ClockVerdict::Trusted);
        config.unsynced = UnsyncedClock::Refuse;
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Refuse);
        config.unsynced = UnsyncedClock::Ignore;
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Trusted);
        config.unsynced = UnsyncedClock::Refuse;
        std::fs::write(&flag, "").unwrap();
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Trusted);
        assert_eq!(explain(&config, ClockVerdict::Trusted), None);
    }

    #[test]
    fn without_a_time_daemon_nothing_is_doubted() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClockConfig {
            unsynced: UnsyncedClock::Refuse,
            sync_flag: dir.path().join("no-daemon").join("synchronized"),
        };
        assert_eq!(sync_state(&config.sync_flag), SyncState::Unknown);
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Trusted);
        std::fs::create_dir(dir.path().join("no-daemon")).unwrap();
        assert_eq!(sync_state(&config.sync_flag), SyncState::NotYet);
        assert_eq!(verdict(&config, None, Some(&totp())), ClockVerdict::Refuse);
    }
}
