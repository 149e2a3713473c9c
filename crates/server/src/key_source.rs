//! The server's `KeySource`: where its key-encryption keys come from: the keyring file named by `--kek-file`
//! (see `codereader_verifier::KeyringFile`) plus any `--old-kek-file`, read at start, again
//! on SIGHUP, and again when a seed names a key the server has not loaded yet (another
//! process rotated), at most once a second so that a seed sealed under a key nobody has
//! cannot make every verification read the disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use codereader_verifier::{KeySource, Keyring, KeyringFile};

use crate::hsm::{HsmKeys, without_query};

/// The keyring's files.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The keyring file: its current key seals, all its keys open.
    pub kek_file: PathBuf,
    /// Further files whose keys only open.
    pub old: Vec<PathBuf>,
    /// A key in a PKCS#11 module that seals instead of the keyring file's (`--kek
    /// pkcs11:...`); the keyring file is then not read.
    pub kek_uri: Option<String>,
    /// The PKCS#11 keys opened so far, for keyring lines that name one.
    pub hsm: Arc<HsmKeys>,
}

impl KeyFiles {
    /// Reads every file into one keyring (the files must exist).
    ///
    /// # Errors
    /// When a file cannot be read or parsed; the message names it.
    pub fn load(&self) -> Result<Keyring> {
        if let Some(uri) = &self.kek_uri {
            let key = self
                .hsm
                .open(uri, true)
                .with_context(|| format!("key-encryption key {}", without_query(uri)))?;
            return self.with_old(Keyring::new(key));
        }
        let main = KeyringFile::read(&self.kek_file)
            .with_context(|| format!("key-encryption key {}", self.kek_file.display()))?;
        let ring = main
            .keyring_with(&|id, uri| self.hsm.open_named(id, uri))
            .with_context(|| format!("key-encryption key {}", self.kek_file.display()))?;
        self.with_old(ring)
    }

    /// Adds the keys of the `--old-kek-file`s to `ring`, as keys that only open.
    ///
    /// # Errors
    /// When a file cannot be read or parsed; the message names it.
    pub fn with_old(&self, mut ring: Keyring) -> Result<Keyring> {
        for path in &self.old {
            let file = KeyringFile::read(path)
                .with_context(|| format!("key-encryption key {}", path.display()))?;
            let keys = file
                .keyring_with(&|id, uri| self.hsm.open_named(id, uri))
                .with_context(|| format!("key-encryption key {}", path.display()))?;
            ring = ring.with_older_ring(&keys);
        }
        Ok(ring)
    }
}

/// Shortest time between two reloads caused by unknown keys.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A [`KeySource`] that re-reads [`KeyFiles`], at most once per second.
#[derive(Debug)]
pub struct FileKeySource {
    files: KeyFiles,
    last: Mutex<Option<Instant>>,
}

impl FileKeySource {
    /// A source reading `files`.
    pub fn new(files: KeyFiles) -> Self {
        FileKeySource {
            files,
            last: Mutex::new(None),
        }
    }
}

impl KeySource for FileKeySource {
    fn reload(&self) -> Option<Keyring> {
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < MIN_RELOAD_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match self.files.load() {
            Ok(ring) => {
                eprintln!(
                    "codereader-verifier: a seed named a key not loaded; re-read the keyring: {}",
                    describe(&ring)
                );
                Some(ring)
            }
            Err(e) => {
                eprintln!("codereader-verifier: cannot re-read the keyring: {e:#}");
                None
            }
        }
    }
}

/// "current kek-..., also opens kek-..., kek-...": for logs (ids only, never keys).
pub fn describe(ring: &Keyring) -> String {
    let ids = ring.ids();
    let mut text = format!("current {}", ring.current_id());
    if ids.len() > 1 {
        text.push_str(", also opens ");
        let older: Vec<String> = ids[1..].iter().map(ToString::to_string).collect();
        text.push_str(&older.join(", "));
    }
    text
}
