//! A key-encryption key that never leaves a hardware security module, used through PKCS#11.
//!
//! Why: with a key file, whoever reads the server's memory or its disk reads every seed. An
//! [`HsmKey`] is an AES-256 secret key object inside the module, created sensitive and
//! non-extractable; seeds are sealed and opened by the module (`CKM_AES_GCM`, 96-bit nonce,
//! 128-bit tag, the token id as associated data), so the stored layout is the one a file
//! [`crate::Kek`] writes and a keyring can hold both kinds during a rotation.
//!
//! The key is named by an RFC 7512 URI ([`Pkcs11Uri`]: `pkcs11:token=...;object=...`). The
//! module path and the PIN come from a [`Pkcs11Config`] (options, environment, or a PIN file
//! read again at every login, so fixing the file fixes a running server); a `pin-value` in
//! the URI is refused, because a URI ends up on command lines and in keyring files.
//!
//! Failure: an operation that fails because of the module (session closed, token removed,
//! PIN no longer accepted) answers [`KeyFailure::Unavailable`], marks the connection broken,
//! and the next operation (at most one attempt per [`RECONNECT_INTERVAL`]) opens new
//! sessions, logs in and finds the same key again, so a module that comes back is used
//! without a restart. Between attempts, failures are immediate: a dead module must not
//! make every verification wait on it.
//!
//! The module is loaded once per process (`C_Initialize` may be called only once per
//! module), and sessions are pooled: one per concurrent operation, reused afterwards.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use codereader_otp::percent::{self, Plus};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::seal::{KeyFailure, NONCE_LEN, SealingKey};
use crate::token::KeyId;

/// Shortest time between two attempts to reconnect to a module that failed.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Environment variable naming the PKCS#11 module (a shared library).
pub const MODULE_ENV: &str = "CODEREADER_PKCS11_MODULE";
/// Environment variable holding the user PIN.
pub const PIN_ENV: &str = "CODEREADER_PKCS11_PIN";
/// Environment variable naming a file that holds the user PIN.
pub const PIN_FILE_ENV: &str = "CODEREADER_PKCS11_PIN_FILE";

/// Why an HSM key could not be set up. Never holds a PIN or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The URI is not a `pkcs11:` URI this crate understands.
    #[error("PKCS#11 URI: {reason}")]
    BadUri {
        /// What is wrong (never quotes a PIN).
        reason: String,
    },
    /// No module path was given (option, environment or `module-path=` in the URI).
    #[error(
        "no PKCS#11 module: give its path with --pkcs11-module, {MODULE_ENV} or module-path= in the URI"
    )]
    NoModule,
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module {path}: {reason}")]
    Module {
        /// The module's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No PIN was given, or its file could not be read.
    #[error("PKCS#11 PIN: {reason}")]
    NoPin {
        /// Why (never the PIN).
        reason: String,
    },
    /// The module has no token with this label (and serial).
    #[error("PKCS#11: no token labelled {token:?} in the module")]
    NoSuchToken {
        /// The label asked for.
        token: String,
    },
    /// The token refused the PIN.
    #[error("PKCS#11 token {token:?}: wrong PIN")]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The token locked its PIN after too many wrong ones.
    #[error("PKCS#11 token {token:?}: the PIN is locked")]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// The token has no such key (and creating it was not asked for).
    #[error("PKCS#11 token {token:?} has no secret key labelled {object:?}")]
    NoKey {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// A key was found but may not serve as a key-encryption key.
    #[error("PKCS#11 key {object:?}: {reason}")]
    KeyNotUsable {
        /// The key's label.
        object: String,
        /// Why (extractable, not AES-256, several match...).
        reason: String,
    },
    /// The module failed.
    #[error("PKCS#11 {operation}: {reason}")]
    Device {
        /// What was being done.
        operation: &'static str,
        /// The module's answer.
        reason: String,
    },
}

/// An RFC 7512 URI naming a secret key: `pkcs11:token=LABEL;object=LABEL` with optional
/// `serial=`, `id=` (percent-encoded bytes) and `type=secret-key` path attributes, and
/// optional `?module-path=...&pin-source=file:...` query attributes.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    text: String,
    token: String,
    serial: Option<String>,
    object: String,
    id: Option<Vec<u8>>,
    module_path: Option<PathBuf>,
    pin_file: Option<PathBuf>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({})", self.text)
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An attribute's value, percent-decoded strictly (a `+` is itself in RFC 7512 URIs).
fn pct_decode(value: &str) -> Result<Vec<u8>, HsmError> {
    percent::decode(value, Plus::Literal).map_err(|_| HsmError::BadUri {
        reason: "a % must be followed by two hex digits".to_owned(),
    })
}

fn pct_text(value: &str) -> Result<String, HsmError> {
    String::from_utf8(pct_decode(value)?).map_err(|_| HsmError::BadUri {
        reason: "an attribute is not UTF-8 once decoded".to_owned(),
    })
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    ///
    /// # Errors
    /// [`HsmError::BadUri`]: not `pkcs11:`, no `token` or `object`, an attribute given twice,
    /// a `type` other than `secret-key`, or a `pin-value` (a PIN must not sit in a URI).
    pub fn parse(text: &str) -> Result<Self, HsmError> {
        let bad = |reason: &str| HsmError::BadUri {
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("it must start with `pkcs11:`"))?;
        if text.chars().any(char::is_whitespace) {
            return Err(bad("whitespace must be percent-encoded"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let mut uri = Pkcs11Uri {
            text: text.to_owned(),
            token: String::new(),
            serial: None,
            object: String::new(),
            id: None,
            module_path: None,
            pin_file: None,
        };
        let (mut token, mut object) = (None, None);
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a path attribute is not NAME=VALUE"))?;
            let twice = |slot_full: bool| {
                if slot_full {
                    Err(HsmError::BadUri {
                        reason: format!("`{name}` is given twice"),
                    })
                } else {
                    Ok(())
                }
            };
            match name {
                "token" => {
                    twice(token.is_some())?;
                    token = Some(pct_text(value)?);
                }
                "object" => {
                    twice(object.is_some())?;
                    object = Some(pct_text(value)?);
                }
                "serial" => {
                    twice(uri.serial.is_some())?;
                    uri.serial = Some(pct_text(value)?);
                }
                "id" => {
                    twice(uri.id.is_some())?;
                    uri.id = Some(pct_decode(value)?);
                }
                "type" if value == "secret-key" => {}
                "type" => return Err(bad("only `type=secret-key` can seal")),
                // Other RFC 7512 attributes narrow the search; ours is by token and object.
                "manufacturer"
                | "model"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                _ => {
                    return Err(HsmError::BadUri {
                        reason: format!("unknown attribute `{name}`"),
                    });
                }
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a query attribute is not NAME=VALUE"))?;
            match name {
                "module-path" => uri.module_path = Some(PathBuf::from(pct_text(value)?)),
                "pin-source" => {
                    let value = pct_text(value)?;
                    let file = value.strip_prefix("file:").unwrap_or(&value);
                    uri.pin_file = Some(PathBuf::from(file));
                }
                "pin-value" => {
                    return Err(bad(
                        "a pin-value in the URI is refused (it would show in process lists and \
                         keyring files); use a PIN file or the environment",
                    ));
                }
                "module-name" => {}
                _ => {
                    return Err(HsmError::BadUri {
                        reason: format!("unknown query attribute `{name}`"),
                    });
                }
            }
        }
        uri.token = token.ok_or_else(|| bad("it must name the token (`token=LABEL`)"))?;
        uri.object = object.ok_or_else(|| bad("it must name the key (`object=LABEL`)"))?;
        if uri.token.is_empty() || uri.object.is_empty() {
            return Err(bad("`token` and `object` must not be empty"));
        }
        Ok(uri)
    }

    /// The token's label.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The key's label.
    pub fn object(&self) -> &str {
        &self.object
    }
}

/// Where the PIN comes from. Read at every login, never kept longer than that.
#[derive(Clone)]
pub enum PinSource {
    /// A file holding the PIN (surrounding whitespace ignored).
    File(PathBuf),
    /// The PIN itself (from the environment).
    Value(Zeroizing<String>),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(path) => write!(f, "PinSource::File({})", path.display()),
            PinSource::Value(_) => f.write_str("PinSource::Value(<redacted>)"),
        }
    }
}

impl PinSource {
    fn read(&self) -> Result<Zeroizing<String>, HsmError> {
        match self {
            PinSource::Value(pin) => Ok(pin.clone()),
            PinSource::File(path) => {
                let text =
                    Zeroizing::new(std::fs::read_to_string(path).map_err(|e| HsmError::NoPin {
                        reason: format!("cannot read {}: {e}", path.display()),
                    })?);
                Ok(Zeroizing::new(text.trim().to_owned()))
            }
        }
    }
}

/// The module and the PIN an [`HsmKey`] is used with.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The module (for example `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: Option<PathBuf>,
    /// The PIN.
    pub pin: Option<PinSource>,
}

impl Pkcs11Config {
    /// The settings from the environment: [`MODULE_ENV`], and [`PIN_FILE_ENV`] or [`PIN_ENV`].
    pub fn from_env() -> Self {
        let module = std::env::var_os(MODULE_ENV).map(PathBuf::from);
        let pin = match std::env::var_os(PIN_FILE_ENV) {
            Some(file) => Some(PinSource::File(PathBuf::from(file))),
            None => std::env::var(PIN_ENV)
                .ok()
                .map(|p| PinSource::Value(Zeroizing::new(p))),
        };
        Pkcs11Config { module, pin }
    }

    /// `uri`'s own `module-path` and `pin-source` win over these settings.
    fn for_uri(&self, uri: &Pkcs11Uri) -> Result<(PathBuf, PinSource), HsmError> {
        let module = uri
            .module_path
            .clone()
            .or_else(|| self.module.clone())
            .ok_or(HsmError::NoModule)?;
        let pin = match &uri.pin_file {
            Some(file) => PinSource::File(file.clone()),
            None => self.pin.clone().ok_or_else(|| HsmError::NoPin {
                reason: format!(
                    "none given: use --pkcs11-pin-file, {PIN_FILE_ENV}, {PIN_ENV} or \
                     pin-source= in the URI"
                ),
            })?,
        };
        Ok((module, pin))
    }
}

/// A loaded module, shared by every key of the process that uses it.
#[derive(Clone)]
struct Module {
    ctx: Pkcs11,
    /// How many times the module was reset ([`Module::reset`]): sessions of an earlier epoch
    /// are gone.
    epoch: Arc<AtomicU64>,
}

impl Module {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// `C_Finalize` then `C_Initialize`: the only way to make some modules (SoftHSM among
    /// them) see a token that went away and came back. Every session of the process on this
    /// module ends; other keys notice by the epoch and reconnect.
    fn reset(&self) -> Result<(), HsmError> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.ctx.clone().finalize();
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(device("initialising the module again")(e)),
        }
    }
}

/// Loads (once per process) and initialises the module at `path`.
fn module(path: &Path) -> Result<Module, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let failed = |e: CkError| HsmError::Module {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if !path.exists() {
        return Err(HsmError::Module {
            path: path.to_path_buf(),
            reason: "no such file".to_owned(),
        });
    }
    let ctx = Pkcs11::new(path).map_err(failed)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(failed(e)),
    }
    let module = Module {
        ctx,
        epoch: Arc::default(),
    };
    modules.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

fn device(operation: &'static str) -> impl Fn(CkError) -> HsmError {
    move |e| HsmError::Device {
        operation,
        reason: e.to_string(),
    }
}

/// A live connection: the slot, the key's handle and idle logged-in sessions (opened without
/// close-on-drop: after a module reset their handles may name another key's sessions, so
/// they are forgotten, never closed).
struct Connection {
    epoch: u64,
    slot: Slot,
    key: ObjectHandle,
    idle: Vec<Session>,
}

struct Inner {
    module: Module,
    uri: Pkcs11Uri,
    pin: PinSource,
    id: KeyId,
    state: Mutex<State>,
}

struct State {
    connection: Option<Connection>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// A digest of the PIN the token last refused: not tried again until it changes, so a
    /// wrong PIN file cannot lock a real token's PIN by retries once a second.
    refused_pin: Option<[u8; 32]>,
}

/// A key-encryption key held in a PKCS#11 module. Cheap to clone (clones share sessions).
#[derive(Clone)]
pub struct HsmKey {
    inner: Arc<Inner>,
}

impl fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmKey")
            .field("id", &self.inner.id)
            .field("uri", &self.inner.uri)
            .finish_non_exhaustive()
    }
}

/// The token's slot, found by label (and serial).
fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri) -> Result<Slot, HsmError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(device("listing slots"))?;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let serial_ok = uri
            .serial
            .as_deref()
            .is_none_or(|s| info.serial_number().trim() == s);
        if info.label().trim() == uri.token && serial_ok {
            return Ok(slot);
        }
    }
    Err(HsmError::NoSuchToken {
        token: uri.token.clone(),
    })
}

/// A digest of a PIN, to recognise one the token refused without keeping it.
fn pin_digest(pin: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::default();
    digest.update(b"codereader refused pin\0");
    digest.update(pin.as_bytes());
    digest.finalize().into()
}

/// Opens a session on `slot` and logs the user in with `pin` (once per token and process).
fn open_session(ctx: &Pkcs11, slot: Slot, uri: &Pkcs11Uri, pin: &str) -> Result<Session, HsmError> {
    let session = ctx
        .open_rw_session_no_drop(slot)
        .map_err(device("opening a session"))?;
    let refused = match session.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => return Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            HsmError::WrongPin {
                token: uri.token.clone(),
            }
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => HsmError::PinLocked {
            token: uri.token.clone(),
        },
        Err(e) => device("logging in")(e),
    };
    let _ = session.close();
    Err(refused)
}

fn search_template(uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(uri.object.as_bytes().to_vec()),
    ];
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    template
}

/// Finds the key, or `None` if the token has none by that label (and id).
fn find_key(session: &Session, uri: &Pkcs11Uri) -> Result<Option<ObjectHandle>, HsmError> {
    let found = session
        .find_objects(&search_template(uri))
        .map_err(device("finding the key"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(HsmError::KeyNotUsable {
            object: uri.object.clone(),
            reason: "several secret keys match; add `id=` to the URI".to_owned(),
        }),
    }
}

/// Creates an AES-256 key that is a token object, private, sensitive and non-extractable.
fn create_key(session: &Session, uri: &Pkcs11Uri) -> Result<ObjectHandle, HsmError> {
    let id = match &uri.id {
        Some(id) => id.clone(),
        None => {
            let mut id = vec![0u8; 16];
            getrandom::fill(&mut id).map_err(|_| HsmError::Device {
                operation: "creating the key",
                reason: "no randomness for its id".to_owned(),
            })?;
            id
        }
    };
    let template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::ValueLen(32.into()),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(uri.object.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(device("creating the key"))
}

/// Checks the key may serve and computes its id: from its `CKA_ID` and check value, so a key
/// recreated under the same label gets another id (its seals then say "unknown key", not
/// "tampered").
fn key_id(session: &Session, key: ObjectHandle, uri: &Pkcs11Uri) -> Result<KeyId, HsmError> {
    let unusable = |reason: &str| HsmError::KeyNotUsable {
        object: uri.object.clone(),
        reason: reason.to_owned(),
    };
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Id,
                AttributeType::CheckValue,
            ],
        )
        .map_err(device("reading the key's attributes"))?;
    let (mut kind_aes, mut sensitive, mut extractable) = (false, false, true);
    let mut len = 0u64;
    let mut digest = sha2::Sha256::default();
    use sha2::Digest;
    digest.update(b"codereader pkcs11 key id\0");
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => kind_aes = t == KeyType::AES,
            Attribute::ValueLen(l) => len = l.into(),
            Attribute::Sensitive(s) => sensitive = s,
            Attribute::Extractable(e) => extractable = e,
            Attribute::Id(id) => {
                digest.update((id.len() as u64).to_be_bytes());
                digest.update(&id);
            }
            Attribute::CheckValue(check) => {
                digest.update((check.len() as u64).to_be_bytes());
                digest.update(&check);
            }
            _ => {}
        }
    }
    if !(kind_aes && len == 32) {
        return Err(unusable("not an AES-256 key"));
    }
    if !sensitive || extractable {
        return Err(unusable(
            "the key may leave the module (CKA_SENSITIVE false or CKA_EXTRACTABLE true); a \
             key-encryption key must not",
        ));
    }
    let hex = data_encoding::HEXLOWER.encode(&digest.finalize()[..8]);
    KeyId::new(format!("hsm-{hex}")).map_err(|_| unusable("no valid id"))
}

impl HsmKey {
    /// Finds the key `uri` names, creating it (AES-256, sensitive, non-extractable) if the
    /// token has none and `create` is set.
    ///
    /// # Errors
    /// [`HsmError`]: no module or PIN given, module missing, no such token, wrong or locked
    /// PIN, no such key, a key that is extractable or not AES-256, or a module failure.
    pub fn open(config: &Pkcs11Config, uri: &Pkcs11Uri, create: bool) -> Result<Self, HsmError> {
        let (module_path, pin) = config.for_uri(uri)?;
        let module = module(&module_path)?;
        let epoch = module.epoch();
        let ctx = &module.ctx;
        let slot = find_slot(ctx, uri)?;
        let session = open_session(ctx, slot, uri, &pin.read()?)?;
        let found = (|| {
            let key = match find_key(&session, uri)? {
                Some(key) => key,
                None if create => create_key(&session, uri)?,
                None => {
                    return Err(HsmError::NoKey {
                        token: uri.token.clone(),
                        object: uri.object.clone(),
                    });
                }
            };
            Ok((key, key_id(&session, key, uri)?))
        })();
        let (key, id) = match found {
            Ok(found) => found,
            Err(e) => {
                let _ = session.close();
                return Err(e);
            }
        };
        Ok(HsmKey {
            inner: Arc::new(Inner {
                module,
                uri: uri.clone(),
                pin,
                id,
                state: Mutex::new(State {
                    connection: Some(Connection {
                        epoch,
                        slot,
                        key,
                        idle: vec![session],
                    }),
                    last_attempt: None,
                    last_error: None,
                    refused_pin: None,
                }),
            }),
        })
    }

    /// The URI the key was found by.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.inner.uri
    }

    /// Runs `op` with a session and the key's handle, reconnecting first if the last
    /// operation lost the module (at most once per [`RECONNECT_INTERVAL`]).
    fn with_session<T>(
        &self,
        op: impl FnOnce(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<Result<T, CkError>, KeyFailure> {
        let (session, key) = {
            let mut state = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let epoch = self.inner.module.epoch();
            if state.connection.as_ref().is_some_and(|c| c.epoch != epoch) {
                // Another key reset the module: these sessions are gone.
                state.connection = None;
            }
            if state.connection.is_none() {
                self.reconnect(&mut state)?;
            }
            let Some(connection) = state.connection.as_mut() else {
                return Err(self.unavailable(&state));
            };
            let key = connection.key;
            match connection.idle.pop() {
                Some(session) => (session, key),
                None => {
                    let slot = connection.slot;
                    // Another login is not needed: the token's sessions share one.
                    match self.inner.module.ctx.open_rw_session_no_drop(slot) {
                        Ok(session) => (session, key),
                        Err(e) => {
                            self.lost(&mut state, &e, None);
                            return Err(self.unavailable(&state));
                        }
                    }
                }
            }
        };
        let result = op(&session, key);
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &result {
            Err(e) if connection_lost(e) => {
                self.lost(&mut state, e, Some(session));
                Err(self.unavailable(&state))
            }
            _ => {
                if let Some(connection) = state.connection.as_mut() {
                    connection.idle.push(session);
                }
                Ok(result)
            }
        }
    }

    /// Forgets the connection after `error`; `in_hand` is the session the failed operation
    /// used. Sessions are closed while their handles are still this module epoch's (after a
    /// reset they may name another key's new sessions, so they are only forgotten).
    fn lost(&self, state: &mut State, error: &CkError, in_hand: Option<Session>) {
        if state.connection.is_some() {
            eprintln!(
                "codereader: PKCS#11 key {} ({}) lost its module: {error}; reconnecting",
                self.inner.id, self.inner.uri
            );
        }
        let epoch = self.inner.module.epoch();
        if let Some(connection) = state.connection.take().filter(|c| c.epoch == epoch) {
            for session in connection.idle.into_iter().chain(in_hand) {
                let _ = session.close();
            }
        }
        // The next operation reconnects.
        state.last_error = Some(error.to_string());
    }

    fn unavailable(&self, state: &State) -> KeyFailure {
        KeyFailure::Unavailable(format!(
            "PKCS#11 module: {}",
            state.last_error.as_deref().unwrap_or("not connected")
        ))
    }

    /// Finds the token, logs in and finds the same key again.
    fn reconnect(&self, state: &mut State) -> Result<(), KeyFailure> {
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL)
        {
            return Err(self.unavailable(state));
        }
        state.last_attempt = Some(Instant::now());
        let inner = &self.inner;
        let refused_pin = &mut state.refused_pin;
        let attempt = (|| {
            let module = &inner.module;
            let slot = match find_slot(&module.ctx, &inner.uri) {
                Ok(slot) => slot,
                // A token that went away may be back only after the module starts again.
                Err(_) => {
                    module.reset()?;
                    find_slot(&module.ctx, &inner.uri)?
                }
            };
            let epoch = module.epoch();
            let pin = inner.pin.read()?;
            let digest = pin_digest(&pin);
            if *refused_pin == Some(digest) {
                return Err(HsmError::WrongPin {
                    token: inner.uri.token.clone(),
                });
            }
            let session = match open_session(&module.ctx, slot, &inner.uri, &pin) {
                Err(e @ (HsmError::WrongPin { .. } | HsmError::PinLocked { .. })) => {
                    *refused_pin = Some(digest);
                    return Err(e);
                }
                other => other?,
            };
            *refused_pin = None;
            let found = (|| {
                let key = find_key(&session, &inner.uri)?.ok_or_else(|| HsmError::NoKey {
                    token: inner.uri.token.clone(),
                    object: inner.uri.object.clone(),
                })?;
                let id = key_id(&session, key, &inner.uri)?;
                if id != inner.id {
                    return Err(HsmError::KeyNotUsable {
                        object: inner.uri.object.clone(),
                        reason: format!("the module now holds key {id}, not {}", inner.id),
                    });
                }
                Ok(key)
            })();
            let key = match found {
                Ok(key) => key,
                Err(e) => {
                    let _ = session.close();
                    return Err(e);
                }
            };
            Ok(Connection {
                epoch,
                slot,
                key,
                idle: vec![session],
            })
        })();
        match attempt {
            Ok(connection) => {
                eprintln!(
                    "codereader: PKCS#11 key {} ({}) reconnected",
                    inner.id, inner.uri
                );
                state.connection = Some(connection);
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                // Logged when it changes, not once a second while the module stays away.
                if state.last_error.as_deref() != Some(error.as_str()) {
                    eprintln!(
                        "codereader: PKCS#11 key {} ({}): cannot reconnect: {error}",
                        inner.id, inner.uri
                    );
                }
                state.last_error = Some(error);
                Err(self.unavailable(state))
            }
        }
    }
}

/// Whether a module error means the session or token is gone (reconnect), rather than an
/// answer about this one operation.
fn connection_lost(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid,
            _
        )
    )
}

impl SealingKey for HsmKey {
    fn id(&self) -> &KeyId {
        &self.inner.id
    }

    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, KeyFailure> {
        let result = self.with_session(|session, key| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            session.encrypt(&Mechanism::AesGcm(params), key, plain)
        })?;
        result.map_err(|e| KeyFailure::Unavailable(format!("PKCS#11 encryption: {e}")))
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyFailure> {
        let result = self.with_session(|session, key| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            session
                .decrypt(&Mechanism::AesGcm(params), key, sealed)
                .map_err(|e| match session.get_session_info() {
                    // The session is gone: that error, so that the key reconnects.
                    Err(lost) if connection_lost(&lost) => lost,
                    _ => e,
                })
        })?;
        match result {
            Ok(plain) => Ok(Zeroizing::new(plain)),
            // The tag did not match (SoftHSM says CKR_GENERAL_ERROR, others
            // CKR_ENCRYPTED_DATA_INVALID) and the session is fine: not sealed by this key for
            // this token, or altered.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
                _,
            )) => Err(KeyFailure::Rejected),
            Err(e) => Err(KeyFailure::Unavailable(format!("PKCS#11 decryption: {e}"))),
        }
    }

    fn check(&self) -> Result<(), KeyFailure> {
        self.with_session(|session, _| session.get_session_info().map(|_| ()))?
            .map_err(|e| KeyFailure::Unavailable(format!("PKCS#11: {e}")))
    }
}
