//! The SQLite store's checkpointer: a thread of its own that copies committed pages from the
//! write-ahead log into the database file, so that the writer does not.
//!
//! SQLite checkpoints on the connection that commits, once the log holds
//! `wal_autocheckpoint` frames: it fsyncs the log, copies every page changed since the last
//! checkpoint into the database file, fsyncs that, and the next transaction starts the log
//! again from its beginning, with one more fsync for the log's new header. On the store's
//! writer that stalls every caller: no batch commits and no answer leaves meanwhile. With
//! SQLite's default of 1,000 frames and about two frames per verification, under `cargo xtask
//! bench-verifier` the writer checkpointed once every 500 or so verifications (some 70 times a
//! second), each time with three fsyncs taking 1.1 to 1.6 ms between them (strace).
//!
//! So the writer checkpoints only as a backstop ([`backstop`]), and this
//! thread, on its own connection, runs `PRAGMA wal_checkpoint(PASSIVE)` a few milliseconds
//! after commits: a passive checkpoint neither waits for the writer nor blocks it, and SQLite
//! keeps its order (the log is fsynced before any page of it reaches the database file, and
//! the database file before the log is started again). When the writer's own checkpoint comes
//! due, little is left to copy. The log starts again only after a checkpoint that left
//! nothing behind, which under steady load is the writer's; its length stays bounded by the
//! backstop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use std::ffi::c_int;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

/// Frames in the write-ahead log at which the writer checkpoints by itself (SQLite's
/// `wal_autocheckpoint` has 1,000): 4 MiB of log with 1 KiB pages, one hash table of SQLite's
/// log index. Under load the checkpointer has copied most of them by then.
const WRITER_CHECKPOINT_FRAMES: c_int = 4096;

/// Commits at which the writer checkpoints by itself even with fewer frames in the log.
/// SQLite's log index finds a page's newest frame by probing one hash slot after the other,
/// and each commit that writes a page again (the audit trail's last page, every time) makes
/// that page's run of slots one longer, for every later commit to probe through. With one
/// verification per commit, as when callers come one at a time, a log of 4,096 frames made
/// that probing a third of a verification's instructions (74,500 instead of 56,300, `cargo
/// bench -p codereader-verifier --bench instructions`); SQLite's default of 1,000 frames
/// came to about 280 such commits. Under load, with a batch of verifications per commit, the
/// frames come first.
const WRITER_CHECKPOINT_COMMITS: u32 = 256;

/// How long the checkpointer lets commits gather before it checkpoints them.
const GATHER: Duration = Duration::from_millis(10);

/// Makes the writer's connection `conn` checkpoint by itself only as the backstop: once the
/// log holds [`WRITER_CHECKPOINT_FRAMES`] frames or [`WRITER_CHECKPOINT_COMMITS`] commits.
/// Replaces SQLite's own rule (`wal_autocheckpoint`, which is the same hook).
pub(super) fn backstop(conn: &mut Connection) -> rusqlite::Result<()> {
    let (mut frames_before, mut commits) = (0, 0_u32);
    conn.wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
        // Fewer frames than after the last commit: the log started again.
        if frames < frames_before {
            commits = 0;
        }
        frames_before = frames;
        commits = commits.saturating_add(1);
        if frames >= WRITER_CHECKPOINT_FRAMES || commits >= WRITER_CHECKPOINT_COMMITS {
            // As SQLite's own hook: passive, and a failure (the checkpointer busy with the
            // log) is tried again at the next commit. An error returned here would be
            // reported as the commit's, which has happened all the same.
            let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
        }
        Ok(())
    }))
}

/// What the writer and the checkpointer share.
#[derive(Default)]
struct Shared {
    /// Commits so far (the writer counts them).
    commits: AtomicU64,
    /// Set by the checkpointer before it sleeps until the next commit.
    idle: AtomicBool,
    /// Set when the store is dropped.
    stop: AtomicBool,
}

/// The writer's side: says that it committed.
pub(super) struct Nudge {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Nudge {
    /// Counts a commit, and wakes the checkpointer if it sleeps (one atomic operation
    /// otherwise).
    pub(super) fn committed(&self) {
        self.shared.commits.fetch_add(1, Ordering::SeqCst);
        if self.shared.idle.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

/// The store's side: ends the thread.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread, with `spawn` (the store's, which names its threads and words the
    /// error), on `conn`, a connection of its own to the store's database. Returns the
    /// checkpointer and the writer's [`Nudge`].
    ///
    /// # Errors
    /// What `spawn` returns when the thread could not be started.
    pub(super) fn start<E>(
        conn: Connection,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> Result<JoinHandle<()>, E>,
    ) -> Result<(Checkpointer, Nudge), E> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = spawn(Box::new(move || run(&conn, &theirs)))?;
        let nudge = Nudge {
            shared: Arc::clone(&shared),
            thread: thread.thread().clone(),
        };
        Ok((
            Checkpointer {
                shared,
                thread: Some(thread),
            },
            nudge,
        ))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    let mut seen = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let commits = shared.commits.load(Ordering::SeqCst);
        if commits == seen {
            // Nothing new: sleep until the next commit. The writer that commits after the
            // flag is set wakes this thread; one that committed before it is seen by the
            // second look.
            shared.idle.store(true, Ordering::SeqCst);
            if shared.commits.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst)
            {
                std::thread::park();
            }
            shared.idle.store(false, Ordering::SeqCst);
            continue;
        }
        std::thread::park_timeout(GATHER);
        if shared.stop.load(Ordering::SeqCst) {
            // The store's last connection to close checkpoints.
            break;
        }
        seen = shared.commits.load(Ordering::SeqCst);
        // A failure (the log busy with another checkpoint, an I/O error) leaves the log as
        // it was: the next commit tries again, and the writer's own checkpoint and commits
        // report what persists.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits of one small change each: the writer's connection checkpoints by itself once
    /// [`WRITER_CHECKPOINT_COMMITS`] of them are in the log, long before SQLite's own rule
    /// (1,000 frames) would have.
    #[test]
    fn the_writer_checkpoints_after_so_many_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "page_size", 1024).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        backstop(&mut conn).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let commit = |n: u32| {
            conn.execute("INSERT INTO t (n, v) VALUES (?1, zeroblob(100))", [n])
                .unwrap();
        };
        let before = size();
        for n in 0..WRITER_CHECKPOINT_COMMITS - 1 {
            commit(n);
        }
        assert_eq!(size(), before, "no checkpoint yet");
        commit(WRITER_CHECKPOINT_COMMITS);
        assert!(size() > before + 10 * 1024, "{} bytes", size());
    }
}
