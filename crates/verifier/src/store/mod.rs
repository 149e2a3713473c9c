//! Where token state lives: the contract between the rules and a database, and its
//! implementations (SQLite, PostgreSQL, memory).
//!
//! A backend implements two things once:
//! - the primitive operations, on whatever it runs them in (a connection inside a transaction,
//!   a locked map): [`Reads`] for the queries and [`Tx`] for the state changes;
//! - [`Store`]: "run this unit of [`Work`] where you write, and tell it once its writes are
//!   committed" ([`Store::submit`]), and "run these reads" ([`Store::read`]).
//!
//! The blocking conveniences (submit and wait, read and return) are written once, on
//! `dyn Store` (`<dyn Store>::write` and `<dyn Store>::reads`), not per backend. A new backend is one
//! file plus its line in `open.rs`'s [`StoreAddress`]; the conformance suite (the verifier's
//! `tests/rules.rs` and `tests/concurrency.rs`) drives every rule through this contract, so
//! the backend needs only a test function that opens it there.
//!
//! The contract is shaped around compare-and-set: every state change is a single conditional
//! update (`UPDATE ... WHERE next <= $lowest AND ...`) that the database applies atomically,
//! so when several threads, processes or servers race with the same code, exactly one update
//! matches a row and wins. The verifier reads, decides, and then asks the store to apply its
//! decision only if the state still allows it. Each primitive operation is atomic on its own;
//! a unit of work as a whole need not be (the rules never rely on it), which lets PostgreSQL
//! run each change as one statement and SQLite commit many units together.
//!
//! [`Store::submit`] never blocks its caller on I/O: SQLite queues the work for its writer
//! thread, PostgreSQL for its worker threads, and memory runs it in place (it does none), so
//! an async server may call it from its own threads.

use codereader_otp::UnixTime;

use crate::seal::SealedSeed;
use crate::token::{Caller, ClientId, KeyId, TokenId, TokenKind, TokenParams, TokenState, UserId};

mod audit;
mod events;
pub mod memory;
mod open;
mod pg_batch;
mod pgclient;
pub mod postgres;
mod postgres_events;
mod sql;
pub mod sqlite;
mod sqlite_checkpoint;
mod sqlite_events;

pub use audit::{AuditAction, AuditOutcome, UnknownAuditText};
pub use events::{Claim, DeadLetter, Delivery, Event, EventKind};
pub use open::{StoreAddress, open_store};

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
    /// The store address is none of the forms [`StoreAddress`] knows.
    #[error("unknown store address; expected sqlite:PATH, a file path or postgres://...")]
    BadAddress,
    /// A value does not fit the database's signed 64-bit integers (a [`NewToken`] being
    /// built, or a time or counter given to the store).
    #[error("{what} does not fit in a signed 64-bit integer")]
    OutOfRange {
        /// Which value.
        what: &'static str,
    },
    /// A write was refused because the unit of work decided on a token as this process last
    /// saw it ([`Tx::token_seen`]) and the row has changed since: nothing was written. The
    /// verifier runs the unit again on a fresh read and never returns this.
    #[error("the token changed since this process last saw it")]
    Stale,
}

/// A token to insert: parameters, sealed seed, first usable step or counter.
///
/// Every number in it fits a database's signed 64-bit integers ([`NewToken::new`] checks),
/// so no store refuses a token for its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub(crate) id: TokenId,
    pub(crate) params: TokenParams,
    pub(crate) seed: SealedSeed,
    pub(crate) next: u64,
}

impl NewToken {
    /// A token to insert; `next` is the first step (TOTP, usually 0) or counter (HOTP) that
    /// may be accepted.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`] when the period, T0 or `next` exceeds `i64::MAX`.
    pub fn new(
        id: TokenId,
        params: TokenParams,
        seed: SealedSeed,
        next: u64,
    ) -> Result<Self, StoreError> {
        let fits = |value: u64, what: &'static str| {
            i64::try_from(value)
                .map(drop)
                .map_err(|_| StoreError::OutOfRange { what })
        };
        if let TokenKind::Totp { period, t0 } = params.kind {
            fits(period.seconds(), "period")?;
            fits(t0.0, "t0")?;
        }
        fits(next, "counter")?;
        Ok(NewToken {
            id,
            params,
            seed,
            next,
        })
    }

    /// Its serial.
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// How it makes codes.
    pub fn params(&self) -> &TokenParams {
        &self.params
    }

    /// Its sealed secret.
    pub fn seed(&self) -> &SealedSeed {
        &self.seed
    }

    /// The first step or counter that may be accepted.
    pub fn next(&self) -> u64 {
        self.next
    }
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
/// Actions and outcomes are typed ([`AuditAction`], [`AuditOutcome`]); a store turns them
/// into text when it writes the line and back when it reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The token concerned, if known.
    pub token: Option<TokenId>,
    /// The user concerned, if known.
    pub user: Option<UserId>,
    /// What was asked.
    pub action: AuditAction,
    /// What happened.
    pub outcome: AuditOutcome,
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

/// The queries of the rules, on whatever a backend reads with (a pooled connection, or the
/// connection of a write transaction, which also sees that transaction's writes).
pub trait Reads {
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

    /// Up to `limit` events with ids greater than `after`, in id order (which is commit
    /// order: a reader resuming after the last id it saw misses none).
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
}

/// The state changes, inside a unit of [`Work`]. Each is atomic on its own (a failed one
/// leaves nothing behind) and takes effect for readers once the store commits the unit.
/// [`Tx::advance`] and [`Tx::record_failure`] are single conditional updates, so that
/// concurrent callers (other threads, processes or servers) can neither both win nor lose an
/// increment.
pub trait Tx: Reads {
    /// The token with this serial as this process last saw it, if the store keeps such
    /// copies (PostgreSQL: saves the read's round trip), else [`Reads::token`].
    ///
    /// A record from a copy is not confirmed: the unit's next write checks that the row is
    /// still exactly that record. [`Tx::advance`] then applies only if it is (the whole row
    /// equal to the copy, in the same statement), and every other write refuses to run;
    /// either way, if the row differs, nothing is written and the write fails with
    /// [`StoreError::Stale`], and the caller must decide again on [`Reads::token`] (which
    /// confirms). A decision on a confirmed copy is the one a fresh read would have given.
    ///
    /// # Errors
    /// As [`Reads::token`].
    fn token_seen(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.token(id)
    }

    /// Inserts all tokens, or none, and appends `audit`.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] if an id exists; [`StoreError::Database`].
    fn insert_tokens(&self, tokens: &[NewToken], audit: &AuditEvent) -> Result<(), StoreError>;

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
    /// token (at `now`) when failures reach `max_failures`, and appends `audit` and, when the
    /// new count is at least `lock.0`, the line `lock.1` after it, atomically (a lock and
    /// its line, and so its event, commit together). Returns the new failure count, or
    /// `None` if the token was locked, disabled or missing (then nothing is written).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn record_failure(
        &self,
        token: &TokenId,
        now: UnixTime,
        max_failures: u32,
        audit: &AuditEvent,
        lock: (u32, &AuditEvent),
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

    /// Takes or renews the lease on delivering to `destination` for `holder` until
    /// `now_ms + lease_ms`, if nobody else holds it at `now_ms` (milliseconds since the
    /// epoch; servers sharing a database need clocks in step, as TOTP does anyway). A
    /// destination seen for the first time starts after the latest event. Returns where its
    /// delivery stands either way.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::OutOfRange`].
    fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError>;

    /// Records where delivery to `destination` stands now (and the event given up on, if
    /// `dead`), only while `holder` is the one [`Tx::claim_delivery`] last gave it to.
    /// Returns whether it was.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::OutOfRange`].
    fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: &Delivery,
        dead: Option<&DeadLetter>,
    ) -> Result<bool, StoreError>;

    /// In a store that keeps the per-client failure budgets ([`Store::shares_client_budgets`]):
    /// the millisecond at which `client`'s budget is whole again, if it is not whole. Others
    /// keep none and say `None`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn client_budget_full_at(&self, client: &ClientId) -> Result<Option<u64>, StoreError> {
        let _ = client;
        Ok(None)
    }

    /// In a store that keeps the per-client failure budgets: spends `unit_ms` of `client`'s
    /// budget at `now_ms` (one failed attempt), in one statement. Others do nothing.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn client_budget_charge(
        &self,
        client: &ClientId,
        now_ms: u64,
        unit_ms: u64,
    ) -> Result<(), StoreError> {
        let _ = (client, now_ms, unit_ms);
        Ok(())
    }
}

/// A unit of work for [`Store::submit`]: it runs where the store writes, then hears whether
/// its writes were committed.
pub trait Work: Send {
    /// Reads and writes through `tx`. Never wait for the store from here (the store may be
    /// waiting for this to return).
    fn run(&mut self, tx: &dyn Tx);

    /// Told `Ok` once every write `run` made is committed, or why they were not; called once,
    /// after `run` (or without it, when the store could not run the work at all).
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

/// A [`Work`] from two closures: `run` in the store, `then` with its result once committed
/// (or the store's error).
pub fn work<T, R, D>(run: R, then: D) -> Box<dyn Work>
where
    T: Send + 'static,
    R: FnOnce(&dyn Tx) -> T + Send + 'static,
    D: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    struct Closures<T, R, D> {
        run: Option<R>,
        result: Option<T>,
        then: D,
    }
    impl<T, R, D> Work for Closures<T, R, D>
    where
        T: Send,
        R: FnOnce(&dyn Tx) -> T + Send,
        D: FnOnce(Result<T, StoreError>) + Send,
    {
        fn run(&mut self, tx: &dyn Tx) {
            if let Some(run) = self.run.take() {
                self.result = Some(run(tx));
            }
        }

        fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
            let Closures { result, then, .. } = *self;
            then(committed.and_then(|()| result.ok_or_else(not_run)));
        }
    }
    Box::new(Closures {
        run: Some(run),
        result: None,
        then,
    })
}

/// One answer from the thread that finishes a unit of work to the caller blocked on it.
///
/// Lighter than a channel (one allocation, an uncontended lock), which matters to a store that
/// runs work in place: there the answer is given before the caller starts waiting.
pub(crate) struct Answer<T>(std::sync::Arc<AnswerSlot<T>>);

/// Gives the [`Answer`] its value; dropped without giving, the wait ends with `None`.
pub(crate) struct Reply<T>(std::sync::Arc<AnswerSlot<T>>);

pub(crate) struct AnswerSlot<T> {
    state: std::sync::Mutex<AnswerState<T>>,
    given: std::sync::Condvar,
}

struct AnswerState<T> {
    /// `None` while waiting; `Some(None)` if the reply was dropped unused.
    value: Option<Option<T>>,
    /// Whether the caller sleeps on `given`: only then is it woken (a wake is a system call,
    /// and a store that runs work in place answers before anyone waits).
    sleeping: bool,
}

/// A new answer and the reply that gives it.
pub(crate) fn answer<T>() -> (Reply<T>, Answer<T>) {
    let slot = std::sync::Arc::new(AnswerSlot {
        state: std::sync::Mutex::new(AnswerState {
            value: None,
            sleeping: false,
        }),
        given: std::sync::Condvar::new(),
    });
    (Reply(std::sync::Arc::clone(&slot)), Answer(slot))
}

impl<T> AnswerSlot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnswerState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Reply<T> {
    /// Hands over `value` and wakes the waiting caller.
    pub(crate) fn give(self, value: T) {
        self.set(Some(value));
    }

    fn set(&self, value: Option<T>) {
        let mut state = self.0.lock();
        if state.value.is_none() {
            state.value = Some(value);
            if state.sleeping {
                self.0.given.notify_one();
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        // A reply dropped without an answer (the work was dropped unrun) ends the wait.
        self.set(None);
    }
}

impl<T> Answer<T> {
    /// Blocks until the reply gives a value (`None` if it was dropped without one).
    pub(crate) fn wait(self) -> Option<T> {
        let mut state = self.0.lock();
        loop {
            if let Some(value) = state.value.take() {
                return value;
            }
            state.sleeping = true;
            state = self
                .0
                .given
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A store that finished a unit of work it never ran, or dropped it unfinished.
pub(crate) fn not_run() -> StoreError {
    StoreError::Database {
        backend: "store",
        reason: "the store did not run the work".to_owned(),
    }
}

/// Persistent token state: where units of work run and reads happen.
pub trait Store: Send + Sync {
    /// Runs `work` where the store writes and then finishes it with whether its writes were
    /// committed. Never blocks the caller on I/O: the work may run later on a thread of the
    /// store (SQLite's writer, PostgreSQL's workers), so `finish` is where its result goes.
    fn submit(&self, work: Box<dyn Work>);

    /// Calls `reads` once with a view for queries (on the caller's thread; it blocks).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the store cannot give a view (no connection); errors
    /// of the queries themselves are `reads`'s to keep.
    fn read(&self, reads: &mut dyn FnMut(&dyn Reads)) -> Result<(), StoreError>;

    /// For a caller that will wait anyway: runs `run` as a committed unit of work on the
    /// caller's thread and returns `true`, if this store can (one without I/O, that commits
    /// as it goes); `false`, without calling `run`, for a store that must [`Store::submit`].
    /// Saves a blocking caller the boxed work and owned copies that `submit` needs.
    fn run_here(&self, run: &mut dyn FnMut(&dyn Tx)) -> bool {
        let _ = run;
        false
    }

    /// Whether this store keeps the per-client failure budgets itself
    /// ([`Tx::client_budget_full_at`], [`Tx::client_budget_charge`]), so that every server on
    /// it sees one budget per client: PostgreSQL does. A store used by one process (SQLite,
    /// memory) does not; the verifier keeps them in memory then.
    fn shares_client_budgets(&self) -> bool {
        false
    }
}

impl dyn Store + '_ {
    /// Submits `run` as a unit of work and waits until it is committed: for callers on
    /// threads that may block.
    ///
    /// # Errors
    /// Why the work's writes were not committed (its own result is then dropped).
    pub fn write<T, R>(&self, run: R) -> Result<T, StoreError>
    where
        T: Send + 'static,
        R: FnOnce(&dyn Tx) -> T + Send + 'static,
    {
        let mut run = Some(run);
        let mut here = None;
        if self.run_here(&mut |tx| here = run.take().map(|run| run(tx))) {
            return here.ok_or_else(not_run);
        }
        let run = run.ok_or_else(not_run)?;
        let (reply, answer) = answer();
        self.submit(work(run, move |result| reply.give(result)));
        answer.wait().unwrap_or_else(|| Err(not_run()))
    }

    /// Runs `f` on a view for queries and returns what it returns.
    ///
    /// # Errors
    /// `f`'s errors, and [`StoreError::Database`] when the store cannot give a view.
    pub fn reads<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn Reads) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut f = Some(f);
        let mut result = None;
        self.read(&mut |view| {
            if let Some(f) = f.take() {
                result = Some(f(view));
            }
        })?;
        result.unwrap_or_else(|| Err(not_run().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_arrives_given_before_or_after_the_wait_and_ends_if_never_given() {
        let (reply, waiting) = answer();
        reply.give(7);
        assert_eq!(waiting.wait(), Some(7));

        let (reply, waiting) = answer();
        let giver = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            reply.give("late");
        });
        assert_eq!(waiting.wait(), Some("late"));
        giver.join().unwrap();

        let (reply, waiting) = answer::<u8>();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(reply);
        });
        assert_eq!(waiting.wait(), None);
        dropper.join().unwrap();
    }
}
