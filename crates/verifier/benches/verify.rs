//! Verifications per second: in memory, SQLite (durable and not), PostgreSQL (fsync on),
//! beside the raw HMAC rate and pyotp's `TOTP.verify` measured in the same run.
//!
//! `cargo bench -p codereader-verifier` runs the criterion groups and then prints a table of
//! rates and ratios (one thread, so one core). pyotp must be installed (`pip install pyotp`);
//! under `cargo test` the groups run once each and the table is skipped. Criterion's filter
//! picks the groups (`cargo bench -p codereader-verifier --bench verify -- memory`); the table
//! always has every row.
//!
//! The raw rows bound the verifier from below, in codes per second: `one code` is
//! `Hotp::code`, `3 together` is a ±1 window computed in one `Hotp::codes` pass as the
//! verifier's scan does (interleaved SHA-1 on CPUs with SHA-NI), per code.
//!
//! Every verification accepts a fresh code: time moves one step per verification, so each is
//! a real accept with a compare-and-set and an audit line, never a cached refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use codereader_otp::{Algorithm, Code, Counter, Digits, Hotp, UnixTime};
use codereader_verifier::testing::{PgOptions, TempPostgres};
use codereader_verifier::{
    Caller, Durability, Enrollment, Kek, KeyId, Keyring, MemoryStore, Outcome, Policy,
    SqliteOptions, SqliteStore, Store, Subject, TokenId, Verifier, open_store,
};
use common::{START, run, secret};
use criterion::Criterion;

/// A verifier over `store` holding token "B" under a file key, with a cache of `key_cache`
/// prepared keys (0: none; `None`: the verifier's default).
fn setup(store: Box<dyn Store>, key_cache: Option<usize>) -> (Verifier, TokenId) {
    let keyring = Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    common::setup(store, keyring, key_cache)
}

struct Case {
    name: &'static str,
    verifier: Verifier,
    id: TokenId,
    cursor: u64,
}

fn cases(pg: &TempPostgres, dir: &std::path::Path) -> Vec<Case> {
    let sqlite = |file: &str, durability| -> Box<dyn Store> {
        Box::new(
            SqliteStore::open_with(
                dir.join(file),
                SqliteOptions::default().with_durability(durability),
            )
            .unwrap(),
        )
    };
    let stores: Vec<(&'static str, Box<dyn Store>)> = vec![
        ("memory (default: key cache)", Box::new(MemoryStore::new())),
        ("memory (no key cache)", Box::new(MemoryStore::new())),
        (
            "sqlite (synchronous=FULL)",
            sqlite("full.db", Durability::Full),
        ),
        (
            "sqlite (synchronous=NORMAL)",
            sqlite("normal.db", Durability::Normal),
        ),
        ("postgres (fsync on)", open_store(&pg.url()).unwrap()),
    ];
    stores
        .into_iter()
        .map(|(name, store)| {
            let key_cache = name.contains("no key cache").then_some(0);
            let (verifier, id) = setup(store, key_cache);
            Case {
                name,
                verifier,
                id,
                cursor: 0,
            }
        })
        .collect()
}

/// pyotp's `TOTP(secret).verify(code, for_time, valid_window=1)` on the same secret, in
/// nanoseconds per call.
fn pyotp_ns(n: u64) -> Result<f64, String> {
    let script = r#"
import sys, time, base64, pyotp
n = int(sys.argv[1])
totp = pyotp.TOTP(base64.b32encode(bytes([1] * 20)).decode())
times = [1700000010 + 30 * i for i in range(n)]
codes = [totp.at(t) for t in times]
start = time.perf_counter()
for t, c in zip(times, codes):
    if not totp.verify(c, for_time=t, valid_window=1):
        raise SystemExit("pyotp refused its own code")
print((time.perf_counter() - start) / n * 1e9)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &n.to_string()])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pyotp baseline failed (pip install pyotp): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("bad pyotp output: {e}"))
}

/// Best of five runs of `n`, in nanoseconds per verification.
fn best_ns(case: &mut Case, n: u64) -> f64 {
    (0..5)
        .map(|_| run(&case.verifier, &case.id, &mut case.cursor, n).as_nanos() as f64 / n as f64)
        .fold(f64::INFINITY, f64::min)
}

fn hmac_ns(n: u64) -> f64 {
    let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for c in 0..n {
                std::hint::black_box(hotp.code(Counter(std::hint::black_box(c))));
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// A ±1 window (three codes) computed in one `Hotp::codes` pass, as the verifier's scan does,
/// in nanoseconds per code: beside `hmac_ns`, what computing the codes together saves.
fn window_ns(n: u64) -> f64 {
    let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for c in (0..n).step_by(3) {
                let c = std::hint::black_box(c);
                for item in hotp.codes(Counter(c), Counter(c + 2)) {
                    std::hint::black_box(item);
                }
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz: f64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    ticks / hz
}

/// `threads` threads share one verifier, each verifying its own token `per_thread` times.
/// Returns (verifications per wall second, verifications per CPU second of this process).
fn concurrent(
    store: Box<dyn Store>,
    key_cache: usize,
    threads: usize,
    per_thread: u64,
) -> (f64, f64) {
    let keyring = Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    let v = Verifier::new(store, keyring, Policy::default()).with_key_cache(key_cache);
    let caller = Caller::new("bench").unwrap();
    let ids: Vec<TokenId> = (0..threads)
        .map(|t| TokenId::new(format!("C{t}")).unwrap())
        .collect();
    let enrollments: Vec<Enrollment> = ids.iter().cloned().map(common::enrollment).collect();
    v.enroll(&enrollments, UnixTime(START), &caller).unwrap();
    let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
    let base = START / 30;
    let codes: Vec<Code> = (0..per_thread)
        .map(|i| hotp.code(Counter(base + i)))
        .collect();
    let barrier = std::sync::Barrier::new(threads + 1);
    let (wall, cpu) = std::thread::scope(|scope| {
        for id in &ids {
            let (v, codes, barrier, caller) = (&v, &codes, &barrier, &caller);
            scope.spawn(move || {
                barrier.wait();
                for (i, code) in codes.iter().enumerate() {
                    let now = UnixTime((base + i as u64) * 30);
                    let o = v.verify(Subject::Token(id), code, now, caller).unwrap();
                    assert!(matches!(o, Outcome::Accepted(_)), "{o:?}");
                }
            });
        }
        let cpu = cpu_seconds();
        barrier.wait();
        let start = Instant::now();
        (start, cpu)
    });
    let total = (threads as u64 * per_thread) as f64;
    (
        total / wall.elapsed().as_secs_f64(),
        total / (cpu_seconds() - cpu),
    )
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let pg = TempPostgres::start_with(PgOptions::default().with_fsync(true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cases = cases(&pg, dir.path());

    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    {
        let mut group = c.benchmark_group("verify");
        group.bench_function("raw HMAC-SHA1 code", |b| {
            let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                hotp.code(Counter(n))
            });
        });
        for case in &mut cases {
            let Case {
                name,
                verifier,
                id,
                cursor,
            } = case;
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| run(verifier, id, cursor, iters));
            });
        }
        group.finish();
    }
    c.final_summary();
    if !benchmarking {
        return;
    }

    // The table: one thread, each figure the best of five runs, all in this process run.
    let python = pyotp_ns(20_000).unwrap_or_else(|e| panic!("{e}"));
    let hmac = hmac_ns(1_000_000);
    let window = window_ns(1_000_000);
    println!();
    println!(
        "{:<30} {:>14} {:>12} {:>12}",
        "", "verifies/s", "x pyotp", "ns each"
    );
    let row = |name: &str, ns: f64| {
        println!(
            "{name:<30} {:>14.0} {:>12.1} {:>12.0}",
            1e9 / ns,
            python / ns,
            ns
        );
    };
    row("pyotp verify (window 1)", python);
    row("raw HMAC-SHA1 (one code)", hmac);
    row("raw HMAC-SHA1 (3 together)", window);
    for case in &mut cases {
        let n = match case.name {
            name if name.starts_with("memory") => 200_000,
            name if name.contains("FULL") || name.contains("postgres") => 1_000,
            _ => 5_000,
        };
        let ns = best_ns(case, n);
        row(case.name, ns);
    }

    // Both cores: pyotp (CPython) verifies on one core at a time, so the single-thread
    // ratio above is the per-core comparison; this row says what one process gets from two.
    let (wall, _) = concurrent(Box::new(MemoryStore::new()), 1000, 2, 200_000);
    println!(
        "{:<30} {wall:>14.0} {:>12.1}  (2 threads, 2 cores)",
        "memory (key cache)",
        wall / (1e9 / python)
    );

    // Many callers at once, as a server has them: SQLite commits their writes together.
    println!();
    println!(
        "{:<30} {:>14} {:>14}  (64 threads, distinct tokens, 2-core machine)",
        "concurrent", "verifies/s", "per CPU-second"
    );
    let stores: Vec<(&str, Box<dyn Store>)> = vec![
        (
            "sqlite (synchronous=FULL)",
            Box::new(
                SqliteStore::open_with(
                    dir.path().join("c-full.db"),
                    SqliteOptions::default().with_durability(Durability::Full),
                )
                .unwrap(),
            ),
        ),
        (
            "sqlite (synchronous=NORMAL)",
            Box::new(
                SqliteStore::open_with(
                    dir.path().join("c-normal.db"),
                    SqliteOptions::default().with_durability(Durability::Normal),
                )
                .unwrap(),
            ),
        ),
        ("postgres (fsync on)", {
            let url = pg.create_database("concurrent").unwrap();
            open_store(&url).unwrap()
        }),
    ];
    for (name, store) in stores {
        let (wall, per_cpu) = concurrent(store, 0, 64, 300);
        let note = if name.starts_with("postgres") {
            " (server CPU not counted)"
        } else {
            ""
        };
        println!("{name:<30} {wall:>14.0} {per_cpu:>14.0}{note}");
    }
}
