//! The plan: what an utterance says, as a list of segments, independent of any backend.
//!
//! A code is never handed to a synthesiser as a number: [`Utterance::code`] turns
//! `"471293"` into start earcon, intro, the six digit *words* one by one with short pauses and
//! a longer pause between groups, and an end earcon.

use std::fmt;

use crate::error::SpeechError;
use crate::pack::VoicePack;
// The vocabulary lives in its own leaf module (pack uses it too); re-exported so
// `plan::Prompt` and friends keep their paths.
pub use crate::phrase::{Phrase, PhraseKey, Prompt, SampleRate, Speed};

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
    /// Silence until `ms` milliseconds of the utterance have sounded, whatever the speed
    /// (nothing if they already have): a moment on the clock to wait for, such as the start
    /// of the next time step, not a pause in the rhythm of speech.
    Until {
        /// Milliseconds from the start of the utterance.
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
