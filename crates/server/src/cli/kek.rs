//! `token rotate-kek` and `token prune-kek`: changing the keyring file and re-encrypting
//! the seeds under its current key; apart from the other token commands because they change
//! the keyring file, not only the store.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use codereader_verifier::{Caller, KeyId, KeyringFile, SealingKey};
use codereader_verifier_server::hsm::without_query;
use codereader_verifier_server::service::library::{Library, LibraryConfig};

use super::args::StoreArgs;
use super::store::{db_spec, key_files, keyring_file_needed, load_kek};

/// Where `token rotate-kek` takes the new key from.
pub(crate) enum NewKey {
    /// A key file (created if missing).
    File(PathBuf),
    /// A key in a PKCS#11 module (created if missing).
    Hsm(String),
}

/// `token rotate-kek`: changes the keyring file first (so that whatever happens next, the
/// file names a key for every seal), then re-encrypts.
pub(crate) fn rotate_kek(
    out: &mut impl Write,
    store: &StoreArgs,
    new_key: Option<&NewKey>,
    stage: bool,
    use_key: Option<&str>,
    caller: &Caller,
) -> Result<()> {
    keyring_file_needed(store, "rotate-kek")?;
    let files = key_files(store)?;
    let path = &files.kek_file;
    let mut keyring = KeyringFile::read(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    if stage {
        let id = match new_key {
            // A module key is staged like a file key: named as `open` in the file, so every
            // server can open its seals before any server seals with it.
            Some(NewKey::Hsm(uri)) => {
                let key = files
                    .hsm
                    .open(uri, true)
                    .with_context(|| format!("key-encryption key {}", without_query(uri)))?;
                keyring.add_hsm(SealingKey::id(&key).clone(), uri)
            }
            _ => keyring.stage_new()?,
        };
        keyring.write(path)?;
        writeln!(
            out,
            "staged key {id} in {} (opens, does not seal yet). Copy the file to every server \
             and send them SIGHUP; then run `token rotate-kek --use {id}`.",
            path.display()
        )?;
        return Ok(());
    }
    let new_id = match (use_key, new_key) {
        (Some(id), _) => {
            let id = KeyId::new(id).context("--use needs a key id")?;
            keyring.promote(&id)?;
            id
        }
        (None, Some(NewKey::File(file))) => {
            let new = load_kek(file)?;
            let other = KeyringFile::read(file)
                .with_context(|| format!("key-encryption key {}", file.display()))?;
            let id = keyring.add_open(&other);
            debug_assert_eq!(id, new);
            keyring.promote(&id)?;
            id
        }
        (None, Some(NewKey::Hsm(uri))) => {
            // Opened (or created) now, so that a wrong PIN or a missing token stops the
            // rotation before the keyring file changes.
            let key = files
                .hsm
                .open(uri, true)
                .with_context(|| format!("key-encryption key {}", without_query(uri)))?;
            let id = keyring.add_hsm(SealingKey::id(&key).clone(), uri);
            keyring.promote(&id)?;
            id
        }
        (None, None) => {
            let id = keyring.stage_new()?;
            keyring.promote(&id)?;
            id
        }
    };
    keyring.write(path)?;
    let library = Library::open_with_key_files(
        &db_spec(store.db.as_deref())?,
        &files,
        LibraryConfig::default(),
    )?;
    let report = library.rotate(caller)?;
    for (serial, reason) in &report.failed {
        writeln!(out, "cannot open the seed of {serial}: {reason}")?;
    }
    writeln!(
        out,
        "re-encrypted {} seed(s) under {new_id}, now the current key of {} (the older keys \
         stay in it, to open). Running servers pick it up on SIGHUP or when they meet a seed \
         sealed under it; restarts need no new options.",
        report.resealed,
        path.display(),
    )?;
    if !report.failed.is_empty() {
        bail!("{} seed(s) could not be re-encrypted", report.failed.len());
    }
    Ok(())
}

/// `token prune-kek`: drops the keys that only open, refusing while a seed is sealed under
/// one of them.
pub(crate) fn prune_kek(out: &mut impl Write, store: &StoreArgs) -> Result<()> {
    keyring_file_needed(store, "prune-kek")?;
    let files = key_files(store)?;
    let path = &files.kek_file;
    let mut keyring = KeyringFile::read(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    let library = Library::open_with_key_files(
        &db_spec(store.db.as_deref())?,
        &files,
        LibraryConfig::default(),
    )?;
    let left = library.seeds_not_under_current()?;
    if left > 0 {
        bail!(
            "{left} seed(s) are still sealed under older keys; run \
             `token rotate-kek --use {}` first",
            keyring.current_id()
        );
    }
    let removed = keyring.retire_open();
    keyring.write(path)?;
    let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "removed {} key(s) from {}{}{}; {} is the only key. Copy the file to every server and \
         send them SIGHUP.",
        removed.len(),
        path.display(),
        if removed.is_empty() { "" } else { ": " },
        removed.join(" "),
        keyring.current_id()
    )?;
    Ok(())
}
