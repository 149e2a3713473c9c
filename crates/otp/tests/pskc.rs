//! PSKC import against the RFC 6030 figures and a table of broken files, from `tests/data/pskc/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use codereader_otp::pskc::{self, KeyError, PreSharedKey, PskcKey};
use codereader_otp::{
    Algorithm, Counter, Digits, Hotp, KeyPolicy, OtpKind, Period, SecretError, TimeStep, Totp,
    UnixTime,
};

const FIGURE3: &str = include_str!("data/pskc/rfc6030-figure3.xml");
const FIGURE6: &str = include_str!("data/pskc/rfc6030-figure6.xml");
const FIGURE2: &str = include_str!("data/pskc/rfc6030-figure2.xml");
const BROKEN: &str = include_str!("data/pskc/broken-keys.xml");
const RFC_PSK: &str = "12345678901234567890123456789012";

fn psk() -> PreSharedKey {
    PreSharedKey::from_hex(RFC_PSK).unwrap()
}

fn only_key(xml: &str, psk: Option<&PreSharedKey>) -> Result<PskcKey, KeyError> {
    let entries = pskc::parse(xml.as_bytes(), psk, KeyPolicy::Rfc4226).unwrap();
    assert_eq!(entries.len(), 1);
    entries.into_iter().next().unwrap().result
}

/// The figures' key is the RFC 4226 seed with 8-digit codes from counter 0 (RFC 4226
/// appendix D: HOTP values 1284755224, 1094287082, 137359152 for counters 0, 1, 2).
fn check_rfc4226_key(key: &PskcKey) {
    assert_eq!(key.key_id, "12345678");
    assert_eq!(key.serial.as_deref(), Some("987654321"));
    assert_eq!(key.name(), "987654321");
    assert_eq!(key.manufacturer.as_deref(), Some("Manufacturer"));
    assert_eq!(key.issuer.as_deref(), Some("Issuer"));
    assert_eq!(
        key.kind,
        OtpKind::Hotp {
            counter: Counter(0)
        }
    );
    assert_eq!(key.algorithm, Algorithm::Sha1);
    assert_eq!(key.digits, Digits::EIGHT);
    assert_eq!(key.secret.expose(), b"12345678901234567890");
    let hotp = Hotp::new(&key.secret, key.algorithm, key.digits);
    let codes: Vec<String> = (0..3)
        .map(|c| hotp.code(Counter(c)).as_str().to_owned())
        .collect();
    assert_eq!(codes, ["84755224", "94287082", "37359152"]);
}

#[test]
fn rfc6030_figure3_plaintext() {
    check_rfc4226_key(&only_key(FIGURE3, None).unwrap());
    // A pre-shared key given for a plaintext file changes nothing.
    check_rfc4226_key(&only_key(FIGURE3, Some(&psk())).unwrap());
}

#[test]
fn rfc6030_figure6_pre_shared_key() {
    check_rfc4226_key(&only_key(FIGURE6, Some(&psk())).unwrap());
}

#[test]
fn rfc6030_figure2_short_secret_is_refused_unless_allowed() {
    assert_eq!(
        only_key(FIGURE2, None).unwrap_err(),
        KeyError::Secret(SecretError::TooShort { len: 4, min: 16 })
    );
    let legacy = pskc::parse(FIGURE2.as_bytes(), None, KeyPolicy::AllowLegacyShort).unwrap();
    let key = legacy[0].result.as_ref().unwrap();
    assert_eq!(key.secret.expose(), b"1234");
    assert_eq!(key.name(), "12345678");
    assert_eq!(key.digits, Digits::SIX);
}

#[test]
fn broken_keys_are_reported_one_by_one() {
    let entries = pskc::parse(BROKEN.as_bytes(), None, KeyPolicy::Rfc4226).unwrap();
    let expected: Vec<(usize, Result<&str, KeyError>)> = vec![
        (1, Ok("GOOD-1")),
        (2, Err(KeyError::MissingId)),
        (3, Err(KeyError::UnsupportedAlgorithm)),
        (4, Err(KeyError::MissingSecret)),
        (5, Err(KeyError::BadBase64 { field: "Secret" })),
        (
            6,
            Err(KeyError::Secret(SecretError::TooShort { len: 10, min: 16 })),
        ),
        (7, Err(KeyError::BadLength)),
        (8, Err(KeyError::UnsupportedEncoding)),
        (9, Err(KeyError::BadNumber { field: "Counter" })),
        (10, Err(KeyError::UnsupportedSuite)),
        (11, Err(KeyError::UnsupportedEncryption)),
        (12, Err(KeyError::Duplicate)),
        (13, Ok("GOOD-2")),
        (
            14,
            Err(KeyError::BadNumber {
                field: "TimeInterval",
            }),
        ),
    ];
    assert_eq!(entries.len(), expected.len());
    for (entry, (index, want)) in entries.iter().zip(expected) {
        assert_eq!(entry.index, index);
        let got = entry
            .result
            .as_ref()
            .map(|k| k.name())
            .map_err(Clone::clone);
        assert_eq!(got, want, "key {index}");
        if index != 2 {
            assert_eq!(entry.key_id.as_deref(), Some(format!("k{index}").as_str()));
        }
    }
    // The good TOTP key carries its parameters and makes the RFC 6238 SHA-256 codes (T = 59 s
    // with a 30 s step is step 1; here the period is 60 s, so step 1 starts at 60 s).
    let totp_key = entries[12].result.as_ref().unwrap();
    assert_eq!(
        totp_key.kind,
        OtpKind::Totp {
            period: Period::new(60).unwrap()
        }
    );
    assert_eq!(totp_key.algorithm, Algorithm::Sha256);
    let totp = Totp::new(
        &totp_key.secret,
        totp_key.algorithm,
        totp_key.digits,
        Period::new(60).unwrap(),
        UnixTime(0),
    );
    assert_eq!(totp.code_for_step(TimeStep(1)).as_str(), "46119246");
}

/// Figure 6 with one change each, and the error that change must give.
#[test]
fn broken_encryption_table() {
    let wrong_psk = PreSharedKey::new([0; 16]);
    let cases: Vec<(&str, String, Option<&PreSharedKey>, KeyError)> = vec![
        (
            "no pre-shared key given",
            FIGURE6.to_owned(),
            None,
            KeyError::NeedsPreSharedKey,
        ),
        (
            "wrong pre-shared key",
            FIGURE6.to_owned(),
            Some(&wrong_psk),
            KeyError::Decrypt { field: "MAC key" },
        ),
        (
            "tampered ValueMAC",
            FIGURE6.replace(
                "Su+NvtQfmvfJzF6bmQiJqoLRExc=",
                "Tu+NvtQfmvfJzF6bmQiJqoLRExc=",
            ),
            None,
            KeyError::MacMismatch,
        ),
        (
            "tampered ciphertext",
            FIGURE6.replace("OD+cIHItlB3Wra1DU", "OD+cIHItlB3Wra1DV"),
            None,
            KeyError::MacMismatch,
        ),
        (
            "no ValueMAC",
            FIGURE6.replace(
                "<ValueMAC>Su+NvtQfmvfJzF6bmQiJqoLRExc=\n                    </ValueMAC>",
                "",
            ),
            None,
            KeyError::MissingMac,
        ),
        (
            "no MACMethod",
            cut(FIGURE6, "<MACMethod", "</MACMethod>"),
            None,
            KeyError::MissingMac,
        ),
        (
            "HMAC-SHA256 MAC",
            FIGURE6.replace("xmldsig#hmac-sha1", "xmldsig#hmac-sha256"),
            None,
            KeyError::UnsupportedMac,
        ),
        (
            "AES-256-CBC value",
            FIGURE6.replacen("xmlenc#aes128-cbc", "xmlenc#aes256-cbc", 2),
            None,
            KeyError::UnsupportedEncryption,
        ),
        (
            "password-derived key",
            FIGURE6.replace("<ds:KeyName>Pre-shared-key</ds:KeyName>", "<DerivedKey/>"),
            None,
            KeyError::UnsupportedEncryption,
        ),
        (
            "ciphertext not a whole block",
            FIGURE6.replace(
                "AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv",
                "AAECAwQFBgcICQoLDA0ODw==",
            ),
            None,
            KeyError::MacMismatch,
        ),
        (
            "encrypted counter",
            FIGURE6.replace(
                "<Counter>\n                    <PlainValue>0</PlainValue>",
                "<Counter>\n                    <EncryptedValue/>",
            ),
            None,
            KeyError::EncryptedValue { field: "Counter" },
        ),
    ];
    let right = psk();
    for (what, xml, key, want) in cases {
        let key = if what == "no pre-shared key given" {
            None
        } else {
            key.or(Some(&right))
        };
        if !what.contains("pre-shared key") {
            assert_ne!(xml, FIGURE6, "{what}: mutation did not apply");
        }
        assert_eq!(only_key(&xml, key).unwrap_err(), want, "{what}");
    }
}

/// `text` without the part from `start` to the end of `end`.
fn cut(text: &str, start: &str, end: &str) -> String {
    let a = text.find(start).unwrap();
    let b = text[a..].find(end).unwrap() + a + end.len();
    format!("{}{}", &text[..a], &text[b..])
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes give a document error or entries, never a panic.
        #[test]
        fn on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = pskc::parse(&bytes, Some(&psk()), KeyPolicy::Rfc4226);
        }

        /// Figure 6 with one byte changed: anything from a parse error to a MAC mismatch,
        /// never a panic, and never a key whose secret differs from the figure's.
        #[test]
        fn on_mutated_figure6(position in 0..FIGURE6.len(), byte in any::<u8>()) {
            let mut bytes = FIGURE6.as_bytes().to_vec();
            bytes[position] = byte;
            if let Ok(entries) = pskc::parse(&bytes, Some(&psk()), KeyPolicy::Rfc4226) {
                for e in entries {
                    if let Ok(key) = e.result {
                        prop_assert_eq!(key.secret.expose(), b"12345678901234567890");
                    }
                }
            }
        }
    }
}
