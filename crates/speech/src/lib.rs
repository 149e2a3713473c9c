//! Speaks one-time codes clearly, in any language that has a voice pack: the audio half of
//! the codereader token.
//!
//! # Overview
//!
//! ```text
//!  voices/<tag>/voice.toml ──► VoicePack ──► Utterance (plan: Vec<Segment>)
//!                                                   │
//!                       Synth (EspeakSynth | ClipSynth) ─► Renderer ─► Sink
//!                                                   (resample, volume, limiter)
//!                                                              │
//!                                   MemorySink | WavSink | LivePlayer (cpal, via rtrb ring)
//! ```
//!
//! * [`pack`]: [`VoiceLibrary`] loads `voices/*/voice.toml`; each [`VoicePack`] is validated
//!   on load (unknown or missing keys, bad values, bad clips are [`PackError`]s naming the file
//!   and key). Adding a language is adding a directory.
//! * [`phrase`]: the vocabulary both use: [`Prompt`] (one table: variant and `voice.toml`
//!   key), [`PhraseKey`], [`Phrase`], [`SampleRate`], [`Speed`].
//! * [`plan`]: [`Utterance::code`] turns `"471293"` into start earcon, intro, six digit
//!   *words* (never a number), a longer pause between groups, end earcon.
//!   [`Utterance::prompt`] says one prompt ([`Prompt`]: errors and feedback).
//!   [`Settings`] holds the [`Speed`] and [`Volume`] steps.
//! * [`synth`]: the [`Synth`] trait and its backends: [`EspeakSynth`] (espeak-ng's C library,
//!   all calls serialised on one owner thread that initialised it once, see [`Espeak::shared`];
//!   each finished phrase is cached, so a warm device synthesises nothing) and [`ClipSynth`]
//!   (a pack's pre-rendered clips, see [`clips::render_clips`] and `cargo xtask voices`).
//! * [`fallback`]: [`FallbackSynth`] speaks each phrase whose clip is missing or damaged with
//!   another synthesiser (live espeak-ng), so one bad file never silences a code.
//! * [`pipeline`]: [`Renderer`] renders segment by segment: synthesise, trim, resample with
//!   rubato to the sink's rate, bring each phrase to one speech loudness (so voices and
//!   languages do not jump in level), apply the volume in dB, limit peaks below -1 dBFS, write.
//! * [`sink`]: [`MemorySink`] and [`WavSink`] (hound, mono 16-bit, written atomically).
//! * [`live`]: [`LivePlayer`] plays on the default cpal output device, whatever its sample
//!   format, rate and channel count; [`LivePlayer::stop`] silences it at once,
//!   [`LivePlayer::replay`] says the last utterance again, [`LivePlayer::is_playing`] and
//!   [`LivePlayer::wait_until_idle`] tell when it has finished.
//!
//! # Invariants
//!
//! * Only `ffi` contains `unsafe`; only its owner thread calls espeak-ng.
//! * The cpal callback never allocates, frees, locks, blocks, logs or calls espeak: it pops
//!   from a pre-sized lock-free `rtrb` ring and reads atomics.
//! * This crate depends on no other codereader crate (its tests borrow the audio helpers of
//!   `codereader-e2e`, which depends on none either); a code is a `&str` of digits here.
//!
//! # Example
//!
//! ```no_run
//! use codereader_speech::{CodeIntro, Espeak, Renderer, SampleRate, Settings, Utterance, VoiceLibrary};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let library = VoiceLibrary::load(std::path::Path::new("voices"))?;
//! let pack = library.pack("da").ok_or("no Danish pack")?;
//! let mut synth = Espeak::shared()?.voice(pack)?;
//! let utterance = Utterance::code(pack, "471293", CodeIntro::First)?;
//! let report = Renderer::new(SampleRate::ESPEAK).render_to_wav(
//!     &utterance, &mut synth, Settings::default(), std::path::Path::new("code.wav"))?;
//! println!("{} samples", report.samples);
//! # Ok(()) }
//! ```

pub mod clips;
pub mod dsp;
pub mod error;
pub mod fallback;
mod ffi;
pub mod flite;
pub mod live;
pub mod pack;
pub mod phrase;
pub mod pipeline;
pub mod plan;
pub mod recorded;
pub mod sink;
pub mod synth;

pub use error::{PackError, SpeechError};
pub use fallback::{FallbackReport, FallbackSynth, StartBackup};
pub use flite::FliteSynth;
pub use live::{LivePlayer, OutputDevice, OutputInfo, output_devices};
pub use pack::{ClipSet, ClipSource, Engine, Pauses, VoiceLibrary, VoicePack, VoiceSpec};
pub use pipeline::{RenderReport, Renderer, SegmentSpan};
pub use plan::{
    CodeIntro, Earcon, Phrase, PhraseKey, Prompt, SampleRate, Segment, Settings, Speed, SpokenCode,
    Utterance, Volume,
};
pub use recorded::{RecordingLimits, RecordingProblem, check_recorded};
pub use sink::{MemorySink, Sink, WavSink};
pub use synth::{ClipSynth, Espeak, EspeakSynth, ProblemReport, Synth};
