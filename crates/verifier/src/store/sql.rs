//! What the SQL stores (SQLite and PostgreSQL) share: the token columns and how a row becomes
//! a [`TokenRecord`], how a [`NewToken`] and an audit line become column values, and how an
//! audit row, an event and a delivery cursor are read back. Only here do typed values meet their SQL text and integers.

use std::borrow::Cow;

use codereader_otp::{Algorithm, Digits, Period, UnixTime};

use super::{AuditEntry, AuditEvent, Delivery, Event, NewToken, StoreError, TokenRecord};
use crate::seal::{NONCE_LEN, SealedSeed};
use crate::token::{Caller, KeyId, TokenId, TokenKind, TokenParams, TokenState, UserId};

/// A token row as SQL stores hold it, before checking.
#[derive(Debug)]
pub(crate) struct RawToken {
    pub(crate) id: String,
    pub(crate) user: Option<String>,
    pub(crate) kind: String,
    pub(crate) algorithm: String,
    pub(crate) digits: i64,
    pub(crate) period: i64,
    pub(crate) t0: i64,
    pub(crate) key_id: String,
    pub(crate) nonce: Vec<u8>,
    pub(crate) sealed: Vec<u8>,
    pub(crate) next: i64,
    pub(crate) drift: i64,
    pub(crate) failures: i64,
    pub(crate) last_failure_at: Option<i64>,
    pub(crate) locked_at: Option<i64>,
    pub(crate) enabled: bool,
}

/// The columns of [`RawToken`], in order, for SELECTs.
pub(crate) const TOKEN_COLUMNS: &str = "id, user_id, kind, algorithm, digits, period, t0, \
     key_id, nonce, sealed, next_value, drift, failures, last_failure_at, locked_at, enabled";

impl RawToken {
    pub(crate) fn into_record(self) -> Result<TokenRecord, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            token: self.id.clone(),
            reason: reason.to_owned(),
        };
        let id = TokenId::new(self.id.clone()).map_err(|_| corrupt("bad id"))?;
        let user = match &self.user {
            Some(u) => Some(UserId::new(u.clone()).map_err(|_| corrupt("bad user id"))?),
            None => None,
        };
        let kind = match self.kind.as_str() {
            "totp" => TokenKind::Totp {
                period: u64::try_from(self.period)
                    .ok()
                    .and_then(|p| Period::new(p).ok())
                    .ok_or_else(|| corrupt("bad period"))?,
                t0: UnixTime(u64::try_from(self.t0).map_err(|_| corrupt("bad t0"))?),
            },
            "hotp" => TokenKind::Hotp,
            _ => return Err(corrupt("bad kind")),
        };
        let algorithm: Algorithm = self
            .algorithm
            .parse()
            .map_err(|_| corrupt("bad algorithm"))?;
        let digits = u32::try_from(self.digits)
            .ok()
            .and_then(|d| Digits::new(d).ok())
            .ok_or_else(|| corrupt("bad digits"))?;
        let nonce: [u8; NONCE_LEN] = self
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("bad nonce"))?;
        let time = |t: Option<i64>, what: &str| -> Result<Option<UnixTime>, StoreError> {
            t.map(|t| u64::try_from(t).map(UnixTime).map_err(|_| corrupt(what)))
                .transpose()
        };
        Ok(TokenRecord {
            id,
            user,
            params: TokenParams {
                kind,
                algorithm,
                digits,
            },
            seed: SealedSeed {
                key_id: KeyId::new(self.key_id.clone()).map_err(|_| corrupt("bad key id"))?,
                nonce,
                ciphertext: self.sealed.clone(),
            },
            state: TokenState {
                next: u64::try_from(self.next).map_err(|_| corrupt("bad next"))?,
                drift: self.drift,
                failures: u32::try_from(self.failures).map_err(|_| corrupt("bad failures"))?,
                last_failure_at: time(self.last_failure_at, "bad failure time")?,
                locked_at: time(self.locked_at, "bad lock time")?,
                enabled: self.enabled,
            },
        })
    }
}

/// The SQL-facing columns of a new token.
pub(crate) struct TokenColumns<'a> {
    pub(crate) kind: &'static str,
    pub(crate) algorithm: &'static str,
    pub(crate) digits: i64,
    pub(crate) period: i64,
    pub(crate) t0: i64,
    pub(crate) next: i64,
    pub(crate) token: &'a NewToken,
}

/// A value for an `INTEGER`/`BIGINT` column.
///
/// # Errors
/// [`StoreError::OutOfRange`] above `i64::MAX`.
pub(crate) fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what })
}

/// A value for an `INTEGER`/`BIGINT` column or parameter where saturating is right: a query's
/// limit or cursor (past `i64::MAX` means "no limit" or "after every row", which no row id
/// reaches), or a value [`NewToken::new`] or the clock already kept in range. The one place
/// a `u64` or `usize` is clamped for SQL; [`to_i64`] is for values that must fail instead.
pub(crate) fn saturating_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

impl<'a> TokenColumns<'a> {
    pub(crate) fn of(token: &'a NewToken) -> Self {
        let (kind, period, t0) = match token.params.kind {
            TokenKind::Totp { period, t0 } => (
                "totp",
                saturating_i64(period.seconds()),
                saturating_i64(t0.0),
            ),
            TokenKind::Hotp => ("hotp", 0, 0),
        };
        TokenColumns {
            kind,
            algorithm: token.params.algorithm.name(),
            digits: i64::from(token.params.digits.get()),
            period,
            t0,
            next: saturating_i64(token.next),
            token,
        }
    }
}

/// An audit line's columns as statement parameters: `token_id, user_id, action, outcome,
/// at, caller`. Borrowed from the event; only an outcome with counts makes text.
pub(crate) struct AuditColumns<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    pub(crate) action: &'static str,
    pub(crate) outcome: Cow<'static, str>,
    pub(crate) at: i64,
    pub(crate) caller: &'a str,
}

impl<'a> AuditColumns<'a> {
    pub(crate) fn of(e: &'a AuditEvent) -> Self {
        AuditColumns {
            token: e.token.as_ref().map(TokenId::as_str),
            user: e.user.as_ref().map(UserId::as_str),
            action: e.action.as_str(),
            outcome: e.outcome.text(),
            // A time past 2^63 s is no time a clock gives; kept as the latest one.
            at: saturating_i64(e.at.0),
            caller: e.caller.as_str(),
        }
    }
}

/// An audit row as selected: `token_id, user_id, action, outcome, at, caller`.
pub(crate) type AuditRow = (Option<String>, Option<String>, String, String, i64, String);

/// Parses a stored audit row with its sequence number.
pub(crate) fn audit_entry(seq: i64, row: AuditRow) -> Result<AuditEntry, StoreError> {
    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt {
        token: row.0.clone().unwrap_or_default(),
        reason: "bad audit sequence number".to_owned(),
    })?;
    Ok(AuditEntry {
        seq,
        event: audit_event(row)?,
    })
}

/// Parses a stored audit row. An action or outcome outside the vocabulary is a corrupt row.
pub(crate) fn audit_event(row: AuditRow) -> Result<AuditEvent, StoreError> {
    let (token, user, action, outcome, at, caller) = row;
    let corrupt = |reason: &str| StoreError::Corrupt {
        token: token.clone().unwrap_or_default(),
        reason: reason.to_owned(),
    };
    Ok(AuditEvent {
        token: token
            .as_ref()
            .map(|t| TokenId::new(t.clone()))
            .transpose()
            .map_err(|_| corrupt("bad audit token"))?,
        user: user
            .map(UserId::new)
            .transpose()
            .map_err(|_| corrupt("bad audit user"))?,
        action: action
            .parse()
            .map_err(|_| corrupt("unknown audit action"))?,
        outcome: outcome
            .parse()
            .map_err(|_| corrupt("unknown audit outcome"))?,
        at: UnixTime(u64::try_from(at).map_err(|_| corrupt("bad audit time"))?),
        caller: Caller::new(caller).map_err(|_| corrupt("bad audit caller"))?,
    })
}

/// A stored row that is not what this version writes: not tied to one token.
pub(crate) fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt {
        token: String::new(),
        reason: reason.to_owned(),
    }
}

/// An outbox row (its event id) joined with its audit line (sequence number and row) as an
/// [`Event`]; an audit line that is no event is a corrupt row.
pub(crate) fn to_event(id: i64, seq: i64, row: AuditRow) -> Result<Event, StoreError> {
    let id = u64::try_from(id).map_err(|_| corrupt("bad event id"))?;
    Event::new(id, audit_entry(seq, row)?).ok_or_else(|| corrupt("an event of no kind"))
}

/// A delivery cursor as selected: `handled, attempts, failing_since, retry_at, dead`.
pub(crate) type DeliveryRow = (i64, i64, Option<i64>, i64, i64);

/// A [`Delivery`] as the cursor's column values (`handled, attempts, failing_since,
/// retry_at, dead`), for the statement that settles it.
pub(crate) struct DeliveryColumns {
    pub(crate) handled: i64,
    pub(crate) attempts: i64,
    pub(crate) failing_since: Option<i64>,
    pub(crate) retry_at: i64,
    pub(crate) dead: i64,
}

impl DeliveryColumns {
    /// # Errors
    /// [`StoreError::OutOfRange`] for a value above `i64::MAX`.
    pub(crate) fn of(d: &Delivery) -> Result<Self, StoreError> {
        Ok(DeliveryColumns {
            failing_since: d.failing_since.map(|t| to_i64(t, "time")).transpose()?,
            handled: to_i64(d.after, "event id")?,
            retry_at: to_i64(d.retry_at, "time")?,
            dead: to_i64(d.dead, "count")?,
            attempts: i64::from(d.attempts),
        })
    }
}

/// A delivery cursor row as a [`Delivery`].
pub(crate) fn to_delivery(
    (handled, attempts, failing_since, retry_at, dead): DeliveryRow,
) -> Result<Delivery, StoreError> {
    let bad = |_| corrupt("bad delivery cursor");
    Ok(Delivery {
        after: u64::try_from(handled).map_err(bad)?,
        attempts: u32::try_from(attempts).map_err(bad)?,
        failing_since: failing_since.map(u64::try_from).transpose().map_err(bad)?,
        retry_at: u64::try_from(retry_at).map_err(bad)?,
        dead: u64::try_from(dead).map_err(bad)?,
    })
}
