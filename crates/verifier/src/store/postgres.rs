//! The shared store: PostgreSQL, for several verifier servers on one database.
//!
//! Every state change is a single SQL statement (a data-modifying CTE updates the token and
//! appends the audit line together), so it is atomic without an explicit transaction and
//! costs one round trip. Under READ COMMITTED, a second concurrent `UPDATE` of the same row
//! waits for the first to commit and then re-checks its `WHERE` clause against the new row:
//! with the same code, exactly one wins. A unit of work is therefore a sequence of committed
//! statements on one connection, and hears `Ok` once it has run.
//!
//! An accepted verification is one round trip: the store keeps a copy of every token row it
//! last read or wrote (`Copies`), the verifier decides on that copy ([`Tx::token_seen`];
//! the HMAC is computed here, never in SQL), and the statement that accepts also requires
//! the row to equal the copy. A copy another server has outdated costs one retry on a fresh
//! read ([`StoreError::Stale`]), never a wrong decision; any other write on a decision from
//! an unconfirmed copy is refused before it is sent. The durable commit, the audit line, and
//! the events trigger are those of the statement, as before.
//!
//! The events trigger's advisory lock (`postgres_events.rs`) stays: only audit lines that
//! are events take it (locks, activations, enrolments...), never a plain verification, and
//! it is what lets a consumer trust that no smaller event id commits after one it has seen.
//!
//! Each connection runs its calls on a runtime of its own and blocks its caller, every call
//! under a deadline (`pgclient.rs`: a primary that hangs holds no call longer than that, and
//! the hosts of a multi-host address are tried in turn). Connections come from a small pool
//! (with their prepared statements). Reads borrow one on the caller's thread; units of work
//! ([`Store::submit`]) are queued for worker threads of the store, started when work waits
//! and none is idle, so that submitting never blocks the caller (an async server's own
//! threads) on the database. A unit holds a connection only while it runs statements, not
//! while it waits for the batch that carries its accepted verification (`pg_batch.rs`), so
//! there are [`WORKERS_PER_CONNECTION`] workers per connection: the units waiting on one
//! batch are what makes it large.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use codereader_otp::UnixTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, Statement};

use super::pg_batch::{self, Batcher, Runner};
use super::pgclient::{Hosts, PgClient, PgError};
use super::postgres_events;
use super::sql::{
    AuditColumns, RawToken, TOKEN_COLUMNS, TokenColumns, audit_entry, audit_event, saturating_i64,
    to_i64,
};
use super::{
    Advance, AuditEntry, AuditEvent, Claim, DeadLetter, Delivery, Event, NewToken, Reads, Store,
    StoreError, TokenRecord, Tx, Work,
};
use crate::seal::SealedSeed;
use crate::token::{ClientId, KeyId, TokenId, UserId};

/// Migrations, applied in order inside one transaction under an advisory lock (several
/// servers may start at once); `codereader_schema.version` says how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: tokens and the audit trail.
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('totp', 'hotp')),
        algorithm TEXT NOT NULL,
        digits BIGINT NOT NULL,
        period BIGINT NOT NULL,
        t0 BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        nonce BYTEA NOT NULL,
        sealed BYTEA NOT NULL,
        next_value BIGINT NOT NULL,
        drift BIGINT NOT NULL DEFAULT 0,
        failures BIGINT NOT NULL DEFAULT 0,
        last_failure_at BIGINT,
        locked_at BIGINT,
        enabled BOOLEAN NOT NULL DEFAULT TRUE
     );
     CREATE TABLE audit (
        seq BIGSERIAL PRIMARY KEY,
        token_id TEXT,
        user_id TEXT,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        at BIGINT NOT NULL,
        caller TEXT NOT NULL
     );
     CREATE INDEX audit_by_token ON audit (token_id, seq);",
    // 2: the outbox of events and their delivery (postgres_events.rs).
    super::postgres_events::MIGRATION,
];

/// An arbitrary constant naming the migration advisory lock.
const MIGRATION_LOCK: i64 = 0x636f_6465_7265_6164;

/// A driver or server error as the store reports it: with the SQLSTATE and the server's
/// message (see [`PgError`]'s `Display`), never a bare "db error".
pub(super) fn db(e: impl Into<PgError>) -> StoreError {
    StoreError::Database {
        backend: "postgres",
        reason: e.into().to_string(),
    }
}

fn is_unique_violation(e: &PgError) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A client with the statements it has prepared.
struct Conn {
    client: PgClient,
    /// By the address and length of the statement's text: every text here is a `&'static
    /// str`, so the pair names one text, and comparing it instead of a kilobyte of SQL saves
    /// thousands of instructions per call (one text at two addresses is prepared twice). A
    /// list, not a map: a connection prepares a dozen texts at most, and comparing two words
    /// each costs less than hashing one key.
    statements: Vec<((usize, usize), Statement)>,
}

impl Conn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, PgError> {
        let key = (sql.as_ptr() as usize, sql.len());
        if let Some((_, s)) = self.statements.iter().find(|(k, _)| *k == key) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.push((key, s.clone()));
        Ok(s)
    }
}

/// Worker threads of a [`PgStore`] per connection of its pool. A worker waiting for a batch
/// holds no connection. Measured on `bench-verifier` (32 HTTP connections, pool 16, one
/// run): with one worker per connection, at most 16 verifications can wait for a batch,
/// and the rate was 0.73x pgbench's; with four, 0.99x.
pub const WORKERS_PER_CONNECTION: usize = 4;

/// Connections a [`PgStore`] opens at most, unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// How long a [`PgStore`] waits for any one answer of the database (a statement, or a
/// connection to one host), unless told otherwise: far longer than a healthy commit takes,
/// shorter than a client waits.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Copies of token rows this process last read or wrote, by serial, at most this many (the
/// map is emptied when full: a copy only saves a round trip, never decides anything).
const MAX_COPIES: usize = 65_536;

/// Token rows as this process last saw them ([`Tx::token_seen`]), so that a verification
/// decides without reading the row first and checks, in its one statement, that the row is
/// still exactly what it decided on. Another server's change is found there and costs one
/// retry on a fresh read; no copy is ever trusted with a write.
#[derive(Default)]
struct Copies {
    rows: Mutex<HashMap<TokenId, Arc<TokenRecord>>>,
}

impl Copies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenId, Arc<TokenRecord>>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &TokenId) -> Option<Arc<TokenRecord>> {
        self.lock().get(id).cloned()
    }

    fn put(&self, record: Arc<TokenRecord>) {
        let mut rows = self.lock();
        if rows.len() >= MAX_COPIES && !rows.contains_key(&record.id) {
            rows.clear();
        }
        rows.insert(record.id.clone(), record);
    }

    fn forget(&self, id: &TokenId) {
        self.lock().remove(id);
    }
}

/// The pool: idle connections and how many exist in all.
struct Pool {
    idle: Vec<Conn>,
    open: usize,
    /// Callers waiting for a connection to come back: only then does returning one wake
    /// anybody (a wake with nobody waiting is still a system call, on every verification).
    waiting: usize,
}

/// Token state in a PostgreSQL database.
///
/// Holds at most `max_connections` connections; callers beyond that wait for one to come
/// back, so a busy server cannot exhaust the database's connection slots. Submitted work
/// runs on up to [`WORKERS_PER_CONNECTION`] times as many worker threads of the store.
pub struct PgStore {
    pool: Arc<PgPool>,
    queue: Arc<WorkQueue>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The connections, shared by the store and its workers.
struct PgPool {
    config: Config,
    hosts: Hosts,
    pool: Mutex<Pool>,
    returned: Condvar,
    max_connections: usize,
    copies: Copies,
    /// Accepted verifications of concurrent units, gathered into one statement.
    batcher: Batcher,
}

/// Work waiting for a worker.
struct WorkQueue {
    state: Mutex<Queued>,
    ready: Condvar,
}

struct Queued {
    work: VecDeque<Box<dyn Work>>,
    /// Workers started and not ended.
    workers: usize,
    /// Workers waiting for work.
    idle: usize,
    /// The store is gone: workers end once the queue is empty.
    closed: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold a password: show only where it points.
        f.debug_struct("PgStore")
            .field("hosts", &self.pool.config.get_hosts())
            .field("dbname", &self.pool.config.get_dbname())
            .field("max_connections", &self.pool.max_connections)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, or a `key=value` string such as
    /// `host=/run/postgresql dbname=codereader`) with at most [`DEFAULT_MAX_CONNECTIONS`]
    /// connections, and runs any pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::SchemaTooNew`].
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS)
    }

    /// As [`PgStore::connect`], with at most `max_connections` (at least 1) connections and
    /// [`WORKERS_PER_CONNECTION`] times as many worker threads.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::SchemaTooNew`].
    pub fn connect_with(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        Self::connect_with_deadline(url, max_connections, DEFAULT_DEADLINE)
    }

    /// As [`PgStore::connect_with`], waiting at most `deadline` for any one answer of the
    /// database: a statement, or a connection to one host of the address.
    ///
    /// A call that gets no answer in time fails ([`StoreError::Database`]) and its connection
    /// is dropped, never reused; the next connection tries the address's other hosts first.
    /// So a primary that hangs (frozen, stalled, behind a network black hole) holds each
    /// call for at most `deadline`, and once a standby is promoted the calls go there. What
    /// the abandoned call may still do on the old server is never reported as done: with
    /// synchronous replication its commit cannot complete without the standby that has since
    /// become the primary, and a verification that did not hear its commit in time answers
    /// an error, not `accepted`.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::SchemaTooNew`].
    pub fn connect_with_deadline(
        url: &str,
        max_connections: usize,
        deadline: Duration,
    ) -> Result<Self, StoreError> {
        let config = Config::from_str(url).map_err(db)?;
        let deadline = deadline.max(Duration::from_millis(1));
        let pool = PgPool {
            hosts: Hosts::new(&config, deadline),
            config,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 1,
                waiting: 0,
            }),
            returned: Condvar::new(),
            max_connections: max_connections.max(1),
            copies: Copies::default(),
            batcher: Batcher::default(),
        };
        let mut conn = pool.open()?;
        migrate(&mut conn.client)?;
        pool.give_back(Some(conn));
        Ok(PgStore {
            pool: Arc::new(pool),
            queue: Arc::new(WorkQueue {
                state: Mutex::new(Queued {
                    work: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    closed: false,
                }),
                ready: Condvar::new(),
            }),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Starts one more worker; on failure, and if no worker is left to run the queue, tells
    /// the waiting work why.
    fn start_worker(&self) {
        let (pool, queue) = (Arc::clone(&self.pool), Arc::clone(&self.queue));
        let started = std::thread::Builder::new()
            .name("pg-worker".to_owned())
            .spawn(move || {
                while let Some(work) = queue.next() {
                    pool.run(work);
                }
            });
        match started {
            Ok(thread) => self
                .workers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(thread),
            Err(e) => {
                let mut state = self.queue.lock();
                state.workers -= 1;
                if state.workers > 0 {
                    return;
                }
                let stranded: Vec<_> = state.work.drain(..).collect();
                drop(state);
                for work in stranded {
                    work.finish(Err(StoreError::Database {
                        backend: "postgres",
                        reason: format!("cannot start a worker thread: {e}"),
                    }));
                }
            }
        }
    }
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next unit of work, waiting for one; `None` once the store is gone and the queue
    /// is empty (the worker then ends).
    fn next(&self) -> Option<Box<dyn Work>> {
        let mut state = self.lock();
        loop {
            if let Some(work) = state.work.pop_front() {
                return Some(work);
            }
            if state.closed {
                state.workers -= 1;
                return None;
            }
            state.idle += 1;
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
    }
}

impl PgPool {
    fn open(&self) -> Result<Conn, StoreError> {
        Ok(Conn {
            client: self.hosts.connect().map_err(db)?,
            statements: Vec::new(),
        })
    }

    /// Returns a connection to the pool, or `None` for one that was dropped (broken).
    fn give_back(&self, conn: Option<Conn>) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        match conn {
            Some(c) if !c.client.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        let wake = pool.waiting > 0;
        drop(pool);
        if wake {
            self.returned.notify_one();
        }
    }

    /// Takes an idle connection, or the right to open one, waiting if all are in use.
    fn take(&self) -> Option<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = pool.idle.pop() {
                return Some(c);
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                return None;
            }
            pool.waiting += 1;
            pool = self
                .returned
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
            pool.waiting -= 1;
        }
    }

    /// A pooled connection: an idle one, else a new one if fewer than `max_connections`
    /// are open, else the next one given back.
    fn acquire(&self) -> Result<Conn, PgError> {
        if let Some(c) = self.take() {
            return Ok(c);
        }
        match self.hosts.connect() {
            Ok(client) => Ok(Conn {
                client,
                statements: Vec::new(),
            }),
            Err(e) => {
                self.give_back(None);
                Err(e)
            }
        }
    }

    /// Runs `f` with a view on the pool, which takes a connection when its first statement
    /// runs and gives it back when `f` returns (or when it waits for a batch, see
    /// [`Tx::advance`]).
    fn with<T>(&self, f: impl FnOnce(&PgConn<'_>) -> T) -> Result<T, StoreError> {
        let view = PgConn {
            pool: self,
            conn: RefCell::new(None),
            basis: RefCell::new(None),
        };
        let result = f(&view);
        view.release();
        Ok(result)
    }

    /// Runs a unit of work on a worker: its statements commit one by one, so it is committed
    /// once it has run.
    fn run(&self, mut work: Box<dyn Work>) {
        match self.with(|view| work.run(view)) {
            Ok(()) => work.finish(Ok(())),
            Err(e) => work.finish(Err(e)),
        }
    }
}

impl Drop for PgStore {
    /// Lets the workers finish the queued work and end, then waits for them (unless this is
    /// one of them: work may hold what holds the store, and a thread cannot wait for itself).
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
        let workers = std::mem::take(
            self.workers
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for worker in workers {
            if worker.thread().id() != std::thread::current().id() {
                let _ = worker.join();
            }
        }
    }
}

impl Drop for PgPool {
    /// Closes the pooled connections on a thread of their own. A connection is closed by
    /// dropping the runtime of its own it runs on, which panics ("Cannot drop a runtime in
    /// a context where blocking is not allowed") on a thread that runs an async runtime
    /// (so did the blocking driver used before, on its goodbye), and the last
    /// handle on a store shared by an async server may well go on such a thread while that
    /// server shuts down; a panic there aborted the process. A new thread never runs one.
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(PoisonError::into_inner);
        let idle = std::mem::take(&mut pool.idle);
        if idle.is_empty() {
            return;
        }
        let slot = std::sync::Arc::new(Mutex::new(Some(idle)));
        let theirs = slot.clone();
        let closer = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || {
                let idle = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(idle);
            });
        match closer {
            Ok(thread) => {
                // Closed before the store is gone, as callers expect of a drop.
                let _ = thread.join();
            }
            Err(_) => {
                // No thread to close them on: leave the sockets to the operating system
                // rather than risk the panic (the process is most likely exiting).
                let idle = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                std::mem::forget(idle);
            }
        }
    }
}

fn migrate(client: &mut PgClient) -> Result<(), StoreError> {
    // On an error the connection is dropped, and the server rolls the transaction back.
    client.batch_execute("BEGIN").map_err(db)?;
    let tx = client;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS codereader_schema (version BIGINT NOT NULL)")
        .map_err(db)?;
    let version: i64 = tx
        .query_opt("SELECT version FROM codereader_schema", &[])
        .map_err(db)?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(sql).map_err(db)?;
    }
    // The per-client failure budgets every server shares: one row per client that failed
    // lately, the millisecond its budget is whole again. Throw-away state, so UNLOGGED (no
    // WAL, no fsync; emptied by a crash, and not on standbys: a failover forgets the
    // budgets, never a token's own failures and lock) and outside the numbered migrations.
    tx.batch_execute(
        "CREATE UNLOGGED TABLE IF NOT EXISTS client_budgets (
            client TEXT PRIMARY KEY,
            full_at BIGINT NOT NULL
         )",
    )
    .map_err(db)?;
    tx.execute("DELETE FROM codereader_schema", &[])
        .map_err(db)?;
    tx.execute(
        "INSERT INTO codereader_schema (version) VALUES ($1)",
        &[&known],
    )
    .map_err(db)?;
    tx.batch_execute("COMMIT").map_err(db)
}

fn raw_token(row: &postgres::Row) -> Result<RawToken, StoreError> {
    let get = |e: tokio_postgres::Error| db(e);
    Ok(RawToken {
        id: row.try_get(0).map_err(get)?,
        user: row.try_get(1).map_err(get)?,
        kind: row.try_get(2).map_err(get)?,
        algorithm: row.try_get(3).map_err(get)?,
        digits: row.try_get(4).map_err(get)?,
        period: row.try_get(5).map_err(get)?,
        t0: row.try_get(6).map_err(get)?,
        key_id: row.try_get(7).map_err(get)?,
        nonce: row.try_get(8).map_err(get)?,
        sealed: row.try_get(9).map_err(get)?,
        next: row.try_get(10).map_err(get)?,
        drift: row.try_get(11).map_err(get)?,
        failures: row.try_get(12).map_err(get)?,
        last_failure_at: row.try_get(13).map_err(get)?,
        locked_at: row.try_get(14).map_err(get)?,
        enabled: row.try_get(15).map_err(get)?,
    })
}

/// An audit row selected as `seq, token_id, user_id, action, outcome, at, caller`.
fn pg_audit_entry(r: &postgres::Row) -> Result<AuditEntry, StoreError> {
    audit_entry(
        r.try_get(0).map_err(db)?,
        (
            r.try_get(1).map_err(db)?,
            r.try_get(2).map_err(db)?,
            r.try_get(3).map_err(db)?,
            r.try_get(4).map_err(db)?,
            r.try_get(5).map_err(db)?,
            r.try_get(6).map_err(db)?,
        ),
    )
}

const SELECT_BY_ID: &str = "SELECT id, user_id, kind, algorithm, digits, period, t0, key_id, \
     nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled \
     FROM tokens WHERE id = $1";
const SELECT_BY_USER: &str = "SELECT id, user_id, kind, algorithm, digits, period, t0, key_id, \
     nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled \
     FROM tokens WHERE user_id = $1";

/// After a batch insert hit a unique violation: which token was it (one already stored, or
/// one given twice)?
fn duplicate_among(client: &mut PgClient, tokens: &[NewToken]) -> StoreError {
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = tokens.iter().find(|t| !seen.insert(&t.id)) {
        return StoreError::Duplicate {
            token: t.id.clone(),
        };
    }
    let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
    let existing = client
        .query_opt(
            "SELECT id FROM tokens WHERE id = ANY($1) ORDER BY id LIMIT 1",
            &[&ids],
        )
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<_, String>(0).ok());
    match existing.and_then(|id| tokens.iter().find(|t| t.id.as_str() == id)) {
        Some(t) => StoreError::Duplicate {
            token: t.id.clone(),
        },
        None => StoreError::Database {
            backend: "postgres",
            reason: "unique violation on insert".to_owned(),
        },
    }
}

/// The operations of one unit of work (outside any transaction but
/// [`Tx::insert_tokens`]'s own), each a statement on a pooled connection.
struct PgConn<'c> {
    pool: &'c PgPool,
    /// The connection the unit holds, taken at its first statement. Every statement
    /// commits by itself, so the unit may give it back between two (it does so to wait for
    /// a batch) and take another.
    conn: RefCell<Option<Conn>>,
    /// The token row the unit of work last read, and whether it came from the database
    /// (`true`) or from a copy not yet confirmed by a write (`false`).
    basis: RefCell<Option<(Arc<TokenRecord>, bool)>>,
}

impl PgConn<'_> {
    /// Runs `f` on the unit's connection, taking one if it holds none. A connection on
    /// which a statement failed is closed rather than reused, in case it is left inside a
    /// transaction; the next statement takes another.
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // Operations do not call each other, so the connection is never borrowed twice.
        let mut slot = self.conn.borrow_mut();
        let conn = match &mut *slot {
            Some(conn) => conn,
            None => slot.insert(self.pool.acquire().map_err(db)?),
        };
        let result = f(conn);
        if result.is_err() {
            drop(slot.take());
            self.pool.give_back(None);
        }
        result
    }

    /// Gives the unit's connection, if it holds one, back to the pool.
    fn release(&self) {
        if let Some(conn) = self.conn.borrow_mut().take() {
            self.pool.give_back(Some(conn));
        }
    }

    /// A row just read from the database: the basis of what follows, and the copy to decide
    /// on next time.
    fn read_fresh(&self, record: Option<TokenRecord>, id: Option<&TokenId>) -> Option<TokenRecord> {
        match &record {
            Some(r) => {
                let r = Arc::new(r.clone());
                self.pool.copies.put(Arc::clone(&r));
                *self.basis.borrow_mut() = Some((r, true));
            }
            None => {
                if let Some(id) = id {
                    self.pool.copies.forget(id);
                }
                *self.basis.borrow_mut() = None;
            }
        }
        record
    }

    /// Before a write other than [`Tx::advance`]: refuses it ([`StoreError::Stale`], nothing
    /// written) if the unit decided on an unconfirmed copy, and forgets `token`'s copy, which
    /// the write may change.
    fn before_write(&self, token: Option<&TokenId>) -> Result<(), StoreError> {
        let mut basis = self.basis.borrow_mut();
        if let Some((copy, false)) = &*basis {
            self.pool.copies.forget(&copy.id);
            *basis = None;
            return Err(StoreError::Stale);
        }
        if let Some(token) = token {
            self.pool.copies.forget(token);
            if basis.as_ref().is_some_and(|(b, _)| b.id == *token) {
                *basis = None;
            }
        }
        Ok(())
    }
}

/// `record` after `advance` applied to it.
fn advanced(record: &TokenRecord, advance: &Advance) -> TokenRecord {
    let mut r = record.clone();
    r.state.next = advance.accepted.saturating_add(1);
    r.state.drift = advance.drift;
    r.state.failures = 0;
    r.state.last_failure_at = None;
    if advance.unlock {
        r.state.locked_at = None;
    }
    if let Some(user) = &advance.bind {
        r.user = Some(user.clone());
    }
    r
}

/// The compare-and-set of [`Tx::advance`] (`$1`..`$12`), and the audit line it appends.
const ADVANCE: &str = "WITH moved AS (
        UPDATE tokens
           SET next_value = $2, drift = $3, failures = 0, last_failure_at = NULL,
               locked_at = CASE WHEN $6 THEN NULL ELSE locked_at END,
               user_id = COALESCE($7, user_id)
         WHERE id = $1 AND enabled AND next_value <= $4
           AND ($6 OR (locked_at IS NULL AND failures < $5))
           AND ($7::TEXT IS NULL OR user_id IS NULL)
     RETURNING id)
     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
     SELECT id, $8::TEXT, $9::TEXT, $10::TEXT, $11::BIGINT, $12::TEXT FROM moved";

/// [`ADVANCE`] decided on a copy of the row: applies only if the row is still that copy
/// (`$13`..`$20`: its state, its user and its seal, whose random nonce names the seed and
/// so the token's parameters, which change only with a new seal). One statement, so an
/// accepted verification is one round trip.
const ADVANCE_SEEN: &str = "WITH moved AS (
        UPDATE tokens
           SET next_value = $2, drift = $3, failures = 0, last_failure_at = NULL,
               locked_at = CASE WHEN $6 THEN NULL ELSE locked_at END,
               user_id = COALESCE($7, user_id)
         WHERE id = $1 AND enabled AND next_value <= $4
           AND ($6 OR (locked_at IS NULL AND failures < $5))
           AND ($7::TEXT IS NULL OR user_id IS NULL)
           AND next_value = $13 AND drift = $14 AND failures = $15
           AND last_failure_at IS NOT DISTINCT FROM $16::BIGINT
           AND locked_at IS NOT DISTINCT FROM $17::BIGINT
           AND user_id IS NOT DISTINCT FROM $18::TEXT
           AND key_id = $19 AND nonce = $20
     RETURNING id)
     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
     SELECT id, $8::TEXT, $9::TEXT, $10::TEXT, $11::BIGINT, $12::TEXT FROM moved";

/// [`ADVANCE`] for the rows of several units at once (see `pg_batch.rs`): one array per
/// parameter, unnested into rows sorted by serial, so the join locks the tokens in that
/// order. `$13` says whether the row was decided on a copy, whose columns (`$14`..`$21`)
/// the row must then still hold, as in [`ADVANCE_SEEN`]. Answers the serial of every token
/// it moved.
const ADVANCE_MANY: &str = "WITH v AS (
        SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                             $5::BIGINT[], $6::BOOL[], $7::TEXT[], $8::TEXT[], $9::TEXT[],
                             $10::TEXT[], $11::BIGINT[], $12::TEXT[], $13::BOOL[],
                             $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[],
                             $18::BIGINT[], $19::TEXT[], $20::TEXT[], $21::BYTEA[])
            AS v(id, next, drift, lowest, max_failures, unlock, bind, a_user, a_action,
                 a_outcome, a_at, a_caller, seen, s_next, s_drift, s_failures,
                 s_failed_at, s_locked_at, s_user, s_key, s_nonce)
         ORDER BY id),
     moved AS (
        UPDATE tokens t
           SET next_value = v.next, drift = v.drift, failures = 0, last_failure_at = NULL,
               locked_at = CASE WHEN v.unlock THEN NULL ELSE t.locked_at END,
               user_id = COALESCE(v.bind, t.user_id)
          FROM v
         WHERE t.id = v.id AND t.enabled AND t.next_value <= v.lowest
           AND (v.unlock OR (t.locked_at IS NULL AND t.failures < v.max_failures))
           AND (v.bind IS NULL OR t.user_id IS NULL)
           AND (NOT v.seen OR (
                   t.next_value = v.s_next AND t.drift = v.s_drift
               AND t.failures = v.s_failures
               AND t.last_failure_at IS NOT DISTINCT FROM v.s_failed_at
               AND t.locked_at IS NOT DISTINCT FROM v.s_locked_at
               AND t.user_id IS NOT DISTINCT FROM v.s_user
               AND t.key_id = v.s_key AND t.nonce = v.s_nonce))
     RETURNING t.id)
     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
     SELECT v.id, v.a_user, v.a_action, v.a_outcome, v.a_at, v.a_caller
       FROM v JOIN moved ON moved.id = v.id
     RETURNING token_id";

/// The row [`Tx::advance`] writes: `advance`, its audit line, and `copy`, the copy of the
/// token row it was decided on, if it was.
fn advance_row(
    advance: &Advance,
    audit: &AuditEvent,
    copy: Option<&TokenRecord>,
) -> Result<pg_batch::Row, StoreError> {
    let time = |t: Option<UnixTime>| t.map(|t| to_i64(t.0, "time")).transpose();
    let seen = copy
        .map(|c| -> Result<_, StoreError> {
            let s = &c.state;
            Ok(pg_batch::Seen {
                next: to_i64(s.next, "counter")?,
                drift: s.drift,
                failures: i64::from(s.failures),
                failed_at: time(s.last_failure_at)?,
                locked_at: time(s.locked_at)?,
                user: c.user.clone(),
                key_id: c.seed.key_id.clone(),
                nonce: c.seed.nonce,
            })
        })
        .transpose()?;
    let a = AuditColumns::of(audit);
    Ok(pg_batch::Row {
        token: advance.token.clone(),
        next: to_i64(advance.accepted.saturating_add(1), "counter")?,
        drift: advance.drift,
        lowest: to_i64(advance.lowest, "counter")?,
        max_failures: i64::from(advance.max_failures),
        unlock: advance.unlock,
        bind: advance.bind.clone(),
        audit_user: audit.user.clone(),
        action: a.action,
        outcome: a.outcome,
        at: a.at,
        caller: audit.caller.clone(),
        seen,
    })
}

/// A worker leading a batch of [`Tx::advance`] rows: on a connection of the pool, taken at
/// the first statement and given back when the batch is done.
struct PoolRunner<'r> {
    pool: &'r PgPool,
    conn: Option<Conn>,
}

impl PoolRunner<'_> {
    /// Runs `f` on the runner's connection; one on which a statement failed is closed.
    fn with<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, PgError>) -> Result<T, PgError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.pool.acquire()?),
        };
        let result = f(conn);
        if result.is_err() {
            drop(self.conn.take());
            self.pool.give_back(None);
        }
        result
    }
}

impl Drop for PoolRunner<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Perhaps in the middle of a statement: closed, never reused.
            if self.conn.take().is_some() {
                self.pool.give_back(None);
            }
        } else {
            self.release();
        }
    }
}

impl Runner for PoolRunner<'_> {
    fn one(&mut self, row: &pg_batch::Row) -> Result<bool, PgError> {
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let token = row.token.as_str();
        let bind = row.bind.as_ref().map(UserId::as_str);
        let user = row.audit_user.as_ref().map(UserId::as_str);
        let (outcome, caller) = (&*row.outcome, row.caller.as_str());
        let base: [Param<'_>; 12] = [
            &token,
            &row.next,
            &row.drift,
            &row.lowest,
            &row.max_failures,
            &row.unlock,
            &bind,
            &user,
            &row.action,
            &outcome,
            &row.at,
            &caller,
        ];
        let result = self.with(|conn| match &row.seen {
            Some(seen) => conn.statement(ADVANCE_SEEN).and_then(|s| {
                let seen_user = seen.user.as_ref().map(UserId::as_str);
                let (key_id, nonce) = (seen.key_id.as_str(), &seen.nonce[..]);
                let copy: [Param<'_>; 8] = [
                    &seen.next,
                    &seen.drift,
                    &seen.failures,
                    &seen.failed_at,
                    &seen.locked_at,
                    &seen_user,
                    &key_id,
                    &nonce,
                ];
                let mut params: [Param<'_>; 20] = [&0i64; 20];
                params[..12].copy_from_slice(&base);
                params[12..].copy_from_slice(&copy);
                conn.client.execute(&s, &params)
            }),
            None => conn
                .statement(ADVANCE)
                .and_then(|s| conn.client.execute(&s, &base)),
        });
        result.map(|inserted| inserted == 1)
    }

    fn many(&mut self, rows: &[&pg_batch::Row]) -> Result<Vec<String>, PgError> {
        let column = |f: fn(&pg_batch::Row) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
        let seen_column = |f: fn(&pg_batch::Seen) -> Option<i64>| {
            rows.iter()
                .map(|r| r.seen.as_ref().and_then(f))
                .collect::<Vec<_>>()
        };
        let ids: Vec<&str> = rows.iter().map(|r| r.token.as_str()).collect();
        let nexts = column(|r| r.next);
        let drifts = column(|r| r.drift);
        let lowests = column(|r| r.lowest);
        let maxes = column(|r| r.max_failures);
        let unlocks: Vec<bool> = rows.iter().map(|r| r.unlock).collect();
        let binds: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.bind.as_ref().map(UserId::as_str))
            .collect();
        let users: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.audit_user.as_ref().map(UserId::as_str))
            .collect();
        let actions: Vec<&str> = rows.iter().map(|r| r.action).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| &*r.outcome).collect();
        let ats = column(|r| r.at);
        let callers: Vec<&str> = rows.iter().map(|r| r.caller.as_str()).collect();
        let seen: Vec<bool> = rows.iter().map(|r| r.seen.is_some()).collect();
        let s_nexts = seen_column(|s| Some(s.next));
        let s_drifts = seen_column(|s| Some(s.drift));
        let s_failures = seen_column(|s| Some(s.failures));
        let s_failed_at = seen_column(|s| s.failed_at);
        let s_locked_at = seen_column(|s| s.locked_at);
        let s_users: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.seen.as_ref()?.user.as_ref().map(UserId::as_str))
            .collect();
        let s_keys: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.seen.as_ref().map(|s| s.key_id.as_str()))
            .collect();
        let s_nonces: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|r| r.seen.as_ref().map(|s| &s.nonce[..]))
            .collect();
        let moved = self.with(|conn| {
            let s = conn.statement(ADVANCE_MANY)?;
            conn.client.query(
                &s,
                &[
                    &ids,
                    &nexts,
                    &drifts,
                    &lowests,
                    &maxes,
                    &unlocks,
                    &binds,
                    &users,
                    &actions,
                    &outcomes,
                    &ats,
                    &callers,
                    &seen,
                    &s_nexts,
                    &s_drifts,
                    &s_failures,
                    &s_failed_at,
                    &s_locked_at,
                    &s_users,
                    &s_keys,
                    &s_nonces,
                ],
            )
        });
        moved?
            .iter()
            .map(|r| r.try_get(0).map_err(PgError::from))
            .collect()
    }

    fn usable(&self, error: &PgError) -> bool {
        // The server answered with an error: the statement was rolled back. Anything else
        // (no answer in time, a connection lost) leaves its outcome unknown.
        error.code().is_some()
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(Some(conn));
        }
    }

    fn error(&self, row: &pg_batch::Row, error: PgError) -> StoreError {
        match &row.bind {
            Some(user) if is_unique_violation(&error) => {
                StoreError::UserTaken { user: user.clone() }
            }
            _ => db(error),
        }
    }
}

impl Reads for PgConn<'_> {
    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let record = self.with(|conn| {
            let s = conn.statement(SELECT_BY_ID).map_err(db)?;
            let row = conn.client.query_opt(&s, &[&id.as_str()]).map_err(db)?;
            row.map(|r| raw_token(&r)?.into_record()).transpose()
        })?;
        Ok(self.read_fresh(record, Some(id)))
    }

    fn token_of_user(&self, user: &UserId) -> Result<Option<TokenRecord>, StoreError> {
        let record = self.with(|conn| {
            let s = conn.statement(SELECT_BY_USER).map_err(db)?;
            let row = conn.client.query_opt(&s, &[&user.as_str()]).map_err(db)?;
            row.map(|r| raw_token(&r)?.into_record()).transpose()
        })?;
        Ok(self.read_fresh(record, None))
    }

    fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let limit = saturating_i64(limit);
        let after = after.map(|a| a.as_str().to_owned());
        self.with(|conn| {
            let rows = conn
                .client
                .query(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM tokens
                          WHERE $1::TEXT IS NULL OR id > $1 ORDER BY id LIMIT $2"
                    ),
                    &[&after, &limit],
                )
                .map_err(db)?;
            rows.iter().map(|r| raw_token(r)?.into_record()).collect()
        })
    }

    fn audit_trail(&self, token: &TokenId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = saturating_i64(limit);
        self.with(|conn| {
            let rows = conn
                .client
                .query(
                    "SELECT token_id, user_id, action, outcome, at, caller FROM audit
                      WHERE token_id = $1 ORDER BY seq DESC LIMIT $2",
                    &[&token.as_str(), &limit],
                )
                .map_err(db)?;
            let mut events = rows
                .iter()
                .map(|r| {
                    audit_event((
                        r.try_get(0).map_err(db)?,
                        r.try_get(1).map_err(db)?,
                        r.try_get(2).map_err(db)?,
                        r.try_get(3).map_err(db)?,
                        r.try_get(4).map_err(db)?,
                        r.try_get(5).map_err(db)?,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?;
            events.reverse();
            Ok(events)
        })
    }

    fn audit_page(
        &self,
        token: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = saturating_i64(limit);
        let before = before.map(saturating_i64);
        self.with(|conn| {
            let rows = conn
                .client
                .query(
                    "SELECT seq, token_id, user_id, action, outcome, at, caller FROM audit
                      WHERE token_id = $1
                        AND ($2::BIGINT IS NULL OR seq < $2 AND EXISTS
                             (SELECT 1 FROM audit c WHERE c.seq = $2 AND c.token_id = $1))
                      ORDER BY seq DESC LIMIT $3",
                    &[&token.as_str(), &before, &limit],
                )
                .map_err(db)?;
            rows.iter().map(pg_audit_entry).collect()
        })
    }

    fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = saturating_i64(limit);
        let since = to_i64(since.0, "time")?;
        let after = saturating_i64(after.unwrap_or(0));
        self.with(|conn| {
            let rows = conn
                .client
                .query(
                    "SELECT seq, token_id, user_id, action, outcome, at, caller FROM audit
                      WHERE seq > $1 AND at >= $2 ORDER BY seq LIMIT $3",
                    &[&after, &since, &limit],
                )
                .map_err(db)?;
            rows.iter().map(pg_audit_entry).collect()
        })
    }

    fn seeds_not_under(
        &self,
        current: &KeyId,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<(TokenId, SealedSeed)>, StoreError> {
        let limit = saturating_i64(limit);
        let after = after.map(|a| a.as_str().to_owned());
        self.with(|conn| {
            let rows = conn
                .client
                .query(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM tokens
                          WHERE key_id <> $1 AND ($2::TEXT IS NULL OR id > $2)
                          ORDER BY id LIMIT $3"
                    ),
                    &[&current.as_str(), &after, &limit],
                )
                .map_err(db)?;
            rows.iter()
                .map(|r| raw_token(r)?.into_record().map(|t| (t.id, t.seed)))
                .collect()
        })
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with(|conn| postgres_events::events_after(&mut conn.client, after, limit))
    }
}

impl Tx for PgConn<'_> {
    fn token_seen(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        match self.pool.copies.get(id) {
            Some(copy) => {
                let record = TokenRecord::clone(&copy);
                *self.basis.borrow_mut() = Some((copy, false));
                Ok(Some(record))
            }
            None => self.token(id),
        }
    }

    fn client_budget_full_at(&self, client: &ClientId) -> Result<Option<u64>, StoreError> {
        self.with(|conn| {
            let s = conn
                .statement("SELECT full_at FROM client_budgets WHERE client = $1")
                .map_err(db)?;
            let row = conn.client.query_opt(&s, &[&client.as_str()]).map_err(db)?;
            row.map(|r| r.try_get::<_, i64>(0).map_err(db))
                .transpose()
                .map(|at| at.map(|ms| u64::try_from(ms).unwrap_or(0)))
        })
    }

    fn client_budget_charge(
        &self,
        client: &ClientId,
        now_ms: u64,
        unit_ms: u64,
    ) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "time")?;
        let unit = to_i64(unit_ms, "budget unit")?;
        self.with(|conn| {
            let s = conn
                .statement(
                    "INSERT INTO client_budgets AS b (client, full_at)
                     VALUES ($1, $2::BIGINT + $3::BIGINT)
                     ON CONFLICT (client)
                     DO UPDATE SET full_at = GREATEST(b.full_at, $2::BIGINT) + $3::BIGINT",
                )
                .map_err(db)?;
            conn.client
                .execute(&s, &[&client.as_str(), &now, &unit])
                .map_err(db)?;
            Ok(())
        })
    }

    fn insert_tokens(&self, tokens: &[NewToken], audit: &AuditEvent) -> Result<(), StoreError> {
        let columns: Vec<_> = tokens.iter().map(TokenColumns::of).collect();
        let ids: Vec<&str> = columns.iter().map(|c| c.token.id.as_str()).collect();
        let kinds: Vec<&str> = columns.iter().map(|c| c.kind).collect();
        let algorithms: Vec<&str> = columns.iter().map(|c| c.algorithm).collect();
        let digits: Vec<i64> = columns.iter().map(|c| c.digits).collect();
        let periods: Vec<i64> = columns.iter().map(|c| c.period).collect();
        let t0s: Vec<i64> = columns.iter().map(|c| c.t0).collect();
        let key_ids: Vec<&str> = columns
            .iter()
            .map(|c| c.token.seed.key_id.as_str())
            .collect();
        let nonces: Vec<&[u8]> = columns.iter().map(|c| &c.token.seed.nonce[..]).collect();
        let sealed: Vec<&[u8]> = columns
            .iter()
            .map(|c| c.token.seed.ciphertext.as_slice())
            .collect();
        let nexts: Vec<i64> = columns.iter().map(|c| c.next).collect();
        let a = AuditColumns::of(audit);
        self.before_write(None)?;
        self.with(|conn| {
            // A transaction on the pooled connection: if anything fails, the connection is
            // dropped (see `PgConn::with`) and the server rolls it back.
            conn.client.batch_execute("BEGIN").map_err(db)?;
            let tx = &mut conn.client;
            // One statement for the whole batch: arrays unnested into rows, so a large
            // import costs one round trip instead of one per token.
            let inserted = tx.execute(
                "INSERT INTO tokens (id, kind, algorithm, digits, period, t0, key_id,
                                     nonce, sealed, next_value)
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                                      $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BYTEA[],
                                      $9::BYTEA[], $10::BIGINT[])",
                &[
                    &ids,
                    &kinds,
                    &algorithms,
                    &digits,
                    &periods,
                    &t0s,
                    &key_ids,
                    &nonces,
                    &sealed,
                    &nexts,
                ],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    conn.client.batch_execute("ROLLBACK").map_err(db)?;
                    return Err(duplicate_among(&mut conn.client, tokens));
                }
                Err(e) => return Err(db(e)),
            }
            tx.execute(
                "INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&a.token, &a.user, &a.action, &&*a.outcome, &a.at, &a.caller],
            )
            .map_err(db)?;
            tx.batch_execute("COMMIT").map_err(db)
        })
    }

    fn advance(&self, advance: &Advance, audit: &AuditEvent) -> Result<bool, StoreError> {
        let basis = self.basis.borrow_mut().take();
        let copy = match &basis {
            Some((copy, false)) if copy.id != advance.token => {
                self.pool.copies.forget(&copy.id);
                return Err(StoreError::Stale);
            }
            Some((copy, false)) => Some(&**copy),
            _ => None,
        };
        let applied = advance_row(advance, audit, copy).and_then(|row| {
            // No connection is held while waiting for a batch: the workers that wait need
            // none, so a pool of a few connections carries many of them, and the one that
            // leads the batch always finds one.
            self.release();
            let mut runner = PoolRunner {
                pool: self.pool,
                conn: None,
            };
            self.pool.batcher.advance(&mut runner, row)
        });
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                self.pool.copies.forget(&advance.token);
                return Err(e);
            }
        };
        match (&basis, applied) {
            (Some((record, _)), true) if record.id == advance.token => {
                let now = Arc::new(advanced(record, advance));
                self.pool.copies.put(Arc::clone(&now));
                *self.basis.borrow_mut() = Some((now, true));
            }
            (_, true) => self.pool.copies.forget(&advance.token),
            (Some((copy, false)), false) => {
                // The row is not what this unit decided on: decide again on a fresh read.
                self.pool.copies.forget(&copy.id);
                return Err(StoreError::Stale);
            }
            (_, false) => self.pool.copies.forget(&advance.token),
        }
        Ok(applied)
    }

    fn record_failure(
        &self,
        token: &TokenId,
        now: UnixTime,
        max_failures: u32,
        audit: &AuditEvent,
        lock: (u32, &AuditEvent),
    ) -> Result<Option<u32>, StoreError> {
        let now = to_i64(now.0, "time")?;
        let max = i64::from(max_failures);
        let a = AuditColumns::of(audit);
        let (lock_at, l) = (i64::from(lock.0), AuditColumns::of(lock.1));
        self.before_write(Some(token))?;
        self.with(|conn| {
            // The lock line is written by the same statement as the failure that locks, so
            // a lock never commits without its line (and its event). It selects from
            // `logged`, so it is inserted after the failure's line.
            let s = conn
                .statement(
                    "WITH failed AS (
                        UPDATE tokens
                           SET failures = failures + 1, last_failure_at = $2,
                               locked_at = CASE WHEN failures + 1 >= $3 THEN $2 ELSE locked_at END
                         WHERE id = $1 AND enabled AND locked_at IS NULL
                     RETURNING id, failures),
                     logged AS (
                        INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                        SELECT id, $4::TEXT, $5::TEXT, $6::TEXT, $7::BIGINT, $8::TEXT FROM failed
                     RETURNING token_id),
                     locked AS (
                        INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                        SELECT f.id, $10::TEXT, $11::TEXT, $12::TEXT, $13::BIGINT, $14::TEXT
                          FROM failed f, logged WHERE f.failures >= $9)
                     SELECT failures FROM failed",
                )
                .map_err(db)?;
            let row = conn
                .client
                .query_opt(
                    &s,
                    &[
                        &token.as_str(),
                        &now,
                        &max,
                        &a.user,
                        &a.action,
                        &&*a.outcome,
                        &a.at,
                        &a.caller,
                        &lock_at,
                        &l.user,
                        &l.action,
                        &&*l.outcome,
                        &l.at,
                        &l.caller,
                    ],
                )
                .map_err(db)?;
            row.map(|r| {
                let f: i64 = r.try_get(0).map_err(db)?;
                u32::try_from(f).map_err(|_| StoreError::Corrupt {
                    token: token.to_string(),
                    reason: "bad failures".to_owned(),
                })
            })
            .transpose()
        })
    }

    fn unlock(
        &self,
        token: &TokenId,
        locked_at: Option<UnixTime>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let locked_at = locked_at.map(|t| to_i64(t.0, "time")).transpose()?;
        let a = AuditColumns::of(audit);
        self.before_write(Some(token))?;
        self.with(|conn| {
            let s = conn
                .statement(
                    "WITH opened AS (
                        UPDATE tokens SET locked_at = NULL, failures = 0, last_failure_at = NULL
                         WHERE id = $1 AND ($2::BIGINT IS NULL OR locked_at = $2)
                     RETURNING id)
                     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                     SELECT id, $3::TEXT, $4::TEXT, $5::TEXT, $6::BIGINT, $7::TEXT FROM opened",
                )
                .map_err(db)?;
            let n = conn
                .client
                .execute(
                    &s,
                    &[
                        &token.as_str(),
                        &locked_at,
                        &a.user,
                        &a.action,
                        &&*a.outcome,
                        &a.at,
                        &a.caller,
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn set_enabled(
        &self,
        token: &TokenId,
        enabled: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let a = AuditColumns::of(audit);
        self.before_write(Some(token))?;
        self.with(|conn| {
            let n = conn
                .client
                .execute(
                    "WITH changed AS (
                        UPDATE tokens SET enabled = $2 WHERE id = $1 RETURNING id)
                     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                     SELECT id, $3::TEXT, $4::TEXT, $5::TEXT, $6::BIGINT, $7::TEXT FROM changed",
                    &[
                        &token.as_str(),
                        &enabled,
                        &a.user,
                        &a.action,
                        &&*a.outcome,
                        &a.at,
                        &a.caller,
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn delete_token(&self, token: &TokenId, audit: &AuditEvent) -> Result<bool, StoreError> {
        let a = AuditColumns::of(audit);
        self.before_write(Some(token))?;
        self.with(|conn| {
            let n = conn
                .client
                .execute(
                    "WITH gone AS (DELETE FROM tokens WHERE id = $1 RETURNING id)
                     INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                     SELECT id, $2::TEXT, $3::TEXT, $4::TEXT, $5::BIGINT, $6::TEXT FROM gone",
                    &[
                        &token.as_str(),
                        &a.user,
                        &a.action,
                        &&*a.outcome,
                        &a.at,
                        &a.caller,
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let a = AuditColumns::of(event);
        // A line that reports a decision (a replay, a refusal) must rest on the row as it is.
        self.before_write(None)?;
        self.with(|conn| {
            let s = conn
                .statement(
                    "INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .map_err(db)?;
            conn.client
                .execute(
                    &s,
                    &[&a.token, &a.user, &a.action, &&*a.outcome, &a.at, &a.caller],
                )
                .map_err(db)?;
            Ok(())
        })
    }

    fn replace_seed(
        &self,
        token: &TokenId,
        old: &SealedSeed,
        new: &SealedSeed,
    ) -> Result<bool, StoreError> {
        let (new_nonce, old_nonce) = (&new.nonce[..], &old.nonce[..]);
        self.before_write(Some(token))?;
        self.with(|conn| {
            let n = conn
                .client
                .execute(
                    "UPDATE tokens SET key_id = $2, nonce = $3, sealed = $4
                      WHERE id = $1 AND key_id = $5 AND nonce = $6 AND sealed = $7",
                    &[
                        &token.as_str(),
                        &new.key_id.as_str(),
                        &new_nonce,
                        &new.ciphertext,
                        &old.key_id.as_str(),
                        &old_nonce,
                        &old.ciphertext,
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        self.with(|conn| {
            postgres_events::claim(&mut conn.client, destination, holder, now_ms, lease_ms)
        })
    }

    fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: &Delivery,
        dead: Option<&DeadLetter>,
    ) -> Result<bool, StoreError> {
        self.with(|conn| {
            postgres_events::settle(&mut conn.client, destination, holder, delivery, dead)
        })
    }
}

impl Store for PgStore {
    fn submit(&self, work: Box<dyn Work>) {
        let mut state = self.queue.lock();
        if state.closed {
            drop(state);
            return work.finish(Err(StoreError::Database {
                backend: "postgres",
                reason: "the store is closed".to_owned(),
            }));
        }
        state.work.push_back(work);
        let start = state.work.len() > state.idle
            && state.workers < self.pool.max_connections * WORKERS_PER_CONNECTION;
        if start {
            state.workers += 1;
        }
        // Only a waiting worker needs waking: a busy one takes the work when it is done, and
        // a wake with nobody waiting is still a system call on every verification.
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
        if start {
            self.start_worker();
        }
    }

    fn read(&self, reads: &mut dyn FnMut(&dyn Reads)) -> Result<(), StoreError> {
        self.pool.with(|view| reads(view))
    }

    fn shares_client_budgets(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testing::TempPostgres;

    fn row(token: &str, lowest: i64, bind: Option<&str>) -> pg_batch::Row {
        pg_batch::Row {
            token: TokenId::new(token).unwrap(),
            next: lowest + 1,
            drift: 0,
            lowest,
            max_failures: 3,
            unlock: false,
            bind: bind.map(|u| UserId::new(u).unwrap()),
            audit_user: bind.map(|u| UserId::new(u).unwrap()),
            action: "activate",
            outcome: std::borrow::Cow::Borrowed("accepted"),
            at: 1,
            caller: crate::token::Caller::new("test").unwrap(),
            seen: None,
        }
    }

    /// A store on a fresh cluster with tokens `A`, `B` and `C`, unbound, at counter 0.
    fn store(pg: &TempPostgres) -> PgStore {
        let store = PgStore::connect(&pg.url()).unwrap();
        store
            .pool
            .with(|view| {
                view.with(|conn| {
                    conn.client
                        .batch_execute(
                            "INSERT INTO tokens (id, kind, algorithm, digits, period, t0,
                                                 key_id, nonce, sealed, next_value)
                             SELECT t, 'hotp', 'SHA1', 6, 30, 0, 'k', '\\x00', '\\x00', 0
                               FROM unnest(ARRAY['A', 'B', 'C']) AS t",
                        )
                        .map_err(db)
                })
            })
            .unwrap()
            .unwrap();
        store
    }

    fn query(store: &PgStore, sql: &'static str) -> Vec<String> {
        store
            .pool
            .with(|view| {
                view.with(|conn| {
                    let rows = conn.client.query(sql, &[]).map_err(db)?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
            })
            .unwrap()
            .unwrap()
    }

    /// The batch statement on a real server: each row's own compare-and-set decides, and
    /// only moved rows write an audit line.
    #[test]
    fn a_batch_moves_exactly_the_rows_whose_compare_and_set_holds() {
        let pg = TempPostgres::start().unwrap();
        let store = store(&pg);
        let mut runner = PoolRunner {
            pool: &store.pool,
            conn: None,
        };
        // `B` decided on a copy the row no longer matches; `C` on a counter already used.
        let mut stale = row("B", 0, None);
        stale.seen = Some(pg_batch::Seen {
            next: 7,
            drift: 0,
            failures: 0,
            failed_at: None,
            locked_at: None,
            user: None,
            key_id: KeyId::new("k").unwrap(),
            nonce: [0; crate::seal::NONCE_LEN],
        });
        let (a, c) = (row("A", 0, None), row("C", -1, None));
        let mut moved = runner.many(&[&a, &stale, &c]).unwrap();
        moved.sort();
        assert_eq!(moved, ["A"]);
        assert_eq!(
            query(
                &store,
                "SELECT id || ':' || next_value FROM tokens ORDER BY id"
            ),
            ["A:1", "B:0", "C:0"]
        );
        assert_eq!(query(&store, "SELECT token_id FROM audit"), ["A"]);
    }

    /// Two activations binding one user in one batch: the statement fails as a whole, and
    /// the rows run again one by one, so the first binds and the second hears `UserTaken`.
    #[test]
    fn a_batch_that_binds_a_user_twice_runs_again_row_by_row() {
        let pg = TempPostgres::start().unwrap();
        let store = store(&pg);
        let mut runner = PoolRunner {
            pool: &store.pool,
            conn: None,
        };
        let (a, b) = (row("A", 0, Some("u")), row("B", 0, Some("u")));
        let error = runner.many(&[&a, &b]).unwrap_err();
        assert!(runner.usable(&error), "{error}");
        assert!(query(&store, "SELECT token_id FROM audit").is_empty());

        let batch = vec![(0, a), (1, b)];
        let (answers, broken) = pg_batch::run(&mut runner, batch);
        assert_eq!(broken, None);
        assert_eq!(
            answers,
            [
                (0, Ok(true)),
                (
                    1,
                    Err(StoreError::UserTaken {
                        user: UserId::new("u").unwrap()
                    })
                )
            ]
        );
        assert_eq!(
            query(&store, "SELECT id FROM tokens WHERE user_id = 'u'"),
            ["A"]
        );
        assert_eq!(query(&store, "SELECT token_id FROM audit"), ["A"]);
    }
}
