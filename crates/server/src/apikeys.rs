//! The API-key file: which bearer keys may call the HTTP API, and with which scope.
//!
//! A key is 256 random bits shown once when created (`crv_` and 64 hex digits). The file
//! keeps only its SHA-256: keys are high-entropy, so a plain hash cannot be brute-forced and
//! a stolen file lets nobody in. Checking a request hashes the presented key and compares it
//! with every stored hash in constant time, without stopping at the first match.
//!
//! File format, one key a line (`#` comments and blank lines ignored):
//! `SCOPE NAME SHA256-HEX [created=UNIX] [expires=UNIX]`, e.g.
//! `verify key-1f2e3d4c 9a0b... created=1764691200`. A key past its `expires` time is
//! refused like an unknown one (with its own message); `api-key revoke` removes the line.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::state_dir::write_atomic;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /v1/verify` only: what the log-on backend needs.
    Verify,
    /// Token administration (`/v1/tokens...`): enrolment, import, activation, resync,
    /// unlock, disable. Deliberately not a superset of `verify`: one key, one job.
    Admin,
}

impl Scope {
    /// Its name in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Verify => "verify",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scope {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "verify" => Ok(Scope::Verify),
            "admin" => Ok(Scope::Admin),
            other => bail!("unknown scope '{other}' (expected verify or admin)"),
        }
    }
}

/// Prefix of every key, so leaked keys are easy to recognise in logs and by secret scanners.
pub const KEY_PREFIX: &str = "crv_";

/// One stored key: its scope, a name for the audit trail, and the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// What it may do.
    pub scope: Scope,
    /// Its name, recorded as the caller in the audit trail.
    pub name: String,
    hash: [u8; 32],
    /// When it was created (Unix seconds), if the file says.
    pub created: Option<u64>,
    /// When it stops being accepted (Unix seconds), if ever.
    pub expires: Option<u64>,
    /// A client certificate (its hash is of the certificate's DER), presented in a mutual
    /// TLS handshake instead of a bearer key; never matched by a bearer key, nor the reverse.
    pub certificate: bool,
}

/// The SHA-256 of the client certificate a mutual-TLS connection presented (verified by the
/// handshake against `--client-ca`), as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate(pub [u8; 32]);

impl ClientCertificate {
    /// The certificate with this DER encoding.
    pub fn of_der(der: &[u8]) -> Self {
        ClientCertificate(hash_key(der))
    }
}

impl KeyEntry {
    /// Whether the key is past its expiry at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }
}

/// Why a presented key is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such key (or revoked).
    Unknown,
    /// The key expired.
    Expired,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEntry({}, {})", self.scope, self.name)
    }
}

/// The keys the server accepts.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// Parses the file's text.
    ///
    /// # Errors
    /// A malformed line, named by its number (the line itself is not echoed).
    pub fn parse(text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| anyhow::anyhow!("line {}: {why}", index + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [scope, name, hash, ref extra @ ..] = fields[..] else {
                return Err(bad("expected 'SCOPE NAME SHA256-HEX'"));
            };
            let (mut created, mut expires, mut certificate) = (None, None, false);
            for field in extra {
                let (slot, value) = match field.split_once('=') {
                    Some(("created", v)) => (&mut created, v),
                    Some(("expires", v)) => (&mut expires, v),
                    None if *field == "certificate" => {
                        certificate = true;
                        continue;
                    }
                    _ => {
                        return Err(bad(
                            "after the hash only created=UNIX, expires=UNIX and certificate",
                        ));
                    }
                };
                *slot = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("created= and expires= take Unix seconds"))?,
                );
            }
            // Not Scope's own message: it quotes the field, which may be a pasted key.
            let scope: Scope = scope
                .parse()
                .map_err(|_| bad("unknown scope (expected verify or admin)"))?;
            let hash = data_encoding::HEXLOWER_PERMISSIVE
                .decode(hash.as_bytes())
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| bad("the hash must be 64 hex digits"))?;
            entries.push(KeyEntry {
                scope,
                name: name.to_owned(),
                hash,
                created,
                expires,
                certificate,
            });
        }
        Ok(ApiKeys { entries })
    }

    /// Reads the file; a missing file means no keys (every `/v1` call is refused).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                Self::parse(&text).with_context(|| format!("API-key file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApiKeys::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read API-key file {}", path.display()))
            }
        }
    }

    /// The stored keys.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The entry whose key `presented` is, if any. Hashes once and compares with every entry
    /// in constant time; the time taken does not depend on which entry (if any) matched.
    pub fn find(&self, presented: &[u8]) -> Option<&KeyEntry> {
        self.find_hash(&hash_key(presented), false)
    }

    fn find_hash(&self, hash: &[u8; 32], certificate: bool) -> Option<&KeyEntry> {
        let mut found: Option<&KeyEntry> = None;
        for entry in &self.entries {
            let equal: Choice = entry.hash.ct_eq(hash);
            // Branch-free selection would need a conditional move over references; the
            // branch below only runs after the constant-time comparison of each entry, and
            // every entry is compared whatever the outcome.
            if bool::from(equal) && entry.certificate == certificate {
                found = Some(entry);
            }
        }
        found
    }

    /// The entry registered for a client certificate, if it is known and not expired at
    /// `now`, compared like [`ApiKeys::find`].
    ///
    /// # Errors
    /// [`Refusal::Unknown`] or [`Refusal::Expired`].
    pub fn check_certificate(
        &self,
        presented: &ClientCertificate,
        now: u64,
    ) -> Result<&KeyEntry, Refusal> {
        Self::valid(self.find_hash(&presented.0, true), now)
    }

    /// The entry whose key `presented` is, if it is known and not expired at `now` (Unix
    /// seconds). Compares with every entry in constant time, like [`ApiKeys::find`].
    ///
    /// # Errors
    /// [`Refusal::Unknown`] or [`Refusal::Expired`].
    pub fn check(&self, presented: &[u8], now: u64) -> Result<&KeyEntry, Refusal> {
        Self::valid(self.find(presented), now)
    }

    fn valid(found: Option<&KeyEntry>, now: u64) -> Result<&KeyEntry, Refusal> {
        match found {
            None => Err(Refusal::Unknown),
            Some(entry) if entry.expired(now) => Err(Refusal::Expired),
            Some(entry) => Ok(entry),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = String::from(
            "# codereader-verifier API keys: SCOPE NAME SHA256-HEX-OF-KEY, one a line.\n\
             # Only hashes are kept; a lost key cannot be recovered, create a new one.\n",
        );
        for entry in &self.entries {
            text.push_str(&format!(
                "{} {} {}",
                entry.scope,
                entry.name,
                data_encoding::HEXLOWER.encode(&entry.hash)
            ));
            if let Some(t) = entry.created {
                text.push_str(&format!(" created={t}"));
            }
            if let Some(t) = entry.expires {
                text.push_str(&format!(" expires={t}"));
            }
            if entry.certificate {
                text.push_str(" certificate");
            }
            text.push('\n');
        }
        text
    }
}

/// A freshly created key: the secret text (shown once) and its entry.
pub struct NewKey {
    /// `crv_` and 64 hex digits; wiped on drop.
    pub key: Zeroizing<String>,
    /// What was stored.
    pub entry: KeyEntry,
}

/// Creates a key with `scope`, appends its hash to the file at `path` (atomically, mode
/// 0600, creating the file if needed) and returns it. `name` defaults to `key-` and 8 hex
/// digits of the hash.
///
/// # Errors
/// When the file cannot be read or written, or `name` is taken or not a single word.
pub fn create_key(path: &Path, scope: Scope, name: Option<&str>) -> Result<NewKey> {
    create_key_at(path, scope, name, unix_now(), None)
}

/// The clock, for key creation and expiry checks.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Like [`create_key`], recording `now` as the creation time and an optional expiry.
///
/// # Errors
/// As [`create_key`], and when `expires` is not after `now`.
pub fn create_key_at(
    path: &Path,
    scope: Scope,
    name: Option<&str>,
    now: u64,
    expires: Option<u64>,
) -> Result<NewKey> {
    let mut keys = ApiKeys::load(path)?;
    let mut random = Zeroizing::new([0u8; 32]);
    getrandom::fill(random.as_mut()).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = Zeroizing::new(format!(
        "{KEY_PREFIX}{}",
        data_encoding::HEXLOWER.encode(random.as_ref())
    ));
    let hash = hash_key(key.as_bytes());
    let entry = add_entry(&mut keys, path, scope, name, hash, now, expires, false)?;
    Ok(NewKey { key, entry })
}

/// Registers a client certificate (its DER encoding) with `scope`: a mutual-TLS client
/// presenting it may call the API without a bearer key. `name` defaults to `cert-` and 8 hex
/// digits of its hash.
///
/// # Errors
/// As [`create_key_at`].
pub fn add_certificate(
    path: &Path,
    scope: Scope,
    name: Option<&str>,
    der: &[u8],
    now: u64,
    expires: Option<u64>,
) -> Result<KeyEntry> {
    let mut keys = ApiKeys::load(path)?;
    let hash = ClientCertificate::of_der(der).0;
    if keys.find_hash(&hash, true).is_some() {
        bail!("this certificate is registered already");
    }
    add_entry(&mut keys, path, scope, name, hash, now, expires, true)
}

/// Names, appends and writes an entry (atomically, mode 0600).
#[allow(clippy::too_many_arguments)]
fn add_entry(
    keys: &mut ApiKeys,
    path: &Path,
    scope: Scope,
    name: Option<&str>,
    hash: [u8; 32],
    now: u64,
    expires: Option<u64>,
    certificate: bool,
) -> Result<KeyEntry> {
    if expires.is_some_and(|t| t <= now) {
        bail!("the expiry must be in the future");
    }
    let name = match name {
        Some(n) => {
            if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_graphic()) {
                bail!("a key name is 1 to 64 printable ASCII characters without spaces");
            }
            n.to_owned()
        }
        None => format!(
            "{}-{}",
            if certificate { "cert" } else { "key" },
            data_encoding::HEXLOWER.encode(&hash[..4])
        ),
    };
    if keys.entries.iter().any(|e| e.name == name) {
        bail!("a key named '{name}' already exists");
    }
    let entry = KeyEntry {
        scope,
        name,
        hash,
        created: Some(now),
        expires,
        certificate,
    };
    keys.entries.push(entry.clone());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::state_dir::create_private_dir(parent)?;
    }
    write_atomic(path, keys.render().as_bytes())?;
    Ok(entry)
}

/// Removes the key named `name` from the file at `path` (atomically); returns its entry.
///
/// # Errors
/// When there is no such key, or the file cannot be read or written.
pub fn revoke_key(path: &Path, name: &str) -> Result<KeyEntry> {
    let mut keys = ApiKeys::load(path)?;
    let Some(at) = keys.entries.iter().position(|e| e.name == name) else {
        bail!("no API key named '{name}' in {}", path.display());
    };
    let entry = keys.entries.remove(at);
    write_atomic(path, keys.render().as_bytes())?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_are_found_with_their_scope_and_only_hashes_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let verify = create_key(&path, Scope::Verify, None).unwrap();
        let admin = create_key(&path, Scope::Admin, Some("ops")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(verify.key.as_str()));
        assert!(!text.contains(&verify.key[KEY_PREFIX.len()..]));
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.entries().len(), 2);
        assert_eq!(
            keys.find(verify.key.as_bytes()).unwrap().scope,
            Scope::Verify
        );
        let found = keys.find(admin.key.as_bytes()).unwrap();
        assert_eq!((found.scope, found.name.as_str()), (Scope::Admin, "ops"));
        assert!(keys.find(b"crv_0000").is_none());
        assert!(keys.find(b"").is_none());
        assert!(create_key(&path, Scope::Admin, Some("ops")).is_err());
        assert!(create_key(&path, Scope::Admin, Some("two words")).is_err());
    }

    #[test]
    fn expiry_revocation_and_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let old = create_key_at(&path, Scope::Verify, Some("old"), 1000, None).unwrap();
        let soon = create_key_at(&path, Scope::Verify, Some("soon"), 1000, Some(2000)).unwrap();
        assert!(create_key_at(&path, Scope::Verify, Some("past"), 1000, Some(1000)).is_err());
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.check(soon.key.as_bytes(), 1999).unwrap().name, "soon");
        assert_eq!(
            keys.check(soon.key.as_bytes(), 2000).unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(keys.check(b"crv_x", 0).unwrap_err(), Refusal::Unknown);
        let entry = &keys.entries()[0];
        assert_eq!((entry.created, entry.expires), (Some(1000), None));
        assert_eq!(revoke_key(&path, "old").unwrap().name, "old");
        assert!(revoke_key(&path, "old").is_err());
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(
            keys.check(old.key.as_bytes(), 0).unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(keys.entries().len(), 1);
        // A line as earlier versions wrote it (no dates) still parses.
        let line = format!("admin ops {}\n", "ab".repeat(32));
        let keys = ApiKeys::parse(&line).unwrap();
        assert_eq!(keys.entries()[0].created, None);
        assert!(ApiKeys::parse(&format!("admin ops {} when=1\n", "ab".repeat(32))).is_err());
        // A certificate entry is matched by the certificate only, never as a bearer key.
        let der = b"not really DER, but bytes";
        let entry = add_certificate(&path, Scope::Verify, None, der, 1000, None).unwrap();
        assert!(entry.name.starts_with("cert-") && entry.certificate);
        assert!(add_certificate(&path, Scope::Admin, Some("again"), der, 1000, None).is_err());
        let keys = ApiKeys::load(&path).unwrap();
        let cert = ClientCertificate::of_der(der);
        assert_eq!(keys.check_certificate(&cert, 0).unwrap().name, entry.name);
        assert_eq!(keys.check(der, 0).unwrap_err(), Refusal::Unknown);
        let bearer = ClientCertificate::of_der(soon.key.as_bytes());
        assert_eq!(
            keys.check_certificate(&bearer, 0).unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let err = ApiKeys::parse("# c\nverify k1 00\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = ApiKeys::parse(&("root k1 ".to_owned() + &"0".repeat(64))).unwrap_err();
        assert!(err.to_string().contains("unknown scope"), "{err}");
        assert!(
            ApiKeys::load(Path::new("/nonexistent/keys"))
                .unwrap()
                .entries()
                .is_empty()
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A line of an API-key file as people get it wrong: the right fields, fields in the
        /// wrong order, a raw key pasted where the hash goes or anywhere else.
        fn line(key: String) -> impl Strategy<Value = String> {
            let field = prop_oneof![
                Just("verify".to_owned()),
                Just("admin".to_owned()),
                "[a-z]{1,8}",
                "[0-9a-f]{64}",
                "[0-9a-fA-F]{0,70}",
                Just(key),
                "\\PC{0,12}",
            ];
            prop::collection::vec(field, 0..5).prop_map(|f| f.join(" "))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any file: keys or an error naming the line, which never repeats a key pasted
            /// into it; every line of a parsed file that is not blank or a comment is a key.
            #[test]
            fn malformed_lines_never_echo_a_key(
                key in "crv_[A-Za-z0-9]{30,43}",
                lines in prop::collection::vec(line("@".to_owned()), 1..6),
            ) {
                let lines: Vec<String> = lines.iter().map(|l| l.replace('@', &key)).collect();
                let text = lines.join("\n");
                match ApiKeys::parse(&text) {
                    Ok(keys) => {
                        let used = text
                            .lines()
                            .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
                            .count();
                        prop_assert_eq!(keys.entries().len(), used);
                    }
                    Err(e) => {
                        let shown = format!("{e:#}");
                        prop_assert!(shown.starts_with("line "), "{}", shown);
                        prop_assert!(!shown.contains(&key), "{}", shown);
                        prop_assert!(!shown.contains(&key[KEY_PREFIX.len()..]), "{}", shown);
                    }
                }
            }
        }
    }
}
