//! Codes per second for each algorithm, beside the raw HMAC rate that bounds them, both
//! measured in the same run: `cargo bench -p codereader-otp`.
//!
//! Three rows per algorithm (criterion prints each as elements/s):
//! - `hmac_prepared`: one HMAC of an 8-byte counter from a prepared key state, with the
//!   generic `hmac` crate (the floor for SHA-256 and SHA-512, which use it);
//! - `hotp_code`: a whole code (HMAC + truncation + decimal formatting). For SHA-1 this may
//!   beat `hmac_prepared`: the crate computes HMAC-SHA-1 on the compression function
//!   directly (two compressions, no generic buffers);
//! - `hmac_unprepared`: HMAC including the key schedule, i.e. what computing a code would
//!   cost without preparing the key once per secret;
//! - `window_3_one_by_one` and `window_3_together`: a verifier's TOTP window of ±1 step
//!   (three codes) by three `Hotp::code` calls, and by one `Hotp::codes` pass (for SHA-1 on
//!   x86-64 with SHA-NI, the three HMACs interleaved); rates count codes.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Secret};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};

fn raw_hmac<M: Mac + KeyInit + Clone>(c: &mut Criterion, name: &str, key: &[u8]) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let prepared = <M as KeyInit>::new_from_slice(key).unwrap();
    let mut counter = 0u64;
    group.bench_function("hmac_prepared", |b| {
        b.iter(|| {
            counter = counter.wrapping_add(1);
            let mut m = prepared.clone();
            m.update(&counter.to_be_bytes());
            black_box(m.finalize().into_bytes())
        })
    });
    group.bench_function("hmac_unprepared", |b| {
        b.iter(|| {
            counter = counter.wrapping_add(1);
            let mut m = <M as KeyInit>::new_from_slice(black_box(key)).unwrap();
            m.update(&counter.to_be_bytes());
            black_box(m.finalize().into_bytes())
        })
    });
    group.finish();
}

fn codes(c: &mut Criterion) {
    for algorithm in Algorithm::ALL {
        let len = match algorithm {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        };
        let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let name = algorithm.name();
        match algorithm {
            Algorithm::Sha1 => raw_hmac::<Hmac<sha1::Sha1>>(c, name, &key),
            Algorithm::Sha256 => raw_hmac::<Hmac<sha2::Sha256>>(c, name, &key),
            Algorithm::Sha512 => raw_hmac::<Hmac<sha2::Sha512>>(c, name, &key),
        }
        let secret = Secret::new(key, KeyPolicy::Rfc4226).unwrap();
        let hotp = Hotp::new(&secret, algorithm, Digits::SIX);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        let mut counter = 0u64;
        group.bench_function("hotp_code", |b| {
            b.iter(|| {
                counter = counter.wrapping_add(1);
                black_box(hotp.code(Counter(counter)))
            })
        });
        group.throughput(Throughput::Elements(3));
        group.bench_function("window_3_one_by_one", |b| {
            b.iter(|| {
                counter = counter.wrapping_add(3);
                for c in counter..counter + 3 {
                    black_box(hotp.code(Counter(c)));
                }
            })
        });
        group.bench_function("window_3_together", |b| {
            b.iter(|| {
                counter = counter.wrapping_add(3);
                for item in hotp.codes(Counter(counter), Counter(counter + 2)) {
                    black_box(item);
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codes);
criterion_main!(benches);
