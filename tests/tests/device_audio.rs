//! Where the device speaks: `[audio] device` in the config, `codereader audio --list`, and
//! alsa-lib's own error printing kept out of standard error (it goes into our one message).
//! Audio is captured through ALSA's `file` plugin ([`AlsaCapture`]); no sound card needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use codereader_e2e::{AlsaCapture, CAPTURE_RATE, codereader_bin, voices_dir};

const URI: &str = "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank";

fn codereader(dir: &Path, alsa_config_path: &str, args: &[&str]) -> Output {
    Command::new(codereader_bin())
        .args(args)
        .env("CODEREADER_STATE", dir.join("state"))
        .env("CODEREADER_VOICES", voices_dir())
        .env("CODEREADER_CONFIG", dir.join("config.toml"))
        .env("ALSA_CONFIG_PATH", alsa_config_path)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A state directory with a TOTP token and a config naming `device` (if any).
fn setup(dir: &Path, device: Option<&str>) {
    let config = match device {
        Some(name) => format!("[audio]\ndevice = \"{name}\"\n"),
        None => String::new(),
    };
    fs::write(dir.join("config.toml"), config).unwrap();
    let out = codereader(dir, "", &["enroll", "--uri", URI]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An ALSA config whose default device is a card that does not exist, plus `extra`.
fn missing_default(dir: &Path, extra: &str) -> String {
    let conf = dir.join("missing.conf");
    fs::write(
        &conf,
        format!("pcm.!default {{ type plug; slave.pcm \"hw:CARD=Headphones\" }}\n{extra}"),
    )
    .unwrap();
    format!("/usr/share/alsa/alsa.conf:{}", conf.display())
}

#[test]
fn audio_list_gives_the_names_the_config_takes_and_marks_the_one_in_use() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), Some("talk"));
    let alsa = missing_default(
        dir.path(),
        "pcm.talk { type null; hint { show on; description \"Headphones of the test\" } }\n",
    );
    let out = codereader(dir.path(), &alsa, &["audio", "--list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(text.starts_with("audio device: talk\n"), "{text}");
    assert!(
        text.contains("* talk\n      Headphones of the test"),
        "{text}"
    );
    assert!(text.contains("  default\n"), "{text}");
    assert!(!stderr(&out).contains("ALSA lib"), "{}", stderr(&out));
}

#[test]
fn speak_plays_on_the_configured_device_while_the_default_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), Some("talk"));
    let capture = AlsaCapture::start(dir.path()).unwrap();
    // The capture's config, with `default` pointing at a missing card and `talk` at the
    // capture, in the capture's format: the capture reads at the real-time rate of that
    // format, so any other would play slower than real time.
    let alsa = format!(
        "{}:{}",
        capture.config_path,
        missing_default(
            dir.path(),
            &format!(
                "pcm.talk {{ type plug; slave {{ pcm \"capture\"; format S16_LE; rate {CAPTURE_RATE}; \
                 channels 1 }} hint {{ show on; description \"t\" }} }}\n"
            )
        )
        .trim_start_matches("/usr/share/alsa/alsa.conf:")
    );
    // A stated time early in its step: a time read from the clock could fall in the last
    // seconds of a step, where `speak` first waits for the next one.
    let out = codereader(dir.path(), &alsa, &["speak", "--at", "1800000000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ALSA lib"), "{}", stderr(&out));
    let audio = capture.audio();
    let spoken = audio.spans(0.02, 40);
    assert!(
        audio.samples.len() > 48_000 * 2 && spoken.len() >= 6,
        "{} samples, {} sounds: the code was not played on `talk`",
        audio.samples.len(),
        spoken.len()
    );
}

#[test]
fn a_missing_card_is_one_message_with_alsas_reason_and_no_alsa_lib_lines() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), None);
    let alsa = missing_default(dir.path(), "");
    let out = codereader(dir.path(), &alsa, &["speak"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        !err.contains("ALSA lib"),
        "alsa-lib printed by itself:\n{err}"
    );
    assert!(
        err.contains("(ALSA: ") && err.contains("Cannot get card index for Headphones"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unknown_or_empty_audio_device_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), Some("nonexistent"));
    let out = codereader(dir.path(), &missing_default(dir.path(), ""), &["speak"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("no output device `nonexistent`") && err.contains("`codereader audio --list`"),
        "{err}"
    );
    fs::write(dir.path().join("config.toml"), "[audio]\ndevice = \" \"\n").unwrap();
    let out = codereader(dir.path(), "", &["audio"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("`audio.device`"), "{}", stderr(&out));
}
