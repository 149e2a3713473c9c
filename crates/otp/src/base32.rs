//! Base32 (RFC 4648) as authenticator secrets use it: any case, padding optional.
//!
//! Written here rather than configured from a general crate because secrets need two things
//! general decoders do not give together: lenient trailing bits (many issuers emit them) and
//! errors that name a position but never echo the secret's characters.

use zeroize::Zeroize;

/// Why base32 text was refused. The secret module turns this into its `SecretError`: this
/// module knows only the encoding, never what the bytes are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base32Error {
    /// The character at this 1-based position is not in the alphabet (or follows padding).
    Character {
        /// 1-based position.
        position: usize,
    },
    /// This many symbols (padding not counted) cannot encode whole bytes.
    Length {
        /// Symbols given.
        len: usize,
    },
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// Decodes `text`; spaces are ignored, `=` is accepted only as trailing padding.
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8 + 1);
    let mut buffer: u64 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut padding = false;
    for (index, c) in text.bytes().enumerate() {
        let position = index + 1;
        if c == b' ' {
            continue;
        }
        if c == b'=' {
            padding = true;
            continue;
        }
        let Some(v) = value(c).filter(|_| !padding) else {
            out.zeroize();
            return Err(Base32Error::Character { position });
        };
        buffer = (buffer << 5) | u64::from(v);
        bits += 5;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            // Truncation to the low byte is the point of this shift.
            out.push((buffer >> bits) as u8);
            buffer &= (1u64 << bits) - 1;
        }
    }
    buffer.zeroize();
    // Valid unpadded lengths mod 8 are 0, 2, 4, 5 and 7 symbols.
    if matches!(symbols % 8, 1 | 3 | 6) {
        out.zeroize();
        return Err(Base32Error::Length { len: symbols });
    }
    Ok(out)
}

/// Encodes `bytes` as unpadded upper-case base32.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1u32 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    buffer.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode("MZXW6YQ=").unwrap(), b"foob");
        assert_eq!(decode("mzxw 6ytb oi").unwrap(), b"foobar");
    }

    #[test]
    fn rejects_bad_input_by_position() {
        assert_eq!(
            decode("MZ=XW").unwrap_err(),
            Base32Error::Character { position: 4 }
        );
        assert_eq!(decode("MZX").unwrap_err(), Base32Error::Length { len: 3 });
        assert_eq!(
            decode("MZ0W").unwrap_err(),
            Base32Error::Character { position: 3 }
        );
    }
}
