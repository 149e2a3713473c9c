//! The flite and Festival command lines as synthesisers: used to render clip voices
//! (`cargo xtask voices`), never on the device, which plays the clips.
//!
//! Speed steps keep the pitch: each step is rendered afresh with the engine's duration
//! stretch (flite's `duration_stretch` feature, Festival's `Duration_Stretch` parameter: the
//! unit durations the voice's model predicts are scaled; its fundamental frequency is
//! modelled separately and not touched), rather than by resampling or time-stretching a
//! step-0 rendering.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::SpeechError;
use crate::plan::{Phrase, SampleRate, Speed};
use crate::synth::Synth;

/// Words per minute that flite's `duration_stretch = 1` stands for, for mapping speed steps.
const FLITE_NATURAL_WPM: f64 = 160.0;

/// The most the words themselves are stretched. Slower steps than that keep the words at
/// this pace and are slower only by their longer pauses (which scale with every step): at
/// a stretch of 1.52 (step -3 of the English pack) flite's slt voice says "four" so that the
/// recognizer hears "five" in almost every code (54 % of codes right, against 99 % at step
/// -2, stretch 1.36; docs/voices.md).
const MAX_STRETCH: f64 = 1.4;

/// Which command line renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Flite,
    Festival,
}

/// flite speaking one of its built-in voices (`slt`, `kal`, `kal16`, `awb`, `rms`), or
/// Festival's `text2wave` speaking an installed Festival voice (see [`FliteSynth::festival`]).
#[derive(Debug, Clone)]
pub struct FliteSynth {
    program: Program,
    voice: String,
    default_wpm: u16,
    sample_rate: SampleRate,
    scratch: PathBuf,
}

impl FliteSynth {
    /// Starts flite once (saying "one") to check that the program and voice exist and learn
    /// the voice's sample rate. `default_wpm` is the pack's rate at speed step 0.
    ///
    /// # Errors
    /// [`SpeechError::Flite`] if flite is missing, rejects the voice or writes no WAV.
    pub fn new(voice: &str, default_wpm: u16) -> Result<Self, SpeechError> {
        Self::start(Program::Flite, voice, default_wpm)
    }

    /// Festival's `text2wave` with the voice `voice` (e.g. `kal_diphone`,
    /// `cmu_us_slt_arctic_hts`; Debian packages `festival`, `festvox-*`).
    ///
    /// # Errors
    /// [`SpeechError::Flite`] if text2wave is missing, rejects the voice or writes no WAV.
    pub fn festival(voice: &str, default_wpm: u16) -> Result<Self, SpeechError> {
        Self::start(Program::Festival, voice, default_wpm)
    }

    fn start(program: Program, voice: &str, default_wpm: u16) -> Result<Self, SpeechError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let scratch =
            std::env::temp_dir().join(format!("codereader-flite-{}-{n}.wav", std::process::id()));
        if program == Program::Flite {
            // flite speaks an unknown voice name with its default voice and exits 0, so the
            // name is checked against the voices it lists.
            let listed = Command::new("flite").arg("-lv").output().map_err(|e| {
                SpeechError::Flite(format!(
                    "cannot run flite (is the `flite` package installed?): {e}"
                ))
            })?;
            let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
            let names = listed.split_once(':').map_or("", |(_, v)| v);
            if !names.split_whitespace().any(|v| v == voice) {
                return Err(SpeechError::Flite(format!(
                    "no flite voice `{voice}`; flite has: {}",
                    names.trim()
                )));
            }
        }
        let mut synth = Self {
            program,
            voice: voice.to_owned(),
            default_wpm,
            sample_rate: SampleRate::ESPEAK,
            scratch,
        };
        let (rate, _) = synth.run("one", 1.0)?;
        synth.sample_rate = SampleRate::new(rate)?;
        Ok(synth)
    }

    /// Runs flite on `text` and returns (rate, samples).
    fn run(&self, text: &str, stretch: f64) -> Result<(u32, Vec<i16>), SpeechError> {
        let fail = |m: String| SpeechError::Flite(format!("voice `{}`: {m}", self.voice));
        let output = match self.program {
            Program::Flite => Command::new("flite")
                .args(["-voice", &self.voice, "--setf"])
                .arg(format!("duration_stretch={stretch:.3}"))
                .arg("-t")
                .arg(text)
                .arg("-o")
                .arg(&self.scratch)
                .output(),
            Program::Festival => {
                let text_file = self.scratch.with_extension("txt");
                std::fs::write(&text_file, text)
                    .map_err(|e| fail(format!("{}: {e}", text_file.display())))?;
                let out = Command::new("text2wave")
                    .arg("-eval")
                    .arg(format!("(voice_{})", self.voice))
                    .arg("-eval")
                    .arg(format!("(Parameter.set 'Duration_Stretch {stretch:.3})"))
                    .arg(&text_file)
                    .arg("-o")
                    .arg(&self.scratch)
                    .output();
                let _ = std::fs::remove_file(&text_file);
                out
            }
        }
        .map_err(|e| {
            fail(format!(
                "cannot run {:?} (is it installed?): {e}",
                self.program
            ))
        })?;
        // text2wave exits 0 even for an unknown voice; it then says so on stderr.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stderr.contains("SIOD ERROR") {
            return Err(fail(format!(
                "{:?} failed ({}): {}",
                self.program,
                output.status,
                stderr.trim()
            )));
        }
        let reader = hound::WavReader::open(&self.scratch).map_err(|e| fail(e.to_string()))?;
        let spec = reader.spec();
        if spec.channels != 1 || spec.bits_per_sample != 16 {
            return Err(fail("flite wrote a WAV that is not mono 16-bit".into()));
        }
        let samples: Result<Vec<i16>, _> = reader.into_samples::<i16>().collect();
        let samples = samples.map_err(|e| fail(e.to_string()))?;
        let _ = std::fs::remove_file(&self.scratch);
        if samples.is_empty() {
            return Err(fail("flite produced no samples".into()));
        }
        Ok((spec.sample_rate, samples))
    }
}

impl Synth for FliteSynth {
    fn sample_rate(&self) -> SampleRate {
        self.sample_rate
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        // The pack's rate at this step relative to flite's natural pace; longer = slower.
        let wpm = f64::from(speed.words_per_minute(self.default_wpm));
        let stretch = (FLITE_NATURAL_WPM / wpm).clamp(0.3, MAX_STRETCH);
        let (_, samples) = self.run(&phrase.text, stretch)?;
        for chunk in samples.chunks(256) {
            if !out(chunk) {
                break;
            }
        }
        Ok(())
    }
}
