//! The JSON bodies of the HTTP API: requests as serde types, responses built from the
//! service's types. Documented in `openapi.yaml`; field names here are the contract.

use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::service::{
    AuditLine, Decision, ImportReport, MAX_AUDIT_PAGE, MAX_LIST_PAGE, Matched, TokenView,
};

/// The stable values of the `error` field.
pub mod codes {
    /// No `Authorization: Bearer` header, or an unknown key (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The key's scope does not allow this call (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// The body is empty where JSON is expected (400).
    pub const EMPTY_BODY: &str = "empty_body";
    /// The body is not JSON (400).
    pub const INVALID_JSON: &str = "invalid_json";
    /// The JSON has a missing field, a wrong type or an unknown field (400).
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// A code is not 6 to 8 ASCII digits (400).
    pub const INVALID_CODE: &str = "invalid_code";
    /// A serial or user id is empty, too long or has control characters (400).
    pub const INVALID_ID: &str = "invalid_id";
    /// The body exceeds the size cap (413).
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// The body did not arrive within the body deadline, e.g. shorter than its
    /// Content-Length (408).
    pub const BODY_TIMEOUT: &str = "body_timeout";
    /// The import body is neither JSON nor XML (415).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// No such token (404).
    pub const UNKNOWN_TOKEN: &str = "unknown_token";
    /// No such route (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The route exists but not with this method (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The store failed; retry later (503).
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    /// The request took longer than the server's per-request timeout (503).
    pub const TIMEOUT: &str = "timeout";
    /// The client has spent its failure budget; see Retry-After (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A bug (500).
    pub const INTERNAL: &str = "internal";
    /// An otpauth URI that does not parse (400).
    pub const INVALID_URI: &str = "invalid_uri";
    /// A secret that is not base32 or too short (400).
    pub const INVALID_SECRET: &str = "invalid_secret";
    /// Token parameters out of range: digits, period, algorithm (400).
    pub const INVALID_PARAMETERS: &str = "invalid_parameters";
    /// A PSKC document that cannot be used at all, or without one usable key (400).
    pub const INVALID_PSKC: &str = "invalid_pskc";
    /// A token with this serial exists (409).
    pub const DUPLICATE_TOKEN: &str = "duplicate_token";
    /// The token is already bound to a user (409).
    pub const ALREADY_ACTIVE: &str = "already_active";
    /// The user already has a token (409).
    pub const USER_TAKEN: &str = "user_taken";

    /// Every code, for documentation checks.
    pub const ALL: &[&str] = &[
        UNAUTHORIZED,
        FORBIDDEN,
        EMPTY_BODY,
        INVALID_JSON,
        INVALID_REQUEST,
        INVALID_CODE,
        INVALID_ID,
        BODY_TOO_LARGE,
        BODY_TIMEOUT,
        UNSUPPORTED_MEDIA_TYPE,
        UNKNOWN_TOKEN,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        STORE_UNAVAILABLE,
        TIMEOUT,
        RATE_LIMITED,
        INTERNAL,
        INVALID_URI,
        INVALID_SECRET,
        INVALID_PARAMETERS,
        INVALID_PSKC,
        DUPLICATE_TOKEN,
        ALREADY_ACTIVE,
        USER_TAKEN,
    ];
}

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

/// The body of a decision.
pub fn decision(decision: &Decision) -> Value {
    let result = decision.label();
    match decision {
        Decision::Accepted {
            token,
            matched,
            drift,
        } => {
            let (name, value) = match matched {
                Matched::Step(s) => ("step", *s),
                Matched::Counter(c) => ("counter", *c),
            };
            json!({"result": result, "token": token, name: value, "drift": drift})
        }
        Decision::Rejected {
            attempts_left: Some(attempts_left),
        } => {
            json!({"result": result, "attempts_left": attempts_left})
        }
        Decision::Rejected {
            attempts_left: None,
        } => json!({"result": result}),
        Decision::RateLimited { retry_at } => json!({"result": result, "retry_at": retry_at}),
        Decision::Locked { until } => json!({"result": result, "until": until}),
        Decision::TooSoon { retry_at } => json!({"result": result, "retry_at": retry_at}),
        Decision::Replayed { token: Some(token) } => json!({"result": result, "token": token}),
        Decision::Replayed { token: None } | Decision::Unknown | Decision::Disabled => {
            json!({"result": result})
        }
    }
}

/// The body describing a token (never its secret).
pub fn token(view: &TokenView) -> Value {
    json!({
        "serial": view.serial,
        "user": view.user,
        "kind": view.kind,
        "algorithm": view.algorithm,
        "digits": view.digits,
        "period": view.period,
        "next": view.next,
        "drift": view.drift,
        "failures": view.failures,
        "locked": view.locked_at.is_some(),
        "locked_at": view.locked_at,
        "enabled": view.enabled,
        "key_id": view.key_id,
    })
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
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_AUDIT_PAGE).contains(n))
                    .ok_or_else(|| format!("`limit` is a number from 1 to {MAX_AUDIT_PAGE}"))?;
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
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_PAGE).contains(n))
                    .ok_or_else(|| format!("`limit` is a number from 1 to {MAX_LIST_PAGE}"))?;
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

/// Decodes `%XX` escapes and `+` (a space, as forms encode it); `None` for a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A page from up to `limit + 1` items, fetched one more than asked so as to know whether
/// there is a next page: the first `limit` rendered, and the cursor `cursor` gives for the
/// last of them when there was one more.
fn page<T>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
    render: impl Fn(&T) -> Value,
) -> (Vec<Value>, Option<String>) {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(cursor) } else { None };
    (items.iter().map(render).collect(), next)
}

/// A list page from up to `limit + 1` tokens: the first `limit`, and the serial to pass as
/// `after` for the next page if there was one more.
pub fn token_page(views: Vec<TokenView>, limit: usize) -> Value {
    let (tokens, next) = page(views, limit, |v| v.serial.clone(), token);
    json!({"tokens": tokens, "next": next})
}

/// One audit line (there is no field for a code or a secret).
pub fn audit_line(line: &AuditLine) -> Value {
    json!({
        "seq": line.seq,
        "at": line.at,
        "token": line.token,
        "user": line.user,
        "action": line.action,
        "outcome": line.outcome,
        "caller": line.caller,
    })
}

/// An audit page from up to `limit + 1` lines: the first `limit`, and the cursor of the
/// next page if there was one more.
pub fn audit_page(lines: Vec<AuditLine>, limit: usize) -> Value {
    let (entries, next) = page(lines, limit, |l| l.seq.to_string(), audit_line);
    json!({"entries": entries, "next": next})
}

/// The body of an import report.
pub fn import_report(report: &ImportReport) -> Value {
    let rejected: Vec<Value> = report
        .rejected
        .iter()
        .map(|(id, reason)| json!({"id": id, "reason": reason}))
        .collect();
    json!({"imported": report.imported, "rejected": rejected})
}

#[cfg(test)]
mod tests {
    use super::codes;

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
        for code in codes::ALL {
            assert!(
                OPENAPI.contains(&format!("- {code}\n")),
                "{code} not in openapi.yaml"
            );
        }
        for route in [
            "/v1/verify:",
            "/v1/tokens:",
            "/v1/tokens/import:",
            "/v1/tokens/{serial}:",
            "/v1/tokens/{serial}/activate:",
            "/v1/tokens/{serial}/resync:",
            "/v1/tokens/{serial}/unlock:",
            "/v1/tokens/{serial}/audit:",
            "/healthz:",
            "/metrics:",
        ] {
            assert!(
                OPENAPI.contains(&format!("\n  {route}\n")),
                "{route} not in openapi.yaml"
            );
        }
    }
}
