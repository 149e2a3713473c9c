//! Opening the store and its key-encryption keys from the `--db`, `--kek-file`, `--kek`
//! flags every store command shares (state-directory defaults; a missing key file created,
//! saying so).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use codereader_verifier::{KeyId, KeyringFile, StoreAddress};
use codereader_verifier_server::hsm::HsmKeys;
use codereader_verifier_server::key_source::KeyFiles;
use codereader_verifier_server::service::library::{Library, LibraryConfig};
use codereader_verifier_server::state_dir;

use super::args::StoreArgs;

fn kek_path(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(state_dir::ensure_state_dir()?.join(state_dir::DEFAULT_KEK_FILE)),
    }
}

/// Reads the keyring file at `path` (created with a new key if missing, saying so); returns
/// the id of its current key.
pub(crate) fn load_kek(path: &Path) -> Result<KeyId> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        state_dir::create_private_dir(parent)?;
    }
    let (file, created) = KeyringFile::load_or_create(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    if created {
        eprintln!(
            "codereader-verifier: created a new key-encryption key ({}) in {} (mode 0600). \
             Back it up: the stored seeds cannot be opened without it.",
            file.current_id(),
            path.display()
        );
    }
    Ok(file.current_id().clone())
}

pub(crate) fn db_spec(arg: Option<&str>) -> Result<StoreAddress> {
    match arg {
        Some(text) => text
            .parse()
            .with_context(|| format!("unknown database '{text}'")),
        None => Ok(StoreAddress::Sqlite(
            state_dir::ensure_state_dir()?.join(state_dir::DEFAULT_DB_FILE),
        )),
    }
}

pub(crate) fn open_library(store: &StoreArgs, config: LibraryConfig) -> Result<Library> {
    Library::open_with_key_files(&db_spec(store.db.as_deref())?, &key_files(store)?, config)
}

/// The keyring's files (the `--kek-file` one created if missing, saying so), or the
/// `--kek pkcs11:` key.
pub(crate) fn key_files(store: &StoreArgs) -> Result<KeyFiles> {
    let hsm = Arc::new(HsmKeys::new(store.hsm.config()));
    if let Some(uri) = &store.kek {
        if !uri.starts_with("pkcs11:") {
            bail!("--kek takes a pkcs11: URI; a key file is --kek-file");
        }
        return Ok(KeyFiles {
            kek_file: PathBuf::new(),
            old: store.old_kek_file.clone(),
            kek_uri: Some(uri.clone()),
            hsm,
        });
    }
    let kek_file = kek_path(store.kek_file.as_deref())?;
    load_kek(&kek_file)?;
    Ok(KeyFiles {
        kek_file,
        old: store.old_kek_file.clone(),
        kek_uri: None,
        hsm,
    })
}

/// Commands that change the keyring file refuse `--kek pkcs11:` (there is no file to change).
pub(crate) fn keyring_file_needed(store: &StoreArgs, command: &str) -> Result<()> {
    if store.kek.is_some() {
        bail!(
            "`token {command}` changes the keyring file, and --kek names no file: use \
             --kek-file with a keyring whose current line names the module key (`token \
             rotate-kek --new-kek pkcs11:...` writes it)"
        );
    }
    Ok(())
}
