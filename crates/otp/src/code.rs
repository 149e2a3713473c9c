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

    /// The code of a truncated HOTP value: its last `digits` decimal digits, zero-padded
    /// (RFC 4226 §5.3: the value modulo 10^digits).
    pub(crate) fn from_value(value: u32, digits: Digits) -> Self {
        // The last eight digits, each from its own division by a constant (which compiles to
        // a multiplication), rather than a chain of divisions by ten: they are computed in
        // parallel, and a verifier formats every code of its window. Most significant first.
        let places = [10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];
        let mut word = 0u64;
        for (i, place) in places.into_iter().enumerate() {
            word |= u64::from(b'0' + (value / place % 10) as u8) << (8 * i);
        }
        // Byte i of the little-endian word is the i-th of the eight digits; dropping the
        // leading `8 - len` ones leaves zero bytes after the code, as `parse` does.
        let len = digits.0;
        let ascii = (word >> (8 * (8 - u32::from(len)))).to_le_bytes();
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
        // Unused bytes are zero in both, so comparing all eight is exact and branch-free. The
        // digits and the length are folded into one word compared once: `subtle` would compare
        // a byte slice byte by byte, each result behind an optimisation barrier (a call and a
        // volatile read), and a verifier compares every code of its window.
        let diff = (u64::from_ne_bytes(self.ascii) ^ u64::from_ne_bytes(other.ascii))
            | u64::from(self.len ^ other.len);
        diff.ct_eq(&0)
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
    fn values_are_reduced_and_formatted_like_the_rfc_says() {
        // RFC 4226 §5.3: Snum mod 10^Digit, zero-padded; any u32 (truncation gives 31 bits).
        let mut values = vec![0, 1, 9, 10, 99_999, 1_000_000, 12_345_678, 99_999_999];
        values.extend([100_000_000, 2_147_483_647, u32::MAX]);
        values.extend((0..20_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
        for value in values {
            for digits in [Digits::SIX, Digits::SEVEN, Digits::EIGHT] {
                let n = digits.get();
                let expected = format!("{:0n$}", value % 10u32.pow(n), n = n as usize);
                let code = Code::from_value(value, digits);
                assert_eq!(code.as_str(), expected, "{value} in {n} digits");
                assert_eq!(code, Code::parse(&expected).unwrap());
            }
        }
    }

    #[test]
    fn equality_sees_every_digit_and_the_length() {
        let base = Code::parse("12345678").unwrap();
        assert_eq!(base, Code::parse("12345678").unwrap());
        for position in 0..8 {
            let mut text = *b"12345678";
            text[position] = b'9';
            let other = Code::parse(std::str::from_utf8(&text).unwrap()).unwrap();
            assert_ne!(base, other, "digit {position}");
        }
        // Same leading digits, different lengths; and values that print alike in fewer digits.
        assert_ne!(base, Code::parse("1234567").unwrap());
        assert_ne!(
            Code::parse("123456").unwrap(),
            Code::parse("1234560").unwrap()
        );
        assert_ne!(
            Code::from_value(4721, Digits::SIX),
            Code::from_value(4721, Digits::SEVEN)
        );
        assert_eq!(
            Code::from_value(4721, Digits::SIX),
            Code::parse("004721").unwrap()
        );
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
