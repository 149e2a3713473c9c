//! The state directory, the default paths inside it, and creating files atomically.
//!
//! With no options, every command finds its SQLite database, key-encryption key (KEK) and
//! API-key file in one directory: `$CODEREADER_STATE`, else `$XDG_STATE_HOME/codereader`,
//! else `~/.local/state/codereader`. A missing KEK file is created by the verifier library
//! (`KeyringFile::load_or_create`, mode 0600) and the command says where, so `serve` works on a
//! fresh machine.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// File name of the default SQLite database in the state directory.
pub const DEFAULT_DB_FILE: &str = "verifier.sqlite";
/// File name of the default key-encryption key in the state directory.
pub const DEFAULT_KEK_FILE: &str = "kek";
/// File name of the default API-key file in the state directory.
pub const DEFAULT_API_KEYS_FILE: &str = "api-keys";

/// The state directory (not created here).
///
/// # Errors
/// When none of `CODEREADER_STATE`, `XDG_STATE_HOME` or `HOME` is set.
pub fn state_dir() -> Result<PathBuf> {
    match codereader_atomicfile::state_dir(None) {
        Some(dir) => Ok(dir),
        None => bail!("no state directory: set CODEREADER_STATE (or HOME)"),
    }
}

/// Creates the state directory (mode 0700) if needed and returns it.
///
/// # Errors
/// When it cannot be created.
pub fn ensure_state_dir() -> Result<PathBuf> {
    let dir = state_dir()?;
    create_private_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` and its parents; the last component gets mode 0700 when created.
///
/// # Errors
/// When it cannot be created.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Writes `contents` to `path` atomically and durably with `codereader-atomicfile`: a
/// temporary file in the same directory (mode 0600), fsync, rename over `path`, fsync of the
/// directory. Readers see the old file or the new one, never a torn one, even after a crash.
///
/// # Errors
/// Any I/O failure, naming the step and the path.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(codereader_atomicfile::write(path, contents)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        create_private_dir(path.parent().unwrap()).unwrap();
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/file"), b"x").is_err());
    }
}
