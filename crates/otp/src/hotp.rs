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
//!
//! A verifier checks a window of codes, not one: [`Hotp::codes`] computes a range of counters
//! in groups of up to four, and for HMAC-SHA-1 on x86-64 CPUs with the SHA extensions it runs
//! each group's compressions interleaved (see `shani.rs` for why that pays: one compression
//! is a latency-bound chain). Elsewhere it computes them one by one as [`Hotp::code`] does.

use std::fmt;
use std::iter::FusedIterator;
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
    // Boxed: the generic HMAC states are large (a `Hotp` holding one inline is 320 bytes),
    // and verifiers move and clone SHA-1 keys, by far the most common, on every request.
    Sha256(Box<Hmac<Sha256>>),
    Sha512(Box<Hmac<Sha512>>),
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
            Algorithm::Sha256 => PreparedKey::Sha256(Box::new(prepare(bytes))),
            Algorithm::Sha512 => PreparedKey::Sha512(Box::new(prepare(bytes))),
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
            PreparedKey::Sha256(k) => truncate(&mac(k.as_ref(), &message)),
            PreparedKey::Sha512(k) => truncate(&mac(k.as_ref(), &message)),
        };
        Code::from_value(value, self.digits)
    }

    /// The codes of `first..=last` in order, each with its counter; nothing if `first` is
    /// greater than `last`. The whole of `0..=u64::MAX` is a valid range.
    ///
    /// Equal to calling [`Hotp::code`] for each counter, but faster for HMAC-SHA-1 on x86-64
    /// CPUs with the SHA extensions, where the iterator computes up to four codes at a time
    /// with their hashes interleaved. How long each step takes depends only on the
    /// algorithm and on how many counters are left, never on the secret or the codes, so a
    /// scan that consumes the whole range stays constant-time.
    ///
    /// ```
    /// use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Secret};
    ///
    /// let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226)?;
    /// let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::SIX);
    /// let window: Vec<String> = hotp
    ///     .codes(Counter(3), Counter(5))
    ///     .map(|(counter, code)| format!("{}:{}", counter.0, code.as_str()))
    ///     .collect();
    /// // RFC 4226 appendix D.
    /// assert_eq!(window, ["3:969429", "4:338314", "5:254676"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn codes(&self, first: Counter, last: Counter) -> Codes<'_> {
        self.codes_with(Backend::detect(), first, last)
    }

    /// [`Hotp::codes`] on a given backend (tests force the portable one).
    pub(crate) fn codes_with(&self, backend: Backend, first: Counter, last: Counter) -> Codes<'_> {
        Codes {
            hotp: self,
            backend,
            next: first.0,
            last: last.0,
            exhausted: first > last,
            values: [0; MAX_LANES],
            start: first.0,
            taken: 0,
            ready: 0,
        }
    }

    /// The truncated HMAC values (before the decimal modulus) of `counters`.
    fn truncated<const N: usize>(&self, backend: Backend, counters: &[u64; N]) -> [u32; N] {
        match &self.key {
            PreparedKey::Sha1(k) => k.truncated(backend, counters),
            PreparedKey::Sha256(k) => {
                counters.map(|c| truncate(&mac(k.as_ref(), &c.to_be_bytes())))
            }
            PreparedKey::Sha512(k) => {
                counters.map(|c| truncate(&mac(k.as_ref(), &c.to_be_bytes())))
            }
        }
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

/// How [`Codes`] computes HMAC-SHA-1: chosen from the CPU when the iterator is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// One code after the other, as [`Hotp::code`] does (the `sha1` crate, which uses the SHA
    /// extensions for single compressions where it finds them): any CPU.
    Portable,
    /// Up to four codes' compressions interleaved with the x86 SHA extensions.
    #[cfg(target_arch = "x86_64")]
    ShaNi(crate::shani::ShaNi),
}

impl Backend {
    /// The fastest backend this CPU supports.
    pub(crate) fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(shani) = crate::shani::ShaNi::detect() {
                return Backend::ShaNi(shani);
            }
        }
        Backend::Portable
    }
}

/// The most counters [`Codes`] computes together: four interleaved SHA-1 compressions still
/// beat three per compression on the machine `shani.rs` describes, barely; more lanes would
/// only spill more of the 16 SSE registers the SHA instructions can address to the stack.
const MAX_LANES: usize = 4;

/// How many of `left` counters to compute together next: groups as even as possible (a
/// window of 10 is 4, 3, 3 rather than 4, 4, 2), since a group costs about as much as its
/// longest chain.
fn group_len(left: u64) -> usize {
    let max = MAX_LANES as u64;
    let groups = left.div_ceil(max);
    // At most `MAX_LANES`: the cast cannot truncate.
    left.div_ceil(groups.max(1)).min(max) as usize
}

/// The codes of a range of counters, in order, each with its counter: made by [`Hotp::codes`].
///
/// `Debug` shows neither codes nor key.
pub struct Codes<'a> {
    hotp: &'a Hotp,
    backend: Backend,
    /// The first counter not yet computed and the last of the range; `exhausted` once
    /// `last` is computed (or the range was empty).
    next: u64,
    last: u64,
    exhausted: bool,
    /// Truncated values computed ahead: `values[..ready]`, of counters `start..`, of which
    /// the first `taken` have been returned.
    values: [u32; MAX_LANES],
    start: u64,
    taken: usize,
    ready: usize,
}

impl fmt::Debug for Codes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codes")
            .field("hotp", self.hotp)
            .field("backend", &self.backend)
            .field("left", &self.remaining())
            .finish_non_exhaustive()
    }
}

impl Codes<'_> {
    /// Counters not yet computed (up to 2^64).
    fn left(&self) -> u128 {
        if self.exhausted {
            0
        } else {
            u128::from(self.last - self.next) + 1
        }
    }

    /// Codes not yet returned.
    fn remaining(&self) -> u128 {
        self.left() + (self.ready - self.taken) as u128
    }

    /// Computes the next group of counters into `values`.
    fn refill(&mut self) {
        self.taken = 0;
        if self.exhausted {
            self.ready = 0;
            return;
        }
        // Saturates only for the whole range (2^64 left), where any length above
        // `MAX_LANES` gives the same group.
        let n = group_len((self.last - self.next).saturating_add(1));
        self.start = self.next;
        self.ready = n;
        match n {
            1 => self.fill::<1>(),
            2 => self.fill::<2>(),
            3 => self.fill::<3>(),
            _ => self.fill::<MAX_LANES>(),
        }
        // `n` counters from `next` end at or before `last`, so this does not wrap.
        let end = self.next.wrapping_add(n as u64 - 1);
        if end == self.last {
            self.exhausted = true;
        } else {
            self.next = end + 1;
        }
    }

    fn fill<const N: usize>(&mut self) {
        // At least `N` are left, so these stay within the range and do not wrap.
        let counters: [u64; N] = std::array::from_fn(|i| self.next.wrapping_add(i as u64));
        let values = self.hotp.truncated(self.backend, &counters);
        self.values[..N].copy_from_slice(&values);
    }
}

impl Iterator for Codes<'_> {
    type Item = (Counter, Code);

    fn next(&mut self) -> Option<(Counter, Code)> {
        if self.taken == self.ready {
            self.refill();
        }
        let value = *self.values[..self.ready].get(self.taken)?;
        let counter = Counter(self.start.wrapping_add(self.taken as u64));
        self.taken += 1;
        let digits = self.hotp.digits;
        Some((counter, Code::from_value(value, digits)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        (
            usize::try_from(n).unwrap_or(usize::MAX),
            usize::try_from(n).ok(),
        )
    }
}

impl FusedIterator for Codes<'_> {}

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
        digest_bytes(&state)
    }

    /// Truncated HMAC values of `counters`: with SHA-NI all at once, else one by one.
    fn truncated<const N: usize>(&self, backend: Backend, counters: &[u64; N]) -> [u32; N] {
        match backend {
            Backend::Portable => counters.map(|c| truncate(&self.mac(&c.to_be_bytes()))),
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi(shani) => shani
                .hmac(&self.inner, &self.outer, counters)
                .map(|digest| truncate(&digest_bytes(&digest))),
        }
    }
}

/// A SHA-1 digest from its state words (big-endian, FIPS 180-4 §6.1.2).
fn digest_bytes(state: &[u32; 5]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
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

    /// Both backends where the CPU has SHA-NI, else only the portable one.
    fn backends() -> Vec<Backend> {
        let mut all = vec![Backend::Portable];
        if Backend::detect() != Backend::Portable {
            all.push(Backend::detect());
        }
        all
    }

    /// `codes_with(backend, first..=last)` against `code` for every counter, and the
    /// iterator's length bookkeeping.
    fn check_window(hotp: &Hotp, backend: Backend, first: u64, last: u64) {
        let mut codes = hotp.codes_with(backend, Counter(first), Counter(last));
        let expected_len = if first > last { 0 } else { last - first + 1 };
        assert_eq!(
            codes.size_hint(),
            (expected_len as usize, Some(expected_len as usize))
        );
        let mut seen = 0u64;
        for (counter, code) in codes.by_ref() {
            assert_eq!(counter, Counter(first + seen));
            assert_eq!(
                code.as_str(),
                hotp.code(counter).as_str(),
                "{backend:?} {:?} counter {}",
                hotp.algorithm,
                counter.0
            );
            seen += 1;
        }
        assert_eq!(seen, expected_len);
        assert_eq!(codes.next(), None, "fused");
    }

    #[test]
    fn sha_ni_is_used_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        {
            let has = std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("sse4.1");
            assert_eq!(Backend::detect() != Backend::Portable, has);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(Backend::detect(), Backend::Portable);
    }

    #[test]
    fn windows_equal_single_codes_for_random_secrets_and_counters() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1_ab1e);
        let digits = [Digits::SIX, Digits::SEVEN, Digits::EIGHT];
        for round in 0..600 {
            let len = rng.random_range(1..=crate::MAX_SECRET_LEN);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let secret = Secret::new(bytes, crate::KeyPolicy::AllowLegacyShort).unwrap();
            let algorithm = Algorithm::ALL[round % 3];
            let hotp = Hotp::new(&secret, algorithm, digits[round / 3 % 3]);
            let width: u64 = rng.random_range(0..=13);
            let first = match round % 4 {
                // Near the top, including windows that end exactly at u64::MAX.
                0 => u64::MAX - width - rng.random_range(0..3),
                1 => rng.random_range(0..100),
                // TOTP steps of today's clocks.
                2 => 56_666_666 + rng.random_range(0..1_000_000),
                _ => rng.random(),
            };
            let last = first.saturating_add(width);
            for backend in backends() {
                check_window(&hotp, backend, first, last);
            }
        }
    }

    #[test]
    fn windows_at_the_ends_of_the_counter_range() {
        let secret = Secret::new(vec![0xa5; 20], crate::KeyPolicy::Rfc4226).unwrap();
        for algorithm in Algorithm::ALL {
            let hotp = Hotp::new(&secret, algorithm, Digits::EIGHT);
            for backend in backends() {
                for width in 0..=9 {
                    check_window(&hotp, backend, u64::MAX - width, u64::MAX);
                    check_window(&hotp, backend, 0, width);
                }
                check_window(&hotp, backend, 5, 4);
                check_window(&hotp, backend, u64::MAX, 0);
                // The whole range: 2^64 codes, more than usize can count.
                let mut all = hotp.codes_with(backend, Counter(0), Counter(u64::MAX));
                assert_eq!(all.size_hint(), (usize::MAX, None));
                let head: Vec<_> = all.by_ref().take(6).map(|(c, _)| c.0).collect();
                assert_eq!(head, [0, 1, 2, 3, 4, 5]);
            }
        }
    }

    #[test]
    fn rfc4226_appendix_d_on_every_backend() {
        let secret =
            Secret::new(b"12345678901234567890".to_vec(), crate::KeyPolicy::Rfc4226).unwrap();
        let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::SIX);
        let expected: Vec<(u64, String)> = include_str!("../tests/data/rfc4226.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (counter, code) = l.trim().split_once(' ').unwrap();
                (counter.parse().unwrap(), code.to_owned())
            })
            .collect();
        assert_eq!(expected.len(), 10);
        for backend in backends() {
            // Every window inside 0..=9, so each group size meets each position.
            for first in 0..10u64 {
                for last in first..10 {
                    let got: Vec<(u64, String)> = hotp
                        .codes_with(backend, Counter(first), Counter(last))
                        .map(|(c, code)| (c.0, code.as_str().to_owned()))
                        .collect();
                    assert_eq!(got, expected[first as usize..=last as usize], "{backend:?}");
                }
            }
        }
    }

    #[test]
    fn groups_are_even_and_cover_the_range() {
        let groups = |mut left: u64| {
            let mut out = Vec::new();
            while left > 0 {
                let n = group_len(left);
                out.push(n);
                left -= n as u64;
            }
            out
        };
        assert_eq!(groups(0), Vec::<usize>::new());
        assert_eq!(groups(1), [1]);
        assert_eq!(groups(3), [3]);
        assert_eq!(groups(4), [4]);
        assert_eq!(groups(5), [3, 2]);
        assert_eq!(groups(10), [4, 3, 3]);
        assert_eq!(groups(201).len(), 51);
        assert_eq!(group_len(u64::MAX), MAX_LANES);
    }

    #[test]
    fn codes_debug_shows_no_codes() {
        let secret = Secret::new(vec![1; 20], crate::KeyPolicy::Rfc4226).unwrap();
        let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::SIX);
        let mut codes = hotp.codes(Counter(0), Counter(2));
        let (_, first) = codes.next().unwrap();
        let debug = format!("{codes:?}");
        assert!(!debug.contains(first.as_str()), "{debug}");
        assert!(debug.contains("left: 2"), "{debug}");
    }

    #[test]
    fn counter_end() {
        assert_eq!(Counter(u64::MAX).next(), None);
        assert_eq!(Counter(1).next(), Some(Counter(2)));
    }
}
