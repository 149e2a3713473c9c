//! Load generator for `cargo xtask bench-verifier`: starts the real server (release build)
//! on 127.0.0.1 for SQLite and for a throwaway PostgreSQL, enrols HOTP tokens over HTTP,
//! then drives keep-alive connections with valid, never-used codes (every verification is
//! a real accept: read, HMAC, compare-and-set, audit) and prints verifies/s and latency.
//!
//! Baselines, measured in the same run: requests that pass auth and JSON parsing but carry a
//! malformed code (answered 400 before any store work) — the HTTP floor of this machine —
//! and the library alone, in process, on the same store with as many threads as there are
//! connections — what the verifications cost without HTTP. The table shows both ratios.
//!
//! Bounded in count and time: `--seconds S` per phase (default 5), `--max-requests N` per
//! phase (default 400000), `--connections C` (default 32), `--tokens T` (default 2000),
//! `--stores sqlite,sqlite-normal,postgres` (sqlite-normal: `--sqlite-normal-sync`),
//! `--store-concurrency N` (passed to the server), `--server-arg ARG` (repeatable: any other
//! `serve` option, e.g. `--server-arg --worker-threads --server-arg 1`, to compare tunings).
//!
//! PostgreSQL's rows are followed by pgbench's rate for one durable single-row `UPDATE` on the
//! same cluster, in the same run (once before and once after the verify phases), and the
//! verify rates as ratios of it (`pgbench/mod.rs`). `--pg-pools 16,32,64` adds a verify
//! phase per pool size (the server's `--pg-connections`), each on a database of its own on
//! the same cluster and with at least as many load connections as the pool holds, so that
//! the pool is full: what a pool size is worth is measured beside pgbench in one run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "pgbench/mod.rs"]
mod pgbench;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use codereader_verifier::testing::{PgOptions, TempPostgres};
use common::{Conn, Server, base32, hotp};
use serde_json::json;

struct Options {
    seconds: u64,
    max_requests: usize,
    connections: usize,
    tokens: usize,
    stores: Vec<String>,
    store_concurrency: Option<String>,
    server_args: Vec<String>,
    /// Pool sizes (`--pg-connections`) for the extra PostgreSQL verify phases.
    pg_pools: Vec<usize>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        max_requests: 400_000,
        connections: 32,
        tokens: 2000,
        stores: vec!["sqlite".into(), "sqlite-normal".into(), "postgres".into()],
        store_concurrency: None,
        server_args: Vec::new(),
        pg_pools: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => o.seconds = value.parse().expect("--seconds N"),
            "--max-requests" => o.max_requests = value.parse().expect("--max-requests N"),
            "--connections" => o.connections = value.parse().expect("--connections N"),
            "--tokens" => o.tokens = value.parse().expect("--tokens N"),
            "--stores" => o.stores = value.split(',').map(str::to_owned).collect(),
            "--store-concurrency" => o.store_concurrency = Some(value),
            "--server-arg" => o.server_args.push(value),
            "--pg-pools" => {
                o.pg_pools = value
                    .split(',')
                    .map(|n| {
                        n.parse::<usize>()
                            .expect("--pg-pools N,N,...")
                            .clamp(1, 500)
                    })
                    .collect();
            }
            _ => {
                // `cargo bench` adds `--bench`; anything else unknown is ignored too.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    // Then only a small smoke run checks that the generator still works: no load test in CI.
    if !args.iter().any(|a| a == "--bench") {
        o.seconds = 1;
        o.max_requests = 1000;
        o.connections = 4;
        o.tokens = 40;
        o.stores = vec!["sqlite".into()];
    }
    o.seconds = o.seconds.clamp(1, 60);
    o.max_requests = o.max_requests.clamp(1000, 5_000_000);
    o.connections = o.connections.clamp(1, 1000);
    o.tokens = o.tokens.clamp(o.connections, 100_000);
    o
}

struct Phase {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<u32>,
    unexpected: usize,
    /// CPU time (user + system, all threads) the server process used during the phase; for
    /// the in-process phase, the benchmark's own process.
    server_cpu: Duration,
    /// CPU time the load generator used (zero in process).
    client_cpu: Duration,
    /// CPU time the PostgreSQL cluster used (zero on SQLite, whose work is the server's).
    database_cpu: Duration,
}

/// The PostgreSQL cluster's postmaster while a PostgreSQL store runs (0: none), so that each
/// phase also counts the database's CPU time per request: on two cores shared by server,
/// load generator and database, that is what a durable verify costs beside pgbench.
static POSTMASTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn database_cpu() -> Duration {
    match POSTMASTER.load(Ordering::Relaxed) {
        0 => Duration::ZERO,
        pm => pgbench::cluster_cpu(pm),
    }
}

/// CPU time (user + system, every thread, live or ended) a process has used so far, from
/// `/proc/PID/stat` in clock ticks of 1/100 s (Linux's `USER_HZ` on every architecture).
fn cpu_time(pid: &str) -> Duration {
    let fields = pgbench::stat(pid).unwrap();
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    /// Microseconds of CPU per request: (server, load generator, database).
    fn cpu_per_request(&self) -> (f64, f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.requests.max(1) as f64;
        (
            per(self.server_cpu),
            per(self.client_cpu),
            per(self.database_cpu),
        )
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies[i]) / 1000.0
    }
}

/// A keep-alive HTTP/1.1 connection that sends prebuilt requests and reads each reply
/// just far enough to check it: the way `wrk` drives a server. A general client (hyper's,
/// with a task per connection, header maps and a JSON parse per reply) took a fifth of this
/// machine's two cores away from the server it measured.
struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// What a reply said, as far as the benchmark checks it.
struct RawReply {
    status: u16,
    /// Whether the body holds the text looked for.
    result_matches: bool,
}

impl RawConn {
    async fn open(addr: std::net::SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads one reply; `want` is the text
    /// looked for in its body (e.g. `"result":"accepted"`).
    async fn round_trip(&mut self, request: &[u8], want: Option<&[u8]>) -> RawReply {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        let (head_end, body_len) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                let len = head
                    .split("\r\n")
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .expect("a reply with content-length");
                break (end + 4, len);
            }
            self.fill().await;
        };
        while self.buf.len() < head_end + body_len {
            self.fill().await;
        }
        assert_eq!(self.buf.len(), head_end + body_len, "one reply per request");
        let status = std::str::from_utf8(&self.buf[9..12])
            .unwrap()
            .parse()
            .unwrap();
        let body = &self.buf[head_end..];
        let result_matches = want.is_some_and(|w| find(body, w).is_some());
        return RawReply {
            status,
            result_matches,
        };

        fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
            hay.windows(needle.len()).position(|w| w == needle)
        }
    }

    async fn fill(&mut self) {
        use tokio::io::AsyncReadExt;
        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

/// A whole `POST /v1/verify` request carrying `body`.
fn verify_request(key: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/verify HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Sends each connection's bodies in order until they run out or time is up.
async fn drive(
    server: &Server,
    bodies: Vec<Vec<Vec<u8>>>,
    expect_status: u16,
    expect_result: Option<&'static str>,
    seconds: u64,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    // Requests are built before the clock starts.
    let requests: Vec<Vec<Vec<u8>>> = bodies
        .into_iter()
        .map(|list| {
            list.iter()
                .map(|b| verify_request(&server.verify_key, b))
                .collect()
        })
        .collect();
    let server_pid = server.pid().unwrap().to_string();
    let (server_before, client_before, database_before) =
        (cpu_time(&server_pid), cpu_time("self"), database_cpu());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for list in requests {
        let (addr, stop) = (server.addr, stop.clone());
        let want = expect_result.map(|r| format!("\"result\":\"{r}\"").into_bytes());
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::open(addr).await;
            let mut latencies = Vec::with_capacity(list.len());
            let mut unexpected = 0usize;
            for request in &list {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                let r = conn.round_trip(request, want.as_deref()).await;
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if r.status != expect_status || (expect_result.is_some() && !r.result_matches) {
                    unexpected += 1;
                }
            }
            (latencies, unexpected)
        }));
    }
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut latencies = Vec::new();
    let mut unexpected = 0;
    for task in tasks {
        let (l, u) = task.await.unwrap();
        latencies.extend(l);
        unexpected += u;
    }
    let elapsed = started.elapsed();
    let (server_cpu, client_cpu, database_cpu) = (
        cpu_time(&server_pid) - server_before,
        cpu_time("self") - client_before,
        database_cpu() - database_before,
    );
    timer.abort();
    latencies.sort_unstable();
    Phase {
        requests: latencies.len(),
        elapsed,
        latencies,
        unexpected,
        server_cpu,
        client_cpu,
        database_cpu,
    }
}

fn seed(i: usize) -> Vec<u8> {
    format!("bench-seed-{i:010}-padding").into_bytes()
}

async fn run_store(store: &str, o: &Options) -> Vec<(String, Phase)> {
    let mut pg = None;
    let mut pg_url = None;
    let mut pgbench_before = None;
    let mut extra = Vec::new();
    if let Some(n) = &o.store_concurrency {
        extra.extend(["--store-concurrency", n.as_str()]);
    }
    extra.extend(o.server_args.iter().map(String::as_str));
    let server = match store {
        // The default: every commit fsynced.
        "sqlite" => Server::start_with(None, &extra),
        // synchronous=NORMAL: survives kill -9, not a power cut.
        "sqlite-normal" => {
            extra.push("--sqlite-normal-sync");
            Server::start_with(None, &extra)
        }
        "postgres" => {
            // Durable commits (fsync on), like the SQLite store's default.
            let cluster = TempPostgres::start_with(PgOptions::default().with_fsync(true)).unwrap();
            pgbench_before = Some(pgbench::before(&cluster));
            POSTMASTER.store(
                pgbench::postmaster(&cluster).unwrap_or(0),
                Ordering::Relaxed,
            );
            pg_url = Some(cluster.url());
            let server = Server::start_with(Some(&cluster.url()), &extra);
            pg = Some(cluster);
            server
        }
        other => panic!("unknown store {other} (sqlite, sqlite-normal, postgres)"),
    };
    enrol(store, &server, o.tokens).await;

    // Baseline: the HTTP floor (auth + JSON + code check, no store).
    let per_conn = o.max_requests / o.connections;
    let floor_bodies: Vec<Vec<Vec<u8>>> = (0..o.connections)
        .map(|_| vec![br#"{"token": "B-0", "code": "12345x"}"#.to_vec(); per_conn])
        .collect();
    let floor = drive(&server, floor_bodies, 400, None, o.seconds).await;

    let verify = verify_phase(store, &server, o.connections, o.tokens, o).await;
    // On a thread of its own: the sync `postgres` client runs its own runtime, which may not
    // start inside this one.
    let library = std::thread::scope(|scope| {
        scope
            .spawn(|| in_process(store, &server, pg_url.as_deref(), o))
            .join()
            .unwrap()
    });
    let mut rows = vec![
        (format!("{store}: floor (400, no store)"), floor),
        (format!("{store}: verify (accepted)"), verify),
        (format!("{store}: library in process"), library),
    ];
    if let (Some(pg), Some(before)) = (&pg, pgbench_before) {
        let pool = pool_of(&o.server_args);
        let mut verifies = vec![
            (
                format!("{store}: verify, pool {pool}, {} conns", o.connections),
                rows[1].1.rate(),
            ),
            (
                format!("{store}: library, pool {pool}, {} threads", o.connections),
                rows[2].1.rate(),
            ),
        ];
        // The first server is idle now; its store connections stay open, as pgbench's are.
        for &pool in &o.pg_pools {
            let (name, phase) = pool_phase(store, pg, pool, &extra, o).await;
            verifies.push((name.clone(), phase.rate()));
            rows.push((name, phase));
        }
        pgbench::after(store, pg, before, verifies);
    }
    rows
}

/// The server's `--pg-connections` as `args` give it, else the store's default.
fn pool_of(args: &[String]) -> usize {
    args.iter()
        .position(|a| a == "--pg-connections")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(codereader_verifier::store::postgres::DEFAULT_MAX_CONNECTIONS)
}

/// A verify phase on a server holding at most `pool` connections, on a fresh database of
/// `pg`, driven by at least `pool` load connections (fewer could not fill the pool).
async fn pool_phase(
    store: &str,
    pg: &TempPostgres,
    pool: usize,
    extra: &[&str],
    o: &Options,
) -> (String, Phase) {
    let db = format!("pool{pool}_{}", std::process::id());
    // On a thread of its own: the sync `postgres` client runs a runtime of its own.
    let url = std::thread::scope(|scope| scope.spawn(|| pg.create_database(&db)).join())
        .unwrap()
        .unwrap();
    let pool_arg = pool.to_string();
    // The first server's own `--pg-connections`, if given, is replaced by this pool's.
    let mut args: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < extra.len() {
        if extra[i] == "--pg-connections" {
            i += 2;
            continue;
        }
        args.push(extra[i]);
        i += 1;
    }
    args.extend(["--pg-connections", pool_arg.as_str()]);
    let server = Server::start_with(Some(&url), &args);
    let connections = o.connections.max(pool);
    let tokens = o.tokens.max(connections);
    enrol(store, &server, tokens).await;
    let phase = verify_phase(store, &server, connections, tokens, o).await;
    (
        format!("{store}: verify, pool {pool}, {connections} conns"),
        phase,
    )
}

/// Enrols HOTP tokens `B-0`..`B-{tokens-1}` over HTTP.
async fn enrol(store: &str, server: &Server, tokens: usize) {
    eprintln!("bench-verifier: {store}: enrolling {tokens} tokens");
    let mut conn = Conn::open(server.addr).await.unwrap();
    for i in 0..tokens {
        let body = json!({"serial": format!("B-{i}"), "kind": "hotp", "secret": base32(&seed(i))});
        let r = conn
            .post("/v1/tokens", &server.admin_key, &body)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
}

/// Accepted verifications on `connections` keep-alive connections: connection j owns tokens
/// j, j+C, ...; it walks their counters in turn, so every request carries a valid code that
/// was never used.
async fn verify_phase(
    store: &str,
    server: &Server,
    connections: usize,
    tokens: usize,
    o: &Options,
) -> Phase {
    let per_conn = o.max_requests / connections;
    eprintln!(
        "bench-verifier: {store}: precomputing {} codes",
        per_conn * connections
    );
    let bodies: Vec<Vec<Vec<u8>>> = (0..connections)
        .map(|j| {
            let owned: Vec<usize> = (j..tokens).step_by(connections).collect();
            (0..per_conn)
                .map(|n| {
                    let token = owned[n % owned.len()];
                    let counter = (n / owned.len()) as u64;
                    json!({"token": format!("B-{token}"), "code": hotp(&seed(token), counter, 6)})
                        .to_string()
                        .into_bytes()
                })
                .collect()
        })
        .collect();
    drive(server, bodies, 200, Some("accepted"), o.seconds).await
}

/// The library without HTTP: `connections` threads verify fresh HOTP codes of their own
/// tokens on the same database the server uses (the server is idle meanwhile), the way the
/// server does: [`Verifier::verify_then`] (on SQLite, the whole verification on the writer
/// thread), each thread waiting for its answer.
fn in_process(store: &str, server: &Server, pg_url: Option<&str>, o: &Options) -> Phase {
    use codereader_otp::{Algorithm, Counter, Digits, KeyPolicy, Secret, UnixTime};
    use codereader_verifier::{
        Caller, Durability, Enrollment, Kek, Keyring, Outcome, OwnedSubject, PgStore, Policy,
        SqliteOptions, SqliteStore, Store, TokenId, TokenKind, TokenParams, Verifier,
    };
    let boxed: Box<dyn Store> = match pg_url {
        Some(url) => Box::new(PgStore::connect(url).unwrap()),
        None => {
            let durability = if store == "sqlite-normal" {
                Durability::Normal
            } else {
                Durability::Full
            };
            Box::new(
                SqliteStore::open_with(
                    server.dir.join("verifier.sqlite"),
                    SqliteOptions::default().with_durability(durability),
                )
                .unwrap(),
            )
        }
    };
    let verifier = std::sync::Arc::new(Verifier::new(
        boxed,
        Keyring::new(Kek::generate().unwrap()),
        Policy::default(),
    ));
    let caller = Caller::new("bench").unwrap();
    let now = UnixTime(1_700_000_000);
    let tokens: Vec<Enrollment> = (0..o.tokens)
        .map(|i| Enrollment {
            id: TokenId::new(format!("I-{i}")).unwrap(),
            params: TokenParams {
                kind: TokenKind::Hotp,
                algorithm: Algorithm::Sha1,
                digits: Digits::SIX,
            },
            secret: Secret::new(seed(i), KeyPolicy::Rfc4226).unwrap(),
            counter: Counter(0),
        })
        .collect();
    verifier.enroll(&tokens, now, &caller).unwrap();
    let per_thread = o.max_requests / o.connections;
    let codes: Vec<Vec<(TokenId, codereader_otp::Code)>> = (0..o.connections)
        .map(|j| {
            let owned: Vec<usize> = (j..o.tokens).step_by(o.connections).collect();
            (0..per_thread)
                .map(|n| {
                    let token = owned[n % owned.len()];
                    let counter = (n / owned.len()) as u64;
                    let code =
                        codereader_otp::Code::parse(&hotp(&seed(token), counter, 6)).unwrap();
                    (TokenId::new(format!("I-{token}")).unwrap(), code)
                })
                .collect()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let (cpu_before, database_before) = (cpu_time("self"), database_cpu());
    let started = Instant::now();
    let results: Vec<(Vec<u32>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = codes
            .iter()
            .map(|list| {
                let (verifier, caller) = (&verifier, &caller);
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(list.len());
                    let mut unexpected = 0;
                    for (id, code) in list {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t = Instant::now();
                        let (reply, answer) = std::sync::mpsc::sync_channel(1);
                        verifier.verify_then(
                            OwnedSubject::Token(id.clone()),
                            *code,
                            now,
                            caller.clone(),
                            move |r| {
                                let _ = reply.send(r);
                            },
                        );
                        let outcome = answer.recv().unwrap();
                        latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        if !matches!(outcome, Ok(Outcome::Accepted(_))) {
                            unexpected += 1;
                        }
                    }
                    (latencies, unexpected)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let (server_cpu, database_cpu) = (
        cpu_time("self") - cpu_before,
        database_cpu() - database_before,
    );
    let mut latencies: Vec<u32> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    latencies.sort_unstable();
    Phase {
        requests: latencies.len(),
        elapsed,
        unexpected: results.iter().map(|(_, u)| u).sum(),
        latencies,
        server_cpu,
        client_cpu: Duration::ZERO,
        database_cpu,
    }
}

/// The store a row belongs to: its name up to the first colon (`sqlite: floor ...`).
fn store_of(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// The rate of the row of `name`'s store whose phase name contains `phase`, if any.
fn rate_of(rows: &[(String, Phase)], name: &str, phase: &str) -> Option<f64> {
    rows.iter()
        .find(|(other, _)| store_of(other) == store_of(name) && other.contains(phase))
        .map(|(_, p)| p.rate())
}

/// The table: each row beside its own store's HTTP floor and library phases (found by name,
/// so a store may add phases of its own).
fn print_table(rows: &[(String, Phase)], cores: usize) {
    println!(
        "\n{:<34} {:>9} {:>11} {:>9} {:>9} {:>13} {:>11} {:>11} {:>10} {:>10} {:>7} {:>10}",
        "phase",
        "requests",
        "per second",
        "p50 ms",
        "p99 ms",
        "vs HTTP floor",
        "vs library",
        "unexpected",
        "server us",
        "loadgen us",
        "db us",
        "cpu bound/s"
    );
    for (name, phase) in rows {
        let floor = rate_of(rows, name, "floor").unwrap_or(f64::NAN);
        let library = rate_of(rows, name, "library").unwrap_or(f64::NAN);
        let (server_us, client_us, database_us) = phase.cpu_per_request();
        println!(
            "{:<34} {:>9} {:>11.0} {:>9.3} {:>9.3} {:>12.2}x {:>10.2}x {:>11} {:>10.1} {:>10.1} {:>7.1} {:>11.0}",
            name,
            phase.requests,
            phase.rate(),
            phase.percentile(0.50),
            phase.percentile(0.99),
            phase.rate() / floor,
            phase.rate() / library,
            phase.unexpected,
            server_us,
            client_us,
            database_us,
            cores as f64 * 1e6 / (server_us + client_us + database_us),
        );
    }
    println!(
        "\nvs HTTP floor / vs library: the phase's rate over its store's floor phase and its \
         library-in-process phase, both measured in this run"
    );
    if let Some(goal) = sqlite_goal(rows) {
        println!("{goal}");
    }
}

/// Issue 27's goal for SQLite (synchronous=FULL), judged on this run's figures.
fn sqlite_goal(rows: &[(String, Phase)]) -> Option<String> {
    let (name, verify) = rows
        .iter()
        .find(|(n, _)| n == "sqlite: verify (accepted)")?;
    let ratio = verify.rate() / rate_of(rows, name, "floor")?;
    let p99 = verify.percentile(0.99);
    let met = ratio >= 0.5 && p99 < 5.0;
    Some(format!(
        "goal (issue 27): SQLite FULL verify over HTTP >= 0.50x the HTTP floor with p99 < 5 ms: \
         {ratio:.2}x, p99 {p99:.2} ms: {}",
        if met { "met" } else { "not met" }
    ))
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench-verifier: {cores} cores shared by server and load generator; {} connections, \
         {} tokens, at most {} s and {} requests per phase",
        o.connections, o.tokens, o.seconds, o.max_requests
    );
    let mut rows = Vec::new();
    for store in &o.stores {
        rows.extend(runtime.block_on(run_store(store, &o)));
    }
    print_table(&rows, cores);
    println!(
        "\nserver us / loadgen us / db us: CPU time (user + system, all threads) per request of the \
         server process, of the load generator and (PostgreSQL) of the database cluster during the \
         phase; cpu bound/s: the rate at which those together would use all {cores} cores\n\
         goal (issue 6): >= 50000 verifies/s with p99 < 5 ms on SQLite (2 cores); \
         'unexpected' must be 0 (every verify accepted)"
    );
    pgbench::print();
    if rows.iter().any(|(_, p)| p.unexpected > 0) {
        eprintln!("bench-verifier: some answers were not the expected ones");
        std::process::exit(1);
    }
}
