//! The boundary between the HTTP layer and the verifier library.
//!
//! [`TokenService`] is synchronous, like the library and its stores: the HTTP handlers call it
//! from `tokio::task::spawn_blocking`. Its types carry no JSON and no library types, so the
//! mapping from the library's outcomes and errors lives in one place
//! ([`library`]), and the offline commands use the very same calls as the server.

use codereader_otp::Code;
use zeroize::Zeroizing;

pub mod library;

pub use library::Library;

/// Whose token a verification is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A token by serial.
    Token(String),
    /// The token bound to a user.
    User(String),
}

/// The value a code matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// A TOTP time step.
    Step(u64),
    /// An HOTP counter.
    Counter(u64),
}

/// What a verification (or activation, or resync) decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The code was right and is now used.
    Accepted {
        /// The token's serial.
        token: String,
        /// The step or counter it matched.
        matched: Matched,
        /// Steps or counters away from the expected value.
        drift: i64,
    },
    /// The code was wrong.
    Rejected {
        /// Failures left before the token locks (0: it is now locked); not told when unknown
        /// serials are answered like wrong codes (it would tell them apart).
        attempts_left: Option<u32>,
    },
    /// The token is locked.
    Locked {
        /// When it unlocks by itself (Unix seconds), if the policy says so.
        until: Option<u64>,
    },
    /// The code was right but already used (or an earlier one was).
    Replayed {
        /// The token's serial, as for [`Decision::Accepted`] (unknown only if the token
        /// vanished meanwhile).
        token: Option<String>,
    },
    /// No such token, or no token bound to that user.
    Unknown,
    /// The token is disabled.
    Disabled,
    /// The growing delay after failures has not passed; nothing was checked.
    TooSoon {
        /// When to try again (Unix seconds).
        retry_at: u64,
    },
    /// The client has spent its failure budget; nothing was checked, no token touched.
    RateLimited {
        /// When the client may try again (Unix seconds).
        retry_at: u64,
    },
}

impl Decision {
    /// The stable label used on the wire and in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Accepted { .. } => "accepted",
            Decision::Rejected { .. } => "rejected",
            Decision::Locked { .. } => "locked",
            Decision::Replayed { .. } => "replayed",
            Decision::Unknown => "unknown",
            Decision::Disabled => "disabled",
            Decision::TooSoon { .. } => "too_soon",
            Decision::RateLimited { .. } => "rate_limited",
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
        code: &'static str,
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
        code: &'static str,
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

/// How to make a token for enrolment.
#[derive(Clone)]
pub enum Enrollment {
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

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrollment([redacted])")
    }
}

/// A token's state, without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    /// Its serial.
    pub serial: String,
    /// The user it is bound to.
    pub user: Option<String>,
    /// "totp" or "hotp".
    pub kind: &'static str,
    /// "SHA1", "SHA256" or "SHA512".
    pub algorithm: &'static str,
    /// Code length.
    pub digits: u32,
    /// TOTP period in seconds.
    pub period: Option<u64>,
    /// The lowest step or counter that may still be accepted.
    pub next: u64,
    /// Remembered drift.
    pub drift: i64,
    /// Consecutive failures.
    pub failures: u32,
    /// When it was locked (Unix seconds), if it is.
    pub locked_at: Option<u64>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Name of the key-encryption key its seed is sealed under.
    pub key_id: String,
}

/// What a PSKC import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Serials imported.
    pub imported: Vec<String>,
    /// Keys refused: (key id or position, reason).
    pub rejected: Vec<(String, String)>,
}

/// One line of the audit trail: who asked what about which token, and what came of it.
/// There is no field for a code or a secret: the trail never had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine {
    /// Position in the trail (a paging cursor; later lines have greater numbers).
    pub seq: u64,
    /// When (Unix seconds).
    pub at: u64,
    /// The token concerned, if any.
    pub token: Option<String>,
    /// The user concerned, if known.
    pub user: Option<String>,
    /// What was asked ("verify", "unlock"...).
    pub action: String,
    /// What came of it ("accepted", "ok"...).
    pub outcome: String,
    /// Who asked: `api:KEY-NAME` or `cli:USER`.
    pub caller: String,
}

/// Most audit lines a page shows (a call returns at most one more, to tell whether there is
/// a next page).
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Most tokens a page of `GET /v1/tokens` shows.
pub const MAX_LIST_PAGE: usize = 1000;

/// Receives the decision of [`TokenService::verify_then`].
pub type Done = Box<dyn FnOnce(Result<Decision, ServiceError>) + Send>;

/// The operations of the verifier, as the server and the offline commands use them.
///
/// Every call is blocking (it talks to the database); `caller` is recorded in the audit trail.
pub trait TokenService: Send + Sync + 'static {
    /// Verifies `code` for `target` now and hands the decision to `done`. If
    /// [`TokenService::verifies_in_background`], this returns at once and `done` runs later on
    /// a thread of the store's (after the commit that makes the decision durable), so an async
    /// caller need not block a thread; otherwise it runs before returning, like
    /// [`TokenService::verify`].
    fn verify_then(&self, target: Target, code: Code, caller: &str, done: Done);

    /// [`TokenService::verify_then`] for an attempt made on behalf of `client` (the end
    /// user's address as the backend saw it, say): a client that has spent its failure
    /// budget gets [`Decision::RateLimited`] without its code being checked.
    fn verify_from(
        &self,
        target: Target,
        code: Code,
        caller: &str,
        client: Option<&str>,
        done: Done,
    );

    /// Whether [`TokenService::verify_then`] returns before the work is done.
    fn verifies_in_background(&self) -> bool;

    /// Verifies `code` for `target` now.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`] for a malformed serial or user id; [`ServiceError::Store`].
    fn verify(&self, target: &Target, code: &Code, caller: &str) -> Result<Decision, ServiceError>;

    /// Enrols a new token with `serial`.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`], [`ServiceError::Conflict`] (serial taken), [`ServiceError::Store`].
    fn enroll(
        &self,
        serial: &str,
        enrollment: &Enrollment,
        caller: &str,
    ) -> Result<TokenView, ServiceError>;

    /// Imports the keys of a PSKC document; `preshared_key` opens encrypted ones.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`] when the document cannot be read at all, or no key in it is
    /// usable; [`ServiceError::Conflict`]; [`ServiceError::Store`].
    fn import_pskc(
        &self,
        pskc: &str,
        preshared_key: Option<&[u8]>,
        caller: &str,
    ) -> Result<ImportReport, ServiceError>;

    /// The token with `serial`.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Invalid`], [`ServiceError::Store`].
    fn show(&self, serial: &str) -> Result<TokenView, ServiceError>;

    /// All tokens, by serial.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    fn list(&self) -> Result<Vec<TokenView>, ServiceError>;

    /// Up to `limit` tokens with serials after `after`, in serial order.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`] for a malformed `after`; [`ServiceError::Store`].
    fn list_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<TokenView>, ServiceError>;

    /// Binds the unassigned token `serial` to `user` if `code` is valid for it.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Conflict`] (already bound, user taken),
    /// [`ServiceError::Invalid`], [`ServiceError::Store`].
    fn activate(
        &self,
        serial: &str,
        user: &str,
        code: &Code,
        caller: &str,
    ) -> Result<Decision, ServiceError>;

    /// Re-establishes the counter or drift from two consecutive codes.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Invalid`], [`ServiceError::Store`].
    fn resync(
        &self,
        serial: &str,
        first: &Code,
        second: &Code,
        caller: &str,
    ) -> Result<Decision, ServiceError>;

    /// Clears the lock and failures of `serial`.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Invalid`], [`ServiceError::Store`].
    fn unlock(&self, serial: &str, caller: &str) -> Result<TokenView, ServiceError>;

    /// Disables `serial`: it accepts nothing any more.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Invalid`], [`ServiceError::Store`].
    fn disable(&self, serial: &str, caller: &str) -> Result<TokenView, ServiceError>;

    /// Up to `limit` audit lines of `serial` older than the line `before`, newest first.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] for a serial with neither a token nor a trail;
    /// [`ServiceError::Invalid`]; [`ServiceError::Store`].
    fn audit(
        &self,
        serial: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditLine>, ServiceError>;

    /// Up to `limit` audit lines of every token at `since` (Unix seconds) or later, after
    /// the line `after`, oldest first.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    fn audit_since(
        &self,
        since: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditLine>, ServiceError>;

    /// Whether the store answers (for `/healthz`).
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    fn ping(&self) -> Result<(), ServiceError>;

    /// Changes whenever the keyring is replaced (reloaded after a rotation), so that seal
    /// errors met under an older keyring stop counting against health.
    fn keyring_generation(&self) -> u64 {
        0
    }
}
