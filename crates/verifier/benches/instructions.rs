//! Instructions per verification, counted by callgrind: a figure that does not swing with the
//! load on the machine, unlike the rates of the `verify` benchmark.
//!
//! `cargo bench -p codereader-verifier --bench instructions` (needs `valgrind`, from Debian)
//! runs this binary again under `valgrind --tool=callgrind` once per operation and count:
//! each run prepares `n` fresh codes (and the store, token and verifier), then performs the
//! operation `n` times or not at all; the difference between the two runs' instruction totals
//! (every thread, the store's own included), divided by `n`, is the cost of one operation with
//! the setup taken out. The table puts each beside one HMAC-SHA-1 window (`Hotp::code`: one
//! HOTP value, two SHA-1 compressions of the prepared key's inner and outer states).
//!
//! Callgrind runs the CPU's instructions on a synthetic CPU without SHA-NI, so SHA-1 takes
//! its portable path here: the ratios are in portable HMAC windows.
//!
//! PostgreSQL (a throw-away server with fsync on, started natively by this binary) counts the
//! client side only: the library, the driver and its runtime, not the server's work.
//!
//! Under `cargo test` each operation runs a few times natively (no valgrind), as a check that
//! the bench still works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::process::Command;

use codereader_otp::{Algorithm, Code, Counter, Digits, Hotp, UnixTime};
use codereader_verifier::testing::{PgOptions, TempPostgres};
use codereader_verifier::{
    Caller, Durability, Kek, KeyId, Keyring, MemoryStore, Outcome, SqliteOptions, SqliteStore,
    Store, Subject, open_store,
};
use common::{START, secret};

/// The operations measured, by the name the child run takes.
const KINDS: &[(&str, &str, u64)] = &[
    ("hmac", "one HMAC-SHA-1 window (Hotp::code)", 20_000),
    ("memory", "verify, memory store (default: key cache)", 5_000),
    (
        "memory-nocache",
        "verify, memory store, no key cache",
        5_000,
    ),
    ("sqlite-full", "verify, SQLite synchronous=FULL", 1_000),
    ("sqlite-normal", "verify, SQLite synchronous=NORMAL", 1_000),
    ("postgres", "verify, PostgreSQL (client side)", 1_000),
];

/// Prepares `n` codes and the operation `kind`, then performs it `ops` times (`ops` is 0 or
/// `n`), so that two runs differ only in the operations performed. `postgres` is the address
/// of an empty database for the `postgres` operation (whose server runs outside valgrind, so
/// only the client's instructions count).
fn child(kind: &str, n: u64, ops: u64, dir: &Path, postgres: &str) {
    let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
    let base = START / 30;
    let codes: Vec<Code> = (0..n).map(|i| hotp.code(Counter(base + i))).collect();
    if kind == "hmac" {
        for c in 0..ops {
            std::hint::black_box(hotp.code(Counter(std::hint::black_box(base + c))));
        }
        return;
    }
    let store: Box<dyn Store> = match kind {
        "memory" | "memory-nocache" => Box::new(MemoryStore::new()),
        "sqlite-full" | "sqlite-normal" => {
            let durability = if kind == "sqlite-full" {
                Durability::Full
            } else {
                Durability::Normal
            };
            let path = dir.join(format!("{kind}.{ops}.db"));
            Box::new(
                SqliteStore::open_with(path, SqliteOptions::default().with_durability(durability))
                    .unwrap(),
            )
        }
        "postgres" => open_store(postgres).unwrap(),
        other => panic!("unknown operation {other}"),
    };
    let keyring = Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    // Every store with the verifier's defaults, the key cache among them.
    let key_cache = (kind == "memory-nocache").then_some(0);
    let (v, id) = common::setup(store, keyring, key_cache);
    let caller = Caller::new("bench").unwrap();
    for (i, code) in codes.iter().enumerate().take(ops as usize) {
        let now = UnixTime((base + i as u64) * 30);
        let outcome = v.verify(Subject::Token(&id), code, now, &caller).unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
}

/// The instructions callgrind counted in a child run of `kind` (every thread).
fn count(kind: &str, n: u64, ops: u64, dir: &Path, postgres: &str) -> u64 {
    let out = dir.join(format!("callgrind.{kind}.{ops}.out"));
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--quiet")
        .arg(&exe)
        .args(["--child", kind, &n.to_string(), &ops.to_string()])
        .arg(dir)
        .arg(postgres)
        .status()
        .unwrap_or_else(|e| panic!("cannot run valgrind (apt-get install valgrind): {e}"));
    assert!(status.success(), "valgrind run of {kind} failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .expect("callgrind output without a total");
    total.trim().parse().unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (kind, n, ops, dir, pg) = (&args[2], &args[3], &args[4], &args[5], &args[6]);
        let (n, ops) = (n.parse().unwrap(), ops.parse().unwrap());
        child(kind, n, ops, Path::new(dir), pg);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One server (fsync on, as in production), a fresh database per child run.
    let pg = TempPostgres::start_with(PgOptions::default().with_fsync(true)).unwrap();
    let mut databases = 0;
    let mut database = || {
        databases += 1;
        pg.create_database(&format!("bench{databases}")).unwrap()
    };
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test`: each operation a few times, natively.
        for (kind, _, _) in KINDS {
            child(kind, 3, 3, dir.path(), &database());
        }
        return;
    }
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let mut rows = Vec::new();
    for &(kind, label, n) in KINDS {
        if kind != "hmac" && !filter.is_empty() && !filter.iter().any(|f| kind.contains(f.as_str()))
        {
            continue;
        }
        let with = count(kind, n, n, dir.path(), &database());
        let without = count(kind, n, 0, dir.path(), &database());
        let per_op = with.saturating_sub(without) as f64 / n as f64;
        rows.push((label, per_op));
    }
    let hmac = rows[0].1;
    println!();
    println!("| operation | instructions/op | HMAC windows |");
    println!("|---|---:|---:|");
    for (label, per_op) in rows {
        println!("| {label} | {per_op:.0} | {:.2} |", per_op / hmac);
    }
}
