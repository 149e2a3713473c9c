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

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use codereader_otp::Hotp;

use crate::seal::SealedSeed;
use crate::token::{TokenId, TokenParams};

/// Independent locks, so that concurrent verifications rarely wait on one another.
const SHARDS: usize = 16;

struct Entry {
    seed: SealedSeed,
    params: TokenParams,
    hotp: Hotp,
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

    /// The prepared key for `id` if it was made from exactly this seal and these parameters.
    pub(crate) fn get(&self, id: &TokenId, seed: &SealedSeed, params: TokenParams) -> Option<Hotp> {
        let shard = self
            .shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(id)
            .filter(|e| e.params == params && e.seed == *seed)
            .map(|e| e.hotp.clone())
    }

    /// Remembers `hotp` for `id`, made from `seed` and `params`; evicts an arbitrary entry of
    /// the shard when it is full.
    pub(crate) fn put(&self, id: &TokenId, seed: &SealedSeed, params: TokenParams, hotp: Hotp) {
        let mut shard = self
            .shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        self.shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
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
        cache.put(&id, &seed(1), params(Digits::SIX), hotp(1));
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
            cache.put(&id, &seed(1), params(Digits::SIX), hotp(1));
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

    #[test]
    fn stays_within_its_capacity() {
        assert!(KeyCache::new(0).is_none());
        let cache = KeyCache::new(64).unwrap();
        for i in 0..1000 {
            let id = TokenId::new(format!("T{i}")).unwrap();
            cache.put(&id, &seed(1), params(Digits::SIX), hotp(1));
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(cache.len() >= 32, "{}", cache.len());
        // Replacing an entry of a full shard keeps its size.
        let id = TokenId::new("T999").unwrap();
        let before = cache.len();
        cache.put(&id, &seed(2), params(Digits::SIX), hotp(2));
        assert_eq!(cache.len(), before);
        assert!(cache.get(&id, &seed(2), params(Digits::SIX)).is_some());
    }
}
