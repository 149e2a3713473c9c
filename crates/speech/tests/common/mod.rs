//! Helpers shared by the integration tests: temp dirs, pack copies with rendered clips, and
//! audio analysis (energy segmentation, RMS).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use codereader_speech::{Espeak, Speed, VoicePack, clips};

/// The repository's `voices/` directory.
pub fn voices_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices")
}

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "codereader-speech-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the shipped pack `tag` into `root/<tag>` and renders its `espeak` voice's clips
/// there from espeak-ng at `speeds`; returns the reloaded (validated) pack speaking that
/// voice, which now has clips.
pub fn pack_with_clips(root: &Path, tag: &str, speeds: &[Speed]) -> VoicePack {
    let dir = root.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        voices_dir().join(tag).join("voice.toml"),
        dir.join("voice.toml"),
    )
    .unwrap();
    let pack = VoicePack::load_words(&dir)
        .unwrap()
        .with_voice_words("espeak")
        .unwrap();
    let mut synth = Espeak::shared().unwrap().voice(&pack).unwrap();
    clips::render_clips(&pack, &mut synth, speeds, &pack.voice().clips_dir).unwrap();
    let pack = VoicePack::load(&dir).unwrap().with_voice("espeak").unwrap();
    assert!(pack.clips().is_some());
    pack
}

/// Root mean square of a buffer.
pub fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
}

/// A run of sound found by [`segments`], in samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// Energy-based segmentation: 10 ms frames whose RMS is above -40 dBFS are "sound"; runs
/// separated by less than `merge_ms` of quiet are one segment; segments shorter than 40 ms are
/// dropped. Knows nothing about the plan.
pub fn segments(x: &[f32], rate: u32, merge_ms: u32) -> Vec<Span> {
    let frame = (rate / 100) as usize;
    let threshold = 0.01; // -40 dBFS
    let loud: Vec<bool> = x.chunks(frame).map(|c| rms(c) > threshold).collect();
    let merge = (merge_ms / 10) as usize;
    let mut spans: Vec<Span> = Vec::new();
    for (i, &on) in loud.iter().enumerate() {
        if !on {
            continue;
        }
        let (start, end) = (i * frame, ((i + 1) * frame).min(x.len()));
        match spans.last_mut() {
            Some(last) if start - last.end <= merge * frame => last.end = end,
            _ => spans.push(Span { start, end }),
        }
    }
    spans.retain(|s| s.end - s.start >= (rate as usize) * 40 / 1000);
    spans
}

/// Reads a mono 16-bit WAV: (rate, samples as f32, peak |i16|).
pub fn read_wav(path: &Path) -> (u32, Vec<f32>, i32) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!(spec.channels, 1);
    assert_eq!(spec.bits_per_sample, 16);
    let raw: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let peak = raw.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0);
    (
        spec.sample_rate,
        raw.iter().map(|&s| f32::from(s) / 32768.0).collect(),
        peak,
    )
}

/// Pearson correlation of two equally long buffers (1.0 = same shape).
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let mean = |x: &[f32]| x.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// Level below which a sample counts as silence (well under one 16-bit step).
pub const SILENT: f32 = 1e-5;

/// Index of the first and one past the last non-silent sample, if any.
pub fn sound_bounds(x: &[f32]) -> Option<(usize, usize)> {
    let first = x.iter().position(|s| s.abs() > SILENT)?;
    let last = x.iter().rposition(|s| s.abs() > SILENT)?;
    Some((first, last + 1))
}
