//! `codereader-speak clips`, the command `cargo xtask voices` runs: renders a pack's clips at
//! the asked speed steps, even over a stale or broken set, and the result loads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use codereader_speech::{ClipSource, PackError, Speed, VoicePack};
use common::{TempDir, voices_dir};

#[test]
fn clips_command_renders_over_a_broken_set_and_the_pack_loads() {
    let root = TempDir::new("clips-tool");
    let dir = root.path().join("da");
    std::fs::create_dir_all(dir.join("clips")).unwrap();
    std::fs::copy(voices_dir().join("da/voice.toml"), dir.join("voice.toml")).unwrap();
    // A stale manifest whose clips are missing: the pack does not load...
    std::fs::write(
        dir.join("clips/clips.toml"),
        "source = \"espeak-ng\"\nsample_rate = 22050\nspeeds = [0]\n",
    )
    .unwrap();
    assert!(matches!(
        VoicePack::load(&dir),
        Err(PackError::BadClip { .. })
    ));
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
    // 10 digit words and 13 prompts per speed step.
    let wavs = std::fs::read_dir(dir.join("clips"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wav")
        })
        .count();
    assert_eq!(wavs, 3 * 23);
}
