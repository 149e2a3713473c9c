//! What the verifier benchmarks share: one TOTP token "B" enrolled at [`START`] and a run
//! of accepted verifications with fresh codes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use codereader_otp::{Algorithm, Code, Counter, Digits, Hotp, KeyPolicy, Period, Secret, UnixTime};
use codereader_verifier::{
    Caller, Enrollment, Keyring, Outcome, Policy, Store, Subject, TokenId, TokenKind, TokenParams,
    Verifier,
};

pub const START: u64 = 1_700_000_010;

pub fn secret() -> Secret {
    Secret::new(vec![1; 20], KeyPolicy::Rfc4226).unwrap()
}

/// The enrolment of the benchmarks' tokens: TOTP, SHA-1, 6 digits, 30 s, [`secret`].
pub fn enrollment(id: TokenId) -> Enrollment {
    Enrollment {
        id,
        params: TokenParams {
            kind: TokenKind::Totp {
                period: Period::DEFAULT,
                t0: UnixTime(0),
            },
            algorithm: Algorithm::Sha1,
            digits: Digits::SIX,
        },
        secret: secret(),
        counter: Counter(0),
    }
}

/// A verifier over `store` and `keyring` holding token "B" ([`enrollment`]), with a cache
/// of `key_cache` prepared keys (0: none; `None`: the verifier's default).
pub fn setup(
    store: Box<dyn Store>,
    keyring: Keyring,
    key_cache: Option<usize>,
) -> (Verifier, TokenId) {
    let mut v = Verifier::new(store, keyring, Policy::default());
    if let Some(capacity) = key_cache {
        v = v.with_key_cache(capacity);
    }
    let id = TokenId::new("B").unwrap();
    v.enroll(
        &[enrollment(id.clone())],
        UnixTime(START),
        &Caller::new("bench").unwrap(),
    )
    .unwrap();
    (v, id)
}

/// Runs `iters` accepted verifications from where the previous call stopped (`cursor` counts
/// steps used so far) and returns the time they took; codes are computed beforehand.
pub fn run(v: &Verifier, id: &TokenId, cursor: &mut u64, iters: u64) -> Duration {
    let hotp = Hotp::new(&secret(), Algorithm::Sha1, Digits::SIX);
    let caller = Caller::new("bench").unwrap();
    let base = START / 30 + *cursor;
    let codes: Vec<Code> = (0..iters).map(|i| hotp.code(Counter(base + i))).collect();
    let start = Instant::now();
    for (i, code) in codes.iter().enumerate() {
        let now = UnixTime((base + i as u64) * 30);
        let outcome = v.verify(Subject::Token(id), code, now, &caller).unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    let elapsed = start.elapsed();
    *cursor += iters;
    elapsed
}
