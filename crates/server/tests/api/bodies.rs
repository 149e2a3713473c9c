//! Every JSON endpoint fed valid bodies with one thing wrong (a field of the wrong type,
//! null, a huge or odd string, a key twice, an unknown or missing key) and plain random bytes:
//! each answer is the API's JSON error body (a 4xx wherever the body is certainly invalid,
//! never a 5xx or a dropped connection), no error message repeats a code or secret the body
//! held, and a token enrolled before the barrage is untouched and still verifies.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use codereader_verifier_server::error_code::ErrorCode;

use crate::common::{Conn, Server, base32, hotp};

/// The seed of the token the barrage must not touch.
const KEEP_SECRET: &[u8] = b"keep-this-seed-safe!";
/// The seed of the token the barrage aims at.
const TARGET_SECRET: &[u8] = b"target-seed-01234567";
/// Codes and secrets with digits no message could contain by chance.
const CODE: &str = "482915";
const NEXT_CODE: &str = "730164";
const PSK: &str = "12345678901234567890123456789012";
const FIGURE6: &str = include_str!("../data/rfc6030-figure6.xml");

/// A JSON endpoint: method-less POST path, valid body, which fields are required strings,
/// required, or optional.
struct Endpoint {
    name: &'static str,
    path: &'static str,
    key_is_admin: bool,
    body: Value,
    required: &'static [&'static str],
}

fn endpoints() -> Vec<Endpoint> {
    let secret = base32(b"a-new-seed-for-enrol!");
    vec![
        Endpoint {
            name: "verify",
            path: "/v1/verify",
            key_is_admin: false,
            body: json!({"token": "T-1", "code": CODE, "client": "192.0.2.1"}),
            required: &["code"],
        },
        Endpoint {
            name: "enroll (parameters)",
            path: "/v1/tokens",
            key_is_admin: true,
            body: json!({"serial": "N-1", "kind": "hotp", "secret": secret, "algorithm": "SHA1",
                "digits": 6, "counter": 5}),
            required: &["serial"],
        },
        Endpoint {
            name: "enroll (uri)",
            path: "/v1/tokens",
            key_is_admin: true,
            body: json!({"serial": "N-2", "uri": format!(
                "otpauth://totp/Bank:alice?secret={secret}&issuer=Bank&period=30")}),
            required: &["serial"],
        },
        Endpoint {
            name: "import",
            path: "/v1/tokens/import",
            key_is_admin: true,
            body: json!({"pskc": FIGURE6, "preshared_key": PSK}),
            required: &["pskc"],
        },
        Endpoint {
            name: "activate",
            path: "/v1/tokens/T-1/activate",
            key_is_admin: true,
            body: json!({"user": "user-1", "code": CODE}),
            required: &["user", "code"],
        },
        Endpoint {
            name: "resync",
            path: "/v1/tokens/T-1/resync",
            key_is_admin: true,
            body: json!({"code": CODE, "next_code": NEXT_CODE}),
            required: &["code", "next_code"],
        },
    ]
}

/// One thing wrong with a valid body.
#[derive(Debug, Clone)]
enum Mutation {
    /// A field set to a value of another JSON type (not null).
    WrongType(prop::sample::Index, Value),
    /// A field set to null.
    Null(prop::sample::Index),
    /// A string field set to a long string (some over the 64 KiB body cap).
    Huge(prop::sample::Index, char, usize),
    /// A string field set to arbitrary text.
    Odd(prop::sample::Index, String),
    /// A field given twice (the second time with the same value).
    Duplicate(prop::sample::Index),
    /// A field that is not part of the API.
    Unknown(String, Value),
    /// A field set to an object whose one key is not part of the API.
    NestedUnknown(prop::sample::Index, String),
    /// A field left out.
    Missing(prop::sample::Index),
    /// Not a JSON object at all: random bytes.
    Bytes(Vec<u8>),
    /// A JSON value of another shape.
    NotObject(Value),
}

fn other_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        Just(json!(482_915)),
        Just(json!(482_915.0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!([CODE])),
        Just(json!({"code": CODE})),
        Just(json!([])),
        Just(json!({})),
        "\\PC{0,10}".prop_map(Value::String),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        3 => (index(), other_value()).prop_map(|(i, v)| Mutation::WrongType(i, v)),
        1 => index().prop_map(Mutation::Null),
        2 => (index(), any::<char>(), 1000usize..80_000).prop_map(|(i, c, n)| Mutation::Huge(i, c, n)),
        2 => (index(), "\\PC{0,40}").prop_map(|(i, s)| Mutation::Odd(i, s)),
        1 => index().prop_map(Mutation::Duplicate),
        1 => ("[a-z_]{1,12}", other_value()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
        2 => (unknown_name(), other_value()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
        1 => (index(), unknown_name()).prop_map(|(i, k)| Mutation::NestedUnknown(i, k)),
        1 => index().prop_map(Mutation::Missing),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Mutation::Bytes),
        1 => other_value().prop_filter("not an object", |v| !v.is_object()).prop_map(Mutation::NotObject),
    ]
}

/// Field names a caller may paste by mistake: codes, base32 secrets, anything.
fn unknown_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(CODE.to_owned()),
        "[0-9]{6,8}",
        "[A-Z2-7]{16,32}",
        "\\PC{1,24}",
    ]
}

/// Whether a message that contains `name` must have repeated it: names of 6 characters or
/// more that are not made of the words a message is written in.
fn must_not_repeat(name: &str) -> bool {
    name.chars().count() >= 6
        && !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == ' ')
}

/// Field names the API knows, per request type (all of them: `deny_unknown_fields`).
const KNOWN: &[&str] = &[
    "client",
    "token",
    "user",
    "code",
    "next_code",
    "serial",
    "uri",
    "kind",
    "secret",
    "algorithm",
    "digits",
    "period",
    "counter",
    "pskc",
    "preshared_key",
];

/// The body to send, and whether it is certainly invalid (so must get a 4xx).
fn apply(endpoint: &Endpoint, mutation: &Mutation) -> (Vec<u8>, bool) {
    let object = endpoint.body.as_object().unwrap();
    let keys: Vec<&String> = object.keys().collect();
    let pick = |i: &prop::sample::Index| keys[i.index(keys.len())].clone();
    let with = |key: &str, value: Value| {
        let mut o = object.clone();
        o.insert(key.to_owned(), value);
        Value::Object(o).to_string().into_bytes()
    };
    match mutation {
        Mutation::WrongType(i, value) => {
            let key = pick(i);
            let same_type = matches!(
                (&object[&key], value),
                (Value::String(_), Value::String(_)) | (Value::Number(_), Value::Number(_))
            );
            // A number for a number field may still be valid (a float or a negative is not).
            (with(&key, value.clone()), !same_type)
        }
        Mutation::Null(i) => {
            let key = pick(i);
            let required = endpoint.required.contains(&key.as_str());
            (with(&key, Value::Null), required)
        }
        Mutation::Huge(i, c, n) => {
            let key = pick(i);
            let text: String = std::iter::repeat_n(*c, *n).collect();
            // Huge text is never a valid serial, code, secret, URI, name or document.
            (with(&key, Value::String(text)), true)
        }
        Mutation::Odd(i, text) => (with(&pick(i), Value::String(text.clone())), false),
        Mutation::Duplicate(i) => {
            let key = pick(i);
            let mut text = Value::Object(object.clone()).to_string();
            text.pop();
            text.push_str(&format!(",{}:{}}}", json!(key), object[&key]));
            (text.into_bytes(), true)
        }
        Mutation::Unknown(key, value) => {
            let unknown = !KNOWN.contains(&key.as_str());
            (with(key, value.clone()), unknown)
        }
        Mutation::NestedUnknown(i, name) => (with(&pick(i), json!({ name.as_str(): 1 })), true),
        Mutation::Missing(i) => {
            let key = pick(i);
            let mut o = object.clone();
            o.remove(&key);
            let required = endpoint.required.contains(&key.as_str());
            (Value::Object(o).to_string().into_bytes(), required)
        }
        Mutation::Bytes(bytes) => (bytes.clone(), true),
        Mutation::NotObject(value) => {
            // serde also reads a struct from an array of its fields in order; a random
            // array is almost never that, but is not certainly invalid.
            let certain = !value.is_array();
            (value.to_string().into_bytes(), certain)
        }
    }
}

/// The strings a message must never repeat: codes and secrets the body held, and names of
/// fields that are not part of the API.
fn sensitive(body: &[u8], mutation: &Mutation) -> Vec<String> {
    let mut out = vec![
        CODE.to_owned(),
        NEXT_CODE.to_owned(),
        PSK.to_owned(),
        base32(b"a-new-seed-for-enrol!"),
    ];
    out.retain(|s| {
        body.windows(s.len())
            .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
    });
    if let Mutation::Unknown(name, _) | Mutation::NestedUnknown(_, name) = mutation {
        if !KNOWN.contains(&name.as_str()) && must_not_repeat(name) {
            out.push(name.clone());
        }
    }
    out
}

#[test]
fn mutated_bodies_get_a_json_4xx_and_lose_nothing() {
    let server = Server::start(None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let send = |method: &str, path: &str, key: &str, body: Vec<u8>| {
        runtime.block_on(async {
            // A fresh connection per request: a failure cannot hide behind an earlier one.
            let mut conn = Conn::open(server.addr).await.unwrap();
            conn.send(method, path, Some(key), Some("application/json"), body)
                .await
        })
    };
    let post = |path: &str, key: &str, body: Value| {
        send("POST", path, key, body.to_string().into_bytes()).unwrap()
    };
    let admin = server.admin_key.clone();
    for (serial, seed) in [("KEEP-1", KEEP_SECRET), ("T-1", TARGET_SECRET)] {
        let r = post(
            "/v1/tokens",
            &admin,
            json!({"serial": serial, "kind": "hotp", "secret": base32(seed)}),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let show_keep = || send("GET", "/v1/tokens/KEEP-1", &admin, Vec::new()).unwrap();
    let kept = show_keep();
    assert_eq!(kept.status, 200);

    for endpoint in endpoints() {
        let key = if endpoint.key_is_admin {
            &server.admin_key
        } else {
            &server.verify_key
        };
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&mutation(), |mutation| {
                let (body, certain) = apply(&endpoint, &mutation);
                let secrets = sensitive(&body, &mutation);
                let name = endpoint.name;
                let reply = send("POST", endpoint.path, key, body).map_err(|e| {
                    TestCaseError::fail(format!("{name} {mutation:?}: connection failed: {e}"))
                })?;
                prop_assert!(
                    reply.status < 500,
                    "{} {:?}: {} {:?}",
                    name,
                    mutation,
                    reply.status,
                    reply.body
                );
                prop_assert!(
                    reply.content_type.starts_with("application/json"),
                    "{}: {}",
                    name,
                    reply.content_type
                );
                if certain {
                    prop_assert!(
                        (400..500).contains(&reply.status),
                        "{} {:?}: accepted with {} {:?}",
                        name,
                        mutation,
                        reply.status,
                        reply.body
                    );
                }
                if reply.status >= 400 {
                    prop_assert!(
                        ErrorCode::ALL
                            .iter()
                            .any(|c| c.as_str() == reply.str("error")),
                        "{}: undocumented error {:?}",
                        name,
                        reply.body
                    );
                    let message = reply.str("message");
                    prop_assert!(!message.is_empty(), "{}: {:?}", name, reply.body);
                    for secret in &secrets {
                        prop_assert!(
                            !message.contains(secret.as_str()),
                            "{} {:?}: message repeats {:?}: {:?}",
                            name,
                            mutation,
                            secret,
                            message
                        );
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    // Nothing was lost: the token nobody named is exactly as it was and takes its next code.
    assert_eq!(show_keep().body, kept.body);
    let code = hotp(KEEP_SECRET, 0, 6);
    let r = post(
        "/v1/verify",
        &server.verify_key,
        json!({"token": "KEEP-1", "code": code}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    assert!(!server.stderr.lock().unwrap().contains("panicked"));
}

/// Found by the test above: serde's message for a wrongly typed field quoted the value, so a
/// code sent as a number (or a secret as the wrong field) came back in the error message.
/// The message now names the field's expected type and where it is, without the value.
#[test]
fn wrongly_typed_values_are_not_repeated() {
    let server = Server::start(None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let post = |path: &str, key: &str, body: Value| {
        runtime.block_on(async {
            let mut conn = Conn::open(server.addr).await.unwrap();
            conn.post(path, key, &body).await.unwrap()
        })
    };
    let secret = base32(b"a-new-seed-for-enrol!");
    let cases = [
        (
            "/v1/verify",
            &server.verify_key,
            json!({"token": "T-1", "code": 482_915}),
            "invalid type: integer, expected a string",
            "482915",
        ),
        (
            "/v1/verify",
            &server.verify_key,
            json!({"token": "T-1", "code": 482_915.5}),
            "invalid type: floating point, expected a string",
            "482915",
        ),
        (
            "/v1/tokens",
            &server.admin_key,
            json!({"serial": "N-1", "secret": "A", "digits": secret}),
            "invalid type: string, expected u32",
            &secret,
        ),
        (
            "/v1/tokens",
            &server.admin_key,
            json!({"serial": "N-1", "secret": "A", "counter": -482_915}),
            "invalid value: integer, expected u64",
            "482915",
        ),
    ];
    for (path, key, body, want, hidden) in cases {
        let r = post(path, key, body.clone());
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.str("error"), "invalid_request");
        let message = r.str("message");
        assert!(message.starts_with(want), "{body}: {message}");
        assert!(message.contains(" at line 1 column "), "{body}: {message}");
        assert!(!message.contains(hidden), "{body}: {message}");
    }
    // Messages that quote no value are unchanged.
    let r = post(
        "/v1/verify",
        &server.verify_key,
        json!({"token": "T-1", "code": "482915", "digits": 1}),
    );
    assert!(
        r.str("message")
            .starts_with("unknown field (its name is not repeated), expected one of `token`"),
        "{:?}",
        r.body
    );
}

/// From an attack on the running service: a field name may be a code or a secret pasted in
/// the wrong place, and the message named it ("unknown field `482915`"). No part of a name
/// that is not a documented field comes back, on any endpoint; the documented names do.
#[test]
fn unknown_field_names_are_not_repeated() {
    let server = Server::start(None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let post = |path: &str, key: &str, body: &[u8]| {
        runtime.block_on(async {
            let mut conn = Conn::open(server.addr).await.unwrap();
            conn.send(
                "POST",
                path,
                Some(key),
                Some("application/json"),
                body.to_vec(),
            )
            .await
            .unwrap()
        })
    };
    let secret = base32(b"a-new-seed-for-enrol!");
    let names = [
        CODE.to_owned(),
        secret.clone(),
        // A name built to look like the end of serde's own message.
        format!("{CODE}`, expected one of `{CODE}"),
        format!("{CODE}, there are no fields"),
        // JSON escapes in the name (the body is raw text).
        r#"p\u00e5-\"quoted\"-\u0000-name"#.to_owned(),
    ];
    for endpoint in endpoints() {
        let key = if endpoint.key_is_admin {
            &server.admin_key
        } else {
            &server.verify_key
        };
        for name in &names {
            // A raw body, so that the name can be the issue's exact shape.
            let mut body = endpoint.body.to_string();
            body.pop();
            body.push_str(&format!(",\"{name}\":\"\"}}"));
            let r = post(endpoint.path, key, body.as_bytes());
            assert_eq!(
                (r.status, r.str("error")),
                (400, "invalid_request"),
                "{body}: {:?}",
                r.body
            );
            let message = r.str("message");
            assert!(
                message.starts_with("unknown field (its name is not repeated), expected `")
                    || message
                        .starts_with("unknown field (its name is not repeated), expected one of `"),
                "{message}"
            );
            assert!(message.contains(" at line 1 column "), "{message}");
            for hidden in [CODE, secret.as_str(), "quoted", "there are no"] {
                assert!(!message.contains(hidden), "{}: {message}", endpoint.name);
            }
        }
    }
    // The issue's own example, and a name that is only a code.
    let r = post(
        "/v1/verify",
        &server.verify_key,
        br#"{"token":"SN-1","482915":""}"#,
    );
    assert_eq!(r.status, 400);
    assert!(!r.str("message").contains("482915"), "{:?}", r.body);
    assert!(!r.body.to_string().contains("482915"), "{:?}", r.body);
}

/// Found by the barrage above: a counter or period that fits the API's unsigned 64 bits but
/// not the store's signed 64-bit integers was a 500 `internal`. It is the caller's input, so
/// enrolling it is a 400 `invalid_parameters` now (nothing is stored), and a PSKC key with
/// it is refused by itself while the file's other keys are imported.
#[test]
fn counters_and_periods_beyond_the_store_are_a_400() {
    let server = Server::start(None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let send = |path: &str, body: Value| {
        runtime.block_on(async {
            let mut conn = Conn::open(server.addr).await.unwrap();
            conn.post(path, &server.admin_key, &body).await.unwrap()
        })
    };
    let secret = base32(b"a-new-seed-for-enrol!");
    let huge = u64::MAX;
    let over = i64::MAX as u64 + 1;
    let cases = [
        (
            "/v1/tokens",
            json!({"serial": "H-1", "kind": "hotp", "secret": secret, "counter": huge}),
            "H-1",
        ),
        (
            "/v1/tokens",
            json!({"serial": "H-2", "kind": "hotp", "secret": secret, "counter": over}),
            "H-2",
        ),
        (
            "/v1/tokens",
            json!({"serial": "H-3", "kind": "totp", "secret": secret, "period": huge}),
            "H-3",
        ),
        (
            "/v1/tokens",
            json!({"serial": "H-4", "uri": format!("otpauth://hotp/x?secret={secret}&counter={huge}")}),
            "H-4",
        ),
        (
            "/v1/tokens",
            json!({"serial": "H-5", "uri": format!("otpauth://totp/x?secret={secret}&period={over}")}),
            "H-5",
        ),
    ];
    for (path, body, serial) in cases {
        let r = send(path, body.clone());
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.str("error"), "invalid_parameters", "{:?}", r.body);
        assert!(r.str("message").contains("too large"), "{:?}", r.body);
        let shown = runtime.block_on(async {
            let mut conn = Conn::open(server.addr).await.unwrap();
            conn.get(&format!("/v1/tokens/{serial}"), Some(&server.admin_key))
                .await
                .unwrap()
        });
        assert_eq!(shown.status, 404, "{serial} was stored: {:?}", shown.body);
    }
    // In a PSKC file such a key is refused by itself; the file's other keys are imported.
    let figure3 = include_str!("../data/rfc6030-figure3.xml");
    let (head, rest) = figure3.split_at(figure3.find("<KeyPackage>").unwrap());
    let end = rest.find("</KeyPackage>").unwrap() + "</KeyPackage>".len();
    let (package, tail) = rest.split_at(end);
    let big = package
        .replace(
            "<SerialNo>987654321</SerialNo>",
            "<SerialNo>BIG-1</SerialNo>",
        )
        .replace(
            "<PlainValue>0</PlainValue>",
            &format!("<PlainValue>{over}</PlainValue>"),
        );
    assert!(big.contains("BIG-1") && big.contains(&over.to_string()));
    let r = send(
        "/v1/tokens/import",
        json!({"pskc": format!("{head}{big}{package}{tail}")}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["imported"], json!(["987654321"]), "{:?}", r.body);
    assert_eq!(r.body["rejected"][0]["id"], json!("BIG-1"), "{:?}", r.body);
    let reason = r.body["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("counter"), "{reason}");

    // The largest counter the store holds is taken.
    let r = send(
        "/v1/tokens",
        json!({"serial": "H-6", "kind": "hotp", "secret": secret, "counter": i64::MAX}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["next"], json!(i64::MAX), "{:?}", r.body);
}
