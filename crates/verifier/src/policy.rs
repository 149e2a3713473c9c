//! The operator's choices: window sizes, lockout, delays, resync range.
//!
//! A `Policy` is plain data with RFC-minded defaults; the rules in [`crate::Verifier`] read it
//! and nothing else, so a deployment's behaviour is visible in one place.

/// How the verifier treats codes and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// TOTP: steps accepted either side of the expected step (RFC 6238 §5.2). Default 1.
    pub totp_window: u32,
    /// HOTP: counters accepted ahead of the next expected one (RFC 4226 §7.4). Default 10.
    pub hotp_look_ahead: u32,
    /// Consecutive failures that lock a token (RFC 4226 §7.3). Default 3.
    pub max_failures: u32,
    /// If set, a locked token unlocks by itself this many seconds after it was locked.
    /// Default: none (an administrator unlocks).
    pub auto_unlock_after: Option<u64>,
    /// If set, the growing delay between failures (RFC 4226 §7.3 delay scheme). The delay is
    /// checked against the state read before the attempt, so attempts arriving at the same
    /// instant may all pass it; the lock (`max_failures`) is the hard limit, counted
    /// atomically.
    pub failure_delay: Option<FailureDelay>,
    /// If set, a lock is temporary and doubles: once `max_failures` consecutive failures
    /// are reached the token refuses codes for `base_seconds` after the last failure; after
    /// that one attempt is let through, and each further failure locks it again for twice as
    /// long (at most `max_seconds`), until a right code or an administrator clears the
    /// count. Default: none (the lock is permanent unless `auto_unlock_after` says otherwise;
    /// MitID-style). Like the delay, it is checked against the state read before the
    /// attempt; every failure is counted atomically.
    pub temporary_lock: Option<FailureDelay>,
    /// Answer a verification for an unknown serial or user exactly like a wrong code
    /// ([`crate::Outcome::Rejected`], after a window's worth of code computations), so that
    /// answers do not tell which serials exist. The audit trail still says `unknown-token`.
    /// Default: off.
    pub unknown_as_rejected: bool,
    /// Resync, TOTP: steps either side of the current step searched for two consecutive codes.
    /// Default 2880 (±24 h at 30 s).
    pub resync_totp_window: u32,
    /// Resync, HOTP: counters ahead of the next expected one searched. Default 100.
    pub resync_hotp_look_ahead: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            totp_window: 1,
            hotp_look_ahead: 10,
            max_failures: 3,
            auto_unlock_after: None,
            failure_delay: None,
            temporary_lock: None,
            unknown_as_rejected: false,
            resync_totp_window: 2880,
            resync_hotp_look_ahead: 100,
        }
    }
}

impl Policy {
    /// Sets [`Policy::totp_window`].
    #[must_use]
    pub fn with_totp_window(mut self, steps: u32) -> Self {
        self.totp_window = steps;
        self
    }
    /// Sets [`Policy::max_failures`] (at least 1).
    #[must_use]
    pub fn with_max_failures(mut self, failures: u32) -> Self {
        self.max_failures = failures.max(1);
        self
    }
    /// Sets [`Policy::auto_unlock_after`].
    #[must_use]
    pub fn with_auto_unlock_after(mut self, seconds: Option<u64>) -> Self {
        self.auto_unlock_after = seconds;
        self
    }
    /// Sets [`Policy::failure_delay`].
    #[must_use]
    pub fn with_failure_delay(mut self, delay: Option<FailureDelay>) -> Self {
        self.failure_delay = delay;
        self
    }
    /// Sets [`Policy::temporary_lock`].
    #[must_use]
    pub fn with_temporary_lock(mut self, lock: Option<FailureDelay>) -> Self {
        self.temporary_lock = lock;
        self
    }
    /// Sets [`Policy::unknown_as_rejected`].
    #[must_use]
    pub fn with_unknown_as_rejected(mut self, on: bool) -> Self {
        self.unknown_as_rejected = on;
        self
    }
}

/// A doubling wait. As [`Policy::failure_delay`]: after `n` consecutive failures, the next
/// attempt is refused until `base_seconds * 2^(n-1)` seconds (at most `max_seconds`) have
/// passed since the last failure. As [`Policy::temporary_lock`]: the `k`-th lock lasts
/// `base_seconds * 2^(k-1)` seconds (at most `max_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureDelay {
    /// The delay after the first failure.
    pub base_seconds: u64,
    /// The longest delay.
    pub max_seconds: u64,
}

impl FailureDelay {
    /// The wait after `failures` consecutive failures.
    pub fn after(self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let doublings = (failures - 1).min(63);
        self.base_seconds
            .saturating_mul(1u64 << doublings)
            .min(self.max_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_and_caps() {
        let d = FailureDelay {
            base_seconds: 2,
            max_seconds: 60,
        };
        let waits: Vec<u64> = (0..8).map(|n| d.after(n)).collect();
        assert_eq!(waits, [0, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(d.after(u32::MAX), 60);
    }
}
