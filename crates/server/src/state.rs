//! The state directory, the default paths inside it, and creating files atomically.
//!
//! With no options, every command finds its SQLite database, key-encryption key (KEK) and
//! API-key file in one directory: `$CODEREADER_STATE`, else `$XDG_STATE_HOME/codereader`,
//! else `~/.local/state/codereader`. A missing KEK file is created with a fresh random key
//! (mode 0600) and the command says where, so `serve` works on a fresh machine.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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
    if let Some(dir) = std::env::var_os("CODEREADER_STATE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("codereader"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/state/codereader"));
    }
    bail!("no state directory: set CODEREADER_STATE (or HOME)")
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

/// Writes `contents` to `path` atomically and durably: a temporary file in the same
/// directory (mode 0600), fsync, rename over `path`, fsync of the directory. Readers see the
/// old file or the new one, never a torn one, even after a crash.
///
/// # Errors
/// Any I/O failure, with the path in the message.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        data_encoding::HEXLOWER.encode(&random)
    ));
    let result = (|| -> Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A key-encryption key read from (or freshly written to) its file.
pub struct KekFile {
    /// Where it lives.
    pub path: PathBuf,
    /// The 32 key bytes, wiped on drop.
    pub bytes: Zeroizing<[u8; 32]>,
    /// Its name: `kek-` and the first 16 hex digits of SHA-256 over the key. Stored beside
    /// every seal, so seeds say which key opens them; a fingerprint reveals nothing useful
    /// about a 256-bit random key.
    pub id: String,
    /// Whether this call created the file.
    pub created: bool,
}

impl std::fmt::Debug for KekFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KekFile({}, {}, [redacted])",
            self.path.display(),
            self.id
        )
    }
}

/// The name of a key: `kek-` and 16 hex digits of its SHA-256.
pub fn kek_id(key: &[u8; 32]) -> String {
    let digest = Sha256::digest(key);
    format!("kek-{}", data_encoding::HEXLOWER.encode(&digest[..8]))
}

/// Reads the KEK at `path`, creating it with a fresh random key (mode 0600) if it does not
/// exist. Accepts 32 raw bytes or 64 hex digits; refuses a file readable by group or others.
///
/// # Errors
/// When the file cannot be read or written, has the wrong format or permissions.
pub fn load_or_create_kek(path: &Path) -> Result<KekFile> {
    let mut created = false;
    if !path.exists() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent)?;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut text = Zeroizing::new(data_encoding::HEXLOWER.encode(key.as_ref()));
        text.push('\n');
        write_atomic(path, text.as_bytes())?;
        created = true;
    }
    let bytes = read_kek(path)?;
    let id = kek_id(&bytes);
    Ok(KekFile {
        path: path.to_path_buf(),
        bytes,
        id,
        created,
    })
}

/// Reads an existing KEK file (see [`load_or_create_kek`] for the format).
///
/// # Errors
/// When the file cannot be read, has the wrong format or is readable by others.
pub fn read_kek(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "key file {} has mode {:o}; it must not be readable by group or others (chmod 600)",
                path.display(),
                mode & 0o777
            );
        }
    }
    let content = Zeroizing::new(
        fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if content.len() == 32 {
        key.copy_from_slice(&content);
        return Ok(key);
    }
    let bad = || anyhow::anyhow!("key file {} must hold 64 hex digits", path.display());
    let text = std::str::from_utf8(&content).map_err(|_| bad())?.trim();
    if text.len() != 64 {
        return Err(bad());
    }
    let decoded = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map_err(|_| bad())?,
    );
    key.copy_from_slice(&decoded);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kek");
        let first = load_or_create_kek(&path).unwrap();
        assert!(first.created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create_kek(&path).unwrap();
        assert!(!again.created);
        assert_eq!(*first.bytes, *again.bytes);
        assert_eq!(first.id, again.id);
        assert!(!format!("{first:?}").contains(&data_encoding::HEXLOWER.encode(&*first.bytes)));
    }

    #[test]
    fn bad_kek_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        write_atomic(&path, b"not hex").unwrap();
        assert!(read_kek(&path).unwrap_err().to_string().contains("64 hex"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            write_atomic(&path, &[7u8; 32]).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                read_kek(&path)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
    }
}
