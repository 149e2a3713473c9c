//! The JSON bodies of the HTTP API: requests as serde types, responses built from the
//! service's types. Documented in `openapi.yaml`; field names here are the contract.

use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::service::{Decision, ImportReport, Matched, TokenView};

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
        Decision::Rejected { attempts_left } => {
            json!({"result": result, "attempts_left": attempts_left})
        }
        Decision::Locked { until } => json!({"result": result, "until": until}),
        Decision::TooSoon { retry_at } => json!({"result": result, "retry_at": retry_at}),
        Decision::Replayed | Decision::Unknown | Decision::Disabled => json!({"result": result}),
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

/// The body of an import report.
pub fn import_report(report: &ImportReport) -> Value {
    let rejected: Vec<Value> = report
        .rejected
        .iter()
        .map(|(id, reason)| json!({"id": id, "reason": reason}))
        .collect();
    json!({"imported": report.imported, "rejected": rejected})
}
