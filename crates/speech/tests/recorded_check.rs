//! `cargo xtask voices --check`: a recorded voice with every kind of fault is rejected with a
//! message naming the clip and saying what to do; a good one passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use codereader_speech::{PhraseKey, RecordingLimits, RecordingProblem, VoicePack, check_recorded};
use common::{temp_dir, voices_dir};

const RATE: u32 = 22_050;

/// How to make one clip: tone length, level (peak, linear), silence at each end (ms).
#[derive(Clone, Copy)]
struct Take {
    ms: u32,
    peak: f32,
    lead_ms: u32,
    trail_ms: u32,
    clip: bool,
}

const GOOD: Take = Take {
    ms: 400,
    peak: 0.5,
    lead_ms: 10,
    trail_ms: 10,
    clip: false,
};

fn write_take(path: &Path, take: Take, channels: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let n = |ms: u32| (RATE * ms / 1000) as usize;
    let mut samples = vec![0i16; n(take.lead_ms)];
    for i in 0..n(take.ms) {
        let s = (i as f32 * 2.0 * std::f32::consts::PI * 220.0 / RATE as f32).sin() * take.peak;
        samples.push(if take.clip {
            ((s * 4.0).clamp(-1.0, 1.0) * 32767.0) as i16
        } else {
            (s * 32767.0) as i16
        });
    }
    samples.extend(vec![0i16; n(take.trail_ms)]);
    for s in samples {
        for _ in 0..channels {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// The English pack with a recorded default voice `alice`, every clip a good take, then
/// `spoil` damages it.
fn recorded_pack(root: &Path, spoil: impl FnOnce(&Path)) -> PathBuf {
    let dir = root.join("en");
    let clips = dir.join("clips/alice");
    std::fs::create_dir_all(&clips).unwrap();
    let text = std::fs::read_to_string(voices_dir().join("en/voice.toml")).unwrap();
    let text = text.replacen(
        "[voices]\n",
        "[voices]\nalice = { engine = \"recorded\" }\n",
        1,
    );
    let text = text.replacen("default = \"flite-slt\"", "default = \"alice\"", 1);
    std::fs::write(dir.join("voice.toml"), text).unwrap();
    std::fs::write(
        clips.join("clips.toml"),
        format!("source = \"recorded\"\nsample_rate = {RATE}\nspeeds = [0]\n"),
    )
    .unwrap();
    for key in PhraseKey::all() {
        write_take(&clips.join(format!("{}@0.wav", key.clip_stem())), GOOD, 1);
    }
    spoil(&clips);
    dir
}

fn problems(dir: &Path) -> Vec<RecordingProblem> {
    let pack = VoicePack::load_words(dir).unwrap();
    assert_eq!(pack.voice().name, "alice");
    check_recorded(&pack, &RecordingLimits::default())
}

#[test]
fn a_good_recorded_voice_passes_and_loads() {
    let root = temp_dir("recorded-good");
    let dir = recorded_pack(root.path(), |_| {});
    assert_eq!(problems(&dir), []);
    let pack = VoicePack::load(&dir).unwrap();
    assert!(pack.clips().is_some());
}

#[test]
fn broken_recorded_voices_each_give_their_problem() {
    type Spoil = Box<dyn FnOnce(&Path)>;
    let take = |stem: &'static str, take: Take| -> Spoil {
        Box::new(move |clips: &Path| write_take(&clips.join(format!("{stem}@0.wav")), take, 1))
    };
    // (case, damage, the problem's kind, a phrase the message must contain)
    let table: Vec<(&str, Spoil, &str, &str)> = vec![
        (
            "missing word",
            Box::new(|c: &Path| std::fs::remove_file(c.join("digit-7@0.wav")).unwrap()),
            "Unloadable",
            "digit-7@0.wav",
        ),
        (
            "stereo take",
            Box::new(|c: &Path| write_take(&c.join("intro@0.wav"), GOOD, 2)),
            "Unloadable",
            "mono",
        ),
        (
            "declared as espeak output",
            Box::new(|c: &Path| {
                std::fs::write(
                    c.join("clips.toml"),
                    format!("source = \"espeak-ng\"\nsample_rate = {RATE}\nspeeds = [0]\n"),
                )
                .unwrap();
            }),
            "NotRecorded",
            "not \"recorded\"",
        ),
        (
            "too quiet",
            take("digit-3", Take { peak: 0.03, ..GOOD }),
            "TooQuiet",
            "digit-3@0.wav: too quiet",
        ),
        (
            "no headroom",
            take(
                "digit-4",
                Take {
                    peak: 0.999,
                    ..GOOD
                },
            ),
            "TooLoud",
            "digit-4@0.wav: too loud",
        ),
        (
            "clipped",
            take("faster", Take { clip: true, ..GOOD }),
            "Clipped",
            "faster@0.wav: clipped",
        ),
        (
            "silence before the word",
            take(
                "digit-0",
                Take {
                    lead_ms: 600,
                    ..GOOD
                },
            ),
            "Untrimmed",
            "600 ms before",
        ),
        (
            "silence after the word",
            take(
                "slower",
                Take {
                    trail_ms: 300,
                    ..GOOD
                },
            ),
            "Untrimmed",
            "300 ms after",
        ),
        (
            "a click, not a word",
            take("digit-1", Take { ms: 40, ..GOOD }),
            "Length",
            "digit-1@0.wav: 59 ms long",
        ),
    ];
    for (case, spoil, kind, phrase) in table {
        let root = temp_dir("recorded-broken");
        let dir = recorded_pack(root.path(), spoil);
        let found = problems(&dir);
        assert_eq!(found.len(), 1, "{case}: {found:?}");
        let debug = format!("{:?}", found[0]);
        assert!(
            debug.starts_with(kind),
            "{case}: expected {kind}, got {debug}"
        );
        let message = found[0].to_string();
        assert!(
            message.contains(phrase),
            "{case}: message `{message}` lacks `{phrase}`"
        );
    }
}

#[test]
fn the_check_command_lists_every_problem_and_fails() {
    let root = temp_dir("recorded-cli");
    recorded_pack(root.path(), |c| {
        write_take(&c.join("digit-2@0.wav"), Take { peak: 0.02, ..GOOD }, 1);
        write_take(
            &c.join("digit-5@0.wav"),
            Take {
                lead_ms: 500,
                ..GOOD
            },
            1,
        );
    });
    let output = Command::new(env!("CARGO_BIN_EXE_codereader-speak"))
        .args(["check", "--lang", "en", "--voices"])
        .arg(root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a broken voice passed: {stdout}");
    assert!(stdout.contains("en/alice: 2 problem(s)"), "{stdout}");
    assert!(stdout.contains("digit-2@0.wav: too quiet"), "{stdout}");
    assert!(
        stdout.contains("digit-5@0.wav: silence not trimmed"),
        "{stdout}"
    );
}
