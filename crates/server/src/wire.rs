//! The JSON bodies of the HTTP API: requests and responses as serde types, and the one
//! place where the library's types (`Outcome`, `TokenInfo`, `AuditEntry`...) become
//! JSON, through the `From`/`TryFrom` conversions here: the library's types are not
//! `Serialize`. Documented in `openapi.yaml`; field names here are the contract.
//!
//! A new endpoint adds its request and response types here, its handler in [`crate::http`],
//! its entry in `openapi.yaml` and its test.

use codereader_otp::percent::{self, Plus};
use codereader_verifier::{
    AuditEntry, ImportReport, Matched, Outcome, TokenInfo, TokenKind, UserId,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error_code::ErrorCode;
use crate::service::{MAX_AUDIT_PAGE, MAX_LIST_PAGE, ServiceError, Verdict};

/// `POST /v1/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The token's serial (exactly one of `token` and `user`).
    pub token: Option<String>,
    /// The user whose token it is.
    pub user: Option<String>,
    /// The typed code.
    pub code: String,
    /// Whom the attempt comes from, as the backend saw it (the end user's address, say):
    /// failures are budgeted per client.
    pub client: Option<String>,
}

/// `POST /v1/tokens`: enrol from a URI or from parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The new token's serial.
    pub serial: String,
    /// An `otpauth://` URI (then no other parameter may be given).
    pub uri: Option<Zeroizing<String>>,
    /// "totp" (default) or "hotp".
    pub kind: Option<String>,
    /// The secret, base32.
    pub secret: Option<Zeroizing<String>>,
    /// "SHA1" (default), "SHA256", "SHA512".
    pub algorithm: Option<String>,
    /// 6 (default) to 8.
    pub digits: Option<u32>,
    /// TOTP step in seconds (default 30).
    pub period: Option<u64>,
    /// HOTP first counter (default 0).
    pub counter: Option<u64>,
}

/// `POST /v1/tokens/import` with a JSON body (a raw XML body is accepted too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The PSKC document.
    pub pskc: String,
    /// The pre-shared key for encrypted keys, in hex.
    pub preshared_key: Option<Zeroizing<String>>,
}

/// `POST /v1/tokens/{serial}/activate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The user to bind the token to.
    pub user: String,
    /// A current code of the token, proving possession.
    pub code: String,
}

/// `POST /v1/tokens/{serial}/resync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncRequest {
    /// A code.
    pub code: String,
    /// The code that follows it.
    pub next_code: String,
}

/// The body of a decision (`POST /v1/verify`, `.../resync`, and `.../activate` inside
/// [`Activated`]). Which fields are present depends on `result`.
///
/// The fields are in alphabetical order, as every body of the API always was (the order of
/// `serde_json`'s maps): `result` sits among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Rejected: failures left before the token locks (0: it is now locked); absent when
    /// unknown serials are answered like wrong codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
    /// Accepted, HOTP: the counter the code matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    counter: Option<u64>,
    /// Accepted: steps or counters away from the expected value.
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<i64>,
    /// What was decided: one of [`crate::metrics::OUTCOMES`].
    result: &'static str,
    /// Too soon, rate limited: when to try again (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<u64>,
    /// Accepted, TOTP: the time step the code matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u64>,
    /// Accepted, replayed: the token's serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Locked: when it unlocks by itself (Unix seconds), or `null` if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<Option<u64>>,
}

impl Decision {
    /// The stable label of `result`, as metrics count it.
    pub fn result(&self) -> &'static str {
        self.result
    }

    fn of(result: &'static str) -> Self {
        Decision {
            attempts_left: None,
            counter: None,
            drift: None,
            result,
            retry_at: None,
            step: None,
            token: None,
            until: None,
        }
    }
}

impl TryFrom<&Verdict> for Decision {
    type Error = ServiceError;

    /// # Errors
    /// [`ServiceError::Internal`] for an outcome this server does not know (the library's
    /// `Outcome` may grow).
    fn try_from(verdict: &Verdict) -> Result<Self, ServiceError> {
        Ok(match &verdict.outcome {
            Outcome::Accepted(a) => {
                let (step, counter) = match a.matched() {
                    Matched::Step(s) => (Some(s.0), None),
                    Matched::Counter(c) => (None, Some(c.0)),
                };
                Decision {
                    step,
                    counter,
                    drift: Some(a.drift()),
                    token: Some(a.token().to_string()),
                    ..Decision::of("accepted")
                }
            }
            Outcome::Rejected { attempts_left } => Decision {
                attempts_left: (!verdict.hide_attempts).then_some(*attempts_left),
                ..Decision::of("rejected")
            },
            Outcome::Locked { until } => Decision {
                until: Some(until.map(|t| t.0)),
                ..Decision::of("locked")
            },
            Outcome::Replayed => Decision {
                token: verdict.replayed.as_ref().map(ToString::to_string),
                ..Decision::of("replayed")
            },
            Outcome::UnknownToken => Decision::of("unknown"),
            Outcome::Disabled => Decision::of("disabled"),
            Outcome::TooSoon { retry_at } => Decision {
                retry_at: Some(retry_at.0),
                ..Decision::of("too_soon")
            },
            Outcome::RateLimited { retry_at } => Decision {
                retry_at: Some(retry_at.0),
                ..Decision::of("rate_limited")
            },
            other => {
                return Err(ServiceError::Internal(format!(
                    "outcome '{}' unknown to the server",
                    other.label()
                )));
            }
        })
    }
}

/// The body of `POST /v1/tokens/{serial}/activate`: the decision, and the user the token is
/// now bound to when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activated {
    #[serde(flatten)]
    decision: Decision,
    /// Accepted: the user (alphabetically after every field of [`Decision`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

impl Activated {
    /// The answer to an activation of a token for `user`.
    ///
    /// # Errors
    /// As [`Decision`]'s `TryFrom`.
    pub fn new(verdict: &Verdict, user: &UserId) -> Result<Self, ServiceError> {
        Ok(Activated {
            decision: verdict.try_into()?,
            user: matches!(verdict.outcome, Outcome::Accepted(_)).then(|| user.to_string()),
        })
    }
}

/// A token (never its secret): `GET /v1/tokens/{serial}` and the other calls that answer
/// with a token, and the lines of `token show` and `token list`. Fields in alphabetical
/// order, as [`Decision`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    /// "SHA1", "SHA256" or "SHA512".
    pub algorithm: &'static str,
    /// Code length.
    pub digits: u32,
    /// Remembered drift.
    pub drift: i64,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// Name of the key-encryption key its seed is sealed under.
    pub key_id: String,
    /// "totp" or "hotp".
    pub kind: &'static str,
    /// Whether it is locked.
    pub locked: bool,
    /// When it was locked (Unix seconds), if it is.
    pub locked_at: Option<u64>,
    /// The lowest step or counter that may still be accepted.
    pub next: u64,
    /// TOTP period in seconds.
    pub period: Option<u64>,
    /// Its serial.
    pub serial: String,
    /// The user it is bound to.
    pub user: Option<String>,
}

impl From<&TokenInfo> for Token {
    fn from(info: &TokenInfo) -> Self {
        let (kind, period) = match info.params.kind {
            TokenKind::Totp { period, .. } => ("totp", Some(period.seconds())),
            TokenKind::Hotp => ("hotp", None),
        };
        Token {
            algorithm: info.params.algorithm.name(),
            digits: info.params.digits.get(),
            drift: info.state.drift,
            enabled: info.state.enabled,
            failures: info.state.failures,
            key_id: info.key_id.to_string(),
            kind,
            locked: info.state.locked_at.is_some(),
            locked_at: info.state.locked_at.map(|t| t.0),
            next: info.state.next,
            period,
            serial: info.id.to_string(),
            user: info.user.as_ref().map(ToString::to_string),
        }
    }
}

impl Token {
    /// One word for its state: `disabled`, `locked`, `unassigned` or `active`.
    pub fn status(&self) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.locked {
            "locked"
        } else if self.user.is_none() {
            "unassigned"
        } else {
            "active"
        }
    }
}

/// The `name=value` pairs of a query string (`&`-separated; a pair without `=` has an
/// empty value).
fn query_pairs(raw: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A page's `limit`: a number from 1 to `max`.
fn page_limit(value: &str, max: usize) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("`limit` is a number from 1 to {max}"))
}

/// Lines of an audit page when `limit` is not given.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

/// The query of `GET /v1/tokens/{serial}/audit`: `limit` (1 to 1000, default 50) and
/// `before` (the `next` of the previous page). Returns `(limit, before)`.
///
/// # Errors
/// An unknown parameter or a value that is not a number in range, in words (never echoing
/// the value).
pub fn audit_query(raw: Option<&str>) -> Result<(usize, Option<u64>), String> {
    let (mut limit, mut before) = (DEFAULT_AUDIT_LIMIT, None);
    for (name, value) in query_pairs(raw) {
        match name {
            "limit" => {
                limit = page_limit(value, MAX_AUDIT_PAGE)?;
            }
            "before" => {
                before = Some(value.parse().map_err(|_| {
                    "`before` is the `next` cursor of the previous page".to_owned()
                })?);
            }
            _ => return Err("the query takes only `limit` and `before`".to_owned()),
        }
    }
    Ok((limit, before))
}

/// Tokens of a list page when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The query of `GET /v1/tokens`: `after` (a serial, percent-encoded) and `limit` (1 to
/// 1000, default 100). Returns `(after, limit)`.
///
/// # Errors
/// An unknown parameter, a bad number or bad percent-encoding, in words.
pub fn list_query(raw: Option<&str>) -> Result<(Option<String>, usize), String> {
    let (mut after, mut limit) = (None, DEFAULT_LIST_LIMIT);
    for (name, value) in query_pairs(raw) {
        match name {
            "limit" => {
                limit = page_limit(value, MAX_LIST_PAGE)?;
            }
            "after" => {
                after =
                    Some(percent_decode(value).ok_or_else(|| {
                        "`after` is a serial, percent-encoded as UTF-8".to_owned()
                    })?);
            }
            _ => return Err("the query takes only `after` and `limit`".to_owned()),
        }
    }
    Ok((after, limit))
}

/// Decodes `%XX` escapes and `+` (a space, as forms encode it) strictly; `None` for a bad
/// escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    String::from_utf8(percent::decode(text, Plus::Space).ok()?).ok()
}

/// A page from up to `limit + 1` items, fetched one more than asked so as to know whether
/// there is a next page: the first `limit` converted, and the cursor `cursor` gives for the
/// last of them when there was one more.
fn page<T, W>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
    convert: impl Fn(&T) -> W,
) -> (Vec<W>, Option<String>) {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(cursor) } else { None };
    (items.iter().map(convert).collect(), next)
}

/// The body of `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenPage {
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
    /// The tokens, by serial.
    pub tokens: Vec<Token>,
}

impl TokenPage {
    /// A list page from up to `limit + 1` tokens: the first `limit`, and the serial to pass
    /// as `after` for the next page if there was one more.
    pub fn new(infos: Vec<TokenInfo>, limit: usize) -> Self {
        let (tokens, next) = page(infos, limit, |t| t.id.to_string(), |t| Token::from(t));
        TokenPage { next, tokens }
    }
}

/// One audit line (there is no field for a code or a secret). Fields in alphabetical order,
/// as [`Decision`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditLine {
    /// What was asked ("verify", "unlock"...).
    pub action: String,
    /// When (Unix seconds).
    pub at: u64,
    /// Who asked: `api:KEY-NAME` or `cli:USER`.
    pub caller: String,
    /// What came of it ("accepted", "ok"...).
    pub outcome: String,
    /// Position in the trail (a paging cursor; later lines have greater numbers).
    pub seq: u64,
    /// `at` in RFC 3339, for people reading `token audit --json`; not in HTTP answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The token concerned, if any.
    pub token: Option<String>,
    /// The user concerned, if known.
    pub user: Option<String>,
}

impl From<&AuditEntry> for AuditLine {
    fn from(entry: &AuditEntry) -> Self {
        let e = &entry.event;
        AuditLine {
            action: e.action.to_string(),
            at: e.at.0,
            caller: e.caller.to_string(),
            outcome: e.outcome.to_string(),
            seq: entry.seq,
            time: None,
            token: e.token.as_ref().map(ToString::to_string),
            user: e.user.as_ref().map(ToString::to_string),
        }
    }
}

/// The body of `GET /v1/tokens/{serial}/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    /// The lines, newest first.
    pub entries: Vec<AuditLine>,
    /// The `before` of the next page; `null` on the last.
    pub next: Option<String>,
}

impl AuditPage {
    /// An audit page from up to `limit + 1` lines: the first `limit`, and the cursor of the
    /// next page if there was one more.
    pub fn new(entries: Vec<AuditEntry>, limit: usize) -> Self {
        let (entries, next) = page(
            entries,
            limit,
            |e| e.seq.to_string(),
            |e| AuditLine::from(e),
        );
        AuditPage { entries, next }
    }
}

/// The body of `POST /v1/tokens/import`, and what `token import` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// Serials imported.
    pub imported: Vec<String>,
    /// Keys refused.
    pub rejected: Vec<Refused>,
}

/// A key of a PSKC document that was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Its serial or key id, else `key #N` (its position, from 1).
    pub id: String,
    /// Why, in words.
    pub reason: String,
}

impl From<&ImportReport> for Imported {
    fn from(report: &ImportReport) -> Self {
        Imported {
            imported: report.imported.iter().map(ToString::to_string).collect(),
            rejected: report
                .refused
                .iter()
                .map(|p| Refused {
                    id: p
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("key #{}", p.index)),
                    reason: p.reason.clone(),
                })
                .collect(),
        }
    }
}

/// The body of every error: `error` is one of the [`ErrorCode`]s, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    /// The stable code.
    pub error: ErrorCode,
    /// What went wrong, in words.
    pub message: &'a str,
}

/// The body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Degraded: what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// Degraded: seeds that did not open under the keyring in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_errors: Option<SealErrors>,
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// Degraded: the webhook destinations whose next event keeps failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks_failing: Option<Vec<String>>,
}

/// Seeds that did not open, by why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SealErrors {
    /// Under a key the keyring lacks.
    pub missing_key: u64,
    /// Under a key the keyring has.
    pub unopenable: u64,
}

#[cfg(test)]
mod tests {
    /// The typed bodies keep the bytes the API always sent: fields in alphabetical order,
    /// absent ones left out, `until` present (maybe `null`) when locked.
    #[test]
    fn bodies_keep_their_bytes() {
        use codereader_otp::{Algorithm, Digits, Period, UnixTime};
        use codereader_verifier::{
            KeyId, Outcome, TokenId, TokenInfo, TokenKind, TokenParams, TokenState, UserId,
        };

        use super::{Activated, Decision, Token};
        use crate::service::Verdict;

        let json = |v: &Verdict| serde_json::to_string(&Decision::try_from(v).unwrap()).unwrap();
        let rejected = Verdict::new(Outcome::Rejected { attempts_left: 2 });
        assert_eq!(
            json(&rejected),
            r#"{"attempts_left":2,"result":"rejected"}"#
        );
        let hidden = Verdict {
            hide_attempts: true,
            ..rejected
        };
        assert_eq!(json(&hidden), r#"{"result":"rejected"}"#);
        let locked = Verdict::new(Outcome::Locked { until: None });
        assert_eq!(json(&locked), r#"{"result":"locked","until":null}"#);
        let replayed = Verdict {
            replayed: Some(TokenId::new("SN-1").unwrap()),
            ..Verdict::new(Outcome::Replayed)
        };
        assert_eq!(json(&replayed), r#"{"result":"replayed","token":"SN-1"}"#);
        let too_soon = Verdict::new(Outcome::TooSoon {
            retry_at: UnixTime(9),
        });
        assert_eq!(json(&too_soon), r#"{"result":"too_soon","retry_at":9}"#);
        assert_eq!(
            json(&Verdict::new(Outcome::UnknownToken)),
            r#"{"result":"unknown"}"#
        );
        let user = UserId::new("alice").unwrap();
        let refused = Activated::new(&Verdict::new(Outcome::Disabled), &user).unwrap();
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"result":"disabled"}"#
        );

        let info = TokenInfo {
            id: TokenId::new("SN-1").unwrap(),
            user: Some(user),
            params: TokenParams {
                kind: TokenKind::Totp {
                    period: Period::new(30).unwrap(),
                    t0: UnixTime(0),
                },
                algorithm: Algorithm::Sha1,
                digits: Digits::SIX,
            },
            state: TokenState {
                locked_at: Some(UnixTime(5)),
                ..TokenState::fresh(7)
            },
            key_id: KeyId::new("k1").unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&Token::from(&info)).unwrap(),
            r#"{"algorithm":"SHA1","digits":6,"drift":0,"enabled":true,"failures":0,"#.to_owned()
                + r#""key_id":"k1","kind":"totp","locked":true,"locked_at":5,"next":7,"#
                + r#""period":30,"serial":"SN-1","user":"alice"}"#
        );
    }

    #[test]
    fn list_queries() {
        use super::{DEFAULT_LIST_LIMIT, list_query};
        assert_eq!(list_query(None), Ok((None, DEFAULT_LIST_LIMIT)));
        assert_eq!(
            list_query(Some("after=SN%201+x%C3%A6&limit=7")),
            Ok((Some("SN 1 x\u{e6}".to_owned()), 7))
        );
        for bad in [
            "after=%zz",
            "after=%c3",
            "after=%",
            // Once taken as byte 5 (`u8::from_str_radix` accepts a sign).
            "after=%+5",
            "after=%G0",
            "after=SN%4",
            "limit=0",
            "limit=1001",
            "user=a",
        ] {
            assert!(list_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_queries() {
        use super::{DEFAULT_AUDIT_LIMIT, audit_query};
        assert_eq!(audit_query(None), Ok((DEFAULT_AUDIT_LIMIT, None)));
        assert_eq!(audit_query(Some("limit=5&before=77")), Ok((5, Some(77))));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "before=",
            "code=123456",
            "limit",
        ] {
            let err = audit_query(Some(bad)).unwrap_err();
            assert!(!err.contains("123456"), "{err}");
        }
    }

    const OPENAPI: &str = include_str!("../openapi.yaml");

    #[test]
    fn openapi_documents_every_error_code_and_route() {
        use crate::error_code::ErrorCode;
        // The `Error` schema's list, and nothing else: every code of the table, and no other.
        let (_, schema) = OPENAPI.split_once("\n    Error:\n").unwrap();
        let (_, list) = schema.split_once("enum:\n").unwrap();
        let documented: Vec<&str> = list
            .lines()
            .map_while(|line| line.trim_start().strip_prefix("- "))
            .collect();
        let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        codes.sort_unstable();
        assert_eq!(
            sorted, codes,
            "openapi.yaml's Error codes against ErrorCode"
        );
        assert_eq!(documented.len(), ErrorCode::ALL.len());
        for (path, _, _) in crate::http::routes(crate::http::Limits::default()) {
            assert!(
                OPENAPI.contains(&format!("\n  {path}:\n")),
                "{path} not in openapi.yaml"
            );
        }
    }
}

/// One event, as a webhook POSTs it, `GET /v1/events` lists it and `token events` prints
/// it. Never a code, seed or key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventBody {
    /// The event id: grows in commit order; the idempotency key of its delivery (also the
    /// `webhook-id` header).
    pub id: u64,
    /// `token.locked`, `token.unlocked`, ... (see the API description).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When it happened (Unix seconds).
    pub at: u64,
    /// `at` in RFC 3339 (UTC).
    pub time: String,
    /// The audit line that records it (`seq` in the audit trail).
    pub seq: u64,
    /// The token concerned, if any.
    pub token: Option<String>,
    /// For `token.locked`: `failures` or `temporary`; for `token.unlocked`: `admin` or
    /// `expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<&'static str>,
    /// For `token.enrolled`: how many tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `apikey.revoked`: the key's name; for `verify.rejected_burst`: the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who caused it: `api:KEY-NAME`, `cli:USER`.
    pub caller: String,
}

impl EventBody {
    /// The body of `event`.
    pub fn of(event: &codereader_verifier::Event) -> Self {
        let line = &event.audit.event;
        EventBody {
            id: event.id,
            kind: event.kind.as_str(),
            at: line.at.0,
            time: crate::timefmt::rfc3339(line.at.0),
            seq: event.audit.seq,
            token: line.token.as_ref().map(ToString::to_string),
            why: event.why(),
            count: event.count(),
            name: match &line.outcome {
                codereader_verifier::AuditOutcome::Named { name } => Some(name.clone()),
                _ => None,
            },
            caller: line.caller.to_string(),
        }
    }
}

/// The body of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<EventBody>,
    /// The `after` of the next request: the last id here, or the one asked for when there
    /// is none yet.
    pub next: u64,
}

/// Most events in one page of `GET /v1/events`.
pub const MAX_EVENT_PAGE: usize = 1000;

/// Parses the query of `GET /v1/events`: `after` (an event id, default 0) and `limit`
/// (1..=[`MAX_EVENT_PAGE`], default 100).
///
/// # Errors
/// A message for the 400 answer.
pub fn events_query(raw: Option<&str>) -> Result<(u64, usize), String> {
    let (mut after, mut limit) = (0, 100);
    for (name, value) in query_pairs(raw) {
        match name {
            "limit" => {
                limit = page_limit(value, MAX_EVENT_PAGE)?;
            }
            "after" => {
                after = value
                    .parse()
                    .map_err(|_| "`after` is an event id (a whole number)".to_owned())?;
            }
            _ => return Err("the query takes only `after` and `limit`".to_owned()),
        }
    }
    Ok((after, limit))
}
