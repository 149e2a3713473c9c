//! `codereader-speak clips`, the command `cargo xtask voices` runs: renders a pack's clips at
//! the asked speed steps, even over a stale or broken set, and the result loads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use codereader_speech::{ClipSet, ClipSource, PackError, PhraseKey, Speed, VoicePack};
use common::{read_wav, temp_dir, voices_dir};

#[test]
fn clips_command_renders_over_a_broken_set_and_the_pack_loads() {
    let root = temp_dir("clips-tool");
    let dir = root.path().join("da");
    std::fs::create_dir_all(dir.join("clips/espeak")).unwrap();
    std::fs::copy(voices_dir().join("da/voice.toml"), dir.join("voice.toml")).unwrap();
    // A stale manifest whose clips are missing: the clip set does not load (the pack loads
    // without it, saying why)...
    std::fs::write(
        dir.join("clips/espeak/clips.toml"),
        "source = \"espeak-ng\"\nsample_rate = 22050\nspeeds = [0]\n",
    )
    .unwrap();
    assert!(matches!(
        ClipSet::load(&dir.join("clips/espeak")),
        Err(PackError::BadClip { .. })
    ));
    let stale = VoicePack::load(&dir).unwrap();
    assert!(stale.clips().is_none() && stale.clip_problem().is_some());
    // ...but the clips command still renders a fresh set.
    let output = Command::new(env!("CARGO_BIN_EXE_codereader-speak"))
        .args(["clips", "--lang", "da", "--speeds", "-1,0,2", "--voices"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pack = VoicePack::load(&dir).unwrap();
    let clips = pack.clips().unwrap();
    assert_eq!(clips.source, ClipSource::EspeakNg);
    assert_eq!(clips.speeds, [Speed::new(-1), Speed::new(0), Speed::new(2)]);
    assert_eq!(clips.sample_rate.hz(), 22_050);
    // Every digit word and prompt, per speed step.
    let wavs = std::fs::read_dir(dir.join("clips/espeak"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wav")
        })
        .count();
    assert_eq!(wavs, 3 * PhraseKey::all().count());
}

/// The English pack's voices each render with their own engine (one line each into a pipe),
/// and a faster flite step is shorter but keeps its pitch (each step is rendered by flite,
/// not resampled).
#[test]
fn every_voice_renders_with_its_engine_and_speed_keeps_pitch() {
    let root = temp_dir("clips-voices");
    let dir = root.path().join("en");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(voices_dir().join("en/voice.toml"), dir.join("voice.toml")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_codereader-speak"))
        .args(["clips", "--lang", "en", "--speeds", "0,3", "--voices"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Into a pipe (a CI log), no progress-bar frames: one line per voice, when it is done.
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !err.contains('\r') && !err.contains("[#"),
        "progress frames: {err:?}"
    );
    let out = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per voice: {out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("en/flite-slt (flite:slt): wrote "))
            && lines.iter().any(|l| l.starts_with("en/espeak (")),
        "{out}"
    );
    let pack = VoicePack::load(&dir).unwrap();
    assert_eq!(pack.voice().name, "flite-slt", "the default voice");
    assert_eq!(pack.clips().unwrap().source, ClipSource::Flite);
    let espeak = pack.with_voice("espeak").unwrap();
    assert_eq!(espeak.clips().unwrap().source, ClipSource::EspeakNg);

    let stem = PhraseKey::Digit(9).clip_stem();
    let clip = |step: i8| read_wav(&dir.join(format!("clips/flite-slt/{stem}@{step}.wav")));
    let (rate, normal, _) = clip(0);
    let (_, fast, _) = clip(3);
    assert!(
        (fast.len() as f64) < normal.len() as f64 * 0.85,
        "step 3 ({}) is not shorter than step 0 ({})",
        fast.len(),
        normal.len()
    );
    let (f0_normal, f0_fast) = (pitch(&normal, rate), pitch(&fast, rate));
    assert!(
        (f0_fast / f0_normal - 1.0).abs() < 0.12,
        "pitch moved: {f0_normal:.0} Hz at step 0, {f0_fast:.0} Hz at step 3"
    );
}

/// Median fundamental frequency (Hz) of the voiced 40 ms frames, by autocorrelation over
/// 70..400 Hz.
fn pitch(x: &[f32], rate: u32) -> f64 {
    let frame = rate as usize / 25;
    let (lo, hi) = (rate as usize / 400, rate as usize / 70);
    let mut found = Vec::new();
    for w in x.chunks(frame).filter(|w| w.len() == frame) {
        let energy: f64 = w.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        if energy / (frame as f64) < 1e-3 {
            continue;
        }
        let ac = |lag: usize| -> f64 {
            w.iter()
                .zip(&w[lag..])
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let (lag, best) = (lo..hi)
            .map(|lag| (lag, ac(lag)))
            .fold((0, f64::MIN), |m, c| if c.1 > m.1 { c } else { m });
        if best > 0.4 * energy {
            found.push(f64::from(rate) / lag as f64);
        }
    }
    assert!(found.len() >= 3, "too few voiced frames");
    found.sort_by(f64::total_cmp);
    found[found.len() / 2]
}
