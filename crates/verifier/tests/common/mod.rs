//! Helpers shared by the verifier's integration tests: keys, tokens, codes and stores.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use codereader_otp::{Algorithm, Code, Counter, Digits, Hotp, KeyPolicy, Period, Secret, UnixTime};
use codereader_verifier::{
    Caller, Enrollment, Kek, KeyId, Keyring, Policy, SealedSeed, Store, TokenId, TokenKind,
    TokenParams, Verifier,
};

/// A Tuesday in November 2023, well away from the epoch and from step boundaries.
pub const NOW: UnixTime = UnixTime(1_700_000_010);

pub fn keyring() -> Keyring {
    Keyring::new(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]))
}

pub fn secret(byte: u8) -> Secret {
    Secret::new(vec![byte; 20], KeyPolicy::Rfc4226).unwrap()
}

pub fn caller() -> Caller {
    Caller::new("test").unwrap()
}

pub fn id(s: &str) -> TokenId {
    TokenId::new(s).unwrap()
}

pub fn totp_params() -> TokenParams {
    TokenParams {
        kind: TokenKind::Totp {
            period: Period::DEFAULT,
            t0: UnixTime(0),
        },
        algorithm: Algorithm::Sha1,
        digits: Digits::SIX,
    }
}

pub fn hotp_params() -> TokenParams {
    TokenParams {
        kind: TokenKind::Hotp,
        algorithm: Algorithm::Sha1,
        digits: Digits::SIX,
    }
}

/// The TOTP step of `now` (30 s, T0 = 0).
pub fn step(now: UnixTime) -> u64 {
    now.0 / 30
}

/// The code of token `byte` (see [`secret`]) at step or counter `value`.
pub fn code(byte: u8, value: u64) -> Code {
    Hotp::new(&secret(byte), Algorithm::Sha1, Digits::SIX).code(Counter(value))
}

/// A code that is none of the codes of token `byte` around `centre` (±200).
pub fn wrong_code(byte: u8, centre: u64) -> Code {
    let hotp = Hotp::new(&secret(byte), Algorithm::Sha1, Digits::SIX);
    let near: Vec<Code> = (centre.saturating_sub(200)..centre + 200)
        .map(|v| hotp.code(Counter(v)))
        .collect();
    (1..1000u32)
        .map(|n| Code::parse(&format!("{:06}", n * 7919 % 1_000_000)).unwrap())
        .find(|c| !near.contains(c))
        .unwrap()
}

/// Enrolls token `name` with secret `byte`.
pub fn enroll(v: &Verifier, name: &str, byte: u8, params: TokenParams, counter: u64) -> TokenId {
    let token = id(name);
    v.enroll(
        &[Enrollment {
            id: token.clone(),
            params,
            secret: secret(byte),
            counter: Counter(counter),
        }],
        NOW,
        &caller(),
    )
    .unwrap();
    token
}

pub fn verifier(store: Box<dyn Store>, policy: Policy) -> Verifier {
    Verifier::new(store, keyring(), policy)
}

/// The seal stored for token `t`.
pub fn stored_seed(v: &Verifier, t: &TokenId) -> SealedSeed {
    v.store().reads(|r| r.token(t)).unwrap().unwrap().seed
}

/// Replaces the stored seal of `t` if it is still `old` (compare-and-set), as a rotation does.
pub fn replace_seed(v: &Verifier, t: &TokenId, old: &SealedSeed, new: &SealedSeed) -> bool {
    let (t, old, new) = (t.clone(), old.clone(), new.clone());
    v.store()
        .write(move |tx| tx.replace_seed(&t, &old, &new))
        .unwrap()
        .unwrap()
}
