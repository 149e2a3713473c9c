//! The attacks of issue 15, each against the real server on loopback: stalled bodies,
//! slow-header barrages under a small descriptor limit, SIGTERM after load on PostgreSQL,
//! and wrong codes from one client. Each is bounded in count and time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use std::sync::Arc;

use codereader_verifier::testing::TempPostgres;
use serde_json::json;
use tokio::sync::Barrier;

use crate::common::{Conn, Server, hotp, raw_request};

/// A verify request head announcing `length` body bytes, followed by `body`.
fn verify_head(key: &str, length: usize, body: &str) -> String {
    format!(
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
    )
}

fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Issue 15, item 4: a body shorter than its Content-Length waited for the request timeout
/// and got a 503. It is the client's fault: a 408 `body_timeout` once the body deadline
/// passes, whether the body stops short or trickles in, and whichever deadline runs out
/// first; never a 5xx.
#[test]
fn a_stalled_body_is_a_408_after_the_body_deadline() {
    let server = Server::start_with(None, &["--body-timeout-ms", "600"]);
    let key = &server.verify_key;

    // Shorter than announced: 9 bytes of 100, then nothing.
    let started = Instant::now();
    let (status, text) = raw_request(server.addr, verify_head(key, 100, "{\"token\":").as_bytes());
    let waited = started.elapsed();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // Trickling: one byte every 100 ms, never done within the deadline.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(verify_head(key, 40, "").as_bytes())
        .unwrap();
    let started = Instant::now();
    for _ in 0..15 {
        if stream.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // A complete body on a fresh connection is served as usual (unknown token: 200).
    let body = r#"{"token":"NOPE-1","code":"123456"}"#;
    let mut request = verify_head(key, body.len(), body);
    request = request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let (status, text) = raw_request(server.addr, request.as_bytes());
    assert_eq!(status, 200, "{text}");

    // When the request timeout is the shorter one, a body still missing is a 408 all the same.
    let short = Server::start_with(
        None,
        &["--request-timeout-ms", "500", "--body-timeout-ms", "5000"],
    );
    let (status, text) = raw_request(
        short.addr,
        verify_head(&short.verify_key, 100, "{").as_bytes(),
    );
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");

    for server in [&server, &short] {
        let text = crate::common::Client { addr: server.addr };
        let metrics = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(text.metrics());
        assert!(
            metrics.contains("codereader_http_responses_total{class=\"5xx\"} 0\n"),
            "{metrics}"
        );
        assert!(!server.stderr.lock().unwrap().contains("panicked"));
    }
}

/// Issue 15, item 2: on PostgreSQL, a SIGTERM after load panicked ("Cannot start a runtime
/// from within a runtime") and could abort (SIGABRT): the synchronous client's connections
/// were dropped on an async thread. After 300 concurrent verifies (right and wrong codes on
/// 30 tokens), SIGTERM drains and the server exits 0 without any panic.
#[test]
fn sigterm_after_load_on_postgres_exits_0() {
    let pg = TempPostgres::start().unwrap();
    load_then_sigterm(Server::start_with(
        Some(&pg.url()),
        &["--max-failures", "1000"],
    ));
}

/// The same on the default SQLite store.
#[test]
fn sigterm_after_load_on_sqlite_exits_0() {
    load_then_sigterm(Server::start_with(None, &["--max-failures", "1000"]));
}

fn load_then_sigterm(mut server: Server) {
    const TOKENS: usize = 30;
    const REQUESTS: usize = 300;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let c = server.client();
        let seeds: Vec<Vec<u8>> = (0..TOKENS)
            .map(|i| format!("sigterm test seed {i:04}").into_bytes())
            .collect();
        for (i, seed) in seeds.iter().enumerate() {
            let r = c.add_hotp(&server.admin_key, &format!("P-{i}"), seed).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
        let mut conns = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            conns.push(Conn::open(server.addr).await.unwrap());
        }
        let barrier = Arc::new(Barrier::new(REQUESTS));
        let mut tasks = Vec::with_capacity(REQUESTS);
        for (n, mut conn) in conns.into_iter().enumerate() {
            let barrier = barrier.clone();
            let key = server.verify_key.clone();
            let token = n % TOKENS;
            // Every tenth request carries the token's next code, the others a wrong one.
            let code = if n / TOKENS == 0 {
                hotp(&seeds[token], 0, 6)
            } else {
                "000000".to_owned()
            };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let body = json!({"token": format!("P-{token}"), "code": code});
                conn.post("/v1/verify", &key, &body).await.unwrap()
            }));
        }
        let mut accepted = 0;
        for task in tasks {
            let r = task.await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            accepted += usize::from(r.str("result") == "accepted");
        }
        assert_eq!(accepted, TOKENS);
    });
    let status = server.terminate();
    let stderr = server.stderr.lock().unwrap().clone();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("runtime"), "{stderr}");
    assert!(stderr.contains("codereader-verifier: stopped"), "{stderr}");
}
