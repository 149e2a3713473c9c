//! Prepared HMAC keys of recently verified tokens, so that a verification of a token seen
//! lately skips opening its seal (AES-256-GCM) and the HMAC key schedule.
//!
//! Opening the seal and preparing the key cost about as much as the three HMACs of a ±1
//! window; a server verifying the same population of tokens all day pays that again on every
//! request. The cache is on by default ([`crate::DEFAULT_KEY_CACHE`] tokens) and can be turned
//! off or resized ([`crate::Verifier::with_key_cache`]).
//!
//! # What it changes for security
//! Entries hold prepared HMAC states, which are as good as the seed for making codes. The
//! process holding the cache also holds the key-encryption key, which opens every seed in the
//! store, so an attacker who can read its memory gains nothing new; but a cached key lives
//! longer in memory than the few microseconds of a verification. Entries are wiped when they
//! are dropped (the otp crate's prepared states zeroize themselves), evicted when the cache is
//! full, removed when a token is deleted or enrolled again, and all dropped when the keyring is
//! replaced or a rotation runs. With the key-encryption key in a PKCS#11 module the process
//! does not hold it, and then the cache does widen what a memory dump reveals (the server
//! turns it off by default there).
//!
//! # Why it is always right
//! An entry is used only if the stored seal the verification just read is byte for byte the
//! one the entry was made from (key id, nonce, ciphertext) with the same algorithm and digits:
//! a re-enrolled, re-imported or re-sealed token, or a seal changed behind our back, misses and
//! is opened afresh, exactly as without the cache. Token *state* (counters, locks) is never
//! cached: it is read from the store on every verification.
//!
//! # The codes of the last window
//! Beside its key an entry keeps the codes of the window its last verification scanned
//! ([`Memo`]): a HOTP token's look-ahead window moves by one counter per accepted code, so
//! the next verification computes one HMAC instead of the whole window (eleven by default),
//! and a TOTP token's moves by one step per period. A code is a function of the key and the
//! counter alone, so a remembered code is exactly what computing it again would give: which
//! values are acceptable (unused, in the window, the token enabled and unlocked) is still
//! decided from the state read from the store, and accepted through its compare-and-set, so
//! the memo can neither accept a code twice nor accept one the store would refuse. Its codes
//! go where its key goes (the entry dropped on re-enrolment, deletion, keyring reload or
//! rotation, and wiped on drop); they reveal nothing the key beside them does not.
//!
//! Constant time: every value of the window is still compared, with no early exit
//! ([`Memo::scan`] mirrors [`crate::scan::scan`]); how many codes are computed depends only
//! on the window and on the windows scanned before, which come from the token's stored
//! state (public to the scan, as in `scan`), never from the code being checked.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use codereader_otp::{Code, Counter, Hotp};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::scan::{Scan, scan};
use crate::seal::SealedSeed;
use crate::token::{TokenId, TokenParams};

/// Independent locks, so that concurrent verifications rarely wait on one another.
const SHARDS: usize = 16;

struct Entry {
    seed: SealedSeed,
    params: TokenParams,
    hotp: Hotp,
    codes: Memo,
}

/// The most codes a [`Memo`] holds: windows wider than this (a look-ahead above 30, a TOTP
/// window above ±15 steps) are scanned without one.
pub(crate) const MEMO: usize = 32;

/// The codes of a run of consecutive counters, computed with one entry's key: the window
/// its last verification scanned. Each code is kept as one word (its ASCII digits,
/// little-endian, zero-padded: distinct lengths give distinct words), the code of counter
/// `c` in slot `c % MEMO`, so that moving the window overwrites slots instead of moving
/// them. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Memo {
    /// The codes of `first..first + len` are held (`len <= MEMO`).
    first: u64,
    len: u64,
    words: [u64; MEMO],
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            first: 0,
            len: 0,
            words: [0; MEMO],
        }
    }
}

/// A code as one word, for [`Memo`]: equal words if and only if equal codes.
fn word(code: &Code) -> u64 {
    let mut bytes = [0u8; 8];
    let digits = code.as_str().as_bytes();
    bytes[..digits.len()].copy_from_slice(digits);
    u64::from_le_bytes(bytes)
}

fn slot(counter: u64) -> usize {
    // `MEMO` is a power of two: the remainder is the low bits.
    (counter % MEMO as u64) as usize
}

impl Memo {
    /// Computes the codes of `lo..=hi` (a run of at most [`MEMO`] counters).
    fn compute(&mut self, hotp: &Hotp, lo: u64, hi: u64) {
        for (Counter(counter), code) in hotp.codes(Counter(lo), Counter(hi)) {
            self.words[slot(counter)] = word(&code);
        }
    }

    /// Makes the memo hold the codes of `lo..=hi`, inside `keep_lo..=keep_hi` (at most
    /// [`MEMO`] counters): the codes it holds of `keep_lo..=keep_hi` stay, the others go,
    /// and only the missing ones of `lo..=hi` (and any gap between them and the ones kept)
    /// are computed. Which and how many depends only on these bounds and the earlier ones.
    fn cover(&mut self, hotp: &Hotp, lo: u64, hi: u64, keep_lo: u64, keep_hi: u64) {
        debug_assert!(keep_lo <= lo && lo <= hi && hi <= keep_hi);
        debug_assert!(keep_hi - keep_lo < MEMO as u64);
        if self.len > 0 {
            let last = self.first + (self.len - 1);
            let (first, last) = (self.first.max(keep_lo), last.min(keep_hi));
            (self.first, self.len) = if first <= last {
                (first, last - first + 1)
            } else {
                (0, 0)
            };
        }
        if self.len == 0 {
            self.compute(hotp, lo, hi);
            (self.first, self.len) = (lo, hi - lo + 1);
            return;
        }
        if lo < self.first {
            self.compute(hotp, lo, self.first - 1);
            self.len += self.first - lo;
            self.first = lo;
        }
        let last = self.first + (self.len - 1);
        if hi > last {
            self.compute(hotp, last + 1, hi);
            self.len += hi - last;
        }
    }

    /// The lowest value of `lo..=hi` (held) whose code is `target`: every value compared,
    /// with no early exit, as `scan::lowest_match` does.
    fn lowest_match(&self, target: u64, lo: u64, hi: u64) -> Option<u64> {
        let mut found = Choice::from(0);
        let mut chosen = 0u64;
        for value in lo..=hi {
            let equal = self.words[slot(value)].ct_eq(&target);
            chosen.conditional_assign(&value, equal & !found);
            found |= equal;
        }
        bool::from(found).then_some(chosen)
    }

    /// [`crate::scan::scan`] with the codes this memo holds instead of computing them again
    /// (the window wider than [`MEMO`]: `scan` itself, and the memo is left as it was).
    /// Same parts in the same order, each compared whole: the unused values first, the used
    /// ones only if no unused value matched.
    pub(crate) fn scan(&mut self, hotp: &Hotp, code: &Code, lo: u64, hi: u64, next: u64) -> Scan {
        let hi = hi.max(lo);
        if hi - lo >= MEMO as u64 {
            return scan(hotp, code, lo, hi, next);
        }
        let target = word(code);
        if next <= hi {
            let from = lo.max(next);
            self.cover(hotp, from, hi, lo, hi);
            if let Some(value) = self.lowest_match(target, from, hi) {
                return Scan::Fresh(value);
            }
        }
        if lo < next {
            let to = hi.min(next - 1);
            self.cover(hotp, lo, to, lo, hi);
            if self.lowest_match(target, lo, to).is_some() {
                return Scan::Stale;
            }
        }
        Scan::Miss
    }
}

/// A bounded map from token to prepared key, in [`SHARDS`] locked parts.
pub(crate) struct KeyCache {
    shards: Box<[Mutex<HashMap<TokenId, Entry>>]>,
    per_shard: usize,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache of about `capacity` keys (rounded up to a multiple of the shard count); `None`
    /// for 0.
    pub(crate) fn new(capacity: usize) -> Option<Self> {
        (capacity > 0).then(|| KeyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn shard(&self, id: &TokenId) -> &Mutex<HashMap<TokenId, Entry>> {
        // FNV-1a over the serial: cheap, and only spreads tokens over locks (the map inside
        // hashes with its own keyed hasher).
        let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// The locked shard of `id`.
    fn locked(&self, id: &TokenId) -> MutexGuard<'_, HashMap<TokenId, Entry>> {
        self.shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The prepared key for `id` if it was made from exactly this seal and these parameters.
    pub(crate) fn get(&self, id: &TokenId, seed: &SealedSeed, params: TokenParams) -> Option<Hotp> {
        let shard = self.locked(id);
        shard
            .get(id)
            .filter(|e| e.params == params && e.seed == *seed)
            .map(|e| e.hotp.clone())
    }

    /// Runs `f` on the prepared key of `id` and the codes remembered with it, if they were
    /// made from exactly this seal and these parameters (under the shard's lock: `f` should
    /// be short, a window scan).
    pub(crate) fn with<R>(
        &self,
        id: &TokenId,
        seed: &SealedSeed,
        params: TokenParams,
        f: impl FnOnce(&Hotp, &mut Memo) -> R,
    ) -> Option<R> {
        let mut shard = self.locked(id);
        shard
            .get_mut(id)
            .filter(|e| e.params == params && e.seed == *seed)
            .map(|e| f(&e.hotp, &mut e.codes))
    }

    /// Remembers `hotp` for `id`, made from `seed` and `params`, with `codes` computed with
    /// it; evicts an arbitrary entry of the shard when it is full.
    pub(crate) fn put(
        &self,
        id: &TokenId,
        seed: &SealedSeed,
        params: TokenParams,
        hotp: Hotp,
        codes: Memo,
    ) {
        let mut shard = self.locked(id);
        if shard.len() >= self.per_shard && !shard.contains_key(id) {
            // Which entry goes is decided by the map's randomly keyed hash order: no caller
            // can aim evictions at a particular token.
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(
            id.clone(),
            Entry {
                seed: seed.clone(),
                params,
                hotp,
                codes,
            },
        );
    }

    /// Forgets every key (the keyring was replaced, or seeds were re-sealed).
    pub(crate) fn clear(&self) {
        for shard in &*self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Forgets `id` (its token was deleted or enrolled again).
    pub(crate) fn remove(&self, id: &TokenId) {
        self.locked(id).remove(id);
    }

    /// How many keys are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::NONCE_LEN;
    use crate::token::{KeyId, TokenKind};
    use codereader_otp::{Algorithm, Counter, Digits, KeyPolicy, Period, Secret, UnixTime};

    fn params(digits: Digits) -> TokenParams {
        TokenParams {
            kind: TokenKind::Totp {
                period: Period::DEFAULT,
                t0: UnixTime(0),
            },
            algorithm: Algorithm::Sha1,
            digits,
        }
    }

    fn seed(byte: u8) -> SealedSeed {
        SealedSeed {
            key_id: KeyId::new("k1").unwrap(),
            nonce: [byte; NONCE_LEN],
            ciphertext: vec![byte; 36],
        }
    }

    fn hotp(byte: u8) -> Hotp {
        let s = Secret::new(vec![byte; 20], KeyPolicy::Rfc4226).unwrap();
        Hotp::new(&s, Algorithm::Sha1, Digits::SIX)
    }

    #[test]
    fn hits_only_the_same_seal_and_parameters() {
        let cache = KeyCache::new(100).unwrap();
        let id = TokenId::new("T1").unwrap();
        cache.put(&id, &seed(1), params(Digits::SIX), hotp(1), Memo::default());
        let hit = cache.get(&id, &seed(1), params(Digits::SIX)).unwrap();
        assert_eq!(hit.code(Counter(7)), hotp(1).code(Counter(7)));
        // Another nonce, ciphertext, key id, digit count or token: a miss.
        assert!(cache.get(&id, &seed(2), params(Digits::SIX)).is_none());
        let mut other = seed(1);
        other.ciphertext[0] ^= 1;
        assert!(cache.get(&id, &other, params(Digits::SIX)).is_none());
        let mut other = seed(1);
        other.key_id = KeyId::new("k2").unwrap();
        assert!(cache.get(&id, &other, params(Digits::SIX)).is_none());
        assert!(cache.get(&id, &seed(1), params(Digits::EIGHT)).is_none());
        let stranger = TokenId::new("T2").unwrap();
        assert!(
            cache
                .get(&stranger, &seed(1), params(Digits::SIX))
                .is_none()
        );
        cache.remove(&id);
        assert!(cache.get(&id, &seed(1), params(Digits::SIX)).is_none());
        // Cleared (a keyring replaced, a rotation): nothing is left.
        for i in 0..50 {
            let id = TokenId::new(format!("T{i}")).unwrap();
            cache.put(&id, &seed(1), params(Digits::SIX), hotp(1), Memo::default());
        }
        assert_eq!(cache.len(), 50);
        cache.clear();
        assert_eq!(cache.len(), 0);
        assert!(
            cache
                .get(&stranger, &seed(1), params(Digits::SIX))
                .is_none()
        );
    }

    /// A memo carried from scan to scan, as a cache entry carries it, answers every scan
    /// exactly as `scan::scan` computing the whole window: windows moving forward by a
    /// little or a lot, backward, widening and narrowing, past the memo's width, and at the
    /// top of the counter range; codes of the window's edges and middle, of used values,
    /// and wrong ones.
    #[test]
    fn remembered_codes_scan_like_computed_ones() {
        let h = hotp(7);
        let wrong = Code::parse("00000000").unwrap();
        let mut checked = 0;
        for base in [0u64, 1_000, u64::MAX - 80] {
            let mut memo = Memo::default();
            // (lo, width) of successive windows, relative to `base`.
            let moves: &[(u64, u64)] = &[
                (0, 11),
                (1, 11),
                (2, 11),
                (7, 11),
                (30, 11),
                (29, 11),
                (3, 11),
                (3, 2),
                (4, 2),
                (4, 31),
                (5, 40),
                (6, 3),
                (50, 0),
                (50, 31),
                (64, 11),
            ];
            for &(offset, width) in moves {
                let lo = base + offset;
                let hi = lo.saturating_add(width);
                for next in [lo, lo + 1, lo + width / 2, hi, hi.saturating_add(1)] {
                    let targets = [lo, hi, lo + width / 2, lo.saturating_sub(1), next];
                    for target in targets {
                        let c = h.code(Counter(target));
                        assert_eq!(
                            memo.scan(&h, &c, lo, hi, next),
                            scan(&h, &c, lo, hi, next),
                            "base {base} lo {lo} hi {hi} next {next} target {target}"
                        );
                        checked += 1;
                    }
                    assert_eq!(
                        memo.scan(&h, &wrong, lo, hi, next),
                        scan(&h, &wrong, lo, hi, next)
                    );
                    assert!(memo.len <= MEMO as u64);
                }
            }
        }
        assert_eq!(checked, 3 * 15 * 5 * 5);
    }

    /// Every code a memo holds is its key's code of that counter, and a window that moved
    /// by one value keeps all but one of them.
    #[test]
    fn a_memo_holds_its_window() {
        let h = hotp(3);
        let mut memo = Memo::default();
        let c = h.code(Counter(5));
        assert_eq!(memo.scan(&h, &c, 4, 15, 5), Scan::Fresh(5));
        assert_eq!((memo.first, memo.len), (5, 11));
        // A wrong code scans the used part too.
        let wrong = Code::parse("0000000").unwrap();
        assert_eq!(memo.scan(&h, &wrong, 5, 16, 6), Scan::Miss);
        assert_eq!((memo.first, memo.len), (5, 12));
        for counter in 5..=16 {
            assert_eq!(memo.words[slot(counter)], word(&h.code(Counter(counter))));
        }
    }

    #[test]
    fn with_runs_only_on_the_same_seal() {
        let cache = KeyCache::new(16).unwrap();
        let id = TokenId::new("T1").unwrap();
        let c = hotp(1).code(Counter(3));
        let mut memo = Memo::default();
        assert_eq!(memo.scan(&hotp(1), &c, 0, 10, 1), Scan::Fresh(3));
        cache.put(&id, &seed(1), params(Digits::SIX), hotp(1), memo);
        let scan_with = |seal: u8| {
            cache.with(&id, &seed(seal), params(Digits::SIX), |h, m| {
                m.scan(h, &c, 3, 13, 4)
            })
        };
        assert_eq!(scan_with(1), Some(Scan::Stale));
        assert_eq!(scan_with(2), None);
        cache.remove(&id);
        assert_eq!(scan_with(1), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        assert!(KeyCache::new(0).is_none());
        let cache = KeyCache::new(64).unwrap();
        for i in 0..1000 {
            let id = TokenId::new(format!("T{i}")).unwrap();
            cache.put(&id, &seed(1), params(Digits::SIX), hotp(1), Memo::default());
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(cache.len() >= 32, "{}", cache.len());
        // Replacing an entry of a full shard keeps its size.
        let id = TokenId::new("T999").unwrap();
        let before = cache.len();
        cache.put(&id, &seed(2), params(Digits::SIX), hotp(2), Memo::default());
        assert_eq!(cache.len(), before);
        assert!(cache.get(&id, &seed(2), params(Digits::SIX)).is_some());
    }
}
