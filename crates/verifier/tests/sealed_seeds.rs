//! Seeds at rest under damage: a sealed seed with any byte flipped, cut short or naming
//! another key opens to a typed error (never a panic, never a wrong seed), a verification
//! against it fails with that error and changes nothing, and the intact seal works again.
//! The key-encryption key file of any content gives its key or a typed error and is never
//! changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codereader_otp::UnixTime;
use codereader_verifier::{
    KeyId, MemoryStore, NONCE_LEN, Outcome, Policy, SealError, SealedSeed, SqliteStore, Subject,
    TokenId, VerifyError,
};
use common::*;
use proptest::prelude::*;

/// How a stored seal is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// One bit of the nonce.
    Nonce(prop::sample::Index, u8),
    /// One bit of the ciphertext or its tag.
    Ciphertext(prop::sample::Index, u8),
    /// Ciphertext cut to this length (shorter than it is).
    Cut(prop::sample::Index),
    /// Ciphertext with bytes appended.
    Extended(Vec<u8>),
    /// Another key's name.
    Key(String),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Damage::Nonce(i, b)),
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Damage::Ciphertext(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Damage::Extended),
        "k[0-9a-z]{1,6}".prop_map(Damage::Key),
    ]
}

fn apply(seal: &SealedSeed, damage: &Damage) -> SealedSeed {
    let mut seal = seal.clone();
    match damage {
        Damage::Nonce(i, bit) => seal.nonce[i.index(NONCE_LEN)] ^= 1 << bit,
        Damage::Ciphertext(i, bit) => {
            let at = i.index(seal.ciphertext.len());
            seal.ciphertext[at] ^= 1 << bit;
        }
        Damage::Cut(i) => {
            let len = i.index(seal.ciphertext.len());
            seal.ciphertext.truncate(len);
        }
        Damage::Extended(extra) => seal.ciphertext.extend_from_slice(extra),
        Damage::Key(name) => seal.key_id = KeyId::new(name.as_str()).unwrap(),
    }
    seal
}

/// What opening `damaged` must give: the tag catches any change of nonce or ciphertext; a
/// key the keyring does not have is named as such.
fn check_error(err: &SealError, damage: &Damage, token: &TokenId) -> Result<(), TestCaseError> {
    match damage {
        Damage::Key(name) if name != "k1" => {
            prop_assert!(matches!(err, SealError::UnknownKey { .. }), "{:?}", err);
        }
        _ => prop_assert!(
            matches!(err, SealError::Tampered { token: t, .. } if t == token),
            "{:?}",
            err
        ),
    }
    let shown = format!("{err} {err:?}");
    prop_assert!(!shown.contains("0101010101"), "{}", shown);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The keyring alone: every damaged seal is refused with its typed error.
    #[test]
    fn damaged_seal_does_not_open(damage in damage()) {
        let ring = keyring();
        let token = id("T-1");
        let sealed = ring.seal(&token, &secret(1)).unwrap();
        let damaged = apply(&sealed, &damage);
        prop_assume!(damaged.key_id != sealed.key_id || damaged.nonce != sealed.nonce
            || damaged.ciphertext != sealed.ciphertext);
        let err = ring.open(&token, &damaged).unwrap_err();
        check_error(&err, &damage, &token)?;
        prop_assert_eq!(ring.open(&token, &sealed).unwrap(), secret(1));
    }

    /// A damaged seal in the store: verifying answers the seal error (not an outcome, so
    /// no failure is counted and no code is used up), the token's state is as before, and
    /// with the intact seal back the same code is accepted.
    #[test]
    fn damaged_seal_in_the_store_changes_nothing(damage in damage()) {
        let v = common::verifier(Box::new(MemoryStore::new()), Policy::default());
        check_store(&v, &damage)?;
    }
}

fn check_store(v: &codereader_verifier::Verifier, damage: &Damage) -> Result<(), TestCaseError> {
    let t = enroll(v, "T-1", 1, hotp_params(), 0);
    let sealed = stored_seed(v, &t);
    let damaged = apply(&sealed, damage);
    prop_assume!(
        damaged.key_id != sealed.key_id
            || damaged.nonce != sealed.nonce
            || damaged.ciphertext != sealed.ciphertext
    );
    prop_assert!(replace_seed(v, &t, &sealed, &damaged));
    let before = v.show(Subject::Token(&t)).unwrap().unwrap().state;
    let got = v.verify(Subject::Token(&t), &code(1, 0), NOW, &caller());
    match got {
        Err(VerifyError::Seal(err)) => check_error(&err, damage, &t)?,
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    }
    prop_assert_eq!(v.show(Subject::Token(&t)).unwrap().unwrap().state, before);
    prop_assert!(replace_seed(v, &t, &damaged, &sealed));
    let again = v
        .verify(
            Subject::Token(&t),
            &code(1, 0),
            UnixTime(NOW.0 + 1),
            &caller(),
        )
        .unwrap();
    prop_assert!(matches!(again, Outcome::Accepted(_)), "{:?}", again);
    Ok(())
}

/// The same on SQLite, where the seal goes through its columns and back (fewer cases: each
/// one opens a database).
#[test]
fn damaged_seal_in_sqlite_changes_nothing() {
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&damage(), |damage| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let store = SqliteStore::open(dir.path().join(format!("{i}.db"))).unwrap();
            let v = common::verifier(Box::new(store), Policy::default());
            check_store(&v, &damage)
        })
        .unwrap();
}

/// The key-encryption key file: 32 raw bytes, or 64 hex digits with white space around.
fn kek_model(content: &[u8]) -> Option<[u8; 32]> {
    if content.len() == 32 {
        return Some(content.try_into().unwrap());
    }
    let text = std::str::from_utf8(content).ok()?.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    Some(key)
}

fn kek_file() -> impl Strategy<Value = Vec<u8>> {
    let hex =
        any::<[u8; 32]>().prop_map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100),
        // Words on a line, as a keyring line that is wrong.
        "(current |open )?[a-z0-9]{1,10}( [a-z0-9]{1,10}){1,3}\n?".prop_map(String::into_bytes),
        any::<[u8; 32]>().prop_map(|k| k.to_vec()),
        (hex.clone(), "[ \t\n]{0,3}", "[ \t\n]{0,3}", any::<bool>()).prop_map(
            |(h, a, b, upper)| {
                let h = if upper { h.to_ascii_uppercase() } else { h };
                format!("{a}{h}{b}").into_bytes()
            }
        ),
        (hex, any::<prop::sample::Index>(), "[g-z#=]", any::<bool>()).prop_map(
            |(h, at, c, cut)| {
                let mut h = h.into_bytes();
                let i = at.index(h.len());
                if cut {
                    h.truncate(i);
                } else {
                    h[i] = c.as_bytes()[0];
                }
                h
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any file content: the key the model reads (named by its fingerprint), or an error
    /// whose message shows nothing of the file; the file is not changed.
    #[test]
    fn kek_file_of_any_content(content in kek_file()) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, &content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let got = codereader_verifier::KeyringFile::read(&path).and_then(|f| f.current_kek());
        match kek_model(&content) {
            Some(key) => {
                let kek = got.unwrap();
                prop_assert_eq!(kek.id(), &codereader_verifier::Kek::fingerprint(&key));
            }
            None => {
                let err = got.unwrap_err();
                // Text whose first line (comments aside) has several words reads as a
                // keyring line that is wrong (`BadKeyring`, naming the line); anything
                // else as no key at all.
                let several_words = std::str::from_utf8(&content).is_ok_and(|text| {
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or_default().trim())
                        .find(|l| !l.is_empty())
                        .is_some_and(|l| l.split_whitespace().nth(1).is_some())
                });
                if several_words {
                    prop_assert!(matches!(err, SealError::BadKeyring { .. }), "{:?}", err);
                } else {
                    prop_assert_eq!(&err, &SealError::BadKeyFormat);
                }
                let shown = format!("{err} {err:?}");
                let text = String::from_utf8_lossy(&content);
                let text = text.trim();
                if text.len() >= 8 {
                    prop_assert!(!shown.contains(text), "{}", shown);
                }
            }
        }
        prop_assert!(std::fs::read(&path).unwrap() == content, "the key file was changed");
    }
}
