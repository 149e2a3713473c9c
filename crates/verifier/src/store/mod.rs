//! Where token state lives: the [`Store`] trait and its implementations.
//!
//! The trait is shaped around compare-and-set: every state change is a single conditional
//! update (`UPDATE ... WHERE next <= $lowest AND ...`) that the database applies atomically,
//! so when several threads, processes or servers race with the same code, exactly one update
//! matches a row and wins. The verifier reads, decides, and then asks the store to apply its
//! decision only if the state still allows it.
//!
//! The API is synchronous (rusqlite and the `postgres` crate are blocking); an async server
//! calls it from `tokio::task::spawn_blocking`.

use std::borrow::Cow;

use codereader_otp::{Algorithm, Digits, Period, UnixTime};

use crate::seal::{NONCE_LEN, SealedSeed};
use crate::token::{Caller, KeyId, TokenId, TokenKind, TokenParams, TokenState, UserId};

pub mod memory;
mod open;
pub mod postgres;
pub mod sqlite;

pub use open::open_store;

/// Why a store operation failed. Never carries seeds or codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error.
    #[error("{backend} error: {reason}")]
    Database {
        /// "sqlite" or "postgres".
        backend: &'static str,
        /// The driver's message.
        reason: String,
    },
    /// A token with this id already exists (import is all-or-nothing).
    #[error("token {token} already exists")]
    Duplicate {
        /// The token.
        token: TokenId,
    },
    /// The user already has a token.
    #[error("user {user} already has a token")]
    UserTaken {
        /// The user.
        user: UserId,
    },
    /// A stored row does not make sense (for example an unknown algorithm name).
    #[error("stored token {token} is corrupt: {reason}")]
    Corrupt {
        /// The token (or the raw id if it does not parse).
        token: String,
        /// What is wrong.
        reason: String,
    },
    /// The database schema is newer than this program.
    #[error("the database schema is version {found}; this program knows up to {known}")]
    SchemaTooNew {
        /// The version in the database.
        found: i64,
        /// The newest version this program can migrate to.
        known: i64,
    },
    /// The store address is neither `sqlite:PATH` nor `postgres://...`.
    #[error("unknown store address; expected sqlite:PATH or postgres://...")]
    BadAddress,
    /// A value does not fit the database's signed 64-bit integers.
    #[error("{what} does not fit in a signed 64-bit integer")]
    OutOfRange {
        /// Which value.
        what: &'static str,
    },
}

/// A token to insert: parameters, sealed seed, first usable step or counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Its serial.
    pub id: TokenId,
    /// How it makes codes.
    pub params: TokenParams,
    /// Its sealed secret.
    pub seed: SealedSeed,
    /// The first step (TOTP, usually 0) or counter (HOTP) that may be accepted.
    pub next: u64,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its serial.
    pub id: TokenId,
    /// The user it is bound to, after activation.
    pub user: Option<UserId>,
    /// How it makes codes.
    pub params: TokenParams,
    /// Its sealed secret.
    pub seed: SealedSeed,
    /// Its verification state.
    pub state: TokenState,
}

/// A state advance decided by the verifier; only this crate constructs one, after a code
/// matched. A store applies it with one compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub(crate) token: TokenId,
    pub(crate) lowest: u64,
    pub(crate) accepted: u64,
    pub(crate) drift: i64,
    pub(crate) max_failures: u32,
    pub(crate) unlock: bool,
    pub(crate) bind: Option<UserId>,
}

impl Advance {
    /// The token.
    pub fn token(&self) -> &TokenId {
        &self.token
    }
    /// The lowest value consumed: the update applies only if the token's `next` is at most
    /// this (no earlier success consumed it).
    pub fn lowest(&self) -> u64 {
        self.lowest
    }
    /// The accepted value; `next` becomes one more.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }
    /// The drift to remember.
    pub fn drift(&self) -> i64 {
        self.drift
    }
    /// Unless [`Advance::unlock`], the update applies only while the token has fewer failures
    /// than this and is not locked.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }
    /// A resync: applies to a locked token too, and clears the lock.
    pub fn unlock(&self) -> bool {
        self.unlock
    }
    /// An activation: applies only to an unbound token, and binds it to this user.
    pub fn bind(&self) -> Option<&UserId> {
        self.bind.as_ref()
    }
}

/// One line of the audit trail. There is deliberately no field for the code.
///
/// The verifier's actions and outcomes are fixed labels (`Cow::Borrowed`), so writing an
/// audit line on every verification allocates nothing; lines read back from a database own
/// their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The token concerned, if known.
    pub token: Option<TokenId>,
    /// The user concerned, if known.
    pub user: Option<UserId>,
    /// What was asked: "verify", "resync", "activate", "unlock", "auto-unlock", "enable",
    /// "disable", "delete", "import", "enroll", "rotate".
    pub action: Cow<'static, str>,
    /// What happened: an [`crate::Outcome::label`] or "ok".
    pub outcome: Cow<'static, str>,
    /// When.
    pub at: UnixTime,
    /// Who asked.
    pub caller: Caller,
}

/// An audit line and its sequence number, which orders the whole trail (later lines have
/// greater numbers) and serves as a paging cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the trail.
    pub seq: u64,
    /// The line.
    pub event: AuditEvent,
}

/// Told whether the writes of a unit of [`Work`] were committed (`Ok`) or not.
pub type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A unit of work for [`Store::submit`]: it runs against the store it is given (which may be
/// a view of the store inside its current transaction) and returns what to do once its writes
/// are committed.
pub type Work = Box<dyn FnOnce(&dyn Store) -> Finish + Send>;

/// Persistent token state. Every method is one atomic step in the store; the verifier never
/// holds a lock or a transaction across calls. Implementations must make [`Store::advance`]
/// and [`Store::record_failure`] single conditional updates so that concurrent callers (other
/// threads, processes or servers) can neither both win nor lose an increment.
pub trait Store: Send + Sync {
    /// Inserts all tokens in one transaction, or none, and appends `audit`.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] if an id exists; [`StoreError::Database`].
    fn insert_tokens(&self, tokens: &[NewToken], audit: &AuditEvent) -> Result<(), StoreError>;

    /// The token with this serial.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError>;

    /// The token bound to this user.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn token_of_user(&self, user: &UserId) -> Result<Option<TokenRecord>, StoreError>;

    /// Up to `limit` tokens with ids greater than `after`, in id order.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// Compare-and-set: if the token is enabled, `next <= advance.lowest()`, and (unless
    /// [`Advance::unlock`]) not locked with fewer than `max_failures` failures, and (with
    /// [`Advance::bind`]) not bound to a user: sets `next` to `accepted + 1`, remembers the
    /// drift, clears failures (and the lock), binds the user, and appends `audit`, all
    /// atomically. Returns whether it applied.
    ///
    /// # Errors
    /// [`StoreError::UserTaken`] if binding would give a user two tokens;
    /// [`StoreError::Database`].
    fn advance(&self, advance: &Advance, audit: &AuditEvent) -> Result<bool, StoreError>;

    /// If the token is enabled and not locked: adds one failure, remembers `now`, locks the
    /// token (at `now`) when failures reach `max_failures`, and appends `audit`, atomically.
    /// Returns the new failure count, or `None` if the token was locked, disabled or missing
    /// (then nothing is written).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn record_failure(
        &self,
        token: &TokenId,
        now: UnixTime,
        max_failures: u32,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError>;

    /// Clears the lock and failures. With `Some(t)`, only if the token was locked at `t`
    /// (automatic unlock racing with others); with `None`, unconditionally (administrator).
    /// Appends `audit` if a row changed. Returns whether a row changed.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn unlock(
        &self,
        token: &TokenId,
        locked_at: Option<UnixTime>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Enables or disables a token and appends `audit`. Returns whether the token exists.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn set_enabled(
        &self,
        token: &TokenId,
        enabled: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Deletes a token (its audit trail stays) and appends `audit`. Returns whether it
    /// existed.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn delete_token(&self, token: &TokenId, audit: &AuditEvent) -> Result<bool, StoreError>;

    /// Appends to the audit trail.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// The last `limit` audit events of one token, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn audit_trail(&self, token: &TokenId, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    /// Up to `limit` audit lines of one token older than the line `before` (from the newest,
    /// if `None`), newest first. `before` must be one of this token's lines (the last of the
    /// previous page); any other gives nothing. Lines of a deleted token stay readable.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn audit_page(
        &self,
        token: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Up to `limit` audit lines of every token (and of none), at `since` or later and after
    /// the line `after`, oldest first: an export that resumes where it stopped.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Up to `limit` seeds with token ids greater than `after`, in id order, that are not
    /// sealed under `current`.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn seeds_not_under(
        &self,
        current: &KeyId,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<(TokenId, SealedSeed)>, StoreError>;

    /// Compare-and-set of a seal: replaces `old` by `new` if the row still holds `old`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn replace_seed(
        &self,
        token: &TokenId,
        old: &SealedSeed,
        new: &SealedSeed,
    ) -> Result<bool, StoreError>;

    /// Runs `work` and then its [`Finish`] with whether its writes were committed. Each
    /// operation `work` makes is atomic as usual; the work as a whole is not one transaction.
    ///
    /// A store with a writer thread of its own (SQLite) queues the work there and returns at
    /// once: the work then reads and writes on the writer's connection inside its group
    /// commit, without the hand-offs of separate calls, and the finish runs on that thread
    /// after the commit. Other stores run both before returning ([`Store::queues_work`] is
    /// false), so an async caller must call them from a blocking thread.
    fn submit(&self, work: Work);

    /// Whether [`Store::submit`] returns at once, leaving the work to a thread of the store.
    fn queues_work(&self) -> bool {
        false
    }
}

/// A token row as SQL stores hold it, before checking.
#[derive(Debug)]
pub(crate) struct RawToken {
    pub(crate) id: String,
    pub(crate) user: Option<String>,
    pub(crate) kind: String,
    pub(crate) algorithm: String,
    pub(crate) digits: i64,
    pub(crate) period: i64,
    pub(crate) t0: i64,
    pub(crate) key_id: String,
    pub(crate) nonce: Vec<u8>,
    pub(crate) sealed: Vec<u8>,
    pub(crate) next: i64,
    pub(crate) drift: i64,
    pub(crate) failures: i64,
    pub(crate) last_failure_at: Option<i64>,
    pub(crate) locked_at: Option<i64>,
    pub(crate) enabled: bool,
}

/// The columns of [`RawToken`], in order, for SELECTs.
pub(crate) const TOKEN_COLUMNS: &str = "id, user_id, kind, algorithm, digits, period, t0, \
     key_id, nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled";

impl RawToken {
    pub(crate) fn into_record(self) -> Result<TokenRecord, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            token: self.id.clone(),
            reason: reason.to_owned(),
        };
        let id = TokenId::new(self.id.clone()).map_err(|_| corrupt("bad id"))?;
        let user = match &self.user {
            Some(u) => Some(UserId::new(u.clone()).map_err(|_| corrupt("bad user id"))?),
            None => None,
        };
        let kind = match self.kind.as_str() {
            "totp" => TokenKind::Totp {
                period: u64::try_from(self.period)
                    .ok()
                    .and_then(|p| Period::new(p).ok())
                    .ok_or_else(|| corrupt("bad period"))?,
                t0: UnixTime(u64::try_from(self.t0).map_err(|_| corrupt("bad t0"))?),
            },
            "hotp" => TokenKind::Hotp,
            _ => return Err(corrupt("bad kind")),
        };
        let algorithm: Algorithm = self
            .algorithm
            .parse()
            .map_err(|_| corrupt("bad algorithm"))?;
        let digits = u32::try_from(self.digits)
            .ok()
            .and_then(|d| Digits::new(d).ok())
            .ok_or_else(|| corrupt("bad digits"))?;
        let nonce: [u8; NONCE_LEN] = self
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("bad nonce"))?;
        let time = |t: Option<i64>, what: &str| -> Result<Option<UnixTime>, StoreError> {
            t.map(|t| u64::try_from(t).map(UnixTime).map_err(|_| corrupt(what)))
                .transpose()
        };
        Ok(TokenRecord {
            id,
            user,
            params: TokenParams {
                kind,
                algorithm,
                digits,
            },
            seed: SealedSeed {
                key_id: KeyId::new(self.key_id.clone()).map_err(|_| corrupt("bad key id"))?,
                nonce,
                ciphertext: self.sealed.clone(),
            },
            state: TokenState {
                next: u64::try_from(self.next).map_err(|_| corrupt("bad next"))?,
                drift: self.drift,
                failures: u32::try_from(self.failures).map_err(|_| corrupt("bad failures"))?,
                last_failure_at: time(self.last_failure_at, "bad failure time")?,
                locked_at: time(self.locked_at, "bad lock time")?,
                enabled: self.enabled,
            },
        })
    }
}

/// The SQL-facing columns of a new token.
pub(crate) struct TokenColumns<'a> {
    pub(crate) kind: &'static str,
    pub(crate) algorithm: &'static str,
    pub(crate) digits: i64,
    pub(crate) period: i64,
    pub(crate) t0: i64,
    pub(crate) next: i64,
    pub(crate) token: &'a NewToken,
}

pub(crate) fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what })
}

impl<'a> TokenColumns<'a> {
    pub(crate) fn of(token: &'a NewToken) -> Result<Self, StoreError> {
        let (kind, period, t0) = match token.params.kind {
            TokenKind::Totp { period, t0 } => (
                "totp",
                to_i64(period.seconds(), "period")?,
                to_i64(t0.0, "t0")?,
            ),
            TokenKind::Hotp => ("hotp", 0, 0),
        };
        Ok(TokenColumns {
            kind,
            algorithm: token.params.algorithm.name(),
            digits: i64::from(token.params.digits.get()),
            period,
            t0,
            next: to_i64(token.next, "counter")?,
            token,
        })
    }
}

/// Parses a stored audit row with its sequence number.
pub(crate) fn audit_entry(
    seq: i64,
    row: (Option<String>, Option<String>, String, String, i64, String),
) -> Result<AuditEntry, StoreError> {
    let (t, u, a, o, at, c) = row;
    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt {
        token: t.clone().unwrap_or_default(),
        reason: "bad audit sequence number".to_owned(),
    })?;
    Ok(AuditEntry {
        seq,
        event: audit_from_row(t, u, a, o, at, c)?,
    })
}

/// Parses a stored audit row.
pub(crate) fn audit_from_row(
    token: Option<String>,
    user: Option<String>,
    action: String,
    outcome: String,
    at: i64,
    caller: String,
) -> Result<AuditEvent, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        token: token.clone().unwrap_or_default(),
        reason: reason.to_owned(),
    };
    Ok(AuditEvent {
        token: token
            .as_ref()
            .map(|t| TokenId::new(t.clone()))
            .transpose()
            .map_err(|_| corrupt("bad audit token"))?,
        user: user
            .map(UserId::new)
            .transpose()
            .map_err(|_| corrupt("bad audit user"))?,
        action: Cow::Owned(action),
        outcome: Cow::Owned(outcome),
        at: UnixTime(u64::try_from(at).map_err(|_| corrupt("bad audit time"))?),
        caller: Caller::new(caller).map_err(|_| corrupt("bad audit caller"))?,
    })
}
