//! Codes and base32 secrets as users type or paste them: any text gets a value or a typed
//! error that names the problem without echoing the input, checked against a simple model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use codereader_otp::{
    Code, CodeError, KeyPolicy, MAX_SECRET_LEN, MIN_SECRET_LEN, Secret, SecretError,
};
use data_encoding::{BASE32_NOPAD, Encoding, Specification};
use proptest::prelude::*;

/// What `Code::parse` must do, written the obvious way.
fn code_model(text: &str) -> Result<String, CodeError> {
    let len = text.chars().count();
    if text.is_empty() {
        return Err(CodeError::Empty);
    }
    if !(6..=8).contains(&len) {
        return Err(CodeError::WrongLength { len });
    }
    match text.chars().position(|c| !c.is_ascii_digit()) {
        Some(i) => Err(CodeError::NotDigit { position: i + 1 }),
        None => Ok(text.to_owned()),
    }
}

/// Typed text: mostly digits, with the look-alikes people and keyboards produce.
fn typed() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,10}",
        "[0-9 \\-+.a]{0,10}",
        "[0-9\u{0660}-\u{0669}\u{ff10}-\u{ff19}\u{00b9}\u{00b2}]{0,9}",
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any text: the model's verdict exactly; an accepted code reads back unchanged; an
    /// error message never quotes what was typed.
    #[test]
    fn code_parse_matches_the_model(text in typed()) {
        let got = Code::parse(&text);
        let want = code_model(&text);
        prop_assert_eq!(got.map(|c| c.as_str().to_owned()), want.clone());
        if let Err(e) = want {
            let shown = format!("{e} {e:?}");
            // Shorter inputs can coincide with the message's own words and numbers ("6 ").
            if text.chars().count() >= 5 {
                prop_assert!(!shown.contains(&text), "{:?} echoed in {:?}", text, shown);
            }
        }
    }
}

/// RFC 4648 base32 without padding, either case, any trailing bits: the lenient decoding the
/// parser promises, from a general decoder.
fn lenient_base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
    spec.translate.from.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.translate.to.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.check_trailing_bits = false;
    spec.encoding().unwrap()
}

/// What `Secret::from_base32` must give: spaces ignored anywhere, `=` only as trailing
/// padding, and the first bad character named by its 1-based byte position.
fn base32_model(text: &str, policy: KeyPolicy) -> Result<Vec<u8>, SecretError> {
    let mut symbols = String::new();
    let mut padding = false;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b' ' => {}
            b'=' => padding = true,
            b'A'..=b'Z' | b'a'..=b'z' | b'2'..=b'7' if !padding => symbols.push(char::from(b)),
            _ => return Err(SecretError::InvalidBase32Character { position: i + 1 }),
        }
    }
    let bytes = lenient_base32()
        .decode(symbols.as_bytes())
        .map_err(|_| SecretError::InvalidBase32Length { len: symbols.len() })?;
    let min = if policy == KeyPolicy::Rfc4226 {
        MIN_SECRET_LEN
    } else {
        1
    };
    if bytes.is_empty() {
        Err(SecretError::Empty)
    } else if bytes.len() > MAX_SECRET_LEN {
        Err(SecretError::TooLong {
            len: bytes.len(),
            max: MAX_SECRET_LEN,
        })
    } else if bytes.len() < min {
        Err(SecretError::TooShort {
            len: bytes.len(),
            min,
        })
    } else {
        Ok(bytes)
    }
}

/// Base32-ish text: real encodings of random keys, damaged or spaced, and look-alike junk.
fn base32_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..140).prop_map(|b| BASE32_NOPAD.encode(&b)),
        (
            prop::collection::vec(any::<u8>(), 8..40),
            any::<prop::sample::Index>(),
            "[ =018a-z!é]"
        )
            .prop_map(|(b, at, junk)| {
                let mut text = BASE32_NOPAD.encode(&b);
                let i = at.index(text.len() + 1);
                text.insert_str(i, &junk);
                text
            }),
        (
            prop::collection::vec(any::<u8>(), 10..40),
            "={0,7}",
            any::<bool>()
        )
            .prop_map(|(b, pad, lower)| {
                let text = format!("{}{pad}", BASE32_NOPAD.encode(&b));
                if lower {
                    text.to_ascii_lowercase()
                } else {
                    text
                }
            }),
        "[A-Z2-7 =a-z0189]{0,60}",
        ".{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any text: exactly the model's bytes or error, under both key policies; errors never
    /// contain the text (they hold numbers only).
    #[test]
    fn base32_matches_the_model(text in base32_text(), legacy in any::<bool>()) {
        let policy = if legacy { KeyPolicy::AllowLegacyShort } else { KeyPolicy::Rfc4226 };
        let got = Secret::from_base32(&text, policy);
        let want = base32_model(&text, policy);
        prop_assert_eq!(got.as_ref().map(|s| s.expose().to_vec()).map_err(Clone::clone), want);
        if let Err(e) = got {
            let shown = format!("{e} {e:?}");
            let compact: String = text.chars().filter(|c| *c != ' ').collect();
            // Shorter inputs can coincide with the message's own words ("bits").
            if compact.len() >= 8 {
                prop_assert!(!shown.contains(&compact), "{:?} echoed in {:?}", text, shown);
            }
        }
    }

    /// Encoding a valid secret and decoding it back, in either case, with spaces every few
    /// characters and trailing padding, gives the same key.
    #[test]
    fn base32_round_trip_survives_formatting(
        bytes in prop::collection::vec(any::<u8>(), MIN_SECRET_LEN..=MAX_SECRET_LEN),
        group in 1usize..9,
        pad in 0usize..7,
        lower in any::<bool>(),
    ) {
        let secret = Secret::new(bytes.clone(), KeyPolicy::Rfc4226).unwrap();
        let text = secret.to_base32();
        let mut spaced: String = text
            .as_bytes()
            .chunks(group)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        spaced.push_str(&"=".repeat(pad));
        if lower {
            spaced.make_ascii_lowercase();
        }
        let back = Secret::from_base32(&spaced, KeyPolicy::Rfc4226).unwrap();
        prop_assert_eq!(back.expose(), &bytes[..]);
    }
}
