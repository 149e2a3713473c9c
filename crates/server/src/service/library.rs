//! [`Library`]: the `codereader-verifier` library with its store and keys, opened from the
//! server's options, and the operations the server and the offline commands call, in the
//! library's own types (what the server adds to them is in the parent module).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use codereader_otp::pskc::PreSharedKey;
use codereader_otp::{
    Algorithm, Code, Counter, Digits, KeyPolicy, KeyUri, Period, Secret, UnixTime,
};
use codereader_verifier::store::work;
use codereader_verifier::{
    Activation, AuditEntry, Caller, Claim, ClientBudget, ClientId, DEFAULT_KEY_CACHE, DeadLetter,
    Delivery, Durability, Enrollment, Event, FailureDelay, ImportReport, Kek, Keyring,
    NoticeAction, Outcome, OwnedSubject, PgStore, Policy, RotationReport, SqliteOptions,
    SqliteStore, Store, StoreAddress, Subject, TokenId, TokenInfo, TokenKind, TokenParams, Tx,
    UserId, Verifier, VerifyError,
};

use super::{
    EnrollInput, MAX_AUDIT_PAGE, MAX_LIST_PAGE, ServiceError, Verdict, invalid, storable, token_id,
};
use crate::error_code::ErrorCode;
use crate::key_source::{FileKeySource, KeyFiles};
use crate::webhooks::Bursts;

/// Choices passed to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryConfig {
    /// Consecutive failures that lock a token.
    pub max_failures: u32,
    /// SQLite: fsync every commit (`true`, the default) or only survive process crashes.
    pub sqlite_full_sync: bool,
    /// PostgreSQL: most connections open at once.
    pub pg_connections: usize,
    /// PostgreSQL: the longest wait for any one answer of the database (a statement, or a
    /// connection to one host); past it the call fails and its connection is abandoned.
    pub pg_deadline: std::time::Duration,
    /// SQLite: read connections kept open for reuse; at least the store calls that run at
    /// once, or reads keep opening and closing connections.
    pub sqlite_connections: usize,
    /// Prepared HMAC keys kept in memory for tokens verified lately (0: none). Saves opening
    /// the seal and the key schedule on every verification; the server holds a file
    /// key-encryption key in memory anyway. `None`: [`DEFAULT_KEY_CACHE`], or none when a key
    /// of the keyring is in a PKCS#11 module.
    pub key_cache: Option<usize>,
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
            pg_deadline: codereader_verifier::store::postgres::DEFAULT_DEADLINE,
            sqlite_connections: SqliteOptions::default().max_idle,
            key_cache: None,
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
    /// Clients announced as past their failure budget lately (`verify.rejected_burst`).
    bursts: Arc<Bursts>,
    /// How long a client's refusals stay one burst: its budget's window (`None`: no budget).
    burst_quiet: Option<u64>,
    /// Where the keyring comes from, when it comes from files that may change.
    key_files: Option<KeyFiles>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.verifier.fmt(f)
    }
}

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
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
        let in_module = files.kek_uri.is_some() || files.hsm.in_use();
        let config = LibraryConfig {
            key_cache: Some(config.key_cache.unwrap_or(if in_module {
                0
            } else {
                DEFAULT_KEY_CACHE
            })),
            ..config
        };
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
        let described = crate::key_source::describe(&keyring);
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
        crate::key_source::describe(&self.verifier.keyring())
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
                    crate::state_dir::create_private_dir(parent)?;
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
                PgStore::connect_with_deadline(url, config.pg_connections, config.pg_deadline)
                    .context("cannot open the PostgreSQL store")?,
            ),
        };
        let policy = Policy::default()
            .with_max_failures(config.max_failures)
            .with_failure_delay(config.failure_delay)
            .with_temporary_lock(config.temporary_lock)
            .with_unknown_as_rejected(config.unknown_as_rejected);
        let mut verifier = Verifier::new(store, keyring, policy)
            .with_key_cache(config.key_cache.unwrap_or(DEFAULT_KEY_CACHE))
            .with_client_budget(config.client_budget);
        if let Some(files) = &key_files {
            verifier = verifier.with_key_source(Box::new(FileKeySource::new(files.clone())));
        }
        Ok(Library {
            verifier: Arc::new(verifier),
            bursts: Arc::default(),
            burst_quiet: config.client_budget.map(|b| b.window_seconds.max(1)),
            key_files,
        })
    }

    /// Re-seals every seed under the current key.
    ///
    /// # Errors
    /// [`ServiceError::Store`] and the like; seeds that do not open are reported, not errors.
    pub fn rotate(&self, caller: &Caller) -> Result<RotationReport, ServiceError> {
        Ok(self.verifier.rotate(now(), caller)?)
    }

    fn enrollment(serial: TokenId, input: &EnrollInput) -> Result<Enrollment, ServiceError> {
        match input {
            EnrollInput::Uri(text) => {
                let uri = KeyUri::parse(text, KeyPolicy::Rfc4226)
                    .map_err(|e| invalid(ErrorCode::InvalidUri, e.to_string()))?;
                Ok(Enrollment::from_uri(serial, &uri))
            }
            EnrollInput::Params {
                hotp,
                secret_base32,
                algorithm,
                digits,
                period,
                counter,
            } => {
                let secret = Secret::from_base32(secret_base32, KeyPolicy::Rfc4226)
                    .map_err(|e| invalid(ErrorCode::InvalidSecret, e.to_string()))?;
                let algorithm: Algorithm = algorithm.parse().map_err(|_| {
                    invalid(
                        ErrorCode::InvalidParameters,
                        "`algorithm` is SHA1, SHA256 or SHA512",
                    )
                })?;
                let digits = Digits::new(*digits)
                    .map_err(|_| invalid(ErrorCode::InvalidParameters, "`digits` is 6, 7 or 8"))?;
                let kind = if *hotp {
                    TokenKind::Hotp
                } else {
                    TokenKind::Totp {
                        period: Period::new(*period).map_err(|_| {
                            invalid(ErrorCode::InvalidParameters, "`period` must be at least 1")
                        })?,
                        t0: UnixTime(0),
                    }
                };
                Ok(Enrollment {
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

    /// `info` as an operator sees it now: a temporary lock that still holds (which the store
    /// leaves out of `locked_at`, the lock following from the failures) shows as a lock
    /// since the last failure.
    fn as_shown(&self, mut info: TokenInfo) -> TokenInfo {
        let until = self.verifier.temporary_lock_until(&info.state);
        if until.is_some_and(|until| now() < until) {
            info.state.locked_at = info.state.last_failure_at;
        }
        info
    }

    fn info(&self, serial: &TokenId) -> Result<TokenInfo, ServiceError> {
        self.verifier
            .show(Subject::Token(serial))?
            .map(|info| self.as_shown(info))
            .ok_or_else(|| ServiceError::NotFound {
                serial: serial.to_string(),
            })
    }

    /// `outcome` as an answer tells it: a replay names its token like an acceptance does
    /// (the serial asked for, or the token bound to the user asked for: one more read, only
    /// for replays by user).
    fn verdict(verifier: &Verifier, outcome: Outcome, subject: Subject<'_>) -> Verdict {
        let replayed = match (&outcome, subject) {
            (Outcome::Replayed, Subject::Token(id)) => Some(id.clone()),
            (Outcome::Replayed, Subject::User(_)) => {
                verifier.show(subject).ok().flatten().map(|info| info.id)
            }
            _ => None,
        };
        Verdict {
            outcome,
            replayed,
            hide_attempts: false,
        }
    }

    /// Verifies `code` for `subject` now, on behalf of `client` (the end user's address as
    /// the backend saw it, say), and hands the verdict to `done`. A client that has spent its
    /// failure budget gets [`Outcome::RateLimited`] without its code being checked.
    ///
    /// The library runs the verification where its store writes and calls `done` once what
    /// it wrote is committed (on a thread of the store's: SQLite's writer, PostgreSQL's
    /// workers), so an async caller awaits `done` without blocking a thread of its own.
    pub fn verify_then(
        &self,
        subject: OwnedSubject,
        code: Code,
        caller: Caller,
        client: Option<&ClientId>,
        done: impl FnOnce(Result<Verdict, ServiceError>) + Send + 'static,
    ) {
        let now = now();
        // Unknown serials answered like wrong codes: then no answer says how many attempts
        // are left either, or a count that never goes down would give them away.
        let hide_attempts = self.verifier.policy().unknown_as_rejected;
        let (answer, asked) = (Arc::clone(&self.verifier), subject.clone());
        // A refused client's first refusal in a while is a `verify.rejected_burst` event.
        let burst = match (client, self.burst_quiet) {
            (Some(client), Some(quiet)) => Some((
                client.clone(),
                quiet,
                Arc::clone(&self.bursts),
                caller.clone(),
            )),
            _ => None,
        };
        self.verifier
            .verify_from_then(subject, code, now, caller, client, move |result| {
                if let (Ok(Outcome::RateLimited { .. }), Some((client, quiet, bursts, caller))) =
                    (&result, burst)
                {
                    if bursts.starts(client.as_str(), now.0, quiet) {
                        // Queued, not awaited: the refusal answers at once either way. Every
                        // store's `submit` only queues (or, in memory, runs in place with no
                        // lock held), so submitting from this callback cannot deadlock.
                        let line = Verifier::notice(
                            NoticeAction::RejectedBurst,
                            client.as_str(),
                            now,
                            &caller,
                        );
                        answer
                            .store()
                            .submit(work(move |tx: &dyn Tx| tx.append_audit(&line), |_| {}));
                    }
                }
                done(result.map_err(ServiceError::from).map(|outcome| Verdict {
                    hide_attempts,
                    ..Self::verdict(&answer, outcome, asked.as_subject())
                }));
            });
    }

    /// Enrols a new token with `serial`; returns it as stored.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`], [`ServiceError::Conflict`] (serial taken), [`ServiceError::Store`].
    pub fn enroll(
        &self,
        serial: &TokenId,
        input: &EnrollInput,
        caller: &Caller,
    ) -> Result<TokenInfo, ServiceError> {
        let lib = Self::enrollment(serial.clone(), input)?;
        self.verifier
            .enroll(std::slice::from_ref(&lib), now(), caller)
            .map_err(storable)?;
        self.info(serial)
    }

    /// Imports the keys of a PSKC document; `preshared_key` opens encrypted ones. With
    /// `allow_short`, secrets shorter than 128 bits (RFC 4226 asks for at least that) are
    /// accepted, as some legacy tokens need.
    ///
    /// # Errors
    /// [`ServiceError::Invalid`] when the document cannot be read at all, or no key in it is
    /// usable; [`ServiceError::Conflict`]; [`ServiceError::Store`].
    pub fn import_pskc(
        &self,
        pskc: &str,
        preshared_key: Option<&[u8]>,
        allow_short: bool,
        caller: &Caller,
    ) -> Result<ImportReport, ServiceError> {
        let psk = match preshared_key {
            Some(bytes) => Some(PreSharedKey::new(<[u8; 16]>::try_from(bytes).map_err(
                |_| {
                    invalid(
                        ErrorCode::InvalidRequest,
                        "the pre-shared key must be 16 bytes (32 hex digits)",
                    )
                },
            )?)),
            None => None,
        };
        self.verifier
            .import_pskc(
                pskc.as_bytes(),
                psk.as_ref(),
                if allow_short {
                    KeyPolicy::AllowLegacyShort
                } else {
                    KeyPolicy::Rfc4226
                },
                now(),
                caller,
            )
            .map_err(storable)
    }

    /// The token with `serial`, as shown now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Store`].
    pub fn show(&self, serial: &TokenId) -> Result<TokenInfo, ServiceError> {
        self.info(serial)
    }

    /// All tokens, by serial, as shown now.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn list(&self) -> Result<Vec<TokenInfo>, ServiceError> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        let mut after: Option<TokenId> = None;
        loop {
            let page = self.verifier.list(after.as_ref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|t| t.id.clone());
            all.extend(page.into_iter().map(|info| self.as_shown(info)));
            if !full {
                return Ok(all);
            }
        }
    }

    /// Up to `limit` tokens (at most [`MAX_LIST_PAGE`] + 1) with serials after `after`, in
    /// serial order, as stored.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn list_page(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenInfo>, ServiceError> {
        Ok(self.verifier.list(after, limit.min(MAX_LIST_PAGE + 1))?)
    }

    /// Binds the unassigned token `serial` to `user` if `code` is valid for it.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Conflict`] (already bound, user taken),
    /// [`ServiceError::Invalid`], [`ServiceError::Store`].
    pub fn activate(
        &self,
        serial: &TokenId,
        user: &UserId,
        code: &Code,
        caller: &Caller,
    ) -> Result<Verdict, ServiceError> {
        match self.verifier.activate(serial, user, code, now(), caller)? {
            Activation::Activated(a) => Ok(Verdict::new(Outcome::Accepted(a))),
            Activation::AlreadyBound => Err(ServiceError::Conflict {
                code: ErrorCode::AlreadyActive,
                message: format!("token {serial} is already bound to a user"),
            }),
            Activation::UserHasToken => Err(ServiceError::Conflict {
                code: ErrorCode::UserTaken,
                message: format!("user {user} already has a token"),
            }),
            Activation::Refused(outcome) => Ok(Self::verdict(
                &self.verifier,
                outcome,
                Subject::Token(serial),
            )),
            _ => Err(ServiceError::Internal(
                "activation result unknown to the server".into(),
            )),
        }
    }

    /// Re-establishes the counter or drift from two consecutive codes.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Invalid`], [`ServiceError::Store`].
    pub fn resync(
        &self,
        serial: &TokenId,
        first: &Code,
        second: &Code,
        caller: &Caller,
    ) -> Result<Verdict, ServiceError> {
        let outcome = self.verifier.resync(serial, first, second, now(), caller)?;
        Ok(Self::verdict(
            &self.verifier,
            outcome,
            Subject::Token(serial),
        ))
    }

    /// Clears the lock and failures of `serial`; returns it as shown now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Store`].
    pub fn unlock(&self, serial: &TokenId, caller: &Caller) -> Result<TokenInfo, ServiceError> {
        self.verifier.unlock(serial, now(), caller)?;
        self.info(serial)
    }

    /// Disables `serial`: it accepts nothing any more. Returns it as shown now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Store`].
    pub fn disable(&self, serial: &TokenId, caller: &Caller) -> Result<TokenInfo, ServiceError> {
        self.verifier.set_enabled(serial, false, now(), caller)?;
        self.info(serial)
    }

    /// Up to `limit` events after the event `after`, oldest first.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, ServiceError> {
        Ok(self.verifier.events_after(after, limit)?)
    }

    /// Takes or renews the lease on delivering to a webhook destination.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, ServiceError> {
        Ok(self
            .verifier
            .claim_delivery(destination, holder, now_ms, lease_ms)?)
    }

    /// Records where delivery to a webhook destination stands.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: Delivery,
        dead: Option<DeadLetter>,
    ) -> Result<bool, ServiceError> {
        Ok(self
            .verifier
            .settle_delivery(destination, holder, delivery, dead)?)
    }

    /// Records an API key's revocation as an event.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn record_revoked_key(&self, name: &str, caller: &Caller) -> Result<(), ServiceError> {
        Ok(self
            .verifier
            .record_event(NoticeAction::ApiKeyRevoked, name, now(), caller)?)
    }

    /// Up to `limit` (at most [`MAX_AUDIT_PAGE`] + 1) audit lines of `serial` older than the
    /// line `before`, newest first.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] for a serial with neither a token nor a trail;
    /// [`ServiceError::Store`].
    pub fn audit(
        &self,
        serial: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        let entries = self
            .verifier
            .audit_page(serial, before, limit.min(MAX_AUDIT_PAGE + 1))?;
        if entries.is_empty() && before.is_none() {
            // Neither a trail nor a token: a typo deserves a 404, not an empty page.
            self.info(serial)?;
        }
        Ok(entries)
    }

    /// Up to `limit` (at most [`MAX_AUDIT_PAGE`] + 1) audit lines of every token at `since`
    /// or later, after the line `after`, oldest first.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        Ok(self
            .verifier
            .audit_since(since, after, limit.min(MAX_AUDIT_PAGE + 1))?)
    }

    /// Changes whenever the keyring is replaced (reloaded after a rotation), so that seal
    /// errors met under an older keyring stop counting against health.
    pub fn keyring_generation(&self) -> u64 {
        self.verifier.keyring_generation()
    }

    /// Whether the store answers and the current key can be used (for `/healthz`).
    ///
    /// # Errors
    /// [`ServiceError::Store`], [`ServiceError::KeyUnavailable`].
    pub fn ping(&self) -> Result<(), ServiceError> {
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
