//! The token on disk: one versioned, checksummed TOML file, replaced atomically and durably.
//!
//! `DIR/token.toml` holds the secret, the token's parameters and its progress (the next HOTP
//! counter, or the last TOTP time step that was spoken). Every change writes a new file next
//! to it, fsyncs it, renames it over the old one and fsyncs the directory, so after a crash or
//! power loss the file is either the old or the new version, never a mix. A lock file
//! (`DIR/.lock`, `flock`) serialises changes between processes, so two key presses in two
//! processes can never take the same counter.
//!
//! Reading never repairs or rewrites: a damaged, foreign-owned, too-open or future-format file
//! is an error naming the file, and the file is left exactly as it was.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use codereader_otp::{
    Algorithm, Code, Counter, Digits, Hotp, KeyPolicy, KeyUri, OtpKind, Period, Secret, TimeStep,
    Totp, UnixTime,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The state format this build writes and the newest it reads.
pub const STATE_FORMAT: u32 = 1;

/// Name of the token file inside the state directory.
pub const TOKEN_FILE: &str = "token.toml";

const LOCK_FILE: &str = ".lock";

/// Why the state could not be read or changed. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Nothing is enrolled yet.
    #[error("no token is enrolled (looked for {path})")]
    NoToken {
        /// The token file that does not exist.
        path: PathBuf,
    },
    /// `enroll` without `--replace` over an existing token.
    #[error("a token is already enrolled in {path}; enrolling another needs --replace")]
    AlreadyEnrolled {
        /// The existing token file.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The token file is readable by others (or not writable by its owner).
    #[error(
        "{path} has mode {mode:04o}, but it holds a secret and must be 0600 (read/write for its \
         owner only); it was left untouched. If nobody else could have read it, fix it with \
         `chmod 600 {path}`; otherwise treat the token as compromised and re-enroll it"
    )]
    Permissions {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file belongs to another user.
    #[error("{path} belongs to user id {owner}, not to this user ({uid}); it was left untouched")]
    Owner {
        /// The token file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who we are.
        uid: u32,
    },
    /// The state directory can be changed by other users.
    #[error(
        "the state directory {path} has mode {mode:04o} and can be changed by other users; \
         make it 0700 (`chmod 700 {path}`)"
    )]
    DirectoryPermissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file is not a regular file (a symlink, a directory, ...).
    #[error("{path} is not a regular file; it was left untouched")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The token file is damaged: truncated, edited, bit rot.
    #[error(
        "{path} is damaged ({reason}); it was left untouched. Restore it from a backup, or \
         enroll the token again with --replace"
    )]
    Corrupt {
        /// The token file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        reason: String,
    },
    /// Written by a newer codereader.
    #[error(
        "{path} was written by a newer codereader (state format {found}; this one reads format \
         {supported}); it was left untouched. Install the newer codereader again"
    )]
    FutureVersion {
        /// The token file.
        path: PathBuf,
        /// The format number in the file.
        found: u64,
        /// What this build reads.
        supported: u32,
    },
    /// The HOTP counter reached 2^64 - 1: no code is left.
    #[error("the HOTP counter is used up; the token must be enrolled again")]
    CounterExhausted,
}

/// Who a token is for, as shown in `status` and `--help` output (never secret).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Label {
    /// Issuer, e.g. the bank.
    pub issuer: Option<String>,
    /// Account name.
    pub account: String,
    /// The token's serial number, if it has one (PSKC, or given at enrolment).
    pub serial: Option<String>,
}

/// Whether the token counts time or events, and how far it has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Time-based.
    Totp {
        /// Seconds per code.
        period: Period,
        /// Start of step 0.
        t0: UnixTime,
        /// The latest time step whose code was spoken or printed.
        last_step: Option<TimeStep>,
    },
    /// Counter-based.
    Hotp {
        /// The counter the next code will use.
        next: Counter,
    },
}

/// An enrolled token: secret, parameters and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Who it is for.
    pub label: Label,
    secret: Secret,
    algorithm: Algorithm,
    digits: Digits,
    /// Its kind and progress.
    pub progress: Progress,
}

impl Token {
    /// A token from a parsed otpauth URI (T0 = 0, as the URI format has none).
    pub fn from_uri(uri: &KeyUri, serial: Option<String>) -> Self {
        let progress = match uri.kind() {
            OtpKind::Totp { period } => Progress::Totp {
                period,
                t0: UnixTime(0),
                last_step: None,
            },
            OtpKind::Hotp { counter } => Progress::Hotp { next: counter },
        };
        Token {
            label: Label {
                issuer: uri.issuer().map(str::to_owned),
                account: uri.account().to_owned(),
                serial,
            },
            secret: uri.secret().clone(),
            algorithm: uri.algorithm(),
            digits: uri.digits(),
            progress,
        }
    }

    /// A token from its parts (PSKC enrolment).
    pub fn new(
        label: Label,
        secret: Secret,
        algorithm: Algorithm,
        digits: Digits,
        progress: Progress,
    ) -> Self {
        Token {
            label,
            secret,
            algorithm,
            digits,
            progress,
        }
    }

    /// The HMAC algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The code length.
    pub fn digits(&self) -> Digits {
        self.digits
    }

    /// `"totp"` or `"hotp"`.
    pub fn kind_name(&self) -> &'static str {
        match self.progress {
            Progress::Totp { .. } => "totp",
            Progress::Hotp { .. } => "hotp",
        }
    }

    fn totp(&self, period: Period, t0: UnixTime) -> Totp {
        Totp::new(&self.secret, self.algorithm, self.digits, period, t0)
    }
}

/// What a taken code was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// An HOTP counter (already stored as used).
    Counter(Counter),
    /// A TOTP step and how many seconds of it are left at the time asked.
    Step {
        /// The step.
        step: TimeStep,
        /// Seconds until the next step.
        seconds_left: u64,
    },
}

/// A code that may be spoken: its progress is already on disk.
#[derive(Debug, Clone)]
pub struct TakenCode {
    /// The code.
    pub code: Code,
    /// Where it came from.
    pub basis: Basis,
}

/// Why no code can be given, beyond damaged state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeError {
    /// The clock reads earlier than this program was built: it has not been set.
    #[error(
        "the clock is not set (it reads {now} s since 1970, earlier than this program's build \
         at {floor}); no code was given, for safety. A helper can set the clock"
    )]
    ClockNotSet {
        /// What the clock says.
        now: u64,
        /// The earliest believable time.
        floor: u64,
    },
    /// The clock is earlier than the last step whose code was given.
    #[error(
        "the clock moved backwards: it is now in time step {now}, but the code of step \
         {last_spoken} was already given; no old code is given. Set the clock, or accept the \
         current time with `codereader clock --accept`"
    )]
    ClockBackwards {
        /// The step of the current time.
        now: TimeStep,
        /// The last step spoken.
        last_spoken: TimeStep,
    },
    /// State problems.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where a TOTP token's clock stands: the step `now` falls in and the seconds left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentStep {
    /// The step `now` falls in, counted in periods from T0.
    pub step: TimeStep,
    /// Seconds until the next step begins.
    pub seconds_left: u64,
}

/// The device's clock rule for a TOTP token, written once: giving a code
/// ([`StateDir::take_code`]), repeating one, the spoken status and `codereader clock` all ask
/// it, so they cannot disagree.
///
/// The step is counted from `t0` in periods by otp's [`TimeStep::at`], the arithmetic
/// [`Totp::step_at`] uses. A clock earlier than `floor` (the build time) or than T0 is not
/// set; one whose step is earlier than `last_spoken` ran backwards. A caller that states the time (`code --at`) passes a
/// floor of 0 and no last step, so only T0 applies.
///
/// # Errors
/// [`TakeError::ClockNotSet`] (its `floor` the later of `floor` and T0) or
/// [`TakeError::ClockBackwards`].
pub fn current_step(
    period: Period,
    t0: UnixTime,
    last_spoken: Option<TimeStep>,
    now: UnixTime,
    floor: UnixTime,
) -> Result<CurrentStep, TakeError> {
    if now < floor {
        return Err(TakeError::ClockNotSet {
            now: now.0,
            floor: floor.0,
        });
    }
    let step = TimeStep::at(now, period, t0).map_err(|_| TakeError::ClockNotSet {
        now: now.0,
        floor: t0.0.max(floor.0),
    })?;
    if let Some(last) = last_spoken.filter(|last| step < *last) {
        return Err(TakeError::ClockBackwards {
            now: step,
            last_spoken: last,
        });
    }
    Ok(CurrentStep {
        step,
        seconds_left: period.seconds() - (now.0 - t0.0) % period.seconds(),
    })
}

/// When a new TOTP step is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepRecord {
    /// Before the code is returned.
    Now,
    /// By the caller, with [`StateDir::record_step`], once speech has started.
    Later,
    /// Never: the caller stated the time (`--at`), so the clock record is neither checked
    /// nor changed.
    Stated,
}

/// An HOTP code taken ahead of the key press, with the token as it was stored then.
#[derive(Debug, Clone)]
pub struct Reserved {
    taken: TakenCode,
    stored: Token,
}

impl Reserved {
    /// The reserved counter.
    pub fn basis(&self) -> Basis {
        self.taken.basis
    }
}

/// A state directory: where the token lives.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state directory at `dir` (created with mode 0700 on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The token file.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join(TOKEN_FILE)
    }

    /// `true` if a token file exists (whatever its state).
    pub fn has_token(&self) -> bool {
        fs::symlink_metadata(self.token_path()).is_ok()
    }

    /// Reads the token without changing anything.
    ///
    /// # Errors
    /// [`StateError::NoToken`] if none is enrolled; the other variants for a file that cannot
    /// be trusted (it is left untouched).
    pub fn load(&self) -> Result<Token, StateError> {
        let path = self.token_path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NoToken { path });
            }
            Err(source) => {
                return Err(StateError::Io {
                    path,
                    action: "inspect",
                    source,
                });
            }
        };
        if !meta.file_type().is_file() {
            return Err(StateError::NotAFile { path });
        }
        let uid = rustix::process::geteuid().as_raw();
        if meta.uid() != uid {
            return Err(StateError::Owner {
                path,
                owner: meta.uid(),
                uid,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o7077 != 0 || mode & 0o600 != 0o600 {
            return Err(StateError::Permissions { path, mode });
        }
        let bytes = Zeroizing::new(fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            action: "read",
            source,
        })?);
        decode(&bytes).map_err(|e| e.at(&path))
    }

    /// Stores a new token. Over an existing one (even a damaged one) only with `replace`.
    ///
    /// # Errors
    /// [`StateError::AlreadyEnrolled`], or I/O errors.
    pub fn enroll(&self, token: &Token, replace: bool) -> Result<(), StateError> {
        let _lock = self.lock()?;
        if self.has_token() && !replace {
            return Err(StateError::AlreadyEnrolled {
                path: self.token_path(),
            });
        }
        self.store(token)
    }

    /// Takes the code to speak now, storing the progress durably *before* returning it: an
    /// HOTP counter is used up even if the caller never speaks the code; a TOTP step is
    /// recorded so that a clock that later runs backwards is noticed.
    ///
    /// `floor` is the earliest time a set clock can show (the build time).
    ///
    /// # Errors
    /// [`TakeError::ClockNotSet`], [`TakeError::ClockBackwards`], or state errors.
    pub fn take_code(&self, now: UnixTime, floor: UnixTime) -> Result<TakenCode, TakeError> {
        self.take(now, floor, StepRecord::Now)
            .map(|(taken, _, _)| taken)
    }

    /// The code at a time the caller states (`code --at`, like `oathtool --now`): any time
    /// from T0 on, as RFC 6238 computes it. For a TOTP token the clock's checks do not apply
    /// and the stored clock record is neither read nor changed, so a test query at any time
    /// cannot disturb the real clock's checks. An HOTP token ignores the time and uses up its
    /// next counter as always.
    ///
    /// # Errors
    /// [`TakeError::ClockNotSet`] for a time before the token's T0; state errors.
    pub fn code_at(&self, at: UnixTime) -> Result<TakenCode, TakeError> {
        self.take(at, UnixTime(0), StepRecord::Stated)
            .map(|(taken, _, _)| taken)
    }

    /// Like [`StateDir::take_code`], but a new TOTP step is not written yet: the caller
    /// starts speaking first and then calls [`StateDir::record_step`] with the returned step,
    /// keeping the durable write off the path from key to sound. (HOTP counters are always
    /// stored first.)
    ///
    /// # Errors
    /// As [`StateDir::take_code`].
    pub fn take_code_record_later(
        &self,
        now: UnixTime,
        floor: UnixTime,
    ) -> Result<(TakenCode, Option<TimeStep>), TakeError> {
        self.take(now, floor, StepRecord::Later)
            .map(|(taken, step, _)| (taken, step))
    }

    /// Records that the code of TOTP `step` was given (a later step already recorded wins).
    ///
    /// # Errors
    /// State errors.
    pub fn record_step(&self, step: TimeStep) -> Result<(), StateError> {
        let _lock = self.lock()?;
        let mut token = self.load()?;
        if let Progress::Totp {
            period,
            t0,
            last_step,
        } = token.progress
        {
            if last_step.is_none_or(|last| last < step) {
                token.progress = Progress::Totp {
                    period,
                    t0,
                    last_step: Some(step),
                };
                self.store(&token)?;
            }
        }
        Ok(())
    }

    /// Takes an HOTP code ahead of the key press: its counter is durably used up now, and the
    /// returned [`Reserved`] may be spoken later if the token has not changed meanwhile
    /// (see [`StateDir::claim`]). `None` for a TOTP token.
    ///
    /// # Errors
    /// As [`StateDir::take_code`].
    pub fn reserve(&self) -> Result<Option<Reserved>, TakeError> {
        if !matches!(self.load()?.progress, Progress::Hotp { .. }) {
            return Ok(None);
        }
        // The time arguments are not used for an HOTP token.
        let (taken, _, stored) = self.take(UnixTime(0), UnixTime(0), StepRecord::Now)?;
        Ok(Some(Reserved { taken, stored }))
    }

    /// The reserved code, if the token on disk is still exactly as the reservation left it
    /// (same token, no counter taken by anyone since); otherwise `None` and the reserved
    /// counter is simply never spoken.
    ///
    /// # Errors
    /// State errors.
    pub fn claim(&self, reserved: Reserved) -> Result<Option<TakenCode>, StateError> {
        let now = self.load()?;
        Ok((now == reserved.stored).then_some(reserved.taken))
    }

    fn take(
        &self,
        now: UnixTime,
        floor: UnixTime,
        record: StepRecord,
    ) -> Result<(TakenCode, Option<TimeStep>, Token), TakeError> {
        let _lock = self.lock()?;
        let mut token = self.load()?;
        let mut unrecorded = None;
        let taken = match token.progress {
            Progress::Hotp { next } => {
                let following = next.next().ok_or(StateError::CounterExhausted)?;
                let code = Hotp::new(&token.secret, token.algorithm, token.digits).code(next);
                token.progress = Progress::Hotp { next: following };
                // Durable before the code leaves this function: a crash after this line skips
                // a counter, never repeats one.
                self.store(&token)?;
                TakenCode {
                    code,
                    basis: Basis::Counter(next),
                }
            }
            Progress::Totp {
                period,
                t0,
                last_step,
            } => {
                // A stated time (`code --at`) is checked against T0 only: the clock's record
                // is neither consulted nor changed.
                let stated = record == StepRecord::Stated;
                let CurrentStep { step, seconds_left } = current_step(
                    period,
                    t0,
                    last_step.filter(|_| !stated),
                    now,
                    if stated { UnixTime(0) } else { floor },
                )?;
                let totp = token.totp(period, t0);
                if last_step != Some(step) {
                    match record {
                        StepRecord::Now => {
                            token.progress = Progress::Totp {
                                period,
                                t0,
                                last_step: Some(step),
                            };
                            self.store(&token)?;
                        }
                        StepRecord::Later => unrecorded = Some(step),
                        StepRecord::Stated => {}
                    }
                }
                TakenCode {
                    code: totp.code_for_step(step),
                    basis: Basis::Step { step, seconds_left },
                }
            }
        };
        Ok((taken, unrecorded, token))
    }

    /// After the clock ran backwards and was checked by a person: forget the last spoken TOTP
    /// step, so codes are given again from `now` on. Returns the step that was forgotten.
    ///
    /// # Errors
    /// State errors.
    pub fn accept_clock(&self) -> Result<Option<TimeStep>, StateError> {
        let _lock = self.lock()?;
        let mut token = self.load()?;
        match token.progress {
            Progress::Totp {
                period,
                t0,
                last_step: Some(last),
            } => {
                token.progress = Progress::Totp {
                    period,
                    t0,
                    last_step: None,
                };
                self.store(&token)?;
                Ok(Some(last))
            }
            _ => Ok(None),
        }
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        let io_err = |action, source| StateError::Io {
            path: self.dir.clone(),
            action,
            source,
        };
        match fs::metadata(&self.dir) {
            Ok(meta) => {
                let mode = meta.mode() & 0o7777;
                if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                    return Err(StateError::DirectoryPermissions {
                        path: self.dir.clone(),
                        mode,
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(|e| io_err("create the directory", e))?;
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_err("set the directory's mode", e))
            }
            Err(e) => Err(io_err("inspect", e)),
        }
    }

    /// Takes the directory's lock; released when the returned file is dropped.
    fn lock(&self) -> Result<File, StateError> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let io_err = |action, source| StateError::Io {
            path: path.clone(),
            action,
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("open the lock file", e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", e.into()))?;
        Ok(file)
    }

    fn store(&self, token: &Token) -> Result<(), StateError> {
        self.ensure_dir()?;
        let text = encode(token);
        write_atomic(&self.dir, TOKEN_FILE, text.as_bytes())
    }
}

/// Writes `DIR/name` atomically and durably with mode 0600 (`codereader-atomicfile`:
/// temporary file, fsync, rename, fsync of the directory).
///
/// # Errors
/// [`StateError::Io`] naming the step that failed; the old file is then unchanged.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    codereader_atomicfile::write(&dir.join(name), bytes).map_err(|e| StateError::Io {
        path: e.path().to_path_buf(),
        action: e.step().action(),
        source: e.into_io(),
    })
}

/// The file's fields as stored. The secret is base32 and wiped when this is dropped.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u64,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    algorithm: String,
    digits: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t0: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_counter: Option<u64>,
    secret: String,
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

const HEADER: &str =
    "# codereader token state: written by codereader, do not edit (a checksum guards it).\n";
const CHECKSUM_KEY: &str = "checksum = \"sha256:";

fn checksum(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode(token: &Token) -> Zeroizing<String> {
    let (period, t0, last_step, next_counter) = match token.progress {
        Progress::Totp {
            period,
            t0,
            last_step,
        } => (
            Some(period.seconds()),
            Some(t0.0),
            last_step.map(|s| s.0),
            None,
        ),
        Progress::Hotp { next } => (None, None, None, Some(next.0)),
    };
    let stored = Stored {
        format: u64::from(STATE_FORMAT),
        kind: token.kind_name().to_owned(),
        issuer: token.label.issuer.clone(),
        account: token.label.account.clone(),
        serial: token.label.serial.clone(),
        algorithm: token.algorithm.name().to_owned(),
        digits: token.digits.get(),
        period,
        t0,
        last_step,
        next_counter,
        secret: token.secret.to_base32(),
    };
    // Serialising plain strings and integers cannot fail; fall back to an empty body (which
    // `decode` rejects) rather than panic.
    let body = Zeroizing::new(toml::to_string(&stored).unwrap_or_default());
    let mut text = Zeroizing::new(String::with_capacity(HEADER.len() + body.len() + 90));
    text.push_str(HEADER);
    text.push_str(&body);
    let sum = checksum(text.as_bytes());
    text.push_str(CHECKSUM_KEY);
    text.push_str(&sum);
    text.push_str("\"\n");
    text
}

/// A decoding failure before the path is known.
enum DecodeError {
    Corrupt(String),
    Future(u64),
}

impl DecodeError {
    fn at(self, path: &Path) -> StateError {
        match self {
            DecodeError::Corrupt(reason) => StateError::Corrupt {
                path: path.to_path_buf(),
                reason,
            },
            DecodeError::Future(found) => StateError::FutureVersion {
                path: path.to_path_buf(),
                found,
                supported: STATE_FORMAT,
            },
        }
    }
}

fn corrupt(reason: &str) -> DecodeError {
    DecodeError::Corrupt(reason.to_owned())
}

/// Line number (1-based) of a byte offset, for error messages that must not quote content.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

fn decode(bytes: &[u8]) -> Result<Token, DecodeError> {
    if bytes.is_empty() {
        return Err(corrupt("the file is empty"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("the file is not UTF-8 text"))?;
    let Some(at) = text.rfind(CHECKSUM_KEY) else {
        return Err(corrupt(
            "its checksum line is missing: the file is truncated",
        ));
    };
    let (body, tail) = text.split_at(at);
    let sum = tail
        .strip_prefix(CHECKSUM_KEY)
        .and_then(|t| t.strip_suffix("\"\n"))
        .ok_or_else(|| corrupt("its checksum line is cut short: the file is truncated"))?;
    // A newer format may change anything after its `format` line, including the checksum; so
    // look for a future version before judging the checksum.
    let table: Result<toml::Table, _> = body.parse();
    if let Ok(table) = &table {
        if let Some(found) = table.get("format").and_then(toml::Value::as_integer) {
            let found = u64::try_from(found).unwrap_or(0);
            if found > u64::from(STATE_FORMAT) {
                return Err(DecodeError::Future(found));
            }
        }
    }
    let expected = checksum(body.as_bytes());
    if !same_bytes(sum.as_bytes(), expected.as_bytes()) {
        return Err(corrupt("its checksum does not match its content"));
    }
    let stored: Stored = toml::from_str(body).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(body, s.start));
        DecodeError::Corrupt(format!("unexpected content at line {line}"))
    })?;
    if stored.format != u64::from(STATE_FORMAT) {
        return Err(DecodeError::Corrupt(format!(
            "unknown state format {}",
            stored.format
        )));
    }
    to_token(&stored)
}

/// Equality of checksums; not secret, but there is no reason to leak timing either.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_token(stored: &Stored) -> Result<Token, DecodeError> {
    let secret = Secret::from_base32(&stored.secret, KeyPolicy::AllowLegacyShort)
        .map_err(|_| corrupt("the stored secret is not valid"))?;
    let algorithm: Algorithm = stored
        .algorithm
        .parse()
        .map_err(|_| corrupt("unknown algorithm"))?;
    let digits = Digits::new(stored.digits).map_err(|_| corrupt("bad number of digits"))?;
    let progress = match stored.kind.as_str() {
        "totp" => Progress::Totp {
            period: Period::new(
                stored
                    .period
                    .ok_or_else(|| corrupt("a TOTP token has no period"))?,
            )
            .map_err(|_| corrupt("the period is zero"))?,
            t0: UnixTime(stored.t0.unwrap_or(0)),
            last_step: stored.last_step.map(TimeStep),
        },
        "hotp" => Progress::Hotp {
            next: Counter(
                stored
                    .next_counter
                    .ok_or_else(|| corrupt("an HOTP token has no counter"))?,
            ),
        },
        _ => return Err(corrupt("unknown token kind")),
    };
    if stored.account.is_empty() {
        return Err(corrupt("the account name is empty"));
    }
    Ok(Token {
        label: Label {
            issuer: stored.issuer.clone(),
            account: stored.account.clone(),
            serial: stored.serial.clone(),
        },
        secret,
        algorithm,
        digits,
        progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_token(uri: &str) -> Token {
        Token::from_uri(&uri.parse().unwrap(), Some("12345678".into()))
    }

    const TOTP: &str =
        "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank";
    const HOTP: &str = "otpauth://hotp/Bank:bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=7";

    #[test]
    fn round_trip_keeps_everything() {
        let token = uri_token(TOTP);
        let text = encode(&token);
        let back = decode(text.as_bytes()).ok().unwrap();
        assert_eq!(back.label, token.label);
        assert_eq!(back.progress, token.progress);
        assert_eq!(back.secret, token.secret);
        assert_eq!(back.algorithm, token.algorithm);
    }

    #[test]
    fn hotp_counter_advances_and_is_stored_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("s"));
        state.enroll(&uri_token(HOTP), false).unwrap();
        let first = state.take_code(UnixTime(0), UnixTime(0)).unwrap();
        assert_eq!(first.basis, Basis::Counter(Counter(7)));
        assert_eq!(
            state.load().unwrap().progress,
            Progress::Hotp { next: Counter(8) }
        );
        let second = state.take_code(UnixTime(0), UnixTime(0)).unwrap();
        assert_eq!(second.basis, Basis::Counter(Counter(8)));
        // RFC 4226 appendix D, secret "12345678901234567890".
        assert_eq!(first.code.as_str(), "162583");
        assert_eq!(second.code.as_str(), "399871");
    }

    #[test]
    fn reserved_codes_are_claimed_only_while_the_token_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.enroll(&uri_token(HOTP), false).unwrap();
        let reserved = state.reserve().unwrap().unwrap();
        assert_eq!(reserved.basis(), Basis::Counter(Counter(7)));
        assert_eq!(
            state.load().unwrap().progress,
            Progress::Hotp { next: Counter(8) }
        );
        let claimed = state.claim(reserved).unwrap().unwrap();
        assert_eq!(claimed.code.as_str(), "162583");
        // Someone else takes a counter after the reservation: the reserved one is dropped.
        let reserved = state.reserve().unwrap().unwrap();
        assert_eq!(reserved.basis(), Basis::Counter(Counter(8)));
        let other = state.take_code(UnixTime(0), UnixTime(0)).unwrap();
        assert_eq!(other.basis, Basis::Counter(Counter(9)));
        assert!(state.claim(reserved).unwrap().is_none());
        // Re-enrolled with the same counter: a different token, so dropped too.
        let reserved = state.reserve().unwrap().unwrap();
        state.enroll(&uri_token(TOTP), true).unwrap();
        assert!(state.claim(reserved).unwrap().is_none());
        assert!(
            state.reserve().unwrap().is_none(),
            "TOTP tokens are not reserved"
        );
    }

    #[test]
    fn totp_step_recorded_later_still_guards_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.enroll(&uri_token(TOTP), false).unwrap();
        let floor = UnixTime(0);
        let (taken, step) = state
            .take_code_record_later(UnixTime(1_800_000_010), floor)
            .unwrap();
        assert_eq!(step, Some(TimeStep(60_000_000)));
        assert!(matches!(
            state.load().unwrap().progress,
            Progress::Totp {
                last_step: None,
                ..
            }
        ));
        state.record_step(step.unwrap()).unwrap();
        assert!(matches!(taken.basis, Basis::Step { .. }));
        let err = state.take_code(UnixTime(1_799_999_000), floor).unwrap_err();
        assert!(matches!(err, TakeError::ClockBackwards { .. }), "{err}");
        // An older record never overwrites a newer one.
        state.record_step(TimeStep(5)).unwrap();
        assert!(matches!(
            state.load().unwrap().progress,
            Progress::Totp {
                last_step: Some(TimeStep(60_000_000)),
                ..
            }
        ));
    }

    #[test]
    fn enrolling_twice_needs_replace() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.enroll(&uri_token(TOTP), false).unwrap();
        let err = state.enroll(&uri_token(HOTP), false).unwrap_err();
        assert!(matches!(err, StateError::AlreadyEnrolled { .. }), "{err}");
        assert_eq!(state.load().unwrap().kind_name(), "totp");
        state.enroll(&uri_token(HOTP), true).unwrap();
        assert_eq!(state.load().unwrap().kind_name(), "hotp");
    }

    #[test]
    fn file_is_private_and_never_shows_the_secret_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("s"));
        state.enroll(&uri_token(TOTP), false).unwrap();
        let meta = fs::metadata(state.token_path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(state.path()).unwrap().mode() & 0o777, 0o700);
        // Corrupt the secret line: the error must not quote it.
        let text = fs::read_to_string(state.token_path()).unwrap();
        fs::write(state.token_path(), text.replace("GEZDGNBV", "GEZDGNBW")).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(!err.contains("GEZDG"), "{err}");
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn totp_clock_rules() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.enroll(&uri_token(TOTP), false).unwrap();
        let floor = UnixTime(1_700_000_000);
        let err = state.take_code(UnixTime(1_000), floor).unwrap_err();
        assert!(matches!(err, TakeError::ClockNotSet { .. }), "{err}");
        let taken = state.take_code(UnixTime(1_800_000_010), floor).unwrap();
        assert_eq!(
            taken.basis,
            Basis::Step {
                step: TimeStep(60_000_000),
                seconds_left: 20
            }
        );
        // Same step again is fine; an earlier step is refused.
        state.take_code(UnixTime(1_800_000_029), floor).unwrap();
        let err = state.take_code(UnixTime(1_799_999_999), floor).unwrap_err();
        assert!(
            matches!(
                err,
                TakeError::ClockBackwards {
                    now: TimeStep(59_999_999),
                    last_spoken: TimeStep(60_000_000)
                }
            ),
            "{err}"
        );
        assert_eq!(state.accept_clock().unwrap(), Some(TimeStep(60_000_000)));
        state.take_code(UnixTime(1_799_999_999), floor).unwrap();
    }

    #[test]
    fn a_stated_time_gives_its_code_and_leaves_the_clock_record_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.enroll(&uri_token(TOTP), false).unwrap();
        let floor = UnixTime(1_700_000_000);
        state.take_code(UnixTime(1_800_000_010), floor).unwrap();
        let before = fs::read(state.token_path()).unwrap();
        // RFC 6238 appendix B (SHA-1, 8 digits there; these are the last 6).
        for (at, code) in [(59, "287082"), (1_111_111_109, "081804"), (0, "755224")] {
            let taken = state.code_at(UnixTime(at)).unwrap();
            assert_eq!(taken.code.as_str(), code, "at {at}");
        }
        state.code_at(UnixTime(1 << 34)).unwrap();
        assert_eq!(fs::read(state.token_path()).unwrap(), before);
        state.take_code(UnixTime(1_800_000_040), floor).unwrap();
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn valid() -> Vec<u8> {
            encode(&uri_token(HOTP)).as_bytes().to_vec()
        }

        proptest! {
            #[test]
            fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn any_changed_byte_is_detected(index in 0usize..10_000, flip in 1u8..=255) {
                let mut bytes = valid();
                let i = index % bytes.len();
                bytes[i] ^= flip;
                prop_assert!(decode(&bytes).is_err(), "byte {} changed and still accepted", i);
            }

            #[test]
            fn any_truncation_is_detected(len in 0usize..10_000) {
                let bytes = valid();
                let len = len % bytes.len();
                prop_assert!(decode(&bytes[..len]).is_err(), "cut to {} bytes and still accepted", len);
            }
        }
    }
}
