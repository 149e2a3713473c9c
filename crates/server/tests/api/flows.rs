//! The token life cycle over HTTP: enrol, verify, replay, lockout, unlock, disable, activate,
//! resync, PSKC import; auth errors; graceful shutdown.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::common::{
    Server, base32, hotp, raw_request, wait_until_not_listening, wait_until_server_read,
};

const SEED: &[u8] = b"12345678901234567890";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A 6-digit code that is none of `avoid`.
fn wrong_code(avoid: &[String]) -> String {
    (0..)
        .map(|i| format!("{:06}", 111_111 + i))
        .find(|c| !avoid.contains(c))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotp_enroll_verify_replay_lockout_unlock_disable() {
    let server = Server::start(None);
    let c = server.client();
    let (vk, ak) = (server.verify_key.as_str(), server.admin_key.as_str());
    let secret = base32(SEED);

    let r = c
        .post(
            "/v1/tokens",
            ak,
            json!({"serial": "H-1", "kind": "hotp", "secret": secret}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!((r.str("serial"), r.str("kind")), ("H-1", "hotp"));
    assert!(
        !r.body.to_string().contains(&secret),
        "secret echoed: {}",
        r.body
    );
    assert_eq!(r.body["failures"], 0);

    let verify = |code: String| async move { c.verify(vk, "H-1", &code).await };
    let r = verify(hotp(SEED, 0, 6)).await;
    assert_eq!(
        (r.status, r.str("result")),
        (200, "accepted"),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["counter"], 0);
    assert_eq!(r.str("token"), "H-1");
    assert_eq!(verify(hotp(SEED, 0, 6)).await.str("result"), "replayed");
    // A code a little ahead (inside the look-ahead window) is accepted and passes the ones
    // before it: the skipped counter 2 is never accepted afterwards (HOTP cannot tell an old
    // code from a wrong one beyond the last used counter, so it counts as a failure).
    let r = verify(hotp(SEED, 3, 6)).await;
    assert_eq!(
        (r.str("result"), &r.body["counter"]),
        ("accepted", &json!(3))
    );
    assert_eq!(r.body["drift"], 2);
    assert_eq!(verify(hotp(SEED, 3, 6)).await.str("result"), "replayed");
    let r = verify(hotp(SEED, 2, 6)).await;
    assert_eq!(
        (r.str("result"), &r.body["attempts_left"]),
        ("rejected", &json!(2))
    );
    // A success resets the failure count.
    assert_eq!(verify(hotp(SEED, 4, 6)).await.str("result"), "accepted");

    // Three wrong codes lock the token; then even the right code is refused.
    let valid: Vec<String> = (0..40).map(|i| hotp(SEED, i, 6)).collect();
    let wrong = wrong_code(&valid);
    for left in [2, 1, 0] {
        let r = verify(wrong.clone()).await;
        assert_eq!(
            (r.status, r.str("result")),
            (200, "rejected"),
            "{:?}",
            r.body
        );
        assert_eq!(r.body["attempts_left"], left);
    }
    assert_eq!(verify(hotp(SEED, 5, 6)).await.str("result"), "locked");
    let r = c.get("/v1/tokens/H-1", Some(ak)).await;
    assert_eq!(
        (r.status, &r.body["locked"], &r.body["failures"]),
        (200, &json!(true), &json!(3))
    );

    // Unlocking needs the admin scope.
    let r = c.post("/v1/tokens/H-1/unlock", vk, json!({})).await;
    assert_eq!((r.status, r.str("error")), (403, "forbidden"));
    let r = c.post("/v1/tokens/H-1/unlock", ak, json!({})).await;
    assert_eq!(
        (r.status, &r.body["locked"], &r.body["failures"]),
        (200, &json!(false), &json!(0)),
        "{:?}",
        r.body
    );
    assert_eq!(verify(hotp(SEED, 5, 6)).await.str("result"), "accepted");

    // Disable: nothing is accepted any more, and the state says so.
    let r = c
        .send("DELETE", "/v1/tokens/H-1", Some(ak), None, Vec::new())
        .await;
    assert_eq!(
        (r.status, &r.body["enabled"]),
        (200, &json!(false)),
        "{:?}",
        r.body
    );
    assert_eq!(verify(hotp(SEED, 6, 6)).await.str("result"), "disabled");

    let r = c.verify(vk, "nobody", "123456").await;
    assert_eq!((r.status, r.str("result")), (200, "unknown"));

    let text = c.metrics().await;
    for line in [
        "codereader_verifies_total{outcome=\"accepted\"} 4\n",
        "codereader_verifies_total{outcome=\"rejected\"} 4\n",
        "codereader_verifies_total{outcome=\"replayed\"} 2\n",
        "codereader_verifies_total{outcome=\"locked\"} 1\n",
        "codereader_verifies_total{outcome=\"disabled\"} 1\n",
        "codereader_verifies_total{outcome=\"unknown\"} 1\n",
        "codereader_verify_duration_seconds_count 13\n",
        "codereader_store_errors_total 0\n",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }

    let log = server.stderr.lock().unwrap().clone();
    assert!(
        !log.contains(&secret) && !log.contains(&wrong),
        "secret or code in the log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enroll_by_uri_activate_verify_by_user() {
    use codereader_otp::{KeyPolicy, KeyUri};
    let server = Server::start(None);
    let c = server.client();
    let (vk, ak) = (server.verify_key.as_str(), server.admin_key.as_str());
    let uri = format!(
        "otpauth://totp/Bank:alice?secret={}&issuer=Bank&period=30&digits=6",
        base32(SEED)
    );
    let r = c
        .post("/v1/tokens", ak, json!({"serial": "T-1", "uri": uri}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        (r.str("kind"), &r.body["period"], &r.body["user"]),
        ("totp", &json!(30), &json!(null))
    );
    let totp = KeyUri::parse(&uri, KeyPolicy::Rfc4226)
        .unwrap()
        .totp()
        .unwrap();
    let code_at = |offset: i64| {
        let t = now().checked_add_signed(offset * 30).unwrap();
        totp.code_at(codereader_otp::UnixTime(t))
            .unwrap()
            .as_str()
            .to_owned()
    };

    // Not bound yet: verifying by user finds nothing.
    let r = c.verify_user(vk, "alice", &code_at(0)).await;
    assert_eq!(r.str("result"), "unknown");

    // Activation proves possession with a current code.
    let near: Vec<String> = (-2..=2).map(code_at).collect();
    let r = c.activate(ak, "T-1", "alice", &wrong_code(&near)).await;
    assert_eq!(
        (r.status, r.str("result")),
        (200, "rejected"),
        "{:?}",
        r.body
    );
    let r = c.activate(ak, "T-1", "alice", &code_at(0)).await;
    assert_eq!(
        (r.status, r.str("result"), r.str("user")),
        (200, "accepted", "alice"),
        "{:?}",
        r.body
    );
    let r = c.get("/v1/tokens/T-1", Some(ak)).await;
    assert_eq!((r.str("user"), &r.body["failures"]), ("alice", &json!(0)));
    let r = c.activate(ak, "T-1", "bob", &code_at(1)).await;
    assert_eq!(r.status, 409, "{:?}", r.body);

    // By user: the activation code is used; the next step's code (inside the window) is not.
    let r = c.verify_user(vk, "alice", &code_at(0)).await;
    assert_eq!(r.str("result"), "replayed", "{:?}", r.body);
    let r = c.verify_user(vk, "alice", &code_at(1)).await;
    assert_eq!(
        (r.str("result"), r.str("token")),
        ("accepted", "T-1"),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_hotp_and_totp() {
    let server = Server::start(None);
    let c = server.client();
    let (vk, ak) = (server.verify_key.as_str(), server.admin_key.as_str());
    let r = c.add_hotp(ak, "H-2", SEED).await;
    assert_eq!(r.status, 201);
    // Counter 50 is beyond the look-ahead (10): a plain verify refuses it.
    let r = c.verify(vk, "H-2", &hotp(SEED, 50, 6)).await;
    assert_eq!(r.str("result"), "rejected", "{:?}", r.body);
    let r = c
        .resync(ak, "H-2", &hotp(SEED, 50, 6), &hotp(SEED, 52, 6))
        .await;
    assert_eq!(
        r.str("result"),
        "rejected",
        "non-consecutive codes must not resync: {:?}",
        r.body
    );
    let r = c
        .resync(ak, "H-2", &hotp(SEED, 50, 6), &hotp(SEED, 51, 6))
        .await;
    assert_eq!(
        (r.status, r.str("result")),
        (200, "accepted"),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["counter"], 51);
    let r = c.verify(vk, "H-2", &hotp(SEED, 51, 6)).await;
    assert_eq!(r.str("result"), "replayed");
    let r = c.verify(vk, "H-2", &hotp(SEED, 52, 6)).await;
    assert_eq!(
        (r.str("result"), &r.body["counter"]),
        ("accepted", &json!(52))
    );
    assert_eq!(c.get("/v1/tokens/H-2", Some(ak)).await.body["failures"], 0);

    // TOTP: a token whose clock runs 100 steps (50 min) ahead.
    let uri = format!(
        "otpauth://totp/Bank:carol?secret={}&period=30",
        base32(SEED)
    );
    let r = c
        .post("/v1/tokens", ak, json!({"serial": "T-2", "uri": uri}))
        .await;
    assert_eq!(r.status, 201);
    let totp = codereader_otp::KeyUri::parse(&uri, codereader_otp::KeyPolicy::Rfc4226)
        .unwrap()
        .totp()
        .unwrap();
    let ahead = |steps: u64| {
        totp.code_at(codereader_otp::UnixTime(now() + steps * 30))
            .unwrap()
            .as_str()
            .to_owned()
    };
    let r = c.verify(vk, "T-2", &ahead(100)).await;
    assert_eq!(r.str("result"), "rejected");
    let r = c.resync(ak, "T-2", &ahead(100), &ahead(101)).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    // The window is now centred on the drift: the token's next code is accepted.
    let r = c.verify(vk, "T-2", &ahead(102)).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    assert!(r.body["drift"].as_i64().unwrap() >= 100, "{:?}", r.body);
}

fn figure(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_pskc_plaintext_and_preshared_key() {
    // RFC 4226 appendix D, 8 digits: counters 0 and 1.
    let (first, second) = ("84755224", "94287082");
    let server = Server::start(None);
    let c = server.client();
    let (vk, ak) = (server.verify_key.as_str(), server.admin_key.as_str());

    // Raw XML body, plaintext key (RFC 6030 figure 3).
    let fig3 = figure("rfc6030-figure3.xml").into_bytes();
    let r = c.import_xml(ak, fig3.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["imported"], json!(["987654321"]));
    assert_eq!(r.body["rejected"], json!([]));
    let r = c.get("/v1/tokens/987654321", Some(ak)).await;
    assert_eq!(
        (r.str("kind"), &r.body["digits"], &r.body["user"]),
        ("hotp", &json!(8), &json!(null))
    );
    let r = c.verify(vk, "987654321", first).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);

    // The same serial again: the key is refused (reported), and the token is untouched.
    let r = c.import_xml(ak, fig3).await;
    assert_eq!(
        (r.status, &r.body["imported"]),
        (200, &json!([])),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["rejected"][0]["id"], "987654321", "{:?}", r.body);
    assert!(
        r.body["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{:?}",
        r.body
    );
    let r = c.verify(vk, "987654321", first).await;
    assert_eq!(r.str("result"), "replayed", "{:?}", r.body);

    // JSON body with the pre-shared key (RFC 6030 figure 6), on a second server.
    let other = Server::start(None);
    let c2 = other.client();
    // Padded past the 64 KiB cap of other routes: imports have their own, larger cap.
    let fig6 = figure("rfc6030-figure6.xml").replacen(
        "<KeyContainer",
        &format!("<!-- {} -->\n<KeyContainer", "x".repeat(100_000)),
        1,
    );
    let r = c2
        .import_json(&other.admin_key, &fig6, "00000000000000000000000000000000")
        .await;
    // A wrong pre-shared key: the key's MAC does not verify; it is reported, not imported.
    assert_eq!(
        (r.status, &r.body["imported"]),
        (200, &json!([])),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["rejected"].as_array().unwrap().len(),
        1,
        "{:?}",
        r.body
    );
    let r = c2
        .import_json(&other.admin_key, &fig6, "12345678901234567890123456789012")
        .await;
    assert_eq!(
        (r.status, &r.body["imported"]),
        (200, &json!(["987654321"])),
        "{:?}",
        r.body
    );
    let r = c2.verify(&other.verify_key, "987654321", second).await;
    assert_eq!(
        (r.str("result"), &r.body["counter"]),
        ("accepted", &json!(1)),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors() {
    let server = Server::start(None);
    let c = server.client();
    let body = serde_json::to_vec(&json!({"token": "x", "code": "123456"})).unwrap();
    let cases: &[(&str, &str, Option<String>, u16, &str)] = &[
        ("POST", "/v1/verify", None, 401, "unauthorized"),
        (
            "POST",
            "/v1/verify",
            Some("crv_00".into()),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/verify",
            Some(server.admin_key.clone()),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(server.verify_key.clone()),
            403,
            "forbidden",
        ),
        ("GET", "/v1/tokens/x", None, 401, "unauthorized"),
        (
            "GET",
            "/v1/tokens/x",
            Some(server.verify_key.clone()),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/tokens/x/unlock",
            Some(format!("{}0", server.admin_key)),
            401,
            "unauthorized",
        ),
        (
            "DELETE",
            "/v1/tokens/x",
            Some(server.verify_key.clone()),
            403,
            "forbidden",
        ),
    ];
    for (method, path, key, status, error) in cases {
        let r = c
            .send(
                method,
                path,
                key.as_deref(),
                Some("application/json"),
                body.clone(),
            )
            .await;
        assert_eq!(
            (r.status, r.str("error")),
            (*status, *error),
            "{method} {path} {key:?}: {:?}",
            r.body
        );
        assert!(r.content_type.starts_with("application/json"));
    }
    // Another scheme than Bearer.
    let (status, text) = raw_request(
        server.addr,
        format!(
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            server.verify_key
        )
        .as_bytes(),
    );
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    // No auth for health and metrics.
    let r = c.get("/healthz", None).await;
    assert_eq!((r.status, r.str("status")), (200, "ok"));
    let r = c.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight() {
    let mut server = Server::start(None);
    let ak = server.admin_key.clone();
    let c = server.client();
    let r = c.add_hotp(&ak, "H-3", SEED).await;
    assert_eq!(r.status, 201);
    let body = json!({"token": "H-3", "code": hotp(SEED, 0, 6)}).to_string();
    let addr = server.addr;
    let key = server.verify_key.clone();
    // Send the headers and half the body, then SIGTERM, then the rest: the request was in
    // flight when the signal came, so it must be answered.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (a, b) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(a.as_bytes()).unwrap();
    wait_until_server_read(&stream);
    let stopped = std::thread::spawn(move || server.terminate());
    wait_until_not_listening(addr);
    stream.write_all(b.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the JSON body closes (or the server closes the connection).
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if reply.ends_with(b"}") {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"accepted\""), "{reply}");
    let status = stopped.join().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_is_503_and_counted() {
    let pg = codereader_verifier::testing::TempPostgres::start().unwrap();
    let server = Server::start(Some(&pg.url()));
    let c = server.client();
    let r = c.add_hotp(&server.admin_key, "P-1", SEED).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = c.verify(&server.verify_key, "P-1", &hotp(SEED, 0, 6)).await;
    assert_eq!(r.str("result"), "accepted");

    // The database goes away: verifications are 503 `store_unavailable`, never 500, and
    // never a decision made without the store.
    drop(pg);
    let r = c.verify(&server.verify_key, "P-1", &hotp(SEED, 1, 6)).await;
    assert_eq!(
        (r.status, r.str("error")),
        (503, "store_unavailable"),
        "{:?}",
        r.body
    );
    assert!(!r.body.to_string().contains("127.0.0.1"), "{:?}", r.body);
    let r = c.get("/healthz", None).await;
    assert_eq!((r.status, r.str("error")), (503, "store_unavailable"));
    let text = c.metrics().await;
    assert!(
        !text.contains("codereader_store_errors_total 0\n"),
        "store errors not counted:\n{text}"
    );
    assert!(text.contains("codereader_store_errors_total "), "{text}");
    assert!(!server.stderr.lock().unwrap().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_hits_the_request_timeout_then_recovers() {
    let pg = codereader_verifier::testing::TempPostgres::start().unwrap();
    let server = Server::start_with(Some(&pg.url()), &["--request-timeout-ms", "700"]);
    let c = server.client();
    let r = c.add_hotp(&server.admin_key, "S-1", SEED).await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Another session locks the tokens table: the verification cannot proceed.
    let lock = crate::common::TokensLocked::take(&pg.url());
    let started = std::time::Instant::now();
    let r = c.verify(&server.verify_key, "S-1", &hotp(SEED, 0, 6)).await;
    let waited = started.elapsed();
    assert_eq!((r.status, r.str("error")), (503, "timeout"), "{:?}", r.body);
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    lock.release();

    // The verification that timed out still runs to its end once the lock is gone (a
    // blocking store call cannot be cancelled): its code becomes used, so a client that gave
    // up and retries learns "replayed", never a second "accepted".
    let mut next = json!(null);
    for _ in 0..50 {
        next = c.get("/v1/tokens/S-1", Some(&server.admin_key)).await.body["next"].clone();
        if next == json!(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next, json!(1));
    let r = c.verify(&server.verify_key, "S-1", &hotp(SEED, 0, 6)).await;
    assert_eq!(r.str("result"), "replayed", "{:?}", r.body);
    let r = c.verify(&server.verify_key, "S-1", &hotp(SEED, 1, 6)).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reload_on_sighup() {
    let server = Server::start(None);
    let c = server.client();
    let body = json!({"token": "nobody", "code": "123456"});
    let new_key = crate::common::create_key(&server.dir, "verify");
    // Created while the server runs: not known yet.
    let r = c.post("/v1/verify", &new_key, body.clone()).await;
    assert_eq!(r.status, 401);
    server.signal("HUP");
    server
        .wait_for_log("reloaded 3 API key(s)", Duration::from_secs(2))
        .await;
    let status = c.post("/v1/verify", &new_key, body.clone()).await.status;
    assert_eq!(status, 200, "{}", server.log());
    // A damaged file keeps the old keys.
    std::fs::write(server.dir.join("api-keys"), "verify broken\n").unwrap();
    server.signal("HUP");
    server
        .wait_for_log("keeping the old API keys", Duration::from_secs(2))
        .await;
    assert_eq!(c.post("/v1/verify", &new_key, body).await.status, 200);
}
