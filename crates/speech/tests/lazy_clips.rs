//! Clips are read one speed step at a time: a device starting up or switching voice reads
//! the manifests and the step it speaks, never every step of every voice (a broken clip at
//! an unused step shows only when that step is first spoken, with the same error).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codereader_speech::{
    ClipSet, ClipSynth, PackError, Phrase, PhraseKey, SpeechError, Speed, Synth, VoiceLibrary,
    VoicePack,
};
use common::{TempDir, pack_with_clips};

fn say(synth: &mut ClipSynth, pack: &VoicePack, speed: i8) -> Result<usize, SpeechError> {
    let phrase: Phrase = pack.phrase(PhraseKey::Digit(7));
    let mut samples = 0;
    synth.speak(&phrase, Speed::new(speed), &mut |chunk| {
        samples += chunk.len();
        true
    })?;
    Ok(samples)
}

#[test]
fn a_broken_unused_step_does_not_stop_the_others_and_shows_when_spoken() {
    let root = TempDir::new("lazy");
    let pack = pack_with_clips(
        root.path(),
        "da",
        &[Speed::new(-1), Speed::new(0), Speed::new(1)],
    );
    let broken = pack
        .voice()
        .clips_dir
        .join(ClipSet::file_name(PhraseKey::Digit(7), Speed::new(-1)));
    std::fs::remove_file(&broken).unwrap();

    // The strict load (tools, `cargo xtask voices`) checks every clip of every step...
    assert!(matches!(
        VoiceLibrary::load(root.path()),
        Err(PackError::BadClip { .. })
    ));
    // ...the device's reads the manifests only, and its synthesiser reads step 0.
    let library = VoiceLibrary::load_manifests(root.path()).unwrap();
    let pack = library
        .pack("da")
        .unwrap()
        .with_voice_manifest("espeak")
        .unwrap();
    let clips = pack.clips().unwrap().clone();
    assert_eq!(clips.speeds.len(), 3);
    assert!(clips.check_step(Speed::new(0)).is_ok());
    assert!(clips.check_step(Speed::new(-1)).is_err());
    let mut synth = ClipSynth::load(&pack).unwrap();
    let at_0 = say(&mut synth, &pack, 0).unwrap();
    // Step 1 is read when first spoken at; it is faster, so shorter.
    let at_1 = say(&mut synth, &pack, 1).unwrap();
    assert!(at_1 < at_0, "step 1: {at_1} samples, step 0: {at_0}");
    // Step -1 fails as a whole, naming the missing clip, and keeps failing the same way.
    for _ in 0..2 {
        match say(&mut synth, &pack, -1) {
            Err(SpeechError::Pack(PackError::BadClip { file, reason })) => {
                assert_eq!(file, broken);
                assert_eq!(reason, "missing");
            }
            other => panic!("expected the missing clip, got {other:?}"),
        }
    }
    // The steps already read still speak.
    assert_eq!(say(&mut synth, &pack, 0).unwrap(), at_0);
}
