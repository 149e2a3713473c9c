//! Verifies one-time codes exactly once: the rules a backend applies to a typed code
//! (windows, drift, replay, lockout, resync, activation) and the stores that keep token state
//! (SQLite, PostgreSQL, and memory for tests).
//!
//! The crate is synchronous and knows no async runtime: [`Verifier::verify_then`] returns at
//! once and calls back after the commit (the store runs the work on a thread of its own), so
//! an async server awaits verifications without a blocking thread; every other call blocks,
//! and an async server makes it from its blocking pool (`tokio::task::spawn_blocking`).
//! [`Verifier`] and every [`Store`] are `Send + Sync`.
//! The clock is an argument (`now`), like in the `otp` crate, so the rules test without
//! sleeping.
//!
//! # Map
//! - Setting up: [`open_store`] or [`StoreAddress`] (`sqlite:PATH`, a file path, or
//!   `postgres://...`; migrations run at open), [`KeyringFile::load_or_create`] (creates a 0600 key file if missing; the file
//!   holds the current key and the ones a rotation still needs), [`Keyring`] (current key
//!   plus older ones, each a [`SealingKey`]), [`Verifier::new`] with a [`Policy`], and
//!   [`Verifier::with_key_source`] to pick up a rotated keyring while running.
//! - Checking codes: [`Verifier::verify`] by [`Subject::Token`] or [`Subject::User`] returns
//!   an [`Outcome`]; [`Verifier::activate`] binds a token to a user with a valid code;
//!   [`Verifier::resync`] takes two consecutive codes.
//! - Adding tokens: [`Verifier::enroll`] with [`Enrollment`] (from parameters or
//!   [`Enrollment::from_uri`]), [`Verifier::import_pskc`] (RFC 6030, per-key report).
//! - Operating: [`Verifier::show`] and [`Verifier::list`] ([`TokenInfo`], never a seed),
//!   [`Verifier::unlock`], [`Verifier::set_enabled`], [`Verifier::delete`],
//!   [`Verifier::rotate`], [`Verifier::audit_trail`], [`Verifier::audit_page`] (one
//!   token's lines, newest first, by cursor) and [`Verifier::audit_since`] (every line, for
//!   export).
//!
//! # Invariants
//! - A step or counter is accepted at most once, and never after a later one: the store's
//!   compare-and-set (`UPDATE ... WHERE next_value <= $matched`) decides between racing
//!   callers, in one process or many, on one server or several.
//! - Failures are counted by the store in one conditional update, never read-modify-write.
//! - Seeds are AES-256-GCM sealed with the token id as associated data; neither seeds nor
//!   codes appear in errors, `Debug` output or the audit trail.
//!
//! ```
//! use codereader_otp::{Algorithm, Code, Digits, KeyPolicy, Period, Secret, UnixTime};
//! use codereader_verifier::{
//!     Caller, Enrollment, Kek, KeyId, Keyring, MemoryStore, Outcome, Policy, Subject,
//!     TokenId, TokenKind, TokenParams, Verifier,
//! };
//! use codereader_otp::{Counter, Totp};
//!
//! let keyring = Keyring::new(Kek::from_bytes(KeyId::new("k1")?, [7; 32]));
//! let verifier = Verifier::new(Box::new(MemoryStore::new()), keyring, Policy::default());
//! let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226)?;
//! let params = TokenParams {
//!     kind: TokenKind::Totp { period: Period::DEFAULT, t0: UnixTime(0) },
//!     algorithm: Algorithm::Sha1,
//!     digits: Digits::SIX,
//! };
//! let id = TokenId::new("SN-1")?;
//! let admin = Caller::new("admin")?;
//! let now = UnixTime(1_700_000_000);
//! verifier.enroll(
//!     &[Enrollment { id: id.clone(), params, secret: secret.clone(), counter: Counter(0) }],
//!     now,
//!     &admin,
//! )?;
//! let totp = Totp::new(&secret, Algorithm::Sha1, Digits::SIX, Period::DEFAULT, UnixTime(0));
//! let code: Code = totp.code_at(now)?;
//! let outcome = verifier.verify(Subject::Token(&id), &code, now, &admin)?;
//! assert!(matches!(outcome, Outcome::Accepted(_)));
//! // The same code again is a replay, never a second success.
//! assert_eq!(verifier.verify(Subject::Token(&id), &code, now, &admin)?, Outcome::Replayed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod budget;
mod keycache;
mod keyring;
mod keyring_file;
mod operations;
mod outcome;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
mod policy;
mod rules;
mod scan;
mod seal;
#[cfg(all(feature = "testing", feature = "pkcs11"))]
pub mod softhsm;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod token;

pub use crate::budget::{Admission, ClientBudget};
pub use crate::keyring::Keyring;
pub use crate::keyring_file::{HsmOpener, KeyRole, KeyringFile};
pub use crate::operations::{
    DEFAULT_KEY_CACHE, ImportProblem, ImportReport, NoticeAction, RotationReport, TokenInfo,
    Verifier,
};
pub use crate::outcome::{Accepted, Matched, Outcome};
pub use crate::policy::{FailureDelay, Policy};
pub use crate::rules::{Activation, Enrollment, KeySource, OwnedSubject, Subject, VerifyError};
pub use crate::seal::{Kek, KeyFailure, NONCE_LEN, SealError, SealedSeed, SealingKey, UnusableKey};
pub use crate::store::memory::MemoryStore;
pub use crate::store::postgres::PgStore;
pub use crate::store::sqlite::{Durability, SqliteOptions, SqliteStore};
pub use crate::store::{
    AuditAction, AuditEntry, AuditEvent, AuditOutcome, Claim, DeadLetter, Delivery, Event,
    EventKind, NewToken, Reads, Store, StoreAddress, StoreError, Tx, Work, open_store,
};
pub use crate::token::{
    Caller, ClientId, IdError, KeyId, MAX_ID_LEN, TokenId, TokenKind, TokenParams, TokenState,
    UserId,
};

/// The server shares one [`Verifier`] between blocking threads; this fails to compile if a
/// change ever makes it (or a store) not `Send + Sync`.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Verifier>();
    shared::<SqliteStore>();
    shared::<PgStore>();
    shared::<MemoryStore>();
};
