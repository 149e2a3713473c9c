//! The boundary between the server (HTTP handlers and offline commands) and the verifier
//! library.
//!
//! [`Library`] is the verifier with its store and keys; its calls take and return the
//! library's own types (`TokenId`, `OwnedSubject`, `Outcome`, `TokenInfo`, `AuditEntry`...),
//! so the server holds no copies of them. This module adds only what the server needs
//! besides: [`ServiceError`], the one mapping of the library's errors to the API's stable
//! error codes; [`Verdict`], an outcome with what an answer tells beside it; [`EnrollInput`],
//! a token's parameters as a request gives them; and the parsing of identifiers. Turning
//! library types into JSON is [`crate::wire`]'s job.
//!
//! Every call but [`Library::verify_then`] is blocking (it talks to the database): the HTTP
//! handlers run them with `tokio::task::spawn_blocking`.

use codereader_verifier::{
    Caller, ClientId, Outcome, SealError, StoreError, TokenId, UserId, VerifyError,
};
use zeroize::Zeroizing;

pub mod library;

pub use library::Library;

use crate::error_code::ErrorCode;

/// What a verification (or activation, or resync) decided, as an answer tells it: the
/// library's [`Outcome`] and what the server says beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the library decided.
    pub outcome: Outcome,
    /// For [`Outcome::Replayed`], the token the code was for: an answer names it as it names
    /// an accepted one (`None` otherwise, or if the token vanished meanwhile).
    pub replayed: Option<TokenId>,
    /// A rejection does not tell how many attempts are left: with unknown serials answered
    /// like wrong codes, a count that never goes down would give them away.
    pub hide_attempts: bool,
}

impl Verdict {
    /// `outcome`, with nothing said beside it.
    pub fn new(outcome: Outcome) -> Self {
        Verdict {
            outcome,
            replayed: None,
            hide_attempts: false,
        }
    }
}

/// Why an operation failed. Messages never contain codes or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is well-formed JSON but a value is not acceptable (a bad serial, URI,
    /// secret, PSKC file...). `code` is the stable machine-readable error code.
    #[error("{message}")]
    Invalid {
        /// Stable error code.
        code: ErrorCode,
        /// What is wrong, for people.
        message: String,
    },
    /// No token with this serial.
    #[error("no token {serial}")]
    NotFound {
        /// The serial asked for.
        serial: String,
    },
    /// The operation conflicts with the stored state (duplicate serial, user already has a
    /// token, token already activated).
    #[error("{message}")]
    Conflict {
        /// Stable error code.
        code: ErrorCode,
        /// What conflicts.
        message: String,
    },
    /// The database failed; the request may be retried.
    #[error("store error: {0}")]
    Store(String),
    /// A token's seed did not open: sealed under a key this server has not loaded
    /// (`missing_key`, after a rotation), or altered.
    #[error("{message}")]
    Seal {
        /// The token.
        serial: String,
        /// Whether the seal names a key the keyring lacks (rather than failing to open).
        missing_key: bool,
        /// What happened (key ids, never key material).
        message: String,
    },
    /// The key-encryption key cannot be used now (its hardware module does not answer, or
    /// refused the PIN); the request may be retried. Nothing was decided.
    #[error("{0}")]
    KeyUnavailable(String),
    /// Something that should not happen (a seed that does not open under any known key...).
    #[error("internal error: {0}")]
    Internal(String),
}

pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        code,
        message: message.into(),
    }
}

impl From<VerifyError> for ServiceError {
    fn from(error: VerifyError) -> Self {
        match error {
            VerifyError::Store(StoreError::Database { backend, reason }) => {
                ServiceError::Store(format!("{backend}: {reason}"))
            }
            VerifyError::Store(StoreError::Duplicate { token }) => ServiceError::Conflict {
                code: ErrorCode::DuplicateToken,
                message: format!("token {token} already exists"),
            },
            VerifyError::Store(StoreError::UserTaken { user }) => ServiceError::Conflict {
                code: ErrorCode::UserTaken,
                message: format!("user {user} already has a token"),
            },
            VerifyError::UnknownToken { token } => ServiceError::NotFound {
                serial: token.to_string(),
            },
            VerifyError::Id(e) => invalid(ErrorCode::InvalidId, e.to_string()),
            VerifyError::Pskc(e) => invalid(ErrorCode::InvalidPskc, format!("PSKC: {e}")),
            VerifyError::Seal(e) => seal_error(e),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// A seed that does not open names its token, so the server can log it once per token and
/// say whether its keyring is behind (a key it lacks) or the row is bad.
fn seal_error(error: SealError) -> ServiceError {
    let message = error.to_string();
    match error {
        SealError::UnknownKey { token, .. } => ServiceError::Seal {
            serial: token.to_string(),
            missing_key: true,
            message,
        },
        SealError::Tampered { token, .. } | SealError::BadSeed { token } => ServiceError::Seal {
            serial: token.to_string(),
            missing_key: false,
            message,
        },
        SealError::KeyUnavailable { .. } => ServiceError::KeyUnavailable(message),
        _ => ServiceError::Internal(message),
    }
}

/// An enrolment's counter, period or T0 that the store cannot hold (its integers are signed
/// 64-bit) is the caller's input: a 400 naming it, not a 500.
pub(crate) fn storable(error: VerifyError) -> ServiceError {
    match error {
        VerifyError::Store(StoreError::OutOfRange { what }) => invalid(
            ErrorCode::InvalidParameters,
            format!(
                "the {what} is too large: at most {} can be stored",
                i64::MAX
            ),
        ),
        other => other.into(),
    }
}

/// A serial from a request.
///
/// # Errors
/// [`ServiceError::Invalid`] (`invalid_id`) when it is empty, too long or has control
/// characters.
pub fn token_id(serial: &str) -> Result<TokenId, ServiceError> {
    TokenId::new(serial).map_err(|e| invalid(ErrorCode::InvalidId, e.to_string()))
}

/// A user id from a request.
///
/// # Errors
/// As [`token_id`].
pub fn user_id(user: &str) -> Result<UserId, ServiceError> {
    UserId::new(user).map_err(|e| invalid(ErrorCode::InvalidId, e.to_string()))
}

/// A client (whose failures are budgeted) from a request.
///
/// # Errors
/// As [`token_id`].
pub fn client_id(client: &str) -> Result<ClientId, ServiceError> {
    ClientId::new(client).map_err(|e| invalid(ErrorCode::InvalidId, e.to_string()))
}

/// Who asks, for the audit trail: `api:KEY-NAME` or `cli:USER`.
///
/// # Errors
/// [`ServiceError::Internal`]: the server makes these names, so a bad one is a bug.
pub fn caller(name: &str) -> Result<Caller, ServiceError> {
    Caller::new(name).map_err(|e| ServiceError::Internal(format!("caller name: {e}")))
}

/// How to make a token for enrolment, as a request gives it, not checked yet: the
/// library's `Enrollment` is what [`Library::enroll`] makes of it.
#[derive(Clone)]
pub enum EnrollInput {
    /// An `otpauth://totp/...` or `otpauth://hotp/...` URI.
    Uri(Zeroizing<String>),
    /// Parameters one by one.
    Params {
        /// TOTP or HOTP.
        hotp: bool,
        /// The secret in base32.
        secret_base32: Zeroizing<String>,
        /// "SHA1", "SHA256" or "SHA512".
        algorithm: String,
        /// 6 to 8.
        digits: u32,
        /// TOTP seconds per step.
        period: u64,
        /// HOTP first counter.
        counter: u64,
    },
}

impl std::fmt::Debug for EnrollInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollInput([redacted])")
    }
}

/// Most audit lines a page shows (a call returns at most one more, to tell whether there is
/// a next page).
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Most tokens a page of `GET /v1/tokens` shows.
pub const MAX_LIST_PAGE: usize = 1000;
