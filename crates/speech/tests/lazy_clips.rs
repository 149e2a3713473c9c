//! Clips are read one speed step at a time: a device starting up or switching voice reads
//! the manifests and the step it speaks, never every step of every voice. A broken clip at
//! an unused step shows only when that step is first spoken, and then only that phrase
//! fails (the device's [`FallbackSynth`] says it with live espeak-ng); every clip, read early
//! or late, is brought to the one speech loudness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use codereader_speech::{
    ClipSet, ClipSynth, Espeak, FallbackSynth, MemorySink, PackError, Phrase, PhraseKey,
    ProblemReport, Renderer, SampleRate, Segment, Settings, SpeechError, Speed, Synth, Utterance,
    VoiceLibrary, VoicePack, Volume, dsp,
};
use common::{TempDir, pack_with_clips, temp_dir};

fn say_key(
    synth: &mut dyn Synth,
    pack: &VoicePack,
    key: PhraseKey,
    speed: i8,
) -> Result<usize, SpeechError> {
    let phrase: Phrase = pack.phrase(key);
    let mut samples = 0;
    synth.speak(&phrase, Speed::new(speed), &mut |chunk| {
        samples += chunk.len();
        true
    })?;
    Ok(samples)
}

fn say(synth: &mut ClipSynth, pack: &VoicePack, speed: i8) -> Result<usize, SpeechError> {
    say_key(synth, pack, PhraseKey::Digit(7), speed)
}

/// A pack with clips at steps -1, 0 and 1, `digit-7@-1.wav` deleted; the device's view of
/// it (manifests only) and the deleted file.
fn pack_missing_one_clip(root: &TempDir) -> (VoicePack, std::path::PathBuf) {
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
    let library = VoiceLibrary::load_manifests(root.path()).unwrap();
    let pack = library
        .pack("da")
        .unwrap()
        .with_voice_manifest("espeak")
        .unwrap();
    (pack, broken)
}

#[test]
fn a_broken_unused_step_does_not_stop_the_others_and_shows_when_spoken() {
    let root = temp_dir("lazy");
    let (pack, broken) = pack_missing_one_clip(&root);

    // The strict check (tools, `cargo xtask voices`) finds the missing clip...
    assert!(matches!(
        ClipSet::load(&pack.voice().clips_dir),
        Err(PackError::BadClip { .. })
    ));
    // ...the device reads the manifests only, and its synthesiser reads step 0.
    let clips = pack.clips().unwrap().clone();
    assert_eq!(clips.speeds.len(), 3);
    assert!(clips.check_step(Speed::new(0)).is_ok());
    assert!(clips.check_step(Speed::new(-1)).is_err());
    // One bad clip of 65 does not make the step unusable.
    assert!(clips.check_step_usable(Speed::new(-1)).is_ok());
    let mut synth = ClipSynth::load(&pack).unwrap();
    assert!(synth.problems().is_empty(), "{:?}", synth.problems());
    let told = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let sink = Arc::clone(&told);
    synth.on_step_problems(ProblemReport(Arc::new(move |p: &[String]| {
        sink.lock().unwrap().push(p.to_vec());
    })));
    let at_0 = say(&mut synth, &pack, 0).unwrap();
    // Step 1 is read when first spoken at; it is faster, so shorter.
    let at_1 = say(&mut synth, &pack, 1).unwrap();
    assert!(at_1 < at_0, "step 1: {at_1} samples, step 0: {at_0}");
    assert!(synth.problems().is_empty(), "{:?}", synth.problems());
    // At step -1 only the missing clip's phrase fails, naming its file, every time...
    for _ in 0..2 {
        match say(&mut synth, &pack, -1) {
            Err(SpeechError::NoClip(name)) => assert_eq!(name, "digit-7@-1.wav"),
            other => panic!("expected the missing clip, got {other:?}"),
        }
    }
    // ...and the problem is known from the moment the step was read.
    let problems = synth.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&broken.display().to_string()) && problems[0].contains("missing"),
        "{problems:?}"
    );
    // The step's problems were told once, when it was read, naming the file.
    assert_eq!(*told.lock().unwrap(), vec![problems.clone()]);
    // The other phrases of that step, and the steps already read, still speak.
    assert!(say_key(&mut synth, &pack, PhraseKey::Digit(3), -1).unwrap() > 0);
    assert_eq!(say(&mut synth, &pack, 0).unwrap(), at_0);
}

#[test]
fn a_clip_found_missing_when_its_step_is_first_read_is_said_by_espeak_and_reported_once() {
    let root = temp_dir("lazy-fallback");
    let (pack, _) = pack_missing_one_clip(&root);
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&reports);
    let mut synth = FallbackSynth::new(
        Box::new(ClipSynth::load(&pack).unwrap()),
        Box::new({
            let pack = pack.clone();
            move || Ok(Box::new(Espeak::shared()?.voice(&pack)?) as Box<dyn Synth>)
        }),
        "voice `espeak` of `da`",
        Box::new(move |m| sink.lock().unwrap().push(m.to_owned())),
    );
    assert!(say_key(&mut synth, &pack, PhraseKey::Digit(7), 0).unwrap() > 0);
    assert!(reports.lock().unwrap().is_empty());
    // Step -1 is read now; its missing clip is spoken by espeak-ng, every time.
    for _ in 0..3 {
        let samples = say_key(&mut synth, &pack, PhraseKey::Digit(7), -1).unwrap();
        assert!(samples > 2_000, "{samples} samples");
    }
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("voice `espeak` of `da`"), "{reports:?}");
}

#[test]
fn clips_of_a_step_read_late_are_brought_to_the_speech_loudness() {
    let root = temp_dir("lazy-loud");
    let (pack, _) = pack_missing_one_clip(&root);
    // Make the step-1 clip 24 dB quieter than rendered.
    let quiet = pack
        .voice()
        .clips_dir
        .join(ClipSet::file_name(PhraseKey::Digit(4), Speed::new(1)));
    let mut reader = hound::WavReader::open(&quiet).unwrap();
    let spec = reader.spec();
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap() / 16).collect();
    let mut writer = hound::WavWriter::create(&quiet, spec).unwrap();
    for s in samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();

    let rate = SampleRate::ESPEAK;
    let mut clips = ClipSynth::load(&pack).unwrap();
    let render = |synth: &mut dyn Synth, speed: i8| {
        let utterance =
            Utterance::from_segments(vec![Segment::Speech(pack.phrase(PhraseKey::Digit(4)))]);
        let mut sink = MemorySink::new(rate);
        Renderer::new(rate)
            .render(
                &utterance,
                synth,
                Settings {
                    speed: Speed::new(speed),
                    volume: Volume::MAX,
                },
                &mut sink,
                &|| false,
            )
            .unwrap();
        20.0 * f64::from(dsp::speech_rms(sink.samples(), rate)).log10()
    };
    let target = 20.0 * f64::from(dsp::SPEECH_RMS).log10();
    let early = render(&mut clips, 0);
    let late = render(&mut clips, 1);
    assert!((early - target).abs() < 1.0, "step 0: {early:.1} dBFS");
    assert!(
        (late - target).abs() < 1.0,
        "step 1 (read late, quiet clip): {late:.1} dBFS"
    );
}
