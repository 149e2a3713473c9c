//! The server's PKCS#11 settings and the hardware-module keys it has opened.
//!
//! A keyring may name keys inside a PKCS#11 module (`--kek pkcs11:...`, or a keyring file
//! line `current hsm-ID pkcs11:...` that `token rotate-kek --new-kek` writes). The module
//! path and PIN are options or environment variables, never part of the URI on a command
//! line: `--pkcs11-module` / `CODEREADER_PKCS11_MODULE`, and `--pkcs11-pin-file` /
//! `CODEREADER_PKCS11_PIN_FILE` or `CODEREADER_PKCS11_PIN`.
//!
//! [`HsmKeys`] keeps every key it opened, by URI, so that a keyring re-read after a rotation
//! (once a second at most, and on SIGHUP) reuses the same sessions instead of logging in
//! again: a module is initialised once per process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Args;
use codereader_verifier::pkcs11::{
    HsmError, HsmKey, MODULE_ENV, PIN_FILE_ENV, PinSource, Pkcs11Config, Pkcs11Uri,
};
use codereader_verifier::{KeyId, SealingKey};

/// Where the PKCS#11 module and its PIN are (only needed when a key is in a module).
#[derive(Args, Debug, Clone, Default)]
pub struct HsmArgs {
    /// The PKCS#11 module (shared library) holding `pkcs11:` keys, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so to try it, or the HSM vendor's module.
    #[arg(long, value_name = "FILE", env = MODULE_ENV)]
    pub pkcs11_module: Option<PathBuf>,
    /// A file holding the PKCS#11 user PIN, read at every login (or the PIN itself in
    /// CODEREADER_PKCS11_PIN; never on the command line).
    #[arg(long, value_name = "FILE", env = PIN_FILE_ENV)]
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl HsmArgs {
    /// The settings: these options, else the environment.
    pub fn config(&self) -> Pkcs11Config {
        let env = Pkcs11Config::from_env();
        Pkcs11Config {
            module: self.pkcs11_module.clone().or(env.module),
            pin: self
                .pkcs11_pin_file
                .clone()
                .map(PinSource::File)
                .or(env.pin),
        }
    }
}

/// The keys of PKCS#11 modules this process opened, by URI.
#[derive(Debug)]
pub struct HsmKeys {
    config: Pkcs11Config,
    keys: Mutex<HashMap<String, HsmKey>>,
}

impl HsmKeys {
    /// Keys to be opened with `config`.
    pub fn new(config: Pkcs11Config) -> Self {
        HsmKeys {
            config,
            keys: Mutex::default(),
        }
    }

    /// The key `uri` names, opened once; created (sensitive, non-extractable AES-256) if the
    /// token has none and `create` is set.
    ///
    /// # Errors
    /// [`HsmError`]: a bad URI, no module or PIN, a wrong PIN, no such token or key...
    pub fn open(&self, uri: &str, create: bool) -> Result<HsmKey, HsmError> {
        let parsed = Pkcs11Uri::parse(uri)?;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = keys.get(uri) {
            return Ok(key.clone());
        }
        let key = HsmKey::open(&self.config, &parsed, create)?;
        keys.insert(uri.to_owned(), key.clone());
        Ok(key)
    }

    /// Whether any key was opened in a module.
    pub fn in_use(&self) -> bool {
        !self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Opens the keys a keyring file names (never creating one: the file says it exists).
    pub fn open_named(&self, _id: &KeyId, uri: &str) -> Result<Arc<dyn SealingKey>, String> {
        self.open(uri, false)
            .map(|key| Arc::new(key) as Arc<dyn SealingKey>)
            .map_err(|e| e.to_string())
    }
}

impl Default for HsmKeys {
    fn default() -> Self {
        HsmKeys::new(Pkcs11Config {
            module: None,
            pin: None,
        })
    }
}

/// A `pkcs11:` URI without its query (`?module-path=...&pin-source=...`), for messages: a
/// query might hold a `pin-value`, which is refused but must not be echoed either.
pub fn without_query(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}
