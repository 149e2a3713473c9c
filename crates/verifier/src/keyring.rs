//! The keyring: the key-encryption keys a verifier holds in memory, the current one, which
//! seals new seeds, and older ones, which only open seeds sealed under them until a rotation
//! re-seals those.
//!
//! What sealing is (AES-256-GCM under a [`SealingKey`]) is [`crate::seal`]'s; where a
//! server keeps its keys between runs is the keyring file ([`crate::KeyringFile`]), from
//! which it builds a [`Keyring`].

use std::sync::Arc;

use codereader_otp::{KeyPolicy, Secret};

use crate::seal::{KeyFailure, NONCE_LEN, SealError, SealedSeed, SealingKey};
use crate::token::{KeyId, TokenId};

/// The current key, which seals, plus older ones, which only open.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Arc<dyn SealingKey>,
    older: Vec<Arc<dyn SealingKey>>,
}

impl Keyring {
    /// A keyring that seals and opens with `current`.
    pub fn new(current: impl SealingKey + 'static) -> Self {
        Keyring {
            current: Arc::new(current),
            older: Vec::new(),
        }
    }

    /// A keyring of keys already shared elsewhere (a hardware key reused across reloads).
    pub fn from_shared(current: Arc<dyn SealingKey>, older: Vec<Arc<dyn SealingKey>>) -> Self {
        Keyring { current, older }
    }

    /// Whether the current key can be used now (see [`SealingKey::check`]).
    ///
    /// # Errors
    /// [`SealError::KeyUnavailable`].
    pub fn check_current(&self) -> Result<(), SealError> {
        self.current.check().map_err(|e| SealError::KeyUnavailable {
            key: self.current.id().clone(),
            reason: match e {
                KeyFailure::Unavailable(reason) => reason,
                _ => "the key refused a check".to_owned(),
            },
        })
    }

    /// Adds an older key that can still open seeds (until they are rotated).
    #[must_use]
    pub fn with_older(mut self, older: impl SealingKey + 'static) -> Self {
        self.older.push(Arc::new(older));
        self
    }

    /// Adds every key of `other` (its current one too) as keys that only open, skipping ids
    /// this keyring has already.
    #[must_use]
    pub fn with_older_ring(mut self, other: &Keyring) -> Self {
        for key in other.keys() {
            if !self.contains(key.id()) {
                self.older.push(Arc::clone(key));
            }
        }
        self
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &KeyId {
        self.current.id()
    }

    /// Whether a key named `id` is in the keyring.
    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys().any(|k| k.id() == id)
    }

    /// The ids of every key, the current one first.
    pub fn ids(&self) -> Vec<&KeyId> {
        self.keys().map(|k| k.id()).collect()
    }

    fn keys(&self) -> impl Iterator<Item = &Arc<dyn SealingKey>> {
        std::iter::once(&self.current).chain(&self.older)
    }

    /// Seals `secret` for `token` under the current key with a fresh random nonce.
    ///
    /// # Errors
    /// [`SealError::Random`] if the system has no randomness; [`SealError::KeyUnavailable`].
    pub fn seal(&self, token: &TokenId, secret: &Secret) -> Result<SealedSeed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let ciphertext = self
            .current
            .seal(&nonce, token.as_str().as_bytes(), secret.expose())
            .map_err(|e| match e {
                KeyFailure::Unavailable(reason) => SealError::KeyUnavailable {
                    key: self.current.id().clone(),
                    reason,
                },
                // Sealing authenticates nothing; a key that says so is unusable.
                _ => SealError::KeyUnavailable {
                    key: self.current.id().clone(),
                    reason: "the key refused to seal".to_owned(),
                },
            })?;
        Ok(SealedSeed {
            key_id: self.current.id().clone(),
            nonce,
            ciphertext,
        })
    }

    /// Opens the seed of `token`.
    ///
    /// # Errors
    /// [`SealError::UnknownKey`], [`SealError::Tampered`], [`SealError::BadSeed`] or
    /// [`SealError::KeyUnavailable`].
    pub fn open(&self, token: &TokenId, sealed: &SealedSeed) -> Result<Secret, SealError> {
        let kek = self
            .keys()
            .find(|k| *k.id() == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey {
                token: token.clone(),
                key: sealed.key_id.clone(),
            })?;
        let mut plain = kek
            .open(&sealed.nonce, token.as_str().as_bytes(), &sealed.ciphertext)
            .map_err(|e| match e {
                KeyFailure::Unavailable(reason) => SealError::KeyUnavailable {
                    key: sealed.key_id.clone(),
                    reason,
                },
                _ => SealError::Tampered {
                    token: token.clone(),
                    key: sealed.key_id.clone(),
                },
            })?;
        // Seeds were checked on import; a legacy short key may have been allowed then.
        Secret::new(std::mem::take(&mut *plain), KeyPolicy::AllowLegacyShort).map_err(|_| {
            SealError::BadSeed {
                token: token.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Kek;

    fn kek(name: &str, byte: u8) -> Kek {
        Kek::from_bytes(KeyId::new(name).unwrap(), [byte; 32])
    }

    #[test]
    fn seals_open_only_for_their_token_and_key() {
        let ring = Keyring::new(kek("k1", 1));
        let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
        let a = TokenId::new("A").unwrap();
        let b = TokenId::new("B").unwrap();
        let sealed = ring.seal(&a, &secret).unwrap();
        assert_ne!(&sealed.ciphertext[..20], secret.expose());
        assert_eq!(ring.open(&a, &sealed).unwrap(), secret);
        assert!(matches!(
            ring.open(&b, &sealed),
            Err(SealError::Tampered { .. })
        ));
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(
            ring.open(&a, &flipped),
            Err(SealError::Tampered { .. })
        ));
        let other = Keyring::new(kek("k2", 2));
        assert!(matches!(
            other.open(&a, &sealed),
            Err(SealError::UnknownKey { .. })
        ));
        let rotated = Keyring::new(kek("k2", 2)).with_older(kek("k1", 1));
        assert_eq!(rotated.open(&a, &sealed).unwrap(), secret);
        assert!(!format!("{:?}", kek("k9", 7)).contains("07"));
    }
}
