//! The key-encryption key inside a PKCS#11 module, against a real SoftHSM2 token made by
//! `softhsm2-util` in a temporary directory. SoftHSM reads its configuration once per
//! process, so each test that uses a token runs its body again in a child process
//! (`SoftHsm::run_test_in_child`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use codereader_otp::{KeyPolicy, Secret};
use codereader_verifier::pkcs11::{HsmError, HsmKey, PinSource, Pkcs11Config, Pkcs11Uri};
use codereader_verifier::softhsm::{CHILD_ENV, SoftHsm};
use codereader_verifier::{Kek, Keyring, SealError, SealingKey, TokenId};
use zeroize::Zeroizing;

const PIN: &str = "user-pin-4321";

/// In the parent: a fresh token store with token `cr`, then this test again in a child.
/// In the child: the directory of that store.
fn child_or_run(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return Some(PathBuf::from(dir));
    }
    let hsm = SoftHsm::new().unwrap();
    hsm.init_token("cr", PIN).unwrap();
    hsm.init_token("other", PIN).unwrap();
    let (passed, output) = hsm.run_test_in_child(name).unwrap();
    assert!(passed, "the child failed:\n{output}");
    None
}

fn config(pin: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: Some(SoftHsm::module().unwrap()),
        pin: Some(PinSource::Value(Zeroizing::new(pin.to_owned()))),
    }
}

fn uri(text: &str) -> Pkcs11Uri {
    Pkcs11Uri::parse(text).unwrap()
}

#[test]
fn seals_and_opens_inside_the_module() {
    if child_or_run("seals_and_opens_inside_the_module").is_none() {
        return;
    }
    let kek_uri = uri("pkcs11:token=cr;object=codereader-kek");
    // Not there yet, and not created unless asked.
    assert_eq!(
        HsmKey::open(&config(PIN), &kek_uri, false).unwrap_err(),
        HsmError::NoKey {
            token: "cr".into(),
            object: "codereader-kek".into()
        }
    );
    let key = HsmKey::open(&config(PIN), &kek_uri, true).unwrap();
    assert!(key.id().as_str().starts_with("hsm-"), "{}", key.id());
    // Found again, under the same id.
    let again = HsmKey::open(&config(PIN), &kek_uri, false).unwrap();
    assert_eq!(again.id(), key.id());
    // The same label in another token is another key.
    let other = HsmKey::open(
        &config(PIN),
        &uri("pkcs11:token=other;object=codereader-kek"),
        true,
    )
    .unwrap();
    assert_ne!(other.id(), key.id());

    let ring = Keyring::new(key.clone());
    let t = TokenId::new("T-1").unwrap();
    let secret = Secret::new(vec![9; 20], KeyPolicy::Rfc4226).unwrap();
    let sealed = ring.seal(&t, &secret).unwrap();
    assert_eq!(&sealed.key_id, key.id());
    assert_eq!(
        sealed.ciphertext.len(),
        20 + 16,
        "ciphertext and a 128-bit tag"
    );
    assert_eq!(ring.open(&t, &sealed).unwrap(), secret);
    assert_eq!(Keyring::new(again).open(&t, &sealed).unwrap(), secret);

    // Bound to the token id, as the file key does.
    let u = TokenId::new("T-2").unwrap();
    assert!(matches!(
        ring.open(&u, &sealed),
        Err(SealError::Tampered { .. })
    ));
    let mut altered = sealed.clone();
    altered.ciphertext[0] ^= 1;
    assert!(matches!(
        ring.open(&t, &altered),
        Err(SealError::Tampered { .. })
    ));
    // Another token's key of the same label does not open it.
    let mut wrong_key = sealed.clone();
    wrong_key.key_id = other.id().clone();
    assert!(matches!(
        Keyring::new(other).open(&t, &wrong_key),
        Err(SealError::Tampered { .. })
    ));

    // A keyring mixing a file key and the module key: a rotation re-seals from one to the
    // other.
    let file = Keyring::new(Kek::generate().unwrap());
    let from_file = file.seal(&t, &secret).unwrap();
    let mixed = Keyring::new(key.clone()).with_older_ring(&file);
    let moved = mixed
        .seal(&t, &mixed.open(&t, &from_file).unwrap())
        .unwrap();
    assert_eq!(&moved.key_id, key.id());
    assert_eq!(mixed.open(&t, &moved).unwrap(), secret);

    // Many threads share the key (one session each, pooled).
    std::thread::scope(|s| {
        for i in 0..8 {
            let (ring, secret) = (&ring, &secret);
            s.spawn(move || {
                let t = TokenId::new(format!("T-{i}")).unwrap();
                for _ in 0..20 {
                    let sealed = ring.seal(&t, secret).unwrap();
                    assert_eq!(&ring.open(&t, &sealed).unwrap(), secret);
                }
            });
        }
    });
    assert!(ring.check_current().is_ok());
}

#[test]
fn wrong_pin_missing_token_and_module_are_named() {
    let Some(dir) = child_or_run("wrong_pin_missing_token_and_module_are_named") else {
        return;
    };
    let kek_uri = uri("pkcs11:token=cr;object=codereader-kek");
    let err = HsmKey::open(&config("not-the-pin"), &kek_uri, true).unwrap_err();
    assert_eq!(err, HsmError::WrongPin { token: "cr".into() });
    assert!(!format!("{err} {err:?}").contains("not-the-pin"));
    assert_eq!(err.to_string(), "PKCS#11 token \"cr\": wrong PIN");

    let err = HsmKey::open(&config(PIN), &uri("pkcs11:token=nope;object=k"), true).unwrap_err();
    assert_eq!(
        err,
        HsmError::NoSuchToken {
            token: "nope".into()
        }
    );

    let missing = Pkcs11Config {
        module: Some(PathBuf::from("/nonexistent/libpkcs11.so")),
        ..config(PIN)
    };
    assert!(matches!(
        HsmKey::open(&missing, &kek_uri, true).unwrap_err(),
        HsmError::Module { path, .. } if path.as_path() == std::path::Path::new("/nonexistent/libpkcs11.so")
    ));
    let none = Pkcs11Config {
        module: None,
        pin: None,
    };
    assert_eq!(
        HsmKey::open(&none, &kek_uri, true).unwrap_err(),
        HsmError::NoModule
    );

    // The PIN from a file named in the URI; a missing file is named, the PIN never.
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let no_pin = Pkcs11Config {
        module: Some(SoftHsm::module().unwrap()),
        pin: None,
    };
    let with_file = uri(&format!(
        "pkcs11:token=cr;object=codereader-kek?pin-source=file:{}",
        pin_file.display()
    ));
    HsmKey::open(&no_pin, &with_file, true).unwrap();
    assert!(matches!(
        HsmKey::open(&no_pin, &kek_uri, true).unwrap_err(),
        HsmError::NoPin { .. }
    ));
    let gone = uri(&format!(
        "pkcs11:token=cr;object=codereader-kek?pin-source=file:{}",
        dir.join("no-pin-here").display()
    ));
    assert!(matches!(
        HsmKey::open(&no_pin, &gone, true).unwrap_err(),
        HsmError::NoPin { reason } if reason.contains("no-pin-here")
    ));
}

#[test]
fn uris_are_checked() {
    let u = uri("pkcs11:token=My%20HSM;object=kek;type=secret-key?module-path=/usr/lib/x.so");
    assert_eq!(u.token(), "My HSM");
    assert_eq!(u.object(), "kek");
    let bad = |text: &str| match Pkcs11Uri::parse(text) {
        Err(HsmError::BadUri { reason }) => reason,
        other => panic!("{text}: {other:?}"),
    };
    assert!(bad("file:/x").contains("pkcs11:"));
    assert!(bad("pkcs11:object=kek").contains("token"));
    assert!(bad("pkcs11:token=t").contains("object"));
    assert!(bad("pkcs11:token=t;object=k;type=private").contains("secret-key"));
    assert!(bad("pkcs11:token=t;token=u;object=k").contains("twice"));
    let refused = bad("pkcs11:token=t;object=k?pin-value=1234");
    assert!(refused.contains("pin-value") && !refused.contains("1234"));
    assert!(bad("pkcs11:token=t;object=k;colour=red").contains("colour"));
    for malformed in ["k%zz", "k%+5", "k%G0", "k%4"] {
        let text = format!("pkcs11:token=t;object={malformed}");
        assert!(bad(&text).contains('%'), "{text}");
    }
    // RFC 7512 has no form encoding: `+` is itself.
    assert_eq!(uri("pkcs11:token=a+b;object=k%2B").token(), "a+b");
}

/// The key the verifier creates cannot be read out of the module, and a key that could be
/// is refused as a key-encryption key. Checked with the module itself (`cryptoki`).
#[test]
fn the_key_never_leaves_the_module() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    if child_or_run("the_key_never_leaves_the_module").is_none() {
        return;
    }
    HsmKey::open(&config(PIN), &uri("pkcs11:token=cr;object=kept-in"), true).unwrap();

    // A second context on the same module in this process: the one the key uses already
    // initialised it.
    let ctx = Pkcs11::new(SoftHsm::module().unwrap()).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == "cr")
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::from(PIN)));
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"kept-in".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let attrs = session
        .get_attributes(
            found[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Value,
            ],
        )
        .unwrap_or_default();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the key's value was readable: {attrs:?}"
    );

    // A key someone made extractable is not accepted as a key-encryption key.
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(b"leaky".to_vec()),
            ],
        )
        .unwrap();
    let err = HsmKey::open(&config(PIN), &uri("pkcs11:token=cr;object=leaky"), true).unwrap_err();
    assert!(
        matches!(&err, HsmError::KeyNotUsable { reason, .. } if reason.contains("may leave the module")),
        "{err:?}"
    );
}
