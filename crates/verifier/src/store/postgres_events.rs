//! The PostgreSQL store's outbox and delivery cursors (see `events.rs`): the migration that
//! adds them, and the statements that read events and move a destination's cursor. Kept
//! apart from `postgres.rs`, whose statements it does not touch: the trigger writes each
//! event in the statement that writes its audit line.

use super::pgclient::PgClient;
use super::postgres::db;

use super::events::event_condition;
use super::sql::{DeliveryColumns, corrupt, saturating_i64, to_delivery, to_event, to_i64};
use super::{Claim, DeadLetter, Delivery, Event, StoreError};

/// Migration 2: the outbox, written by a trigger on the audit table, and delivery state.
///
/// The trigger first takes a transaction-level advisory lock, so transactions that write an
/// event commit one at a time, in the order of their ids: a reader that saw event N never
/// sees a smaller id appear later. Only lines that are events take it (the trigger's `WHEN`),
/// so verifications that lock nothing never wait on it.
pub(super) const MIGRATION: &str = concat!(
    "CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        audit_seq BIGINT NOT NULL
     );
     CREATE FUNCTION codereader_audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        PERFORM pg_advisory_xact_lock(7165249063936376180);
        INSERT INTO events (audit_seq) VALUES (NEW.seq);
        RETURN NULL;
     END $$;
     CREATE TRIGGER audit_event AFTER INSERT ON audit FOR EACH ROW WHEN ",
    event_condition!("NEW"),
    " EXECUTE FUNCTION codereader_audit_event();
     CREATE TABLE webhook_cursors (
        name TEXT PRIMARY KEY,
        handled BIGINT NOT NULL,
        holder TEXT NOT NULL,
        lease_until BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        failing_since BIGINT,
        retry_at BIGINT NOT NULL DEFAULT 0,
        dead BIGINT NOT NULL DEFAULT 0
     );
     CREATE TABLE webhook_dead (
        name TEXT NOT NULL,
        event_id BIGINT NOT NULL,
        at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (name, event_id)
     );"
);

pub(super) fn events_after(
    client: &mut PgClient,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let after = saturating_i64(after);
    let limit = saturating_i64(limit);
    let rows = client
        .query(
            "SELECT e.id, a.seq, a.token_id, a.user_id, a.action, a.outcome, a.at, a.caller
               FROM events e JOIN audit a ON a.seq = e.audit_seq
              WHERE e.id > $1 ORDER BY e.id LIMIT $2",
            &[&after, &limit],
        )
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let row = (
                r.try_get(2).map_err(db)?,
                r.try_get(3).map_err(db)?,
                r.try_get(4).map_err(db)?,
                r.try_get(5).map_err(db)?,
                r.try_get(6).map_err(db)?,
                r.try_get(7).map_err(db)?,
            );
            to_event(r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?, row)
        })
        .collect()
}

/// A delivery cursor selected as `handled, attempts, failing_since, retry_at, dead`.
fn delivery(r: &tokio_postgres::Row) -> Result<Delivery, StoreError> {
    to_delivery((
        r.try_get(0).map_err(db)?,
        r.try_get(1).map_err(db)?,
        r.try_get(2).map_err(db)?,
        r.try_get(3).map_err(db)?,
        r.try_get(4).map_err(db)?,
    ))
}

pub(super) fn claim(
    client: &mut PgClient,
    destination: &str,
    holder: &str,
    now_ms: u64,
    lease_ms: u64,
) -> Result<Claim, StoreError> {
    let now = to_i64(now_ms, "time")?;
    let until = to_i64(now_ms.saturating_add(lease_ms), "time")?;
    // The upsert locks the row: of two servers claiming at once, the second sees the first's
    // lease and gets no row back.
    let held = client
        .query_opt(
            "INSERT INTO webhook_cursors (name, handled, holder, lease_until)
             VALUES ($1, (SELECT COALESCE(MAX(id), 0) FROM events), $2, $4)
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,
                                              lease_until = EXCLUDED.lease_until
              WHERE webhook_cursors.holder = EXCLUDED.holder
                 OR webhook_cursors.lease_until <= $3
             RETURNING handled, attempts, failing_since, retry_at, dead",
            &[&destination, &holder, &now, &until],
        )
        .map_err(db)?;
    if let Some(row) = held {
        return Ok(Claim {
            delivery: delivery(&row)?,
            held: true,
        });
    }
    let row = client
        .query_opt(
            "SELECT handled, attempts, failing_since, retry_at, dead
               FROM webhook_cursors WHERE name = $1",
            &[&destination],
        )
        .map_err(db)?
        .ok_or_else(|| corrupt("a delivery cursor vanished"))?;
    Ok(Claim {
        delivery: delivery(&row)?,
        held: false,
    })
}

pub(super) fn settle(
    client: &mut PgClient,
    destination: &str,
    holder: &str,
    d: &Delivery,
    dead: Option<&DeadLetter>,
) -> Result<bool, StoreError> {
    let c = DeliveryColumns::of(d)?;
    let event = dead.map(|x| to_i64(x.event, "event id")).transpose()?;
    let at = dead.map(|x| to_i64(x.at, "time")).transpose()?;
    let reason = dead.map(|x| x.reason.as_str());
    let row = client
        .query_opt(
            "WITH moved AS (
                UPDATE webhook_cursors
                   SET handled = $3, attempts = $4, failing_since = $5, retry_at = $6, dead = $7
                 WHERE name = $1 AND holder = $2
             RETURNING name),
             given_up AS (
                INSERT INTO webhook_dead (name, event_id, at, reason)
                SELECT name, $8::BIGINT, $9::BIGINT, $10::TEXT FROM moved
                 WHERE $8::BIGINT IS NOT NULL
                ON CONFLICT DO NOTHING)
             SELECT COUNT(*) FROM moved",
            &[
                &destination,
                &holder,
                &c.handled,
                &c.attempts,
                &c.failing_since,
                &c.retry_at,
                &c.dead,
                &event,
                &at,
                &reason,
            ],
        )
        .map_err(db)?
        .ok_or_else(|| corrupt("no count of settled deliveries"))?;
    let moved: i64 = row.try_get(0).map_err(db)?;
    Ok(moved == 1)
}
