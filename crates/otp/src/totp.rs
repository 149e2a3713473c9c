//! TOTP (RFC 6238): HOTP over the number of whole periods since T0.
//!
//! Time is always an argument ([`UnixTime`]); this module never reads a clock. All step
//! arithmetic is checked, so times before T0 or steps whose start does not fit in 64 bits are
//! errors instead of wrapping (a classic underflow in TOTP libraries near the epoch).

use std::fmt;
use std::num::NonZeroU64;

use crate::code::{Code, Digits};
use crate::hotp::{Algorithm, Counter, Hotp};
use crate::secret::Secret;

/// Seconds since 1970-01-01T00:00:00Z, as given by the caller. 64 bits: no 2038 problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

/// The TOTP period in seconds; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period(NonZeroU64);

/// A period of zero seconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the TOTP period must be at least one second")]
pub struct PeriodError;

impl Period {
    /// 30 seconds (RFC 6238 §5.2).
    pub const DEFAULT: Period = Period(NonZeroU64::MIN.saturating_add(29));

    /// A period of `seconds`.
    ///
    /// # Errors
    /// [`PeriodError`] when `seconds` is zero.
    pub fn new(seconds: u64) -> Result<Self, PeriodError> {
        NonZeroU64::new(seconds).map(Period).ok_or(PeriodError)
    }

    /// The period in seconds.
    pub fn seconds(self) -> u64 {
        self.0.get()
    }
}

impl Default for Period {
    fn default() -> Self {
        Period::DEFAULT
    }
}

/// The number of whole periods since T0: the HOTP counter TOTP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeStep(pub u64);

impl TimeStep {
    /// The step that contains `time`: whole `period`s since `t0`. The one place the TOTP step
    /// is computed, for callers that hold no secret (a device checking its clock) as for
    /// [`Totp::step_at`].
    ///
    /// # Errors
    /// [`TimeError::BeforeT0`] when `time` is earlier than `t0`.
    pub fn at(time: UnixTime, period: Period, t0: UnixTime) -> Result<Self, TimeError> {
        let elapsed = time.0.checked_sub(t0.0).ok_or(TimeError::BeforeT0 {
            time: time.0,
            t0: t0.0,
        })?;
        Ok(TimeStep(elapsed / period.seconds()))
    }
}

impl fmt::Display for TimeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A time that has no time step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// The time is earlier than the token's T0.
    #[error("the time {time} is before the token's start time T0 = {t0}")]
    BeforeT0 {
        /// Time given.
        time: u64,
        /// The token's T0.
        t0: u64,
    },
}

/// A TOTP generator for one secret.
#[derive(Debug, Clone)]
pub struct Totp {
    hotp: Hotp,
    period: Period,
    t0: UnixTime,
}

impl Totp {
    /// Prepares a generator (the HMAC key schedule runs once, here).
    pub fn new(
        secret: &Secret,
        algorithm: Algorithm,
        digits: Digits,
        period: Period,
        t0: UnixTime,
    ) -> Self {
        Totp {
            hotp: Hotp::new(secret, algorithm, digits),
            period,
            t0,
        }
    }

    /// The time step that contains `time`.
    ///
    /// # Errors
    /// [`TimeError::BeforeT0`] when `time` is earlier than T0.
    pub fn step_at(&self, time: UnixTime) -> Result<TimeStep, TimeError> {
        TimeStep::at(time, self.period, self.t0)
    }

    /// The first second of `step`, or `None` if it does not fit in 64 bits.
    pub fn step_start(&self, step: TimeStep) -> Option<UnixTime> {
        step.0
            .checked_mul(self.period.seconds())
            .and_then(|s| s.checked_add(self.t0.0))
            .map(UnixTime)
    }

    /// The code valid at `time`.
    ///
    /// # Errors
    /// [`TimeError::BeforeT0`] when `time` is earlier than T0.
    pub fn code_at(&self, time: UnixTime) -> Result<Code, TimeError> {
        Ok(self.code_for_step(self.step_at(time)?))
    }

    /// The code of a given time step (for verifiers that scan a window of steps).
    pub fn code_for_step(&self, step: TimeStep) -> Code {
        self.hotp.code(Counter(step.0))
    }

    /// The token's hash function.
    pub fn algorithm(&self) -> Algorithm {
        self.hotp.algorithm()
    }

    /// The token's code length.
    pub fn digits(&self) -> Digits {
        self.hotp.digits()
    }

    /// The token's period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The token's T0.
    pub fn t0(&self) -> UnixTime {
        self.t0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::KeyPolicy;

    fn totp(t0: u64) -> Totp {
        let s = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
        Totp::new(
            &s,
            Algorithm::Sha1,
            Digits::SIX,
            Period::DEFAULT,
            UnixTime(t0),
        )
    }

    #[test]
    fn default_period_is_thirty() {
        assert_eq!(Period::DEFAULT.seconds(), 30);
        assert_eq!(Period::new(0), Err(PeriodError));
    }

    #[test]
    fn before_t0_is_an_error_not_a_wrap() {
        assert_eq!(
            totp(100).step_at(UnixTime(99)).unwrap_err(),
            TimeError::BeforeT0 { time: 99, t0: 100 }
        );
        assert_eq!(totp(100).step_at(UnixTime(100)).unwrap(), TimeStep(0));
    }

    #[test]
    fn step_bounds() {
        let t = totp(0);
        assert_eq!(
            t.step_at(UnixTime(u64::MAX)).unwrap(),
            TimeStep(u64::MAX / 30)
        );
        assert_eq!(t.step_start(TimeStep(u64::MAX)), None);
        assert_eq!(t.step_start(TimeStep(2)), Some(UnixTime(60)));
    }
}
