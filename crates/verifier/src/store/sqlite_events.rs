//! The SQLite store's outbox and delivery cursors (see `events.rs`): the migration that adds
//! them, and the statements that read events and move a destination's cursor. Kept apart
//! from `sqlite.rs`, whose statements it does not touch: the trigger writes each event in
//! the statement that writes its audit line.

use rusqlite::{Connection, OptionalExtension, params};

use super::events::event_condition;
use super::sql::{
    AuditRow, DeliveryColumns, DeliveryRow, saturating_i64, to_delivery, to_event, to_i64,
};
use super::{Claim, DeadLetter, Delivery, Event, StoreError};

/// Migration 3: the outbox, written by triggers on the audit table, and delivery state. A line
/// removed again in its own savepoint (a change that did not apply) takes its event with it.
pub(super) const MIGRATION: &str = concat!(
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        audit_seq INTEGER NOT NULL
     );
     CREATE INDEX events_by_line ON events (audit_seq);
     CREATE TRIGGER audit_event AFTER INSERT ON audit WHEN ",
    event_condition!("NEW"),
    " BEGIN INSERT INTO events (audit_seq) VALUES (NEW.seq); END;
     CREATE TRIGGER audit_event_gone AFTER DELETE ON audit WHEN ",
    event_condition!("OLD"),
    " BEGIN DELETE FROM events WHERE audit_seq = OLD.seq; END;
     CREATE TABLE webhook_cursors (
        name TEXT PRIMARY KEY NOT NULL,
        handled INTEGER NOT NULL,
        holder TEXT NOT NULL,
        lease_until INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        failing_since INTEGER,
        retry_at INTEGER NOT NULL DEFAULT 0,
        dead INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;
     CREATE TABLE webhook_dead (
        name TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (name, event_id)
     ) WITHOUT ROWID;"
);

/// [`event_condition`] spelled as equalities: SQLite evaluates an `IN` list in a trigger's
/// `WHEN` by building a temporary index of the list every time the trigger runs, which cost
/// a verification (whose line is no event) about 22,000 instructions, over a fifth of it.
/// The same truth for every line: `action` and `outcome` are `NOT NULL` text.
macro_rules! event_condition_eq {
    ($row:literal) => {
        concat!(
            "(",
            $row,
            ".action = 'lock' OR ",
            $row,
            ".action = 'unlock' OR ",
            $row,
            ".action = 'auto-unlock' OR ",
            $row,
            ".action = 'disable' OR ",
            $row,
            ".action = 'enroll' OR ",
            $row,
            ".action = 'import' OR ",
            $row,
            ".action = 'rotate' OR ",
            $row,
            ".action = 'apikey-revoke' OR ",
            $row,
            ".action = 'rejected-burst' OR ((",
            $row,
            ".action = 'activate' OR ",
            $row,
            ".action = 'resync') AND ",
            $row,
            ".outcome = 'accepted'))"
        )
    };
}

/// Migration 4: the triggers of migration 3 with [`event_condition_eq`], which needs no
/// temporary index per audit line.
pub(super) const MIGRATION_EQ: &str = concat!(
    "DROP TRIGGER audit_event;
     DROP TRIGGER audit_event_gone;
     CREATE TRIGGER audit_event AFTER INSERT ON audit WHEN ",
    event_condition_eq!("NEW"),
    " BEGIN INSERT INTO events (audit_seq) VALUES (NEW.seq); END;
     CREATE TRIGGER audit_event_gone AFTER DELETE ON audit WHEN ",
    event_condition_eq!("OLD"),
    " BEGIN DELETE FROM events WHERE audit_seq = OLD.seq; END;"
);

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database {
        backend: "sqlite",
        reason: e.to_string(),
    }
}

pub(super) fn events_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let after = saturating_i64(after);
    let limit = saturating_i64(limit);
    let rows = conn
        .prepare_cached(
            "SELECT e.id, a.seq, a.token_id, a.user_id, a.action, a.outcome, a.at, a.caller
               FROM events e JOIN audit a ON a.seq = e.audit_seq
              WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![after, limit], |r| {
                let row: AuditRow = (
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                );
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, row))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db)?;
    rows.into_iter()
        .map(|(id, seq, row)| to_event(id, seq, row))
        .collect()
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

pub(super) fn claim(
    conn: &Connection,
    destination: &str,
    holder: &str,
    now_ms: u64,
    lease_ms: u64,
) -> Result<Claim, StoreError> {
    let now = to_i64(now_ms, "time")?;
    let until = to_i64(now_ms.saturating_add(lease_ms), "time")?;
    let held = conn
        .prepare_cached(
            "INSERT INTO webhook_cursors (name, handled, holder, lease_until)
             VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM events), ?2, ?4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                                              lease_until = excluded.lease_until
              WHERE webhook_cursors.holder = excluded.holder OR webhook_cursors.lease_until <= ?3
             RETURNING handled, attempts, failing_since, retry_at, dead",
        )
        .and_then(|mut s| {
            s.query_row(params![destination, holder, now, until], delivery_row)
                .optional()
        })
        .map_err(db)?;
    if let Some(row) = held {
        return Ok(Claim {
            delivery: to_delivery(row)?,
            held: true,
        });
    }
    let row = conn
        .prepare_cached(
            "SELECT handled, attempts, failing_since, retry_at, dead
               FROM webhook_cursors WHERE name = ?1",
        )
        .and_then(|mut s| s.query_row([destination], delivery_row))
        .map_err(db)?;
    Ok(Claim {
        delivery: to_delivery(row)?,
        held: false,
    })
}

pub(super) fn settle(
    conn: &Connection,
    destination: &str,
    holder: &str,
    d: &Delivery,
    dead: Option<&DeadLetter>,
) -> Result<bool, StoreError> {
    let c = DeliveryColumns::of(d)?;
    let n = conn
        .prepare_cached(
            "UPDATE webhook_cursors
                SET handled = ?3, attempts = ?4, failing_since = ?5, retry_at = ?6, dead = ?7
              WHERE name = ?1 AND holder = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                destination,
                holder,
                c.handled,
                c.attempts,
                c.failing_since,
                c.retry_at,
                c.dead,
            ])
        })
        .map_err(db)?;
    if let (1, Some(dead)) = (n, dead) {
        let (event, at) = (to_i64(dead.event, "event id")?, to_i64(dead.at, "time")?);
        conn.prepare_cached(
            "INSERT OR IGNORE INTO webhook_dead (name, event_id, at, reason)
                 VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![destination, event, at, dead.reason]))
        .map_err(db)?;
    }
    Ok(n == 1)
}
