//! Helpers shared by the integration tests: temp dirs, pack copies with rendered clips, and
//! audio analysis (energy segmentation, RMS). `Span` and `correlation` are the end-to-end
//! tests' (`codereader-e2e`), so the two suites measure audio the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unreachable_pub,
    unused_imports
)]

use std::path::{Path, PathBuf};

use codereader_speech::{Espeak, Speed, VoicePack, clips};

/// The repository's `voices/` directory.
pub fn voices_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices")
}

pub use codereader_e2e::{Span, correlation};
pub use tempfile::TempDir;

/// A fresh empty directory under the system temp dir named after `label`, removed on drop.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("codereader-speech-{label}-"))
        .tempdir()
        .unwrap()
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

/// Level below which a sample counts as silence (well under one 16-bit step).
pub const SILENT: f32 = 1e-5;

/// Index of the first and one past the last non-silent sample, if any.
pub fn sound_bounds(x: &[f32]) -> Option<(usize, usize)> {
    let first = x.iter().position(|s| s.abs() > SILENT)?;
    let last = x.iter().rposition(|s| s.abs() > SILENT)?;
    Some((first, last + 1))
}
