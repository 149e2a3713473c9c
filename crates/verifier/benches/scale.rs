//! Scale: load millions of tokens into SQLite and PostgreSQL, then measure database size and
//! the latency of single verifications (p50/p99) at that size.
//!
//! `cargo bench -p codereader-verifier --bench scale` loads 5 million tokens per store (set
//! `CODEREADER_SCALE_TOKENS` for another count); it takes many minutes. Under `cargo test` it
//! runs the same path with 2,000 tokens so that it keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Period, Secret, UnixTime};
use codereader_verifier::testing::{PgOptions, TempPostgres};
use codereader_verifier::{
    Caller, Enrollment, Kek, KeyId, Keyring, Outcome, Policy, SqliteStore, Store, Subject, TokenId,
    TokenKind, TokenParams, Verifier, open_store,
};

const NOW: UnixTime = UnixTime(1_700_000_010);
const BATCH: u64 = 10_000;

fn secret(i: u64) -> Secret {
    let mut bytes = vec![0xa5; 20];
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    Secret::new(bytes, KeyPolicy::Rfc4226).unwrap()
}

fn token(i: u64) -> TokenId {
    TokenId::new(format!("T{i:010}")).unwrap()
}

fn params() -> TokenParams {
    TokenParams {
        kind: TokenKind::Totp {
            period: Period::DEFAULT,
            t0: UnixTime(0),
        },
        algorithm: Algorithm::Sha1,
        digits: Digits::SIX,
    }
}

fn load(v: &Verifier, n: u64) -> Duration {
    let caller = Caller::new("scale").unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let batch: Vec<Enrollment> = (i..end)
            .map(|i| Enrollment {
                id: token(i),
                params: params(),
                secret: secret(i),
                counter: Counter(0),
            })
            .collect();
        v.enroll(&batch, NOW, &caller).unwrap();
        i = end;
    }
    start.elapsed()
}

/// Latencies of `m` verifications of random tokens, each with its right code, in µs, sorted.
fn latencies(v: &Verifier, n: u64, m: usize) -> Vec<f64> {
    let caller = Caller::new("scale").unwrap();
    let step = NOW.0 / 30;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(m);
    while out.len() < m {
        // xorshift: a cheap, fixed sequence of token numbers.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % n;
        if !used.insert(i) {
            if used.len() as u64 >= n {
                break;
            }
            continue;
        }
        let code = Hotp::new(&secret(i), Algorithm::Sha1, Digits::SIX).code(Counter(step));
        let t = token(i);
        let start = Instant::now();
        let outcome = v.verify(Subject::Token(&t), &code, NOW, &caller).unwrap();
        out.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn verifier(store: Box<dyn Store>) -> Verifier {
    let keyring = Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    Verifier::new(store, keyring, Policy::default())
}

fn report(name: &str, n: u64, load: Duration, bytes: u64, lat: &[f64]) {
    println!(
        "{name:<10} {n:>10} tokens  load {:>8.1} s ({:>8.0} tokens/s)  size {:>8.1} MiB \
         ({:>5.0} B/token)  verify p50 {:>7.0} µs  p99 {:>7.0} µs  ({} verifications)",
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64(),
        bytes as f64 / 1048576.0,
        bytes as f64 / n as f64,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat.len(),
    );
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("CODEREADER_SCALE_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benchmarking { 5_000_000 } else { 2_000 });
    let m = if benchmarking { 20_000 } else { 200 };
    let only =
        std::env::var("CODEREADER_SCALE_STORES").unwrap_or_else(|_| "sqlite,postgres".into());

    if only.contains("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scale.db");
        let v = verifier(Box::new(SqliteStore::open(&path).unwrap()));
        let took = load(&v, n);
        let lat = latencies(&v, n, m);
        let size = ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
            .map(|m| m.len())
            .sum();
        report("sqlite", n, took, size, &lat);
    }
    if only.contains("postgres") {
        let pg = TempPostgres::start_with(PgOptions::default().with_fsync(true)).unwrap();
        let url = pg.create_database("scale").unwrap();
        let v = verifier(open_store(&url).unwrap());
        let took = load(&v, n);
        let lat = latencies(&v, n, m);
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let size: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .unwrap()
            .get(0);
        report("postgres", n, took, size as u64, &lat);
    }
}
