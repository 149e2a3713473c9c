//! The keyring file: every key-encryption key a server needs, in the one file its
//! `--kek-file` names, so that a rotation changes that file and a restart with the same
//! command line keeps working.
//!
//! This is the keyring on disk; [`KeyringFile::keyring`] (or [`KeyringFile::keyring_with`],
//! for keys in a hardware module) turns it into the [`Keyring`] a verifier seals and opens
//! with in memory.
//!
//! Format, one key a line (`#` comments and blank lines ignored):
//!
//! ```text
//! current 0123...cdef   # seals new seeds, opens its own
//! open    89ab...4567   # only opens: an older key, or a newer one being staged
//! ```
//!
//! A file of one bare key (64 hex digits, or 32 raw bytes) is a keyring whose only key is
//! current: the format every earlier version wrote. Keys are named by their fingerprint
//! ([`Kek::fingerprint`]), never by a name in the file, so two copies of a file always agree
//! on which key sealed what.
//!
//! A key inside a hardware security module is a line naming its id and its RFC 7512 URI
//! (the module path and PIN come from the server's options, never from this file):
//!
//! ```text
//! current hsm-0123456789abcdef pkcs11:token=codereader;object=kek
//! ```
//!
//! Staging a key as `open` on every server before making it `current` anywhere is what lets
//! several servers rotate without a moment where one seals under a key another lacks.

use std::path::Path;

use zeroize::Zeroizing;

use std::sync::Arc;

use crate::keyring::Keyring;
use crate::seal::{Kek, SealError, SealingKey, UnusableKey};
use crate::token::KeyId;

/// What a key of the file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRole {
    /// Seals new seeds (exactly one per file) and opens.
    Current,
    /// Only opens.
    Open,
}

impl KeyRole {
    /// Its word in the file.
    pub fn name(self) -> &'static str {
        match self {
            KeyRole::Current => "current",
            KeyRole::Open => "open",
        }
    }
}

struct Entry {
    role: KeyRole,
    id: KeyId,
    key: Material,
}

/// Where a key is.
enum Material {
    /// In the file.
    Bytes(Zeroizing<[u8; 32]>),
    /// In a hardware module, named by a `pkcs11:` URI (no secret in it).
    Hsm(String),
}

impl Material {
    fn kek(&self) -> Option<Kek> {
        match self {
            Material::Bytes(bytes) => Some(Kek::from_key(**bytes)),
            Material::Hsm(_) => None,
        }
    }
}

/// Opens a key of a hardware module named by its id and URI (the server's PKCS#11 settings);
/// `Err` says why not, without secrets.
pub type HsmOpener<'a> = dyn Fn(&KeyId, &str) -> Result<Arc<dyn SealingKey>, String> + 'a;

/// A keyring file's keys, in memory (zeroized on drop, never printed).
pub struct KeyringFile {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for KeyringFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{} {}", e.role.name(), e.id))
            .collect();
        write!(f, "KeyringFile({ids:?})")
    }
}

fn random_key() -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|_| SealError::Random)?;
    Ok(bytes)
}

fn unreadable(e: std::io::Error) -> SealError {
    SealError::Unreadable {
        reason: e.to_string(),
    }
}

fn decode_hex(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    if text.len() != 64 {
        return None;
    }
    let decoded = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .ok()?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&decoded);
    Some(key)
}

impl KeyringFile {
    /// A keyring of one fresh random current key.
    ///
    /// # Errors
    /// [`SealError::Random`].
    pub fn generate() -> Result<Self, SealError> {
        let mut file = KeyringFile {
            entries: Vec::new(),
        };
        file.push(KeyRole::Current, random_key()?);
        Ok(file)
    }

    fn push(&mut self, role: KeyRole, key: Zeroizing<[u8; 32]>) -> KeyId {
        let id = Kek::fingerprint(&key);
        self.push_entry(role, id, Material::Bytes(key))
    }

    fn push_entry(&mut self, role: KeyRole, id: KeyId, key: Material) -> KeyId {
        if let Some(existing) = self.entries.iter_mut().find(|e| e.id == id) {
            if role == KeyRole::Current {
                existing.role = role;
            }
        } else {
            self.entries.push(Entry {
                role,
                id: id.clone(),
                key,
            });
        }
        id
    }

    /// Parses a keyring file's content.
    ///
    /// # Errors
    /// [`SealError::BadKeyFormat`] for a file that is neither text nor 32 raw bytes;
    /// [`SealError::BadKeyring`] naming the first bad line, or line 0 when the file does not
    /// name exactly one current key.
    pub fn parse(content: &[u8]) -> Result<Self, SealError> {
        let mut file = KeyringFile {
            entries: Vec::new(),
        };
        if content.len() == 32 {
            let mut key = Zeroizing::new([0u8; 32]);
            key.copy_from_slice(content);
            file.push(KeyRole::Current, key);
            return Ok(file);
        }
        let text = std::str::from_utf8(content).map_err(|_| SealError::BadKeyFormat)?;
        let mut currents = 0;
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason| SealError::BadKeyring {
                line: index + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (role, hex) = match (fields.next(), fields.next(), fields.next()) {
                (Some(hex), None, None) => (KeyRole::Current, hex),
                (Some("current"), Some(hex), None) => (KeyRole::Current, hex),
                (Some("open"), Some(hex), None) => (KeyRole::Open, hex),
                (Some(role @ ("current" | "open")), Some(id), Some(uri))
                    if uri.starts_with("pkcs11:") && fields.next().is_none() =>
                {
                    let role = if role == "current" {
                        KeyRole::Current
                    } else {
                        KeyRole::Open
                    };
                    let id = KeyId::new(id).map_err(|_| bad("not a key id before the URI"))?;
                    if role == KeyRole::Current {
                        currents += 1;
                        if currents > 1 {
                            return Err(bad("a second current key; exactly one key seals"));
                        }
                    }
                    file.push_entry(role, id, Material::Hsm(uri.to_owned()));
                    continue;
                }
                _ => return Err(bad("expected `current HEX`, `open HEX` or a bare key")),
            };
            let key = decode_hex(hex).ok_or_else(|| {
                if line.contains(char::is_whitespace) {
                    bad("a key is 64 hex digits")
                } else {
                    // A file of one bad bare key: the message of the one-key format.
                    SealError::BadKeyFormat
                }
            })?;
            if role == KeyRole::Current {
                currents += 1;
                if currents > 1 {
                    return Err(bad("a second current key; exactly one key seals"));
                }
            }
            file.push(role, key);
        }
        if currents == 0 {
            return Err(if file.entries.is_empty() {
                SealError::BadKeyFormat
            } else {
                SealError::BadKeyring {
                    line: 0,
                    reason: "no current key; mark the key that seals `current`",
                }
            });
        }
        Ok(file)
    }

    /// Reads the keyring file at `path`. On Unix it must not be readable by group or others.
    ///
    /// # Errors
    /// [`SealError::Unreadable`], [`SealError::Permissions`], or as [`KeyringFile::parse`].
    pub fn read(path: &Path) -> Result<Self, SealError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(unreadable)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(SealError::Permissions { mode: mode & 0o777 });
            }
        }
        let content = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
        Self::parse(&content)
    }

    /// Reads the keyring file at `path`, or, if there is none, creates it with one fresh
    /// random key (mode 0600, written to a temporary file, fsynced and linked into place, so
    /// a crash never leaves half a key and two processes starting at once end up with the
    /// same key). Returns the keyring and whether it was created.
    ///
    /// # Errors
    /// As [`KeyringFile::read`], plus [`SealError::Unreadable`] if the file cannot be written.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SealError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Ok((Self::read(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(e)),
        }
        let file = Self::generate()?;
        // Another process may have created the key meanwhile: keep theirs (`create_new`
        // links the new file into place, which fails if the target exists), so two servers
        // never end up with different keys.
        match codereader_atomicfile::Options::new().create_new(path, file.render().as_bytes()) {
            Ok(()) => Ok((file, true)),
            Err(e) if e.io().kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::read(path)?, false))
            }
            Err(e) => Err(not_written(&e)),
        }
    }

    /// Replaces the file at `path` with this keyring, atomically and durably (temporary file
    /// with mode 0600, fsync, rename, fsync of the directory): a reader sees the old keyring
    /// or the new one, never a torn file.
    ///
    /// # Errors
    /// [`SealError::Unreadable`] if the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), SealError> {
        codereader_atomicfile::write(path, self.render().as_bytes()).map_err(|e| not_written(&e))
    }

    /// The file's text: the current key first, then the others.
    pub fn render(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::from(
            "# codereader key-encryption keyring: `current` seals new seeds, every key opens.\n\
             # Keep it mode 0600 and backed up; the seeds cannot be opened without it.\n",
        ));
        let current = self.entries.iter().filter(|e| e.role == KeyRole::Current);
        let open = self.entries.iter().filter(|e| e.role != KeyRole::Current);
        for entry in current.chain(open) {
            text.push_str(entry.role.name());
            text.push(' ');
            match &entry.key {
                Material::Bytes(key) => {
                    text.push_str(&Zeroizing::new(
                        data_encoding::HEXLOWER.encode(key.as_ref()),
                    ));
                }
                Material::Hsm(uri) => {
                    text.push_str(entry.id.as_str());
                    text.push(' ');
                    text.push_str(uri);
                }
            }
            text.push('\n');
        }
        text
    }

    fn current(&self) -> &Entry {
        // `parse` and every change keep exactly one current entry.
        self.entries
            .iter()
            .find(|e| e.role == KeyRole::Current)
            .unwrap_or_else(|| unreachable!("a keyring file always has a current key"))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &KeyId {
        &self.current().id
    }

    /// The key that seals, when the file holds it.
    ///
    /// # Errors
    /// [`SealError::KeyUnavailable`] when the current key is in a hardware module.
    pub fn current_kek(&self) -> Result<Kek, SealError> {
        let current = self.current();
        current.key.kek().ok_or_else(|| SealError::KeyUnavailable {
            key: current.id.clone(),
            reason: "it is in a PKCS#11 module, not in the file".to_owned(),
        })
    }

    /// The URI of the key `id` if it is in a hardware module.
    pub fn hsm_uri(&self, id: &KeyId) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.id == *id)
            .and_then(|e| match &e.key {
                Material::Hsm(uri) => Some(uri.as_str()),
                Material::Bytes(_) => None,
            })
    }

    /// Adds a key of a hardware module that only opens (make it current with
    /// [`KeyringFile::promote`]).
    pub fn add_hsm(&mut self, id: KeyId, uri: &str) -> KeyId {
        self.push_entry(KeyRole::Open, id, Material::Hsm(uri.to_owned()))
    }

    /// The keyring to seal and open with, opening the keys of hardware modules with `hsm`.
    ///
    /// # Errors
    /// [`SealError::KeyUnavailable`] naming the first module key that did not open.
    pub fn keyring_with(&self, hsm: &HsmOpener<'_>) -> Result<Keyring, SealError> {
        let open = |entry: &Entry| -> Result<Arc<dyn SealingKey>, SealError> {
            match &entry.key {
                Material::Bytes(key) => Ok(Arc::new(Kek::from_key(**key))),
                Material::Hsm(uri) => {
                    let key = hsm(&entry.id, uri).map_err(|reason| SealError::KeyUnavailable {
                        key: entry.id.clone(),
                        reason,
                    })?;
                    if key.id() != &entry.id {
                        return Err(SealError::KeyUnavailable {
                            key: entry.id.clone(),
                            reason: format!("the module holds key {} under {uri}", key.id()),
                        });
                    }
                    Ok(key)
                }
            }
        };
        let current = open(self.current())?;
        let older = self
            .entries
            .iter()
            .filter(|e| e.role != KeyRole::Current)
            .map(open)
            .collect::<Result<_, _>>()?;
        Ok(Keyring::from_shared(current, older))
    }

    /// Every key's id and role, the current one first.
    pub fn keys(&self) -> Vec<(KeyId, KeyRole)> {
        let mut keys: Vec<(KeyId, KeyRole)> = self
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.role))
            .collect();
        keys.sort_by_key(|(_, role)| *role != KeyRole::Current);
        keys
    }

    /// The keyring to seal and open with. Keys in a hardware module are there but unusable
    /// (see [`KeyringFile::keyring_with`]).
    pub fn keyring(&self) -> Keyring {
        let unusable = |id: &KeyId, uri: &str| -> Result<Arc<dyn SealingKey>, String> {
            Ok(Arc::new(UnusableKey::new(
                id.clone(),
                format!("{uri} is a PKCS#11 key and no module was configured"),
            )))
        };
        self.keyring_with(&unusable)
            .unwrap_or_else(|_| unreachable!("the opener never fails"))
    }

    /// Adds a fresh random key that only opens (staged, to be made current later with
    /// [`KeyringFile::promote`]); returns its id.
    ///
    /// # Errors
    /// [`SealError::Random`].
    pub fn stage_new(&mut self) -> Result<KeyId, SealError> {
        Ok(self.push(KeyRole::Open, random_key()?))
    }

    /// Adds the keys of `other` (its current one too) as keys that only open; returns the id
    /// of `other`'s current key.
    pub fn add_open(&mut self, other: &KeyringFile) -> KeyId {
        for entry in &other.entries {
            let key = match &entry.key {
                Material::Bytes(bytes) => Material::Bytes(bytes.clone()),
                Material::Hsm(uri) => Material::Hsm(uri.clone()),
            };
            self.push_entry(KeyRole::Open, entry.id.clone(), key);
        }
        other.current_id().clone()
    }

    /// Makes the key `id` current; the key that was current only opens from now on.
    ///
    /// # Errors
    /// [`SealError::MissingKey`] if the file has no such key.
    pub fn promote(&mut self, id: &KeyId) -> Result<(), SealError> {
        if !self.entries.iter().any(|e| e.id == *id) {
            return Err(SealError::MissingKey { key: id.clone() });
        }
        for entry in &mut self.entries {
            entry.role = if entry.id == *id {
                KeyRole::Current
            } else {
                KeyRole::Open
            };
        }
        Ok(())
    }

    /// Removes every key but the current one; returns the ids removed.
    pub fn retire_open(&mut self) -> Vec<KeyId> {
        let removed = self
            .entries
            .iter()
            .filter(|e| e.role != KeyRole::Current)
            .map(|e| e.id.clone())
            .collect();
        self.entries.retain(|e| e.role == KeyRole::Current);
        removed
    }
}

/// A failed atomic write as [`SealError::Unreadable`]: the step, the path and the I/O error.
fn not_written(e: &codereader_atomicfile::Error) -> SealError {
    SealError::Unreadable {
        reason: format!("{e}: {}", e.io()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenId;
    use codereader_otp::{KeyPolicy, Secret};

    fn hex(byte: u8) -> String {
        data_encoding::HEXLOWER.encode(&[byte; 32])
    }

    #[test]
    fn formats_old_and_new() {
        let bare = KeyringFile::parse(format!("{}\n", hex(1)).as_bytes()).unwrap();
        assert_eq!(bare.current_id(), &Kek::fingerprint(&[1; 32]));
        let raw = KeyringFile::parse(&[2; 32]).unwrap();
        assert_eq!(raw.current_id(), &Kek::fingerprint(&[2; 32]));
        let text = format!(
            "# c\n\nopen {}\ncurrent {}  # the new one\n",
            hex(1),
            hex(2)
        );
        let file = KeyringFile::parse(text.as_bytes()).unwrap();
        assert_eq!(file.current_id(), &Kek::fingerprint(&[2; 32]));
        assert_eq!(file.keys().len(), 2);
        // Rendering and parsing again gives the same keyring.
        let again = KeyringFile::parse(file.render().as_bytes()).unwrap();
        assert_eq!(again.keys(), file.keys());
        assert!(!format!("{file:?}").contains(&hex(2)));
    }

    #[test]
    fn bad_files_name_the_line_and_never_echo_a_key() {
        let check = |text: String, line: usize| {
            let err = KeyringFile::parse(text.as_bytes()).unwrap_err();
            assert!(
                matches!(err, SealError::BadKeyring { line: l, .. } if l == line),
                "{err:?}"
            );
            assert!(!err.to_string().contains(&hex(7)[..20]), "{err}");
        };
        check(format!("current {}\ncurrent {}\n", hex(7), hex(8)), 2);
        check(format!("open {}\n", hex(7)), 0);
        check(format!("seal {}\n", hex(7)), 1);
        check(format!("current {}ab\n", hex(7)), 1);
        assert_eq!(
            KeyringFile::parse(b"short\n").unwrap_err(),
            SealError::BadKeyFormat
        );
        check(format!("current {} extra\n", hex(7)), 1);
        assert_eq!(
            KeyringFile::parse(b"# nothing\n").unwrap_err(),
            SealError::BadKeyFormat
        );
    }

    #[test]
    fn names_keys_of_a_hardware_module_without_opening_them() {
        let text = format!(
            "current hsm-0123456789abcdef pkcs11:token=cr;object=kek\nopen {}\n",
            hex(1)
        );
        let file = KeyringFile::parse(text.as_bytes()).unwrap();
        let hsm = KeyId::new("hsm-0123456789abcdef").unwrap();
        assert_eq!(file.current_id(), &hsm);
        assert_eq!(file.hsm_uri(&hsm), Some("pkcs11:token=cr;object=kek"));
        assert_eq!(file.hsm_uri(&Kek::fingerprint(&[1; 32])), None);
        let again = KeyringFile::parse(file.render().as_bytes()).unwrap();
        assert_eq!(again.keys(), file.keys());
        assert!(matches!(
            file.current_kek(),
            Err(SealError::KeyUnavailable { key, .. }) if key == hsm
        ));
        // Without a module the key is named but unusable: "unavailable", never "tampered".
        let ring = file.keyring();
        assert!(ring.contains(&hsm));
        let t = TokenId::new("T").unwrap();
        let secret = Secret::new(vec![3; 20], KeyPolicy::Rfc4226).unwrap();
        assert!(matches!(
            ring.seal(&t, &secret),
            Err(SealError::KeyUnavailable { .. })
        ));
        assert!(ring.check_current().is_err());
        // A module that holds another key than the file names is refused.
        let other: &HsmOpener<'_> =
            &|_, _| Ok(Arc::new(Kek::from_key([5; 32])) as Arc<dyn SealingKey>);
        assert!(matches!(
            file.keyring_with(other),
            Err(SealError::KeyUnavailable { reason, .. }) if reason.contains("holds key kek-")
        ));
        let bad = KeyringFile::parse(b"current not/an id pkcs11:token=t;object=k\n");
        assert!(
            matches!(bad, Err(SealError::BadKeyring { line: 1, .. })),
            "{bad:?}"
        );
    }

    #[test]
    fn stage_promote_retire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let (mut file, created) = KeyringFile::load_or_create(&path).unwrap();
        assert!(created);
        let first = file.current_id().clone();
        let t = TokenId::new("T").unwrap();
        let secret = Secret::new(vec![3; 20], KeyPolicy::Rfc4226).unwrap();
        let sealed = file.keyring().seal(&t, &secret).unwrap();

        let staged = file.stage_new().unwrap();
        assert_eq!(file.current_id(), &first);
        file.write(&path).unwrap();
        let read = KeyringFile::read(&path).unwrap();
        assert_eq!(read.current_id(), &first);
        assert!(read.keyring().contains(&staged));

        file.promote(&staged).unwrap();
        file.write(&path).unwrap();
        let read = KeyringFile::read(&path).unwrap();
        assert_eq!(read.current_id(), &staged);
        // The old key still opens what it sealed.
        assert_eq!(read.keyring().open(&t, &sealed).unwrap(), secret);
        let missing = KeyId::new("kek-none").unwrap();
        assert_eq!(
            file.promote(&missing).unwrap_err(),
            SealError::MissingKey { key: missing }
        );

        assert_eq!(file.retire_open(), vec![first]);
        file.write(&path).unwrap();
        assert_eq!(KeyringFile::read(&path).unwrap().keys().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the key file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The current key of the keyring file at `path`.
    fn read_kek(path: &Path) -> Result<Kek, SealError> {
        KeyringFile::read(path)?.current_kek()
    }

    #[test]
    fn a_file_of_one_key_in_hex_or_too_short() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", "ab".repeat(32)).unwrap();
        drop(f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(
                read_kek(&path).unwrap_err(),
                SealError::Permissions { mode: 0o644 }
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let from_hex = read_kek(&path).unwrap();
        assert_eq!(from_hex.id(), &Kek::fingerprint(&[0xab; 32]));
        assert!(from_hex.id().as_str().starts_with("kek-"));
        let ring = Keyring::new(from_hex);
        let same = Keyring::new(Kek::from_key([0xab; 32]));
        let t = TokenId::new("T").unwrap();
        let secret = Secret::new(vec![5; 20], KeyPolicy::Rfc4226).unwrap();
        assert_eq!(
            same.open(&t, &ring.seal(&t, &secret).unwrap()).unwrap(),
            secret
        );
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(read_kek(&path).unwrap_err(), SealError::BadKeyFormat);
    }

    #[test]
    fn load_or_create_makes_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let (a, created) = KeyringFile::load_or_create(&path).unwrap();
        let a = a.current_kek().unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, created) = KeyringFile::load_or_create(&path).unwrap();
        let b = b.current_kek().unwrap();
        assert!(!created);
        assert_eq!(a.id(), b.id());
        let t = TokenId::new("T").unwrap();
        let secret = Secret::new(vec![9; 20], KeyPolicy::Rfc4226).unwrap();
        let sealed = Keyring::new(a).seal(&t, &secret).unwrap();
        assert_eq!(Keyring::new(b).open(&t, &sealed).unwrap(), secret);
        // Only the key file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
