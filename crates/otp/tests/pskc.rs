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

    const FILES: &[(&str, &str)] = &[
        ("figure2", FIGURE2),
        ("figure3", FIGURE3),
        ("figure6", FIGURE6),
        ("broken-keys", BROKEN),
    ];
    const SECRET: &[u8] = b"12345678901234567890";
    const SECRET_BASE64: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=";

    /// Errors never show the seed, in any of the spellings a file holds it.
    fn check_no_secret(entries: &[pskc::PskcEntry]) -> Result<(), TestCaseError> {
        for e in entries {
            if let Err(err) = &e.result {
                let shown = format!("{err} {err:?}");
                prop_assert!(!shown.contains("1234567890"), "{}", shown);
                prop_assert!(!shown.contains(SECRET_BASE64), "{}", shown);
            }
        }
        Ok(())
    }

    /// Figure 6 with the text of the one element `tag` replaced by `text`.
    fn figure6_with(tag: &str, text: &str) -> String {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let a = FIGURE6.find(&open).unwrap() + open.len();
        let b = FIGURE6[a..].find(&close).unwrap() + a;
        format!("{}{text}{}", &FIGURE6[..a], &FIGURE6[b..])
    }

    fn xml_escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    fn base64(bytes: &[u8]) -> String {
        data_encoding::BASE64.encode(bytes)
    }

    fn the_key(entries: Vec<pskc::PskcEntry>) -> Result<PskcKey, KeyError> {
        assert_eq!(entries.len(), 1);
        entries.into_iter().next().unwrap().result
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any file cut before the end of its root element is not well-formed XML: a
        /// document error with a position, never entries from half a file.
        #[test]
        fn truncated_files_are_refused_whole(file in 0..FILES.len(), at in any::<prop::sample::Index>()) {
            let (name, text) = FILES[file];
            let end = text.rfind("</KeyContainer>").unwrap() + "</KeyContainer>".len();
            let cut = at.index(end);
            let got = pskc::parse(&text.as_bytes()[..cut], Some(&psk()), KeyPolicy::Rfc4226);
            prop_assert!(
                matches!(got, Err(pskc::PskcError::Xml { .. })),
                "{} cut at {}: {:?}", name, cut, got.map(|e| e.len())
            );
        }

        /// A wrong pre-shared key never yields a key: the MAC key does not decrypt, or (when
        /// its padding happens to look right) the value's MAC does not match.
        #[test]
        fn wrong_pre_shared_key_yields_no_key(bytes in any::<[u8; 16]>()) {
            prop_assume!(bytes != *b"\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12");
            let wrong = PreSharedKey::new(bytes);
            let entries = pskc::parse(FIGURE6.as_bytes(), Some(&wrong), KeyPolicy::Rfc4226).unwrap();
            check_no_secret(&entries)?;
            let got = the_key(entries);
            prop_assert!(matches!(
                got,
                Err(KeyError::Decrypt { field: "MAC key" } | KeyError::MacMismatch)
            ), "{:?}", got);
        }

        /// Any other ValueMAC (any length) is a MAC mismatch, and nothing is decrypted.
        #[test]
        fn wrong_value_mac_is_a_mismatch(mac in prop::collection::vec(any::<u8>(), 0..40)) {
            let xml = figure6_with("ValueMAC", &base64(&mac));
            prop_assume!(base64(&mac) != "Su+NvtQfmvfJzF6bmQiJqoLRExc=");
            let entries = pskc::parse(xml.as_bytes(), Some(&psk()), KeyPolicy::Rfc4226).unwrap();
            check_no_secret(&entries)?;
            prop_assert_eq!(the_key(entries).err(), Some(KeyError::MacMismatch));
        }

        /// A flipped bit anywhere in the encrypted secret (IV or ciphertext), or a cut of it,
        /// is caught by the MAC before decryption.
        #[test]
        fn damaged_ciphertext_is_a_mismatch(at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<bool>()) {
            let original = data_encoding::BASE64
                .decode(b"AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv")
                .unwrap();
            let mut sealed = original.clone();
            let i = at.index(sealed.len());
            if cut {
                sealed.truncate(i);
            } else {
                sealed[i] ^= 1 << bit;
            }
            let xml = FIGURE6.replace(
                "AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv",
                &base64(&sealed),
            );
            let entries = pskc::parse(xml.as_bytes(), Some(&psk()), KeyPolicy::Rfc4226).unwrap();
            check_no_secret(&entries)?;
            prop_assert_eq!(the_key(entries).err(), Some(KeyError::MacMismatch));
        }

        /// Huge, empty or odd text in the elements a vendor fills in: serials, names and
        /// issuers are taken as written (trimmed), counters must be whole numbers that fit,
        /// and the seed is never affected.
        #[test]
        fn huge_and_empty_elements(
            which in 0usize..4,
            text in prop_oneof![
                Just(String::new()),
                "\\PC{0,40}",
                "[0-9]{1,30}",
                (any::<char>(), 1000usize..100_000).prop_map(|(c, n)| c.to_string().repeat(n)),
            ],
        ) {
            // XML 1.0 allows neither these characters nor a CR that is not normalised away.
            prop_assume!(!text.chars().any(|c| (c < ' ' && !matches!(c, '\t' | '\n')) || c == '\u{fffe}' || c == '\u{ffff}'));
            let tag = ["SerialNo", "Manufacturer", "Issuer", "PlainValue"][which];
            let xml = figure6_with(tag, &xml_escape(&text));
            let entries = pskc::parse(xml.as_bytes(), Some(&psk()), KeyPolicy::Rfc4226).unwrap();
            check_no_secret(&entries)?;
            let got = the_key(entries);
            let expected = text.trim();
            match tag {
                "PlainValue" => {
                    let number = if !expected.is_empty() && expected.bytes().all(|b| b.is_ascii_digit()) {
                        expected.parse::<u64>().ok()
                    } else {
                        None
                    };
                    match number {
                        Some(n) => {
                            let key = got.unwrap();
                            prop_assert_eq!(key.kind, OtpKind::Hotp { counter: Counter(n) });
                            prop_assert_eq!(key.secret.expose(), SECRET);
                        }
                        None => prop_assert_eq!(got.err(), Some(KeyError::BadNumber { field: "Counter" })),
                    }
                }
                _ => {
                    let key = got.unwrap();
                    let field = match tag {
                        "SerialNo" => key.serial.as_deref(),
                        "Manufacturer" => key.manufacturer.as_deref(),
                        _ => key.issuer.as_deref(),
                    };
                    prop_assert_eq!(field, Some(expected));
                    prop_assert_eq!(key.secret.expose(), SECRET);
                }
            }
        }
    }
}
