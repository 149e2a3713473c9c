//! What the whole process shares, below every other module: the exit status of each kind
//! of failure ([`Exit`], [`Failure`]), reading the clock ([`now`], [`build_floor`]) and the
//! log line ([`log`]).
//!
//! A leaf: `cli` and the `run` loop in `device` both use it, and it uses neither, so the two
//! no longer import each other (the command line calls the loop; the loop never calls back).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use codereader_otp::UnixTime;

use crate::config::ConfigError;
use crate::token_file::{StateError, TakeError};

/// Exit status for each kind of failure, so scripts and the service manager can tell them
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Anything not listed below.
    Failure = 1,
    /// No token is enrolled.
    NoToken = 3,
    /// The state cannot be read or written (it was left untouched).
    State = 4,
    /// The clock is not set or ran backwards: no code was given.
    Clock = 5,
    /// No audio device.
    Audio = 6,
    /// Bad config or settings.
    Config = 7,
}

/// The exit statuses, as `--help` lists them.
pub const EXIT_HELP: &str = "\
Exit status: 0 done; 1 other failure; 2 bad command line; 3 no token enrolled; 4 state \
unreadable or unwritable (left untouched); 5 clock not set or moved backwards (no code given); \
6 no audio device; 7 bad config or settings.";

/// Earliest believable time: when this program was built.
pub fn build_floor() -> UnixTime {
    UnixTime(
        env!("CODEREADER_BUILD_EPOCH")
            .parse::<u64>()
            .unwrap_or_default(),
    )
}

/// The current time, or `at`.
pub fn now(at: Option<u64>) -> UnixTime {
    UnixTime(at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }))
}

/// An error with the exit status it should give.
#[derive(Debug)]
pub struct Failure {
    /// Exit status.
    pub exit: Exit,
    /// The error.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        Failure {
            exit: exit_for(&error),
            error,
        }
    }
}

/// The exit status for an error, by its kind anywhere in its chain.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<StateError>() {
            return match e {
                StateError::NoToken { .. } => Exit::NoToken,
                _ => Exit::State,
            };
        }
        if let Some(e) = cause.downcast_ref::<TakeError>() {
            return match e {
                TakeError::State(StateError::NoToken { .. }) => Exit::NoToken,
                TakeError::State(_) => Exit::State,
                _ => Exit::Clock,
            };
        }
        if let Some(e) = cause.downcast_ref::<ConfigError>() {
            // Saving the settings failed: the disk, not the settings, is the problem (full,
            // read-only, gone), as for the token.
            return match e {
                ConfigError::Save(_) => Exit::State,
                _ => Exit::Config,
            };
        }
        if let Some(codereader_speech::SpeechError::Device(_)) = cause.downcast_ref() {
            return Exit::Audio;
        }
    }
    Exit::Failure
}

/// Set while the terminal is raw, so log lines carry their own carriage return.
static RAW: AtomicBool = AtomicBool::new(false);

/// Logs one line to standard error (the journal, under systemd).
pub fn log(message: &str) {
    let end = if RAW.load(Ordering::Relaxed) {
        "\r\n"
    } else {
        "\n"
    };
    // One write for the whole line: standard error is unbuffered, and a formatted write
    // would go out piece by piece, so a process killed mid-line (kill -9 while speaking)
    // could leave half a line, e.g. a counter message without its number.
    let line = format!("codereader: {message}{end}");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// Tells [`log`] whether the terminal is raw (then each line carries its own carriage return).
pub fn set_raw_terminal(raw: bool) {
    RAW.store(raw, Ordering::Relaxed);
}
