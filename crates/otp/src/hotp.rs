//! HOTP (RFC 4226): HMAC over a counter, dynamically truncated to a decimal code.
//!
//! The HMAC key schedule (hashing the padded key into the inner and outer states) is done
//! once in [`Hotp::new`]; every code then starts from a copy of that prepared state, so
//! computing many codes for one token (a verifier's window, a benchmark) costs only the two
//! compression passes over the counter.
//!
//! HMAC-SHA-1, by far the most common token algorithm, runs on the SHA-1 compression function
//! directly ([`Sha1Key`]): the counter and the inner digest each fit one padded block, so a
//! code is exactly two compressions on stack arrays, without the generic `hmac` machinery's
//! buffers, copies and wipes. SHA-256 and SHA-512 go through `hmac`.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use crate::code::{Code, Digits};
use crate::secret::Secret;

/// The HMAC hash function of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// HMAC-SHA-1, the default of RFC 4226 and of authenticator apps.
    #[default]
    Sha1,
    /// HMAC-SHA-256 (RFC 6238).
    Sha256,
    /// HMAC-SHA-512 (RFC 6238).
    Sha512,
}

/// An algorithm name that is not SHA1, SHA256 or SHA512.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm; expected SHA1, SHA256 or SHA512")]
pub struct AlgorithmError;

impl Algorithm {
    /// All supported algorithms, for tables and benchmarks.
    pub const ALL: [Algorithm; 3] = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in otpauth URIs and PSKC files: `SHA1`, `SHA256`, `SHA512`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;
    /// Case-insensitive; `SHA-256` style names are accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut name = s.to_ascii_uppercase();
        name.retain(|c| c != '-');
        match name.as_str() {
            "SHA1" => Ok(Algorithm::Sha1),
            "SHA256" => Ok(Algorithm::Sha256),
            "SHA512" => Ok(Algorithm::Sha512),
            _ => Err(AlgorithmError),
        }
    }
}

/// An HOTP moving factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Counter(pub u64);

impl Counter {
    /// The next counter, or `None` at `u64::MAX` (a token that reached it is exhausted).
    pub fn next(self) -> Option<Counter> {
        self.0.checked_add(1).map(Counter)
    }
}

/// An HMAC state with the key already absorbed. The inner and outer hash states are
/// key-equivalent material: [`Sha1Key`] wipes itself on drop, and with the `zeroize` features
/// of `hmac` and `sha2` so do the others, which [`_prepared_states_zeroize_on_drop`] checks at
/// compile time.
#[derive(Clone)]
enum PreparedKey {
    Sha1(Sha1Key),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

// HMAC accepts keys of any length (longer ones are hashed first), so `new_from_slice`
// cannot fail for these types; the `expect` documents that invariant.
#[allow(clippy::expect_used)]
fn prepare<M: KeyInit>(key: &[u8]) -> M {
    M::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn _prepared_states_zeroize_on_drop() {
    fn check<T: zeroize::ZeroizeOnDrop>() {}
    // `HmacCore` holds two hash cores (inner and outer state); each wipes itself on drop.
    check::<Sha1Key>();
    check::<sha1::block_api::Sha1Core>();
    check::<sha2::block_api::Sha256VarCore>();
    check::<sha2::block_api::Sha512VarCore>();
}

/// An HOTP generator for one secret.
#[derive(Clone)]
pub struct Hotp {
    key: PreparedKey,
    algorithm: Algorithm,
    digits: Digits,
}

impl fmt::Debug for Hotp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hotp")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .finish_non_exhaustive()
    }
}

impl Hotp {
    /// Prepares the HMAC key schedule for `secret`.
    pub fn new(secret: &Secret, algorithm: Algorithm, digits: Digits) -> Self {
        let bytes = secret.expose();
        let key = match algorithm {
            Algorithm::Sha1 => PreparedKey::Sha1(Sha1Key::new(bytes)),
            Algorithm::Sha256 => PreparedKey::Sha256(prepare(bytes)),
            Algorithm::Sha512 => PreparedKey::Sha512(prepare(bytes)),
        };
        Hotp {
            key,
            algorithm,
            digits,
        }
    }

    /// The code for `counter` (RFC 4226 §5.3).
    pub fn code(&self, counter: Counter) -> Code {
        let message = counter.0.to_be_bytes();
        let value = match &self.key {
            PreparedKey::Sha1(k) => truncate(&k.mac(&message)),
            PreparedKey::Sha256(k) => truncate(&mac(k, &message)),
            PreparedKey::Sha512(k) => truncate(&mac(k, &message)),
        };
        Code::from_value(value % self.digits.modulus(), self.digits)
    }

    /// The token's hash function.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The token's code length.
    pub fn digits(&self) -> Digits {
        self.digits
    }
}

/// SHA-1's initial state (FIPS 180-4 §5.3.1).
const SHA1_H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
/// SHA-1's block size in bytes.
const SHA1_BLOCK: usize = 64;

/// HMAC-SHA-1 (RFC 2104) with the key absorbed: the SHA-1 states after the inner (`ipad`) and
/// outer (`opad`) key blocks. These are key-equivalent, so they are wiped on drop.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Sha1Key {
    inner: [u32; 5],
    outer: [u32; 5],
}

impl Sha1Key {
    fn new(key: &[u8]) -> Self {
        let mut block = zeroize::Zeroizing::new([0u8; SHA1_BLOCK]);
        if key.len() > SHA1_BLOCK {
            // RFC 2104 §2: keys longer than a block are hashed first.
            let mut digest: [u8; 20] = <Sha1 as sha1::Digest>::digest(key).into();
            block[..20].copy_from_slice(&digest);
            zeroize::Zeroize::zeroize(&mut digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pad = zeroize::Zeroizing::new([0u8; SHA1_BLOCK]);
        let mut absorbed = |byte: u8| {
            for (p, k) in pad.iter_mut().zip(block.iter()) {
                *p = k ^ byte;
            }
            let mut state = SHA1_H0;
            sha1::block_api::compress(&mut state, std::slice::from_ref(&*pad));
            state
        };
        Sha1Key {
            inner: absorbed(0x36),
            outer: absorbed(0x5c),
        }
    }

    /// HMAC-SHA-1 of an 8-byte message (the counter): one compression for the inner hash
    /// (64 key bytes already absorbed + 8 message bytes, padded into one block) and one for
    /// the outer (64 + the 20-byte inner digest, padded into one block).
    fn mac(&self, message: &[u8; 8]) -> [u8; 20] {
        let mut block = [0u8; SHA1_BLOCK];
        block[..8].copy_from_slice(message);
        block[8] = 0x80;
        block[56..].copy_from_slice(&(((SHA1_BLOCK + 8) * 8) as u64).to_be_bytes());
        let mut state = self.inner;
        sha1::block_api::compress(&mut state, std::slice::from_ref(&block));
        let mut block = [0u8; SHA1_BLOCK];
        for (chunk, word) in block[..20].chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block[20] = 0x80;
        block[56..].copy_from_slice(&(((SHA1_BLOCK + 20) * 8) as u64).to_be_bytes());
        state = self.outer;
        sha1::block_api::compress(&mut state, std::slice::from_ref(&block));
        let mut out = [0u8; 20];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

fn mac<M: Mac + Clone>(prepared: &M, message: &[u8]) -> impl AsRef<[u8]> {
    let mut m = prepared.clone();
    m.update(message);
    m.finalize().into_bytes()
}

/// Dynamic truncation (RFC 4226 §5.3): 31 bits starting at the offset named by the low
/// nibble of the last byte.
fn truncate(hash: &impl AsRef<[u8]>) -> u32 {
    let h = hash.as_ref();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            assert_eq!(a.name().to_lowercase().parse::<Algorithm>().unwrap(), a);
        }
        assert_eq!("SHA-256".parse::<Algorithm>().unwrap(), Algorithm::Sha256);
        assert_eq!("MD5".parse::<Algorithm>(), Err(AlgorithmError));
    }

    #[test]
    fn sha1_fast_path_matches_the_hmac_crate() {
        // Key lengths around the block size (64): shorter keys are padded, longer ones hashed.
        for len in [1usize, 10, 20, 63, 64, 65, 100, 128] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let fast = Sha1Key::new(&key);
            let generic: Hmac<Sha1> = prepare(&key);
            for counter in [0u64, 1, 59, 0x0123_4567_89ab_cdef, u64::MAX] {
                let message = counter.to_be_bytes();
                let expected = mac(&generic, &message);
                assert_eq!(&fast.mac(&message)[..], expected.as_ref(), "len {len}");
            }
        }
    }

    #[test]
    fn counter_end() {
        assert_eq!(Counter(u64::MAX).next(), None);
        assert_eq!(Counter(1).next(), Some(Counter(2)));
    }
}
