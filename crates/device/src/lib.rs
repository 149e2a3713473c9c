//! The talking token: the `codereader` program a blind user's device runs. One key speaks the
//! current one-time code into the headphones.
//!
//! The binary is a thin shell over this library ([`cli::main`]), so the end-to-end tests and
//! benchmarks use exactly the code the device runs.
//!
//! - [`token_file`]: the token on disk (versioned, checksummed, mode 0600, atomic durable
//!   writes) in the state directory; [`token_file::StateDir::take_code`] stores the progress
//!   *before* a code is returned, so no HOTP counter is ever spoken twice, and refuses codes
//!   when the clock is not set or ran backwards.
//! - [`config`]: the config file (set up once) and the user's settings (kept in the state
//!   directory).
//! - [`keys`]: actions and their single-key bindings.
//! - [`timesync`]: whether the clock was synchronised since boot ("the clock may be wrong").
//! - [`voice`]: voice packs, synthesiser choice and what the device says.
//! - [`run_loop`]: the loop of `codereader run`, keys to actions to speech; its keys come from
//!   `input` (private: the terminal, evdev keypads with hot-plug and chords, GPIO buttons,
//!   one thread each feeding one channel).
//! - [`outputs`]: which outputs give the code, and [`outputs::Senses`] for the non-audio
//!   ones: [`braille`] (a BrlAPI client for BRLTTY) and [`largeprint`] (block digits);
//!   [`speechd`] speaks through Speech Dispatcher (the desktop's voice).
//! - [`clipboard`]: the code on the desktop's clipboard until it expires (`--copy`).
//! - [`cli`]: the command line.
//! - [`process`]: exit statuses, the clock reading and the log line, shared by `cli`,
//!   `run_loop` and `voice` (a leaf, so none of them imports another in a circle).
//!
//! Invariants: the secret is never printed or logged, and no error message quotes the state
//! file's content; a state file that cannot be trusted is never rewritten.

pub mod braille;
pub mod cli;
pub mod clipboard;
pub mod config;
mod input;
pub mod keys;
pub mod largeprint;
pub mod outputs;
pub mod process;
pub mod run_loop;
pub mod speechd;
pub mod timesync;
pub mod token_file;
pub mod voice;
