//! The config file (set up once, by whoever installs the device) and the user's settings
//! (changed with keys or `codereader settings`, kept in the state directory).
//!
//! Both are TOML. Every config key is optional and documented in `config.example.toml` with
//! its default. Unknown keys and bad values are errors that name the file and the key, so a
//! typo never silently falls back to a default: `settings` (a helper's command) refuses
//! them. The device itself (`run`, `speak`) must never be silenced by a typo, so it loads
//! leniently ([`Config::find_lenient`], [`UserSettings::load_lenient`],
//! [`Effective::lenient`]): each mistake is set aside (the default is used for that key),
//! logged with the key and its fix, and said once to the user.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{self, Action, EvKey, KeyMap, TermKey};
use crate::token_file::{StateError, write_atomic};

/// Name of the settings file inside the state directory.
pub const SETTINGS_FILE: &str = "settings.toml";

/// The settings format this build writes and the newest it reads.
///
/// Format 2 added the `[voice]` table (the user's voice per language). A format-1 file has
/// none, so it loads as it is (every other key means the same) and is written back as
/// format 2 on the next change. A format-1 codereader refuses a format-2 file instead of
/// dropping the voice choice.
pub const SETTINGS_FORMAT: u32 = 2;

/// A config or settings problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message (with line, column and the offending key).
        message: String,
    },
    /// A key has a value outside its range or an unknown name.
    #[error("{path}: key `{key}`: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Settings written by a newer codereader.
    #[error("{path}: written by a newer codereader (format {found}; this one reads {supported})")]
    FutureVersion {
        /// The file.
        path: PathBuf,
        /// Format in the file.
        found: u32,
        /// What this build reads.
        supported: u32,
    },
    /// Saving failed.
    #[error(transparent)]
    Save(#[from] StateError),
}

/// Which synthesiser speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthChoice {
    /// A pack's clips when it has them, else espeak-ng.
    #[default]
    Auto,
    /// Always espeak-ng.
    Espeak,
    /// Always the pack's clips (an error for a pack without clips).
    Clips,
}

/// `[input]`: where keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Read single keys from the terminal when standard input is one.
    pub terminal: bool,
    /// evdev devices to read (`/dev/input/by-id/...-event-kbd`).
    pub evdev: Vec<PathBuf>,
    /// Take the evdev devices for ourselves, so their keys do not reach the console.
    pub grab: bool,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            terminal: true,
            evdev: Vec::new(),
            grab: true,
        }
    }
}

/// `[audio]`: where the device speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// The output device, by the name `codereader audio --list` gives (an ALSA PCM name
    /// such as `sysdefault:CARD=Headphones`); `None`: ALSA's `default`.
    pub device: Option<String>,
}

/// `[clock] unsynced`: what to do while the clock has not been synchronised since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsyncedClock {
    /// Say "the clock may be wrong" before a time-based code.
    #[default]
    Warn,
    /// Say so and give no time-based code.
    Refuse,
    /// Do not check (a battery-backed clock).
    Ignore,
}

/// `[clock]`: trusting the clock at boot (see [`crate::timesync`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// What to do while the clock is not synchronised since boot.
    pub unsynced: UnsyncedClock,
    /// The file whose existence means "synchronised since boot".
    pub sync_flag: PathBuf,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            unsynced: UnsyncedClock::Warn,
            sync_flag: PathBuf::from("/run/systemd/timesync/synchronized"),
        }
    }
}

/// `[desktop]`: on a desktop computer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DesktopConfig {
    /// `speak` also puts the code on the clipboard until it expires (as `--copy`).
    pub copy: bool,
}

/// `[code]`: how a time-based code is given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeConfig {
    /// A code asked for with fewer seconds than this left in its time step is not given:
    /// the device says that the code is about to change, waits for the next step and gives
    /// that code, valid for the whole step (0: never wait). 0..=[`MAX_WAIT_FOR_NEXT`].
    pub wait_for_next_below: u64,
}

/// The largest `[code] wait_for_next_below`: a longer wait would leave the user waiting most
/// of a 30-second step.
pub const MAX_WAIT_FOR_NEXT: u64 = 20;

impl Default for CodeConfig {
    fn default() -> Self {
        CodeConfig {
            wait_for_next_below: 10,
        }
    }
}

/// `[[gpio]]`: one button on a GPIO line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioButton {
    /// The GPIO character device, e.g. `/dev/gpiochip0`.
    #[serde(default = "default_chip")]
    pub chip: PathBuf,
    /// Line offset on that chip (BCM number on a Raspberry Pi).
    pub line: u32,
    /// What the button does.
    pub action: String,
    /// The button pulls the line to ground when pressed (with the internal pull-up on).
    #[serde(default = "yes")]
    pub active_low: bool,
    /// Ignore bounces shorter than this, ms.
    #[serde(default = "default_debounce")]
    pub debounce_ms: u32,
}

fn default_chip() -> PathBuf {
    PathBuf::from("/dev/gpiochip0")
}

fn yes() -> bool {
    true
}

fn default_debounce() -> u32 {
    20
}

/// `[[evdev_chord]]`: hold one key and press another.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChordConfig {
    /// The key held down (e.g. `KEY_F1`).
    pub hold: String,
    /// The key pressed while it is held (e.g. `KEY_1`).
    pub key: String,
    /// What the chord does.
    pub action: String,
}

/// The config file as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    voices: Option<PathBuf>,
    synth: Option<SynthChoice>,
    voice: Option<BTreeMap<String, String>>,
    language: Option<String>,
    volume: Option<i64>,
    rate: Option<i64>,
    say_ready: Option<bool>,
    #[serde(default)]
    input: InputConfig,
    keys: Option<BTreeMap<String, Vec<String>>>,
    evdev_keys: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    evdev_chord: Vec<ChordConfig>,
    #[serde(default)]
    gpio: Vec<GpioButton>,
    outputs: Option<Vec<String>>,
    braille: Option<crate::outputs::BrailleConfig>,
    speechd: Option<crate::outputs::SpeechdConfig>,
    #[serde(default)]
    audio: AudioConfig,
    #[serde(default)]
    clock: ClockConfig,
    #[serde(default)]
    desktop: DesktopConfig,
    #[serde(default)]
    code: CodeConfig,
}

/// A validated evdev chord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chord {
    /// Held key.
    pub hold: EvKey,
    /// Pressed key.
    pub key: EvKey,
    /// Action.
    pub action: Action,
}

/// A validated GPIO button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpio {
    /// Chip device.
    pub chip: PathBuf,
    /// Line offset.
    pub line: u32,
    /// Action.
    pub action: Action,
    /// Pressed pulls low.
    pub active_low: bool,
    /// Debounce period, ms.
    pub debounce_ms: u32,
}

/// The validated config, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (`None`: built-in defaults).
    pub source: Option<PathBuf>,
    /// Voice packs directory, if set.
    pub voices: Option<PathBuf>,
    /// Synthesiser choice.
    pub synth: SynthChoice,
    /// The voice chosen per language tag (`[voice] en = "espeak"`); a language not listed
    /// speaks its pack's default voice, the clearest by measurement (`docs/voices.md`).
    pub voice: BTreeMap<String, String>,
    /// Starting settings.
    pub defaults: Listening,
    /// Input sources.
    pub input: InputConfig,
    /// Terminal key bindings as names (validated).
    pub keys: BTreeMap<Action, Vec<String>>,
    /// evdev key bindings as names (validated).
    pub evdev_keys: BTreeMap<Action, Vec<String>>,
    /// evdev chords.
    pub chords: Vec<Chord>,
    /// GPIO buttons.
    pub gpio: Vec<Gpio>,
    /// Which outputs give the code (speech, speechd, braille, large) and how to reach them.
    pub outputs: crate::outputs::OutputsConfig,
    /// Say "Ready" after the start-up tone of `run` (the tone alone by default).
    pub say_ready: bool,
    /// Output device.
    pub audio: AudioConfig,
    /// Trusting the clock at boot.
    pub clock: ClockConfig,
    /// On a desktop computer.
    pub desktop: DesktopConfig,
    /// How a time-based code is given.
    pub code: CodeConfig,
    /// Whether the config names the language (else it follows the system's locale).
    pub language_set: bool,
}

/// The language of the system's locale: the first of `LC_ALL`, `LC_MESSAGES` and `LANG`
/// that is set (POSIX's order), as a language tag (`da_DK.UTF-8` gives `da`); `None` when
/// none is set or it is `C`/`POSIX`.
pub fn locale_language() -> Option<String> {
    let value = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .into_iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())?;
    language_of_locale(&value.to_string_lossy())
}

/// The language tag of a locale name (`da_DK.UTF-8@euro` gives `da`).
fn language_of_locale(locale: &str) -> Option<String> {
    let language = locale
        .split(['_', '.', '@', '-'])
        .next()
        .unwrap_or_default();
    let ok = (2..=3).contains(&language.len()) && language.chars().all(|c| c.is_ascii_alphabetic());
    (ok && !matches!(language, "C" | "POSIX")).then(|| language.to_ascii_lowercase())
}

/// The language when neither the config nor the user chose one and the locale names none
/// (or one without a voice pack): Danish, the language of the packaged device.
pub const FALLBACK_LANGUAGE: &str = "da";

/// Volume, rate and language: what the user adjusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// Language tag of the voice pack.
    pub language: String,
    /// Volume step, -8..=0.
    pub volume: i8,
    /// Rate step, -3..=3.
    pub rate: i8,
}

impl Default for Listening {
    /// The language follows the system's locale ([`locale_language`]), else Danish.
    fn default() -> Self {
        Listening {
            language: locale_language().unwrap_or_else(|| FALLBACK_LANGUAGE.to_owned()),
            volume: -2,
            rate: 0,
        }
    }
}

/// Range of volume steps (3 dB each; 0 is loudest).
pub const VOLUME_RANGE: std::ops::RangeInclusive<i8> = -8..=0;
/// Range of rate steps.
pub const RATE_RANGE: std::ops::RangeInclusive<i8> = -3..=3;

fn step_in(
    path: &Path,
    key: &str,
    value: i64,
    range: &std::ops::RangeInclusive<i8>,
) -> Result<i8, ConfigError> {
    i8::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_owned(),
            message: format!(
                "{value} is out of range; use {} to {}",
                range.start(),
                range.end()
            ),
        })
}

fn parse_bindings<K: std::str::FromStr + Ord + Copy + std::fmt::Display>(
    path: &Path,
    table: &str,
    raw: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<Action, Vec<String>>, ConfigError>
where
    K::Err: std::fmt::Display,
{
    let bad = |key: String, message: String| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        message,
    };
    let mut names = BTreeMap::new();
    let mut parsed: BTreeMap<Action, Vec<K>> = BTreeMap::new();
    for (name, list) in raw {
        let key = format!("{table}.{name}");
        let action: Action = name.parse().map_err(|e| bad(key.clone(), format!("{e}")))?;
        let mut keys = Vec::new();
        for k in list {
            keys.push(
                k.parse::<K>()
                    .map_err(|e| bad(key.clone(), format!("{e}")))?,
            );
        }
        parsed.insert(action, keys);
        names.insert(action, list.clone());
    }
    KeyMap::new(&parsed).map_err(|message| bad(table.to_owned(), message))?;
    Ok(names)
}

impl Config {
    /// Built-in defaults (no file).
    pub fn defaults() -> Self {
        Config {
            source: None,
            voices: None,
            synth: SynthChoice::Auto,
            voice: BTreeMap::new(),
            defaults: Listening::default(),
            input: InputConfig::default(),
            keys: keys::default_terminal_keys(),
            evdev_keys: keys::default_evdev_keys(),
            chords: Vec::new(),
            gpio: Vec::new(),
            outputs: crate::outputs::OutputsConfig::default(),
            say_ready: false,
            audio: AudioConfig::default(),
            clock: ClockConfig::default(),
            desktop: DesktopConfig::default(),
            code: CodeConfig::default(),
            language_set: false,
        }
    }

    /// Loads `path`; a missing file is an error (the caller decides whether to look).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text (`path` is for messages).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::from_raw(path, raw)
    }

    /// Validates a parsed file (`path` is for messages).
    fn from_raw(path: &Path, raw: RawConfig) -> Result<Self, ConfigError> {
        let mut config = Config::defaults();
        config.source = Some(path.to_path_buf());
        config.voices = raw.voices;
        config.synth = raw.synth.unwrap_or_default();
        // Names are checked against the packs when the voices load (`Voices::choosing`).
        config.voice = raw.voice.unwrap_or_default();
        if let Some(language) = raw.language {
            config.defaults.language = language;
            config.language_set = true;
        }
        if raw.code.wait_for_next_below > MAX_WAIT_FOR_NEXT {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "code.wait_for_next_below".to_owned(),
                message: format!(
                    "{} is out of range; use 0 (never wait) to {MAX_WAIT_FOR_NEXT} seconds",
                    raw.code.wait_for_next_below
                ),
            });
        }
        config.code = raw.code.clone();
        if let Some(v) = raw.volume {
            config.defaults.volume = step_in(path, "volume", v, &VOLUME_RANGE)?;
        }
        if let Some(v) = raw.rate {
            config.defaults.rate = step_in(path, "rate", v, &RATE_RANGE)?;
        }
        config.input = raw.input;
        config.outputs = crate::outputs::OutputsConfig::from_raw(
            raw.outputs.as_deref(),
            raw.braille.as_ref(),
            raw.speechd.as_ref(),
        )
        .map_err(|bad| ConfigError::Value {
            path: path.to_path_buf(),
            key: bad.key.to_owned(),
            message: bad.message,
        })?;
        config.say_ready = raw.say_ready.unwrap_or(false);
        if raw
            .audio
            .device
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "audio.device".to_owned(),
                message: "is empty; leave it out for ALSA's default device, or use a name \
                          `codereader audio --list` gives"
                    .to_owned(),
            });
        }
        config.audio = raw.audio;
        config.clock = raw.clock;
        config.desktop = raw.desktop;
        if let Some(keys) = &raw.keys {
            config.keys = parse_bindings::<TermKey>(path, "keys", keys)?;
        }
        if let Some(keys) = &raw.evdev_keys {
            config.evdev_keys = parse_bindings::<EvKey>(path, "evdev_keys", keys)?;
        }
        let bad = |key: String, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            message,
        };
        for (i, chord) in raw.evdev_chord.iter().enumerate() {
            let key = |field: &str| format!("evdev_chord[{i}].{field}");
            config.chords.push(Chord {
                hold: chord
                    .hold
                    .parse()
                    .map_err(|e| bad(key("hold"), format!("{e}")))?,
                key: chord
                    .key
                    .parse()
                    .map_err(|e| bad(key("key"), format!("{e}")))?,
                action: chord
                    .action
                    .parse()
                    .map_err(|e| bad(key("action"), format!("{e}")))?,
            });
        }
        for (i, button) in raw.gpio.iter().enumerate() {
            config.gpio.push(Gpio {
                chip: button.chip.clone(),
                line: button.line,
                action: button
                    .action
                    .parse()
                    .map_err(|e| bad(format!("gpio[{i}].action"), format!("{e}")))?,
                active_low: button.active_low,
                debounce_ms: button.debounce_ms,
            });
        }
        Ok(config)
    }

    /// Loads `path` as [`Config::load`] does, but sets every mistake aside instead of failing:
    /// each key that is unknown, of the wrong type or out of range is left at its default
    /// (in a table, only the bad keys; in a list of tables such as `[[gpio]]`, only the bad
    /// entries), and returned as an error naming the key. A file that cannot be read or is
    /// not TOML at all gives the built-in defaults.
    pub fn load_lenient(path: &Path) -> (Self, Vec<ConfigError>) {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(source) => {
                let error = ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                };
                return (Self::defaults(), vec![error]);
            }
        };
        match Self::parse(path, &text) {
            Ok(config) => (config, Vec::new()),
            Err(first) => match text.parse::<toml::Table>() {
                Ok(table) => {
                    let (good, problems) = salvage(path, table, |t| {
                        t.try_into::<RawConfig>()
                            .map_err(|e| (None, e.message().to_owned()))
                            .and_then(|raw| Self::from_raw(path, raw).map(drop).map_err(flaw))
                    });
                    let config = good
                        .try_into::<RawConfig>()
                        .ok()
                        .and_then(|raw| Self::from_raw(path, raw).ok());
                    match config {
                        Some(mut config) => {
                            config.source = Some(path.to_path_buf());
                            (config, problems)
                        }
                        None => (Self::defaults(), vec![first]),
                    }
                }
                Err(_) => (Self::defaults(), vec![first]),
            },
        }
    }

    /// [`Config::find`], leniently ([`Config::load_lenient`]): the config with every mistake
    /// set aside, and the mistakes.
    pub fn find_lenient(explicit: Option<&Path>) -> (Self, Vec<ConfigError>) {
        match Self::path(explicit) {
            Some(path) => Self::load_lenient(&path),
            None => (Self::defaults(), Vec::new()),
        }
    }

    /// The file [`Config::find`] reads, if any.
    fn path(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        xdg.map(|d| d.join("codereader/config.toml"))
            .into_iter()
            .chain([PathBuf::from("/etc/codereader/config.toml")])
            .find(|path| path.is_file())
    }

    /// The config file to use: `explicit` (from `--config` or `CODEREADER_CONFIG`) must exist;
    /// otherwise `$XDG_CONFIG_HOME/codereader/config.toml`, then `/etc/codereader/config.toml`,
    /// if present; otherwise the built-in defaults.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn find(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match Self::path(explicit) {
            Some(path) => Self::load(&path),
            None => Ok(Self::defaults()),
        }
    }
}

/// Logs each mistake set aside by a lenient load, with what the device does instead (the
/// mistake's own message names the file, the key and what it takes).
pub fn log_mistakes(mistakes: &[String]) {
    for mistake in mistakes {
        crate::process::log(&format!(
            "error: {mistake}; set aside: its default is used until it is fixed"
        ));
    }
    if !mistakes.is_empty() {
        crate::process::log(
            "saying `settings_mistake`: the keys above have mistakes a helper can fix",
        );
    }
}

/// Why a part of a file was set aside: the key a validation named (if it did) and what is
/// wrong, without the file (the caller names it and the key).
type Flaw = (Option<String>, String);

/// A validation error as a [`Flaw`].
fn flaw(error: ConfigError) -> Flaw {
    match error {
        ConfigError::Value { key, message, .. } => (Some(key), message),
        other => (None, other.to_string()),
    }
}

/// Splits `table` into the keys `check` accepts and the mistakes: each top-level key is
/// checked alone; of a table that fails, each of its keys alone; of a list of tables that
/// fails, each entry alone. A combination that fails although each part passes (a key
/// bound to two actions) sets the whole top-level key aside.
fn salvage(
    path: &Path,
    table: toml::Table,
    check: impl Fn(toml::Table) -> Result<(), Flaw>,
) -> (toml::Table, Vec<ConfigError>) {
    let one = |key: &str, value: toml::Value| {
        let mut t = toml::Table::new();
        t.insert(key.to_owned(), value);
        t
    };
    let mistake = |key: String, message: String| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        message,
    };
    let mut good = toml::Table::new();
    let mut problems = Vec::new();
    for (key, value) in table {
        let message = match check(one(&key, value.clone())) {
            Ok(()) => {
                good.insert(key, value);
                continue;
            }
            Err((_, message)) => message,
        };
        match value {
            toml::Value::Table(inner) => {
                let mut kept = toml::Table::new();
                for (sub, v) in inner {
                    match check(one(&key, toml::Value::Table(one(&sub, v.clone())))) {
                        Ok(()) => {
                            kept.insert(sub, v);
                        }
                        Err((_, message)) => {
                            problems.push(mistake(format!("{key}.{sub}"), message));
                        }
                    }
                }
                if !kept.is_empty() {
                    good.insert(key, toml::Value::Table(kept));
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                let mut kept = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    match check(one(&key, toml::Value::Array(vec![item.clone()]))) {
                        Ok(()) => kept.push(item),
                        Err((_, message)) => {
                            problems.push(mistake(format!("{key}[{i}]"), message));
                        }
                    }
                }
                if !kept.is_empty() {
                    good.insert(key, toml::Value::Array(kept));
                }
            }
            _ => problems.push(mistake(key, message)),
        }
    }
    // Parts that pass alone but not together: set the whole key aside, one at a time.
    for _ in 0..good.len() {
        let Err((named, message)) = check(good.clone()) else {
            break;
        };
        let top = named.as_deref().and_then(|k| k.split(['.', '[']).next());
        let culprit = good
            .keys()
            .find(|k| Some(k.as_str()) == top)
            .or_else(|| good.keys().next())
            .cloned();
        let Some(culprit) = culprit else { break };
        good.remove(&culprit);
        problems.push(mistake(culprit, message));
    }
    (good, problems)
}

/// The user's own settings, stored in the state directory; each field overrides the config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    /// Format number.
    #[serde(default = "settings_format")]
    pub format: u32,
    /// Language tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Volume step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<i64>,
    /// Rate step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<i64>,
    /// The voice per language tag (format 2), overriding the config's `[voice]` table. A
    /// voice the pack no longer has is reported and the config's or pack's default speaks
    /// (see `voice::load_voices`); the entry is kept, so reinstalling the voice brings it back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub voice: BTreeMap<String, String>,
    /// Terminal key bindings that replace the config's, per action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, Vec<String>>,
    /// evdev key bindings that replace the config's, per action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evdev_keys: BTreeMap<String, Vec<String>>,
}

fn settings_format() -> u32 {
    SETTINGS_FORMAT
}

impl UserSettings {
    /// Loads `DIR/settings.toml`; a missing file means no changes yet. Older formats are
    /// read as they are (see [`SETTINGS_FORMAT`]); nothing is written.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key; [`ConfigError::FutureVersion`] for a file of
    /// a newer format (whatever else it holds).
    pub fn load(state_dir: &Path) -> Result<Self, ConfigError> {
        let path = state_dir.join(SETTINGS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let syntax = |e: toml::de::Error| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        };
        // The format first: a newer format may have keys this build does not know, and
        // "written by a newer codereader" is the message that helps then.
        let table: toml::Table = text.parse().map_err(syntax)?;
        if let Some(found) = table.get("format").and_then(toml::Value::as_integer) {
            if found > i64::from(SETTINGS_FORMAT) {
                return Err(ConfigError::FutureVersion {
                    path,
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                    supported: SETTINGS_FORMAT,
                });
            }
        }
        toml::from_str(&text).map_err(syntax)
    }

    /// [`UserSettings::load`], leniently: a key that is unknown or of the wrong type is set
    /// aside (the config's value is used), and a file that cannot be read, is not TOML or is
    /// of a newer format gives no settings at all; each such mistake is returned. Nothing is
    /// written (a newer program's file is kept for it).
    pub fn load_lenient(state_dir: &Path) -> (Self, Vec<ConfigError>) {
        let error = match Self::load(state_dir) {
            Ok(user) => return (user, Vec::new()),
            Err(error) => error,
        };
        let path = state_dir.join(SETTINGS_FILE);
        let table = match (&error, fs::read_to_string(&path)) {
            (ConfigError::Syntax { .. }, Ok(text)) => text.parse::<toml::Table>().ok(),
            _ => None,
        };
        let Some(table) = table else {
            return (Self::default(), vec![error]);
        };
        let (good, problems) = salvage(&path, table, |t| {
            t.try_into::<UserSettings>()
                .map(drop)
                .map_err(|e| (None, e.message().to_owned()))
        });
        match good.try_into::<UserSettings>() {
            Ok(user) => (user, problems),
            Err(_) => (Self::default(), vec![error]),
        }
    }

    /// Saves atomically and durably (mode 0600).
    ///
    /// # Errors
    /// [`ConfigError::Save`].
    pub fn save(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let mut copy = self.clone();
        copy.format = SETTINGS_FORMAT;
        let body = toml::to_string(&copy).map_err(|e| ConfigError::Syntax {
            path: state_dir.join(SETTINGS_FILE),
            message: e.to_string(),
        })?;
        let text = format!(
            "# codereader user settings; change them with `codereader settings` or the keys.\n{body}"
        );
        if !state_dir.exists() {
            // The token's secret will live here too: private from the start, as the token
            // store makes it.
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|source| StateError::Io {
                    path: state_dir.to_path_buf(),
                    action: "create the directory",
                    source,
                })?;
        }
        write_atomic(state_dir, SETTINGS_FILE, text.as_bytes())?;
        Ok(())
    }
}

/// Config and user settings combined: what the device uses.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Listening settings.
    pub listening: Listening,
    /// Terminal keys.
    pub keys: KeyMap<TermKey>,
    /// evdev keys.
    pub evdev_keys: KeyMap<EvKey>,
}

fn to_map<K: std::str::FromStr + Ord + Copy + std::fmt::Display>(
    names: &BTreeMap<Action, Vec<String>>,
) -> Result<KeyMap<K>, String>
where
    K::Err: std::fmt::Display,
{
    let mut parsed = BTreeMap::new();
    for (&action, list) in names {
        let keys: Result<Vec<K>, _> = list.iter().map(|k| k.parse::<K>()).collect();
        parsed.insert(action, keys.map_err(|e| e.to_string())?);
    }
    KeyMap::new(&parsed)
}

impl Effective {
    /// Applies `user` over `config`.
    ///
    /// # Errors
    /// [`ConfigError::Value`] naming the settings file's bad key.
    pub fn new(
        config: &Config,
        user: &UserSettings,
        state_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let path = state_dir.join(SETTINGS_FILE);
        let mut listening = config.defaults.clone();
        if let Some(language) = &user.language {
            listening.language.clone_from(language);
        }
        if let Some(v) = user.volume {
            listening.volume = step_in(&path, "volume", v, &VOLUME_RANGE)?;
        }
        if let Some(v) = user.rate {
            listening.rate = step_in(&path, "rate", v, &RATE_RANGE)?;
        }
        let mut keys = config.keys.clone();
        keys.extend(parse_bindings::<TermKey>(&path, "keys", &user.keys)?);
        let mut evdev_keys = config.evdev_keys.clone();
        evdev_keys.extend(parse_bindings::<EvKey>(
            &path,
            "evdev_keys",
            &user.evdev_keys,
        )?);
        let bad = |table: &str, message| ConfigError::Value {
            path: path.clone(),
            key: table.to_owned(),
            message,
        };
        Ok(Effective {
            listening,
            keys: to_map(&keys).map_err(|m| bad("keys", m))?,
            evdev_keys: to_map(&evdev_keys).map_err(|m| bad("evdev_keys", m))?,
        })
    }
}

impl Effective {
    /// [`Effective::new`], leniently: a value of the settings file that is out of range, or
    /// a key binding that cannot be used, is set aside (the config's is used) and returned.
    pub fn lenient(
        config: &Config,
        user: &UserSettings,
        state_dir: &Path,
    ) -> (Self, Vec<ConfigError>) {
        let mut user = user.clone();
        let mut problems = Vec::new();
        // Each round sets one field aside; there are four.
        for _ in 0..4 {
            match Self::new(config, &user, state_dir) {
                Ok(effective) => return (effective, problems),
                Err(error) => {
                    let key = match &error {
                        ConfigError::Value { key, .. } => key.clone(),
                        _ => String::new(),
                    };
                    match key.split(['.', '[']).next().unwrap_or_default() {
                        "volume" => user.volume = None,
                        "rate" => user.rate = None,
                        "evdev_keys" => user.evdev_keys.clear(),
                        _ => user.keys.clear(),
                    }
                    problems.push(error);
                }
            }
        }
        // Not reached (each round clears one of the four fields), but a device must start:
        // the config alone, then the built-in defaults (tested to be valid).
        let effective = Self::new(config, &UserSettings::default(), state_dir)
            .or_else(|_| Self::new(&Config::defaults(), &UserSettings::default(), state_dir));
        match effective {
            Ok(effective) => (effective, problems),
            Err(error) => {
                problems.push(error);
                let effective = Effective {
                    listening: config.defaults.clone(),
                    keys: KeyMap::default(),
                    evdev_keys: KeyMap::default(),
                };
                (effective, problems)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/codereader/config.toml"), text)
    }

    #[test]
    fn example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../config.example.toml");
        let config = parse(text).unwrap();
        let defaults = Config::defaults();
        assert_eq!(config.defaults, defaults.defaults);
        assert_eq!(config.keys, defaults.keys);
        assert_eq!(config.evdev_keys, defaults.evdev_keys);
        assert_eq!(config.input, defaults.input);
        assert_eq!(config.synth, defaults.synth);
        assert_eq!(config.voice, defaults.voice);
        assert_eq!(config.outputs, defaults.outputs);
    }

    #[test]
    fn the_desktop_table_turns_copying_on() {
        assert!(!parse("").unwrap().desktop.copy);
        assert!(parse("[desktop]\ncopy = true").unwrap().desktop.copy);
        let err = parse("[desktop]\ncopy = \"yes\"").unwrap_err().to_string();
        assert!(err.contains("copy"), "{err}");
    }

    #[test]
    fn the_voice_table_picks_a_voice_per_language() {
        let config = parse("[voice]\nen = \"espeak\"\nda = \"anna\"").unwrap();
        assert_eq!(config.voice.get("en").map(String::as_str), Some("espeak"));
        assert_eq!(config.voice.get("da").map(String::as_str), Some("anna"));
        let err = parse("[voice]\nen = 3").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("string"), "{err}");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let table = [
            ("volume = 5", "volume"),
            ("rate = -9", "rate"),
            ("colour = \"red\"", "colour"),
            ("[keys]\njump = [\"j\"]", "keys.jump"),
            ("[keys]\nspeak = [\"F13\"]", "keys.speak"),
            ("[keys]\nspeak = [\"a\"]\nstop = [\"a\"]", "`a`"),
            ("[evdev_keys]\nspeak = [\"KEY_NOPE\"]", "evdev_keys.speak"),
            ("[[gpio]]\nline = 17\naction = \"dance\"", "gpio[0].action"),
            ("[[gpio]]\naction = \"speak\"", "line"),
            ("[input]\nterminal = \"yes\"", "terminal"),
            ("synth = \"robot\"", "synth"),
            ("outputs = [\"speech\", \"smell\"]", "outputs"),
            ("outputs = [\"speech\", \"speechd\"]", "outputs"),
            ("[braille]\nhost = \"a:b\"", "braille.host"),
            ("[braille]\nport = 1", "port"),
            ("[speechd]\naddress = \"tcp\"", "speechd.address"),
            (
                "[code]\nwait_for_next_below = 21",
                "code.wait_for_next_below",
            ),
        ];
        for (text, key) in table {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
            assert!(err.contains("/etc/codereader/config.toml"), "{err}");
        }
    }

    #[test]
    fn a_lenient_load_sets_each_mistake_aside_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "volume = 5\nrate = 2\nvolme = -3\nsay_ready = \"yes\"\n\
                    outputs = [\"speech\", \"smell\"]\nlanguage = \"en\"\n\
                    [input]\nterminal = \"no\"\ngrab = false\n\
                    [keys]\nspeak = [\"k\"]\njump = [\"j\"]\n\
                    [[gpio]]\nline = 17\naction = \"dance\"\n\
                    [[gpio]]\nline = 18\naction = \"speak\"\n";
        fs::write(&path, text).unwrap();
        assert!(Config::load(&path).is_err());
        let (config, problems) = Config::load_lenient(&path);
        let keys: Vec<String> = problems
            .iter()
            .map(|p| match p {
                ConfigError::Value { key, .. } => key.clone(),
                other => panic!("{other}"),
            })
            .collect();
        for key in [
            "volume",
            "volme",
            "say_ready",
            "outputs",
            "input.terminal",
            "keys.jump",
            "gpio[0]",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
        }
        assert_eq!(problems.len(), 7, "{problems:?}");
        // What was right is kept; what was wrong is at its default.
        let defaults = Config::defaults();
        assert_eq!(config.defaults.rate, 2);
        assert_eq!(config.defaults.language, "en");
        assert_eq!(config.defaults.volume, defaults.defaults.volume);
        assert!(!config.say_ready);
        assert_eq!(config.outputs, defaults.outputs);
        assert!(config.input.terminal && !config.input.grab);
        assert_eq!(config.keys.get(&Action::Speak).unwrap(), &["k"]);
        assert_eq!(config.gpio.len(), 1);
        assert_eq!(config.gpio[0].line, 18);
        // Each message names the file, the key and the fix.
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let volume = all.iter().find(|m| m.contains("key `volume`:")).unwrap();
        assert!(volume.contains("use -8 to 0"), "{volume}");
        assert!(volume.contains("config.toml"), "{volume}");
        let misspelt = all.iter().find(|m| m.contains("key `volme`:")).unwrap();
        assert!(misspelt.contains("unknown field"), "{misspelt}");

        // Keys that pass alone but not together: the table is set aside as a whole.
        fs::write(&path, "[keys]\nspeak = [\"a\"]\nstop = [\"a\"]\n").unwrap();
        let (config, problems) = Config::load_lenient(&path);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(config.keys, defaults.keys);
        // Not TOML at all, or missing: the built-in defaults, and why.
        fs::write(&path, "volume = [\n").unwrap();
        let (config, problems) = Config::load_lenient(&path);
        assert_eq!(problems.len(), 1);
        assert_eq!(config.defaults, defaults.defaults);
        let (_, problems) = Config::load_lenient(&dir.path().join("nope.toml"));
        assert!(matches!(problems[..], [ConfigError::Io { .. }]));
    }

    #[test]
    fn lenient_settings_fall_back_to_the_config_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        fs::write(
            &path,
            "format = 2\nvolume = 7\nrate = 1\nlanguge = \"en\"\n[keys]\nspeak = [\"a\"]\nstop = [\"a\"]\n",
        )
        .unwrap();
        let (user, problems) = UserSettings::load_lenient(dir.path());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].to_string().contains("languge"), "{problems:?}");
        let config = Config::defaults();
        let (effective, problems) = Effective::lenient(&config, &user, dir.path());
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.iter().any(|m| m.contains("key `volume`")), "{all:?}");
        assert!(all.iter().any(|m| m.contains("key `keys`")), "{all:?}");
        assert_eq!(effective.listening.volume, config.defaults.volume);
        assert_eq!(effective.listening.rate, 1);
        assert_eq!(effective.keys.action(TermKey::Space), Some(Action::Speak));
        // A newer format: no settings, and the file is left alone.
        fs::write(&path, "format = 3\nvolume = -1\n").unwrap();
        let (user, problems) = UserSettings::load_lenient(dir.path());
        assert_eq!(user, UserSettings::default());
        assert!(matches!(problems[..], [ConfigError::FutureVersion { .. }]));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "format = 3\nvolume = -1\n"
        );
    }

    #[test]
    fn the_locale_names_the_language() {
        for (locale, tag) in [
            ("da_DK.UTF-8", Some("da")),
            ("en_GB.UTF-8@euro", Some("en")),
            ("de", Some("de")),
            ("C", None),
            ("POSIX", None),
            ("C.UTF-8", None),
            ("", None),
        ] {
            assert_eq!(language_of_locale(locale).as_deref(), tag, "{locale}");
        }
    }

    #[test]
    fn saving_settings_creates_a_private_state_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        let user = UserSettings {
            volume: Some(2),
            ..UserSettings::default()
        };
        user.save(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        assert_eq!(UserSettings::load(&state).unwrap().volume, Some(2));
    }

    /// `tests/data/settings-format-1.toml` was written by `codereader settings --volume -5
    /// --rate 2 --lang en --bind speak=k,enter --evdev-bind status=KEY_F2` built from main at
    /// d524e46 (settings format 1, before the `[voice]` table).
    #[test]
    fn format_1_settings_load_unchanged_and_are_saved_as_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let old = include_str!("../tests/data/settings-format-1.toml");
        assert!(old.contains("format = 1"), "{old}");
        fs::write(dir.path().join(SETTINGS_FILE), old).unwrap();
        let check = |user: &UserSettings| {
            assert_eq!(user.language.as_deref(), Some("en"));
            assert_eq!(user.volume, Some(-5));
            assert_eq!(user.rate, Some(2));
            assert_eq!(user.keys.get("speak").unwrap(), &["k", "enter"]);
            assert_eq!(user.keys.len(), 1);
            assert_eq!(user.evdev_keys.get("status").unwrap(), &["KEY_F2"]);
            assert_eq!(user.evdev_keys.len(), 1);
        };
        let mut user = UserSettings::load(dir.path()).unwrap();
        check(&user);
        assert!(user.voice.is_empty());
        // Loading wrote nothing.
        assert_eq!(
            fs::read_to_string(dir.path().join(SETTINGS_FILE)).unwrap(),
            old
        );
        let eff = Effective::new(&Config::defaults(), &user, dir.path()).unwrap();
        assert_eq!(eff.listening.volume, -5);
        assert_eq!(eff.keys.action(TermKey::Char('k')), Some(Action::Speak));
        user.voice.insert("en".into(), "espeak".into());
        user.save(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(SETTINGS_FILE)).unwrap();
        assert!(text.contains("format = 2"), "{text}");
        let back = UserSettings::load(dir.path()).unwrap();
        check(&back);
        assert_eq!(back.voice.get("en").map(String::as_str), Some("espeak"));
        assert_eq!(back.format, SETTINGS_FORMAT);
    }

    #[test]
    fn a_newer_settings_format_is_refused_even_with_keys_unknown_here() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        let text = "format = 3\nlanguage = \"en\"\n[earcons]\nstart = \"bell\"\n";
        fs::write(&path, text).unwrap();
        let err = UserSettings::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ConfigError::FutureVersion { found: 3, .. }),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // A damaged file (not TOML) is a syntax error naming the file.
        fs::write(&path, "format = 2\nvoice = [\n").unwrap();
        let err = UserSettings::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SETTINGS_FILE), "{err}");
    }

    #[test]
    fn user_settings_override_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut user = UserSettings::load(dir.path()).unwrap();
        assert_eq!(user, UserSettings::default());
        user.volume = Some(-5);
        user.language = Some("en".into());
        user.keys.insert("speak".into(), vec!["k".into()]);
        user.save(dir.path()).unwrap();
        let back = UserSettings::load(dir.path()).unwrap();
        assert_eq!(back.volume, Some(-5));
        let eff = Effective::new(&Config::defaults(), &back, dir.path()).unwrap();
        assert_eq!(eff.listening.volume, -5);
        assert_eq!(eff.listening.language, "en");
        assert_eq!(eff.keys.action(TermKey::Char('k')), Some(Action::Speak));
        assert_eq!(eff.keys.action(TermKey::Space), None);
        fs::write(dir.path().join(SETTINGS_FILE), "format = 9\n").unwrap();
        assert!(matches!(
            UserSettings::load(dir.path()),
            Err(ConfigError::FutureVersion { found: 9, .. })
        ));
    }
}
