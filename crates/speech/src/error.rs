//! Error types of the speech crate: one for loading voice packs, one for everything else.

use std::path::PathBuf;

/// A voice pack (`voice.toml` or its clips) could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key the format does not define (a typo, usually).
    #[error("{file}: unknown key `{key}`")]
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// Dotted path of the key, e.g. `prompts.intro_x`.
        key: String,
    },
    /// A required key is absent.
    #[error("{file}: missing key `{key}`")]
    MissingKey {
        /// The file.
        file: PathBuf,
        /// Dotted path of the key, e.g. `digits.7`.
        key: String,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("{file}: bad value for `{key}`: {reason}")]
    BadValue {
        /// The file.
        file: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A clip listed by the pack is missing or not a mono 16-bit PCM WAV.
    #[error("{file}: bad clip: {reason}")]
    BadClip {
        /// The clip file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A clip's sample rate differs from the rate the pack declares.
    #[error("{file}: clip sample rate {found} Hz, pack declares {expected} Hz")]
    ClipSampleRate {
        /// The clip file.
        file: PathBuf,
        /// Rate declared in `clips/clips.toml`.
        expected: u32,
        /// Rate found in the WAV header.
        found: u32,
    },
    /// A voice name the pack does not have.
    #[error("voice pack `{tag}` has no voice `{voice}`; it has: {available}")]
    UnknownVoice {
        /// Language tag.
        tag: String,
        /// The name asked for.
        voice: String,
        /// The names there are.
        available: String,
    },
    /// The voices directory holds no pack at all.
    #[error("{dir}: no voice pack (no */voice.toml)")]
    Empty {
        /// The voices directory.
        dir: PathBuf,
    },
}

/// Errors of synthesis, rendering and playback.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechError {
    /// A code to speak was not 6 to 8 ASCII digits.
    #[error("a code must be 6 to 8 ASCII digits, got {len} characters")]
    InvalidCode {
        /// Length of the rejected input in bytes (the code itself is not echoed).
        len: usize,
    },
    /// The voice library has no pack for this language tag.
    #[error("no voice pack for language `{0}`")]
    UnknownLanguage(String),
    /// A voice pack failed to load.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The espeak-ng library could not be loaded (not installed, usually: Debian's
    /// `libespeak-ng1`); the reason names the library and the loader's message.
    #[error("espeak-ng is not available: {0}")]
    EspeakMissing(String),
    /// A phrase's clip could not be played and the synthesiser that would say it instead
    /// could not start (why).
    #[error("no synthesiser can say a phrase whose clip is bad: {0}")]
    NoBackup(String),
    /// espeak-ng could not be initialised (missing `espeak-ng-data`, usually).
    #[error("espeak-ng failed to initialise (code {0}); is espeak-ng-data installed?")]
    EspeakInit(i32),
    /// An espeak-ng call failed.
    #[error("espeak-ng: {call} failed with code {code}")]
    Espeak {
        /// The C function.
        call: &'static str,
        /// Its `espeak_ERROR`.
        code: i32,
    },
    /// The espeak-ng owner thread is gone (it panicked or could not start).
    #[error("the espeak-ng owner thread is not running")]
    EspeakThread,
    /// Text for espeak-ng contained a NUL byte.
    #[error("text for the synthesiser contains a NUL byte")]
    NulInText,
    /// The clip backend has no clip for a phrase.
    #[error("the voice pack has no clip for `{0}`")]
    NoClip(String),
    /// The pack has no pre-rendered clips, so the clip backend cannot be used.
    #[error("voice pack `{0}` has no clips")]
    NoClips(String),
    /// The flite command line failed (only when rendering flite clips).
    #[error("flite: {0}")]
    Flite(String),
    /// Resampling failed.
    #[error("resampler: {0}")]
    Resample(String),
    /// Writing or finishing a WAV file failed.
    #[error("WAV {path}: {message}")]
    Wav {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Other I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The audio device failed (none present, unsupported format, stream error).
    #[error("audio device: {0}")]
    Device(String),
    /// A sample rate of zero was asked for.
    #[error("sample rate must be non-zero")]
    ZeroSampleRate,
}
