//! The verifier's public face: [`Verifier`], which checks codes and carries out the
//! administrative operations (enroll, import, show, list, unlock, enable, delete, rotate,
//! audit pages, events and deliveries) over any [`Store`].
//!
//! It exists apart from the rules ([`crate::rules`]) so that what a caller sees (the store,
//! client budgets, builder methods, blocking and callback entry points) stays out of the
//! engine a unit of work carries. One path per request: an operation that writes is one unit
//! of work ([`Store::submit`]), run where the store writes (SQLite's writer thread, a
//! PostgreSQL worker, in place for memory) by the rules. A verification is
//! [`Verifier::verify_then`]: submit, and hear the outcome after the commit; the blocking
//! [`Verifier::verify`] is that and a wait. Reads for operators ([`Verifier::show`], the audit
//! pages) go through [`Store::read`] on the caller's thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use codereader_otp::pskc::{self, PreSharedKey};
use codereader_otp::{Code, KeyPolicy, UnixTime};

use crate::budget::{Admission, Budgets, ClientBudget};
use crate::keycache::KeyCache;
use crate::keyring::Keyring;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::rules::{Activation, Enrollment, KeySource, OwnedSubject, Rules, Subject, VerifyError};
use crate::seal::SealError;
use crate::store::{
    AuditAction, AuditEntry, AuditEvent, AuditOutcome, Claim, DeadLetter, Delivery, Event, Store,
    StoreError, TokenRecord, Tx, work,
};
use crate::token::{Caller, ClientId, KeyId, TokenId, TokenParams, TokenState, UserId};

/// An event that changes nothing in the store ([`Verifier::record_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoticeAction {
    /// An API key was revoked (named by its name).
    ApiKeyRevoked,
    /// A client went past its failure budget (named by its address).
    RejectedBurst,
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

/// How many prepared HMAC keys a verifier keeps by default ([`Verifier::with_key_cache`]):
/// room for the tokens of a large site that log on within minutes, in a few megabytes.
pub const DEFAULT_KEY_CACHE: usize = 10_000;

/// The verifier: a store, the keyring that opens its seeds, and the policy.
///
/// `Send + Sync`: share one in an `Arc` and call it from any thread; only
/// [`Verifier::verify_then`] never blocks.
pub struct Verifier {
    store: Box<dyn Store>,
    rules: Arc<Rules>,
    budgets: Option<Arc<Budgets>>,
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

impl Verifier {
    /// A verifier over `store`, opening and sealing seeds with `keyring`, with a key cache of
    /// [`DEFAULT_KEY_CACHE`] tokens ([`Verifier::with_key_cache`]).
    pub fn new(store: Box<dyn Store>, keyring: Keyring, policy: Policy) -> Self {
        Verifier {
            store,
            rules: Arc::new(Rules {
                keyring: RwLock::new(Arc::new(keyring)),
                keyring_generation: AtomicU64::new(0),
                source: None,
                reloading: Mutex::new(()),
                policy,
                keys: KeyCache::new(DEFAULT_KEY_CACHE).map(Arc::new),
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
    /// (roughly a third of an in-memory verification). On by default with
    /// [`DEFAULT_KEY_CACHE`]; 0 turns it off. The cache never holds token state and is used
    /// only for a stored seal identical to the one it was made from; entries are wiped on
    /// eviction, when their token is deleted or enrolled again, and all of them when the
    /// keyring is replaced or a rotation runs. It keeps key material in memory longer, in a
    /// process that holds the key-encryption key anyway (with a key in a PKCS#11 module, it
    /// does not: turn the cache off there unless the module cannot keep up).
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
        self.forget_keys(tokens.iter().map(|e| &e.id));
        self.write(move |_, tx| Ok(tx.insert_tokens(&sealed, &audit)?))
    }

    /// Drops the cached keys of `tokens` (enrolled again: their old keys are no use).
    fn forget_keys<'t>(&self, tokens: impl Iterator<Item = &'t TokenId>) {
        if let Some(keys) = &self.rules.keys {
            tokens.for_each(|id| keys.remove(id));
        }
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
            let (kind, counter) = Enrollment::kind_of(key.kind);
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
        self.forget_keys(report.imported.iter());
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
        // Every re-sealed seed misses the cache anyway; its old entries need not wait for
        // eviction.
        if let Some(keys) = &self.rules.keys {
            keys.clear();
        }
        Ok(report)
    }
}

/// A count for the audit trail.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
