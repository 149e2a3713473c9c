//! The attacks of issue 15, each against the real server on loopback: stalled bodies,
//! slow-header barrages under a small descriptor limit, SIGTERM after load on PostgreSQL,
//! and wrong codes from one client. Each is bounded in count and time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Server, raw_request};

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
