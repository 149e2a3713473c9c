//! The plan: what an utterance says, as a list of segments, independent of any backend.
//!
//! A code is never handed to a synthesiser as a number: [`Utterance::code`] turns
//! `"471293"` into start earcon, intro, the six digit *words* one by one with short pauses and
//! a longer pause between groups, and an end earcon.

use std::fmt;
use std::num::NonZeroU32;

use crate::error::SpeechError;
use crate::pack::VoicePack;

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

/// A code to speak: 6 to 8 ASCII digits (parsed, so later code never re-checks).
///
/// `Debug` does not print the digits: a code is a secret for its lifetime.
#[derive(Clone, PartialEq, Eq)]
pub struct SpokenCode(Vec<u8>);

impl SpokenCode {
    /// Parses a code given as ASCII digits, e.g. `"471293"`.
    ///
    /// # Errors
    /// [`SpeechError::InvalidCode`] unless `code` is 6 to 8 ASCII digits.
    pub fn parse(code: &str) -> Result<Self, SpeechError> {
        let bytes = code.as_bytes();
        if !(6..=8).contains(&bytes.len()) || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(SpeechError::InvalidCode { len: bytes.len() });
        }
        Ok(Self(bytes.iter().map(|b| b - b'0').collect()))
    }

    /// The digit values, 0..=9.
    pub fn digits(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SpokenCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpokenCode({} digits)", self.0.len())
    }
}

/// Every fixed phrase a voice pack provides besides the digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Prompt {
    /// Before a code: "Din kode er" / "Your code is".
    Intro,
    /// Before a repeated code: "Igen" / "Again".
    ReplayIntro,
    /// Feedback: volume went up.
    VolumeUp,
    /// Feedback: volume went down.
    VolumeDown,
    /// Feedback: speech got faster.
    Faster,
    /// Feedback: speech got slower.
    Slower,
    /// The language's own name, spoken when the user switches language.
    LanguageName,
    /// Error: no token is enrolled.
    NoToken,
    /// Error: the clock has not been set.
    ClockNotSet,
    /// Error: the device is blocked (too many attempts, or revoked).
    DeviceBlocked,
    /// Error: the audio output failed.
    AudioFault,
    /// Error: the battery is low.
    LowBattery,
    /// Error: the clock moved backwards.
    ClockBackwards,
    /// Feedback: the user asked for the next voice, but the language has no other voice.
    NoOtherVoice,
    /// Error: the token's stored data is damaged; the device must be set up again.
    StateDamaged,
    /// Notice: some of the voice's clips are unusable, so another voice says those words.
    ClipsDamaged,
    /// Notice, in another language: the chosen language cannot be spoken at all.
    LanguageUnusable,
    /// Error: the token's data cannot be read (wrong owner or mode, a newer format): the
    /// device needs service, not a new enrolment.
    NeedsService,
    /// Before a replayed code whose time step has passed: "that code has expired; your new
    /// code is".
    ExpiredIntro,
    /// Status: before the serial's last digits ("Token ending in").
    StatusToken,
    /// Status: the clock is set.
    StatusClockSet,
    /// Status: no problem found.
    StatusAllWell,
    /// Start-up: the device is ready.
    Ready,
    /// Start-up: no keypad, button or terminal to listen to; the device waits for one.
    NoInput,
    /// Help: before the key map.
    HelpIntro,
    /// Help: the speak action.
    HelpSpeak,
    /// Help: the replay action.
    HelpReplay,
    /// Help: the stop action.
    HelpStop,
    /// Help: the volume-up action.
    HelpVolumeUp,
    /// Help: the volume-down action.
    HelpVolumeDown,
    /// Help: the slower action.
    HelpSlower,
    /// Help: the faster action.
    HelpFaster,
    /// Help: the status action.
    HelpStatus,
    /// Help: the help action itself.
    HelpHelp,
    /// Help: the next-language action.
    HelpNextLanguage,
    /// Help: the next-voice action.
    HelpNextVoice,
    /// Help: the quit action.
    HelpQuit,
    /// Key names: "or" between two keys.
    KeyOr,
    /// Key names: the numeric keypad, before a keypad key.
    KeyKeypad,
    /// Key names: the space bar.
    KeySpace,
    /// Key names: Enter.
    KeyEnter,
    /// Key names: Escape.
    KeyEscape,
    /// Key names: arrow up.
    KeyUp,
    /// Key names: arrow down.
    KeyDown,
    /// Key names: arrow left.
    KeyLeft,
    /// Key names: arrow right.
    KeyRight,
    /// Key names: plus.
    KeyPlus,
    /// Key names: minus.
    KeyMinus,
    /// Key names: star (asterisk).
    KeyStar,
    /// Key names: slash.
    KeySlash,
    /// Key names: the keypad's decimal point.
    KeyDot,
    /// Warning before a time-based code: the clock has not been synchronised since boot
    /// (a Pi without a real-time clock restores a saved time after a power cut).
    ClockUnsynced,
}

impl Prompt {
    /// All prompts, in `voice.toml` order.
    pub const ALL: [Prompt; 52] = [
        Prompt::Intro,
        Prompt::ReplayIntro,
        Prompt::VolumeUp,
        Prompt::VolumeDown,
        Prompt::Faster,
        Prompt::Slower,
        Prompt::LanguageName,
        Prompt::NoToken,
        Prompt::ClockNotSet,
        Prompt::DeviceBlocked,
        Prompt::AudioFault,
        Prompt::LowBattery,
        Prompt::ClockBackwards,
        Prompt::NoOtherVoice,
        Prompt::StateDamaged,
        Prompt::ClipsDamaged,
        Prompt::LanguageUnusable,
        Prompt::NeedsService,
        Prompt::ExpiredIntro,
        Prompt::StatusToken,
        Prompt::StatusClockSet,
        Prompt::StatusAllWell,
        Prompt::Ready,
        Prompt::NoInput,
        Prompt::HelpIntro,
        Prompt::HelpSpeak,
        Prompt::HelpReplay,
        Prompt::HelpStop,
        Prompt::HelpVolumeUp,
        Prompt::HelpVolumeDown,
        Prompt::HelpSlower,
        Prompt::HelpFaster,
        Prompt::HelpStatus,
        Prompt::HelpHelp,
        Prompt::HelpNextLanguage,
        Prompt::HelpNextVoice,
        Prompt::HelpQuit,
        Prompt::KeyOr,
        Prompt::KeyKeypad,
        Prompt::KeySpace,
        Prompt::KeyEnter,
        Prompt::KeyEscape,
        Prompt::KeyUp,
        Prompt::KeyDown,
        Prompt::KeyLeft,
        Prompt::KeyRight,
        Prompt::KeyPlus,
        Prompt::KeyMinus,
        Prompt::KeyStar,
        Prompt::KeySlash,
        Prompt::KeyDot,
        Prompt::ClockUnsynced,
    ];

    /// Its key in `voice.toml`'s `[prompts]` table and its clip's file stem.
    pub fn key(self) -> &'static str {
        match self {
            Prompt::Intro => "intro",
            Prompt::ReplayIntro => "replay_intro",
            Prompt::VolumeUp => "volume_up",
            Prompt::VolumeDown => "volume_down",
            Prompt::Faster => "faster",
            Prompt::Slower => "slower",
            Prompt::LanguageName => "language_name",
            Prompt::NoToken => "no_token",
            Prompt::ClockNotSet => "clock_not_set",
            Prompt::DeviceBlocked => "device_blocked",
            Prompt::AudioFault => "audio_fault",
            Prompt::LowBattery => "low_battery",
            Prompt::ClockBackwards => "clock_backwards",
            Prompt::NoOtherVoice => "no_other_voice",
            Prompt::StateDamaged => "state_damaged",
            Prompt::ClipsDamaged => "clips_damaged",
            Prompt::LanguageUnusable => "language_unusable",
            Prompt::NeedsService => "needs_service",
            Prompt::ExpiredIntro => "expired_intro",
            Prompt::StatusToken => "status_token",
            Prompt::StatusClockSet => "status_clock_set",
            Prompt::StatusAllWell => "status_all_well",
            Prompt::Ready => "ready",
            Prompt::NoInput => "no_input",
            Prompt::HelpIntro => "help_intro",
            Prompt::HelpSpeak => "help_speak",
            Prompt::HelpReplay => "help_replay",
            Prompt::HelpStop => "help_stop",
            Prompt::HelpVolumeUp => "help_volume_up",
            Prompt::HelpVolumeDown => "help_volume_down",
            Prompt::HelpSlower => "help_slower",
            Prompt::HelpFaster => "help_faster",
            Prompt::HelpStatus => "help_status",
            Prompt::HelpHelp => "help_help",
            Prompt::HelpNextLanguage => "help_next_language",
            Prompt::HelpNextVoice => "help_next_voice",
            Prompt::HelpQuit => "help_quit",
            Prompt::KeyOr => "key_or",
            Prompt::KeyKeypad => "key_keypad",
            Prompt::KeySpace => "key_space",
            Prompt::KeyEnter => "key_enter",
            Prompt::KeyEscape => "key_escape",
            Prompt::KeyUp => "key_up",
            Prompt::KeyDown => "key_down",
            Prompt::KeyLeft => "key_left",
            Prompt::KeyRight => "key_right",
            Prompt::KeyPlus => "key_plus",
            Prompt::KeyMinus => "key_minus",
            Prompt::KeyStar => "key_star",
            Prompt::KeySlash => "key_slash",
            Prompt::KeyDot => "key_dot",
            Prompt::ClockUnsynced => "clock_unsynced",
        }
    }

    pub(crate) fn index(self) -> usize {
        Prompt::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
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

/// A short tone generated in code (no synthesiser, so it plays at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earcon {
    /// Rising two-note chime before speech.
    Start,
    /// Falling two-note chime after speech.
    End,
    /// A short low tone: the key pressed does nothing.
    Unknown,
}

/// One step of an utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A generated tone.
    Earcon(Earcon),
    /// Speech from the synthesiser.
    Speech(Phrase),
    /// Silence, in milliseconds at normal speed (scaled by the speed setting).
    Pause {
        /// Length at speed step 0.
        ms: u32,
    },
}

/// What the device wants said before a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeIntro {
    /// "Your code is".
    First,
    /// "Again" (the user asked to hear the code once more).
    Replay,
    /// "That code has expired; your new code is" (the user asked to hear the last code
    /// again, but its time has passed: this is a different code).
    Expired,
}

/// A planned utterance: segments in order. Build it with [`Utterance::code`] or
/// [`Utterance::prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    segments: Vec<Segment>,
}

impl Utterance {
    /// Plans a code: start earcon, intro, digit words grouped as the pack says, end earcon.
    ///
    /// # Errors
    /// [`SpeechError::InvalidCode`] unless `code` is 6 to 8 ASCII digits.
    pub fn code(pack: &VoicePack, code: &str, intro: CodeIntro) -> Result<Self, SpeechError> {
        let code = SpokenCode::parse(code)?;
        Ok(Self::spoken_code(pack, &code, intro))
    }

    /// Like [`Utterance::code`] for an already parsed code.
    pub fn spoken_code(pack: &VoicePack, code: &SpokenCode, intro: CodeIntro) -> Self {
        let pauses = pack.pauses();
        let intro = match intro {
            CodeIntro::First => Prompt::Intro,
            CodeIntro::Replay => Prompt::ReplayIntro,
            CodeIntro::Expired => Prompt::ExpiredIntro,
        };
        let mut segments = vec![
            Segment::Earcon(Earcon::Start),
            Segment::Pause {
                ms: pauses.around_earcon_ms,
            },
            Segment::Speech(pack.phrase(PhraseKey::Prompt(intro))),
            Segment::Pause {
                ms: pauses.after_intro_ms,
            },
        ];
        let groups = pack.grouping(code.digits().len());
        let mut digits = code.digits().iter();
        for (g, &size) in groups.iter().enumerate() {
            if g > 0 {
                segments.push(Segment::Pause {
                    ms: pauses.between_groups_ms,
                });
            }
            for i in 0..size {
                let Some(&d) = digits.next() else { break };
                if i > 0 {
                    segments.push(Segment::Pause {
                        ms: pauses.between_digits_ms,
                    });
                }
                segments.push(Segment::Speech(pack.phrase(PhraseKey::Digit(d))));
            }
        }
        segments.push(Segment::Pause {
            ms: pauses.around_earcon_ms,
        });
        segments.push(Segment::Earcon(Earcon::End));
        Self { segments }
    }

    /// Plans a single prompt (feedback or error message), without earcons.
    pub fn prompt(pack: &VoicePack, prompt: Prompt) -> Self {
        Self {
            segments: vec![Segment::Speech(pack.phrase(PhraseKey::Prompt(prompt)))],
        }
    }

    /// Builds an utterance from explicit segments.
    pub fn from_segments(segments: Vec<Segment>) -> Self {
        Self { segments }
    }

    /// The segments in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
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

/// Output level in steps of [`Volume::STEP_DB`] dB; `MAX` is the loudest step.
///
/// `MIN..=MAX` spans 24 dB (EN 301 549 8.2.1 asks for at least 18 dB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Volume(i8);

impl Volume {
    /// Size of one step in dB.
    pub const STEP_DB: f32 = 3.0;
    /// Quietest step (-24 dB below `MAX`).
    pub const MIN: Volume = Volume(-8);
    /// Loudest step (0 dB: speech peaks near -3 dBFS).
    pub const MAX: Volume = Volume(0);

    /// A step, clamped to `MIN..=MAX`.
    pub fn new(step: i8) -> Self {
        Volume(step.clamp(Self::MIN.0, Self::MAX.0))
    }

    /// The step number (0 is loudest).
    pub fn step(self) -> i8 {
        self.0
    }

    /// One step louder (saturating).
    pub fn louder(self) -> Self {
        Self::new(self.0.saturating_add(1))
    }

    /// One step quieter (saturating).
    pub fn quieter(self) -> Self {
        Self::new(self.0.saturating_sub(1))
    }

    /// Gain relative to the loudest step, in dB (≤ 0).
    pub fn gain_db(self) -> f32 {
        f32::from(self.0) * Self::STEP_DB
    }

    /// Linear amplitude factor of [`Volume::gain_db`].
    pub fn gain(self) -> f32 {
        10f32.powf(self.gain_db() / 20.0)
    }
}

impl Default for Volume {
    /// Two steps below the loudest.
    fn default() -> Self {
        Volume(-2)
    }
}

/// The user's listening settings (the language is chosen by picking a [`VoicePack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// Speech rate step.
    pub speed: Speed,
    /// Volume step.
    pub volume: Volume,
}
