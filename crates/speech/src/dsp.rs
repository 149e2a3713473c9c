//! Signal processing on mono `f32` buffers: earcons, gain, limiter, silence trim, resampling.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::SpeechError;
use crate::plan::{Earcon, SampleRate};

/// Highest absolute sample value the limiter lets through (-1 dBFS).
pub const CEILING: f32 = 0.891;

/// Speech loudness at the loudest volume step: every phrase, whatever the voice or language,
/// is brought to this RMS over its sounding frames ([`normalize_speech`]), so a change of
/// voice or language does not jump in level (-18 dBFS).
pub const SPEECH_RMS: f32 = 0.126;

/// Peak level of an earcon before the volume gain: a sine of this peak has the RMS of
/// speech ([`SPEECH_RMS`] times the square root of 2, -15 dBFS).
const EARCON_LEVEL: f32 = SPEECH_RMS * std::f32::consts::SQRT_2;

/// Frame length for measuring speech loudness.
const LOUDNESS_FRAME_MS: u32 = 10;

/// Frames quieter than this fraction of the loudest frame (-40 dB) are pauses, not speech.
const SOUNDING: f32 = 0.01;

/// The loudness of speech: the RMS over its sounding 10 ms frames (those within 40 dB of the
/// loudest), so pauses between words do not count. 0 for silence.
pub fn speech_rms(samples: &[f32], rate: SampleRate) -> f32 {
    let frame = rate.samples_for_ms(LOUDNESS_FRAME_MS).max(1);
    let powers: Vec<f32> = samples
        .chunks(frame)
        .map(|f| f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32)
        .collect();
    let loudest = powers.iter().fold(0f32, |m, p| m.max(*p));
    let sounding: Vec<f32> = powers
        .into_iter()
        .filter(|p| *p > 0.0 && *p >= loudest * SOUNDING * SOUNDING)
        .collect();
    if sounding.is_empty() {
        return 0.0;
    }
    (sounding.iter().sum::<f32>() / sounding.len() as f32).sqrt()
}

/// Brings one phrase to [`SPEECH_RMS`] (by [`speech_rms`]); the gain is kept within ±24 dB
/// so near-silence is not blown up. Peaks are left to [`limit`].
pub fn normalize_speech(samples: &mut [f32], rate: SampleRate) {
    let rms = speech_rms(samples, rate);
    if rms > 0.0 {
        apply_gain(samples, (SPEECH_RMS / rms).clamp(1.0 / 16.0, 16.0));
    }
}

/// Renders an earcon at `rate`: two notes, each with raised-cosine fades so nothing clicks.
pub fn earcon(kind: Earcon, rate: SampleRate) -> Vec<f32> {
    let (first, second) = match kind {
        Earcon::Start => (660.0, 880.0),
        Earcon::End => (880.0, 660.0),
        // One low, short note: unlike the chimes, so a stray key is not taken for speech.
        Earcon::Unknown => return tone(220.0, 120, rate),
    };
    let mut out = tone(first, 90, rate);
    out.extend(tone(second, 120, rate));
    out
}

/// A sine tone of `ms` milliseconds with 8 ms raised-cosine fade-in and fade-out.
fn tone(freq: f32, ms: u32, rate: SampleRate) -> Vec<f32> {
    let n = rate.samples_for_ms(ms);
    let fade = rate.samples_for_ms(8).max(1).min(n / 2);
    let step = std::f32::consts::TAU * freq / rate.hz() as f32;
    (0..n)
        .map(|i| {
            let edge = i.min(n - 1 - i);
            let env = if edge < fade {
                0.5 - 0.5 * (std::f32::consts::PI * edge as f32 / fade as f32).cos()
            } else {
                1.0
            };
            EARCON_LEVEL * env * (step * i as f32).sin()
        })
        .collect()
}

/// Multiplies every sample by `gain`.
pub fn apply_gain(samples: &mut [f32], gain: f32) {
    for s in samples {
        *s *= gain;
    }
}

/// Look-ahead peak limiter: smoothly lowers the gain around peaks so that no sample exceeds
/// [`CEILING`]. Attack 2 ms (ramping down *before* the peak), release 60 ms. Leaves buffers
/// that already fit untouched.
pub fn limit(samples: &mut [f32], rate: SampleRate) {
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    if peak <= CEILING {
        return;
    }
    let needed: Vec<f32> = samples
        .iter()
        .map(|s| {
            if s.abs() > CEILING {
                CEILING / s.abs()
            } else {
                1.0
            }
        })
        .collect();
    let attack = 1.0 / rate.samples_for_ms(2).max(1) as f32;
    let release = 1.0 / rate.samples_for_ms(60).max(1) as f32;
    let mut gain = needed;
    // Backward pass: the gain may only rise by `attack` per sample going back in time, so it
    // starts falling 2 ms before a peak. Forward pass: rises by at most `release` per sample.
    for i in (0..gain.len().saturating_sub(1)).rev() {
        gain[i] = gain[i].min(gain[i + 1] + attack);
    }
    for i in 1..gain.len() {
        gain[i] = gain[i].min(gain[i - 1] + release);
    }
    for (s, g) in samples.iter_mut().zip(gain) {
        *s = (*s * g).clamp(-CEILING, CEILING);
    }
}

/// Drops leading and trailing near-silence (below -50 dBFS), keeping `margin` samples of it.
pub fn trim_silence(samples: &[f32], margin: usize) -> &[f32] {
    const THRESHOLD: f32 = 0.003;
    let Some(first) = samples.iter().position(|s| s.abs() >= THRESHOLD) else {
        return &[];
    };
    let last = samples
        .iter()
        .rposition(|s| s.abs() >= THRESHOLD)
        .unwrap_or(first);
    let start = first.saturating_sub(margin);
    let end = (last + 1 + margin).min(samples.len());
    &samples[start..end]
}

/// Converts 16-bit samples to `f32` in -1.0..1.0.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// Converts an `f32` sample to 16-bit, rounding and saturating (exact inverse of [`to_f32`]).
pub fn to_i16(sample: f32) -> i16 {
    // Rounds half away from zero: add ±0.5, then `as` truncates toward zero. `as` from a
    // float saturates at the i16 range (and maps NaN to 0), so it cannot wrap; and it avoids
    // `f32::round`, a library call on baseline x86-64 that dominated writing a WAV.
    let scaled = sample * 32768.0;
    (scaled + 0.5f32.copysign(scaled)) as i16
}

/// A mono resampler between two fixed rates (rubato's FFT resampler, built once and reused).
pub struct Resample {
    from: SampleRate,
    to: SampleRate,
    fft: Option<Fft<f32>>,
}

impl std::fmt::Debug for Resample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resample({} -> {} Hz)", self.from.hz(), self.to.hz())
    }
}

impl Resample {
    /// A resampler from `from` to `to` (a no-op when they are equal).
    ///
    /// # Errors
    /// [`SpeechError::Resample`] if rubato rejects the rates.
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, SpeechError> {
        let fft = if from == to {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    from.hz() as usize,
                    to.hz() as usize,
                    1024,
                    1,
                    FixedSync::Both,
                )
                .map_err(|e| SpeechError::Resample(e.to_string()))?,
            )
        };
        Ok(Self { from, to, fft })
    }

    /// Input rate.
    pub fn from(&self) -> SampleRate {
        self.from
    }

    /// Output rate.
    pub fn to(&self) -> SampleRate {
        self.to
    }

    /// Resamples a whole clip (delay trimmed, so the output lines up with the input).
    ///
    /// # Errors
    /// [`SpeechError::Resample`] if rubato fails.
    pub fn process(&mut self, input: &[f32]) -> Result<Vec<f32>, SpeechError> {
        let Some(fft) = self.fft.as_mut() else {
            return Ok(input.to_vec());
        };
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let adapter = InterleavedSlice::new(input, 1, input.len())
            .map_err(|e| SpeechError::Resample(e.to_string()))?;
        let out = fft
            .process_all(&adapter, input.len(), None)
            .map_err(|e| SpeechError::Resample(e.to_string()))?;
        Ok(out.take_data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn earcon_starts_and_ends_silent_and_stays_below_ceiling() {
        for kind in [Earcon::Start, Earcon::End, Earcon::Unknown] {
            let e = earcon(kind, SampleRate::ESPEAK);
            assert!(e[0].abs() < 1e-3 && e[e.len() - 1].abs() < 0.02);
            assert!(e.iter().all(|s| s.abs() <= EARCON_LEVEL + 1e-6));
            // No jump between neighbouring samples larger than a 880 Hz sine allows.
            let max_step = e
                .windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0f32, f32::max);
            assert!(max_step < 0.07, "step {max_step}");
        }
    }

    #[test]
    fn limiter_keeps_peaks_under_ceiling_and_leaves_quiet_audio_alone() {
        let rate = SampleRate::ESPEAK;
        let mut loud: Vec<f32> = (0..4410).map(|i| 1.6 * (i as f32 * 0.05).sin()).collect();
        limit(&mut loud, rate);
        assert!(loud.iter().all(|s| s.abs() <= CEILING));
        let quiet: Vec<f32> = (0..4410).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect();
        let mut copy = quiet.clone();
        limit(&mut copy, rate);
        assert_eq!(copy, quiet);
    }

    #[test]
    fn resampling_keeps_duration_and_level() {
        let from = SampleRate::ESPEAK;
        let to = SampleRate::new(48_000).unwrap();
        let input: Vec<f32> = (0..22_050)
            .map(|i| 0.5 * (i as f32 * std::f32::consts::TAU * 440.0 / 22_050.0).sin())
            .collect();
        let out = Resample::new(from, to).unwrap().process(&input).unwrap();
        assert!((out.len() as i64 - 48_000).abs() <= 2, "{}", out.len());
        assert!((rms(&out[1000..47_000]) - rms(&input)).abs() < 0.01);
    }

    #[test]
    fn to_i16_inverts_to_f32_rounds_and_saturates() {
        for i in [i16::MIN, -32767, -1, 0, 1, 12345, i16::MAX] {
            assert_eq!(to_i16(to_f32(&[i])[0]), i);
        }
        assert_eq!(to_i16(0.4 / 32768.0), 0);
        assert_eq!(to_i16(0.6 / 32768.0), 1);
        assert_eq!(to_i16(-0.6 / 32768.0), -1);
        assert_eq!(to_i16(2.0), i16::MAX);
        assert_eq!(to_i16(-2.0), i16::MIN);
        assert_eq!(to_i16(f32::NAN), 0);
    }

    #[test]
    fn speech_is_brought_to_one_loudness_whatever_its_level_and_pauses() {
        let rate = SampleRate::ESPEAK;
        for (level, pause) in [(0.02f32, 0usize), (0.5, 22_050), (0.1, 5_000)] {
            let mut x: Vec<f32> = (0..11_025)
                .map(|i| level * (i as f32 * 0.07).sin() * (1.0 + (i as f32 * 0.001).sin()))
                .collect();
            x.extend(vec![0.0; pause]);
            x.extend(x.clone());
            normalize_speech(&mut x, rate);
            let db = 20.0 * (speech_rms(&x, rate) / SPEECH_RMS).log10();
            assert!(db.abs() < 0.1, "level {level}, pause {pause}: {db} dB");
        }
        let e = earcon(Earcon::Start, rate);
        let db = 20.0 * (speech_rms(&e, rate) / SPEECH_RMS).log10();
        assert!(db.abs() < 1.0, "earcon {db} dB");
        assert_eq!(speech_rms(&[0.0; 100], rate), 0.0);
    }

    #[test]
    fn trim_keeps_margin() {
        let mut x = vec![0.0; 100];
        x.extend([0.5; 10]);
        x.extend(vec![0.0; 100]);
        assert_eq!(trim_silence(&x, 5).len(), 20);
        assert!(trim_silence(&[0.0; 10], 5).is_empty());
    }
}
