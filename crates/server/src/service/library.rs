//! [`TokenService`] over the `codereader-verifier` library: the only file that knows the
//! library's types, so changes to its API stay here.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use codereader_otp::pskc::PreSharedKey;
use codereader_otp::{
    Algorithm, Code, Counter, Digits, KeyPolicy, KeyUri, Period, Secret, UnixTime,
};
use codereader_verifier::{
    Activation, AuditEntry, Caller, ClientBudget, ClientId, Durability,
    Enrollment as LibEnrollment, FailureDelay, Kek, Keyring, Matched as LibMatched, Outcome,
    OwnedSubject, PgStore, Policy, SealError, SqliteOptions, SqliteStore, Store, StoreAddress,
    StoreError, Subject, TokenId, TokenInfo, TokenKind, TokenParams, UserId, Verifier, VerifyError,
};

use super::{
    AuditLine, Decision, Done, Enrollment, ImportReport, MAX_AUDIT_PAGE, MAX_LIST_PAGE, Matched,
    ServiceError, Target, TokenService, TokenView,
};
use crate::keyring::{FileKeySource, KeyFiles};
use crate::wire::codes;

/// Choices passed to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryConfig {
    /// Consecutive failures that lock a token.
    pub max_failures: u32,
    /// SQLite: fsync every commit (`true`, the default) or only survive process crashes.
    pub sqlite_full_sync: bool,
    /// PostgreSQL: most connections open at once.
    pub pg_connections: usize,
    /// SQLite: read connections kept open for reuse; at least the store calls that run at
    /// once, or reads keep opening and closing connections.
    pub sqlite_connections: usize,
    /// Prepared HMAC keys kept in memory for tokens verified lately (0: none). Saves opening
    /// the seal and the key schedule on every verification; the server holds the
    /// key-encryption key in memory anyway.
    pub key_cache: usize,
    /// Failed verifications allowed per client (`None`: no budget).
    pub client_budget: Option<ClientBudget>,
    /// The growing delay between attempts after failures, per token (`None`: none).
    pub failure_delay: Option<FailureDelay>,
    /// Locks that end by themselves, each twice as long as the one before (`None`: a lock
    /// lasts until an administrator unlocks).
    pub temporary_lock: Option<FailureDelay>,
    /// Answer unknown serials and users exactly like a wrong code.
    pub unknown_as_rejected: bool,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        LibraryConfig {
            max_failures: 3,
            sqlite_full_sync: true,
            pg_connections: codereader_verifier::store::postgres::DEFAULT_MAX_CONNECTIONS,
            sqlite_connections: SqliteOptions::default().max_idle,
            key_cache: 0,
            client_budget: None,
            failure_delay: None,
            temporary_lock: None,
            unknown_as_rejected: false,
        }
    }
}

/// The verifier library with its store and keys.
pub struct Library {
    verifier: Arc<Verifier>,
    /// Where the keyring comes from, when it comes from files that may change.
    key_files: Option<KeyFiles>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.verifier.fmt(f)
    }
}

/// What a key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Seeds re-sealed under the new key.
    pub resealed: usize,
    /// Tokens whose seed no key of the keyring opens, with the reason.
    pub failed: Vec<(String, String)>,
}

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

fn caller_id(caller: &str) -> Result<Caller, ServiceError> {
    Caller::new(caller).map_err(|e| ServiceError::Internal(format!("caller name: {e}")))
}

fn token_id(serial: &str) -> Result<TokenId, ServiceError> {
    TokenId::new(serial).map_err(|e| ServiceError::Invalid {
        code: codes::INVALID_ID,
        message: e.to_string(),
    })
}

fn user_id(user: &str) -> Result<UserId, ServiceError> {
    UserId::new(user).map_err(|e| ServiceError::Invalid {
        code: codes::INVALID_ID,
        message: e.to_string(),
    })
}

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        code,
        message: message.into(),
    }
}

impl From<VerifyError> for ServiceError {
    fn from(error: VerifyError) -> Self {
        match error {
            VerifyError::Store(StoreError::Database { backend, reason }) => {
                ServiceError::Store(format!("{backend}: {reason}"))
            }
            VerifyError::Store(StoreError::Duplicate { token }) => ServiceError::Conflict {
                code: codes::DUPLICATE_TOKEN,
                message: format!("token {token} already exists"),
            },
            VerifyError::Store(StoreError::UserTaken { user }) => ServiceError::Conflict {
                code: codes::USER_TAKEN,
                message: format!("user {user} already has a token"),
            },
            VerifyError::UnknownToken { token } => ServiceError::NotFound {
                serial: token.to_string(),
            },
            VerifyError::Id(e) => invalid(codes::INVALID_ID, e.to_string()),
            VerifyError::Pskc(e) => invalid(codes::INVALID_PSKC, format!("PSKC: {e}")),
            VerifyError::Seal(e) => seal_error(e),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// A seed that does not open names its token, so the server can log it once per token and
/// say whether its keyring is behind (a key it lacks) or the row is bad.
fn seal_error(error: SealError) -> ServiceError {
    let message = error.to_string();
    match error {
        SealError::UnknownKey { token, .. } => ServiceError::Seal {
            serial: token.to_string(),
            missing_key: true,
            message,
        },
        SealError::Tampered { token, .. } | SealError::BadSeed { token } => ServiceError::Seal {
            serial: token.to_string(),
            missing_key: false,
            message,
        },
        SealError::KeyUnavailable { .. } => ServiceError::KeyUnavailable(message),
        _ => ServiceError::Internal(message),
    }
}

/// An enrolment's counter, period or T0 that the store cannot hold (its integers are signed
/// 64-bit) is the caller's input: a 400 naming it, not a 500.
fn storable(error: VerifyError) -> ServiceError {
    match error {
        VerifyError::Store(StoreError::OutOfRange { what }) => invalid(
            codes::INVALID_PARAMETERS,
            format!(
                "the {what} is too large: at most {} can be stored",
                i64::MAX
            ),
        ),
        other => other.into(),
    }
}

fn decision(outcome: Outcome) -> Result<Decision, ServiceError> {
    Ok(match outcome {
        Outcome::Accepted(a) => Decision::Accepted {
            token: a.token().to_string(),
            matched: match a.matched() {
                LibMatched::Step(s) => Matched::Step(s.0),
                LibMatched::Counter(c) => Matched::Counter(c.0),
            },
            drift: a.drift(),
        },
        Outcome::Rejected { attempts_left } => Decision::Rejected {
            attempts_left: Some(attempts_left),
        },
        Outcome::Locked { until } => Decision::Locked {
            until: until.map(|t| t.0),
        },
        Outcome::Replayed => Decision::Replayed { token: None },
        Outcome::TooSoon { retry_at } => Decision::TooSoon {
            retry_at: retry_at.0,
        },
        Outcome::UnknownToken => Decision::Unknown,
        Outcome::RateLimited { retry_at } => Decision::RateLimited {
            retry_at: retry_at.0,
        },
        Outcome::Disabled => Decision::Disabled,
        other => {
            return Err(ServiceError::Internal(format!(
                "outcome '{}' unknown to the server",
                other.label()
            )));
        }
    })
}

/// A replay names its token like an acceptance does: the serial asked for, or the token
/// bound to the user asked for (one more read, only for replays by user).
fn named(decision: Decision, verifier: &Verifier, subject: &OwnedSubject) -> Decision {
    match decision {
        Decision::Replayed { token: None } => Decision::Replayed {
            token: match subject {
                OwnedSubject::Token(id) => Some(id.to_string()),
                OwnedSubject::User(_) => verifier
                    .show(subject.as_subject())
                    .ok()
                    .flatten()
                    .map(|info| info.id.to_string()),
            },
        },
        other => other,
    }
}

fn view(info: TokenInfo) -> TokenView {
    let (kind, period) = match info.params.kind {
        TokenKind::Totp { period, .. } => ("totp", Some(period.seconds())),
        TokenKind::Hotp => ("hotp", None),
    };
    TokenView {
        serial: info.id.to_string(),
        user: info.user.map(|u| u.to_string()),
        kind,
        algorithm: info.params.algorithm.name(),
        digits: info.params.digits.get(),
        period,
        next: info.state.next,
        drift: info.state.drift,
        failures: info.state.failures,
        locked_at: info.state.locked_at.map(|t| t.0),
        enabled: info.state.enabled,
        key_id: info.key_id.to_string(),
    }
}

fn audit_line(entry: AuditEntry) -> AuditLine {
    let e = entry.event;
    AuditLine {
        seq: entry.seq,
        at: e.at.0,
        token: e.token.map(|t| t.to_string()),
        user: e.user.map(|u| u.to_string()),
        action: e.action.as_str().to_owned(),
        outcome: e.outcome.to_string(),
        caller: e.caller.to_string(),
    }
}

impl Library {
    /// Opens the store (running its migrations); `current` seals new seeds, `current` and
    /// `older` open existing ones.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub fn open(
        db: &StoreAddress,
        current: Kek,
        older: Vec<Kek>,
        config: LibraryConfig,
    ) -> Result<Self> {
        let mut keyring = Keyring::new(current);
        for kek in older {
            keyring = keyring.with_older(kek);
        }
        Self::open_keyring(db, keyring, None, config)
    }

    /// Opens the store with the keyring read from `files`, and follows changes to them: a
    /// seed sealed under a key not loaded yet makes the files be read again (at most once a
    /// second), and [`Library::reload_keyring`] reads them on demand (SIGHUP).
    ///
    /// # Errors
    /// When a key file or the database cannot be opened.
    pub fn open_with_key_files(
        db: &StoreAddress,
        files: &KeyFiles,
        config: LibraryConfig,
    ) -> Result<Self> {
        let keyring = files.load()?;
        Self::open_keyring(db, keyring, Some(files.clone()), config)
    }

    /// Reads the key files again and uses their keys from now on; returns a description of
    /// the keyring (key ids only).
    ///
    /// # Errors
    /// When this library's keys do not come from files, or a file cannot be read (the old
    /// keyring stays in use).
    pub fn reload_keyring(&self) -> Result<String> {
        let Some(files) = &self.key_files else {
            bail!("the keys were not read from files");
        };
        let keyring = files.load()?;
        let described = crate::keyring::describe(&keyring);
        self.verifier.replace_keyring(keyring);
        Ok(described)
    }

    /// How many seeds are not sealed under the current key (0 once a rotation finished).
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn seeds_not_under_current(&self) -> Result<usize, ServiceError> {
        const PAGE: usize = 1000;
        let current = self.verifier.keyring().current_id().clone();
        let (mut count, mut after) = (0, None);
        loop {
            let page = self
                .verifier
                .store()
                .reads(|r| r.seeds_not_under(&current, after.as_ref(), PAGE))
                .map_err(VerifyError::from)?;
            count += page.len();
            match page.last() {
                Some((id, _)) if page.len() == PAGE => after = Some(id.clone()),
                _ => return Ok(count),
            }
        }
    }

    /// The keyring in use, described by key ids.
    pub fn describe_keyring(&self) -> String {
        crate::keyring::describe(&self.verifier.keyring())
    }

    fn open_keyring(
        db: &StoreAddress,
        keyring: Keyring,
        key_files: Option<KeyFiles>,
        config: LibraryConfig,
    ) -> Result<Self> {
        let store: Box<dyn Store> = match db {
            StoreAddress::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::state::create_private_dir(parent)?;
                }
                let durability = if config.sqlite_full_sync {
                    Durability::Full
                } else {
                    Durability::Normal
                };
                Box::new(
                    SqliteStore::open_with(
                        path,
                        SqliteOptions::default()
                            .with_durability(durability)
                            .with_max_idle(config.sqlite_connections.max(1)),
                    )
                    .with_context(|| format!("cannot open the SQLite store {}", path.display()))?,
                )
            }
            StoreAddress::Postgres(url) => Box::new(
                PgStore::connect_with(url, config.pg_connections)
                    .context("cannot open the PostgreSQL store")?,
            ),
        };
        let policy = Policy::default()
            .with_max_failures(config.max_failures)
            .with_failure_delay(config.failure_delay)
            .with_temporary_lock(config.temporary_lock)
            .with_unknown_as_rejected(config.unknown_as_rejected);
        let mut verifier = Verifier::new(store, keyring, policy)
            .with_key_cache(config.key_cache)
            .with_client_budget(config.client_budget);
        if let Some(files) = &key_files {
            verifier = verifier.with_key_source(Box::new(FileKeySource::new(files.clone())));
        }
        Ok(Library {
            verifier: Arc::new(verifier),
            key_files,
        })
    }

    /// Re-seals every seed under the current key.
    ///
    /// # Errors
    /// [`ServiceError::Store`] and the like; seeds that do not open are reported, not errors.
    pub fn rotate(&self, caller: &str) -> Result<Rotation, ServiceError> {
        let report = self.verifier.rotate(now(), &caller_id(caller)?)?;
        Ok(Rotation {
            resealed: report.resealed,
            failed: report
                .failed
                .into_iter()
                .map(|(id, e)| (id.to_string(), e.to_string()))
                .collect(),
        })
    }

    fn lib_enrollment(
        serial: TokenId,
        enrollment: &Enrollment,
    ) -> Result<LibEnrollment, ServiceError> {
        match enrollment {
            Enrollment::Uri(text) => {
                let uri = KeyUri::parse(text, KeyPolicy::Rfc4226)
                    .map_err(|e| invalid(codes::INVALID_URI, e.to_string()))?;
                Ok(LibEnrollment::from_uri(serial, &uri))
            }
            Enrollment::Params {
                hotp,
                secret_base32,
                algorithm,
                digits,
                period,
                counter,
            } => {
                let secret = Secret::from_base32(secret_base32, KeyPolicy::Rfc4226)
                    .map_err(|e| invalid(codes::INVALID_SECRET, e.to_string()))?;
                let algorithm: Algorithm = algorithm.parse().map_err(|_| {
                    invalid(
                        codes::INVALID_PARAMETERS,
                        "`algorithm` is SHA1, SHA256 or SHA512",
                    )
                })?;
                let digits = Digits::new(*digits)
                    .map_err(|_| invalid(codes::INVALID_PARAMETERS, "`digits` is 6, 7 or 8"))?;
                let kind = if *hotp {
                    TokenKind::Hotp
                } else {
                    TokenKind::Totp {
                        period: Period::new(*period).map_err(|_| {
                            invalid(codes::INVALID_PARAMETERS, "`period` must be at least 1")
                        })?,
                        t0: UnixTime(0),
                    }
                };
                Ok(LibEnrollment {
                    id: serial,
                    params: TokenParams {
                        kind,
                        algorithm,
                        digits,
                    },
                    secret,
                    counter: Counter(*counter),
                })
            }
        }
    }

    /// [`view`], showing a temporary lock that still holds as a lock since the last failure.
    fn view_now(&self, info: TokenInfo) -> TokenView {
        let until = self.verifier.temporary_lock_until(&info.state);
        let last_failure = info.state.last_failure_at;
        let mut shown = view(info);
        if until.is_some_and(|until| now() < until) {
            shown.locked_at = last_failure.map(|t| t.0);
        }
        shown
    }

    /// Imports the keys of a PSKC document; with `allow_short`, secrets shorter than 128
    /// bits (RFC 4226 asks for at least that) are accepted, as some legacy tokens need.
    ///
    /// # Errors
    /// As [`TokenService::import_pskc`].
    pub fn import_pskc_with(
        &self,
        pskc: &str,
        preshared_key: Option<&[u8]>,
        allow_short: bool,
        caller: &str,
    ) -> Result<ImportReport, ServiceError> {
        let psk = match preshared_key {
            Some(bytes) => Some(PreSharedKey::new(<[u8; 16]>::try_from(bytes).map_err(
                |_| {
                    invalid(
                        codes::INVALID_REQUEST,
                        "the pre-shared key must be 16 bytes (32 hex digits)",
                    )
                },
            )?)),
            None => None,
        };
        let report = self
            .verifier
            .import_pskc(
                pskc.as_bytes(),
                psk.as_ref(),
                if allow_short {
                    KeyPolicy::AllowLegacyShort
                } else {
                    KeyPolicy::Rfc4226
                },
                now(),
                &caller_id(caller)?,
            )
            .map_err(storable)?;
        Ok(ImportReport {
            imported: report.imported.iter().map(ToString::to_string).collect(),
            rejected: report
                .refused
                .into_iter()
                .map(|p| {
                    let name = p.name.unwrap_or_else(|| format!("key #{}", p.index));
                    (name, p.reason)
                })
                .collect(),
        })
    }

    fn info(&self, serial: &TokenId) -> Result<TokenView, ServiceError> {
        self.verifier
            .show(Subject::Token(serial))?
            .map(|info| self.view_now(info))
            .ok_or_else(|| ServiceError::NotFound {
                serial: serial.to_string(),
            })
    }
}

impl TokenService for Library {
    fn verify_then(&self, target: Target, code: Code, caller: &str, done: Done) {
        self.verify_from(target, code, caller, None, done);
    }

    fn verify_from(
        &self,
        target: Target,
        code: Code,
        caller: &str,
        client: Option<&str>,
        done: Done,
    ) {
        let client = match client.map(ClientId::new).transpose() {
            Ok(client) => client,
            Err(e) => return done(Err(invalid(codes::INVALID_ID, e.to_string()))),
        };
        let subject = (|| -> Result<OwnedSubject, ServiceError> {
            Ok(match &target {
                Target::Token(serial) => OwnedSubject::Token(token_id(serial)?),
                Target::User(user) => OwnedSubject::User(user_id(user)?),
            })
        })();
        let (subject, caller) = match (subject, caller_id(caller)) {
            (Ok(subject), Ok(caller)) => (subject, caller),
            (Err(e), _) | (_, Err(e)) => return done(Err(e)),
        };
        let now = now();
        let admission = match self.verifier.admit(client.as_ref(), now) {
            Ok(admission) => admission,
            Err(refusal) => return done(decision(refusal)),
        };
        // Unknown serials answered like wrong codes: then no answer says how many attempts
        // are left either, or a count that never goes down would give them away.
        let hide_attempts = self.verifier.policy().unknown_as_rejected;
        let (verifier, asked) = (Arc::clone(&self.verifier), subject.clone());
        self.verifier
            .verify_then(subject, code, now, caller, move |result| {
                admission.settle(result.as_ref().ok());
                let answer = result.map_err(ServiceError::from).and_then(decision);
                done(answer.map(|d| match named(d, &verifier, &asked) {
                    Decision::Rejected { .. } if hide_attempts => Decision::Rejected {
                        attempts_left: None,
                    },
                    other => other,
                }));
            });
    }

    /// Every store runs submitted work on threads of its own (or, in memory, in place
    /// without I/O), so a verification never blocks the caller.
    fn verifies_in_background(&self) -> bool {
        true
    }

    fn verify(&self, target: &Target, code: &Code, caller: &str) -> Result<Decision, ServiceError> {
        let caller = caller_id(caller)?;
        let subject = match target {
            Target::Token(serial) => OwnedSubject::Token(token_id(serial)?),
            Target::User(user) => OwnedSubject::User(user_id(user)?),
        };
        let outcome = self
            .verifier
            .verify(subject.as_subject(), code, now(), &caller)?;
        Ok(named(decision(outcome)?, &self.verifier, &subject))
    }

    fn enroll(
        &self,
        serial: &str,
        enrollment: &Enrollment,
        caller: &str,
    ) -> Result<TokenView, ServiceError> {
        let id = token_id(serial)?;
        let lib = Self::lib_enrollment(id.clone(), enrollment)?;
        self.verifier
            .enroll(std::slice::from_ref(&lib), now(), &caller_id(caller)?)
            .map_err(storable)?;
        self.info(&id)
    }

    fn import_pskc(
        &self,
        pskc: &str,
        preshared_key: Option<&[u8]>,
        caller: &str,
    ) -> Result<ImportReport, ServiceError> {
        self.import_pskc_with(pskc, preshared_key, false, caller)
    }

    fn show(&self, serial: &str) -> Result<TokenView, ServiceError> {
        self.info(&token_id(serial)?)
    }

    fn list(&self) -> Result<Vec<TokenView>, ServiceError> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        let mut after: Option<TokenId> = None;
        loop {
            let page = self.verifier.list(after.as_ref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|t| t.id.clone());
            all.extend(page.into_iter().map(|info| self.view_now(info)));
            if !full {
                return Ok(all);
            }
        }
    }

    fn list_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<TokenView>, ServiceError> {
        let after = after.map(token_id).transpose()?;
        Ok(self
            .verifier
            .list(after.as_ref(), limit.min(MAX_LIST_PAGE + 1))?
            .into_iter()
            .map(view)
            .collect())
    }

    fn activate(
        &self,
        serial: &str,
        user: &str,
        code: &Code,
        caller: &str,
    ) -> Result<Decision, ServiceError> {
        let (id, user) = (token_id(serial)?, user_id(user)?);
        match self
            .verifier
            .activate(&id, &user, code, now(), &caller_id(caller)?)?
        {
            Activation::Activated(a) => decision(Outcome::Accepted(a)),
            Activation::AlreadyBound => Err(ServiceError::Conflict {
                code: codes::ALREADY_ACTIVE,
                message: format!("token {id} is already bound to a user"),
            }),
            Activation::UserHasToken => Err(ServiceError::Conflict {
                code: codes::USER_TAKEN,
                message: format!("user {user} already has a token"),
            }),
            Activation::Refused(outcome) => Ok(named(
                decision(outcome)?,
                &self.verifier,
                &OwnedSubject::Token(id),
            )),
            _ => Err(ServiceError::Internal(
                "activation result unknown to the server".into(),
            )),
        }
    }

    fn resync(
        &self,
        serial: &str,
        first: &Code,
        second: &Code,
        caller: &str,
    ) -> Result<Decision, ServiceError> {
        let id = token_id(serial)?;
        let outcome = self
            .verifier
            .resync(&id, first, second, now(), &caller_id(caller)?)?;
        Ok(named(
            decision(outcome)?,
            &self.verifier,
            &OwnedSubject::Token(id),
        ))
    }

    fn unlock(&self, serial: &str, caller: &str) -> Result<TokenView, ServiceError> {
        let id = token_id(serial)?;
        self.verifier.unlock(&id, now(), &caller_id(caller)?)?;
        self.info(&id)
    }

    fn disable(&self, serial: &str, caller: &str) -> Result<TokenView, ServiceError> {
        let id = token_id(serial)?;
        self.verifier
            .set_enabled(&id, false, now(), &caller_id(caller)?)?;
        self.info(&id)
    }

    fn audit(
        &self,
        serial: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditLine>, ServiceError> {
        let id = token_id(serial)?;
        let entries = self
            .verifier
            .audit_page(&id, before, limit.min(MAX_AUDIT_PAGE + 1))?;
        if entries.is_empty() && before.is_none() {
            // Neither a trail nor a token: a typo deserves a 404, not an empty page.
            self.info(&id)?;
        }
        Ok(entries.into_iter().map(audit_line).collect())
    }

    fn audit_since(
        &self,
        since: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditLine>, ServiceError> {
        Ok(self
            .verifier
            .audit_since(UnixTime(since), after, limit.min(MAX_AUDIT_PAGE + 1))?
            .into_iter()
            .map(audit_line)
            .collect())
    }

    fn keyring_generation(&self) -> u64 {
        self.verifier.keyring_generation()
    }

    fn ping(&self) -> Result<(), ServiceError> {
        // One read round trip: the probe serial does not exist, which is fine.
        let probe = token_id("healthz-probe")?;
        self.verifier.show(Subject::Token(&probe))?;
        // A key in a hardware module that does not answer makes the server unable to verify
        // (this also retries the module, at most once a second).
        self.verifier
            .keyring()
            .check_current()
            .map_err(|e| ServiceError::KeyUnavailable(e.to_string()))
    }
}
