//! Verifications per second with the key-encryption key in a PKCS#11 module (SoftHSM2)
//! against the key in a file, with and without the prepared-key cache, in the same run.
//!
//! `cargo bench -p codereader-verifier --bench hsm` prints one table: verifies/s on one
//! thread for each store (in memory: the seal's cost alone; SQLite with
//! synchronous=NORMAL: what a server adds) and key (file, SoftHSM), without a cache (every
//! verification opens the seed: one module call) and with `with_key_cache` (a token verified
//! before skips the module), and the ratio to the file key without cache in the same store.
//! Without `--bench` (under `cargo test --benches`) it runs a few verifications per row.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process: without it, the benchmark makes a fresh
//! token in a temporary directory with `softhsm2-util` and runs itself again with it set.
//! SoftHSM is software; a network HSM answers in about a millisecond and a PCIe one in tens
//! of microseconds, so the uncached rows are an upper bound for those.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codereader_verifier::pkcs11::{HsmKey, PinSource, Pkcs11Config, Pkcs11Uri};
use codereader_verifier::softhsm::SoftHsm;
use codereader_verifier::{
    Durability, Kek, KeyId, Keyring, MemoryStore, SqliteOptions, SqliteStore, Store, TokenId,
    Verifier,
};
use common::{run, setup};
use zeroize::Zeroizing;

const PIN: &str = "bench-pin-1234";

/// Verifies/s, best of three runs of `n`.
fn rate(v: &Verifier, id: &TokenId, n: u64) -> f64 {
    let mut cursor = 0;
    run(v, id, &mut cursor, n.min(100));
    (0..3)
        .map(|_| n as f64 / run(v, id, &mut cursor, n).as_secs_f64())
        .fold(0.0, f64::max)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if std::env::var_os("SOFTHSM2_CONF").is_none() {
        let hsm = SoftHsm::new().unwrap();
        hsm.init_token("bench", PIN).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("SOFTHSM2_CONF", hsm.conf())
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let config = Pkcs11Config {
        module: Some(SoftHsm::module().unwrap()),
        pin: Some(PinSource::Value(Zeroizing::new(PIN.to_owned()))),
    };
    let uri = Pkcs11Uri::parse("pkcs11:token=bench;object=kek").unwrap();
    let hsm = HsmKey::open(&config, &uri, true).unwrap();
    let file = || Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    let dir = tempfile::tempdir().unwrap();
    let mut db = 0;
    let mut store = |kind: &str| -> Box<dyn Store> {
        db += 1;
        match kind {
            "memory" => Box::new(MemoryStore::new()),
            _ => Box::new(
                SqliteStore::open_with(
                    dir.path().join(format!("{db}.db")),
                    SqliteOptions::default().with_durability(Durability::Normal),
                )
                .unwrap(),
            ),
        }
    };

    if !benchmarking {
        println!("(smoke run of a few verifications per row; figures need `cargo bench`)");
    }
    println!(
        "{:<44} {:>12} {:>10}",
        "store, key-encryption key, cache", "verifies/s", "vs file"
    );
    for kind in ["memory", "sqlite (synchronous=NORMAL)"] {
        let n = match (benchmarking, kind) {
            (false, _) => 20,
            (true, "memory") => 20_000,
            (true, _) => 5_000,
        };
        let mut baseline = None;
        for (key, cache) in [
            ("file", 0),
            ("SoftHSM", 0),
            ("file", 1000),
            ("SoftHSM", 1000),
        ] {
            let keyring = if key == "file" {
                file()
            } else {
                Keyring::new(hsm.clone())
            };
            let (v, id) = setup(store(kind), keyring, Some(cache));
            let per_s = rate(&v, &id, n);
            let base = *baseline.get_or_insert(per_s);
            let label = format!(
                "{kind}, {key}, {}",
                if cache > 0 { "key cache" } else { "no cache" }
            );
            println!("{label:<44} {per_s:>12.0} {:>10.3}", per_s / base);
        }
    }
}
