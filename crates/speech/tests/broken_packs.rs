//! Acceptance: broken voice packs, table-driven. Each gives its specific error naming the file
//! and key; none panics (also under random byte damage).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use codereader_speech::{ClipSet, ClipSynth, PackError, VoiceLibrary, VoicePack};
use common::{temp_dir, voices_dir};

/// The error we expect, by variant, with the file name and key it must name.
#[derive(Debug)]
enum Want {
    Syntax,
    Unknown(&'static str),
    Missing(&'static str),
    Bad(&'static str),
    Io,
}

/// Copies the shipped English pack into `root/en`, lets `edit` change `voice.toml`'s text,
/// and returns the pack directory.
fn pack_with(root: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = root.join("en");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(voices_dir().join("en/voice.toml")).unwrap();
    std::fs::write(dir.join("voice.toml"), edit(text)).unwrap();
    dir
}

fn replace(from: &'static str, to: &'static str) -> impl FnOnce(String) -> String {
    move |text| {
        assert!(text.contains(from), "fixture lost `{from}`");
        text.replacen(from, to, 1)
    }
}

fn check<T>(case: &str, result: Result<T, PackError>, file: &str, want: &Want) {
    let err = match result {
        Ok(_) => panic!("{case}: loaded a broken pack"),
        Err(e) => e,
    };
    let message = err.to_string();
    let (named, key) = match (&err, want) {
        (PackError::Syntax { file, .. }, Want::Syntax) => (file, None),
        (PackError::Io { file, .. }, Want::Io) => (file, None),
        (PackError::UnknownKey { file, key }, Want::Unknown(k))
        | (PackError::MissingKey { file, key }, Want::Missing(k))
        | (PackError::BadValue { file, key, .. }, Want::Bad(k)) => {
            assert_eq!(key, k, "{case}: wrong key in {message}");
            (file, Some(*k))
        }
        _ => panic!("{case}: expected {want:?}, got {err:?}"),
    };
    assert!(
        named.ends_with(file),
        "{case}: names {}, not {file}",
        named.display()
    );
    assert!(
        message.contains(file),
        "{case}: message `{message}` lacks the file"
    );
    if let Some(k) = key {
        assert!(
            message.contains(k),
            "{case}: message `{message}` lacks the key"
        );
    }
}

#[test]
fn broken_voice_toml_files_each_give_their_error() {
    type Edit = Box<dyn FnOnce(String) -> String>;
    let table: Vec<(&str, Edit, Want)> = vec![
        (
            "missing digit word",
            Box::new(replace("7 = \"seven\"\n", "")),
            Want::Missing("digits.7"),
        ),
        (
            "empty digit word",
            Box::new(replace("0 = \"zero\"", "0 = \"  \"")),
            Want::Bad("digits.0"),
        ),
        (
            "digit word not a string",
            Box::new(replace("1 = \"one\"", "1 = 1")),
            Want::Bad("digits.1"),
        ),
        (
            "eleventh digit",
            Box::new(replace("9 = \"nine\"", "9 = \"nine\"\n10 = \"ten\"")),
            Want::Unknown("digits.10"),
        ),
        (
            "unknown prompt",
            Box::new(replace("[prompts]", "[prompts]\nintro_x = \"Hi\"")),
            Want::Unknown("prompts.intro_x"),
        ),
        (
            "missing prompt",
            Box::new(replace("low_battery = \"The battery is low.\"\n", "")),
            Want::Missing("prompts.low_battery"),
        ),
        (
            "missing table",
            Box::new(|t: String| t.replace("[pauses]", "[pauses_old]")),
            Want::Missing("pauses"),
        ),
        (
            "unknown table",
            Box::new(|t: String| format!("{t}\n[extra]\nx = 1\n")),
            Want::Unknown("extra"),
        ),
        (
            "default names no voice",
            Box::new(replace(
                "default = \"flite-slt\"",
                "default = \"flite-xyz\"",
            )),
            Want::Bad("voices.default"),
        ),
        (
            "voice without default",
            Box::new(replace("default = \"flite-slt\"\n", "")),
            Want::Missing("voices.default"),
        ),
        (
            "unknown engine",
            Box::new(replace("engine = \"flite\"", "engine = \"mbrola\"")),
            Want::Bad("voices.flite-slt.engine"),
        ),
        (
            "flite voice without a voice name",
            Box::new(replace(", voice = \"slt\"", "")),
            Want::Missing("voices.flite-slt.voice"),
        ),
        (
            "unknown key in a voice",
            Box::new(replace("voice = \"slt\"", "voice = \"slt\", speed = 2")),
            Want::Unknown("voices.flite-slt.speed"),
        ),
        (
            "voice entry not a table",
            Box::new(replace(
                "espeak = { engine = \"espeak-ng\", voice = \"en\" }",
                "espeak = \"en\"",
            )),
            Want::Bad("voices.espeak"),
        ),
        (
            "tag differs from directory",
            Box::new(replace("tag = \"en\"", "tag = \"de\"")),
            Want::Bad("language.tag"),
        ),
        (
            "rate not a number",
            Box::new(replace("default_rate = 155", "default_rate = \"fast\"")),
            Want::Bad("language.default_rate"),
        ),
        (
            "rate out of range",
            Box::new(replace("default_rate = 155", "default_rate = 1000")),
            Want::Bad("language.default_rate"),
        ),
        (
            "groups do not add up",
            Box::new(replace("6 = [3, 3]", "6 = [3, 2]")),
            Want::Bad("grouping.6"),
        ),
        (
            "empty group",
            Box::new(replace("8 = [4, 4]", "8 = [8, 0]")),
            Want::Bad("grouping.8"),
        ),
        (
            "negative group",
            Box::new(replace("7 = [4, 3]", "7 = [8, -1]")),
            Want::Bad("grouping.7"),
        ),
        (
            "group pause not longer",
            Box::new(replace("between_groups = 750", "between_groups = 250")),
            Want::Bad("pauses.between_groups"),
        ),
        (
            "pause too long",
            Box::new(replace("after_intro = 450", "after_intro = 99999")),
            Want::Bad("pauses.after_intro"),
        ),
        (
            "bounds reversed",
            Box::new(replace("[3000, 9000]", "[9000, 3000]")),
            Want::Bad("bounds.six_digit_code_ms"),
        ),
        (
            "bounds not a pair",
            Box::new(replace("[3000, 9000]", "[3000]")),
            Want::Bad("bounds.six_digit_code_ms"),
        ),
        (
            "not TOML",
            Box::new(|t: String| t.replace("[digits]", "[digits")),
            Want::Syntax,
        ),
        (
            "language not a table",
            Box::new(|t: String| {
                format!("language = 3\n{}", t.replace("[language]", "[language_x]"))
            }),
            Want::Bad("language"),
        ),
    ];
    for (case, edit, want) in table {
        let root = temp_dir("broken");
        let dir = pack_with(root.path(), edit);
        check(case, VoicePack::load(&dir), "voice.toml", &want);
    }
}

#[test]
fn missing_and_unreadable_files_are_io_errors() {
    let root = temp_dir("broken-io");
    check(
        "no voice.toml",
        VoicePack::load(&root.path().join("en")),
        "voice.toml",
        &Want::Io,
    );
    let dir = pack_with(root.path(), |t| t);
    std::fs::write(dir.join("voice.toml"), [0xff, 0xfe, 0x00]).unwrap();
    check("not UTF-8", VoicePack::load(&dir), "voice.toml", &Want::Io);
    let empty = temp_dir("broken-empty");
    match VoiceLibrary::load(empty.path()) {
        Err(PackError::Empty { dir }) => assert_eq!(dir, empty.path()),
        other => panic!("empty library: {other:?}"),
    }
}

/// Writes a valid clip set (short tones) for the English pack at speed 0, so each case can
/// break exactly one thing.
fn pack_with_clips(root: &Path, manifest: &str) -> PathBuf {
    let dir = pack_with(root, |t| t);
    let clips = dir.join("clips/flite-slt");
    std::fs::create_dir_all(&clips).unwrap();
    std::fs::write(clips.join("clips.toml"), manifest).unwrap();
    let stems = (0..10).map(|d| format!("digit-{d}")).chain(
        codereader_speech::Prompt::ALL
            .iter()
            .map(|p| p.key().to_owned()),
    );
    for stem in stems {
        write_wav(&clips.join(format!("{stem}@0.wav")), 22_050, 1, 16);
    }
    dir
}

fn write_wav(path: &Path, rate: u32, channels: u16, bits: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..2205 * u32::from(channels) {
        let s = ((i as f32 * 0.1).sin() * 8000.0) as i32;
        if bits == 8 {
            w.write_sample(s as i8 / 100).unwrap();
        } else {
            w.write_sample(s as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

const MANIFEST: &str = "source = \"recorded\"\nsample_rate = 22050\nspeeds = [0]\n";

#[test]
fn broken_clips_each_give_their_error() {
    // The fixture itself is valid: every case below breaks one thing.
    let root = temp_dir("clips-ok");
    let pack = VoicePack::load(&pack_with_clips(root.path(), MANIFEST)).unwrap();
    assert!(pack.clips().is_some());

    let manifests: [(&str, &str, Want); 6] = [
        (
            "unknown source",
            "source = \"robot\"\nsample_rate = 22050\nspeeds = [0]\n",
            Want::Bad("source"),
        ),
        (
            "speed step out of range",
            "source = \"recorded\"\nsample_rate = 22050\nspeeds = [9]\n",
            Want::Bad("speeds"),
        ),
        (
            "no speed step",
            "source = \"recorded\"\nsample_rate = 22050\nspeeds = []\n",
            Want::Bad("speeds"),
        ),
        (
            "unknown key",
            "source = \"recorded\"\nsample_rate = 22050\nspeeds = [0]\nvolume = 3\n",
            Want::Unknown("volume"),
        ),
        (
            "missing rate",
            "source = \"recorded\"\nspeeds = [0]\n",
            Want::Missing("sample_rate"),
        ),
        ("not TOML", "source = \n", Want::Syntax),
    ];
    for (case, manifest, want) in manifests {
        let root = temp_dir("clips-manifest");
        let dir = pack_with_clips(root.path(), manifest);
        let clips = dir.join("clips/flite-slt");
        check(case, ClipSet::load(&clips), "clips.toml", &want);
        check(case, ClipSet::load_usable(&clips), "clips.toml", &want);
        // A device still loads the pack: without the clips, and saying why.
        let pack = VoicePack::load(&dir).unwrap();
        assert!(pack.clips().is_none(), "{case}");
        assert!(
            pack.clip_problem()
                .is_some_and(|p| p.contains("clips.toml")),
            "{case}: {:?}",
            pack.clip_problem()
        );
    }

    type Damage = fn(&Path);
    let damages: [(&str, &str, Damage, &str); 5] = [
        (
            "missing clip",
            "digit-3@0.wav",
            |p| std::fs::remove_file(p).unwrap(),
            "missing",
        ),
        (
            "stereo clip",
            "intro@0.wav",
            |p| write_wav(p, 22_050, 2, 16),
            "2 channels",
        ),
        (
            "8-bit clip",
            "digit-0@0.wav",
            |p| write_wav(p, 22_050, 1, 8),
            "16-bit",
        ),
        (
            "not a WAV",
            "low_battery@0.wav",
            |p| std::fs::write(p, b"RIFF nonsense").unwrap(),
            "",
        ),
        (
            "empty clip",
            "faster@0.wav",
            |p| {
                let spec = hound::WavSpec {
                    channels: 1,
                    sample_rate: 22_050,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                };
                hound::WavWriter::create(p, spec)
                    .unwrap()
                    .finalize()
                    .unwrap();
            },
            "no samples",
        ),
    ];
    for (case, file, damage, reason_part) in damages {
        let root = temp_dir("clips-damage");
        let dir = pack_with_clips(root.path(), MANIFEST);
        damage(&dir.join("clips/flite-slt").join(file));
        match ClipSet::load(&dir.join("clips/flite-slt")) {
            Err(PackError::BadClip {
                file: named,
                reason,
            }) => {
                assert!(named.ends_with(file), "{case}: names {}", named.display());
                assert!(reason.contains(reason_part), "{case}: reason `{reason}`");
            }
            other => panic!("{case}: expected BadClip for {file}, got {other:?}"),
        }
        // A device keeps the other clips, and the synthesiser names the bad one.
        let pack = VoicePack::load(&dir).unwrap();
        assert!(pack.clips().is_some(), "{case}");
        let problems = ClipSynth::load(&pack).unwrap().problems();
        assert_eq!(problems.len(), 1, "{case}: {problems:?}");
        assert!(
            problems[0].contains(file) && problems[0].contains(reason_part),
            "{case}: {problems:?}"
        );
    }

    let root = temp_dir("clips-rate");
    let dir = pack_with_clips(root.path(), MANIFEST);
    write_wav(&dir.join("clips/flite-slt/digit-9@0.wav"), 16_000, 1, 16);
    match ClipSet::load(&dir.join("clips/flite-slt")) {
        Err(PackError::ClipSampleRate {
            file,
            expected,
            found,
        }) => {
            assert!(file.ends_with("digit-9@0.wav"));
            assert_eq!((expected, found), (22_050, 16_000));
        }
        other => panic!("wrong rate: {other:?}"),
    }
    let problems = ClipSynth::load(&VoicePack::load(&dir).unwrap())
        .unwrap()
        .problems();
    assert!(
        problems.len() == 1 && problems[0].contains("16000 Hz"),
        "{problems:?}"
    );
    // Not one clip usable: the set as a whole is refused, and a device loads the pack
    // without it (live espeak-ng speaks).
    for entry in std::fs::read_dir(dir.join("clips/flite-slt")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wav") {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(ClipSet::load_usable(&dir.join("clips/flite-slt")).is_err());
    let pack = VoicePack::load(&dir).unwrap();
    assert!(pack.clips().is_none());
    assert!(pack.clip_problem().unwrap().contains("missing"));
    assert!(pack.with_voice("flite-slt").is_err());
}

/// Random byte damage to a valid `voice.toml` never panics: every outcome is a pack or a
/// `PackError`. (A small deterministic stand-in for the fuzz target.)
#[test]
fn damaged_voice_toml_never_panics() {
    let text = std::fs::read(voices_dir().join("en/voice.toml")).unwrap();
    let root = temp_dir("damage");
    let dir = root.path().join("en");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..400 {
        let mut damaged = text.clone();
        for _ in 0..=(next() % 4) {
            if damaged.is_empty() {
                break;
            }
            let at = (next() % damaged.len() as u64) as usize;
            match next() % 3 {
                0 => damaged[at] = (next() % 256) as u8,
                1 => {
                    damaged.remove(at);
                }
                _ => damaged.truncate(at),
            }
        }
        std::fs::write(dir.join("voice.toml"), &damaged).unwrap();
        match VoicePack::load(&dir) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                errors += 1;
            }
        }
    }
    assert!(
        errors > 300,
        "damage mostly rejected: {ok} loaded, {errors} errors"
    );
}

/// Properties of loading `voice.toml`: arbitrary bytes and values of the wrong type give a
/// typed error naming the file (and the exact key), and loading never changes the file.
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn shipped() -> String {
        std::fs::read_to_string(voices_dir().join("en/voice.toml")).unwrap()
    }

    /// Writes `bytes` as `en/voice.toml` under a fresh directory, loads it, and checks the
    /// file is unchanged; returns the result.
    fn load_bytes(bytes: &[u8]) -> Result<Result<VoicePack, PackError>, TestCaseError> {
        let root = temp_dir("prop");
        let dir = root.path().join("en");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("voice.toml");
        std::fs::write(&file, bytes).unwrap();
        let result = VoicePack::load(&dir);
        prop_assert!(
            std::fs::read(&file).unwrap() == bytes,
            "loading changed voice.toml"
        );
        if let Err(e) = &result {
            prop_assert!(e.to_string().contains("voice.toml"), "{}", e);
        }
        Ok(result)
    }

    /// The `key = value` lines of the shipped pack, with their dotted key and what kind of
    /// value they hold: `"` string, `[` array, `{` table, `0` integer.
    fn leaves(text: &str) -> Vec<(usize, String, char)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((key, value)) = line.split_once(" = ") {
                if !line.starts_with('#') {
                    let kind = match value.trim_start().chars().next().unwrap() {
                        c @ ('"' | '[' | '{') => c,
                        _ => '0',
                    };
                    out.push((n, format!("{section}.{}", key.trim()), kind));
                }
            }
        }
        out
    }

    /// `text` as a TOML basic string.
    fn toml_string(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// TOML values of each kind (`"`, `[`, `{`, `0`, and bool and float).
    fn other_kind() -> impl Strategy<Value = (char, String)> {
        prop_oneof![
            any::<i64>().prop_map(|n| ('0', n.to_string())),
            "\\PC{0,20}".prop_map(|s| ('"', toml_string(&s))),
            Just(('[', "[1, \"x\"]".to_owned())),
            Just(('[', "[]".to_owned())),
            Just(('{', "{ a = 1 }".to_owned())),
            Just(('b', "true".to_owned())),
            Just(('f', "1.5".to_owned())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes are never a pack: a typed error, the file untouched.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let result = load_bytes(&bytes)?;
            prop_assert!(matches!(
                result,
                Err(PackError::Syntax { .. } | PackError::Io { .. } | PackError::MissingKey { .. }
                    | PackError::BadValue { .. } | PackError::UnknownKey { .. })
            ), "{:?}", result.map(|p| p.tag().to_owned()));
        }

        /// Any one value of the shipped pack replaced by a value of another kind is refused
        /// as a bad value of exactly that key.
        #[test]
        fn a_value_of_the_wrong_kind_names_its_key(pick in any::<prop::sample::Index>(), (kind, value) in other_kind()) {
            let text = shipped();
            let leaves = leaves(&text);
            let (line, key, original) = &leaves[pick.index(leaves.len())];
            prop_assume!(kind != *original);
            let edited: Vec<String> = text
                .lines()
                .enumerate()
                .map(|(n, l)| {
                    if n == *line {
                        format!("{} = {value}", l.split_once(" = ").unwrap().0)
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            let result = load_bytes(edited.join("\n").as_bytes())?;
            match result {
                Err(PackError::BadValue { key: named, .. }) => prop_assert_eq!(&named, key),
                other => prop_assert!(false, "{} = {}: {:?}", key, value, other.map(|p| p.tag().to_owned())),
            }
        }

        /// Huge or odd strings and numbers in any value: a pack or a typed error, never a
        /// panic, the file untouched.
        #[test]
        fn huge_and_odd_values(
            pick in any::<prop::sample::Index>(),
            value in prop_oneof![
                (any::<char>(), 1000usize..50_000).prop_map(|(c, n)| toml_string(&c.to_string().repeat(n))),
                "\\PC{0,30}".prop_map(|s| toml_string(&s)),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("\"\"".to_owned()),
                Just("\"   \"".to_owned()),
            ],
        ) {
            let text = shipped();
            let leaves = leaves(&text);
            let (line, _, _) = &leaves[pick.index(leaves.len())];
            let edited: Vec<String> = text
                .lines()
                .enumerate()
                .map(|(n, l)| {
                    if n == *line {
                        format!("{} = {value}", l.split_once(" = ").unwrap().0)
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            let _ = load_bytes(edited.join("\n").as_bytes())?;
        }
    }
}
