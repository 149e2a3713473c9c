//! otpauth:// URIs: good ones parse to the right values, each malformed one gets its own
//! error, format → parse is the identity, and no string makes the parser panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use codereader_otp::{
    Algorithm, Counter, Digits, KeyPolicy, KeyUri, OtpKind, Period, Secret, SecretError, UnixTime,
    UriError,
};
use proptest::prelude::*;

const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"

fn parse(uri: &str) -> Result<KeyUri, UriError> {
    KeyUri::parse(uri, KeyPolicy::Rfc4226)
}

#[test]
fn authenticator_style_uri() {
    let uri = parse(&format!(
        "otpauth://totp/ACME%20Co:john.doe@email.com?secret={RFC_SECRET}&issuer=ACME%20Co&algorithm=SHA1&digits=6&period=30&image=x"
    ))
    .unwrap();
    assert_eq!(uri.issuer(), Some("ACME Co"));
    assert_eq!(uri.account(), "john.doe@email.com");
    assert_eq!(uri.algorithm(), Algorithm::Sha1);
    assert_eq!(uri.digits(), Digits::SIX);
    assert_eq!(
        uri.kind(),
        OtpKind::Totp {
            period: Period::DEFAULT
        }
    );
    assert_eq!(uri.secret().expose(), b"12345678901234567890");
    let totp = uri.totp().unwrap();
    assert_eq!(totp.code_at(UnixTime(59)).unwrap().as_str(), "287082");
}

#[test]
fn lenient_where_apps_differ() {
    // Upper-case scheme and type, lower-case padded secret, %3A separator with a space,
    // issuer only in the parameter, '+' for space in a query value.
    let uri = parse(
        "OTPAUTH://HOTP/Example%3A%20alice?secret=gezdgnbvgy3tqojqgezdgnbvgy3tqojq&counter=7&issuer=Example",
    )
    .unwrap();
    assert_eq!(uri.issuer(), Some("Example"));
    assert_eq!(uri.account(), "alice");
    assert_eq!(
        uri.kind(),
        OtpKind::Hotp {
            counter: Counter(7)
        }
    );
    let uri = parse(&format!(
        "otpauth://totp/bob?secret={RFC_SECRET}======&issuer=Big+Bank"
    ))
    .unwrap();
    assert_eq!(uri.issuer(), Some("Big Bank"));
    assert_eq!(uri.account(), "bob");
    let uri = parse(&format!(
        "otpauth://totp/x?secret={RFC_SECRET}&algorithm=sha512&digits=8&period=60"
    ))
    .unwrap();
    assert_eq!(uri.algorithm(), Algorithm::Sha512);
    assert_eq!(uri.digits(), Digits::EIGHT);
    assert_eq!(
        uri.kind(),
        OtpKind::Totp {
            period: Period::new(60).unwrap()
        }
    );
}

#[test]
fn legacy_short_keys_need_the_policy() {
    let uri = "otpauth://totp/a?secret=JBSWY3DPEHPK3PXP"; // 10 bytes
    assert_eq!(
        parse(uri).unwrap_err(),
        UriError::Secret(SecretError::TooShort { len: 10, min: 16 })
    );
    assert_eq!(
        KeyUri::parse(uri, KeyPolicy::AllowLegacyShort)
            .unwrap()
            .secret()
            .len(),
        10
    );
}

#[test]
fn each_malformed_uri_gets_its_error() {
    let s = RFC_SECRET;
    let long = format!("otpauth://totp/a?secret={s}&x={}", "y".repeat(5000));
    let table: Vec<(String, UriError)> = vec![
        (
            long.clone(),
            UriError::TooLong {
                len: long.len(),
                max: 4096,
            },
        ),
        ("".into(), UriError::NotOtpauth),
        ("https://totp/a?secret=AAAA".into(), UriError::NotOtpauth),
        ("otpauth:totp/a".into(), UriError::NotOtpauth),
        (
            format!("otpauth://motp/a?secret={s}"),
            UriError::UnknownType,
        ),
        (format!("otpauth://totp?secret={s}"), UriError::MissingLabel),
        (
            format!("otpauth://totp/?secret={s}"),
            UriError::MissingLabel,
        ),
        (
            format!("otpauth://totp/Issuer:?secret={s}"),
            UriError::EmptyAccount,
        ),
        (
            format!("otpauth://totp/:bob?secret={s}"),
            UriError::EmptyIssuer,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&issuer="),
            UriError::EmptyIssuer,
        ),
        (
            format!("otpauth://totp/a:b:c?secret={s}"),
            UriError::ColonInName { part: "account" },
        ),
        (
            format!("otpauth://totp/bob%20?secret={s}"),
            UriError::SpaceAroundAccount,
        ),
        (
            format!("otpauth://totp/b%zzob?secret={s}"),
            UriError::BadPercentEncoding { part: "label" },
        ),
        (
            format!("otpauth://totp/bob%2?secret={s}"),
            UriError::BadPercentEncoding { part: "label" },
        ),
        (
            format!("otpauth://totp/bob?secret={s}&issuer=%E"),
            UriError::BadPercentEncoding { part: "issuer" },
        ),
        (
            format!("otpauth://totp/b%FFob?secret={s}"),
            UriError::InvalidUtf8 { part: "label" },
        ),
        (
            format!("otpauth://totp/bob?{s}"),
            UriError::MalformedParameter { index: 1 },
        ),
        (
            format!("otpauth://totp/bob?secret={s}&secret={s}"),
            UriError::DuplicateParameter { name: "secret" },
        ),
        (
            format!("otpauth://totp/bob?secret={s}&digits=6&digits=8"),
            UriError::DuplicateParameter { name: "digits" },
        ),
        ("otpauth://totp/bob".into(), UriError::MissingSecret),
        (
            "otpauth://totp/bob?issuer=x".into(),
            UriError::MissingSecret,
        ),
        (
            "otpauth://totp/bob?secret=".into(),
            UriError::Secret(SecretError::Empty),
        ),
        (
            "otpauth://totp/bob?secret=GEZDGNBVGY3TQOJQ1EZDGNBVGY3TQOJQ".into(),
            UriError::Secret(SecretError::InvalidBase32Character { position: 17 }),
        ),
        (
            "otpauth://totp/bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQG".into(),
            UriError::Secret(SecretError::InvalidBase32Length { len: 33 }),
        ),
        (
            format!("otpauth://totp/bob?secret={s}&algorithm=MD5"),
            UriError::UnknownAlgorithm,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&digits=six"),
            UriError::InvalidDigits,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&digits=-6"),
            UriError::InvalidDigits,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&digits=99999999999"),
            UriError::InvalidDigits,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&digits=10"),
            UriError::Digits(Digits::new(10).unwrap_err()),
        ),
        (
            format!("otpauth://totp/bob?secret={s}&period=0"),
            UriError::InvalidPeriod,
        ),
        (
            format!("otpauth://totp/bob?secret={s}&period=30s"),
            UriError::InvalidPeriod,
        ),
        (
            format!("otpauth://hotp/bob?secret={s}"),
            UriError::MissingCounter,
        ),
        (
            format!("otpauth://hotp/bob?secret={s}&counter=18446744073709551616"),
            UriError::InvalidCounter,
        ),
        (
            format!("otpauth://hotp/bob?secret={s}&counter=+1"),
            UriError::InvalidCounter,
        ),
        (
            format!("otpauth://totp/A:bob?secret={s}&issuer=B"),
            UriError::IssuerMismatch,
        ),
    ];
    for (input, expected) in table {
        let got = parse(&input);
        assert_eq!(got.as_ref().err(), Some(&expected), "input {input:?}");
        // Messages are for people: non-empty and never containing the secret.
        let message = expected.to_string();
        assert!(!message.is_empty());
        assert!(!message.contains(s), "secret in message {message:?}");
    }
}

#[test]
fn errors_never_echo_the_secret() {
    // A URI with the secret pasted without `secret=`: the message must not quote it.
    let err = parse(&format!("otpauth://totp/bob?{RFC_SECRET}")).unwrap_err();
    assert!(!err.to_string().contains(RFC_SECRET));
    assert!(!format!("{err:?}").contains(RFC_SECRET));
    let uri = parse(&format!("otpauth://totp/bob?secret={RFC_SECRET}")).unwrap();
    assert!(!format!("{uri:?}").contains(RFC_SECRET));
    assert!(!format!("{uri:?}").contains("1234567890"));
}

#[test]
fn nested_errors_are_said_once() {
    // The inner error is in the message and is not also a `source()`, so printing the whole
    // chain (as `anyhow` does with `{:#}`) does not repeat it.
    for uri in [
        "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQ",
        "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=9",
    ] {
        let err = parse(uri).unwrap_err();
        assert!(std::error::Error::source(&err).is_none(), "{err}");
        let text = err.to_string();
        let inner = text.split_once(": ").map(|(_, inner)| inner).unwrap();
        assert!(!inner.is_empty() && !inner.contains(": bad"), "{text}");
    }
}

fn name() -> impl Strategy<Value = String> {
    // Any printable text without colons, not starting or ending with white space.
    "[^:\\s\\x00-\\x1f][^:\\x00-\\x1f]{0,20}[^:\\s\\x00-\\x1f]|[^:\\s\\x00-\\x1f]"
}

fn key_uri() -> impl Strategy<Value = KeyUri> {
    (
        prop::bool::ANY,
        1u64..100_000,
        any::<u64>(),
        prop::option::of(name()),
        name(),
        prop::collection::vec(any::<u8>(), 16..=64),
        0usize..3,
        6u32..=8,
    )
        .prop_map(
            |(totp, period, counter, issuer, account, secret, alg, digits)| {
                let kind = if totp {
                    OtpKind::Totp {
                        period: Period::new(period).unwrap(),
                    }
                } else {
                    OtpKind::Hotp {
                        counter: Counter(counter),
                    }
                };
                KeyUri::new(
                    kind,
                    issuer,
                    account,
                    Secret::new(secret, KeyPolicy::Rfc4226).unwrap(),
                    Algorithm::ALL[alg],
                    Digits::new(digits).unwrap(),
                )
                .unwrap()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn format_then_parse_is_identity(uri in key_uri()) {
        let text = uri.to_uri_string();
        let back = parse(&text);
        prop_assert_eq!(back.as_ref().ok(), Some(&uri), "{:?}", back.as_ref().err());
    }

    #[test]
    fn parse_never_panics(text in ".{0,300}") {
        let _ = parse(&text);
        let _ = KeyUri::parse(&text, KeyPolicy::AllowLegacyShort);
    }

    #[test]
    fn parse_never_panics_on_near_misses(
        kind in "(?i)(totp|hotp|xotp)",
        label in "[a-zA-Z0-9%:+ ]{0,20}",
        query in "((secret|issuer|digits|period|counter|algorithm|x)=[A-Za-z0-9%+=-]{0,40}&?){0,6}",
    ) {
        let _ = parse(&format!("otpauth://{kind}/{label}?{query}"));
    }
}

/// Mutations of valid URIs (the strings a QR code or a paste can deliver), each with what it
/// must give: no panic, errors that never contain the secret, and the exact verdict where
/// the mutation decides it.
mod mutated {
    use super::*;

    /// The secret as it appears in `uri`'s text, upper and lower case.
    fn secret_texts(uri: &KeyUri) -> [String; 2] {
        let upper = uri.secret().to_base32();
        let lower = upper.to_ascii_lowercase();
        [upper, lower]
    }

    /// Checks what every outcome of parsing a mutation of `original` must satisfy.
    fn check_outcome(
        original: &KeyUri,
        text: &str,
        got: &Result<KeyUri, UriError>,
    ) -> Result<(), TestCaseError> {
        match got {
            Err(e) => {
                let shown = format!("{e} {e:?}");
                for secret in secret_texts(original) {
                    prop_assert!(!shown.contains(&secret), "secret in error {shown:?}");
                }
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(uri) => {
                // Whatever was accepted formats to a URI that gives the same value again.
                let again = parse(&uri.to_uri_string());
                prop_assert_eq!(again.as_ref().ok(), Some(uri), "from {:?}", text);
            }
        }
        Ok(())
    }

    /// `otpauth://KIND/` and the rest: label and query.
    fn split(text: &str) -> (&str, &str, &str) {
        let (head, rest) = text.split_at("otpauth://totp/".len());
        let (label, query) = rest.split_once('?').unwrap();
        (head, label, query)
    }

    fn escape_all(text: &str, lower: bool) -> String {
        text.bytes()
            .map(|b| {
                if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// One byte replaced by any byte (lossily back to text): never a panic, never the
        /// secret in an error; if still accepted, the result is itself a stable URI.
        #[test]
        fn flipped_byte(uri in key_uri(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = uri.to_uri_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let got = parse(&text);
            check_outcome(&uri, &text, &got)?;
        }

        /// Cut anywhere: never a panic, never the secret in an error. A cut inside the
        /// scheme or type is a specific error, not a generic one.
        #[test]
        fn truncated(uri in key_uri(), at in any::<prop::sample::Index>()) {
            let full = uri.to_uri_string();
            let cut = at.index(full.len());
            let text = full.get(..cut).unwrap_or("");
            let got = parse(text);
            check_outcome(&uri, text, &got)?;
            if cut < "otpauth://".len() {
                prop_assert_eq!(got.err(), Some(UriError::NotOtpauth));
            } else if cut <= "otpauth://totp/".len() {
                prop_assert!(matches!(
                    got,
                    Err(UriError::UnknownType | UriError::MissingLabel)
                ), "{:?} -> {:?}", text, got);
            }
        }

        /// Any known parameter given twice is refused by name, whatever the second value.
        #[test]
        fn duplicated_parameter(uri in key_uri(), pick in any::<prop::sample::Index>(), value in "[A-Za-z0-9%+=.-]{0,20}") {
            let text = uri.to_uri_string();
            let (_, _, query) = split(&text);
            let names: Vec<&str> = query.split('&').map(|p| p.split_once('=').unwrap().0).collect();
            let name = names[pick.index(names.len())];
            let doubled = format!("{text}&{name}={value}");
            let got = parse(&doubled);
            check_outcome(&uri, &doubled, &got)?;
            prop_assert_eq!(got.err().map(|e| e.to_string()),
                Some(UriError::DuplicateParameter { name: match name {
                    "secret" => "secret", "issuer" => "issuer", "algorithm" => "algorithm",
                    "digits" => "digits", "period" => "period", _ => "counter",
                }}.to_string()));
        }

        /// Unknown parameters (anything without `&` or `#`, even broken escapes) change
        /// nothing: apps add `image`, `color` and others.
        #[test]
        fn unknown_parameters_are_ignored(
            uri in key_uri(),
            name in "[a-z_]{1,12}",
            value in "[^&#]{0,200}",
            first in any::<bool>(),
        ) {
            prop_assume!(!["secret", "issuer", "algorithm", "digits", "period", "counter"]
                .contains(&name.as_str()));
            let text = uri.to_uri_string();
            let (head, label, query) = split(&text);
            let extra = format!("{name}={value}");
            let text = if first {
                format!("{head}{label}?{extra}&{query}")
            } else {
                format!("{head}{label}?{query}&{extra}")
            };
            prop_assume!(text.len() <= 4096);
            let got = parse(&text);
            prop_assert_eq!(got.as_ref().ok(), Some(&uri), "{:?}", got.as_ref().err());
        }

        /// Huge numbers in digits, period or counter get that parameter's error, and a URI
        /// over the size cap is refused before anything else is looked at.
        #[test]
        fn huge_values(uri in key_uri(), which in 0usize..3, digits in "[1-9][0-9]{20,40}", padding in 0usize..5000) {
            let text = uri.to_uri_string();
            let name = ["digits", "period", "counter"][which];
            let is_totp = matches!(uri.kind(), OtpKind::Totp { .. });
            let present = match name {
                "digits" => true,
                "period" => is_totp,
                _ => !is_totp,
            };
            prop_assume!(present);
            // Sometimes thousands of digits: past the size cap.
            let digits = if padding > 4000 { format!("{digits}{}", "9".repeat(padding)) } else { digits };
            let (head, label, query) = split(&text);
            let query: Vec<String> = query
                .split('&')
                .map(|p| if p.starts_with(&format!("{name}=")) { format!("{name}={digits}") } else { p.to_owned() })
                .collect();
            let text = format!("{head}{label}?{}", query.join("&"));
            let got = parse(&text);
            check_outcome(&uri, &text, &got)?;
            let want = if text.len() > 4096 {
                UriError::TooLong { len: text.len(), max: 4096 }
            } else {
                match name {
                    "digits" => UriError::InvalidDigits,
                    "period" => UriError::InvalidPeriod,
                    _ => UriError::InvalidCounter,
                }
            };
            prop_assert_eq!(got.err(), Some(want));
        }

        /// Percent-encoding every byte of the label and of the secret and issuer values (in
        /// upper or lower case hex) gives the same key: escapes are decoded exactly once.
        #[test]
        fn fully_escaped_parts_give_the_same_key(uri in key_uri(), lower in any::<bool>()) {
            let text = uri.to_uri_string();
            let (head, label, query) = split(&text);
            let plain_label = match uri.issuer() {
                Some(issuer) => format!("{issuer}:{}", uri.account()),
                None => uri.account().to_owned(),
            };
            let _ = label;
            let query: Vec<String> = query
                .split('&')
                .map(|p| {
                    let (name, _) = p.split_once('=').unwrap();
                    match name {
                        "secret" => format!("secret={}", escape_all(&uri.secret().to_base32(), lower)),
                        "issuer" => format!("issuer={}", escape_all(uri.issuer().unwrap(), lower)),
                        _ => p.to_owned(),
                    }
                })
                .collect();
            let text = format!("{head}{}?{}", escape_all(&plain_label, lower), query.join("&"));
            prop_assume!(text.len() <= 4096);
            let got = parse(&text);
            prop_assert_eq!(got.as_ref().ok(), Some(&uri), "{:?}", got.as_ref().err());
        }

        /// A broken escape (a `%` followed by fewer than two hex digits) anywhere in the
        /// label, or an escape that decodes to bytes that are not UTF-8, is refused with the
        /// error that names the label.
        #[test]
        fn broken_escapes_in_the_label(
            uri in key_uri(),
            at in any::<prop::sample::Index>(),
            escape in prop_oneof![
                "%", "%[0-9A-Fa-f]", "%[G-Zg-z][0-9A-Fa-f]", "%[0-9A-Fa-f][G-Zg-z]",
                "%[89A-Fa-f][0-9A-Fa-f]",
            ],
        ) {
            let text = uri.to_uri_string();
            let (head, _, query) = split(&text);
            let plain_label = match uri.issuer() {
                Some(issuer) => format!("{issuer}:{}", uri.account()),
                None => uri.account().to_owned(),
            };
            // Split at a character boundary and escape every byte on both sides, so the
            // inserted escape is followed by a complete `%XX` or by the end of the label.
            let boundaries: Vec<usize> = plain_label
                .char_indices()
                .map(|(i, _)| i)
                .chain([plain_label.len()])
                .collect();
            let i = boundaries[at.index(boundaries.len())];
            let text = format!(
                "{head}{}{escape}{}?{query}",
                escape_all(&plain_label[..i], false),
                escape_all(&plain_label[i..], false)
            );
            let got = parse(&text);
            check_outcome(&uri, &text, &got)?;
            let lone_high_byte = escape.len() == 3
                && u8::from_str_radix(&escape[1..], 16).is_ok_and(|b| b >= 0x80);
            let want = if lone_high_byte {
                UriError::InvalidUtf8 { part: "label" }
            } else {
                UriError::BadPercentEncoding { part: "label" }
            };
            prop_assert_eq!(got.err(), Some(want), "{:?}", text);
        }
    }
}
