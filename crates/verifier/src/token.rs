//! Names and parameters of tokens: serials, users, callers, and how a token makes codes.
//!
//! Identifiers are newtypes so that a serial can never be passed where a user id is meant.
//! They are validated once (non-empty, bounded, printable) and then trusted everywhere.
//! They are shared (`Arc<str>`): a verification copies a token id into its record, its audit
//! line and its proof, and copying must not cost an allocation each time.

use std::fmt;
use std::sync::Arc;

use codereader_otp::{Algorithm, Digits, Period, UnixTime};

/// Longest identifier (serial, user id, caller, key id) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier is empty.
    #[error("the {what} is empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The identifier is longer than [`MAX_ID_LEN`].
    #[error("the {what} is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The identifier contains a control character.
    #[error("the {what} contains a control character")]
    Control {
        /// Which kind of identifier.
        what: &'static str,
    },
}

fn check_id(what: &'static str, text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { what });
    }
    if text.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len: text.len(),
            max: MAX_ID_LEN,
        });
    }
    if text.chars().any(char::is_control) {
        return Err(IdError::Control { what });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an identifier.
            ///
            /// # Errors
            /// [`IdError`] when it is empty, longer than [`MAX_ID_LEN`] bytes or contains a
            /// control character.
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text: String = text.into();
                check_id($what, &text)?;
                Ok(Self(Arc::from(text)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A token's serial number: its identity in the store (the PSKC key id or device serial).
    TokenId,
    "token id"
);
id_type!(
    /// The id of a user to whom a token is bound after activation.
    UserId,
    "user id"
);
id_type!(
    /// Who asked for an operation (a server name, an admin, a batch job); kept in the audit trail.
    Caller,
    "caller"
);

id_type!(
    /// Whom a verification came from, as the backend saw it (the end user's address, say):
    /// the key of a [`crate::ClientBudget`].
    ClientId,
    "client id"
);

id_type!(
    /// The name of a key-encryption key; stored beside every seal so keys can be rotated.
    KeyId,
    "key id"
);

/// Whether a token counts time or events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// TOTP (RFC 6238): codes change every `period` seconds from `t0`.
    Totp {
        /// Seconds per code.
        period: Period,
        /// The start of step 0.
        t0: UnixTime,
    },
    /// HOTP (RFC 4226): codes advance with a counter.
    Hotp,
}

/// How a token computes its codes (everything but the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenParams {
    /// TOTP or HOTP.
    pub kind: TokenKind,
    /// The hash function.
    pub algorithm: Algorithm,
    /// Code length.
    pub digits: Digits,
}

/// The mutable verification state of a token, as kept by a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    /// The lowest time step (TOTP) or counter (HOTP) that may still be accepted: one past the
    /// last accepted value. Everything below was used or skipped and is never accepted again.
    pub next: u64,
    /// The offset, in steps (TOTP) or counters (HOTP), of the last accepted value from where
    /// it was expected. TOTP windows are centred on the current step plus this drift.
    pub drift: i64,
    /// Consecutive failed attempts since the last success or unlock.
    pub failures: u32,
    /// When the last failure happened (for the growing delay).
    pub last_failure_at: Option<UnixTime>,
    /// When the token was locked, if it is.
    pub locked_at: Option<UnixTime>,
    /// An administrator may disable a token; a disabled token accepts nothing.
    pub enabled: bool,
}

impl TokenState {
    /// The state of a freshly imported token whose first usable step or counter is `next`.
    pub fn fresh(next: u64) -> Self {
        TokenState {
            next,
            drift: 0,
            failures: 0,
            last_failure_at: None,
            locked_at: None,
            enabled: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert_eq!(
            TokenId::new("").unwrap_err(),
            IdError::Empty { what: "token id" }
        );
        assert_eq!(
            UserId::new("a\nb").unwrap_err(),
            IdError::Control { what: "user id" }
        );
        assert!(matches!(
            Caller::new("x".repeat(129)).unwrap_err(),
            IdError::TooLong { len: 129, .. }
        ));
        assert_eq!(TokenId::new("SN-1").unwrap().as_str(), "SN-1");
    }
}
