//! The verifier through PostgreSQL failovers: three `serve` processes on a Patroni cluster
//! (three PostgreSQL 15 nodes, etcd, synchronous replication; `failover/cluster.rs`), under
//! load from many clients sending valid codes, each code sent at once through two different
//! servers. Faults, one after the other: kill -9 of the primary's postgres; the primary's
//! node frozen (SIGSTOP of Patroni and PostgreSQL) past Patroni's TTL, then thawed; a
//! `patronictl switchover`; etcd stopped and restarted. After each: no code accepted twice,
//! no acknowledged acceptance lost (the last code each client heard `accepted` is `replayed`
//! now), no 5xx but 503, and the window without any acceptance measured and bounded.
//!
//! The longer run of the closing note (not CI) sets `CODEREADER_FAILOVER_ROUNDS` (rounds of
//! each fault, default 1), `CODEREADER_FAILOVER_FREEZES` (freeze lengths in seconds, default
//! `15`), `CODEREADER_FAILOVER_FAULTS` (which, default `kill,freeze,switchover,etcd`),
//! `CODEREADER_FAILOVER_DEADLINE_MS` (`serve --pg-deadline-ms`, default 2000),
//! `CODEREADER_FAILOVER_ASYNC=1` (asynchronous replication: the counter-example; then
//! nothing is asserted, only the table printed) and `CODEREADER_FAILOVER_KEEP=1` (keep the
//! cluster's directory and logs, and say where).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "failover/cluster.rs"]
mod cluster;
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use cluster::Cluster;
use common::{Conn, Server, hotp};

/// Clients, each with its own token.
const CLIENTS: usize = 16;
/// Pause of a client between two codes.
const PAUSE: Duration = Duration::from_millis(150);
/// `serve --pg-deadline-ms`.
const DEADLINE_MS: u64 = 2000;
/// Acceptances to see before a fault, and after the cluster is whole again.
const SETTLE_ACCEPTS: usize = 40;

#[derive(Clone, Debug)]
struct Event {
    sent: Instant,
    done: Instant,
    client: usize,
    counter: u64,
    /// 0: no HTTP answer at all.
    status: u16,
    result: String,
}

fn seed(client: usize) -> Vec<u8> {
    format!("failover test seed of client {client:02}").into_bytes()
}

async fn verify(addr: SocketAddr, key: &str, serial: &str, code: &str) -> (u16, String) {
    let body = json!({"token": serial, "code": code});
    let send = async {
        let mut conn = Conn::open(addr).await.ok()?;
        conn.post("/v1/verify", key, &body).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(30), send).await {
        Ok(Some(r)) => {
            let result = if r.status == 200 {
                r.str("result").to_owned()
            } else {
                r.body["error"].as_str().unwrap_or("").to_owned()
            };
            (r.status, result)
        }
        _ => (0, "no answer".to_owned()),
    }
}

/// How many `verify` lines of `serial`'s audit trail say `accepted`: what the database
/// holds now, against what the clients heard.
async fn audited_accepts(addr: SocketAddr, admin: &str, serial: &str) -> usize {
    let mut count = 0;
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/tokens/{serial}/audit?limit=500&before={b}"),
            None => format!("/v1/tokens/{serial}/audit?limit=500"),
        };
        let mut conn = Conn::open(addr).await.unwrap();
        let r = conn.get(&path, Some(admin)).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        count += r.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "verify" && e["outcome"] == "accepted")
            .count();
        match r.body["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return count,
        }
    }
}

/// Per client, the acceptances the database should hold: every code a client heard
/// `accepted` for, and every code it never heard accepted but later heard `replayed` (its
/// commit happened while the answer was lost: a 503).
fn expected_accepts(events: &[Event]) -> HashMap<usize, usize> {
    let mut codes: HashMap<(usize, u64), (bool, bool)> = HashMap::new();
    for e in events {
        let seen = codes.entry((e.client, e.counter)).or_default();
        seen.0 |= e.result == "accepted";
        seen.1 |= e.result == "replayed";
    }
    let mut expected: HashMap<usize, usize> = HashMap::new();
    for ((client, _), (accepted, replayed)) in codes {
        if accepted || replayed {
            *expected.entry(client).or_default() += 1;
        }
    }
    expected
}

struct Load {
    events: Arc<Mutex<Vec<Event>>>,
    /// Each client's highest counter answered `accepted`.
    accepted: Arc<Mutex<HashMap<usize, u64>>>,
    paused: Arc<AtomicBool>,
    /// Pairs of requests sent and not yet recorded.
    in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Load {
    fn accepts_since(&self, since: Instant) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.sent >= since && e.result == "accepted")
            .count()
    }

    fn wait_accepts(&self, since: Instant, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepts_since(since) < n {
            assert!(
                Instant::now() < deadline,
                "only {} acceptances",
                self.accepts_since(since)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_load(rt: &tokio::runtime::Runtime, servers: &[(SocketAddr, String)]) -> Load {
    let load = Load {
        events: Arc::default(),
        accepted: Arc::default(),
        paused: Arc::default(),
        in_flight: Arc::default(),
        stop: Arc::default(),
    };
    for client in 0..CLIENTS {
        let (a, b) = (
            servers[client % 3].clone(),
            servers[(client + 1) % 3].clone(),
        );
        let (events, accepted) = (load.events.clone(), load.accepted.clone());
        let (paused, stop) = (load.paused.clone(), load.stop.clone());
        let in_flight = load.in_flight.clone();
        rt.spawn(async move {
            let serial = format!("HA-{client:02}");
            let seed = seed(client);
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                in_flight.fetch_add(1, Ordering::SeqCst);
                if paused.load(Ordering::SeqCst) {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let code = hotp(&seed, counter, 6);
                let sent = Instant::now();
                // The same code through two servers at once.
                let ((sa, ra), (sb, rb)) = tokio::join!(
                    verify(a.0, &a.1, &serial, &code),
                    verify(b.0, &b.1, &serial, &code)
                );
                let done = Instant::now();
                let used = [&ra, &rb]
                    .iter()
                    .any(|r| *r == "accepted" || *r == "replayed");
                if ra == "accepted" || rb == "accepted" {
                    accepted.lock().unwrap().insert(client, counter);
                }
                {
                    let mut log = events.lock().unwrap();
                    for (status, result) in [(sa, ra), (sb, rb)] {
                        log.push(Event {
                            sent,
                            done,
                            client,
                            counter,
                            status,
                            result,
                        });
                    }
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if used {
                    counter += 1;
                }
                tokio::time::sleep(PAUSE).await;
            }
        });
    }
    load
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill9,
    Freeze(u64),
    Switchover,
    Etcd,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill9 => write!(f, "kill -9 primary postgres"),
            Fault::Freeze(s) => write!(f, "SIGSTOP primary node {s} s"),
            Fault::Switchover => write!(f, "patronictl switchover"),
            Fault::Etcd => write!(f, "etcd stopped {} s", cluster::TTL + 5),
        }
    }
}

struct Row {
    fault: Fault,
    round: usize,
    doubled: usize,
    lost: usize,
    fives: usize,
    unavailable: usize,
    window: Duration,
    /// Replicas rebuilt because they diverged (see `Cluster::wait_healthy`).
    reinits: usize,
}

fn inject(cluster: &mut Cluster, fault: Fault) {
    let leader = cluster.leader().expect("a leader before the fault");
    match fault {
        Fault::Kill9 => {
            let pm = cluster.nodes[leader].postmaster().expect("postmaster");
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pm.to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        Fault::Freeze(seconds) => {
            let pids: Vec<String> = cluster.nodes[leader]
                .processes()
                .iter()
                .map(u32::to_string)
                .collect();
            let signal = |s: &str| {
                std::process::Command::new("kill")
                    .arg(s)
                    .args(&pids)
                    .status()
                    .unwrap();
            };
            signal("-STOP");
            // The fault is the freeze itself: it lasts this long.
            std::thread::sleep(Duration::from_secs(seconds));
            signal("-CONT");
        }
        Fault::Switchover => cluster.switchover(),
        Fault::Etcd => {
            cluster.stop_etcd();
            std::thread::sleep(Duration::from_secs(cluster::TTL + 5));
            cluster.start_etcd();
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn verification_survives_failovers_without_doubling_or_losing_a_code() {
    let synchronous = std::env::var("CODEREADER_FAILOVER_ASYNC").is_err();
    let rounds: usize = env_or("CODEREADER_FAILOVER_ROUNDS", 1);
    let freezes: Vec<u64> = std::env::var("CODEREADER_FAILOVER_FREEZES")
        .unwrap_or_else(|_| "15".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let mut cluster = Cluster::start(synchronous);
    let url = cluster.url();
    let deadline = env_or("CODEREADER_FAILOVER_DEADLINE_MS", DEADLINE_MS).to_string();
    let extra = [
        "--pg-deadline-ms",
        deadline.as_str(),
        "--pg-connections",
        "8",
    ];
    let first = Server::start_in(cluster.dir().join("serve-a"), Some(&url), &extra);
    let kek = first.dir.join("kek").display().to_string();
    let mut more = extra.to_vec();
    more.extend(["--kek-file", kek.as_str()]);
    let servers = [
        first,
        Server::start_in(cluster.dir().join("serve-b"), Some(&url), &more),
        Server::start_in(cluster.dir().join("serve-c"), Some(&url), &more),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for client in 0..CLIENTS {
        let r = rt.block_on(servers[0].client().add_hotp(
            &servers[0].admin_key,
            &format!("HA-{client:02}"),
            &seed(client),
        ));
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let addrs: Vec<(SocketAddr, String)> = servers
        .iter()
        .map(|s| (s.addr, s.verify_key.clone()))
        .collect();
    let load = start_load(&rt, &addrs);

    let chosen = std::env::var("CODEREADER_FAILOVER_FAULTS")
        .unwrap_or_else(|_| "kill,freeze,switchover,etcd".to_owned());
    let mut faults = Vec::new();
    for name in chosen.split(',').map(str::trim) {
        match name {
            "kill" => faults.push(Fault::Kill9),
            "freeze" => faults.extend(freezes.iter().map(|&s| Fault::Freeze(s))),
            "switchover" => faults.push(Fault::Switchover),
            "etcd" => faults.push(Fault::Etcd),
            other => panic!("CODEREADER_FAILOVER_FAULTS: unknown fault {other}"),
        }
    }
    let mut rows = Vec::new();
    // Audit differences and doubled codes already counted in earlier rows.
    let mut audit_gap = (0, 0);
    let mut doubled_before = 0;
    for round in 0..rounds {
        for &fault in &faults {
            let mut reinits = cluster.wait_healthy(synchronous, Duration::from_secs(180));
            load.wait_accepts(Instant::now(), SETTLE_ACCEPTS, Duration::from_secs(60));
            let start = Instant::now();
            eprintln!("failover: round {round}: {fault}");
            inject(&mut cluster, fault);
            reinits += cluster.wait_healthy(synchronous, Duration::from_secs(180));
            load.wait_accepts(Instant::now(), SETTLE_ACCEPTS, Duration::from_secs(60));
            let end = Instant::now();

            // Every client's last acknowledged acceptance must be used up now.
            load.paused.store(true, Ordering::SeqCst);
            let quiet = Instant::now() + Duration::from_secs(60);
            while load.in_flight.load(Ordering::SeqCst) > 0 {
                assert!(Instant::now() < quiet, "requests still in flight");
                std::thread::sleep(Duration::from_millis(20));
            }
            let last = load.accepted.lock().unwrap().clone();
            let mut lost = 0;
            for (&client, &counter) in &last {
                let code = hotp(&seed(client), counter, 6);
                let (status, result) = rt.block_on(verify(
                    addrs[client % 3].0,
                    &addrs[client % 3].1,
                    &format!("HA-{client:02}"),
                    &code,
                ));
                if result != "replayed" {
                    eprintln!("failover: client {client} code {counter}: {status} {result}");
                    lost += 1;
                }
            }
            // And the database holds exactly the acceptances the clients heard of (a lost
            // commit hides behind the client's next code: only the audit trail shows it).
            let events = load.events.lock().unwrap().clone();
            let expected = expected_accepts(&events);
            let (mut missing, mut surplus) = (0, 0);
            for client in 0..CLIENTS {
                let audited = rt.block_on(audited_accepts(
                    servers[0].addr,
                    &servers[0].admin_key,
                    &format!("HA-{client:02}"),
                ));
                let want = expected.get(&client).copied().unwrap_or(0);
                missing += want.saturating_sub(audited);
                // A code the client will send again (no answer said it was used) may have
                // been committed already: one more line then is no double.
                let pending = events
                    .iter()
                    .rev()
                    .find(|e| e.client == client)
                    .is_some_and(|last| {
                        !events.iter().any(|e| {
                            e.client == client
                                && e.counter == last.counter
                                && (e.result == "accepted" || e.result == "replayed")
                        })
                    });
                surplus += audited.saturating_sub(want + usize::from(pending));
            }
            let (missing, surplus) = (
                missing.saturating_sub(audit_gap.0),
                surplus.saturating_sub(audit_gap.1),
            );
            audit_gap = (audit_gap.0 + missing, audit_gap.1 + surplus);
            lost += missing;
            load.paused.store(false, Ordering::SeqCst);

            let round_events: Vec<&Event> = events
                .iter()
                .filter(|e| e.sent >= start && e.sent <= end)
                .collect();
            let mut accepts: HashMap<(usize, u64), usize> = HashMap::new();
            for e in events.iter().filter(|e| e.result == "accepted") {
                *accepts.entry((e.client, e.counter)).or_default() += 1;
            }
            let doubled_now = accepts.values().filter(|&&n| n > 1).count();
            let doubled = doubled_now - doubled_before + surplus;
            doubled_before = doubled_now;
            let fives = round_events
                .iter()
                .filter(|e| e.status >= 500 && e.status != 503 || e.status == 0)
                .count();
            let unavailable = round_events.iter().filter(|e| e.status == 503).count();
            let mut times: Vec<Instant> = round_events
                .iter()
                .filter(|e| e.result == "accepted")
                .map(|e| e.done)
                .collect();
            times.sort();
            let mut window = Duration::ZERO;
            let mut prev = start;
            for t in times {
                window = window.max(t.saturating_duration_since(prev));
                prev = prev.max(t);
            }
            let unexpected: Vec<&&Event> = round_events
                .iter()
                .filter(|e| e.status == 200 && e.result != "accepted" && e.result != "replayed")
                .collect();
            assert!(
                unexpected.is_empty() || !synchronous,
                "{fault}: {unexpected:?}"
            );
            let row = Row {
                fault,
                round,
                doubled,
                lost,
                fives,
                unavailable,
                window,
                reinits,
            };
            eprintln!(
                "failover: {} round {}: doubled {} lost {} 5xx {} (503: {}) window {:.1} s, \
                 reinit {}",
                row.fault,
                row.round,
                row.doubled,
                row.lost,
                row.fives,
                row.unavailable,
                row.window.as_secs_f64(),
                row.reinits
            );
            rows.push(row);
        }
    }
    load.stop.store(true, Ordering::Relaxed);

    println!(
        "| fault | round | double accepts | lost accepts | 5xx (not 503) | 503 | window s | reinit |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            r.fault,
            r.round,
            r.doubled,
            r.lost,
            r.fives,
            r.unavailable,
            r.window.as_secs_f64(),
            r.reinits
        );
    }
    for fault in &faults {
        let mut w: Vec<f64> = rows
            .iter()
            .filter(|r| r.fault == *fault)
            .map(|r| r.window.as_secs_f64())
            .collect();
        w.sort_by(f64::total_cmp);
        println!(
            "{fault}: window p50 {:.1} s, max {:.1} s",
            w[w.len() / 2],
            w[w.len() - 1]
        );
    }
    if !synchronous {
        return;
    }
    let logs: String = servers
        .iter()
        .map(|s| s.stderr.lock().unwrap().clone())
        .collect();
    for r in &rows {
        assert_eq!(r.doubled, 0, "{}: a code accepted twice", r.fault);
        assert_eq!(r.lost, 0, "{}: an acknowledged acceptance lost", r.fault);
        assert_eq!(r.fives, 0, "{}: a 5xx other than 503\n{logs}", r.fault);
        // The window follows Patroni's failover (TTL), not the length of a freeze.
        let bound = Duration::from_secs(cluster::TTL * 3 + DEADLINE_MS / 1000 * 2);
        assert!(
            r.window < bound,
            "{}: no acceptance for {:?}",
            r.fault,
            r.window
        );
    }
    assert!(
        !logs.contains("db error"),
        "a store error without its SQLSTATE:\n{logs}"
    );
}
