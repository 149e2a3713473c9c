//! The config file (set up once, by whoever installs the device) and the user's settings
//! (changed with keys or `codereader settings`, kept in the state directory).
//!
//! Both are TOML. Every config key is optional and documented in `config.example.toml` with
//! its default. Unknown keys and bad values are errors that name the file and the key, so a
//! typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{self, Action, EvKey, KeyMap, TermKey};
use crate::state::{StateError, write_atomic};

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
}

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
    fn default() -> Self {
        Listening {
            language: "da".to_owned(),
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
        let mut config = Config::defaults();
        config.source = Some(path.to_path_buf());
        config.voices = raw.voices;
        config.synth = raw.synth.unwrap_or_default();
        // Names are checked against the packs when the voices load (`Voices::choosing`).
        config.voice = raw.voice.unwrap_or_default();
        if let Some(language) = raw.language {
            config.defaults.language = language;
        }
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

    /// The config file to use: `explicit` (from `--config` or `CODEREADER_CONFIG`) must exist;
    /// otherwise `$XDG_CONFIG_HOME/codereader/config.toml`, then `/etc/codereader/config.toml`,
    /// if present; otherwise the built-in defaults.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn find(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(path) = explicit {
            return Self::load(path);
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let candidates = xdg
            .map(|d| d.join("codereader/config.toml"))
            .into_iter()
            .chain([PathBuf::from("/etc/codereader/config.toml")]);
        for path in candidates {
            if path.is_file() {
                return Self::load(&path);
            }
        }
        Ok(Self::defaults())
    }
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
        ];
        for (text, key) in table {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
            assert!(err.contains("/etc/codereader/config.toml"), "{err}");
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
