//! The rules: windows, drift, replay, lockout, delays, resync and activation, applied to one
//! token inside one unit of work.
//!
//! Every operation reads the token, decides, and then asks the store for one conditional
//! update; nothing is held between the read and the write. If another caller changed the token
//! in between, the update does not apply and the operation re-reads to say why (replayed,
//! locked, disabled), so concurrent callers never both win.
//!
//! This module exists apart from [`crate::Verifier`] because [`Rules`] is what a unit of work
//! carries to where the store writes (SQLite's writer thread, a PostgreSQL worker, in place
//! for memory): the keyring, the policy and the key cache, and no store. The types the rules
//! speak in (their error, the subject of a verification, an enrollment to seal, the key
//! source) live here too, so the arrow goes one way: `operations` uses `rules`, never back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use codereader_otp::pskc;
use codereader_otp::{Code, Counter, Hotp, KeyPolicy, KeyUri, OtpKind, Secret, TimeError};
use codereader_otp::{TimeStep, UnixTime};

use crate::keycache::{KeyCache, Memo};
use crate::keyring::Keyring;
use crate::outcome::{Accepted, Matched, Outcome};
use crate::policy::Policy;
use crate::scan::{Scan, scan, scan_pair};
use crate::seal::{SealError, SealedSeed};
use crate::store::{
    Advance, AuditAction, AuditEvent, AuditOutcome, NewToken, Reads, StoreError, TokenRecord, Tx,
};
use crate::token::{Caller, IdError, TokenId, TokenKind, TokenParams, TokenState, UserId};

/// Why an operation could not be carried out. Outcomes of verification (a wrong code, a locked
/// token) are not errors: see [`Outcome`]. Never carries codes or seeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A seed could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The time given is before the token's T0 (a broken clock).
    #[error("the time is before the token's start time: {0}")]
    Time(#[from] TimeError),
    /// An administrative operation named a token that does not exist.
    #[error("no token {token}")]
    UnknownToken {
        /// The token.
        token: TokenId,
    },
    /// An identifier taken from an import is not acceptable.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The PSKC document as a whole is unusable.
    #[error("PSKC: {0}")]
    Pskc(#[from] pskc::PskcError),
}

/// What a verification is about: a token by serial, or the token bound to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A token by serial.
    Token(&'a TokenId),
    /// The token bound to a user.
    User(&'a UserId),
}

/// A [`Subject`] that owns its id, for work that outlives the caller's borrow
/// ([`Verifier::verify_then`](crate::Verifier::verify_then)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedSubject {
    /// A token by serial.
    Token(TokenId),
    /// The token bound to a user.
    User(UserId),
}

impl From<Subject<'_>> for OwnedSubject {
    fn from(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Token(t) => OwnedSubject::Token(t.clone()),
            Subject::User(u) => OwnedSubject::User(u.clone()),
        }
    }
}

impl OwnedSubject {
    /// Borrowed, as the synchronous calls take it.
    pub fn as_subject(&self) -> Subject<'_> {
        match self {
            OwnedSubject::Token(t) => Subject::Token(t),
            OwnedSubject::User(u) => Subject::User(u),
        }
    }
}

/// The result of [`Verifier::activate`](crate::Verifier::activate).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// The code was right; the token is now bound to the user.
    Activated(Accepted),
    /// The token is already bound to a user (nothing was checked or used).
    AlreadyBound,
    /// The user already has a token (nothing was checked or used).
    UserHasToken,
    /// The code was not accepted; the outcome says why (it counts like any verification).
    Refused(Outcome),
}

/// A token to enroll from parameters.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Its serial.
    pub id: TokenId,
    /// How it makes codes.
    pub params: TokenParams,
    /// The seed (sealed before it reaches the store).
    pub secret: Secret,
    /// HOTP: the first counter the token will use. TOTP: ignored (any current step is fine).
    pub counter: Counter,
}

impl Enrollment {
    /// An enrollment from an otpauth URI (TOTP with T0 = 0).
    pub fn from_uri(id: TokenId, uri: &KeyUri) -> Self {
        let (kind, counter) = Self::kind_of(uri.kind());
        Enrollment {
            id,
            params: TokenParams {
                kind,
                algorithm: uri.algorithm(),
                digits: uri.digits(),
            },
            secret: uri.secret().clone(),
            counter,
        }
    }

    /// The kind and first counter of a parsed key (an otpauth URI's or a PSKC file's): TOTP
    /// with T0 = 0 and counter 0 ([`OtpKind`] carries no T0), HOTP from the key's counter.
    pub(crate) fn kind_of(kind: OtpKind) -> (TokenKind, Counter) {
        match kind {
            OtpKind::Totp { period } => (
                TokenKind::Totp {
                    period,
                    t0: UnixTime(0),
                },
                Counter(0),
            ),
            OtpKind::Hotp { counter } => (TokenKind::Hotp, counter),
        }
    }
}

/// Where a running verifier gets a newer keyring when a seed names a key it lacks: after a
/// rotation another process re-sealed seeds under a key this one has not loaded yet. The
/// server implements it by re-reading its keyring file.
pub trait KeySource: Send + Sync {
    /// A keyring to use from now on, or `None` when there is nothing newer (the source may
    /// refuse to look again too soon: it is called on the verification path).
    fn reload(&self) -> Option<Keyring>;
}

/// Everything of the verifier but its store and client budgets: what a unit of work takes
/// with it to run where the store writes.
pub(crate) struct Rules {
    pub(crate) keyring: RwLock<Arc<Keyring>>,
    /// How many times the keyring was replaced.
    pub(crate) keyring_generation: AtomicU64,
    pub(crate) source: Option<Arc<dyn KeySource>>,
    /// Held while the key source reloads.
    pub(crate) reloading: Mutex<()>,
    pub(crate) policy: Policy,
    pub(crate) keys: Option<Arc<KeyCache>>,
}

/// A copy for a builder method called while work still holds the original (the two share
/// key source and key cache, and the copy starts from the keyring in use).
impl Clone for Rules {
    fn clone(&self) -> Self {
        Rules {
            keyring: RwLock::new(self.keyring()),
            keyring_generation: AtomicU64::new(self.keyring_generation.load(Ordering::Relaxed)),
            source: self.source.clone(),
            reloading: Mutex::new(()),
            policy: self.policy,
            keys: self.keys.clone(),
        }
    }
}

/// The window a verification scans, and how to turn a match into drift.
struct Window {
    lo: u64,
    hi: u64,
    /// The value drift is measured from: the current step (TOTP) or `next` (HOTP).
    origin: u64,
}

fn drift_of(value: u64, origin: u64) -> i64 {
    let d = i128::from(value) - i128::from(origin);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

fn clamp(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// The generator for a token and, for TOTP, the current step.
struct Generator {
    hotp: Hotp,
    current: Option<u64>,
}

impl Rules {
    /// The failure count the store locks at: the policy's, or never when locks are
    /// temporary (the gate then decides from the count and the time of the last failure).
    fn store_max_failures(&self) -> u32 {
        if self.policy.temporary_lock.is_some() {
            u32::MAX
        } else {
            self.policy.max_failures
        }
    }

    /// Under [`Policy::temporary_lock`], until when the lock of a token in `state` lasts
    /// (which may be past already); `None` when it has no temporary lock. A token locked
    /// this way keeps `locked_at` empty: the lock follows from its failures.
    pub(crate) fn temporary_lock_until(&self, state: &TokenState) -> Option<UnixTime> {
        let lock = self.policy.temporary_lock?;
        let last = state.last_failure_at?;
        let over = state.failures.checked_sub(self.policy.max_failures)?;
        Some(UnixTime(
            last.0.saturating_add(lock.after(over.saturating_add(1))),
        ))
    }

    /// The keyring in use.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Uses `keyring` from now on (after the keyring file changed). Operations already
    /// running finish with the keyring they started with.
    pub(crate) fn replace_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
        self.keyring_generation.fetch_add(1, Ordering::Relaxed);
        // Keys prepared under the old keyring go with it: a key withdrawn from the keyring
        // (say, one feared compromised) must not go on verifying through the cache.
        if let Some(keys) = &self.keys {
            keys.clear();
        }
    }

    /// Opens a seed, asking the key source for a newer keyring if the seed names a key this
    /// one lacks. Reloads are serialized: callers that met the same new key at once wait for
    /// the first one's reload and use its keyring rather than all failing or all reading.
    fn open_seed(
        &self,
        ring: &Keyring,
        token: &TokenId,
        seed: &SealedSeed,
    ) -> Result<Secret, SealError> {
        let result = ring.open(token, seed);
        let (Err(SealError::UnknownKey { .. }), Some(source)) = (&result, &self.source) else {
            return result;
        };
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.keyring();
        if current.contains(&seed.key_id) {
            return current.open(token, seed);
        }
        if let Some(newer) = source.reload() {
            self.replace_keyring(newer);
        }
        self.keyring().open(token, seed)
    }

    pub(crate) fn audit(
        token: Option<&TokenId>,
        user: Option<&UserId>,
        action: AuditAction,
        outcome: AuditOutcome,
        now: UnixTime,
        caller: &Caller,
    ) -> AuditEvent {
        AuditEvent {
            token: token.cloned(),
            user: user.cloned(),
            action,
            outcome,
            at: now,
            caller: caller.clone(),
        }
    }

    pub(crate) fn record(
        &self,
        store: &dyn Reads,
        subject: Subject<'_>,
    ) -> Result<Option<TokenRecord>, VerifyError> {
        Ok(match subject {
            Subject::Token(id) => store.token(id)?,
            Subject::User(user) => store.token_of_user(user)?,
        })
    }

    /// The prepared HMAC key of a token: from the cache if it holds one made from this very
    /// seal, else opened and prepared (and cached, if there is a cache).
    fn hotp(&self, record: &TokenRecord) -> Result<Hotp, VerifyError> {
        let p = record.params;
        if let Some(hotp) = self
            .keys
            .as_ref()
            .and_then(|k| k.get(&record.id, &record.seed, p))
        {
            return Ok(hotp);
        }
        let hotp = self.open_hotp(record)?;
        if let Some(keys) = &self.keys {
            keys.put(&record.id, &record.seed, p, hotp.clone(), Memo::default());
        }
        Ok(hotp)
    }

    /// Opens a token's seal and prepares its HMAC key (no cache).
    fn open_hotp(&self, record: &TokenRecord) -> Result<Hotp, VerifyError> {
        let p = record.params;
        let secret = self.open_seed(&self.keyring(), &record.id, &record.seed)?;
        Ok(Hotp::new(&secret, p.algorithm, p.digits))
    }

    /// Scans the verification window `w` of a token whose first unused value is `next`
    /// ([`scan`]), with the codes its key-cache entry remembers from its last scan when it
    /// has one made from this very seal ([`Memo::scan`]: usually one new HMAC instead of the
    /// whole window), and remembers the window's codes for the next scan.
    ///
    /// Under [`Policy::unknown_as_rejected`] no codes are remembered: an unknown serial is
    /// answered after computing a whole window ([`Rules::as_if_rejected`]), so a known
    /// token's window must cost as much.
    fn scan_window(
        &self,
        record: &TokenRecord,
        code: &Code,
        w: &Window,
        next: u64,
    ) -> Result<Scan, VerifyError> {
        let p = record.params;
        let keys = self.keys.as_ref();
        if self.policy.unknown_as_rejected || keys.is_none() {
            return Ok(scan(&self.hotp(record)?, code, w.lo, w.hi, next));
        }
        let remembered = keys.and_then(|k| {
            k.with(&record.id, &record.seed, p, |hotp, memo| {
                memo.scan(hotp, code, w.lo, w.hi, next)
            })
        });
        if let Some(found) = remembered {
            return Ok(found);
        }
        let hotp = self.open_hotp(record)?;
        let mut memo = Memo::default();
        let found = memo.scan(&hotp, code, w.lo, w.hi, next);
        if let Some(keys) = keys {
            keys.put(&record.id, &record.seed, p, hotp, memo);
        }
        Ok(found)
    }

    /// The current step of a TOTP token (`None` for HOTP). TOTP is HOTP over the step, so
    /// the step is computed here (checked, like `Totp::step_at`) and one HMAC key serves.
    fn current_step(record: &TokenRecord, now: UnixTime) -> Result<Option<u64>, VerifyError> {
        Ok(match record.params.kind {
            TokenKind::Totp { period, t0 } => {
                let elapsed = now.0.checked_sub(t0.0).ok_or(TimeError::BeforeT0 {
                    time: now.0,
                    t0: t0.0,
                })?;
                Some(elapsed / period.seconds())
            }
            TokenKind::Hotp => None,
        })
    }

    fn generator(&self, record: &TokenRecord, now: UnixTime) -> Result<Generator, VerifyError> {
        Ok(Generator {
            current: Self::current_step(record, now)?,
            hotp: self.hotp(record)?,
        })
    }

    /// The verification window: TOTP, `totp_window` steps either side of the current step
    /// (`current`) moved by the remembered drift; HOTP (`None`), from the last used counter
    /// (to recognise a replay of the last code) to `hotp_look_ahead` past the next one.
    fn window(&self, current: Option<u64>, state: &TokenState) -> Window {
        match current {
            Some(current) => {
                let centre = i128::from(current) + i128::from(state.drift);
                let w = i128::from(self.policy.totp_window);
                Window {
                    lo: clamp(centre - w),
                    hi: clamp(centre + w),
                    origin: current,
                }
            }
            None => Window {
                lo: state.next.saturating_sub(1),
                hi: state
                    .next
                    .saturating_add(u64::from(self.policy.hotp_look_ahead)),
                origin: state.next,
            },
        }
    }

    fn matched(record: &TokenRecord, value: u64) -> Matched {
        match record.params.kind {
            TokenKind::Totp { .. } => Matched::Step(TimeStep(value)),
            TokenKind::Hotp => Matched::Counter(Counter(value)),
        }
    }

    /// When a locked token unlocks by itself, if the policy allows that.
    fn unlock_time(&self, locked_at: UnixTime) -> Option<UnixTime> {
        self.policy
            .auto_unlock_after
            .map(|s| UnixTime(locked_at.0.saturating_add(s)))
    }

    /// The checks before any code is looked at: enabled, locked (with automatic unlock),
    /// growing delay. `None` means go ahead with `state` (possibly just unlocked).
    fn gate(
        &self,
        store: &dyn Tx,
        record: &mut TokenRecord,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Option<Outcome>, VerifyError> {
        let state = &mut record.state;
        if !state.enabled {
            return Ok(Some(Outcome::Disabled));
        }
        if let Some(until) = self.temporary_lock_until(state) {
            if now < until {
                return Ok(Some(Outcome::Locked { until: Some(until) }));
            }
        }
        let locked_at = state.locked_at.or_else(|| {
            if self.policy.temporary_lock.is_some() {
                return None;
            }
            // A policy lowered since the failures were counted: treat as locked now.
            (state.failures >= self.policy.max_failures).then_some(state.last_failure_at?)
        });
        if let Some(at) = locked_at {
            match self.unlock_time(at) {
                Some(until) if now >= until => {
                    let audit = Self::audit(
                        Some(&record.id),
                        None,
                        AuditAction::AutoUnlock,
                        AuditOutcome::Ok,
                        now,
                        caller,
                    );
                    // Only the caller whose compare-and-set wins writes the unlock; either
                    // way the token is unlocked now.
                    store.unlock(&record.id, state.locked_at, &audit)?;
                    state.locked_at = None;
                    state.failures = 0;
                    state.last_failure_at = None;
                }
                until => return Ok(Some(Outcome::Locked { until })),
            }
        }
        if let (Some(delay), Some(last)) = (self.policy.failure_delay, state.last_failure_at) {
            let retry_at = UnixTime(last.0.saturating_add(delay.after(state.failures)));
            if state.failures > 0 && now < retry_at {
                return Ok(Some(Outcome::TooSoon { retry_at }));
            }
        }
        Ok(None)
    }

    /// After a compare-and-set did not apply: why not, from the current row.
    fn lost_race(&self, store: &dyn Reads, id: &TokenId) -> Result<Outcome, VerifyError> {
        Ok(match store.token(id)? {
            None => Outcome::UnknownToken,
            Some(t) if !t.state.enabled => Outcome::Disabled,
            Some(t) if t.state.locked_at.is_some() => Outcome::Locked {
                until: t.state.locked_at.and_then(|at| self.unlock_time(at)),
            },
            Some(_) => Outcome::Replayed,
        })
    }

    /// Counts a failure and says how many attempts are left.
    fn fail(
        &self,
        store: &dyn Tx,
        record: &TokenRecord,
        action: AuditAction,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            action,
            AuditOutcome::Rejected,
            now,
            caller,
        );
        // Operators look for the moment a token locked; the store writes it in the trail
        // (after the `rejected` line, in the same change) when failures reach the policy's.
        let lock = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            AuditAction::Lock,
            if self.policy.temporary_lock.is_some() {
                AuditOutcome::Temporary
            } else {
                AuditOutcome::Ok
            },
            now,
            caller,
        );
        let lock = (self.policy.max_failures, &lock);
        match store.record_failure(&record.id, now, self.store_max_failures(), &audit, lock)? {
            Some(failures) => {
                let attempts_left = self.policy.max_failures.saturating_sub(failures);
                Ok(Outcome::Rejected { attempts_left })
            }
            None => {
                let outcome = self.lost_race(store, &record.id)?;
                self.log(store, record, action, &outcome, now, caller)?;
                Ok(outcome)
            }
        }
    }

    fn log(
        &self,
        store: &dyn Tx,
        record: &TokenRecord,
        action: AuditAction,
        outcome: &Outcome,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<(), VerifyError> {
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            action,
            AuditOutcome::from(outcome),
            now,
            caller,
        );
        Ok(store.append_audit(&audit)?)
    }

    /// Verifies on the token as the store last saw it ([`Tx::token_seen`]: one round trip
    /// less on PostgreSQL) and, if the row had changed since ([`StoreError::Stale`]: nothing
    /// was written), once more on a fresh read.
    pub(crate) fn verify_on(
        &self,
        store: &dyn Tx,
        subject: Subject<'_>,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        match self.verify_once(store, subject, code, now, caller, true) {
            Err(VerifyError::Store(StoreError::Stale)) => {
                self.verify_once(store, subject, code, now, caller, false)
            }
            result => result,
        }
    }

    fn verify_once(
        &self,
        store: &dyn Tx,
        subject: Subject<'_>,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
        seen: bool,
    ) -> Result<Outcome, VerifyError> {
        let record = match subject {
            Subject::Token(id) if seen => store.token_seen(id)?,
            _ => self.record(store, subject)?,
        };
        let Some(record) = record else {
            let (token, user) = match subject {
                Subject::Token(t) => (Some(t), None),
                Subject::User(u) => (None, Some(u)),
            };
            let outcome = Outcome::UnknownToken;
            let audit = Self::audit(
                token,
                user,
                AuditAction::Verify,
                AuditOutcome::from(&outcome),
                now,
                caller,
            );
            store.append_audit(&audit)?;
            if self.policy.unknown_as_rejected {
                return Ok(self.as_if_rejected(code));
            }
            return Ok(outcome);
        };
        self.check(store, record, code, None, now, caller)
    }

    /// The answer to an unknown serial under [`Policy::unknown_as_rejected`]: a wrong code's,
    /// after as many code computations as a HOTP token's window (with a throw-away key), so
    /// that neither the answer nor its time tells that no such token exists.
    fn as_if_rejected(&self, code: &Code) -> Outcome {
        let digits = u32::try_from(code.as_str().len())
            .ok()
            .and_then(|n| codereader_otp::Digits::new(n).ok())
            .unwrap_or(codereader_otp::Digits::SIX);
        if let Ok(secret) = Secret::new(vec![0x5a; 20], KeyPolicy::Rfc4226) {
            let hotp = Hotp::new(&secret, codereader_otp::Algorithm::Sha1, digits);
            let hi = 1 + u64::from(self.policy.hotp_look_ahead);
            std::hint::black_box(scan(&hotp, code, 0, hi, 1));
        }
        Outcome::Rejected {
            attempts_left: self.policy.max_failures.saturating_sub(1),
        }
    }

    fn check(
        &self,
        store: &dyn Tx,
        mut record: TokenRecord,
        code: &Code,
        bind: Option<&UserId>,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let action = if bind.is_some() {
            AuditAction::Activate
        } else {
            AuditAction::Verify
        };
        if let Some(outcome) = self.gate(store, &mut record, now, caller)? {
            self.log(store, &record, action, &outcome, now, caller)?;
            return Ok(outcome);
        }
        let w = self.window(Self::current_step(&record, now)?, &record.state);
        match self.scan_window(&record, code, &w, record.state.next)? {
            Scan::Fresh(value) => {
                let drift = drift_of(value, w.origin);
                let advance = Advance {
                    token: record.id.clone(),
                    lowest: value,
                    accepted: value,
                    drift,
                    max_failures: self.store_max_failures(),
                    unlock: false,
                    bind: bind.cloned(),
                };
                let audit = Self::audit(
                    Some(&record.id),
                    bind.or(record.user.as_ref()),
                    action,
                    AuditOutcome::Accepted,
                    now,
                    caller,
                );
                if store.advance(&advance, &audit)? {
                    Ok(Outcome::Accepted(Accepted {
                        token: record.id.clone(),
                        matched: Self::matched(&record, value),
                        drift,
                    }))
                } else {
                    let outcome = self.lost_race(store, &record.id)?;
                    self.log(store, &record, action, &outcome, now, caller)?;
                    Ok(outcome)
                }
            }
            Scan::Stale => {
                let outcome = Outcome::Replayed;
                self.log(store, &record, action, &outcome, now, caller)?;
                Ok(outcome)
            }
            Scan::Miss => self.fail(store, &record, action, now, caller),
        }
    }

    /// [`Verifier::activate`](crate::Verifier::activate), in a unit of work.
    pub(crate) fn activate(
        &self,
        store: &dyn Tx,
        token: &TokenId,
        user: &UserId,
        code: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Activation, VerifyError> {
        let record = store
            .token(token)?
            .ok_or_else(|| VerifyError::UnknownToken {
                token: token.clone(),
            })?;
        if record.user.is_some() {
            store.append_audit(&Self::audit(
                Some(token),
                Some(user),
                AuditAction::Activate,
                AuditOutcome::AlreadyBound,
                now,
                caller,
            ))?;
            return Ok(Activation::AlreadyBound);
        }
        if store.token_of_user(user)?.is_some() {
            store.append_audit(&Self::audit(
                Some(token),
                Some(user),
                AuditAction::Activate,
                AuditOutcome::UserHasToken,
                now,
                caller,
            ))?;
            return Ok(Activation::UserHasToken);
        }
        match self.check(store, record, code, Some(user), now, caller) {
            Ok(Outcome::Accepted(a)) => Ok(Activation::Activated(a)),
            Ok(Outcome::Replayed) => {
                // The compare-and-set also refuses a token someone else just bound.
                match store.token(token)? {
                    Some(t) if t.user.is_some() => Ok(Activation::AlreadyBound),
                    _ => Ok(Activation::Refused(Outcome::Replayed)),
                }
            }
            Ok(other) => Ok(Activation::Refused(other)),
            Err(VerifyError::Store(StoreError::UserTaken { .. })) => Ok(Activation::UserHasToken),
            Err(e) => Err(e),
        }
    }

    /// [`Verifier::resync`](crate::Verifier::resync), in a unit of work.
    pub(crate) fn resync(
        &self,
        store: &dyn Tx,
        token: &TokenId,
        first: &Code,
        second: &Code,
        now: UnixTime,
        caller: &Caller,
    ) -> Result<Outcome, VerifyError> {
        let record = store
            .token(token)?
            .ok_or_else(|| VerifyError::UnknownToken {
                token: token.clone(),
            })?;
        if !record.state.enabled {
            let outcome = Outcome::Disabled;
            self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
            return Ok(outcome);
        }
        let g = self.generator(&record, now)?;
        let (lo, hi, origin) = match g.current {
            Some(current) => {
                let w = i128::from(self.policy.resync_totp_window);
                (
                    clamp(i128::from(current) - w),
                    clamp(i128::from(current) + w),
                    current,
                )
            }
            None => (
                record.state.next,
                record
                    .state
                    .next
                    .saturating_add(u64::from(self.policy.resync_hotp_look_ahead)),
                record.state.next,
            ),
        };
        let Some(value) = scan_pair(&g.hotp, first, second, lo, hi, record.state.next) else {
            if record.state.locked_at.is_some() {
                let outcome = Outcome::Locked {
                    until: record.state.locked_at.and_then(|at| self.unlock_time(at)),
                };
                self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
                return Ok(outcome);
            }
            return self.fail(store, &record, AuditAction::Resync, now, caller);
        };
        let accepted = value.saturating_add(1);
        let drift = drift_of(accepted, origin);
        let advance = Advance {
            token: record.id.clone(),
            lowest: value,
            accepted,
            drift,
            max_failures: self.store_max_failures(),
            unlock: true,
            bind: None,
        };
        let audit = Self::audit(
            Some(&record.id),
            record.user.as_ref(),
            AuditAction::Resync,
            AuditOutcome::Accepted,
            now,
            caller,
        );
        if store.advance(&advance, &audit)? {
            Ok(Outcome::Accepted(Accepted {
                token: record.id.clone(),
                matched: Self::matched(&record, accepted),
                drift,
            }))
        } else {
            let outcome = self.lost_race(store, &record.id)?;
            self.log(store, &record, AuditAction::Resync, &outcome, now, caller)?;
            Ok(outcome)
        }
    }

    /// A token ready for the store: its seed sealed, its numbers checked for the database.
    pub(crate) fn sealed(&self, e: &Enrollment) -> Result<NewToken, VerifyError> {
        let seed: SealedSeed = self.keyring().seal(&e.id, &e.secret)?;
        let next = match e.params.kind {
            TokenKind::Totp { .. } => 0,
            TokenKind::Hotp => e.counter.0,
        };
        Ok(NewToken::new(e.id.clone(), e.params, seed, next)?)
    }
}
