//! The flite command line as a synthesiser: used to render clip voices (`cargo xtask
//! voices`), never on the device, which plays the clips.
//!
//! Speed steps keep the pitch: each step is rendered afresh with flite's
//! `duration_stretch` feature (the unit durations the voice's model predicts are scaled;
//! its fundamental frequency is modelled separately and not touched), rather than by
//! resampling or time-stretching a step-0 rendering.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::SpeechError;
use crate::plan::{Phrase, SampleRate, Speed};
use crate::synth::Synth;

/// Words per minute that flite's `duration_stretch = 1` stands for, for mapping speed steps.
const FLITE_NATURAL_WPM: f64 = 160.0;

/// flite speaking one of its built-in voices (`slt`, `kal`, `kal16`, `awb`, `rms`).
#[derive(Debug, Clone)]
pub struct FliteSynth {
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
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let scratch =
            std::env::temp_dir().join(format!("codereader-flite-{}-{n}.wav", std::process::id()));
        let mut synth = Self {
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
        let output = Command::new("flite")
            .args(["-voice", &self.voice, "--setf"])
            .arg(format!("duration_stretch={stretch:.3}"))
            .arg("-t")
            .arg(text)
            .arg("-o")
            .arg(&self.scratch)
            .output()
            .map_err(|e| {
                fail(format!(
                    "cannot run flite (is the `flite` package installed?): {e}"
                ))
            })?;
        if !output.status.success() {
            return Err(fail(format!(
                "flite failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
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
        let stretch = (FLITE_NATURAL_WPM / wpm).clamp(0.3, 3.0);
        let (_, samples) = self.run(&phrase.text, stretch)?;
        for chunk in samples.chunks(256) {
            if !out(chunk) {
                break;
            }
        }
        Ok(())
    }
}
