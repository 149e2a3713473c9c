//! The vocabulary a voice pack supplies and a plan speaks: every [`Prompt`] (one table),
//! [`PhraseKey`] and [`Phrase`], and the units clips are stored in ([`SampleRate`] and the
//! [`Speed`] step).
//!
//! A leaf module: `pack` (which loads the texts and clips) and `plan` (which orders them
//! into an utterance) both use it, and it uses neither, so the two do not import each other.

use std::num::NonZeroU32;

use crate::error::SpeechError;

/// A sample rate in Hz; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRate(NonZeroU32);

impl SampleRate {
    /// espeak-ng's output rate and the default WAV rate: 22 050 Hz.
    pub const ESPEAK: SampleRate = match NonZeroU32::new(22_050) {
        Some(hz) => SampleRate(hz),
        // 22 050 is not zero; this arm is never compiled into a reachable path.
        None => panic!("22050 is non-zero"),
    };

    /// A rate in Hz.
    ///
    /// # Errors
    /// [`SpeechError::ZeroSampleRate`] for 0.
    pub fn new(hz: u32) -> Result<Self, SpeechError> {
        NonZeroU32::new(hz)
            .map(SampleRate)
            .ok_or(SpeechError::ZeroSampleRate)
    }

    /// The rate in Hz.
    pub fn hz(self) -> u32 {
        self.0.get()
    }

    /// Number of samples in `ms` milliseconds at this rate.
    pub fn samples_for_ms(self, ms: u32) -> usize {
        usize::try_from(u64::from(self.hz()) * u64::from(ms) / 1000).unwrap_or(usize::MAX)
    }
}

impl Default for SampleRate {
    fn default() -> Self {
        Self::ESPEAK
    }
}

/// Defines [`Prompt`] from one table (variant, its docs and its `voice.toml` key), so the
/// enum, [`Prompt::ALL`], [`Prompt::key`] and the index into a pack's prompt list can never
/// disagree: adding a prompt is adding one line.
macro_rules! prompts {
    ($($(#[$doc:meta])* $variant:ident = $key:literal,)+) => {
        /// Every fixed phrase a voice pack provides besides the digits.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Prompt {
            $($(#[$doc])* $variant,)+
        }

        impl Prompt {
            /// All prompts, in `voice.toml` order.
            pub const ALL: [Prompt; [$($key),+].len()] = [$(Prompt::$variant),+];

            /// Its key in `voice.toml`'s `[prompts]` table and its clip's file stem.
            pub fn key(self) -> &'static str {
                match self {
                    $(Prompt::$variant => $key,)+
                }
            }

            /// Its position in [`Prompt::ALL`] (and in a pack's list of prompt texts): the
            /// enum's discriminant, which the table above numbers from 0 in that same order.
            pub(crate) fn index(self) -> usize {
                self as usize
            }
        }
    };
}

prompts! {
    /// Before a code: "Din kode er" / "Your code is".
    Intro = "intro",
    /// Before a repeated code: "Igen" / "Again".
    ReplayIntro = "replay_intro",
    /// Feedback: volume went up.
    VolumeUp = "volume_up",
    /// Feedback: volume went down.
    VolumeDown = "volume_down",
    /// Feedback: speech got faster.
    Faster = "faster",
    /// Feedback: speech got slower.
    Slower = "slower",
    /// The language's own name, spoken when the user switches language.
    LanguageName = "language_name",
    /// Error: no token is enrolled.
    NoToken = "no_token",
    /// Error: the clock has not been set.
    ClockNotSet = "clock_not_set",
    /// Error: the device is blocked (too many attempts, or revoked).
    DeviceBlocked = "device_blocked",
    /// Error: the audio output failed.
    AudioFault = "audio_fault",
    /// Error: the battery is low.
    LowBattery = "low_battery",
    /// Error: the clock moved backwards.
    ClockBackwards = "clock_backwards",
    /// Feedback: the user asked for the next voice, but the language has no other voice.
    NoOtherVoice = "no_other_voice",
    /// Error: the token's stored data is damaged; the device must be set up again.
    StateDamaged = "state_damaged",
    /// Notice: some of the voice's clips are unusable, so another voice says those words.
    ClipsDamaged = "clips_damaged",
    /// Notice, in another language: the chosen language cannot be spoken at all.
    LanguageUnusable = "language_unusable",
    /// Error: the token's data cannot be read (wrong owner or mode, a newer format): the
    /// device needs service, not a new enrolment.
    NeedsService = "needs_service",
    /// Before a replayed code whose time step has passed: "that code has expired; your new
    /// code is".
    ExpiredIntro = "expired_intro",
    /// Status: before the serial's last digits ("Token ending in").
    StatusToken = "status_token",
    /// Status: the clock is set.
    StatusClockSet = "status_clock_set",
    /// Status: no problem found.
    StatusAllWell = "status_all_well",
    /// Start-up: the device is ready.
    Ready = "ready",
    /// Start-up: no keypad, button or terminal to listen to; the device waits for one.
    NoInput = "no_input",
    /// Help: before the key map.
    HelpIntro = "help_intro",
    /// Help: the speak action.
    HelpSpeak = "help_speak",
    /// Help: the replay action.
    HelpReplay = "help_replay",
    /// Help: the stop action.
    HelpStop = "help_stop",
    /// Help: the volume-up action.
    HelpVolumeUp = "help_volume_up",
    /// Help: the volume-down action.
    HelpVolumeDown = "help_volume_down",
    /// Help: the slower action.
    HelpSlower = "help_slower",
    /// Help: the faster action.
    HelpFaster = "help_faster",
    /// Help: the status action.
    HelpStatus = "help_status",
    /// Help: the help action itself.
    HelpHelp = "help_help",
    /// Help: the next-language action.
    HelpNextLanguage = "help_next_language",
    /// Help: the next-voice action.
    HelpNextVoice = "help_next_voice",
    /// Help: the quit action.
    HelpQuit = "help_quit",
    /// Key names: "or" between two keys.
    KeyOr = "key_or",
    /// Key names: the numeric keypad, before a keypad key.
    KeyKeypad = "key_keypad",
    /// Key names: the space bar.
    KeySpace = "key_space",
    /// Key names: Enter.
    KeyEnter = "key_enter",
    /// Key names: Escape.
    KeyEscape = "key_escape",
    /// Key names: arrow up.
    KeyUp = "key_up",
    /// Key names: arrow down.
    KeyDown = "key_down",
    /// Key names: arrow left.
    KeyLeft = "key_left",
    /// Key names: arrow right.
    KeyRight = "key_right",
    /// Key names: plus.
    KeyPlus = "key_plus",
    /// Key names: minus.
    KeyMinus = "key_minus",
    /// Key names: star (asterisk).
    KeyStar = "key_star",
    /// Key names: slash.
    KeySlash = "key_slash",
    /// Key names: the keypad's decimal point.
    KeyDot = "key_dot",
    /// Warning before a time-based code: the clock has not been synchronised since boot
    /// (a Pi without a real-time clock restores a saved time after a power cut).
    ClockUnsynced = "clock_unsynced",
    /// Notice: the config or settings have a mistake, so the device uses its defaults for
    /// what is wrong; a helper can fix it (the log names the key and the fix).
    SettingsMistake = "settings_mistake",
    /// Start-up: no token is set up yet; a helper can do it (the log, `status` and large
    /// print show the command).
    NoTokenSetUp = "no_token_set_up",
    /// Before a time-based code with little validity left: the device waits for the next
    /// time step and then says the new code.
    CodeChanging = "code_changing",
}

/// Which word of the pack a phrase is: the key under which a clip is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhraseKey {
    /// A digit word, 0..=9.
    Digit(u8),
    /// A prompt.
    Prompt(Prompt),
    /// Free text with no clip (a key's name in the help): always spoken live.
    Text,
}

impl PhraseKey {
    /// All keys a pack must provide (digits, then prompts).
    pub fn all() -> impl Iterator<Item = PhraseKey> {
        (0..10)
            .map(PhraseKey::Digit)
            .chain(Prompt::ALL.into_iter().map(PhraseKey::Prompt))
    }

    /// File stem of this phrase's clip: `digit-7`, `intro`.
    pub fn clip_stem(self) -> String {
        match self {
            PhraseKey::Digit(d) => format!("digit-{d}"),
            PhraseKey::Prompt(p) => p.key().to_owned(),
            PhraseKey::Text => "text".to_owned(),
        }
    }
}

/// One thing to say: its key (for clips) and its text (for a text-to-speech engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phrase {
    /// Which word or prompt.
    pub key: PhraseKey,
    /// The text in the pack's language.
    pub text: String,
}

/// Speech rate as a step around the pack's default rate; each step is about 15 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Speed(i8);

impl Speed {
    /// Slowest step.
    pub const MIN: Speed = Speed(-3);
    /// Fastest step.
    pub const MAX: Speed = Speed(3);
    /// Every step, slowest first.
    pub const ALL: [Speed; 7] = [
        Speed(-3),
        Speed(-2),
        Speed(-1),
        Speed(0),
        Speed(1),
        Speed(2),
        Speed(3),
    ];
    const FACTOR: f64 = 1.15;

    /// A step, clamped to `MIN..=MAX`.
    pub fn new(step: i8) -> Self {
        Speed(step.clamp(Self::MIN.0, Self::MAX.0))
    }

    /// The step number (0 is the pack's default rate).
    pub fn step(self) -> i8 {
        self.0
    }

    /// One step faster (saturating).
    pub fn faster(self) -> Self {
        Self::new(self.0.saturating_add(1))
    }

    /// One step slower (saturating).
    pub fn slower(self) -> Self {
        Self::new(self.0.saturating_sub(1))
    }

    /// Multiplier of the words-per-minute rate.
    pub fn factor(self) -> f64 {
        Self::FACTOR.powi(i32::from(self.0))
    }

    /// espeak-ng rate for a pack default rate, clamped to espeak's 80..=450 wpm.
    pub fn words_per_minute(self, default_wpm: u16) -> u16 {
        let wpm = (f64::from(default_wpm) * self.factor()).round();
        // Clamped to 80..=450 first, so the cast cannot truncate.
        wpm.clamp(80.0, 450.0) as u16
    }

    /// A pause of `ms` at step 0, scaled to this speed.
    pub fn scale_ms(self, ms: u32) -> u32 {
        (f64::from(ms) / self.factor()).round() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_index_is_its_place_in_all_and_keys_are_unique() {
        let mut keys = std::collections::HashSet::new();
        for (i, p) in Prompt::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert!(keys.insert(p.key()), "duplicate key {}", p.key());
        }
        assert_eq!(Prompt::ALL.len(), 55);
        assert_eq!(Prompt::ClockUnsynced.key(), "clock_unsynced");
    }
}
