//! Accepted verifications of concurrent units of work, several in one statement.
//!
//! On PostgreSQL a durable row change costs far more in the statement and its commit than in
//! the row: measured with pgbench on one cluster (`-M prepared -c 32`), the store's
//! single-row accept-and-audit statement ran 14.1k per second, and one that moves eight
//! tokens and writes their eight audit lines ran 7.2k per second, 57.6k rows. So the
//! compare-and-sets of [`super::Tx::advance`] that units on different workers make at the
//! same time are gathered here and sent as one statement (`ADVANCE_MANY` in `postgres.rs`):
//! the first worker that finds no batch in flight takes every row waiting and runs them on
//! a connection of the pool, and the others wait for its answer (a leader and followers, as
//! in a group commit). A worker alone sends its row as before, in the single-row statement.
//!
//! One batch is in flight at a time per store: the rows that arrive meanwhile wait, and
//! leave together as the next. Measured in runs of `bench-verifier` (pool 16, 32 HTTP
//! connections), against pgbench's one-row updates on the same cluster in the same run: one
//! batch in flight, 0.98x and 0.99x; a second batch started once eight rows waited, 0.70x
//! to 0.91x; a batch for any row waiting, 0.45x with two in flight and 0.39x with four.
//! More batches in flight split the rows into statements too small to pay for themselves,
//! and PostgreSQL's own group commit already flushes the commits of several servers'
//! batches together.
//!
//! Nothing a verification relies on changes:
//! - each row keeps its own compare-and-set in the `WHERE` clause (a row that fails it is
//!   simply not moved, and its unit hears `false` as it would alone); a batch holds at most
//!   one row per token, so two racing verifications of one token are never in one statement
//!   and the second finds the row moved on;
//! - the statement is its own transaction, and every unit hears its answer only after that
//!   transaction committed (with `synchronous_commit` on, durably); one that did not hear
//!   the commit in time hears an error, never `accepted`;
//! - each moved row writes its own audit line in the same statement, and the events trigger
//!   fires for it as before;
//! - rows are locked in the order of their serials (the statement sorts them before the
//!   join), so that two batches of two servers do not wait on each other in a cycle; should
//!   a plan lock them in another order, PostgreSQL's deadlock detector fails one batch, and
//!   its rows run again one by one (below);
//! - if the batch fails as a whole (a user bound twice, a deadlock another statement caused,
//!   any error the server answered), its rows are run again one by one, so each unit hears
//!   its own answer ([`crate::store::StoreError::UserTaken`] for the second binding); only a
//!   connection that broke or stopped answering fails every row, as it would have failed
//!   each of them alone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::Thread;

use super::StoreError;
use super::pgclient::PgError;
use crate::seal::NONCE_LEN;
use crate::token::{Caller, KeyId, TokenId, UserId};

/// Rows in one statement at most (the rest wait for the next).
const MAX_ROWS: usize = 64;

/// What the row must still hold when the verification decided on a copy of it (see
/// `postgres.rs`, `ADVANCE_SEEN`).
pub(super) struct Seen {
    pub(super) next: i64,
    pub(super) drift: i64,
    pub(super) failures: i64,
    pub(super) failed_at: Option<i64>,
    pub(super) locked_at: Option<i64>,
    pub(super) user: Option<UserId>,
    pub(super) key_id: KeyId,
    pub(super) nonce: [u8; NONCE_LEN],
}

/// One compare-and-set with its audit line, as the parameters of `ADVANCE`/`ADVANCE_SEEN`.
pub(super) struct Row {
    pub(super) token: TokenId,
    pub(super) next: i64,
    pub(super) drift: i64,
    pub(super) lowest: i64,
    pub(super) max_failures: i64,
    pub(super) unlock: bool,
    pub(super) bind: Option<UserId>,
    pub(super) audit_user: Option<UserId>,
    pub(super) action: &'static str,
    pub(super) outcome: Cow<'static, str>,
    pub(super) at: i64,
    pub(super) caller: Caller,
    pub(super) seen: Option<Seen>,
}

/// How one row fared: moved (`true`) or not, or why it could not be run.
pub(super) type Answer = Result<bool, StoreError>;

/// The rows waiting, the answers not yet taken, and whether a batch is in flight.
#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Rows not yet in a batch, oldest first, with the worker waiting for each.
    waiting: Vec<(u64, Row, Thread)>,
    answers: HashMap<u64, Answer>,
    /// A batch is in flight.
    leading: bool,
}

impl State {
    /// Whether a worker should lead a batch of the rows waiting now.
    fn wants_leader(&self) -> bool {
        !self.leading && !self.waiting.is_empty()
    }
}

/// Gathers the rows of concurrent workers (one per store).
///
/// A waiting worker is woken once (`unpark`): when its answer is there, or to lead the next
/// batch. Not every waiter on each answer: the woken would then queue for the lock one by
/// one, on two cores a good part of a round trip.
#[derive(Default)]
pub(super) struct Batcher {
    state: Mutex<State>,
}

/// What a leader runs its batch with: a connection of the pool, behind the store's
/// statements.
pub(super) trait Runner {
    /// Runs one row in the single-row statement: how many rows it moved (0 or 1).
    fn one(&mut self, row: &Row) -> Result<bool, PgError>;
    /// Runs every row in one statement: the serials of the rows it moved.
    fn many(&mut self, rows: &[&Row]) -> Result<Vec<String>, PgError>;
    /// Whether the server answered `error` (so the statement was rolled back, and the rows
    /// may run again), rather than leaving its outcome unknown (no answer in time, a lost
    /// connection).
    fn usable(&self, error: &PgError) -> bool;
    /// The store's error for a row's failure (`UserTaken` for a second binding, ...).
    fn error(&self, row: &Row, error: PgError) -> StoreError;
    /// Gives back the connection the batch ran on, if it holds one.
    fn release(&mut self);
}

impl Batcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `row`, alone or with the rows of other workers, and answers once the statement
    /// that carried it has committed. `runner` runs the batch if this worker leads one.
    pub(super) fn advance(&self, runner: &mut dyn Runner, row: Row) -> Answer {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push((ticket, row, std::thread::current()));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if !state.wants_leader() {
                drop(state);
                // A connection kept from leading a batch is given back before waiting: a
                // waiting worker holding one could starve the next leader of one. Kept
                // while this worker leads again (measured: giving it back after every
                // batch instead cost about a tenth of the rate).
                runner.release();
                // Woken when the answer is there or a leader is wanted (or for nothing:
                // the state says which).
                std::thread::park();
                state = self.lock();
                continue;
            }
            state.leading = true;
            let (batch, workers) = take_batch(&mut state.waiting);
            drop(state);
            // A panic while running the batch (a bug) must not leave its rows without an
            // answer and the batcher without a leader: every worker would wait forever. The
            // rows hear an error (the outcome is unknown), and the panic goes on here.
            let tickets: Vec<u64> = workers.iter().map(|(t, _)| *t).collect();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(runner, batch)));
            let (mut answers, broken, panicked) = match ran {
                Ok((answers, broken)) => (answers, broken, None),
                Err(panic) => {
                    let error = StoreError::Database {
                        backend: "postgres",
                        reason: "the worker running this batch stopped; its outcome is unknown"
                            .to_owned(),
                    };
                    let answers = tickets.iter().map(|t| (*t, Err(error.clone()))).collect();
                    (answers, Some(error), Some(panic))
                }
            };
            // This worker's own answer, if its row was in the batch, is kept here rather
            // than passed through the map.
            let own = answers
                .iter()
                .position(|(t, _)| *t == ticket)
                .map(|i| answers.swap_remove(i).1);
            state = self.lock();
            state.leading = false;
            state.answers.extend(answers);
            if broken.is_some() {
                // This connection is gone: the rows still waiting are left to the other
                // workers, and this worker's own (if it was not in the batch) fails as it
                // would have on this connection.
                state.waiting.retain(|(t, _, _)| *t != ticket);
            }
            let next = state.wants_leader().then(|| state.waiting[0].2.clone());
            drop(state);
            // The next leader first, so that the next batch leaves while these hear theirs.
            if let Some(next) = next {
                next.unpark();
            }
            for (t, worker) in workers {
                if t != ticket {
                    worker.unpark();
                }
            }
            if let Some(panic) = panicked {
                std::panic::resume_unwind(panic);
            }
            if let Some(own) = own {
                return own;
            }
            if let Some(error) = broken {
                return Err(error);
            }
            state = self.lock();
        }
    }
}

/// Takes the rows of the next batch out of `waiting`, oldest first: at most [`MAX_ROWS`],
/// and at most one per token (a later row of the same token waits for the next batch, so
/// that it decides against the row the first one moved). Returns them, and the workers
/// waiting for them.
#[allow(clippy::type_complexity)]
fn take_batch(waiting: &mut Vec<(u64, Row, Thread)>) -> (Vec<(u64, Row)>, Vec<(u64, Thread)>) {
    let capacity = waiting.len().min(MAX_ROWS);
    let (mut batch, mut workers) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
    let mut left = Vec::new();
    for (ticket, row, worker) in waiting.drain(..) {
        let taken =
            batch.len() < MAX_ROWS && !batch.iter().any(|(_, r): &(u64, Row)| r.token == row.token);
        if taken {
            batch.push((ticket, row));
            workers.push((ticket, worker));
        } else {
            left.push((ticket, row, worker));
        }
    }
    *waiting = left;
    (batch, workers)
}

/// Runs a batch on `runner`: the answer for each ticket, and the error that broke the
/// connection if one did.
pub(super) fn run(
    runner: &mut dyn Runner,
    batch: Vec<(u64, Row)>,
) -> (Vec<(u64, Answer)>, Option<StoreError>) {
    if batch.len() > 1 {
        let rows: Vec<&Row> = batch.iter().map(|(_, r)| r).collect();
        match runner.many(&rows) {
            Ok(moved) => {
                let answers = batch
                    .iter()
                    .map(|(ticket, row)| {
                        (*ticket, Ok(moved.iter().any(|m| m == row.token.as_str())))
                    })
                    .collect();
                return (answers, None);
            }
            Err(e) if !runner.usable(&e) => {
                let error = runner.error(&batch[0].1, e);
                let answers = batch
                    .into_iter()
                    .map(|(ticket, _)| (ticket, Err(error.clone())))
                    .collect();
                return (answers, Some(error));
            }
            // Nothing of the statement was committed: each row again, alone.
            Err(_) => {}
        }
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut broken: Option<StoreError> = None;
    for (ticket, row) in batch {
        if let Some(e) = &broken {
            answers.push((ticket, Err(e.clone())));
            continue;
        }
        let answer = match runner.one(&row) {
            Ok(moved) => Ok(moved),
            Err(e) => {
                let usable = runner.usable(&e);
                let error = runner.error(&row, e);
                if !usable {
                    broken = Some(error.clone());
                }
                Err(error)
            }
        };
        answers.push((ticket, answer));
    }
    (answers, broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(token: &str) -> Row {
        Row {
            token: TokenId::new(token).unwrap(),
            next: 1,
            drift: 0,
            lowest: 0,
            max_failures: 3,
            unlock: false,
            bind: None,
            audit_user: None,
            action: "verify",
            outcome: Cow::Borrowed("accepted"),
            at: 0,
            caller: Caller::new("test").unwrap(),
            seen: None,
        }
    }

    #[test]
    fn a_batch_holds_one_row_per_token_and_keeps_the_rest_in_order() {
        let me = std::thread::current();
        let mut waiting: Vec<(u64, Row, Thread)> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64, row(t), me.clone()))
            .collect();
        let (batch, workers) = take_batch(&mut waiting);
        let tickets: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
        assert_eq!(tickets, [0, 1, 3]);
        assert_eq!(workers.iter().map(|(t, _)| *t).collect::<Vec<_>>(), tickets);
        let left: Vec<u64> = waiting.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(left, [2, 4, 5]);
        let (batch, _) = take_batch(&mut waiting);
        assert_eq!(batch.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(waiting.iter().map(|(t, _, _)| *t).collect::<Vec<_>>(), [5]);
    }

    /// A connection that answers as told, and records what it was sent.
    #[derive(Default)]
    struct Fake {
        /// `many` fails (with an error `usable` calls usable or not).
        many_fails: Option<bool>,
        /// `one` fails for this serial, breaking the connection or not.
        one_fails: Option<(&'static str, bool)>,
        /// Rows `many` moves: all but these.
        refused: Vec<&'static str>,
        sent: Vec<Vec<String>>,
        usable: bool,
    }

    impl Runner for Fake {
        fn one(&mut self, row: &Row) -> Result<bool, PgError> {
            self.sent.push(vec![row.token.to_string()]);
            match self.one_fails {
                Some((t, usable)) if t == row.token.as_str() => {
                    self.usable = usable;
                    Err(PgError::Deadline(std::time::Duration::ZERO))
                }
                _ => Ok(!self.refused.contains(&row.token.as_str())),
            }
        }

        fn many(&mut self, rows: &[&Row]) -> Result<Vec<String>, PgError> {
            self.sent
                .push(rows.iter().map(|r| r.token.to_string()).collect());
            if let Some(usable) = self.many_fails {
                self.usable = usable;
                return Err(PgError::Deadline(std::time::Duration::ZERO));
            }
            Ok(rows
                .iter()
                .map(|r| r.token.to_string())
                .filter(|t| !self.refused.contains(&t.as_str()))
                .collect())
        }

        fn usable(&self, _: &PgError) -> bool {
            self.usable
        }

        fn error(&self, row: &Row, _: PgError) -> StoreError {
            StoreError::Database {
                backend: "postgres",
                reason: format!("failed at {}", row.token),
            }
        }

        fn release(&mut self) {}
    }

    fn batch(tokens: &[&str]) -> Vec<(u64, Row)> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64, row(t)))
            .collect()
    }

    #[test]
    fn a_batch_answers_each_row_by_whether_the_statement_moved_it() {
        let mut fake = Fake {
            refused: vec!["b"],
            ..Fake::default()
        };
        let (answers, broken) = run(&mut fake, batch(&["a", "b", "c"]));
        assert_eq!(answers, [(0, Ok(true)), (1, Ok(false)), (2, Ok(true))]);
        assert_eq!(broken, None);
        assert_eq!(fake.sent, [["a", "b", "c"]]);
    }

    #[test]
    fn a_batch_that_fails_is_run_again_row_by_row() {
        let mut fake = Fake {
            many_fails: Some(true),
            one_fails: Some(("b", true)),
            refused: vec!["c"],
            ..Fake::default()
        };
        let (answers, broken) = run(&mut fake, batch(&["a", "b", "c"]));
        let failed = Err(StoreError::Database {
            backend: "postgres",
            reason: "failed at b".to_owned(),
        });
        assert_eq!(answers, [(0, Ok(true)), (1, failed), (2, Ok(false))]);
        assert_eq!(broken, None);
        assert_eq!(
            fake.sent,
            [vec!["a", "b", "c"], vec!["a"], vec!["b"], vec!["c"]]
        );
    }

    #[test]
    fn a_broken_connection_fails_every_row_it_had_not_run() {
        let mut fake = Fake {
            many_fails: Some(false),
            ..Fake::default()
        };
        let (answers, broken) = run(&mut fake, batch(&["a", "b"]));
        assert!(answers.iter().all(|(_, a)| a.is_err()), "{answers:?}");
        assert!(broken.is_some());
        assert_eq!(fake.sent.len(), 1, "nothing more is sent on it");

        // The batch failed, and the connection broke on the first row run again alone.
        let mut fake = Fake {
            many_fails: Some(true),
            one_fails: Some(("a", false)),
            ..Fake::default()
        };
        let (answers, broken) = run(&mut fake, batch(&["a", "b"]));
        assert!(answers.iter().all(|(_, a)| a.is_err()), "{answers:?}");
        assert!(broken.is_some());
        assert_eq!(fake.sent, [vec!["a", "b"], vec!["a"]]);
    }

    /// Workers at once: each hears its own row's answer, and rows travel together.
    #[test]
    fn concurrent_rows_share_statements_and_each_hears_its_own_answer() {
        struct Slow<'a>(&'a Mutex<Vec<usize>>);
        impl Runner for Slow<'_> {
            fn one(&mut self, row: &Row) -> Result<bool, PgError> {
                self.many(&[row]).map(|moved| !moved.is_empty())
            }
            fn many(&mut self, rows: &[&Row]) -> Result<Vec<String>, PgError> {
                // A round trip's worth of time, for the others to queue behind it.
                std::thread::sleep(std::time::Duration::from_millis(1));
                self.0.lock().unwrap().push(rows.len());
                // Tokens whose name ends in an odd digit are not moved.
                Ok(rows
                    .iter()
                    .map(|r| r.token.to_string())
                    .filter(|t| t.ends_with(['0', '2', '4', '6', '8']))
                    .collect())
            }
            fn usable(&self, _: &PgError) -> bool {
                true
            }
            fn error(&self, _: &Row, _: PgError) -> StoreError {
                StoreError::Stale
            }
            fn release(&mut self) {}
        }
        let batcher = Batcher::default();
        let sizes = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for worker in 0..16 {
                let (batcher, sizes) = (&batcher, &sizes);
                scope.spawn(move || {
                    let mut runner = Slow(sizes);
                    for i in 0..40 {
                        let token = format!("w{worker}-{i}");
                        let moved = i % 2 == 0;
                        assert_eq!(batcher.advance(&mut runner, row(&token)), Ok(moved));
                    }
                });
            }
        });
        let sizes = sizes.into_inner().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 16 * 40, "every row sent once");
        assert!(sizes.iter().any(|&n| n > 1), "{sizes:?}");
        let state = batcher.lock();
        assert!(state.waiting.is_empty() && state.answers.is_empty());
        assert!(!state.leading);
    }

    /// Rows of a few tokens from many workers, so that leaders' own rows are often left for
    /// a later batch and they wait again, on a pool of one connection: a worker that waits
    /// must have given its connection back, or the next leader never gets one.
    #[test]
    fn a_worker_that_waits_again_holds_no_connection() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Counted<'a> {
            /// The pool's one connection is out.
            taken: &'a AtomicBool,
            holding: bool,
        }
        impl Counted<'_> {
            fn take(&mut self) {
                let started = std::time::Instant::now();
                while !self.holding {
                    if !self.taken.swap(true, Ordering::SeqCst) {
                        self.holding = true;
                    } else if started.elapsed() > std::time::Duration::from_secs(20) {
                        panic!("a leader waited 20 s for the pool's one connection");
                    } else {
                        std::thread::yield_now();
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        }
        impl Runner for Counted<'_> {
            fn one(&mut self, _: &Row) -> Result<bool, PgError> {
                self.take();
                Ok(true)
            }
            fn many(&mut self, rows: &[&Row]) -> Result<Vec<String>, PgError> {
                self.take();
                Ok(rows.iter().map(|r| r.token.to_string()).collect())
            }
            fn usable(&self, _: &PgError) -> bool {
                true
            }
            fn error(&self, _: &Row, _: PgError) -> StoreError {
                StoreError::Stale
            }
            fn release(&mut self) {
                if self.holding {
                    self.holding = false;
                    self.taken.store(false, Ordering::SeqCst);
                }
            }
        }
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.release();
            }
        }
        let batcher = Batcher::default();
        let taken = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for worker in 0..16 {
                let (batcher, taken) = (&batcher, &taken);
                scope.spawn(move || {
                    for i in 0..30 {
                        let mut runner = Counted {
                            taken,
                            holding: false,
                        };
                        let token = format!("t{}", (worker + i) % 3);
                        assert_eq!(batcher.advance(&mut runner, row(&token)), Ok(true));
                    }
                });
            }
        });
        assert!(!taken.load(Ordering::SeqCst));
    }

    /// A leader that panics (a bug) while its batch runs: the workers whose rows it carried
    /// hear an error, none waits forever, the panic reaches the leader's caller, and the
    /// next rows run as usual.
    #[test]
    fn a_leader_that_panics_leaves_no_worker_waiting() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Panicky<'a>(&'a AtomicBool);
        impl Runner for Panicky<'_> {
            fn one(&mut self, row: &Row) -> Result<bool, PgError> {
                self.many(&[row]).map(|moved| !moved.is_empty())
            }
            fn many(&mut self, rows: &[&Row]) -> Result<Vec<String>, PgError> {
                if self.0.swap(false, Ordering::SeqCst) {
                    // Long enough for the others to queue behind this batch.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    panic!("a bug in the batch");
                }
                Ok(rows.iter().map(|r| r.token.to_string()).collect())
            }
            fn usable(&self, _: &PgError) -> bool {
                true
            }
            fn error(&self, _: &Row, _: PgError) -> StoreError {
                StoreError::Stale
            }
            fn release(&mut self) {}
        }
        let batcher = Batcher::default();
        let armed = AtomicBool::new(true);
        let results: Vec<std::thread::Result<Answer>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (batcher, armed) = (&batcher, &armed);
                    scope.spawn(move || {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            batcher.advance(&mut Panicky(armed), row(&format!("p{i}")))
                        }))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|r| r.is_err()).count(),
            1,
            "one leader panicked"
        );
        for result in results.iter().flatten() {
            match result {
                Ok(true) | Err(StoreError::Database { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            batcher.advance(&mut Panicky(&armed), row("after")),
            Ok(true)
        );
        let state = batcher.lock();
        assert!(state.waiting.is_empty() && state.answers.is_empty() && !state.leading);
    }

    #[test]
    fn a_batch_is_at_most_max_rows() {
        let me = std::thread::current();
        let mut waiting: Vec<(u64, Row, Thread)> = (0..MAX_ROWS as u64 + 5)
            .map(|i| (i, row(&format!("t{i}")), me.clone()))
            .collect();
        assert_eq!(take_batch(&mut waiting).0.len(), MAX_ROWS);
        assert_eq!(waiting.len(), 5);
    }
}
