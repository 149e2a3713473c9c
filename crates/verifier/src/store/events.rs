//! Events people and security teams act on (a token locked, unlocked, disabled, enrolled,
//! activated or resynced, a key rotation, an API key revoked, a client past its failure
//! budget), and the state of their delivery to each destination.
//!
//! An event is never written on its own: it is the outbox row of an audit line whose action
//! and outcome say something happened ([`EventKind::of`]). The SQL stores add that row in the
//! database itself, by a trigger on the audit table, so it commits with the change and its
//! line or not at all, whichever statement wrote the line; the memory store adds it where it
//! pushes the line. Event ids grow in commit order (PostgreSQL serialises the transactions
//! that write an event on an advisory lock, held from the event's insert to the commit), so
//! a reader that resumes after the last id it saw misses nothing.
//!
//! Delivery is tracked per destination by a cursor row: the last event handled, the attempts
//! at the next one, since when it has failed, and a lease naming the one process that
//! delivers to it ([`Tx::claim_delivery`](super::Tx::claim_delivery)), so several servers on
//! one database deliver each attempt once between them.

use codereader_otp::UnixTime;

use super::{AuditAction, AuditEntry, AuditOutcome};
use crate::token::TokenId;

/// The audit lines that are events, as an SQL condition on the row `$row` (`NEW` or `OLD`);
/// it must say what [`EventKind::of`] says (a test of every store checks it does).
macro_rules! event_condition {
    ($row:literal) => {
        concat!(
            "(",
            $row,
            ".action IN ('lock', 'unlock', 'auto-unlock', 'disable', 'enroll', 'import', \
             'rotate', 'apikey-revoke', 'rejected-burst') OR (",
            $row,
            ".action IN ('activate', 'resync') AND ",
            $row,
            ".outcome = 'accepted'))"
        )
    };
}
pub(crate) use event_condition;

/// What happened, as an event names it ([`EventKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `token.locked`: failures locked a token (for good or for a while, [`Event::why`]).
    TokenLocked,
    /// `token.unlocked`: an administrator unlocked a token, or its temporary lock ran out.
    TokenUnlocked,
    /// `token.disabled`: an administrator disabled a token.
    TokenDisabled,
    /// `token.enrolled`: tokens were enrolled or imported ([`Event::count`] of them).
    TokenEnrolled,
    /// `token.activated`: a token was bound to its user by a right code.
    TokenActivated,
    /// `token.resynced`: two consecutive codes moved a token's drift or counter.
    TokenResynced,
    /// `kek.rotated`: seeds were re-sealed under the keyring's current key.
    KekRotated,
    /// `apikey.revoked`: an API key was revoked.
    ApiKeyRevoked,
    /// `verify.rejected_burst`: a client went past its failure budget.
    VerifyRejectedBurst,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::TokenLocked,
        EventKind::TokenUnlocked,
        EventKind::TokenDisabled,
        EventKind::TokenEnrolled,
        EventKind::TokenActivated,
        EventKind::TokenResynced,
        EventKind::KekRotated,
        EventKind::ApiKeyRevoked,
        EventKind::VerifyRejectedBurst,
    ];

    /// The name consumers see (`token.locked`, ...); stable.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TokenLocked => "token.locked",
            EventKind::TokenUnlocked => "token.unlocked",
            EventKind::TokenDisabled => "token.disabled",
            EventKind::TokenEnrolled => "token.enrolled",
            EventKind::TokenActivated => "token.activated",
            EventKind::TokenResynced => "token.resynced",
            EventKind::KekRotated => "kek.rotated",
            EventKind::ApiKeyRevoked => "apikey.revoked",
            EventKind::VerifyRejectedBurst => "verify.rejected_burst",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The event an audit line is, if it is one.
    pub fn of(action: AuditAction, outcome: &AuditOutcome) -> Option<EventKind> {
        Some(match action {
            AuditAction::Lock => EventKind::TokenLocked,
            AuditAction::Unlock | AuditAction::AutoUnlock => EventKind::TokenUnlocked,
            AuditAction::Disable => EventKind::TokenDisabled,
            AuditAction::Enroll | AuditAction::Import => EventKind::TokenEnrolled,
            AuditAction::Rotate => EventKind::KekRotated,
            AuditAction::ApiKeyRevoke => EventKind::ApiKeyRevoked,
            AuditAction::RejectedBurst => EventKind::VerifyRejectedBurst,
            AuditAction::Activate if *outcome == AuditOutcome::Accepted => {
                EventKind::TokenActivated
            }
            AuditAction::Resync if *outcome == AuditOutcome::Accepted => EventKind::TokenResynced,
            _ => return None,
        })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: its id (growing in commit order, the idempotency key of its delivery), what it
/// is, and the audit line it belongs to (time, token, caller). Never a code, seed or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its id.
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// The audit line that records it.
    pub audit: AuditEntry,
}

impl Event {
    /// Builds an event from its id and audit line; `None` if the line is no event (a row that
    /// should not be in the outbox).
    pub fn new(id: u64, audit: AuditEntry) -> Option<Event> {
        let kind = EventKind::of(audit.event.action, &audit.event.outcome)?;
        Some(Event { id, kind, audit })
    }

    /// The token concerned (none for a key rotation, an import, an API key or a client).
    pub fn token(&self) -> Option<&TokenId> {
        self.audit.event.token.as_ref()
    }

    /// When.
    pub fn at(&self) -> UnixTime {
        self.audit.event.at
    }

    /// Why, for a lock or unlock: `failures` (locked until an administrator unlocks),
    /// `temporary` (locked for a while), `admin` (an administrator unlocked), `expired` (a
    /// temporary lock ran out).
    pub fn why(&self) -> Option<&'static str> {
        let e = &self.audit.event;
        match (self.kind, e.action) {
            (EventKind::TokenLocked, _) if e.outcome == AuditOutcome::Temporary => {
                Some("temporary")
            }
            (EventKind::TokenLocked, _) => Some("failures"),
            (EventKind::TokenUnlocked, AuditAction::AutoUnlock) => Some("expired"),
            (EventKind::TokenUnlocked, _) => Some("admin"),
            _ => None,
        }
    }

    /// How many tokens an enrolment or import added.
    pub fn count(&self) -> Option<u64> {
        match self.audit.event.outcome {
            AuditOutcome::Enrolled { count } => Some(count),
            AuditOutcome::Imported { imported, .. } => Some(imported),
            _ => None,
        }
    }
}

/// Where delivery to one destination stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Events up to this id are handled (delivered, filtered out or dead-lettered).
    pub after: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    /// Since when (milliseconds) the next event has failed, if it has.
    pub failing_since: Option<u64>,
    /// Not before this (milliseconds) is the next attempt due.
    pub retry_at: u64,
    /// Events given up on, in all.
    pub dead: u64,
}

/// A destination's [`Delivery`] and whether the caller holds its lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Where delivery stands.
    pub delivery: Delivery,
    /// Whether the caller may deliver (it holds the lease until the time it asked for).
    pub held: bool,
}

/// An event given up on, recorded with the cursor that moves past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event.
    pub event: u64,
    /// When (milliseconds).
    pub at: u64,
    /// The last failure, for the operator (no secret in it).
    pub reason: String,
}
