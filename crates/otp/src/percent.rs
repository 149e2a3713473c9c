//! Strict percent-decoding, the one decoder of codereader's URIs and queries (otpauth URIs
//! here, PKCS#11 URIs in the verifier, list queries in the server).
//!
//! The `percent-encoding` crate decodes leniently: a `%` not followed by two hex digits is
//! kept as it is. A malformed escape in a URI that carries a secret or names a key is a
//! mistake to report, not text to guess at, so [`decode`] first checks that every `%` starts
//! a `%XX` escape of two hex digits and only then lets the crate decode.

use percent_encoding::percent_decode_str;

/// What a `+` means in the text being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    /// A `+` is itself (URI paths, RFC 7512 PKCS#11 URIs).
    Literal,
    /// A `+` is a space (`application/x-www-form-urlencoded` query values, which many
    /// otpauth issuers and HTTP clients produce); `%2B` is a `+`.
    Space,
}

/// A `%` not followed by two hex digits (`%G0`, `%+5`, a truncated `%4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad percent escape at byte {at}: % must be followed by two hex digits")]
#[non_exhaustive]
pub struct BadEscape {
    /// Byte offset of the `%` in the decoded text.
    pub at: usize,
}

/// Decodes `%XX` escapes (and, with [`Plus::Space`], `+`) into bytes.
///
/// The bytes may be any; callers that want text check UTF-8 themselves (and zeroize what
/// they reject if it may hold a secret).
///
/// # Errors
/// [`BadEscape`] for the first `%` that does not start two hex digits.
pub fn decode(text: &str, plus: Plus) -> Result<Vec<u8>, BadEscape> {
    let bytes = text.as_bytes();
    // Every `%` must open an escape; a `%` can never sit inside a valid one (its two
    // characters are hex digits), so checking each one is checking them all.
    if let Some(at) = bytes.iter().enumerate().position(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    }) {
        return Err(BadEscape { at });
    }
    let mut out = Vec::with_capacity(bytes.len());
    match plus {
        Plus::Literal => out.extend(percent_decode_str(text)),
        // Split at the literal `+`s rather than replacing them in a copy: no second buffer
        // holding a secret, and a decoded `%2B` stays a `+`.
        Plus::Space => {
            for (i, piece) in text.split('+').enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend(percent_decode_str(piece));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, plus: Plus, want: Result<&[u8], usize>) {
        assert_eq!(
            decode(text, plus),
            want.map(<[u8]>::to_vec).map_err(|at| BadEscape { at }),
            "{text:?} with {plus:?}"
        );
    }

    #[test]
    fn escapes_and_plus() {
        for (text, literal, space) in [
            ("", &b""[..], &b""[..]),
            ("abc", b"abc", b"abc"),
            ("a%20b", b"a b", b"a b"),
            ("a+b", b"a+b", b"a b"),
            ("%2B+%2b", b"+++", b"+ +"),
            ("%00%ff%FF", b"\0\xff\xff", b"\0\xff\xff"),
            ("+", b"+", b" "),
            ("%C3%A6", "æ".as_bytes(), "æ".as_bytes()),
        ] {
            check(text, Plus::Literal, Ok(literal));
            check(text, Plus::Space, Ok(space));
        }
    }

    #[test]
    fn malformed_escapes_are_errors_at_their_percent() {
        for (text, at) in [
            ("%+5", 0),
            ("%G0", 0),
            ("%4", 0),
            ("ab%4", 2),
            ("%", 0),
            ("%%41", 0),
            ("%41%", 3),
            ("%-1", 0),
            ("% 1", 0),
            ("x%0g", 1),
        ] {
            check(text, Plus::Literal, Err(at));
            check(text, Plus::Space, Err(at));
        }
    }
}
