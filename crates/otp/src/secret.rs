//! The shared secret of a token: zeroized on drop, redacted in `Debug`, never `Display`ed.
//!
//! RFC 4226 §4 (R6) asks for at least 128 bits of key; older tokens and some apps use 80-bit
//! keys, so shorter keys are accepted only when the caller says so with
//! [`KeyPolicy::AllowLegacyShort`].

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::base32::{self, Base32Error};

/// Fewest secret bytes accepted under [`KeyPolicy::Rfc4226`] (128 bits, RFC 4226 §4 R6).
pub const MIN_SECRET_LEN: usize = 16;

/// Most secret bytes accepted: longer keys add nothing to HMAC-SHA-512 (its block is 128
/// bytes) and a cap keeps hostile input from allocating at will.
pub const MAX_SECRET_LEN: usize = 128;

/// How strict to be about the length of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPolicy {
    /// At least [`MIN_SECRET_LEN`] bytes, as RFC 4226 requires.
    #[default]
    Rfc4226,
    /// Any non-empty key: for importing legacy tokens (e.g. 80-bit authenticator secrets).
    AllowLegacyShort,
}

/// Why a secret was refused. Messages never contain any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No key bytes at all.
    #[error("the secret is empty")]
    Empty,
    /// Fewer bytes than the policy allows.
    #[error(
        "the secret is {len} bytes long; at least {min} bytes (128 bits) are required \
         (RFC 4226 R6) unless legacy short keys are explicitly allowed"
    )]
    TooShort {
        /// Length given.
        len: usize,
        /// Length required.
        min: usize,
    },
    /// More bytes than [`MAX_SECRET_LEN`].
    #[error("the secret is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// Length given.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// A character that is not in the base32 alphabet (A-Z, 2-7, case-insensitive, `=` padding).
    #[error("the secret is not valid base32: character {position} is not A-Z, 2-7 or padding")]
    InvalidBase32Character {
        /// 1-based position of the offending character.
        position: usize,
    },
    /// Base32 text whose length cannot encode whole bytes.
    #[error("the secret is not valid base32: {len} characters cannot encode whole bytes")]
    InvalidBase32Length {
        /// Number of base32 characters without padding.
        len: usize,
    },
}

impl From<Base32Error> for SecretError {
    fn from(e: Base32Error) -> Self {
        match e {
            Base32Error::Character { position } => SecretError::InvalidBase32Character { position },
            Base32Error::Length { len } => SecretError::InvalidBase32Length { len },
        }
    }
}

/// Key bytes of one token.
///
/// Dropping a `Secret` overwrites its bytes. `Debug` prints only the length; there is no
/// `Display`. Equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl Secret {
    /// Takes ownership of raw key bytes.
    ///
    /// # Errors
    /// [`SecretError::Empty`], [`SecretError::TooShort`] (under [`KeyPolicy::Rfc4226`]) or
    /// [`SecretError::TooLong`]. The refused bytes are zeroized before returning.
    pub fn new(mut bytes: Vec<u8>, policy: KeyPolicy) -> Result<Self, SecretError> {
        let len = bytes.len();
        let verdict = if len == 0 {
            Err(SecretError::Empty)
        } else if len > MAX_SECRET_LEN {
            Err(SecretError::TooLong {
                len,
                max: MAX_SECRET_LEN,
            })
        } else if policy == KeyPolicy::Rfc4226 && len < MIN_SECRET_LEN {
            Err(SecretError::TooShort {
                len,
                min: MIN_SECRET_LEN,
            })
        } else {
            Ok(())
        };
        match verdict {
            Ok(()) => Ok(Self { bytes }),
            Err(e) => {
                bytes.zeroize();
                Err(e)
            }
        }
    }

    /// Decodes base32 (RFC 4648 alphabet, any case, padding optional, spaces ignored), the way
    /// authenticator apps and otpauth URIs carry secrets.
    ///
    /// # Errors
    /// A base32 error naming the position (never the character), or a length error as in
    /// [`Secret::new`].
    pub fn from_base32(text: &str, policy: KeyPolicy) -> Result<Self, SecretError> {
        Self::new(base32::decode(text)?, policy)
    }

    /// The secret as unpadded upper-case base32, for writing an otpauth URI or a state file.
    /// The returned string holds the secret: zeroize it when done.
    pub fn to_base32(&self) -> String {
        base32::encode(&self.bytes)
    }

    /// The raw key bytes. Only for code that must hand them to a cipher or a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: an empty secret cannot be constructed. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.bytes.len())
    }
}

impl ConstantTimeEq for Secret {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Lengths are not secret (they show in the Debug output); contents are.
        self.bytes.ct_eq(&other.bytes)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_governs_short_keys() {
        let short = b"1234567890".to_vec();
        assert_eq!(
            Secret::new(short.clone(), KeyPolicy::Rfc4226).unwrap_err(),
            SecretError::TooShort { len: 10, min: 16 }
        );
        assert_eq!(
            Secret::new(short, KeyPolicy::AllowLegacyShort)
                .unwrap()
                .len(),
            10
        );
        assert_eq!(
            Secret::new(Vec::new(), KeyPolicy::AllowLegacyShort).unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            Secret::new(vec![7; 129], KeyPolicy::Rfc4226).unwrap_err(),
            SecretError::TooLong { len: 129, max: 128 }
        );
    }

    #[test]
    fn debug_never_shows_bytes() {
        let s = Secret::new(b"ABCDEFGHIJKLMNOPQRST".to_vec(), KeyPolicy::Rfc4226).unwrap();
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret([redacted; 20 bytes])");
        assert!(!shown.contains("ABC"));
    }

    #[test]
    fn base32_any_case_with_or_without_padding() {
        let a =
            Secret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", KeyPolicy::Rfc4226).unwrap();
        let b =
            Secret::from_base32("gezdgnbvgy3tqojqgezdgnbvgy3tqojq", KeyPolicy::Rfc4226).unwrap();
        assert_eq!(a.expose(), b"12345678901234567890");
        assert_eq!(a, b);
        let padded = Secret::from_base32(
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGE======",
            KeyPolicy::Rfc4226,
        )
        .unwrap();
        assert_eq!(padded.expose(), b"123456789012345678901");
        assert_eq!(
            Secret::from_base32("GEZD1NBV", KeyPolicy::AllowLegacyShort).unwrap_err(),
            SecretError::InvalidBase32Character { position: 5 }
        );
    }
}
