//! The embedded store: one SQLite file in WAL mode, shared safely by threads and processes.
//!
//! Reads run on the caller's thread, each on a connection borrowed from a small pool
//! (rusqlite connections are not `Sync`). Every unit of work ([`Store::submit`]) goes to one
//! writer thread per store, which owns the only writing connection: it takes every unit
//! waiting in its queue, runs them one after the other inside one `BEGIN IMMEDIATE`
//! transaction, and commits once (group commit; with `Durability::Full`, while the last
//! batch's fsync runs the transaction stays open for the units arriving meanwhile, see
//! `Durable::wait`); only then does each unit hear that it was committed. Each state change
//! runs in its own savepoint, so one that fails leaves nothing behind and does not undo the others. A unit reads on the writer's connection, so it sees
//! every write committed or queued before it: a verification reads, decides and writes
//! without a hand-off between threads, and one fsync covers a whole batch of them, which is
//! what makes `synchronous = FULL` fast enough.
//!
//! Between stores, threads or processes on one file, SQLite decides: writers queue on the
//! database lock (with a busy timeout), and every state change is one `UPDATE ... WHERE`, so
//! the second of two racing writers finds the row already moved on.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use codereader_otp::UnixTime;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Statement, TransactionBehavior, params,
};

use super::sql::{
    AuditColumns, AuditRow, RawToken, TOKEN_COLUMNS, TokenColumns, audit_entry, audit_event,
    saturating_i64, to_i64,
};
use super::sqlite_checkpoint::{Checkpointer, Nudge, backstop};
use super::sqlite_events;
use super::{
    Advance, AuditEntry, AuditEvent, Claim, DeadLetter, Delivery, Event, NewToken, Reads, Store,
    StoreError, TokenRecord, Tx, Work,
};
use crate::seal::SealedSeed;
use crate::token::{KeyId, TokenId, UserId};

/// Migrations, applied in order; the database's `user_version` says how many ran. Never edit
/// one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: tokens and the audit trail.
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY NOT NULL,
        user_id TEXT UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('totp', 'hotp')),
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        t0 INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        nonce BLOB NOT NULL,
        sealed BLOB NOT NULL,
        next_value INTEGER NOT NULL,
        drift INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        last_failure_at INTEGER,
        locked_at INTEGER,
        enabled INTEGER NOT NULL DEFAULT 1
     ) WITHOUT ROWID;
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        token_id TEXT,
        user_id TEXT,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        at INTEGER NOT NULL,
        caller TEXT NOT NULL
     );
     CREATE INDEX audit_by_token ON audit (token_id, seq);",
    // 2: each token's audit lines chained newest to oldest instead of indexed by token. An
    // index on (token_id, seq) puts every line's entry on a random page of the index, which
    // each verification then writes to the WAL beside its token's page (measured: the index
    // cost a fifth of the throughput and doubled p99 under load). The chain's head is on the
    // token row, which a verification writes anyway; serials without a row (unknown, or
    // deleted) keep theirs in `audit_heads`. Existing lines are chained from the old index.
    "ALTER TABLE tokens ADD COLUMN last_audit INTEGER;
     ALTER TABLE audit ADD COLUMN prev INTEGER;
     CREATE TABLE audit_heads (
        token_id TEXT PRIMARY KEY NOT NULL,
        last INTEGER NOT NULL
     ) WITHOUT ROWID;
     UPDATE audit SET prev = (SELECT MAX(p.seq) FROM audit p
                               WHERE p.token_id = audit.token_id AND p.seq < audit.seq)
      WHERE token_id IS NOT NULL;
     UPDATE tokens SET last_audit = (SELECT MAX(seq) FROM audit WHERE token_id = tokens.id);
     INSERT INTO audit_heads (token_id, last)
          SELECT token_id, MAX(seq) FROM audit
           WHERE token_id IS NOT NULL AND token_id NOT IN (SELECT id FROM tokens)
           GROUP BY token_id;
     DROP INDEX audit_by_token;",
    // 3: the outbox of events and their delivery (sqlite_events.rs).
    super::sqlite_events::MIGRATION,
    // 4: the outbox's triggers without `IN` lists, which SQLite turned into a temporary
    // index built for every audit line (sqlite_events.rs).
    super::sqlite_events::MIGRATION_EQ,
];

/// How hard SQLite works to keep a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced before any verification in it hears its answer; an accepted
    /// code stays used even after a power cut. The default. The writer does not wait for the
    /// fsync itself (a thread of its own fsyncs the write-ahead log once for every batch
    /// committed meanwhile), so a commit may be visible to readers shortly before it is
    /// durable, never answered before. A database that is not a plain file in WAL mode gets
    /// SQLite's `synchronous = FULL` instead.
    #[default]
    Full,
    /// `synchronous = NORMAL`: commits survive a crash of the process (kill -9) but the last
    /// ones may be lost on power failure, which could let a just-accepted code be accepted
    /// again after the reboot. Faster; for operators who accept that.
    Normal,
}

/// Options for [`SqliteStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Commit durability.
    pub durability: Durability,
    /// How long a writer waits for the database lock before failing.
    pub busy_timeout: Duration,
    /// Idle connections kept for reuse. Set it to at least the number of callers that read
    /// at once (a server's store concurrency): a reader finding the pool empty opens a new
    /// connection, and one returned to a full pool is closed, so a pool smaller than the
    /// concurrency opens and closes a connection on many reads.
    pub max_idle: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(10),
            max_idle: 64,
        }
    }
}

impl SqliteOptions {
    /// Sets [`SqliteOptions::durability`].
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`SqliteOptions::max_idle`].
    #[must_use]
    pub fn with_max_idle(mut self, connections: usize) -> Self {
        self.max_idle = connections;
        self
    }
}
/// Token state in an SQLite database file.
///
/// Reads use pooled connections. Writes go to one writer thread per store, which runs every
/// unit of work waiting in its queue inside one transaction (each change in its own
/// savepoint, so one failing change does not undo the others) and commits once: group
/// commit. Under load one fsync then covers many verifications, which is what makes
/// `synchronous = FULL` fast enough; no unit hears about its writes before the commit that
/// holds them.
pub struct SqliteStore {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    writer: Option<Writer>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Page size of a new database; SQLite keeps an existing file's (converting one takes a
/// `VACUUM` outside WAL mode). A verification changes one token row and appends one audit
/// line, a few hundred bytes, yet every page it touches goes whole into the write-ahead log,
/// through its checksum, and into the database again at the next checkpoint. With 1 KiB
/// pages instead of SQLite's 4 KiB a verification on SQLite FULL costs 56,300 instructions
/// instead of 62,100 (`cargo bench -p codereader-verifier --bench instructions`; 2 KiB:
/// 58,200), and the kernel copies and syncs a quarter of the bytes. The B-tree gets a level
/// deeper: with a million tokens a single verification took 153 us at p50 against 163 us
/// (`--bench scale`). Token rows up to 231 bytes (ids of usual length) fit one page;
/// longer ones spill the rest to an overflow page.
const PAGE_SIZE: i64 = 1024;

/// Most units of work committed together.
const MAX_BATCH: usize = 512;

/// What the writer thread hears.
enum Msg {
    /// A unit of work to run.
    Work(Box<dyn Work>),
    /// The syncer finished a batch while the writer waited for it ([`Durable::wait`]).
    Synced,
    /// The store is dropped: commit what ran, then end (the syncer holds a sender of its
    /// own, so the queue does not close by itself).
    Stop,
}

struct Writer {
    queue: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The thread that makes committed batches durable ([`sync_loop`]), if the writer does
    /// not leave that to SQLite.
    syncer: Option<std::thread::JoinHandle<()>>,
    /// The thread that checkpoints the write-ahead log, if the database has one.
    checkpointer: Option<Checkpointer>,
}

/// Where the writer hands committed batches to be made durable before they hear so: the
/// syncer thread, which fsyncs the write-ahead log once for every batch committed meanwhile.
struct Durable {
    batches: mpsc::Sender<Vec<Box<dyn Work>>>,
    /// What the writer and the syncer share.
    shared: Arc<Syncing>,
}

/// The state of the syncer, shared with the writer.
#[derive(Default)]
struct Syncing {
    /// Set by the syncer when an fsync failed: what the kernel then kept is unknown, so the
    /// writer refuses every later batch (as PostgreSQL stops on a failed fsync).
    failed: AtomicBool,
    /// Batches handed to the syncer and not yet made durable.
    in_flight: AtomicUsize,
    /// Set by the writer while it waits, with a transaction open, for `in_flight` to reach
    /// zero; the syncer that brings it there clears it and sends [`Msg::Synced`].
    waiting: AtomicBool,
}

impl Durable {
    /// Whether the writer should keep its transaction open and wait for more work (or
    /// for the syncer): a batch is being made durable, and nothing committed now could
    /// hear of it before that fsync ends and the next one begins. Committing once the
    /// syncer is free instead makes one commit per fsync, with every unit that arrived
    /// meanwhile, rather than one per unit or two that happened to arrive together: fewer
    /// pages written to the log, fewer fsyncs, fewer thread hand-offs per verification.
    fn wait(&self) -> bool {
        let s = &self.shared;
        if s.in_flight.load(Ordering::SeqCst) == 0 {
            return false;
        }
        s.waiting.store(true, Ordering::SeqCst);
        // The syncer may have finished in between: then it either saw the flag (and sends
        // `Synced`) or this sees its count, so the wait never outlives the fsync.
        if s.in_flight.load(Ordering::SeqCst) == 0 {
            s.waiting.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }
}

fn fsync_failed() -> StoreError {
    StoreError::Database {
        backend: "sqlite",
        reason: "an fsync of the write-ahead log failed earlier; restart the verifier".to_owned(),
    }
}

/// The syncer thread: takes every batch the writer committed since its last fsync, fsyncs
/// the write-ahead log `wal` once (which makes every frame written before it durable), then
/// lets each unit of those batches hear that it was committed, in commit order.
fn sync_loop(
    wal: &Path,
    batches: mpsc::Receiver<Vec<Box<dyn Work>>>,
    shared: &Syncing,
    writer: &mpsc::Sender<Msg>,
) {
    let failed = &shared.failed;
    // The log's directory entry too, once: the log may have been created by this store.
    let mut entry_synced = false;
    // Opened on the first batch and kept: the writer's connection, open for as long as this
    // thread runs, keeps SQLite from deleting the log (only the last connection to close
    // does), and a log restarted after a checkpoint is the same file written from its start.
    // Opening and closing it for every fsync cost two system calls on the path of every
    // batch.
    let mut log: Option<std::fs::File> = None;
    while let Ok(first) = batches.recv() {
        let mut ready = vec![first];
        while let Ok(more) = batches.try_recv() {
            ready.push(more);
        }
        let mut synced = match &log {
            Some(file) => file.sync_data(),
            None => std::fs::File::open(wal).and_then(|file| {
                file.sync_data()?;
                log = Some(file);
                Ok(())
            }),
        };
        if synced.is_ok() && !entry_synced {
            let dir = wal
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
            entry_synced = synced.is_ok();
        }
        let result = match synced {
            Ok(()) if !failed.load(Ordering::SeqCst) => Ok(()),
            Ok(()) => Err(fsync_failed()),
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                Err(StoreError::Database {
                    backend: "sqlite",
                    reason: format!("cannot fsync the write-ahead log: {e}"),
                })
            }
        };
        // The writer may commit its next batch now, while these units hear of theirs.
        shared.in_flight.fetch_sub(ready.len(), Ordering::SeqCst);
        if shared.waiting.swap(false, Ordering::SeqCst) {
            let _ = writer.send(Msg::Synced);
        }
        for work in ready.into_iter().flatten() {
            work.finish(result.clone());
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Database {
        backend: "sqlite",
        reason: "the writer thread has stopped".to_owned(),
    }
}

/// What the writer takes from its queue next.
enum Next {
    Work(Box<dyn Work>),
    /// A wake-up from the syncer (or nothing queued, when not waiting): look again.
    Again,
    /// Nothing queued (when not waiting).
    Empty,
    /// The store is gone.
    Closed,
}

fn take(queue: &mpsc::Receiver<Msg>, block: bool) -> Next {
    let msg = if block {
        queue.recv().ok()
    } else {
        match queue.try_recv() {
            Ok(msg) => Some(msg),
            Err(mpsc::TryRecvError::Empty) => return Next::Empty,
            Err(mpsc::TryRecvError::Disconnected) => None,
        }
    };
    match msg {
        Some(Msg::Work(work)) => Next::Work(work),
        Some(Msg::Synced) => Next::Again,
        Some(Msg::Stop) | None => Next::Closed,
    }
}

/// The writer thread: batches of queued work, each batch one transaction. With `durable`,
/// a committed batch goes to the syncer, which lets its units hear of the commit once an
/// fsync has made it durable; meanwhile the writer runs the next units, so the time of an
/// fsync no longer adds to the time of every batch, and keeps their transaction open until
/// that fsync ends ([`Durable::wait`]). Without, SQLite's own `synchronous` setting
/// decides, and units hear of the commit here.
fn write_loop(
    conn: Connection,
    queue: mpsc::Receiver<Msg>,
    durable: Option<Durable>,
    nudge: Option<Nudge>,
) {
    let held = Held::default();
    let view = Conn {
        conn: &conn,
        held: Some(&held),
    };
    let mut closed = false;
    while !closed {
        let mut first = match take(&queue, true) {
            Next::Work(work) => work,
            Next::Again | Next::Empty => continue,
            Next::Closed => break,
        };
        if durable
            .as_ref()
            .is_some_and(|d| d.shared.failed.load(Ordering::SeqCst))
        {
            first.finish(Err(fsync_failed()));
            continue;
        }
        if let Err(e) = view.run(Sql::Begin) {
            // No transaction, so nothing runs: the unit hears why.
            first.finish(Err(db(e)));
            continue;
        }
        first.run(&view);
        let mut batch = vec![first];
        // Every unit already queued joins the transaction; while the syncer is busy, so do
        // those that arrive until it is done.
        while batch.len() < MAX_BATCH {
            let wait = durable.as_ref().is_some_and(Durable::wait);
            match take(&queue, wait) {
                Next::Work(mut work) => {
                    work.run(&view);
                    batch.push(work);
                }
                // The syncer is free: commit at once, so that its next fsync starts now. Units
                // queued behind the wake-up go into the next batch; draining them first kept
                // the syncer idle (and every unit of this batch waiting) for as long as they
                // kept coming: 170 us per batch measured with 32 callers, against 25 us now.
                Next::Again => break,
                Next::Empty => break,
                Next::Closed => {
                    closed = true;
                    break;
                }
            }
        }
        if let Some(durable) = &durable {
            durable.shared.waiting.store(false, Ordering::SeqCst);
        }
        let committed = if let Some(broken) = held.broken.take() {
            // A change made without a savepoint failed half-way: only undoing the whole
            // batch removes its first half, and every unit hears so.
            let _ = view.run(Sql::Rollback);
            Err(broken)
        } else if conn.is_autocommit() {
            // Some errors (disk full, I/O) make SQLite roll the whole transaction back by
            // itself: then nothing of the batch is kept and every unit must hear so.
            Err(StoreError::Database {
                backend: "sqlite",
                reason: "the transaction was rolled back".to_owned(),
            })
        } else {
            view.run(Sql::Commit).map_err(|e| {
                let _ = view.run(Sql::Rollback);
                db(e)
            })
        };
        if let (Ok(()), Some(nudge)) = (&committed, &nudge) {
            nudge.committed();
        }
        if let (Ok(()), Some(durable)) = (&committed, &durable) {
            durable.shared.in_flight.fetch_add(1, Ordering::SeqCst);
            if let Err(mpsc::SendError(batch)) = durable.batches.send(batch) {
                // No syncer (it cannot have stopped while this sender lives, but if it
                // did): nothing says the batch is durable.
                durable.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                for work in batch {
                    work.finish(Err(fsync_failed()));
                }
            }
            continue;
        }
        for work in batch {
            work.finish(committed.clone());
        }
    }
}

/// The statements a verification runs, named so that the writer can keep each prepared for
/// its whole life ([`Held`]) instead of looking it up by its text in the connection's
/// statement cache (which hashed the text and moved it in an LRU list on every use: about a
/// tenth of the instructions of a verification on SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sql {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    SelectById,
    SelectByUser,
    InsertLine,
    DeleteLine,
    Advance,
    RecordFailure,
    LastAuditOnRow,
    LastAuditOfHead,
    MoveHeadOnRow,
    MoveHeadOfHead,
}

/// How many [`Sql`] statements there are.
const HELD: usize = Sql::MoveHeadOfHead as usize + 1;

impl Sql {
    fn text(self) -> &'static str {
        match self {
            Sql::Begin => "BEGIN IMMEDIATE",
            Sql::Commit => "COMMIT",
            Sql::Rollback => "ROLLBACK",
            Sql::Savepoint => "SAVEPOINT job",
            Sql::Release => "RELEASE job",
            Sql::RollbackTo => "ROLLBACK TO job",
            Sql::SelectById => SELECT_BY_ID,
            Sql::SelectByUser => SELECT_BY_USER,
            Sql::InsertLine => {
                "INSERT INTO audit (token_id, user_id, action, outcome, at, caller, prev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                         CASE WHEN ?8 THEN (SELECT last_audit FROM tokens WHERE id = ?1)
                         ELSE ?7 END)"
            }
            Sql::DeleteLine => "DELETE FROM audit WHERE seq = ?1",
            Sql::Advance => {
                "UPDATE tokens
                    SET next_value = ?2, drift = ?3, failures = 0, last_failure_at = NULL,
                        locked_at = CASE WHEN ?6 THEN NULL ELSE locked_at END,
                        user_id = COALESCE(?7, user_id), last_audit = ?8
                  WHERE id = ?1 AND enabled = 1 AND next_value <= ?4
                    AND (?6 OR (locked_at IS NULL AND failures < ?5))
                    AND (?7 IS NULL OR user_id IS NULL)"
            }
            // Right-hand sides see the row before the update, so `failures + 1` is the new
            // count in both places.
            Sql::RecordFailure => {
                "UPDATE tokens
                    SET failures = failures + 1, last_failure_at = ?2,
                        locked_at = CASE WHEN failures + 1 >= ?3 THEN ?2 ELSE locked_at END,
                        last_audit = ?4
                  WHERE id = ?1 AND enabled = 1 AND locked_at IS NULL
              RETURNING failures"
            }
            Sql::LastAuditOnRow => "SELECT last_audit FROM tokens WHERE id = ?1",
            Sql::LastAuditOfHead => "SELECT last FROM audit_heads WHERE token_id = ?1",
            Sql::MoveHeadOnRow => "UPDATE tokens SET last_audit = ?2 WHERE id = ?1",
            Sql::MoveHeadOfHead => {
                "INSERT INTO audit_heads (token_id, last) VALUES (?1, ?2)
                 ON CONFLICT (token_id) DO UPDATE SET last = excluded.last"
            }
        }
    }
}

/// The writer's own: its statements, prepared on first use and kept, and the error of a
/// change that failed half-way outside a savepoint (see [`Conn::unguarded`]).
#[derive(Default)]
struct Held<'c> {
    statements: [RefCell<Option<Statement<'c>>>; HELD],
    broken: RefCell<Option<StoreError>>,
}

/// Runs `f` inside a savepoint: its writes stay only if it succeeds.
fn in_savepoint<T>(
    conn: &Conn<'_, '_>,
    f: impl FnOnce(&Conn<'_, '_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.run(Sql::Savepoint).map_err(db)?;
    let result = f(conn);
    if result.is_err() {
        conn.run(Sql::RollbackTo).map_err(db)?;
    }
    conn.run(Sql::Release).map_err(db)?;
    result
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database {
        backend: "sqlite",
        reason: e.to_string(),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// Creates a missing database file with mode 0600 before SQLite opens it: the file holds
/// sealed seeds, user bindings and the audit trail, which are nobody else's business. SQLite
/// gives its `-wal` and `-shm` files the database file's mode. An existing file is left as
/// it is (its owner chose its mode); a `file:` URI is SQLite's to create.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database {
            backend: "sqlite",
            reason: format!("cannot create {}: {e}", path.display()),
        }),
    }
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, AuditRow)> {
    Ok((
        r.get(0)?,
        (
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ),
    ))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options, and runs any
    /// pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens with explicit options.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::SchemaTooNew`].
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        create_private(path.as_ref())?;
        let mut store = SqliteStore {
            path: path.as_ref().to_path_buf(),
            options,
            idle: Mutex::new(Vec::new()),
            writer: None,
        };
        let mut conn = store.connect()?;
        // Before anything is written: only an empty file takes it.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(db)?;
        // WAL is a property of the file: set once, every later connection sees it.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db)?;
        migrate(&mut conn)?;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(|e| StoreError::Database {
                    backend: "sqlite",
                    reason: format!("cannot start the {name} thread: {e}"),
                })
        };
        // Durable commits: the writer's connection commits without waiting for the disk
        // (synchronous=NORMAL, which still syncs around checkpoints), and the syncer fsyncs
        // the log before any unit of a batch hears of its commit. A database that is not a
        // plain file in WAL mode leaves it to SQLite (synchronous=FULL).
        let wal = (options.durability == Durability::Full
            && mode.eq_ignore_ascii_case("wal")
            && !path
                .as_ref()
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"file:"))
        .then(|| {
            let mut wal = path.as_ref().as_os_str().to_owned();
            wal.push("-wal");
            PathBuf::from(wal)
        });
        // Checkpoints off the writer's path (sqlite_checkpoint.rs), on a connection of their
        // own; the writer's are the backstop.
        let (mut checkpointer, mut nudge) = (None, None);
        if mode.eq_ignore_ascii_case("wal") {
            backstop(&mut conn).map_err(db)?;
            let (started, theirs) =
                Checkpointer::start(store.connect()?, |f| spawn("sqlite-checkpointer", f))?;
            (checkpointer, nudge) = (Some(started), Some(theirs));
        }
        let (queue, jobs) = mpsc::channel::<Msg>();
        let (mut durable, mut syncer) = (None, None);
        if let Some(wal) = wal {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(db)?;
            let (batches, ready) = mpsc::channel();
            let shared = Arc::new(Syncing::default());
            let (theirs, writer) = (Arc::clone(&shared), queue.clone());
            syncer = Some(spawn(
                "sqlite-syncer",
                Box::new(move || sync_loop(&wal, ready, &theirs, &writer)),
            )?);
            durable = Some(Durable { batches, shared });
        }
        let thread = spawn(
            "sqlite-writer",
            Box::new(move || write_loop(conn, jobs, durable, nudge)),
        )?;
        store.writer = Some(Writer {
            queue,
            thread: Some(thread),
            syncer,
            checkpointer,
        });
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(db)?;
        conn.busy_timeout(self.options.busy_timeout).map_err(db)?;
        let sync = match self.options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.options.max_idle {
            idle.push(conn);
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // `Stop` ends the writer loop after the writes already queued (the syncer's sender
        // keeps the queue open).
        if let Some(mut writer) = self.writer.take() {
            // First the checkpointer, which holds nothing of the store and has nothing left
            // to do (the last connection to close checkpoints and removes the log).
            drop(writer.checkpointer.take());
            let (thread, syncer) = (writer.thread.take(), writer.syncer.take());
            let _ = writer.queue.send(Msg::Stop);
            drop(writer);
            // Submitted work may hold what holds the store (a server's verifier), so the
            // last owner can let go of it on the writer or the syncer thread itself; each
            // ends by itself once its queue is closed and drained (the writer closes the
            // syncer's when it ends), and cannot wait for itself. On the writer, the syncer
            // cannot end before the writer does, so neither is waited for.
            let me = std::thread::current().id();
            if thread.as_ref().is_some_and(|t| t.thread().id() == me) {
                return;
            }
            for t in [thread, syncer].into_iter().flatten() {
                if t.thread().id() != me {
                    let _ = t.join();
                }
            }
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

fn raw_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawToken> {
    Ok(RawToken {
        id: row.get(0)?,
        user: row.get(1)?,
        kind: row.get(2)?,
        algorithm: row.get(3)?,
        digits: row.get(4)?,
        period: row.get(5)?,
        t0: row.get(6)?,
        key_id: row.get(7)?,
        nonce: row.get(8)?,
        sealed: row.get(9)?,
        next: row.get(10)?,
        drift: row.get(11)?,
        failures: row.get(12)?,
        last_failure_at: row.get(13)?,
        locked_at: row.get(14)?,
        enabled: row.get(15)?,
    })
}

/// Where a new audit line's predecessor comes from.
enum Prev {
    /// Known already (or none).
    Given(Option<i64>),
    /// The head on the line's token row, read by the `INSERT` itself.
    OnRow,
}

/// Inserts one audit line about `token`; the caller moves the chain's head.
fn insert_line(
    conn: &Conn<'_, '_>,
    token: Option<&str>,
    e: &AuditEvent,
    prev: Prev,
) -> Result<(), StoreError> {
    let (given, on_row) = match prev {
        Prev::Given(p) => (p, false),
        Prev::OnRow => (None, true),
    };
    let a = AuditColumns::of(e);
    conn.with(Sql::InsertLine, |s| {
        s.execute(params![
            token,
            a.user,
            a.action,
            a.outcome.as_ref(),
            a.at,
            a.caller,
            given,
            on_row,
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// Appends an audit line and, for a line about a token, makes it the head of that serial's
/// chain: on its token row, or in `audit_heads` when the serial has no row (unknown, or
/// deleted). Runs inside the caller's transaction, so the head cannot move in between.
fn insert_audit(conn: &Conn<'_, '_>, e: &AuditEvent) -> Result<(), StoreError> {
    let token = e.token.as_ref().map(TokenId::as_str);
    let (prev, on_row) = match token {
        None => (None, false),
        Some(t) => {
            let row: Option<Option<i64>> = conn
                .with(Sql::LastAuditOnRow, |s| {
                    s.query_row([t], |r| r.get(0)).optional()
                })
                .map_err(db)?;
            match row {
                Some(last) => (last, true),
                None => (
                    conn.with(Sql::LastAuditOfHead, |s| {
                        s.query_row([t], |r| r.get(0)).optional()
                    })
                    .map_err(db)?,
                    false,
                ),
            }
        }
    };
    insert_line(conn, token, e, Prev::Given(prev))?;
    let Some(t) = token else { return Ok(()) };
    let seq = conn.conn.last_insert_rowid();
    let sql = if on_row {
        Sql::MoveHeadOnRow
    } else {
        Sql::MoveHeadOfHead
    };
    conn.with(sql, |s| s.execute(params![t, seq])).map_err(db)?;
    Ok(())
}

/// Appends `e`, a line about the existing row `token`, and runs `update`, which changes that
/// row and must set its `last_audit` to the sequence number it is given; it says whether it
/// changed the row (`Some`) or not (`None`, and then the line is removed again). This is
/// [`insert_audit`] after the update in two statements instead of four: the line reads its
/// predecessor from the row in its own `INSERT`, and the head moves with the update itself
/// rather than in an update of its own. Run it inside a savepoint (as every write is), so an
/// error leaves neither the line nor the change.
fn audited_update<T>(
    conn: &Conn<'_, '_>,
    token: &TokenId,
    e: &AuditEvent,
    update: impl FnOnce(i64) -> Result<Option<T>, StoreError>,
) -> Result<Option<T>, StoreError> {
    debug_assert_eq!(
        e.token.as_ref(),
        Some(token),
        "a line about the row it changes"
    );
    insert_line(conn, Some(token.as_str()), e, Prev::OnRow)?;
    let seq = conn.conn.last_insert_rowid();
    let changed = update(seq)?;
    if changed.is_none() {
        conn.with(Sql::DeleteLine, |s| s.execute([seq]))
            .map_err(db)?;
    }
    Ok(changed)
}

/// The two single-token reads, spelled out so that a read builds no SQL text (the statement
/// cache is keyed by it). A test checks they select [`TOKEN_COLUMNS`].
const SELECT_BY_ID: &str = "SELECT id, user_id, kind, algorithm, digits, period, t0, key_id, \
     nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled \
     FROM tokens WHERE id = ?1";
const SELECT_BY_USER: &str = "SELECT id, user_id, kind, algorithm, digits, period, t0, key_id, \
     nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled \
     FROM tokens WHERE user_id = ?1";

fn select_one(conn: &Conn<'_, '_>, sql: Sql, key: &str) -> Result<Option<TokenRecord>, StoreError> {
    let raw = conn
        .with(sql, |s| s.query_row([key], raw_token).optional())
        .map_err(db)?;
    raw.map(RawToken::into_record).transpose()
}

/// The operations on one connection, inside whatever transaction it is in: a pooled
/// connection for [`Store::read`] (which offers only [`Reads`]), the writer's connection for
/// units of work (with its [`Held`] statements). Each change runs in a savepoint, so it is
/// atomic on its own inside the writer's batch, except the one that
/// [`Conn::unguarded`] spares it.
struct Conn<'h, 'c> {
    conn: &'c Connection,
    held: Option<&'h Held<'c>>,
}

impl<'c> Conn<'_, 'c> {
    /// A pooled reader's connection.
    fn reader(conn: &'c Connection) -> Self {
        Conn { conn, held: None }
    }

    /// Runs `f` with the statement `sql`: the writer's own (prepared once), else the one in
    /// the connection's cache.
    fn with<T>(
        &self,
        sql: Sql,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        if let Some(mut slot) = self
            .held
            .and_then(|h| h.statements[sql as usize].try_borrow_mut().ok())
        {
            let statement = match &mut *slot {
                Some(statement) => statement,
                empty => empty.insert(self.conn.prepare(sql.text())?),
            };
            return f(statement);
        }
        f(&mut *self.conn.prepare_cached(sql.text())?)
    }

    /// Runs `sql`, a statement without parameters.
    fn run(&self, sql: Sql) -> rusqlite::Result<()> {
        self.with(sql, |s| s.execute([])).map(drop)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Conn<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        in_savepoint(self, f)
    }

    /// Runs `f`, a change of two or more statements, without a savepoint of its own (which
    /// copies every page it touches to a sub-journal first: about a tenth of a
    /// verification). Only for changes that cannot fail half-way but by errors that end the
    /// whole transaction anyway (no constraint can refuse their second statement): should
    /// one fail all the same, the writer rolls the whole batch back and every unit of it
    /// hears the error, so that no half of a change is ever committed. Outside the writer
    /// it runs in a savepoint like every change.
    fn unguarded<T>(
        &self,
        f: impl FnOnce(&Conn<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(held) = self.held else {
            return self.write(f);
        };
        let result = f(self);
        if let Err(e) = &result {
            held.broken.borrow_mut().get_or_insert_with(|| e.clone());
        }
        result
    }
}

impl Reads for Conn<'_, '_> {
    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        select_one(self, Sql::SelectById, id.as_str())
    }

    fn token_of_user(&self, user: &UserId) -> Result<Option<TokenRecord>, StoreError> {
        select_one(self, Sql::SelectByUser, user.as_str())
    }

    fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn;
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
        );
        let limit = saturating_i64(limit);
        let raws = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params![after.map(TokenId::as_str), limit], raw_token)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db)?;
        raws.into_iter().map(RawToken::into_record).collect()
    }

    fn audit_trail(&self, token: &TokenId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let conn = self.conn;
        let limit = saturating_i64(limit);
        let rows = conn
            .prepare_cached(
                // Newest first along the token's chain (see migration 2).
                "WITH RECURSIVE chain (seq, n) AS (
                     SELECT COALESCE((SELECT last_audit FROM tokens WHERE id = ?1),
                                     (SELECT last FROM audit_heads WHERE token_id = ?1)), 1
                     UNION ALL
                     SELECT a.prev, chain.n + 1 FROM chain JOIN audit a ON a.seq = chain.seq
                      WHERE a.prev IS NOT NULL AND chain.n < ?2
                 )
                 SELECT a.token_id, a.user_id, a.action, a.outcome, a.at, a.caller
                   FROM chain JOIN audit a ON a.seq = chain.seq
                  WHERE ?2 > 0
                  ORDER BY a.seq DESC",
            )
            .and_then(|mut s| {
                s.query_map(params![token.as_str(), limit], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db)?;
        let mut events = rows
            .into_iter()
            .map(audit_event)
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    fn audit_page(
        &self,
        token: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn;
        let limit = saturating_i64(limit);
        let before = before.map(saturating_i64);
        let rows = conn
            .prepare_cached(
                // Newest first along the token's chain (see migration 2), from its head or
                // from the line before the cursor (which must be one of this token's).
                "WITH RECURSIVE chain (seq, n) AS (
                     SELECT CASE WHEN ?2 IS NULL
                            THEN COALESCE((SELECT last_audit FROM tokens WHERE id = ?1),
                                          (SELECT last FROM audit_heads WHERE token_id = ?1))
                            ELSE (SELECT prev FROM audit WHERE seq = ?2 AND token_id = ?1)
                            END, 1
                     UNION ALL
                     SELECT a.prev, chain.n + 1 FROM chain JOIN audit a ON a.seq = chain.seq
                      WHERE a.prev IS NOT NULL AND chain.n < ?3
                 )
                 SELECT a.seq, a.token_id, a.user_id, a.action, a.outcome, a.at, a.caller
                   FROM chain JOIN audit a ON a.seq = chain.seq
                  WHERE ?3 > 0
                  ORDER BY a.seq DESC",
            )
            .and_then(|mut s| {
                s.query_map(params![token.as_str(), before, limit], audit_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db)?;
        rows.into_iter()
            .map(|(seq, row)| audit_entry(seq, row))
            .collect()
    }

    fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn;
        let limit = saturating_i64(limit);
        let since = to_i64(since.0, "time")?;
        let after = saturating_i64(after.unwrap_or(0));
        let rows = conn
            .prepare_cached(
                "SELECT seq, token_id, user_id, action, outcome, at, caller FROM audit
                  WHERE seq > ?1 AND at >= ?2 ORDER BY seq LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![after, since, limit], audit_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db)?;
        rows.into_iter()
            .map(|(seq, row)| audit_entry(seq, row))
            .collect()
    }

    fn seeds_not_under(
        &self,
        current: &KeyId,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<(TokenId, SealedSeed)>, StoreError> {
        let conn = self.conn;
        let limit = saturating_i64(limit);
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens
              WHERE key_id <> ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let raws = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(
                    params![current.as_str(), after.map(TokenId::as_str), limit],
                    raw_token,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db)?;
        raws.into_iter()
            .map(|r| r.into_record().map(|t| (t.id, t.seed)))
            .collect()
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        sqlite_events::events_after(self.conn, after, limit)
    }
}

/// [`Tx::advance`]: the audit line, then the compare-and-set of the token row.
fn advance_row(
    tx: &Conn<'_, '_>,
    advance: &Advance,
    audit: &AuditEvent,
) -> Result<bool, StoreError> {
    let next = to_i64(advance.accepted.saturating_add(1), "counter")?;
    let lowest = to_i64(advance.lowest, "counter")?;
    let changed = audited_update(tx, &advance.token, audit, |seq| {
        let n = tx
            .with(Sql::Advance, |s| {
                s.execute(params![
                    advance.token.as_str(),
                    next,
                    advance.drift,
                    lowest,
                    advance.max_failures,
                    advance.unlock,
                    advance.bind.as_ref().map(UserId::as_str),
                    seq,
                ])
            })
            .map_err(|e| match &advance.bind {
                Some(user) if is_unique_violation(&e) => {
                    StoreError::UserTaken { user: user.clone() }
                }
                _ => db(e),
            })?;
        Ok((n == 1).then_some(()))
    })?;
    Ok(changed.is_some())
}

impl Tx for Conn<'_, '_> {
    fn insert_tokens(&self, tokens: &[NewToken], audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| {
            let columns = tokens.iter().map(TokenColumns::of).collect::<Vec<_>>();
            {
                let mut insert = tx
                    .conn
                    .prepare_cached(
                        // A serial enrolled again (or tried before it existed) continues its
                        // audit chain: the head moves from `audit_heads` onto the new row.
                        "INSERT INTO tokens (id, kind, algorithm, digits, period, t0, key_id,
                                         nonce, sealed, next_value, last_audit)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                             (SELECT last FROM audit_heads WHERE token_id = ?1))",
                    )
                    .map_err(db)?;
                let mut adopted = tx
                    .conn
                    .prepare_cached("DELETE FROM audit_heads WHERE token_id = ?1")
                    .map_err(db)?;
                for c in &columns {
                    let t = c.token;
                    insert
                        .execute(params![
                            t.id.as_str(),
                            c.kind,
                            c.algorithm,
                            c.digits,
                            c.period,
                            c.t0,
                            t.seed.key_id.as_str(),
                            &t.seed.nonce[..],
                            &t.seed.ciphertext,
                            c.next,
                        ])
                        .map_err(|e| {
                            if is_unique_violation(&e) {
                                StoreError::Duplicate {
                                    token: t.id.clone(),
                                }
                            } else {
                                db(e)
                            }
                        })?;
                    adopted.execute([t.id.as_str()]).map_err(db)?;
                }
            }
            insert_audit(tx, audit)
        })
    }

    fn advance(&self, advance: &Advance, audit: &AuditEvent) -> Result<bool, StoreError> {
        // Without a user to bind, no constraint can refuse the update after its audit line
        // went in: an accepted code, the hot path, needs no savepoint.
        if advance.bind.is_none() {
            self.unguarded(|tx| advance_row(tx, advance, audit))
        } else {
            self.write(|tx| advance_row(tx, advance, audit))
        }
    }

    fn record_failure(
        &self,
        token: &TokenId,
        now: UnixTime,
        max_failures: u32,
        audit: &AuditEvent,
        lock: (u32, &AuditEvent),
    ) -> Result<Option<u32>, StoreError> {
        self.write(|tx| {
            let now = to_i64(now.0, "time")?;
            let failures: Option<i64> = audited_update(tx, token, audit, |seq| {
                // Right-hand sides see the row before the update, so `failures + 1` is the new
                // count in both places.
                tx.with(Sql::RecordFailure, |s| {
                    s.query_row(params![token.as_str(), now, max_failures, seq], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .map_err(db)
            })?;
            let failures = failures
                .map(|f| {
                    u32::try_from(f).map_err(|_| StoreError::Corrupt {
                        token: token.to_string(),
                        reason: "bad failures".to_owned(),
                    })
                })
                .transpose()?;
            if failures.is_some_and(|f| f >= lock.0) {
                insert_audit(tx, lock.1)?;
            }
            Ok(failures)
        })
    }

    fn unlock(
        &self,
        token: &TokenId,
        locked_at: Option<UnixTime>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let locked_at = locked_at.map(|t| to_i64(t.0, "time")).transpose()?;
            let changed = tx
                .conn
                .prepare_cached(
                    "UPDATE tokens SET locked_at = NULL, failures = 0, last_failure_at = NULL
                  WHERE id = ?1 AND (?2 IS NULL OR locked_at = ?2)",
                )
                .and_then(|mut s| s.execute(params![token.as_str(), locked_at]))
                .map_err(db)?;
            if changed == 1 {
                insert_audit(tx, audit)?;
            }
            Ok(changed == 1)
        })
    }

    fn set_enabled(
        &self,
        token: &TokenId,
        enabled: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let changed = tx
                .conn
                .execute(
                    "UPDATE tokens SET enabled = ?2 WHERE id = ?1",
                    params![token.as_str(), enabled],
                )
                .map_err(db)?;
            if changed == 1 {
                insert_audit(tx, audit)?;
            }
            Ok(changed == 1)
        })
    }

    fn delete_token(&self, token: &TokenId, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.write(|tx| {
            // The audit trail outlives the token: its chain's head moves to `audit_heads`.
            tx.conn
                .execute(
                    "INSERT INTO audit_heads (token_id, last)
                  SELECT id, last_audit FROM tokens WHERE id = ?1 AND last_audit IS NOT NULL
             ON CONFLICT (token_id) DO UPDATE SET last = excluded.last",
                    [token.as_str()],
                )
                .map_err(db)?;
            let changed = tx
                .conn
                .execute("DELETE FROM tokens WHERE id = ?1", [token.as_str()])
                .map_err(db)?;
            if changed == 1 {
                insert_audit(tx, audit)?;
            }
            Ok(changed == 1)
        })
    }

    fn replace_seed(
        &self,
        token: &TokenId,
        old: &SealedSeed,
        new: &SealedSeed,
    ) -> Result<bool, StoreError> {
        self.write(|conn| {
            let changed = conn
                .conn
                .execute(
                    "UPDATE tokens SET key_id = ?2, nonce = ?3, sealed = ?4
                  WHERE id = ?1 AND key_id = ?5 AND nonce = ?6 AND sealed = ?7",
                    params![
                        token.as_str(),
                        new.key_id.as_str(),
                        &new.nonce[..],
                        &new.ciphertext,
                        old.key_id.as_str(),
                        &old.nonce[..],
                        &old.ciphertext,
                    ],
                )
                .map_err(db)?;
            Ok(changed == 1)
        })
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.write(|conn| insert_audit(conn, event))
    }

    fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        self.write(|tx| sqlite_events::claim(tx.conn, destination, holder, now_ms, lease_ms))
    }

    fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: &Delivery,
        dead: Option<&DeadLetter>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| sqlite_events::settle(tx.conn, destination, holder, delivery, dead))
    }
}

impl Store for SqliteStore {
    fn submit(&self, work: Box<dyn Work>) {
        let sent = match self.writer.as_ref() {
            Some(w) => w.queue.send(Msg::Work(work)).map_err(|e| match e.0 {
                Msg::Work(work) => Some(work),
                Msg::Synced | Msg::Stop => None,
            }),
            None => Err(Some(work)),
        };
        if let Err(Some(work)) = sent {
            work.finish(Err(writer_gone()));
        }
    }

    fn read(&self, reads: &mut dyn FnMut(&dyn Reads)) -> Result<(), StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        reads(&Conn::reader(&conn));
        // Reads open no transaction; a connection somehow left in one is not reused.
        if conn.is_autocommit() {
            self.give_back(conn);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditAction, AuditOutcome, work};

    /// Runs `f` as a unit of work on `store` and waits for its commit.
    fn write<T: Send + 'static>(
        store: &SqliteStore,
        f: impl FnOnce(&dyn Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        (store as &dyn Store).write(f)?
    }

    /// One token's trail as stored: (action, outcome) texts, oldest first.
    fn trail(store: &SqliteStore, token: &str) -> Vec<(String, String)> {
        let token = TokenId::new(token).unwrap();
        (store as &dyn Store)
            .reads(|r| r.audit_trail(&token, 100))
            .unwrap()
            .iter()
            .map(|e| (e.action.to_string(), e.outcome.to_string()))
            .collect()
    }

    #[test]
    fn single_reads_select_the_token_columns() {
        for (sql, key) in [(SELECT_BY_ID, "id"), (SELECT_BY_USER, "user_id")] {
            assert_eq!(
                sql,
                format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE {key} = ?1")
            );
        }
    }

    /// Writing an audit line builds no temporary table: the outbox trigger's condition
    /// (migration 4) compares instead of looking up an `IN` list, which SQLite did by
    /// building an index of the list for every line.
    #[test]
    fn an_audit_line_builds_no_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let mut explain = conn
            .prepare(
                "EXPLAIN INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                 VALUES ('T', NULL, 'verify', 'accepted', 1, 'test')",
            )
            .unwrap();
        let opcodes: Vec<String> = explain
            .query_map([], |r| r.get(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(opcodes.iter().any(|op| op == "Program"), "the trigger runs");
        assert!(
            !opcodes.iter().any(|op| op == "OpenEphemeral"),
            "{opcodes:?}"
        );
    }

    fn event(action: AuditAction, outcome: AuditOutcome) -> AuditEvent {
        AuditEvent {
            token: Some(TokenId::new("T").unwrap()),
            user: None,
            action,
            outcome,
            at: UnixTime(1_700_000_000),
            caller: crate::Caller::new("test").unwrap(),
        }
    }

    /// Submitted work runs on the writer and hears of its commit afterwards: each finish
    /// reads the trail through a pooled reader connection, which sees committed data only,
    /// and finds its unit's line there.
    #[test]
    fn submitted_work_finishes_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
        type Heard = (&'static str, Result<(), StoreError>, usize);
        let (heard, hear) = mpsc::channel::<Heard>();
        for (name, action) in [
            ("first", AuditAction::Enroll),
            ("second", AuditAction::Verify),
        ] {
            let (heard, reader) = (heard.clone(), store.clone());
            store.submit(work(
                move |tx: &dyn Tx| tx.append_audit(&event(action, AuditOutcome::Ok)),
                move |result| {
                    let seen = trail(&reader, "T").len();
                    heard.send((name, result.and_then(|r| r), seen)).unwrap();
                },
            ));
        }
        let mut got: Vec<Heard> = (0..2).map(|_| hear.recv().unwrap()).collect();
        got.sort_by_key(|(name, _, _)| *name);
        assert_eq!(got[0].0, "first");
        assert_eq!(got[0].1, Ok(()));
        assert!(got[0].2 >= 1, "{got:?}");
        assert_eq!(got[1], ("second", Ok(()), 2));
        let actions: Vec<String> = trail(&store, "T").into_iter().map(|(a, _)| a).collect();
        assert_eq!(actions, ["enroll", "verify"]);
    }

    /// Commits reach the database file before the writer's own checkpoint is due (fewer
    /// commits and frames than its backstop): the checkpointer copies them there (only a
    /// checkpoint writes that file).
    #[test]
    fn the_checkpointer_copies_commits_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let line = || event(AuditAction::Unlock, AuditOutcome::Ok);
        write(&store, move |tx| tx.append_audit(&line())).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = size();
        // About 20 audit lines to a 1 KiB page: ten new pages, in 200 commits.
        for _ in 0..200 {
            write(&store, move |tx| tx.append_audit(&line())).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let grown = before + 5 * PAGE_SIZE as u64;
        while size() < grown && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            size() >= grown,
            "the database file stayed at {} bytes (was {before})",
            size()
        );
    }

    /// A new database gets [`PAGE_SIZE`] pages, and keeps them when opened again.
    #[test]
    fn a_new_database_has_small_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        for _ in 0..2 {
            let store = SqliteStore::open(&path).unwrap();
            let mut e = event(AuditAction::Unlock, AuditOutcome::Ok);
            e.token = Some(TokenId::new("T").unwrap());
            write(&store, move |tx| tx.append_audit(&e)).unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, PAGE_SIZE);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// A database of schema 1 (audit lines found through an index on the token) gets its
    /// trails chained by migration 2, of kept tokens and of deleted ones alike, and new lines
    /// continue those chains.
    #[test]
    fn migration_2_chains_the_trails_of_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO tokens (id, kind, algorithm, digits, period, t0, key_id, nonce,
                                     sealed, next_value)
                 VALUES ('A', 'totp', 'SHA1', 6, 30, 0, 'k1', zeroblob(12), x'00', 0)",
                [],
            )
            .unwrap();
            // B was deleted under schema 1: only its lines are left.
            for (at, token, action) in [
                (1, Some("A"), "enroll"),
                (2, Some("B"), "verify"),
                (3, None, "import"),
                (4, Some("A"), "verify"),
                (5, Some("B"), "delete"),
                (6, Some("A"), "disable"),
            ] {
                conn.execute(
                    "INSERT INTO audit (token_id, user_id, action, outcome, at, caller)
                     VALUES (?1, NULL, ?2, 'ok', ?3, 'test')",
                    params![token, action, at],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let actions =
            |t: &str| -> Vec<String> { trail(&store, t).into_iter().map(|(a, _)| a).collect() };
        assert_eq!(actions("A"), ["enroll", "verify", "disable"]);
        assert_eq!(actions("B"), ["verify", "delete"]);
        for t in ["A", "B"] {
            let mut e = event(AuditAction::Unlock, AuditOutcome::Ok);
            e.token = Some(TokenId::new(t).unwrap());
            write(&store, move |tx| tx.append_audit(&e)).unwrap();
        }
        assert_eq!(actions("A"), ["enroll", "verify", "disable", "unlock"]);
        assert_eq!(actions("B"), ["verify", "delete", "unlock"]);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // An existing file keeps its pages (SQLite's default then).
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, 4096);
        let index: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'audit_by_token'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(index, None);
    }

    /// A state change that finds the row moved on (a lost compare-and-set, a locked token)
    /// leaves no audit line behind, and the lines that stay form one chain.
    #[test]
    fn changes_that_do_not_apply_leave_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO tokens (id, kind, algorithm, digits, period, t0, key_id, nonce,
                                     sealed, next_value)
                 VALUES ('T', 'hotp', 'SHA1', 6, 30, 0, 'k1', zeroblob(12), x'00', 0)",
                [],
            )
            .unwrap();
        let token = TokenId::new("T").unwrap();
        let advance = Advance {
            token: token.clone(),
            lowest: 5,
            accepted: 5,
            drift: 0,
            max_failures: 3,
            unlock: false,
            bind: None,
        };
        let now = UnixTime(1_700_000_000);
        let line = |outcome| event(AuditAction::Verify, outcome);
        let enroll = event(AuditAction::Enroll, AuditOutcome::Ok);
        write(&store, move |tx| tx.append_audit(&enroll)).unwrap();
        let (a, accepted) = (advance.clone(), line(AuditOutcome::Accepted));
        assert!(write(&store, move |tx| tx.advance(&a, &accepted)).unwrap());
        let (a, lost) = (advance.clone(), line(AuditOutcome::Replayed));
        assert!(!write(&store, move |tx| tx.advance(&a, &lost)).unwrap());
        for n in 1..=3 {
            let (t, failed) = (token.clone(), line(AuditOutcome::Rejected));
            let lock = event(AuditAction::Lock, AuditOutcome::Ok);
            let f = write(&store, move |tx| {
                tx.record_failure(&t, now, 3, &failed, (3, &lock))
            })
            .unwrap();
            assert_eq!(f, Some(n));
        }
        // Locked now: the failure is not recorded, and neither is its line.
        let (t, refused) = (token.clone(), line(AuditOutcome::Locked));
        let lock = event(AuditAction::Lock, AuditOutcome::Ok);
        let locked = write(&store, move |tx| {
            tx.record_failure(&t, now, 3, &refused, (3, &lock))
        });
        assert_eq!(locked.unwrap(), None);
        let mut later = advance.clone();
        (later.lowest, later.accepted) = (9, 9);
        let locked = line(AuditOutcome::Locked);
        assert!(!write(&store, move |tx| tx.advance(&later, &locked.clone())).unwrap());
        // An activation that does not apply leaves neither its line nor its event.
        let mut later = advance.clone();
        (later.lowest, later.accepted) = (9, 9);
        let activated = event(AuditAction::Activate, AuditOutcome::Accepted);
        assert!(!write(&store, move |tx| tx.advance(&later, &activated)).unwrap());
        let events: Vec<_> = (&store as &dyn Store)
            .reads(|r| r.events_after(0, 10))
            .unwrap()
            .iter()
            .map(|e| (e.id, e.kind.as_str()))
            .collect();
        assert_eq!(events, [(1, "token.enrolled"), (2, "token.locked")]);
        let lines = trail(&store, "T");
        let lines: Vec<(&str, &str)> = lines.iter().map(|(a, o)| (&**a, &**o)).collect();
        assert_eq!(
            lines,
            [
                ("enroll", "ok"),
                ("verify", "accepted"),
                ("verify", "rejected"),
                ("verify", "rejected"),
                ("verify", "rejected"),
                ("lock", "ok")
            ]
        );
        let lines: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(lines, 6);
    }

    /// An accepted code's change runs without a savepoint (`Conn::unguarded`): when its
    /// second statement fails all the same (here a trigger refuses the update), the whole
    /// batch is rolled back, so its audit line does not stay behind without the change.
    #[test]
    fn a_change_failing_half_way_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let outside = Connection::open(&path).unwrap();
        outside
            .execute(
                "INSERT INTO tokens (id, kind, algorithm, digits, period, t0, key_id, nonce,
                                     sealed, next_value)
                 VALUES ('T', 'hotp', 'SHA1', 6, 30, 0, 'k1', zeroblob(12), x'00', 0)",
                [],
            )
            .unwrap();
        outside
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE UPDATE OF next_value ON tokens
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let advance = Advance {
            token: TokenId::new("T").unwrap(),
            lowest: 5,
            accepted: 5,
            drift: 0,
            max_failures: 3,
            unlock: false,
            bind: None,
        };
        let (a, line) = (
            advance.clone(),
            event(AuditAction::Verify, AuditOutcome::Accepted),
        );
        let refused = write(&store, move |tx| tx.advance(&a, &line));
        assert!(
            matches!(&refused, Err(StoreError::Database { reason, .. }) if reason.contains("refused")),
            "{refused:?}"
        );
        let lines: i64 = outside
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(lines, 0);
        let next: i64 = outside
            .query_row("SELECT next_value FROM tokens WHERE id = 'T'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(next, 0);
        // The writer goes on: without the trigger the same change applies, with its line.
        outside.execute_batch("DROP TRIGGER refuse").unwrap();
        let (a, line) = (advance, event(AuditAction::Verify, AuditOutcome::Accepted));
        assert!(write(&store, move |tx| tx.advance(&a, &line)).unwrap());
        assert_eq!(
            trail(&store, "T"),
            [("verify".to_owned(), "accepted".to_owned())]
        );
    }

    /// A stored action or outcome outside the audit vocabulary is a corrupt row, not a new
    /// value passed on as text.
    #[test]
    fn unknown_audit_text_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        for (action, outcome) in [("frobnicate", "ok"), ("verify", "3 tokens")] {
            Connection::open(&path)
                .unwrap()
                .execute(
                    "INSERT INTO audit (token_id, action, outcome, at, caller)
                     VALUES (NULL, ?1, ?2, 1, 'test')",
                    params![action, outcome],
                )
                .unwrap();
            let read = (&store as &dyn Store).reads(|r| r.audit_since(UnixTime(0), None, 10));
            assert!(
                matches!(read, Err(StoreError::Corrupt { .. })),
                "{action} {outcome}: {read:?}"
            );
            Connection::open(&path)
                .unwrap()
                .execute("DELETE FROM audit", [])
                .unwrap();
        }
    }

    #[test]
    fn a_new_database_and_its_wal_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verifier.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let event = AuditEvent {
            token: None,
            user: None,
            action: AuditAction::Enroll,
            outcome: AuditOutcome::Ok,
            at: UnixTime(1_700_000_000),
            caller: crate::Caller::new("test").unwrap(),
        };
        write(&store, move |tx| tx.append_audit(&event)).unwrap();
        for name in ["verifier.sqlite", "verifier.sqlite-wal"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }
    }
}
