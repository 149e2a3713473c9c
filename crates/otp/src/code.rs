//! A one-time code as the user hears and types it: 6 to 8 ASCII digits, leading zeros kept.
//!
//! Codes are compared in constant time so that a verifier does not reveal, through timing,
//! how many leading digits of a guess were right.

use std::fmt;

use subtle::{Choice, ConstantTimeEq};

/// How many digits a code has: 6, 7 or 8 (RFC 4226 §5.3 allows 6 and more; HMAC-SHA1's
/// 31-bit truncation cannot fill more than 9, and tokens in practice use 6 or 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digits(u8);

/// A digit count outside 6..=8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("codes have 6, 7 or 8 digits, not {0}")]
pub struct DigitsError(pub u32);

impl Digits {
    /// Six digits, the default of every authenticator and of the national eID.
    pub const SIX: Digits = Digits(6);
    /// Seven digits.
    pub const SEVEN: Digits = Digits(7);
    /// Eight digits, used by the RFC 6238 test vectors and some hardware tokens.
    pub const EIGHT: Digits = Digits(8);

    /// Checks that `n` is 6, 7 or 8.
    ///
    /// # Errors
    /// [`DigitsError`] for any other count.
    pub fn new(n: u32) -> Result<Self, DigitsError> {
        match n {
            6..=8 => Ok(Digits(n as u8)),
            _ => Err(DigitsError(n)),
        }
    }

    /// The count as a number.
    pub fn get(self) -> u32 {
        u32::from(self.0)
    }

    /// 10 to the power of the count: the modulus of the truncated HMAC value.
    pub(crate) fn modulus(self) -> u32 {
        10u32.pow(u32::from(self.0))
    }
}

impl Default for Digits {
    fn default() -> Self {
        Digits::SIX
    }
}

impl fmt::Display for Digits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a typed code was refused before any cryptography ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// Nothing was typed.
    #[error("the code is empty")]
    Empty,
    /// Fewer than 6 or more than 8 characters.
    #[error("a code has 6 to 8 digits; this one has {len} characters")]
    WrongLength {
        /// Number of characters given.
        len: usize,
    },
    /// A character that is not an ASCII digit 0-9 (other scripts' digits included).
    #[error("character {position} of the code is not a digit 0-9")]
    NotDigit {
        /// 1-based position of the first offending character.
        position: usize,
    },
}

/// A one-time code: 6 to 8 ASCII digits.
///
/// `Debug` hides the digits (codes must not end up in logs by accident); read them with
/// [`Code::as_str`] where showing them is the point (the device speaking or printing it).
/// Equality is constant-time over the digits and the length.
#[derive(Clone, Copy)]
pub struct Code {
    ascii: [u8; 8],
    len: u8,
}

impl Code {
    /// Parses what a user typed. Only ASCII `0`-`9`; no spaces or separators are removed,
    /// because a front end that wants to allow "123 456" should say so itself.
    ///
    /// # Errors
    /// [`CodeError`] naming what is wrong, never echoing the input.
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        if text.is_empty() {
            return Err(CodeError::Empty);
        }
        let len = text.chars().count();
        if let Some((index, _)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
            if (6..=8).contains(&len) {
                return Err(CodeError::NotDigit {
                    position: index + 1,
                });
            }
        }
        if !(6..=8).contains(&len) {
            return Err(CodeError::WrongLength { len });
        }
        let mut ascii = [0u8; 8];
        ascii[..len].copy_from_slice(text.as_bytes());
        Ok(Code {
            ascii,
            len: len as u8,
        })
    }

    /// Formats a truncated HOTP value with exactly `digits` digits, zero-padded.
    pub(crate) fn from_value(mut value: u32, digits: Digits) -> Self {
        let len = digits.0;
        let mut ascii = [0u8; 8];
        for slot in ascii[..usize::from(len)].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        Code { ascii, len }
    }

    /// The digits as text, e.g. `"004721"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored (checked in `parse`, produced in `from_value`).
        std::str::from_utf8(&self.ascii[..usize::from(self.len)]).unwrap_or("")
    }

    /// Number of digits.
    pub fn digits(&self) -> Digits {
        Digits(self.len)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code([redacted; {} digits])", self.len)
    }
}

impl ConstantTimeEq for Code {
    fn ct_eq(&self, other: &Self) -> Choice {
        // Unused bytes are zero in both, so comparing all eight is exact and branch-free.
        self.ascii.ct_eq(&other.ascii) & self.len.ct_eq(&other.len)
    }
}

impl PartialEq for Code {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Code {}

impl std::str::FromStr for Code {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Code::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_leading_zeros() {
        assert_eq!(Code::from_value(4721, Digits::SIX).as_str(), "004721");
        assert_eq!(
            Code::from_value(7081804, Digits::EIGHT).as_str(),
            "07081804"
        );
        assert_eq!(Code::parse("004721").unwrap().as_str(), "004721");
        assert_eq!(
            Code::parse("004721").unwrap(),
            Code::from_value(4721, Digits::SIX)
        );
        assert_ne!(
            Code::parse("0004721").unwrap(),
            Code::parse("004721").unwrap()
        );
    }

    #[test]
    fn malformed_codes_are_named() {
        let table: &[(&str, CodeError)] = &[
            ("", CodeError::Empty),
            ("12345", CodeError::WrongLength { len: 5 }),
            ("123456789", CodeError::WrongLength { len: 9 }),
            ("12a456", CodeError::NotDigit { position: 3 }),
            ("123 456", CodeError::NotDigit { position: 4 }),
            ("١٢٣٤٥٦", CodeError::NotDigit { position: 1 }),
            ("+12345", CodeError::NotDigit { position: 1 }),
        ];
        for (input, expected) in table {
            assert_eq!(
                &Code::parse(input).unwrap_err(),
                expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn debug_hides_digits() {
        assert_eq!(
            format!("{:?}", Code::parse("123456").unwrap()),
            "Code([redacted; 6 digits])"
        );
    }

    #[test]
    fn digits_range() {
        assert!(Digits::new(5).is_err());
        assert!(Digits::new(9).is_err());
        assert_eq!(Digits::new(7).unwrap(), Digits::SEVEN);
    }
}
