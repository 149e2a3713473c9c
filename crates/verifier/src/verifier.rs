//! The rules: windows, drift, replay, lockout, delays, resync, activation, and the
//! administrative operations, over any [`Store`].
//!
//! Every operation reads the token, decides, and then asks the store for one conditional
//! update; nothing is held between the read and the write. If another caller changed the token
//! in between, the update does not apply and the operation re-reads to say why (replayed,
//! locked, disabled), so concurrent callers never both win.
//!
//! One path per request: an operation that writes is one unit of work ([`Store::submit`]),
//! run where the store writes (SQLite's writer thread, a PostgreSQL worker, in place for
//! memory) by [`Rules`], the part of the verifier a unit of work carries with it. A
//! verification is [`Verifier::verify_then`]: submit, and hear the outcome after the commit;
//! the blocking [`Verifier::verify`] is that and a wait. Reads for operators
//! ([`Verifier::show`], the audit pages) go through [`Store::read`] on the caller's thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use codereader_otp::pskc::{self, PreSharedKey};
use codereader_otp::{Code, Counter, Hotp, KeyPolicy, KeyUri, OtpKind, Secret, TimeError};
use codereader_otp::{TimeStep, UnixTime};

use crate::budget::{Admission, Budgets, ClientBudget};
use crate::keycache::KeyCache;
use crate::outcome::{Accepted, Matched, Outcome};
use crate::policy::Policy;
use crate::scan::{Scan, scan, scan_pair};
use crate::seal::{Keyring, SealError, SealedSeed};
use crate::store::{
    Advance, AuditAction, AuditEntry, AuditEvent, AuditOutcome, Claim, DeadLetter, Delivery, Event,
    NewToken, Reads, Store, StoreError, TokenRecord, Tx, work,
};
use crate::token::{
    Caller, ClientId, IdError, KeyId, TokenId, TokenKind, TokenParams, TokenState, UserId,
};

/// Why an operation could not be carried out. Outcomes of verification (a wrong code, a locked
/// token) are not errors: see [`Outcome`]. Never carries codes or seeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A seed could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The time given is before the token's T0 (a broken clock).
    #[error("the time is before the token's start time: {0}")]
    Time(#[from] TimeError),
    /// An administrative operation named a token that does not exist.
    #[error("no token {token}")]
    UnknownToken {
        /// The token.
        token: TokenId,
    },
    /// An identifier taken from an import is not acceptable.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The PSKC document as a whole is unusable.
    #[error("PSKC: {0}")]
    Pskc(#[from] pskc::PskcError),
}

/// An event that changes nothing in the store ([`Verifier::record_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoticeAction {
    /// An API key was revoked (named by its name).
    ApiKeyRevoked,
    /// A client went past its failure budget (named by its address).
    RejectedBurst,
}

/// What a verification is about: a token by serial, or the token bound to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A token by serial.
    Token(&'a TokenId),
    /// The token bound to a user.
    User(&'a UserId),
}

/// A [`Subject`] that owns its id, for work that outlives the caller's borrow
/// ([`Verifier::verify_then`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedSubject {
    /// A token by serial.
    Token(TokenId),
    /// The token bound to a user.
    User(UserId),
}

impl From<Subject<'_>> for OwnedSubject {
    fn from(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Token(t) => OwnedSubject::Token(t.clone()),
            Subject::User(u) => OwnedSubject::User(u.clone()),
        }
    }
}

impl OwnedSubject {
    /// Borrowed, as the synchronous calls take it.
    pub fn as_subject(&self) -> Subject<'_> {
        match self {
            OwnedSubject::Token(t) => Subject::Token(t),
            OwnedSubject::User(u) => Subject::User(u),
        }
    }
}

/// The result of [`Verifier::activate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// The code was right; the token is now bound to the user.
    Activated(Accepted),
    /// The token is already bound to a user (nothing was checked or used).
    AlreadyBound,
    /// The user already has a token (nothing was checked or used).
    UserHasToken,
    /// The code was not accepted; the outcome says why (it counts like any verification).
    Refused(Outcome),
}

/// A token as an operator may see it: everything but the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its serial.
    pub id: TokenId,
    /// The user it is bound to, if activated.
    pub user: Option<UserId>,
    /// How it makes codes.
    pub params: TokenParams,
    /// Its verification state.
    pub state: TokenState,
    /// The key-encryption key its seed is sealed under.
    pub key_id: KeyId,
}

impl From<TokenRecord> for TokenInfo {
    fn from(t: TokenRecord) -> Self {
        TokenInfo {
            id: t.id,
            user: t.user,
            params: t.params,
            state: t.state,
            key_id: t.seed.key_id,
        }
    }
}

/// A token to enroll from parameters.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Its serial.
    pub id: TokenId,
    /// How it makes codes.
    pub params: TokenParams,
    /// The seed (sealed before it reaches the store).
    pub secret: Secret,
    /// HOTP: the first counter the token will use. TOTP: ignored (any current step is fine).
    pub counter: Counter,
}

impl Enrollment {
    /// An enrollment from an otpauth URI (TOTP with T0 = 0).
    pub fn from_uri(id: TokenId, uri: &KeyUri) -> Self {
        let (kind, counter) = match uri.kind() {
            OtpKind::Totp { period } => (
                TokenKind::Totp {
                    period,
                    t0: UnixTime(0),
                },
                Counter(0),
            ),
            OtpKind::Hotp { counter } => (TokenKind::Hotp, counter),
        };
        Enrollment {
            id,
            params: TokenParams {
                kind,
                algorithm: uri.algorithm(),
                digits: uri.digits(),
            },
            secret: uri.secret().clone(),
            counter,
        }
    }
}

/// One key of a PSKC file that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    /// 1-based position of the key in the file.
    pub index: usize,
    /// The key's serial or id, if it had one.
    pub name: Option<String>,
    /// Why, in words that never contain key material.
    pub reason: String,
}

/// What [`Verifier::import_pskc`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Tokens imported (all in one transaction).
    pub imported: Vec<TokenId>,
    /// Keys refused, each with its reason.
    pub refused: Vec<ImportProblem>,
}

/// What [`Verifier::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotationReport {
    /// Seeds re-sealed under the current key.
    pub resealed: usize,
    /// Seeds that could not be opened with any key of the keyring.
    pub failed: Vec<(TokenId, SealError)>,
}

/// Where a running verifier gets a newer keyring when a seed names a key it lacks: after a
/// rotation another process re-sealed seeds under a key this one has not loaded yet. The
/// server implements it by re-reading its keyring file.
pub trait KeySource: Send + Sync {
    /// A keyring to use from now on, or `None` when there is nothing newer (the source may
    /// refuse to look again too soon: it is called on the verification path).
    fn reload(&self) -> Option<Keyring>;
}

/// The verifier: a store, the keyring that opens its seeds, and the policy.
///
/// `Send + Sync`: share one in an `Arc` and call it from any thread; only
/// [`Verifier::verify_then`] never blocks.
pub struct Verifier {
    store: Box<dyn Store>,
    rules: Arc<Rules>,
    budgets: Option<Arc<Budgets>>,
}

/// Everything of the verifier but its store and client budgets: what a unit of work takes
/// with it to run where the store writes.
struct Rules {
    keyring: RwLock<Arc<Keyring>>,
    /// How many times the keyring was replaced.
    keyring_generation: AtomicU64,
    source: Option<Arc<dyn KeySource>>,
    /// Held while the key source reloads.
    reloading: Mutex<()>,
    policy: Policy,
    keys: Option<Arc<KeyCache>>,
}

/// A copy for a builder method called while work still holds the original (the two share
/// key source and key cache, and the copy starts from the keyring in use).
impl Clone for Rules {
    fn clone(&self) -> Self {
        Rules {
            keyring: RwLock::new(self.keyring()),
            keyring_generation: AtomicU64::new(self.keyring_generation.load(Ordering::Relaxed)),
            source: self.source.clone(),
            reloading: Mutex::new(()),
            policy: self.policy,
            keys: self.keys.clone(),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keyring", &self.keyring())
            .field("policy", &self.rules.policy)
            .field("keys", &self.rules.keys)
            .finish_non_exhaustive()
    }
}

/// The window a verification scans, and how to turn a match into drift.
struct Window {
    lo: u64,
    hi: u64,
    /// The value drift is measured from: the current step (TOTP) or `next` (HOTP).
    origin: u64,
}

/// `Ok` if a change found its token, [`VerifyError::UnknownToken`] if there was none.
fn existed(found: bool, token: &TokenId) -> Result<(), VerifyError> {
    if found {
        Ok(())
    } else {
        Err(VerifyError::UnknownToken {
            token: token.clone(),
        })
    }
}

fn drift_of(value: u64, origin: u64) -> i64 {
    let d = i128::from(value) - i128::from(origin);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

fn clamp(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// The generator for a token and, for TOTP, the current step.
struct Generator {
    hotp: Hotp,
    current: Option<u64>,
}

impl Verifier {
    /// A verifier over `store`, opening and sealing seeds with `keyring`.
    pub fn new(store: Box<dyn Store>, keyring: Keyring, policy: Policy) -> Self {
        Verifier {
            store,
            rules: Arc::new(Rules {
                keyring: RwLock::new(Arc::new(keyring)),
                keyring_generation: AtomicU64::new(0),
                source: None,
                reloading: Mutex::new(()),
                policy,
                keys: None,
            }),
            budgets: None,
        }
    }

    /// The rules, to change while building.
    fn rules_mut(&mut self) -> &mut Rules {
        Arc::make_mut(&mut self.rules)
    }

    /// Budgets the failed attempts of each client ([`Verifier::admit`]); `None` (the
    /// default) budgets nothing.
    #[must_use]
    pub fn with_client_budget(mut self, budget: Option<ClientBudget>) -> Self {
        self.budgets = budget.map(Budgets::new);
        self
    }

    /// Takes one attempt from `client`'s failure budget at `now`, before the attempt is made;
    /// settle the [`Admission`] with the attempt's outcome. A client that has spent its
    /// budget gets [`Outcome::RateLimited`]: make no attempt then (its code is not checked
    /// and no token is touched). Without a budget or a client, everyone is admitted.
    ///
    /// # Errors
    /// [`Outcome::RateLimited`], the client's answer.
    pub fn admit(&self, client: Option<&ClientId>, now: UnixTime) -> Result<Admission, Outcome> {
        match (&self.budgets, client) {
            (Some(budgets), Some(client)) => Admission::take(budgets, client, now),
            _ => Ok(Admission::free()),
        }
    }

    /// Under [`Policy::temporary_lock`], until when the lock of a token in `state` lasts
    /// (which may be past already); `None` when it has no temporary lock. A token locked
    /// this way keeps `locked_at` empty: the lock follows from its failures.
    pub fn temporary_lock_until(&self, state: &TokenState) -> Option<UnixTime> {
        self.rules.temporary_lock_until(state)
    }

    /// Asks `source` for a newer keyring whenever a seed names a key the keyring lacks, and
    /// retries with it: a server then follows a rotation done by another process.
    #[must_use]
    pub fn with_key_source(mut self, source: Box<dyn KeySource>) -> Self {
        self.rules_mut().source = Some(Arc::from(source));
        self
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.rules.keyring()
    }

    /// Uses `keyring` from now on (after the keyring file changed). Operations already
    /// running finish with the keyring they started with.
    pub fn replace_keyring(&self, keyring: Keyring) {
        self.rules.replace_keyring(keyring);
    }

    /// How many times the keyring was replaced (by [`Verifier::replace_keyring`] or its key
    /// source): lets a server tell seal errors of the current keyring from older ones.
    pub fn keyring_generation(&self) -> u64 {
        self.rules.keyring_generation.load(Ordering::Relaxed)
    }

    /// Keeps the prepared HMAC keys of up to about `capacity` recently verified tokens in
    /// memory, so that verifying them again skips opening the seal and the key schedule
    /// (roughly a third of an in-memory verification). 0 turns the cache off, which is the
    /// default. The cache never holds token state and is used only for a stored seal
    /// identical to the one it was made from; entries are wiped on eviction and when their
    /// token is deleted. It keeps key material in memory longer, in a process that holds the
    /// key-encryption key anyway.
    #[must_use]
    pub fn with_key_cache(mut self, capacity: usize) -> Self {
        self.rules_mut().keys = KeyCache::new(capacity).map(Arc::new);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.rules.policy
    }

    /// Gives the store back, e.g. to build a verifier with another keyring or policy.
    pub fn into_store(self) -> Box<dyn Store> {
        self.store
    }

    /// The store (for operations this type does not wrap).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Runs `f` with the rules as one unit of work and waits for its commit.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Rules, &dyn Tx) -> Result<T, VerifyError> + Send + 'static,
    ) -> Result<T, VerifyError> {
        let rules = Arc::clone(&self.rules);
        self.store.write(move |tx| f(&rules, tx))?
    }

    /// Checks `code` for a token (by serial or by user) at time `now`, and uses it up if it is
    /// right: the same step or counter, or an earlier one, is never accepted again.
    ///
    /// Wrong codes count towards the lock; replays, refusals of locked or disabled tokens and
    /// too-early retries do not. Every outcome goes to the audit trail with `caller`.
    ///
    /// # Errors
    /// [`VerifyError`] when the store fails, a seed does not open, or `now` is before T0.
    pub fn verify(
        &self,
        subject: Subject<'_>,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let mut here = None;
        if self.store.run_here(&mut |tx| {
            here = Some(self.rules.verify_on(tx, subject, code, now, caller));
        }) {
            return here.unwrap_or_else(|| Err(VerifyError::Store(crate::store::not_run())));
        }
        let (reply, answer) = crate::store::answer();
        self.verify_then(subject.into(), *code, now, caller.clone(), move |result| {
            reply.give(result);
        });
        answer
            .wait()
            .unwrap_or_else(|| Err(VerifyError::Store(crate::store::not_run())))
    }

    /// [`Verifier::verify`] for callers that must not block (an async server): the store
    /// runs the whole verification (read, decision, compare-and-set, audit) as one unit of
    /// work where it writes ([`Store::submit`]) and `done` hears the outcome only once
    /// everything it wrote is committed, on a thread of the store (or in place, for a store
    /// without I/O). This returns at once for every store.
    pub fn verify_then(
        &self,
        subject: OwnedSubject,
        code: Code,
        now: UnixTime,
        caller: Caller,
        done: impl FnOnce(Result<Outcome, VerifyError>) + Send + 'static,
    ) {
        let rules = Arc::clone(&self.rules);
        self.store.submit(work(
            move |tx| rules.verify_on(tx, subject.as_subject(), &code, now, &caller),
            move |result| done(result.map_err(VerifyError::from).and_then(|r| r)),
        ));
    }

    /// [`Verifier::verify_then`] on behalf of `client` (the end user's address as the
    /// backend saw it), with its failure budget ([`Verifier::with_client_budget`]): a client
    /// that has spent it gets [`Outcome::RateLimited`] without its code being checked.
    ///
    /// On a store that keeps the budgets ([`Store::shares_client_budgets`]), the check and
    /// the charge of a failure run inside the verification's unit of work, so every server
    /// on that store sees one budget per client; otherwise they are kept in this process
    /// ([`Verifier::admit`]).
    pub fn verify_from_then(
        &self,
        subject: OwnedSubject,
        code: Code,
        now: UnixTime,
        caller: Caller,
        client: Option<&ClientId>,
        done: impl FnOnce(Result<Outcome, VerifyError>) + Send + 'static,
    ) {
        let (Some(budgets), Some(client)) = (&self.budgets, client) else {
            return self.verify_then(subject, code, now, caller, done);
        };
        if !self.store.shares_client_budgets() {
            let admission = match Admission::take(budgets, client, now) {
                Ok(admission) => admission,
                Err(refusal) => return done(Ok(refusal)),
            };
            return self.verify_then(subject, code, now, caller, move |result| {
                admission.settle(result.as_ref().ok());
                done(result);
            });
        }
        let rules = Arc::clone(&self.rules);
        let (budgets, client) = (Arc::clone(budgets), client.clone());
        self.store.submit(work(
            move |tx| -> Result<Outcome, VerifyError> {
                let now_ms = now.0.saturating_mul(1000);
                if let Err(retry_at) = budgets.check(tx.client_budget_full_at(&client)?, now_ms) {
                    return Ok(Outcome::RateLimited { retry_at });
                }
                let outcome = rules.verify_on(tx, subject.as_subject(), &code, now, &caller)?;
                if outcome.is_failure() {
                    tx.client_budget_charge(&client, now_ms, budgets.unit_ms())?;
                }
                Ok(outcome)
            },
            move |result| done(result.map_err(VerifyError::from).and_then(|r| r)),
        ));
    }

    /// Binds an unassigned token to `user` if `code` is a valid code of it (proof of
    /// possession). The code is used up like any verified code.
    ///
    /// # Errors
    /// [`VerifyError::UnknownToken`], or as [`Verifier::verify`].
    pub fn activate(
        &self,
        token: &TokenId,
        user: &UserId,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Activation, VerifyError> {
        let (token, user, code, caller) = (token.clone(), user.clone(), *code, caller.clone());
        self.write(move |rules, tx| rules.activate(tx, &token, &user, &code, now, &caller))
    }

    /// Re-establishes a token whose clock or counter ran far away: `first` and `second` must
    /// be consecutive codes found within the resync range (TOTP: `resync_totp_window` steps
    /// either side of now; HOTP: `resync_hotp_look_ahead` counters ahead). On success the
    /// drift or counter moves there, the pair counts as one use, and a lock is lifted.
    ///
    /// # Errors
    /// [`VerifyError::UnknownToken`], or as [`Verifier::verify`].
    pub fn resync(
        &self,
        token: &TokenId,
        first: &Code,
        second: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let (token, first, second, caller) = (token.clone(), *first, *second, caller.clone());
        self.write(move |rules, tx| rules.resync(tx, &token, &first, &second, now, &caller))
    }

    /// Administrator unlock: clears the lock and the failure count.
    ///
    /// # Errors
    /// [`VerifyError::UnknownToken`] or [`VerifyError::Store`].
    pub fn unlock(
        &self,
        token: &TokenId,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let audit = Rules::audit(
            Some(token),
            None,
            AuditAction::Unlock,
            AuditOutcome::Ok,
            now,
            caller,
        );
        let target = token.clone();
        existed(
            self.write(move |_, tx| Ok(tx.unlock(&target, None, &audit)?))?,
            token,
        )
    }

    /// Disables (`false`) or re-enables (`true`) a token.
    ///
    /// # Errors
    /// [`VerifyError::UnknownToken`] or [`VerifyError::Store`].
    pub fn set_enabled(
        &self,
        token: &TokenId,
        enabled: bool,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let action = if enabled {
            AuditAction::Enable
        } else {
            AuditAction::Disable
        };
        let audit = Rules::audit(Some(token), None, action, AuditOutcome::Ok, now, caller);
        let target = token.clone();
        existed(
            self.write(move |_, tx| Ok(tx.set_enabled(&target, enabled, &audit)?))?,
            token,
        )
    }

    /// Deletes a token; its audit trail stays.
    ///
    /// # Errors
    /// [`VerifyError::UnknownToken`] or [`VerifyError::Store`].
    pub fn delete(
        &self,
        token: &TokenId,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let audit = Rules::audit(
            Some(token),
            None,
            AuditAction::Delete,
            AuditOutcome::Ok,
            now,
            caller,
        );
        let target = token.clone();
        let deleted = self.write(move |_, tx| Ok(tx.delete_token(&target, &audit)?))?;
        if let Some(keys) = &self.rules.keys {
            keys.remove(token);
        }
        existed(deleted, token)
    }

    /// A token's parameters and state, without its seed.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn show(&self, subject: Subject<'_>) -> Result<Option<TokenInfo>, VerifyError> {
        let record = self.store.reads(|r| self.rules.record(r, subject))?;
        Ok(record.map(TokenInfo::from))
    }

    /// Up to `limit` tokens after `after`, in serial order, without seeds.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn list(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenInfo>, VerifyError> {
        let tokens = self.store.reads(|r| r.list_tokens(after, limit))?;
        Ok(tokens.into_iter().map(TokenInfo::from).collect())
    }

    /// The last `limit` audit events of a token, oldest first.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn audit_trail(
        &self,
        token: &TokenId,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, VerifyError> {
        Ok(self.store.reads(|r| r.audit_trail(token, limit))?)
    }

    /// Up to `limit` audit lines of `token` older than the line `before`, newest first.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn audit_page(
        &self,
        token: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, VerifyError> {
        Ok(self.store.reads(|r| r.audit_page(token, before, limit))?)
    }

    /// Up to `limit` audit lines of all tokens at `since` or later and after the line
    /// `after`, oldest first.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, VerifyError> {
        Ok(self.store.reads(|r| r.audit_since(since, after, limit))?)
    }

    /// Up to `limit` events with ids greater than `after`, oldest first (see [`Event`]).
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, VerifyError> {
        Ok(self.store.reads(|r| r.events_after(after, limit))?)
    }

    /// Records what is not a change of the store but an event all the same (an API key
    /// revoked, a client past its failure budget): an audit line `action` about `name`,
    /// whose event the store writes with it.
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn record_event(
        &self,
        action: NoticeAction,
        name: &str,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let audit = Self::notice(action, name, now, caller);
        self.write(move |_, tx| Ok(tx.append_audit(&audit)?))
    }

    /// The audit line [`Verifier::record_event`] writes, for a caller that submits it to the
    /// store itself (without waiting for it).
    pub fn notice(action: NoticeAction, name: &str, now: UnixTime, caller: &Caller) -> AuditEvent {
        let action = match action {
            NoticeAction::ApiKeyRevoked => AuditAction::ApiKeyRevoke,
            NoticeAction::RejectedBurst => AuditAction::RejectedBurst,
        };
        // One line of printable text: a name never breaks the trail's lines.
        let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
        let outcome = AuditOutcome::Named { name };
        Rules::audit(None, None, action, outcome, now, caller)
    }

    /// Takes or renews the lease on delivering to `destination` (see [`Tx::claim_delivery`]).
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, VerifyError> {
        let (destination, holder) = (destination.to_owned(), holder.to_owned());
        self.write(move |_, tx| Ok(tx.claim_delivery(&destination, &holder, now_ms, lease_ms)?))
    }

    /// Records where delivery to `destination` stands (see [`Tx::settle_delivery`]).
    ///
    /// # Errors
    /// [`VerifyError::Store`].
    pub fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: Delivery,
        dead: Option<DeadLetter>,
    ) -> Result<bool, VerifyError> {
        let (destination, holder) = (destination.to_owned(), holder.to_owned());
        self.write(move |_, tx| {
            Ok(tx.settle_delivery(&destination, &holder, &delivery, dead.as_ref())?)
        })
    }

    /// Adds tokens (unassigned), all in one transaction or none.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] (inside [`VerifyError::Store`]) if a serial exists;
    /// [`VerifyError::Seal`].
    pub fn enroll(
        &self,
        tokens: &[Enrollment],
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let sealed = tokens
            .iter()
            .map(|e| self.rules.sealed(e))
            .collect::<Result<Vec<_>, _>>()?;
        let first = tokens.first().map(|e| &e.id);
        let outcome = AuditOutcome::Enrolled {
            count: count(tokens.len()),
        };
        let audit = Rules::audit(first, None, AuditAction::Enroll, outcome, now, caller);
        self.write(move |_, tx| Ok(tx.insert_tokens(&sealed, &audit)?))
    }

    /// Imports a PSKC file: each good key becomes a token named by its serial (or key id);
    /// bad keys, and keys whose serial already exists, are reported one by one; the good ones
    /// go in together in one transaction.
    ///
    /// # Errors
    /// [`VerifyError::Pskc`] if the file as a whole is unusable; [`VerifyError::Store`] (for
    /// example a serial inserted concurrently, in which case nothing was imported).
    pub fn import_pskc(
        &self,
        xml: &[u8],
        psk: Option<&PreSharedKey>,
        key_policy: KeyPolicy,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<ImportReport, VerifyError> {
        let entries = pskc::parse(xml, psk, key_policy)?;
        let mut report = ImportReport::default();
        let mut good = Vec::new();
        for entry in entries {
            let name = entry.serial.clone().or_else(|| entry.key_id.clone());
            let problem = |reason: String| ImportProblem {
                index: entry.index,
                name: name.clone(),
                reason,
            };
            let key = match entry.result {
                Ok(key) => key,
                Err(e) => {
                    report.refused.push(problem(e.to_string()));
                    continue;
                }
            };
            let id = match TokenId::new(key.name()) {
                Ok(id) => id,
                Err(e) => {
                    report.refused.push(problem(e.to_string()));
                    continue;
                }
            };
            if self.store.reads(|r| r.token(&id))?.is_some() {
                report
                    .refused
                    .push(problem(format!("token {id} already exists")));
                continue;
            }
            let (kind, counter) = match key.kind {
                OtpKind::Totp { period } => (
                    TokenKind::Totp {
                        period,
                        t0: UnixTime(0),
                    },
                    Counter(0),
                ),
                OtpKind::Hotp { counter } => (TokenKind::Hotp, counter),
            };
            let enrollment = Enrollment {
                id,
                params: TokenParams {
                    kind,
                    algorithm: key.algorithm,
                    digits: key.digits,
                },
                secret: key.secret,
                counter,
            };
            match self.rules.sealed(&enrollment) {
                Ok(token) => good.push(token),
                // Numbers the store cannot hold (signed 64-bit) refuse this key, not the file.
                Err(VerifyError::Store(e @ StoreError::OutOfRange { .. })) => {
                    report.refused.push(problem(e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        report.imported = good.iter().map(|t| t.id().clone()).collect();
        if !good.is_empty() {
            let outcome = AuditOutcome::Imported {
                imported: count(good.len()),
                refused: count(report.refused.len()),
            };
            let audit = Rules::audit(None, None, AuditAction::Import, outcome, now, caller);
            self.write(move |_, tx| Ok(tx.insert_tokens(&good, &audit)?))?;
        }
        Ok(report)
    }

    /// Re-seals every seed not sealed under the keyring's current key. Safe to run while
    /// verifications go on (each seal is replaced by compare-and-set) and to re-run after an
    /// interruption.
    ///
    /// # Errors
    /// [`VerifyError::Store`] or [`VerifyError::Seal`] (no randomness).
    pub fn rotate(&self, now: UnixTime, caller: &Caller) -> Result<RotationReport, VerifyError> {
        const BATCH: usize = 500;
        let keyring = self.keyring();
        let current = keyring.current_id().clone();
        let mut report = RotationReport::default();
        let mut after: Option<TokenId> = None;
        loop {
            let batch = self
                .store
                .reads(|r| r.seeds_not_under(&current, after.as_ref(), BATCH))?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            // Opened and sealed here, outside the store's writer; only the replacements (each
            // a compare-and-set) run there, a batch at a time.
            let mut replacements = Vec::new();
            for (id, old) in batch {
                match keyring.open(&id, &old) {
                    Ok(secret) => {
                        let new = keyring.seal(&id, &secret)?;
                        replacements.push((id, old, new));
                    }
                    Err(e) => report.failed.push((id, e)),
                }
            }
            report.resealed += self.write(move |_, tx| {
                let mut resealed = 0;
                for (id, old, new) in &replacements {
                    if tx.replace_seed(id, old, new)? {
                        resealed += 1;
                    }
                }
                Ok(resealed)
            })?;
        }
        let outcome = AuditOutcome::Rotated {
            resealed: count(report.resealed),
            key: current,
            failed: count(report.failed.len()),
        };
        let audit = Rules::audit(None, None, AuditAction::Rotate, outcome, now, caller);
        self.write(move |_, tx| Ok(tx.append_audit(&audit)?))?;
        Ok(report)
    }
}

/// A count for the audit trail.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Rules {
    /// The failure count the store locks at: the policy's, or never when locks are
    /// temporary (the gate then decides from the count and the time of the last failure).
    fn store_max_failures(&self) -> u32 {
        if self.policy.temporary_lock.is_some() {
            u32::MAX
        } else {
            self.policy.max_failures
        }
    }

    /// Under [`Policy::temporary_lock`], until when the lock of a token in `state` lasts
    /// (which may be past already); `None` when it has no temporary lock. A token locked
    /// this way keeps `locked_at` empty: the lock follows from its failures.
    fn temporary_lock_until(&self, state: &TokenState) -> Option<UnixTime> {
        let lock = self.policy.temporary_lock?;
        let last = state.last_failure_at?;
        let over = state.failures.checked_sub(self.policy.max_failures)?;
        Some(UnixTime(
            last.0.saturating_add(lock.after(over.saturating_add(1))),
        ))
    }

    /// The keyring in use.
    fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Uses `keyring` from now on (after the keyring file changed). Operations already
    /// running finish with the keyring they started with.
    fn replace_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
        self.keyring_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Opens a seed, asking the key source for a newer keyring if the seed names a key this
    /// one lacks. Reloads are serialized: callers that met the same new key at once wait for
    /// the first one's reload and use its keyring rather than all failing or all reading.
    fn open_seed(
        &self,
        ring: &Keyring,
        token: &TokenId,
        seed: &SealedSeed,
    ) -> Result<Secret, SealError> {
        let result = ring.open(token, seed);
        let (Err(SealError::UnknownKey { .. }), Some(source)) = (&result, &self.source) else {
            return result;
        };
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.keyring();
        if current.contains(&seed.key_id) {
            return current.open(token, seed);
        }
        if let Some(newer) = source.reload() {
            self.replace_keyring(newer);
        }
        self.keyring().open(token, seed)
    }

    fn audit(
        token: Option<&TokenId>,
        user: Option<&UserId>,
        action: AuditAction,
        outcome: AuditOutcome,
        now: UnixTime,
        caller: &Caller,
    ) -> AuditEvent {
        AuditEvent {
            token: token.cloned(),
            user: user.cloned(),
            action,
            outcome,
            at: now,
            caller: caller.clone(),
        }
    }

    fn record(
        &self,
        store: &dyn Reads,
        subject: Subject<'_>,
    ) -> Result<Option<TokenRecord>, VerifyError> {
        Ok(match subject {
            Subject::Token(id) => store.token(id)?,
            Subject::User(user) => store.token_of_user(user)?,
        })
    }

    /// The prepared HMAC key of a token: from the cache if it holds one made from this very
    /// seal, else opened and prepared (and cached, if there is a cache).
    fn hotp(&self, record: &TokenRecord) -> Result<Hotp, VerifyError> {
        let p = record.params;
        if let Some(hotp) = self
            .keys
            .as_ref()
            .and_then(|k| k.get(&record.id, &record.seed, p))
        {
            return Ok(hotp);
        }
        let secret = self.open_seed(&self.keyring(), &record.id, &record.seed)?;
        let hotp = Hotp::new(&secret, p.algorithm, p.digits);
        if let Some(keys) = &self.keys {
            keys.put(&record.id, &record.seed, p, hotp.clone());
        }
        Ok(hotp)
    }

    fn generator(&self, record: &TokenRecord, now: UnixTime) -> Result<Generator, VerifyError> {
        let p = record.params;
        // One HMAC key schedule per verification: TOTP is HOTP over the step, so the step is
        // computed here (checked, like `Totp::step_at`) rather than by a second generator.
        let current = match p.kind {
            TokenKind::Totp { period, t0 } => {
                let elapsed = now.0.checked_sub(t0.0).ok_or(TimeError::BeforeT0 {
                    time: now.0,
                    t0: t0.0,
                })?;
                Some(elapsed / period.seconds())
            }
            TokenKind::Hotp => None,
        };
        Ok(Generator {
            hotp: self.hotp(record)?,
            current,
        })
    }

    /// The verification window: TOTP, `totp_window` steps either side of the current step
    /// moved by the remembered drift; HOTP, from the last used counter (to recognise a replay
    /// of the last code) to `hotp_look_ahead` past the next one.
    fn window(&self, g: &Generator, state: &TokenState) -> Window {
        match g.current {
            Some(current) => {
                let centre = i128::from(current) + i128::from(state.drift);
                let w = i128::from(self.policy.totp_window);
                Window {
                    lo: clamp(centre - w),
                    hi: clamp(centre + w),
                    origin: current,
                }
            }
            None => Window {
                lo: state.next.saturating_sub(1),
                hi: state
                    .next
                    .saturating_add(u64::from(self.policy.hotp_look_ahead)),
                origin: state.next,
            },
        }
    }

    fn matched(record: &TokenRecord, value: u64) -> Matched {
        match record.params.kind {
            TokenKind::Totp { .. } => Matched::Step(TimeStep(value)),
            TokenKind::Hotp => Matched::Counter(Counter(value)),
        }
    }

    /// When a locked token unlocks by itself, if the policy allows that.
    fn unlock_time(&self, locked_at: UnixTime) -> Option<UnixTime> {
        self.policy
            .auto_unlock_after
            .map(|s| UnixTime(locked_at.0.saturating_add(s)))
    }

    /// The checks before any code is looked at: enabled, locked (with automatic unlock),
    /// growing delay. `None` means go ahead with `state` (possibly just unlocked).
    fn gate(
        &self,
        store: &dyn Tx,
        record: &mut TokenRecord,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Option<Outcome>, VerifyError> {
        let state = &mut record.state;
        if !state.enabled {
            return Ok(Some(Outcome::Disabled));
        }
        if let Some(until) = self.temporary_lock_until(state) {
            if now < until {
                return Ok(Some(Outcome::Locked { until: Some(until) }));
            }
        }
        let locked_at = state.locked_at.or_else(|| {
            if self.policy.temporary_lock.is_some() {
                return None;
            }
            // A policy lowered since the failures were counted: treat as locked now.
            (state.failures >= self.policy.max_failures).then_some(state.last_failure_at?)
        });
        if let Some(at) = locked_at {
            match self.unlock_time(at) {
                Some(until) if now >= until => {
                    let audit = Self::audit(
                        Some(&record.id),
                        None,
                        AuditAction::AutoUnlock,
                        AuditOutcome::Ok,
                        now,
                        caller,
                    );
                    // Only the caller whose compare-and-set wins writes the unlock; either
                    // way the token is unlocked now.
                    store.unlock(&record.id, state.locked_at, &audit)?;
                    state.locked_at = None;
                    state.failures = 0;
                    state.last_failure_at = None;
                }
                until => return Ok(Some(Outcome::Locked { until })),
            }
        }
        if let (Some(delay), Some(last)) = (self.policy.failure_delay, state.last_failure_at) {
            let retry_at = UnixTime(last.0.saturating_add(delay.after(state.failures)));
            if state.failures > 0 && now < retry_at {
                return Ok(Some(Outcome::TooSoon { retry_at }));
            }
        }
        Ok(None)
    }

    /// After a compare-and-set did not apply: why not, from the current row.
    fn lost_race(&self, store: &dyn Reads, id: &TokenId) -> Result<Outcome, VerifyError> {
        Ok(match store.token(id)? {
            None => Outcome::UnknownToken,
            Some(t) if !t.state.enabled => Outcome::Disabled,
            Some(t) if t.state.locked_at.is_some() => Outcome::Locked {
                until: t.state.locked_at.and_then(|at| self.unlock_time(at)),
            },
            Some(_) => Outcome::Replayed,
        })
    }

    /// Counts a failure and says how many attempts are left.
    fn fail(
        &self,
        store: &dyn Tx,
        record: &TokenRecord,
        action: AuditAction,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            action,
            AuditOutcome::Rejected,
            now,
            caller,
        );
        // Operators look for the moment a token locked; the store writes it in the trail
        // (after the `rejected` line, in the same change) when failures reach the policy's.
        let lock = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            AuditAction::Lock,
            if self.policy.temporary_lock.is_some() {
                AuditOutcome::Temporary
            } else {
                AuditOutcome::Ok
            },
            now,
            caller,
        );
        let lock = (self.policy.max_failures, &lock);
        match store.record_failure(&record.id, now, self.store_max_failures(), &audit, lock)? {
            Some(failures) => {
                let attempts_left = self.policy.max_failures.saturating_sub(failures);
                Ok(Outcome::Rejected { attempts_left })
            }
            None => {
                let outcome = self.lost_race(store, &record.id)?;
                self.log(store, record, action, &outcome, now, caller)?;
                Ok(outcome)
            }
        }
    }

    fn log(
        &self,
        store: &dyn Tx,
        record: &TokenRecord,
        action: AuditAction,
        outcome: &Outcome,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            action,
            AuditOutcome::from(outcome),
            now,
            caller,
        );
        Ok(store.append_audit(&audit)?)
    }

    /// Verifies on the token as the store last saw it ([`Tx::token_seen`]: one round trip
    /// less on PostgreSQL) and, if the row had changed since ([`StoreError::Stale`]: nothing
    /// was written), once more on a fresh read.
    fn verify_on(
        &self,
        store: &dyn Tx,
        subject: Subject<'_>,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        match self.verify_once(store, subject, code, now, caller, true) {
            Err(VerifyError::Store(StoreError::Stale)) => {
                self.verify_once(store, subject, code, now, caller, false)
            }
            result => result,
        }
    }

    fn verify_once(
        &self,
        store: &dyn Tx,
        subject: Subject<'_>,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
        seen: bool,
    ) -> Result<Outcome, VerifyError> {
        let record = match subject {
            Subject::Token(id) if seen => store.token_seen(id)?,
            _ => self.record(store, subject)?,
        };
        let Some(record) = record else {
            let (token, user) = match subject {
                Subject::Token(t) => (Some(t), None),
                Subject::User(u) => (None, Some(u)),
            };
            let outcome = Outcome::UnknownToken;
            let audit = Self::audit(
                token,
                user,
                AuditAction::Verify,
                AuditOutcome::from(&outcome),
                now,
                caller,
            );
            store.append_audit(&audit)?;
            if self.policy.unknown_as_rejected {
                return Ok(self.as_if_rejected(code));
            }
            return Ok(outcome);
        };
        self.check(store, record, code, None, now, caller)
    }

    /// The answer to an unknown serial under [`Policy::unknown_as_rejected`]: a wrong code's,
    /// after as many code computations as a HOTP token's window (with a throw-away key), so
    /// that neither the answer nor its time tells that no such token exists.
    fn as_if_rejected(&self, code: &Code) -> Outcome {
        let digits = u32::try_from(code.as_str().len())
            .ok()
            .and_then(|n| codereader_otp::Digits::new(n).ok())
            .unwrap_or(codereader_otp::Digits::SIX);
        if let Ok(secret) = Secret::new(vec![0x5a; 20], KeyPolicy::Rfc4226) {
            let hotp = Hotp::new(&secret, codereader_otp::Algorithm::Sha1, digits);
            let hi = 1 + u64::from(self.policy.hotp_look_ahead);
            std::hint::black_box(scan(&hotp, code, 0, hi, 1));
        }
        Outcome::Rejected {
            attempts_left: self.policy.max_failures.saturating_sub(1),
        }
    }

    fn check(
        &self,
        store: &dyn Tx,
        mut record: TokenRecord,
        code: &Code,
        bind: Option<&UserId>,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let action = if bind.is_some() {
            AuditAction::Activate
        } else {
            AuditAction::Verify
        };
        if let Some(outcome) = self.gate(store, &mut record, now, caller)? {
            self.log(store, &record, action, &outcome, now, caller)?;
            return Ok(outcome);
        }
        let g = self.generator(&record, now)?;
        let w = self.window(&g, &record.state);
        match scan(&g.hotp, code, w.lo, w.hi, record.state.next) {
            Scan::Fresh(value) => {
                let drift = drift_of(value, w.origin);
                let advance = Advance {
                    token: record.id.clone(),
                    lowest: value,
                    accepted: value,
                    drift,
                    max_failures: self.store_max_failures(),
                    unlock: false,
                    bind: bind.cloned(),
                };
                let audit = Self::audit(
                    Some(&record.id),
                    bind.or(record.user.as_ref()),
                    action,
                    AuditOutcome::Accepted,
                    now,
                    caller,
                );
                if store.advance(&advance, &audit)? {
                    Ok(Outcome::Accepted(Accepted {
                        token: record.id.clone(),
                        matched: Self::matched(&record, value),
                        drift,
                    }))
                } else {
                    let outcome = self.lost_race(store, &record.id)?;
                    self.log(store, &record, action, &outcome, now, caller)?;
                    Ok(outcome)
                }
            }
            Scan::Stale => {
                let outcome = Outcome::Replayed;
                self.log(store, &record, action, &outcome, now, caller)?;
                Ok(outcome)
            }
            Scan::Miss => self.fail(store, &record, action, now, caller),
        }
    }

    /// [`Verifier::activate`], in a unit of work.
    fn activate(
        &self,
        store: &dyn Tx,
        token: &TokenId,
        user: &UserId,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Activation, VerifyError> {
        let record = store
            .token(token)?
            .ok_or_else(|| VerifyError::UnknownToken {
                token: token.clone(),
            })?;
        if record.user.is_some() {
            store.append_audit(&Self::audit(
                Some(token),
                Some(user),
                AuditAction::Activate,
                AuditOutcome::AlreadyBound,
                now,
                caller,
            ))?;
            return Ok(Activation::AlreadyBound);
        }
        if store.token_of_user(user)?.is_some() {
            store.append_audit(&Self::audit(
                Some(token),
                Some(user),
                AuditAction::Activate,
                AuditOutcome::UserHasToken,
                now,
                caller,
            ))?;
            return Ok(Activation::UserHasToken);
        }
        match self.check(store, record, code, Some(user), now, caller) {
            Ok(Outcome::Accepted(a)) => Ok(Activation::Activated(a)),
            Ok(Outcome::Replayed) => {
                // The compare-and-set also refuses a token someone else just bound.
                match store.token(token)? {
                    Some(t) if t.user.is_some() => Ok(Activation::AlreadyBound),
                    _ => Ok(Activation::Refused(Outcome::Replayed)),
                }
            }
            Ok(other) => Ok(Activation::Refused(other)),
            Err(VerifyError::Store(StoreError::UserTaken { .. })) => Ok(Activation::UserHasToken),
            Err(e) => Err(e),
        }
    }

    /// [`Verifier::resync`], in a unit of work.
    fn resync(
        &self,
        store: &dyn Tx,
        token: &TokenId,
        first: &Code,
        second: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let record = store
            .token(token)?
            .ok_or_else(|| VerifyError::UnknownToken {
                token: token.clone(),
            })?;
        if !record.state.enabled {
            let outcome = Outcome::Disabled;
            self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
            return Ok(outcome);
        }
        let g = self.generator(&record, now)?;
        let (lo, hi, origin) = match g.current {
            Some(current) => {
                let w = i128::from(self.policy.resync_totp_window);
                (
                    clamp(i128::from(current) - w),
                    clamp(i128::from(current) + w),
                    current,
                )
            }
            None => (
                record.state.next,
                record
                    .state
                    .next
                    .saturating_add(u64::from(self.policy.resync_hotp_look_ahead)),
                record.state.next,
            ),
        };
        let Some(value) = scan_pair(&g.hotp, first, second, lo, hi, record.state.next) else {
            if record.state.locked_at.is_some() {
                let outcome = Outcome::Locked {
                    until: record.state.locked_at.and_then(|at| self.unlock_time(at)),
                };
                self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
                return Ok(outcome);
            }
            return self.fail(store, &record, AuditAction::Resync, now, caller);
        };
        let accepted = value.saturating_add(1);
        let drift = drift_of(accepted, origin);
        let advance = Advance {
            token: record.id.clone(),
            lowest: value,
            accepted,
            drift,
            max_failures: self.store_max_failures(),
            unlock: true,
            bind: None,
        };
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            AuditAction::Resync,
            AuditOutcome::Accepted,
            now,
            caller,
        );
        if store.advance(&advance, &audit)? {
            Ok(Outcome::Accepted(Accepted {
                token: record.id.clone(),
                matched: Self::matched(&record, accepted),
                drift,
            }))
        } else {
            let outcome = self.lost_race(store, &record.id)?;
            self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
            Ok(outcome)
        }
    }

    /// A token ready for the store: its seed sealed, its numbers checked for the database.
    fn sealed(&self, e: &Enrollment) -> Result<NewToken, VerifyError> {
        let seed: SealedSeed = self.keyring().seal(&e.id, &e.secret)?;
        let next = match e.params.kind {
            TokenKind::Totp { .. } => 0,
            TokenKind::Hotp => e.counter.0,
        };
        Ok(NewToken::new(e.id.clone(), e.params, seed, next)?)
    }
}
