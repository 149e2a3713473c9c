//! Checking a recorded voice (`voices/RECORDING.md`): every word present, levels in range,
//! no clipping, silence trimmed. What `cargo xtask voices --check` runs.
//!
//! Unlike loading, which stops at the first problem, the check lists every problem it finds,
//! so that a person recording a voice can fix them all in one session.

use std::path::{Path, PathBuf};

use crate::pack::{ClipSet, ClipSource, VoicePack};
use crate::plan::PhraseKey;

/// Limits a recorded clip must keep (`voices/RECORDING.md` explains them to the speaker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordingLimits {
    /// The loudest sample must reach at least this level, dBFS (else: too quiet).
    pub min_peak_dbfs: f64,
    /// ...and stay below this level, dBFS (else: no headroom; the limiter would work hard).
    pub max_peak_dbfs: f64,
    /// This many consecutive samples at full scale count as clipping.
    pub clip_run: usize,
    /// Most silence (below [`RecordingLimits::silence_dbfs`]) allowed at either end, ms.
    pub max_edge_silence_ms: u32,
    /// What counts as silence, dBFS.
    pub silence_dbfs: f64,
    /// Shortest and longest clip, ms.
    pub length_ms: (u32, u32),
}

impl Default for RecordingLimits {
    fn default() -> Self {
        Self {
            min_peak_dbfs: -12.0,
            max_peak_dbfs: -0.5,
            clip_run: 3,
            max_edge_silence_ms: 60,
            silence_dbfs: -50.0,
            length_ms: (150, 6000),
        }
    }
}

/// One thing wrong with a recorded voice.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordingProblem {
    /// The voice's `clips.toml` or a clip did not load (missing file, wrong format, wrong
    /// rate); the message names the file.
    Unloadable(String),
    /// `clips.toml` says the clips are not recorded.
    NotRecorded(PathBuf),
    /// The loudest sample is below the minimum level.
    TooQuiet {
        /// The clip.
        file: PathBuf,
        /// Its peak, dBFS (rounded).
        peak_dbfs: i32,
    },
    /// The loudest sample leaves too little headroom.
    TooLoud {
        /// The clip.
        file: PathBuf,
        /// Its peak, dBFS (rounded to tenths).
        peak_tenths_dbfs: i32,
    },
    /// A run of full-scale samples: the recording clipped.
    Clipped {
        /// The clip.
        file: PathBuf,
        /// Where the first clipped run starts, ms.
        at_ms: u32,
    },
    /// Too much silence before or after the word.
    Untrimmed {
        /// The clip.
        file: PathBuf,
        /// Silence at the start, ms.
        lead_ms: u32,
        /// Silence at the end, ms.
        trail_ms: u32,
    },
    /// Too short or too long to be the word.
    Length {
        /// The clip.
        file: PathBuf,
        /// Its length, ms.
        ms: u32,
    },
}

impl std::fmt::Display for RecordingProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = RecordingLimits::default();
        match self {
            Self::Unloadable(m) => write!(f, "{m}"),
            Self::NotRecorded(p) => write!(f, "{}: source is not \"recorded\"", p.display()),
            Self::TooQuiet { file, peak_dbfs } => write!(
                f,
                "{}: too quiet: peak {peak_dbfs} dBFS, record so that peaks reach {} dBFS or more",
                file.display(),
                l.min_peak_dbfs
            ),
            Self::TooLoud {
                file,
                peak_tenths_dbfs,
            } => write!(
                f,
                "{}: too loud: peak {:.1} dBFS, keep peaks below {} dBFS",
                file.display(),
                f64::from(*peak_tenths_dbfs) / 10.0,
                l.max_peak_dbfs
            ),
            Self::Clipped { file, at_ms } => {
                write!(
                    f,
                    "{}: clipped at {at_ms} ms; record it again, softer",
                    file.display()
                )
            }
            Self::Untrimmed {
                file,
                lead_ms,
                trail_ms,
            } => write!(
                f,
                "{}: silence not trimmed: {lead_ms} ms before and {trail_ms} ms after the word \
                 (at most {} ms each)",
                file.display(),
                l.max_edge_silence_ms
            ),
            Self::Length { file, ms } => write!(
                f,
                "{}: {ms} ms long, expected {}..{} ms",
                file.display(),
                l.length_ms.0,
                l.length_ms.1
            ),
        }
    }
}

/// Checks the recorded voice `pack` speaks (see [`VoicePack::with_voice`]): its clips load,
/// are declared `recorded`, and each clip keeps `limits`. Returns every problem found (empty:
/// the voice passes).
pub fn check_recorded(pack: &VoicePack, limits: &RecordingLimits) -> Vec<RecordingProblem> {
    let dir = &pack.voice().clips_dir;
    let clips = match ClipSet::load(dir) {
        Ok(Some(clips)) => clips,
        Ok(None) => {
            return vec![RecordingProblem::Unloadable(format!(
                "{}: missing (a recorded voice needs its clips.toml)",
                dir.join("clips.toml").display()
            ))];
        }
        Err(e) => return vec![RecordingProblem::Unloadable(e.to_string())],
    };
    let mut problems = Vec::new();
    if clips.source != ClipSource::Recorded {
        problems.push(RecordingProblem::NotRecorded(dir.join("clips.toml")));
    }
    let rate = clips.sample_rate.hz();
    for &speed in &clips.speeds {
        for key in PhraseKey::all() {
            let file = dir.join(ClipSet::file_name(key, speed));
            match read(&file) {
                Ok(samples) => check_clip(&file, &samples, rate, limits, &mut problems),
                Err(m) => problems.push(RecordingProblem::Unloadable(m)),
            }
        }
    }
    problems
}

fn read(file: &Path) -> Result<Vec<i16>, String> {
    let fail = |e: hound::Error| format!("{}: {e}", file.display());
    let reader = hound::WavReader::open(file).map_err(fail)?;
    reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(fail)
}

fn dbfs(level: f64) -> f64 {
    20.0 * level.max(1e-9).log10()
}

fn check_clip(
    file: &Path,
    samples: &[i16],
    rate: u32,
    limits: &RecordingLimits,
    problems: &mut Vec<RecordingProblem>,
) {
    let file = file.to_path_buf();
    let ms = |n: usize| u32::try_from(n as u64 * 1000 / u64::from(rate.max(1))).unwrap_or(u32::MAX);
    let total_ms = ms(samples.len());
    if !(limits.length_ms.0..=limits.length_ms.1).contains(&total_ms) {
        problems.push(RecordingProblem::Length {
            file: file.clone(),
            ms: total_ms,
        });
    }
    let magnitude = |s: i16| f64::from(s.unsigned_abs()) / 32768.0;
    let peak = samples.iter().map(|&s| magnitude(s)).fold(0.0, f64::max);
    let peak_db = dbfs(peak);
    // A clipped recording is also too loud; report the clipping, which says what to do.
    let full = |s: &i16| s.unsigned_abs() >= 32767;
    let mut run = 0;
    let mut clipped_at = None;
    for (i, s) in samples.iter().enumerate() {
        run = if full(s) { run + 1 } else { 0 };
        if run >= limits.clip_run {
            clipped_at = Some(i + 1 - run);
            break;
        }
    }
    if let Some(at) = clipped_at {
        problems.push(RecordingProblem::Clipped {
            file: file.clone(),
            at_ms: ms(at),
        });
    } else if peak_db > limits.max_peak_dbfs {
        problems.push(RecordingProblem::TooLoud {
            file: file.clone(),
            peak_tenths_dbfs: (peak_db * 10.0).round() as i32,
        });
    } else if peak_db < limits.min_peak_dbfs {
        problems.push(RecordingProblem::TooQuiet {
            file: file.clone(),
            peak_dbfs: peak_db.round() as i32,
        });
    }
    let threshold = 10f64.powf(limits.silence_dbfs / 20.0);
    let loud = |s: &i16| magnitude(*s) >= threshold;
    let lead = samples.iter().position(loud).unwrap_or(samples.len());
    let trail = samples.iter().rev().position(loud).unwrap_or(samples.len());
    let (lead_ms, trail_ms) = (ms(lead), ms(trail));
    if lead_ms > limits.max_edge_silence_ms || trail_ms > limits.max_edge_silence_ms {
        problems.push(RecordingProblem::Untrimmed {
            file,
            lead_ms,
            trail_ms,
        });
    }
}
