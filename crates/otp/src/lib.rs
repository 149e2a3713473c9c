//! One-time codes for codereader: HOTP (RFC 4226), TOTP (RFC 6238) and the otpauth:// Key URI.
//!
//! This crate is the arithmetic every other part of codereader trusts, so it is kept pure:
//! it never reads the clock (time is always an argument), never does I/O and never logs.
//! Secrets live in [`Secret`], which is zeroized on drop and never printed; codes live in
//! [`Code`], which keeps leading zeros and compares in constant time. Token vendors' PSKC
//! files (RFC 6030) are read by [`pskc::parse`].
//!
//! ```
//! use codereader_otp::{Algorithm, Digits, KeyPolicy, Period, Secret, Totp, UnixTime};
//!
//! let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226)?;
//! let totp = Totp::new(&secret, Algorithm::Sha1, Digits::EIGHT, Period::DEFAULT, UnixTime(0));
//! assert_eq!(totp.code_at(UnixTime(59))?.as_str(), "94287082");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod base32;
pub mod calendar;
mod code;
mod hotp;
pub mod percent;
pub mod pskc;
mod secret;
#[cfg(target_arch = "x86_64")]
mod shani;
mod totp;
mod uri;

pub use crate::code::{Code, CodeError, Digits, DigitsError};
pub use crate::hotp::{Algorithm, AlgorithmError, Codes, Counter, Hotp};
pub use crate::secret::{KeyPolicy, MAX_SECRET_LEN, MIN_SECRET_LEN, Secret, SecretError};
pub use crate::totp::{Period, PeriodError, TimeError, TimeStep, Totp, UnixTime};
pub use crate::uri::{KeyUri, OtpKind, UriError};
