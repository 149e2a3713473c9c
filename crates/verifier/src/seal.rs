//! Sealing: what a key-encryption key (KEK) is and what a seed sealed under one looks like.
//!
//! A seed at rest is AES-256-GCM ciphertext under a KEK, with the token id as associated
//! data, so a sealed seed copied onto another token's row does not open. Every seal names the
//! KEK that made it ([`KeyId`]), so the in-memory [`crate::Keyring`] can hold the current key
//! and older ones while [`crate::Verifier::rotate`] re-seals everything under the current
//! key; the keys a server keeps on disk are [`crate::KeyringFile`].
//!
//! Keys are held through the [`SealingKey`] trait ("a key that seals and opens under an
//! id"), not as bytes: a [`Kek`] read from a file is one kind; a key that never leaves a
//! hardware security module can be another, and a keyring may mix them during a rotation
//! from one kind to the other.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, Zeroizing};

use crate::token::{KeyId, TokenId};

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a seed could not be sealed or opened. Never carries key
/// or seed bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The KEK file could not be read.
    #[error("cannot read the key-encryption key file: {reason}")]
    Unreadable {
        /// The I/O error, as text.
        reason: String,
    },
    /// The KEK file may be read by other users.
    #[error("the key-encryption key file is readable by group or others (mode {mode:o}); use 0600")]
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// The KEK file holds neither 32 raw bytes nor 64 hexadecimal digits.
    #[error("the key-encryption key file must hold 32 bytes or 64 hex digits")]
    BadKeyFormat,
    /// The seal names a KEK the keyring does not have.
    #[error("the seed of token {token} is sealed under key {key}, which is not in the keyring")]
    UnknownKey {
        /// The token.
        token: TokenId,
        /// The missing key.
        key: KeyId,
    },
    /// Authentication failed: wrong key, wrong token id or tampered data.
    #[error("the seed of token {token} does not open under key {key} (wrong key or tampered)")]
    Tampered {
        /// The token.
        token: TokenId,
        /// The key tried.
        key: KeyId,
    },
    /// The opened seed is not a valid secret.
    #[error("the seed of token {token} is not a valid secret")]
    BadSeed {
        /// The token.
        token: TokenId,
    },
    /// The operating system random generator failed.
    #[error("no randomness available for a nonce")]
    Random,
    /// A keyring file line is not `current HEX`, `open HEX` or a bare key, or the file does
    /// not name exactly one current key. Never quotes the line (it may hold a key).
    #[error("keyring file, line {line}: {reason}")]
    BadKeyring {
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A keyring file has no key with this id.
    #[error("the keyring file has no key {key}")]
    MissingKey {
        /// The key asked for.
        key: KeyId,
    },
    /// A key could not be used at all (for example a hardware module that does not answer).
    #[error("key {key} is unavailable: {reason}")]
    KeyUnavailable {
        /// The key.
        key: KeyId,
        /// Why, without key material.
        reason: String,
    },
}

/// Why a [`SealingKey`] did not seal or open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFailure {
    /// Authentication failed: the data was not sealed by this key for this token, or was
    /// altered.
    Rejected,
    /// The key could not be used (device gone, session closed...); nothing was decided.
    Unavailable(String),
}

/// A key that seals and opens seeds under its id: AES-256-GCM with a 96-bit nonce and the
/// token id as associated data. [`Kek`] (bytes in memory, read from a file) implements it; a
/// key held in a hardware security module can too, so that a [`Keyring`](crate::Keyring) rotates between
/// kinds of keys without the stores or the verifier knowing.
pub trait SealingKey: Send + Sync + fmt::Debug {
    /// The key's name, stored beside every seal it makes.
    fn id(&self) -> &KeyId;

    /// Encrypts `plain` with `nonce` and associated data `aad`; returns ciphertext and tag.
    ///
    /// # Errors
    /// [`KeyFailure::Unavailable`] if the key cannot be used.
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, KeyFailure>;

    /// Decrypts and authenticates what [`SealingKey::seal`] made.
    ///
    /// # Errors
    /// [`KeyFailure::Rejected`] if authentication fails; [`KeyFailure::Unavailable`].
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyFailure>;

    /// Whether the key can be used now (a hardware module answers); keys in memory always can.
    ///
    /// # Errors
    /// [`KeyFailure::Unavailable`].
    fn check(&self) -> Result<(), KeyFailure> {
        Ok(())
    }
}

/// A key a keyring names but cannot use in this process (for example a key in a hardware
/// module when no module was configured): every use answers [`KeyFailure::Unavailable`]
/// with the reason, so a server says "unavailable" rather than "tampered".
#[derive(Debug, Clone)]
pub struct UnusableKey {
    id: KeyId,
    reason: String,
}

impl UnusableKey {
    /// A key named `id` that cannot be used, because of `reason` (no key material in it).
    pub fn new(id: KeyId, reason: String) -> Self {
        UnusableKey { id, reason }
    }
}

impl SealingKey for UnusableKey {
    fn id(&self) -> &KeyId {
        &self.id
    }

    fn seal(&self, _: &[u8; NONCE_LEN], _: &[u8], _: &[u8]) -> Result<Vec<u8>, KeyFailure> {
        Err(KeyFailure::Unavailable(self.reason.clone()))
    }

    fn open(
        &self,
        _: &[u8; NONCE_LEN],
        _: &[u8],
        _: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyFailure> {
        Err(KeyFailure::Unavailable(self.reason.clone()))
    }

    fn check(&self) -> Result<(), KeyFailure> {
        Err(KeyFailure::Unavailable(self.reason.clone()))
    }
}

/// A key-encryption key: 256 bits, zeroized on drop, never printed.
pub struct Kek {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({}, [redacted])", self.id)
    }
}

impl Kek {
    /// A KEK from its 32 bytes, named `id`.
    pub fn from_bytes(id: KeyId, mut bytes: [u8; 32]) -> Self {
        let cipher = Aes256Gcm::new(&bytes.into());
        bytes.zeroize();
        Kek { id, cipher }
    }

    /// A KEK from its 32 bytes, named by its fingerprint (see [`Kek::fingerprint`]).
    pub fn from_key(bytes: [u8; 32]) -> Self {
        let id = Self::fingerprint(&bytes);
        Self::from_bytes(id, bytes)
    }

    /// The name a key gets when none is given: `kek-` and 16 hex digits of SHA-256 over a
    /// fixed label and the key. The same key always gets the same name, so a keyring built
    /// from files finds the key that sealed a seed without anyone naming keys; the digest
    /// reveals nothing usable about the key.
    pub fn fingerprint(bytes: &[u8; 32]) -> KeyId {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"codereader key-encryption key id\0");
        h.update(bytes);
        let digest = h.finalize();
        let hex = data_encoding::HEXLOWER.encode(&digest[..8]);
        // 20 printable ASCII characters: always a valid id.
        KeyId::new(format!("kek-{hex}")).unwrap_or_else(|_| unreachable!())
    }

    /// A fresh random KEK.
    ///
    /// # Errors
    /// [`SealError::Random`] if the system has no randomness.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|_| SealError::Random)?;
        Ok(Self::from_key(*bytes))
    }

    /// The key's name.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl SealingKey for Kek {
    fn id(&self) -> &KeyId {
        &self.id
    }

    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, KeyFailure> {
        self.cipher
            .encrypt(&Nonce::from(*nonce), Payload { msg: plain, aad })
            // AES-GCM fails only for inputs of gigabytes.
            .map_err(|_| KeyFailure::Unavailable("the seed is too large to seal".to_owned()))
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyFailure> {
        self.cipher
            .decrypt(&Nonce::from(*nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| KeyFailure::Rejected)
    }
}

/// A seed as stored: which KEK sealed it, the nonce, and ciphertext with tag.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSeed {
    /// The KEK that sealed it.
    pub key_id: KeyId,
    /// The AES-GCM nonce (random, never reused under one key in practice).
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedSeed(key {}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}
