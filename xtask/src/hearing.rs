//! Hearing what the appliance said: the system test's recording of the guest's sound card
//! matched against the voice's own clips and earcons (`xtask/src/system_test.rs`).
//!
//! The device plays the very clips the test has (the pack rendered at speed step 0), so
//! every piece of a recording is a known clip: the start and end chimes, a sentence, a digit.
//! Pieces are compared as short-time magnitude spectra (10 ms frames), not as waveforms: the
//! recording went through the guest's resampler and QEMU's card, and a waveform match
//! shifted by a fraction of a sample at 8 kHz loses most of its correlation, while the
//! spectra do not care about phase. A piece is named only when its best clip beats every
//! other clip by [`MARGIN`]; anything else (a word cut by the emulated card's dropouts
//! under TCG, noise) is an unknown piece, and a code with an unknown piece from its intro
//! to its end chime is not a code that was heard: the test asks again (replay) instead of
//! guessing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The rate the matching runs at.
const MATCH_RATE: u32 = 8_000;
/// Samples per spectral frame (32 ms) and between frames (10 ms).
const FRAME: usize = 256;
const HOP: usize = 80;
/// The frequency bins used (62 Hz to 3.75 kHz).
const BINS: std::ops::Range<usize> = 2..120;
/// A named piece's score (normalised correlation of the spectra) must be at least this...
const ACCEPT: f64 = 0.80;
/// ...and beat the best other clip's by this much.
pub(crate) const MARGIN: f64 = 0.08;
/// The prompts a code utterance (or the unplugged keypad) can hold.
const PROMPTS: &[&str] = &[
    "intro",
    "replay_intro",
    "clock_unsynced",
    "expired_intro",
    "no_input",
    "code_changing",
];
/// The sentences a code starts with.
const INTROS: &[&str] = &["intro", "replay_intro", "expired_intro"];
/// "This code is about to change. Your new code comes in a moment."
const CHANGING: &str = "code_changing";
/// The chimes' labels.
pub(crate) const START: &str = "chime_start";
pub(crate) const END: &str = "chime_end";

/// One reference: a clip or a chime, as spectral frames.
struct Reference {
    label: String,
    frames: Vec<Vec<f32>>,
    norm: f64,
}

pub(crate) struct Clips {
    refs: Vec<Reference>,
}

/// A piece of an utterance: what it was heard as, how surely.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    /// Seconds from the start of the utterance.
    pub(crate) at: f64,
    /// The clip it matched, `None` when no clip matched surely.
    pub(crate) label: Option<String>,
    /// The best clip (named even when not sure), its score and its lead over the next
    /// best other clip.
    pub(crate) best: String,
    pub(crate) score: f64,
    pub(crate) margin: f64,
}

/// What one utterance was heard to say.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heard {
    pub(crate) pieces: Vec<Piece>,
}

impl Heard {
    /// The surely named pieces, in order (unknown ones as `?`).
    pub(crate) fn phrases(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .map(|p| p.label.as_deref().unwrap_or("?"))
            .collect()
    }

    /// Whether `label` was surely heard.
    pub(crate) fn says(&self, label: &str) -> bool {
        self.pieces
            .iter()
            .any(|p| p.label.as_deref() == Some(label))
    }

    /// The first sentence of the code (after the start chime, and after "this code is
    /// about to change" when the code followed it at once), when surely heard.
    pub(crate) fn first_sentence(&self) -> Option<&str> {
        self.pieces
            .iter()
            .find(|p| !matches!(p.label.as_deref(), Some(START | CHANGING)))
            .and_then(|p| p.label.as_deref())
            .filter(|l| l.len() > 1)
    }

    /// The code's pieces: up to its end chime (what follows it is another utterance).
    fn spoken(&self) -> &[Piece] {
        let first_digit = self.pieces.iter().position(Piece::is_digit);
        let end = first_digit.and_then(|d| {
            self.pieces[d..]
                .iter()
                .position(|p| p.label.as_deref() == Some(END))
                .map(|e| d + e + 1)
        });
        &self.pieces[..end.unwrap_or(self.pieces.len())]
    }

    /// The six digits, only when the code was heard surely: its intro ("Your code is",
    /// "Again...", "...Your new code is"), the six digits and the end chime each named
    /// surely, one after the other, so that no digit can hide in an unsure piece. (The start
    /// chime and the clock warning before the intro may be unsure: the emulated card often
    /// garbles the first half second after the guest starts its stream.)
    pub(crate) fn code(&self) -> Result<String, String> {
        let digits = self.digits()?;
        let spoken = self.spoken();
        let first_digit = spoken.iter().position(Piece::is_digit).unwrap_or(0);
        let intro = first_digit
            .checked_sub(1)
            .and_then(|i| spoken[i].label.as_deref());
        if intro.is_some_and(|l| INTROS.contains(&l)) {
            return Ok(digits);
        }
        let unsure = spoken[..first_digit]
            .iter()
            .rev()
            .find(|p| p.label.is_none());
        if let Some(unsure) = unsure {
            return Err(format!(
                "unsure at {:.2} s (best {} {:.2}, lead {:.2}): {}",
                unsure.at,
                unsure.best,
                unsure.score,
                unsure.margin,
                self.summary()
            ));
        }
        Err(format!("no intro before the digits: {}", self.summary()))
    }

    /// The six digits when every piece from the first digit to the end chime was named
    /// surely (what came before, e.g. a chime or a sentence cut by the emulated card, may be
    /// unsure): one reading, to be confirmed by a second one that agrees.
    pub(crate) fn digits(&self) -> Result<String, String> {
        let spoken = self.spoken();
        if spoken.last().and_then(|p| p.label.as_deref()) != Some(END) {
            return Err(format!("no end chime: {}", self.summary()));
        }
        let first_digit = spoken.iter().position(Piece::is_digit).unwrap_or(0);
        if spoken[first_digit..].iter().any(|p| p.label.is_none()) {
            return Err(format!("a digit unsure: {}", self.summary()));
        }
        let digits: String = spoken
            .iter()
            .filter(|p| p.is_digit())
            .filter_map(|p| p.label.as_deref())
            .collect();
        if digits.len() != 6 {
            return Err(format!("not six digits: {}", self.summary()));
        }
        Ok(digits)
    }

    /// Only "this code is about to change" (the code comes when its time step begins).
    pub(crate) fn code_changing(&self) -> bool {
        self.says(CHANGING) && !self.pieces.iter().any(Piece::is_digit)
    }

    /// Whether the utterance has ended: the end chime after the digits, or a sentence
    /// without a code.
    pub(crate) fn ended(&self) -> bool {
        self.code_changing()
            || self
                .spoken()
                .last()
                .is_some_and(|p| p.label.as_deref() == Some(END))
    }

    /// The pieces with their scores, for messages.
    pub(crate) fn summary(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match &p.label {
                Some(l) => format!("{l}({:.3}/{:.3})", p.score, p.margin),
                None => format!("?[{} {:.3}/{:.3}]", p.best, p.score, p.margin),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Piece {
    fn is_digit(&self) -> bool {
        self.label.as_ref().is_some_and(|l| l.len() == 1)
    }
}

impl Clips {
    /// The digits and prompts of `pack`'s flite-slt voice at speed step 0, and the chimes
    /// taken from `chimes` (a code rendered by `codereader-speak render` at 48 kHz: its
    /// first and last sounds).
    pub(crate) fn load(pack: &Path, chimes: &Path) -> Result<Clips, String> {
        let dir = pack.join("clips/flite-slt");
        let mut refs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix("@0.wav"))
            else {
                continue;
            };
            let label = stem.strip_prefix("digit-").unwrap_or(stem);
            if label.len() == 1 || PROMPTS.contains(&label) {
                let (rate, samples) = read_wav(&path)?;
                refs.push(Reference::new(label, &to_match_rate(&samples, rate)));
            }
        }
        if refs.iter().filter(|r| r.label.len() == 1).count() != 10 {
            return Err(format!("not ten digit clips in {}", dir.display()));
        }
        let (rate, rendered) = read_wav(chimes)?;
        let rendered = to_match_rate(&rendered, rate);
        let runs = loud_runs(&rendered, 10);
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            return Err(format!("no chimes in {}", chimes.display()));
        };
        // Each chime with the silence after it (150 ms before the intro; the end of the
        // file): a chime's soft tail is then part of it, not a piece of its own.
        let tail = (MATCH_RATE / 10) as usize;
        refs.push(Reference::new(
            START,
            &rendered[first.0..(first.1 + tail).min(rendered.len())],
        ));
        refs.push(Reference::new(END, &rendered[last.0..]));
        Ok(Clips { refs })
    }

    /// Names the pieces of `audio` (mono, `rate`) one after the other: at each onset of
    /// sound, the clip whose spectra correlate best (over a few frames of alignment) is
    /// taken when it is sure, and the reading goes on after its end; an unsure piece is
    /// skipped to the next silence.
    pub(crate) fn decode(&self, audio: &[f32], rate: u32) -> Heard {
        let x = to_match_rate(audio, rate);
        let frames = spectra(&x);
        let loud = loud_frames(&x);
        let floor = frames.iter().flatten().copied().fold(f32::MAX, f32::min);
        let mut heard = Heard::default();
        let mut cursor = 0;
        while let Some(onset) = (cursor..loud.len()).find(|&i| loud[i]) {
            let mut scored: Vec<(f64, usize, &Reference)> = self
                .refs
                .iter()
                .map(|r| {
                    let lo = onset.saturating_sub(6).max(cursor.saturating_sub(2));
                    (lo..=onset + 3)
                        .map(|t| (r.score(&frames, t, floor), t, r))
                        .fold((f64::MIN, 0, r), |a, b| if b.0 > a.0 { b } else { a })
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (score, at, best) = scored[0];
            let second = scored
                .iter()
                .find(|s| s.2.label != best.label)
                .map_or(0.0, |s| s.0);
            let margin = score - second;
            let sure = score >= ACCEPT && margin >= MARGIN;
            heard.pieces.push(Piece {
                at: (at * HOP) as f64 / f64::from(MATCH_RATE),
                label: sure.then(|| best.label.clone()),
                best: best.label.clone(),
                score,
                margin,
            });
            cursor = if sure {
                (at + best.frames.len()).max(onset + 1)
            } else {
                // To the next silence of 150 ms: the rest of what could not be named.
                let mut i = onset;
                let mut quiet = 0;
                while i < loud.len() && quiet < 15 {
                    quiet = if loud[i] { 0 } else { quiet + 1 };
                    i += 1;
                }
                i
            };
        }
        heard
    }
}

impl Reference {
    fn new(label: &str, samples: &[f32]) -> Reference {
        let mut frames = spectra(trim_start(samples));
        // Centred: the score is a Pearson correlation, blind to the recording's level (a
        // constant in the log spectrum).
        let count = frames.iter().map(Vec::len).sum::<usize>().max(1);
        let mean = frames.iter().flatten().sum::<f32>() / count as f32;
        for v in frames.iter_mut().flatten() {
            *v -= mean;
        }
        let norm = frames
            .iter()
            .flatten()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        Reference {
            label: label.to_owned(),
            frames,
            norm,
        }
    }

    /// Pearson correlation of this reference's log spectra with `frames` from `t` on (frames
    /// past the end count as silence, so a cut-off piece scores low).
    fn score(&self, frames: &[Vec<f32>], t: usize, floor: f32) -> f64 {
        let (mut dot, mut sum, mut squares, mut count) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
        let silence = vec![floor; BINS.len()];
        for (i, mine) in self.frames.iter().enumerate() {
            let theirs = frames.get(t + i).unwrap_or(&silence);
            for (a, b) in mine.iter().zip(theirs) {
                let b = f64::from(*b);
                dot += f64::from(*a) * b;
                sum += b;
                squares += b * b;
                count += 1.0;
            }
        }
        let energy = (squares - sum * sum / count.max(1.0)).max(0.0);
        if energy < 1e-6 || self.norm < 1e-6 {
            // All silence here: nothing to match.
            return 0.0;
        }
        dot / (energy.sqrt() * self.norm)
    }
}

/// Short-time magnitude spectra (square-rooted, so that loud frames do not drown the rest)
/// of 8 kHz audio: a frame every [`HOP`] samples.
fn spectra(x: &[f32]) -> Vec<Vec<f32>> {
    let window: Vec<f32> = (0..FRAME)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / FRAME as f32).cos())
        .collect();
    let mut out: Vec<Vec<f32>> = Vec::new();
    let mut start = 0;
    while start < x.len() {
        let mut re: Vec<f32> = (0..FRAME)
            .map(|i| x.get(start + i).copied().unwrap_or(0.0) * window[i])
            .collect();
        let mut im = vec![0.0_f32; FRAME];
        fft(&mut re, &mut im);
        out.push(
            BINS.map(|k| (re[k] * re[k] + im[k] * im[k] + 1e-12).log10())
                .collect(),
        );
        start += HOP;
    }
    // 50 dB below the loudest bin, everything is the same silence: the recording's quiet
    // and the clip's need not agree there.
    let peak = out.iter().flatten().copied().fold(f32::MIN, f32::max);
    for v in out.iter_mut().flatten() {
        *v = v.max(peak - 5.0);
    }
    out
}

/// In-place radix-2 FFT (`re.len()` a power of two).
fn fft(re: &mut [f32], im: &mut [f32]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let angle = -2.0 * std::f32::consts::PI / len as f32;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = (angle * k as f32).sin_cos();
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * c - im[b] * s;
                let ti = re[b] * s + im[b] * c;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

/// For each [`HOP`] of 8 kHz audio: louder than -40 dB below its loudest hop.
fn loud_frames(x: &[f32]) -> Vec<bool> {
    let rms: Vec<f32> = x
        .chunks(HOP)
        .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let loudest = rms.iter().copied().fold(0.0, f32::max);
    rms.iter()
        .map(|&r| r > loudest * 0.01 && r > 1e-4)
        .collect()
}

/// Stretches of sound in 8 kHz audio apart by at least `gap` hops of silence, as sample
/// ranges.
fn loud_runs(x: &[f32], gap: usize) -> Vec<(usize, usize)> {
    let loud = loud_frames(x);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, _) in loud.iter().enumerate().filter(|(_, l)| **l) {
        match runs.last_mut() {
            Some(run) if i - run.1 <= gap => run.1 = i,
            _ => runs.push((i, i)),
        }
    }
    runs.into_iter()
        .map(|(s, e)| (s * HOP, ((e + 1) * HOP).min(x.len())))
        .collect()
}

/// `samples` from their first sound on (the clips' ends are kept: what follows a clip in a
/// recording is read after its whole length).
fn trim_start(samples: &[f32]) -> &[f32] {
    let loudest = samples.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
    let start = samples
        .iter()
        .position(|x| x.abs() > loudest * 0.01)
        .unwrap_or(0);
    &samples[start..]
}

/// `samples` at `rate` resampled to [`MATCH_RATE`]: low-passed below 3.8 kHz (a windowed
/// sinc, so that nothing above folds into the band), then read by linear interpolation.
pub(crate) fn to_match_rate(samples: &[f32], rate: u32) -> Vec<f32> {
    if rate == MATCH_RATE || samples.is_empty() {
        return samples.to_vec();
    }
    let cutoff = 3_800.0 / rate as f32;
    let taps = 4 * (rate / MATCH_RATE) as usize * 4 + 1;
    let half = (taps / 2) as isize;
    let kernel: Vec<f32> = (0..taps as isize)
        .map(|i| {
            let n = (i - half) as f32;
            let sinc = if n == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f32::consts::PI * cutoff * n).sin() / (std::f32::consts::PI * n)
            };
            let w = 0.54 - 0.46 * (2.0 * std::f32::consts::PI * i as f32 / (taps - 1) as f32).cos();
            sinc * w
        })
        .collect();
    let ratio = f64::from(rate) / f64::from(MATCH_RATE);
    let n = (samples.len() as f64 / ratio) as usize;
    let filtered_at = |centre: isize| -> f32 {
        let mut sum = 0.0;
        for (k, w) in kernel.iter().enumerate() {
            let j = centre + k as isize - half;
            if j >= 0 && (j as usize) < samples.len() {
                sum += samples[j as usize] * w;
            }
        }
        sum
    };
    (0..n)
        .map(|i| {
            let pos = i as f64 * ratio;
            let lo = pos.floor() as isize;
            let frac = (pos - pos.floor()) as f32;
            let a = filtered_at(lo);
            if frac == 0.0 {
                a
            } else {
                a + (filtered_at(lo + 1) - a) * frac
            }
        })
        .collect()
}

/// A 16-bit PCM WAV file: (rate, mono samples).
pub(crate) fn read_wav(path: &Path) -> Result<(u32, Vec<f32>), String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = || format!("{}: not a 16-bit PCM WAV", path.display());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad());
    }
    let (mut rate, mut channels, mut at) = (0u32, 1usize, 12usize);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            channels = usize::from(u16::from_le_bytes([body[2], body[3]]).max(1));
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            if u16::from_le_bytes([body[14], body[15]]) != 16 {
                return Err(bad());
            }
        } else if id == b"data" {
            // QEMU's WAV is read while it grows: its header's length may still be 0.
            let body = if len == 0 { &bytes[at + 8..] } else { body };
            let samples = body
                .chunks_exact(2 * channels)
                .map(|f| {
                    f.chunks_exact(2)
                        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                        .sum::<f32>()
                        / channels as f32
                })
                .collect();
            return Ok((rate, samples));
        }
        at += 8 + len + (len & 1);
    }
    Err(bad())
}

/// Renders a code with the pack's clips at 48 kHz into `out` (its first and last sounds are
/// the chimes [`Clips::load`] takes).
pub(crate) fn render_chimes(speak: &Path, voices: &Path, out: &Path) -> Result<(), String> {
    crate::run(
        "rendering the chimes (a code through the speech pipeline)",
        Command::new(speak)
            .args(["render", "--voices"])
            .arg(voices)
            .args([
                "--lang",
                "en",
                "--code",
                "000000",
                "--backend",
                "clips",
                "--voice",
                "flite-slt",
                "--rate",
                "48000",
                "--out",
            ])
            .arg(out),
    )
}

/// `cargo xtask system-test --hear WAV [VOICES]`: decodes every utterance of a kept
/// recording (apart by 1.5 s of silence) and prints its pieces with their scores; for
/// looking into a failed run.
pub(crate) fn hear_file(wav: &Path, voices: &Path, speak: &Path) -> Result<(), String> {
    let chimes = std::env::temp_dir().join(format!("codereader-chimes-{}.wav", std::process::id()));
    render_chimes(speak, voices, &chimes)?;
    let clips = Clips::load(&voices.join("en"), &chimes);
    let _ = fs::remove_file(&chimes);
    let clips = clips?;
    let (rate, samples) = read_wav(wav)?;
    let x = to_match_rate(&samples, rate);
    let per_sample = f64::from(rate) / f64::from(MATCH_RATE);
    for (start, end) in loud_runs(&x, 150) {
        let from = (start as f64 * per_sample) as usize;
        let to = ((end as f64 * per_sample) as usize).min(samples.len());
        let heard = clips.decode(&samples[from..to], rate);
        println!(
            "{:7.2} s +{:5.2} s: {} => {}",
            from as f64 / f64::from(rate),
            (to - from) as f64 / f64::from(rate),
            heard.summary(),
            heard.code().unwrap_or_else(|e| format!("no code ({e})"))
        );
    }
    Ok(())
}

/// The default voices directory a `--hear` uses: the last system test's.
pub(crate) fn last_voices() -> PathBuf {
    crate::target_dir().join("system-test/voices")
}

#[cfg(test)]
mod tests {
    use super::{Clips, END, Heard, Piece, Reference, START, to_match_rate};

    /// A made-up word at `rate`: three 120 ms tones (with a harmonic), each pair of words
    /// sharing some of them, as digits share sounds.
    fn word(tones: [f32; 3], rate: u32) -> Vec<f32> {
        let n = (rate as f32 * 0.12) as usize;
        tones
            .iter()
            .flat_map(|&f| {
                (0..n).map(move |i| {
                    let t = i as f32 / rate as f32;
                    let fade = (i.min(n - i) as f32 / (n as f32 * 0.1)).min(1.0);
                    fade * 0.3
                        * ((2.0 * std::f32::consts::PI * f * t).sin()
                            + 0.5 * (2.0 * std::f32::consts::PI * 2.7 * f * t).sin())
                })
            })
            .collect()
    }

    fn tones(label: &str) -> [f32; 3] {
        match label {
            START => [880.0, 1320.0, 1760.0],
            END => [1760.0, 1320.0, 880.0],
            "intro" => [300.0, 2500.0, 300.0],
            d => {
                let d = f32::from(d.as_bytes()[0] - b'0');
                [400.0 + 100.0 * d, 700.0 + 37.0 * d, 1900.0 - 80.0 * d]
            }
        }
    }

    fn clips() -> Clips {
        let labels = [
            START, END, "intro", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
        ];
        Clips {
            refs: labels
                .iter()
                .map(|l| Reference::new(l, &to_match_rate(&word(tones(l), 16_000), 16_000)))
                .collect(),
        }
    }

    /// `labels` said at 48 kHz, quieter than the clips and 0.3 ms late, 250 ms apart.
    fn said(labels: &[&str], garble: Option<usize>) -> Vec<f32> {
        let gap = vec![0.0; 12_000];
        let mut out = vec![0.0; 14];
        for (i, label) in labels.iter().enumerate() {
            let mut w: Vec<f32> = word(tones(label), 48_000).iter().map(|x| x * 0.2).collect();
            if garble == Some(i) {
                // The emulated card late in the middle of the word: part of it lost.
                let third = w.len() / 3;
                w.drain(third..2 * third);
            }
            out.extend(w);
            out.extend(&gap);
        }
        out
    }

    #[test]
    fn a_code_is_heard_surely_and_a_garbled_digit_is_not() {
        let clips = clips();
        let code = [START, "intro", "4", "0", "5", "5", "9", "1", END];
        let heard = clips.decode(&said(&code, None), 48_000);
        assert_eq!(heard.phrases(), code, "{}", heard.summary());
        assert_eq!(heard.code().unwrap(), "405591");
        assert!(heard.ended());

        let garbled = clips.decode(&said(&code, Some(4)), 48_000);
        assert!(garbled.code().is_err(), "{}", garbled.summary());
        assert!(garbled.digits().is_err(), "{}", garbled.summary());
        assert!(garbled.pieces.iter().any(|p| p.label.is_none()));
    }

    fn piece(label: Option<&str>) -> Piece {
        Piece {
            at: 0.0,
            label: label.map(str::to_owned),
            best: label.unwrap_or("7").to_owned(),
            score: 0.7,
            margin: 0.01,
        }
    }

    fn heard(labels: &[Option<&str>]) -> Heard {
        Heard {
            pieces: labels.iter().map(|l| piece(*l)).collect(),
        }
    }

    #[test]
    fn only_a_whole_sure_code_is_a_code() {
        let d = |s: &'static str| Some(s);
        let whole = [
            d(START),
            d("intro"),
            d("1"),
            d("2"),
            d("3"),
            d("4"),
            d("5"),
            d("6"),
            d(END),
        ];
        assert_eq!(heard(&whole).code().unwrap(), "123456");
        // What follows the end chime is another utterance.
        let mut more = whole.to_vec();
        more.push(None);
        assert_eq!(heard(&more).code().unwrap(), "123456");
        // An unsure chime before the intro: sure all the same.
        let mut cut = whole.to_vec();
        cut[0] = None;
        assert_eq!(heard(&cut).code().unwrap(), "123456");
        // An unsure intro: not sure (a digit may hide in it), but a reading to compare.
        cut[1] = None;
        assert!(heard(&cut).code().is_err());
        assert_eq!(heard(&cut).digits().unwrap(), "123456");
        let mut lost = whole.to_vec();
        lost[2] = None;
        assert!(heard(&lost).code().is_err());
        assert!(heard(&lost).digits().is_err());
        // An unsure piece among the digits, a missing digit, no end chime: no reading.
        let mut unsure = whole.to_vec();
        unsure.insert(4, None);
        assert!(heard(&unsure).digits().is_err());
        let mut five = whole.to_vec();
        five.remove(3);
        assert!(heard(&five).digits().is_err());
        assert!(heard(&whole[..8]).digits().is_err());
        assert!(!heard(&whole[..8]).ended());
        // "About to change", then at once the code: it opens with the code's sentence.
        let mut changing = vec![d("code_changing"), d(START), d("clock_unsynced")];
        changing.extend(&whole[1..]);
        assert_eq!(heard(&changing).first_sentence(), Some("clock_unsynced"));
        assert_eq!(heard(&changing).code().unwrap(), "123456");
        assert_eq!(heard(&whole).first_sentence(), Some("intro"));
        // "About to change" alone: the code comes next.
        assert!(heard(&[d("code_changing")]).code_changing());
        assert!(heard(&[d("code_changing")]).ended());
    }
}
