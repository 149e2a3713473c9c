//! Random requests (bytes, JSON of every shape, odd serials in paths) to every route of the
//! real server: each gets a 2xx or a documented 4xx with a JSON error, never a 5xx or a
//! dropped connection.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

use codereader_verifier_server::error_code::ErrorCode;

use crate::common::{Conn, Server, base32};

const FIELDS: &[&str] = &[
    "client",
    "token",
    "user",
    "code",
    "next_code",
    "serial",
    "uri",
    "secret",
    "kind",
    "algorithm",
    "digits",
    "period",
    "counter",
    "pskc",
    "preshared_key",
    "extra",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[0-9]{0,10}".prop_map(Value::String),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("FZ-1")),
        Just(json!("hotp")),
        Just(json!(base32(b"12345678901234567890"))),
        Just(json!(
            "otpauth://hotp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        )),
        Just(json!(
            "<KeyContainer Version=\"1.0\" xmlns=\"urn:ietf:params:xml:ns:keyprov:pskc\"/>"
        )),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        value().prop_map(|v| v.to_string().into_bytes()),
        // Objects with the right field names and random values: most reach the handlers.
        prop::collection::btree_map(prop::sample::select(FIELDS), leaf(), 1..5).prop_map(|m| {
            let m: Map<String, Value> = m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            Value::Object(m).to_string().into_bytes()
        }),
    ]
}

/// A path segment made of arbitrary bytes, percent-encoded.
fn serial() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FZ-1".to_owned()),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| b.iter().map(|x| format!("%{x:02X}")).collect()),
    ]
}

#[test]
fn random_requests_never_get_a_5xx() {
    let server = Server::start(None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut conn = runtime.block_on(Conn::open(server.addr)).unwrap();
    let r = runtime
        .block_on(conn.post(
            "/v1/tokens",
            &server.admin_key,
            &json!({"serial": "FZ-1", "kind": "hotp", "secret": base32(b"12345678901234567890")}),
        ))
        .unwrap();
    assert_eq!(r.status, 201);

    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..8usize, serial(), body(), any::<bool>());
    runner
        .run(&strategy, |(route, serial, body, json_type)| {
            let (method, path, key) = match route {
                0 => ("POST", "/v1/verify".to_owned(), &server.verify_key),
                1 => ("POST", "/v1/tokens".to_owned(), &server.admin_key),
                2 => ("POST", "/v1/tokens/import".to_owned(), &server.admin_key),
                3 => ("GET", format!("/v1/tokens/{serial}"), &server.admin_key),
                4 => (
                    "POST",
                    format!("/v1/tokens/{serial}/activate"),
                    &server.admin_key,
                ),
                5 => (
                    "POST",
                    format!("/v1/tokens/{serial}/resync"),
                    &server.admin_key,
                ),
                6 => (
                    "POST",
                    format!("/v1/tokens/{serial}/unlock"),
                    &server.admin_key,
                ),
                _ => ("DELETE", format!("/v1/tokens/{serial}"), &server.admin_key),
            };
            let content_type = if json_type {
                "application/json"
            } else {
                "application/pskc+xml"
            };
            // A fresh connection per case: a failure cannot hide behind an earlier one.
            let reply = runtime.block_on(async {
                let mut conn = Conn::open(server.addr).await.unwrap();
                conn.send(method, &path, Some(key), Some(content_type), body.clone())
                    .await
            });
            let reply = reply.map_err(|e| {
                TestCaseError::fail(format!("{method} {path}: connection failed: {e}"))
            })?;
            prop_assert!(reply.status < 500, "{method} {path}: {:?}", reply.body);
            prop_assert!(
                reply.content_type.starts_with("application/json"),
                "{method} {path}: {}",
                reply.content_type
            );
            if reply.status >= 400 {
                prop_assert!(
                    ErrorCode::ALL
                        .iter()
                        .any(|c| c.as_str() == reply.str("error")),
                    "{method} {path}: undocumented error {:?}",
                    reply.body
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(!server.stderr.lock().unwrap().contains("panicked"));
}
