//! Events and webhooks, end to end: a receiver on 127.0.0.1 that checks every signature,
//! the real server pushing to it (SQLite, and three servers on one PostgreSQL), the pull
//! API and `token events`, a receiver down for a while and down for good, and `kill -9`
//! under load with locks happening.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codereader_verifier::testing::TempPostgres;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;

use crate::common::{BIN, Conn, Server, hotp, run_cli, wrong_hotp};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    json: Value,
}

impl Received {
    /// Whether the signature is the HMAC-SHA256 of `id.timestamp.body` under `key`.
    fn signed_by(&self, key: &[u8]) -> bool {
        let Some(sig) = self.signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = data_encoding::BASE64.decode(sig.as_bytes()) else {
            return false;
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(format!("{}.{}.", self.id, self.timestamp).as_bytes());
        mac.update(&self.body);
        mac.verify_slice(&sig).is_ok()
    }

    fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Inbox {
    /// Answer 503 instead of 204.
    failing: bool,
    got: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1: records every POST, answers 204 (or 503 while failing).
struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_with(None).await
    }

    /// A receiver over HTTPS with this TLS configuration, or plain HTTP.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let shared = inbox.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (inbox, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let inbox = inbox.clone();
                        async move { Ok::<_, hyper::Error>(receive(&inbox, request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Receiver { addr, inbox }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set_failing(&self, failing: bool) {
        self.inbox.lock().unwrap().failing = failing;
    }

    fn got(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().got.clone()
    }

    /// Waits (bounded) until `done` holds for what arrived.
    async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.got()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; got {:?}",
                self.got()
                    .iter()
                    .map(|r| r.json.clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    inbox: &Mutex<Inbox>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = request
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inbox = inbox.lock().unwrap();
    inbox.got.push(Received {
        id,
        timestamp,
        signature,
        body,
        json,
    });
    let status = if inbox.failing { 503 } else { 204 };
    hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Writes a secret file; returns its path and the key it stands for.
fn secret_file(dir: &Path, name: &str, standard: bool) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let key: Vec<u8> = format!("key of {name}, thirty-two bytes!").into_bytes();
    let text = if standard {
        format!("whsec_{}\n", data_encoding::BASE64.encode(&key))
    } else {
        String::from_utf8(key.clone()).unwrap()
    };
    std::fs::write(&path, text).unwrap();
    (path, key)
}

fn seed(i: usize) -> Vec<u8> {
    format!("event-test-seed-{i:08}").into_bytes()
}

/// `(type, token)` of events as JSON bodies.
fn kinds(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["token"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Every event after `after`, through the pull API.
async fn pull(server: &Server, after: u64) -> Vec<Value> {
    let r = server
        .client()
        .get(
            &format!("/v1/events?after={after}&limit=1000"),
            Some(&server.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["events"].as_array().unwrap().clone()
}

fn webhook(url: &str, secret: &Path, extra: &str) -> String {
    format!("{url} secret-file={} {extra}", secret.display())
}

/// A scripted run: every kind of event, once, each POSTed once to the destination that
/// wants it, in id order (so in order per token), validly signed; a receiver checking with
/// another destination's secret sees a bad signature. The pull API and `token events`
/// agree with what was pushed, and `--follow` prints a new event as it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_and_signed() {
    let all = Receiver::start().await;
    let locks = Receiver::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (all_secret, all_key) = secret_file(keys.path(), "all", true);
    let (locks_secret, locks_key) = secret_file(keys.path(), "locks", false);
    let server = Server::start_with(
        None,
        &[
            "--webhook",
            &webhook(&all.url(), &all_secret, "name=all"),
            "--webhook",
            &webhook(
                &locks.url(),
                &locks_secret,
                "name=locks events=token.locked",
            ),
            "--webhook-poll-ms",
            "50",
            "--client-failures",
            "2",
            "--client-window-s",
            "600",
        ],
    );
    let (c, admin, verify) = (server.client(), &server.admin_key, &server.verify_key);
    for i in 1..=3 {
        let r = c.add_hotp(admin, &format!("T{i}"), &seed(i)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    for left in [2, 1, 0] {
        let r = c.verify(verify, "T1", &wrong_hotp(&seed(1))).await;
        assert_eq!(r.body["attempts_left"], left, "{:?}", r.body);
    }
    assert_eq!(
        c.post("/v1/tokens/T1/unlock", admin, serde_json::json!({}))
            .await
            .status,
        200
    );
    let r = c.verify(verify, "T1", &hotp(&seed(1), 0, 6)).await;
    assert_eq!(r.body["result"], "accepted", "{:?}", r.body);
    let r = c
        .resync(admin, "T2", &hotp(&seed(2), 5, 6), &hotp(&seed(2), 6, 6))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c
        .send("DELETE", "/v1/tokens/T2", Some(admin), None, Vec::new())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c
        .activate(admin, "T3", "user-3", &hotp(&seed(3), 0, 6))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A client past its budget of two failures: one burst event, however often it tries.
    for status in [200, 200, 429, 429] {
        let r = c
            .verify_from(verify, "NOPE", "123456", "198.51.100.7")
            .await;
        assert_eq!(r.status, status, "{:?}", r.body);
    }
    run_cli(
        &server.dir,
        &["api-key", "create", "--scope", "verify", "--name", "old"],
    );
    run_cli(&server.dir, &["api-key", "revoke", "--name", "old"]);

    let t = |s: &str| Some(s.to_owned());
    let expected = vec![
        ("token.enrolled".to_owned(), t("T1")),
        ("token.enrolled".to_owned(), t("T2")),
        ("token.enrolled".to_owned(), t("T3")),
        ("token.locked".to_owned(), t("T1")),
        ("token.unlocked".to_owned(), t("T1")),
        ("token.resynced".to_owned(), t("T2")),
        ("token.disabled".to_owned(), t("T2")),
        ("token.activated".to_owned(), t("T3")),
        ("verify.rejected_burst".to_owned(), None),
        ("apikey.revoked".to_owned(), None),
    ];
    // The burst's event is queued without waiting: give it a moment to commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pulled = loop {
        let pulled = pull(&server, 0).await;
        if pulled.len() >= expected.len() || Instant::now() > deadline {
            break pulled;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kinds(&pulled), expected);
    assert_eq!(pulled[3]["why"], "failures");
    assert_eq!(pulled[4]["why"], "admin");
    assert_eq!(pulled[8]["name"], "198.51.100.7");
    assert_eq!(pulled[9]["name"], "old");
    assert!(pulled[9]["caller"].as_str().unwrap().starts_with("cli:"));
    let text = serde_json::to_string(&pulled).unwrap();
    for secretish in ["secret", "code", "kek-"] {
        assert!(!text.contains(secretish), "{secretish} in {text}");
    }
    // Paging: after the fourth, the rest.
    let fourth = pulled[3]["id"].as_u64().unwrap();
    assert_eq!(pull(&server, fourth).await, pulled[4..]);

    all.wait_for("every event pushed", Duration::from_secs(15), |got| {
        got.len() >= expected.len()
    })
    .await;
    locks
        .wait_for("the lock pushed", Duration::from_secs(15), |got| {
            !got.is_empty()
        })
        .await;
    // Proves duplicates do NOT come: every event has arrived, and a second POST of one
    // would follow within the delivery loop's next polls (every 50 ms here), well inside this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = all.got();
    let bodies: Vec<Value> = got.iter().map(|r| r.json.clone()).collect();
    assert_eq!(
        bodies, pulled,
        "each once, in id order, as the pull API has them"
    );
    for r in &got {
        assert_eq!(r.id, r.json["id"].to_string());
        assert!(r.signed_by(&all_key), "bad signature on {}", r.id);
        assert!(!r.signed_by(&locks_key), "a wrong secret must not verify");
    }
    let got = locks.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind(), "token.locked");
    assert!(got[0].signed_by(&locks_key));
    assert!(!got[0].signed_by(&all_key));
    // A body changed on the way does not verify either.
    let mut forged = got[0].clone();
    forged.body = forged.body.replace_slice(b"T1", b"T2");
    assert!(!forged.signed_by(&locks_key));

    // `token events` prints what the pull API gives; `--follow` goes on with new ones.
    let printed = run_cli(&server.dir, &["token", "events"]);
    let printed: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, pulled);
    let last = pulled.last().unwrap()["id"].as_u64().unwrap();
    let mut follow = std::process::Command::new(BIN)
        .args([
            "token",
            "events",
            "--follow",
            "--interval-ms",
            "50",
            "--after",
        ])
        .arg(last.to_string())
        .env("CODEREADER_STATE", &server.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let r = c
        .post("/v1/tokens/T3/unlock", admin, serde_json::json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let line = line_rx.recv_timeout(Duration::from_secs(10));
    follow.kill().unwrap();
    follow.wait().unwrap();
    let event: Value = serde_json::from_str(&line.expect("--follow printed nothing")).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["token"].as_str()),
        (Some("token.unlocked"), Some("T3"))
    );
    assert_eq!(event["id"].as_u64(), Some(last + 1));
}

trait ReplaceSlice {
    fn replace_slice(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceSlice for Vec<u8> {
    fn replace_slice(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("present");
        [&self[..at], to, &self[at + from.len()..]].concat()
    }
}

/// The value of a metric line `name{labels} VALUE`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// Median of the time each of `n` verifications takes (replayed codes: no state changes).
async fn median_verify(server: &Server, n: usize) -> Duration {
    let mut conn = Conn::open(server.addr).await.unwrap();
    let code = hotp(&seed(99), 0, 6);
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = conn
            .verify(&server.verify_key, "FAST", &code)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// A receiver down for a while gets the event once it is back, after retries with the
/// same id; one down for good has it dead-lettered after the retry time, counted in
/// `/metrics`, with `/healthz` degraded while it fails; verifications meanwhile, with one
/// destination hanging every POST until its timeout, are as fast as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_delivery_or_dead_letter() {
    let flaky = Receiver::start().await;
    let gone = Receiver::start().await;
    flaky.set_failing(true);
    gone.set_failing(true);
    // A destination that takes connections and never answers: a server whose verifications
    // waited on delivery would be as slow as the POST timeout.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_url = format!("http://{}/hook", stuck.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stuck.accept().await {
            held.push(stream);
        }
    });
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = secret_file(keys.path(), "s", true);
    // The destinations as a settings file lists them: one string each.
    let settings = keys.path().join("verifier.toml");
    std::fs::write(
        &settings,
        format!(
            "webhook = [{:?}, {:?}, {:?}]\n",
            webhook(&flaky.url(), &secret, "name=flaky"),
            webhook(&gone.url(), &secret, "name=gone"),
            webhook(&stuck_url, &secret, "name=stuck"),
        ),
    )
    .unwrap();
    let server = Server::start_with(
        None,
        &[
            "--config",
            settings.to_str().unwrap(),
            "--webhook-poll-ms",
            "50",
            "--webhook-backoff-ms",
            "100",
            "--webhook-backoff-max-ms",
            "400",
            "--webhook-retry-for-s",
            "4",
            "--webhook-timeout-ms",
            "1000",
        ],
    );
    let c = server.client();
    let r = c.add_hotp(&server.admin_key, "FAST", &seed(99)).await;
    assert_eq!(r.status, 201);
    let r = c
        .verify(&server.verify_key, "FAST", &hotp(&seed(99), 0, 6))
        .await;
    assert_eq!(r.body["result"], "accepted");
    let before = median_verify(&server, 40).await;

    // Both failing: attempts repeat with one id; /healthz names both.
    flaky
        .wait_for("retries", Duration::from_secs(10), |got| got.len() >= 3)
        .await;
    let health = c.get("/healthz", None).await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["status"], "degraded", "{:?}", health.body);
    let failing = health.body["webhooks_failing"].as_array().unwrap().clone();
    assert!(failing.contains(&Value::from("gone")), "{failing:?}");
    server
        .wait_for_log("webhook stuck: event 1 failed", Duration::from_secs(10))
        .await;
    let text = c.metrics().await;
    assert_eq!(
        metric(&text, "codereader_webhook_failing{webhook=\"gone\"}"),
        1.0
    );
    assert!(
        metric(
            &text,
            "codereader_webhook_attempts_total{webhook=\"gone\",result=\"failed\"}"
        ) >= 1.0
    );
    let during = median_verify(&server, 40).await;

    // The flaky one comes back: the same event, once more, succeeds.
    flaky.set_failing(false);
    let attempts_before = flaky.got().len();
    flaky
        .wait_for(
            "delivery after the outage",
            Duration::from_secs(10),
            |got| got.len() > attempts_before,
        )
        .await;
    let got = flaky.got();
    assert!(got.iter().all(|r| r.id == got[0].id && r.signed_by(&key)));
    assert_eq!(got[0].kind(), "token.enrolled");

    // The other is given up on after the retry time: counted, and healthy again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = c.metrics().await;
        let dead = |name: &str| {
            metric(
                &text,
                &format!("codereader_webhook_dead_letters_total{{webhook=\"{name}\"}}"),
            )
        };
        if dead("gone") == 1.0 && dead("stuck") == 1.0 {
            assert_eq!(
                metric(&text, "codereader_webhook_failing{webhook=\"gone\"}"),
                0.0
            );
            assert_eq!(
                metric(
                    &text,
                    "codereader_webhook_dead_letters_total{webhook=\"flaky\"}"
                ),
                0.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(log.contains("webhook gone: gave up on event 1"), "{log}");
    let health = c.get("/healthz", None).await;
    assert_eq!(health.body["status"], "ok", "{:?}", health.body);
    // A failing destination costs verifications nothing measurable.
    assert!(
        during < before * 3 + Duration::from_millis(20),
        "verifies slowed from {before:?} to {during:?} while a webhook failed"
    );
}

/// Three servers on one PostgreSQL, one destination: each event is POSTed by exactly one
/// of them, once (the receiver never fails, so one attempt each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_deliver_each_event_once() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.url();
    let receiver = Receiver::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = secret_file(keys.path(), "s", true);
    let hook = webhook(&receiver.url(), &secret, "name=siem");
    let args = ["--webhook", &hook, "--webhook-poll-ms", "20"];
    let servers = Server::start_three(&url, &args);
    // Events made through all three, concurrently.
    let mut tasks = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        let (c, admin) = (server.client(), server.admin_key.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let r = c.add_hotp(&admin, &format!("S{n}-{i}"), &seed(i)).await;
                assert_eq!(r.status, 201, "{:?}", r.body);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let pulled = pull(&servers[1], 0).await;
    assert_eq!(pulled.len(), 45);
    receiver
        .wait_for("every event", Duration::from_secs(20), |got| {
            got.len() >= 45
        })
        .await;
    // Three pollers at 20 ms each: a second POST of any event would show by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.got();
    let mut seen = HashMap::new();
    for r in &got {
        assert!(r.signed_by(&key));
        *seen.entry(r.id.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    let bodies: Vec<Value> = got.iter().map(|r| r.json.clone()).collect();
    assert_eq!(bodies, pulled);
}

/// `kill -9` at a random moment while tokens are being locked, then a restart: every lock
/// the store holds has its `token.locked` event delivered (duplicates only with the same
/// id and body), and no token that is not locked has one.
async fn kill_during_locks(mut server: Server, receiver: Receiver) {
    const TOKENS: usize = 48;
    let c = server.client();
    for i in 0..TOKENS {
        let r = c
            .add_hotp(&server.admin_key, &format!("K-{i}"), &seed(i))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let locked_answered = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut tasks = Vec::new();
    for i in 0..TOKENS {
        let (addr, key, answered) = (
            server.addr,
            server.verify_key.clone(),
            locked_answered.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                return;
            };
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(3 * (i as u64 % 16))).await;
                match conn
                    .verify(&key, &format!("K-{i}"), &wrong_hotp(&seed(i)))
                    .await
                {
                    Ok(r) if r.body["attempts_left"] == 0 => answered.lock().unwrap().push(i),
                    Ok(r) => assert_eq!(r.body["result"], "rejected", "{:?}", r.body),
                    Err(_) => return,
                }
            }
        }));
    }
    // A random moment once locks are under way.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let kill_after = 1 + nanos % (TOKENS / 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while locked_answered.lock().unwrap().len() < kill_after && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    let answered = locked_answered.lock().unwrap().clone();
    assert!(!answered.is_empty(), "no lock answered before the kill");
    server.spawn();
    let c = server.client();
    let mut locked = Vec::new();
    for i in 0..TOKENS {
        let r = c
            .get(&format!("/v1/tokens/K-{i}"), Some(&server.admin_key))
            .await;
        if r.body["locked"] == true {
            locked.push(format!("K-{i}"));
        }
    }
    for i in &answered {
        assert!(
            locked.contains(&format!("K-{i}")),
            "K-{i} answered locked, not stored"
        );
    }
    let events: Vec<Value> = pull(&server, 0).await;
    let mut lock_events: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "token.locked")
        .map(|e| e["token"].as_str().unwrap().to_owned())
        .collect();
    lock_events.sort();
    let mut expected = locked.clone();
    expected.sort();
    assert_eq!(
        lock_events, expected,
        "one event per committed lock, none other"
    );
    let total = events.len();
    receiver
        .wait_for(
            "every event after the restart",
            Duration::from_secs(20),
            |got| {
                let ids: std::collections::HashSet<&str> =
                    got.iter().map(|r| r.id.as_str()).collect();
                ids.len() >= total
            },
        )
        .await;
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in receiver.got() {
        if let Some(earlier) = by_id.insert(r.id.clone(), r.json.clone()) {
            assert_eq!(earlier, r.json, "a duplicate differs");
        }
    }
    let delivered: Vec<Value> = by_id.into_values().collect();
    let mut delivered = delivered;
    delivered.sort_by_key(|e| e["id"].as_u64());
    assert_eq!(delivered, events);
}

fn kill_server(db: Option<&str>, receiver: &Receiver, secret: &Path) -> Server {
    Server::start_with(
        db,
        &[
            "--webhook",
            &webhook(&receiver.url(), secret, "name=k"),
            "--webhook-poll-ms",
            "20",
            // The lease a killed server leaves behind (twice this, at least 5 s) is what its
            // successor waits out.
            "--webhook-timeout-ms",
            "1000",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_locking_loses_and_invents_no_event_sqlite() {
    let receiver = Receiver::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = secret_file(keys.path(), "s", true);
    let server = kill_server(None, &receiver, &secret);
    kill_during_locks(server, receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_locking_loses_and_invents_no_event_postgres() {
    let pg = TempPostgres::start().unwrap();
    let receiver = Receiver::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = secret_file(keys.path(), "s", true);
    let server = kill_server(Some(&pg.url()), &receiver, &secret);
    kill_during_locks(server, receiver).await;
}

/// HTTPS destinations: one whose certificate chains to its `ca=` file gets the event; one
/// whose certificate does not is never sent a byte of it (the handshake fails, counted as a
/// failed attempt). Plain http to anything but loopback is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_destinations_are_checked_against_their_ca() {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (crate::tls::new_ca(), crate::tls::new_ca());
    let (cert, key) = crate::tls::leaf(&ours, true);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let trusted = Receiver::start_with(Some(acceptor.clone())).await;
    let untrusted = Receiver::start_with(Some(acceptor)).await;
    let (our_ca, their_ca) = (dir.path().join("ours.pem"), dir.path().join("theirs.pem"));
    std::fs::write(&our_ca, ours.cert.pem()).unwrap();
    std::fs::write(&their_ca, theirs.cert.pem()).unwrap();
    let (secret, key) = secret_file(dir.path(), "s", true);
    let https = |r: &Receiver| format!("https://localhost:{}/hook", r.addr.port());
    let server = Server::start_with(
        None,
        &[
            "--webhook",
            &webhook(
                &https(&trusted),
                &secret,
                &format!("name=good ca={}", our_ca.display()),
            ),
            "--webhook",
            &webhook(
                &https(&untrusted),
                &secret,
                &format!("name=bad ca={}", their_ca.display()),
            ),
            "--webhook-poll-ms",
            "50",
            "--webhook-backoff-ms",
            "50",
        ],
    );
    let c = server.client();
    assert_eq!(
        c.add_hotp(&server.admin_key, "TLS-1", &seed(1))
            .await
            .status,
        201
    );
    trusted
        .wait_for("delivery over HTTPS", Duration::from_secs(15), |got| {
            !got.is_empty()
        })
        .await;
    assert!(trusted.got()[0].signed_by(&key));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = c.metrics().await;
        let failed = "codereader_webhook_attempts_total{webhook=\"bad\",result=\"failed\"}";
        if metric(&text, failed) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(untrusted.got().is_empty());
    let log = server.log();
    assert!(
        log.contains("webhook bad: event 1 failed, retrying: TLS"),
        "{log}"
    );

    let refused = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--webhook"])
        .arg(webhook("http://example.com/hook", &secret, ""))
        .env("CODEREADER_STATE", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("plain http only to loopback"), "{said}");
}
