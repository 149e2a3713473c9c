//! The clock at boot: while it has not been synchronised since boot (no
//! `/run/systemd/timesync/synchronized`, here a file in a temp directory), a TOTP code comes
//! after "the clock may be wrong" (`warn`, the default), is not given (`refuse`, exit 5, no
//! time step used), or is spoken as usual (`ignore`, or once the flag exists).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use codereader_e2e::{Audio, codereader_bin, voices_dir};

const TOTP: &str = "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank";
const HOTP: &str = "otpauth://hotp/Bank:bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=0";

fn codereader(dir: &Path, args: &[&str]) -> Output {
    Command::new(codereader_bin())
        .args(args)
        .env("CODEREADER_STATE", dir.join("state"))
        .env("CODEREADER_VOICES", voices_dir())
        .env("CODEREADER_CONFIG", dir.join("config.toml"))
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A state directory with `uri` enrolled and a config with `[clock] unsynced = mode`, whose
/// sync flag is `dir/synchronized` (absent until a test creates it). The real clock speaks
/// here: the wait for the next time step near a step's end is off, so lengths compare.
fn setup(dir: &Path, uri: &str, mode: &str) {
    fs::write(
        dir.join("config.toml"),
        format!(
            "[clock]\nunsynced = \"{mode}\"\nsync_flag = \"{}\"\n[code]\nwait_for_next_below = 0\n",
            dir.join("synchronized").display()
        ),
    )
    .unwrap();
    let out = codereader(dir, &["enroll", "--uri", uri]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Speaks to `name.wav` in `lang`; returns the run and the number of sounds in the WAV.
fn speak(dir: &Path, name: &str, lang: &str) -> (Output, usize, f64) {
    let wav = dir.join(format!("{name}.wav"));
    let out = codereader(
        dir,
        &["speak", "--wav", wav.to_str().unwrap(), "--lang", lang],
    );
    let audio = Audio::read_wav(&wav)
        .unwrap_or_else(|e| panic!("{}: {e}; {}", wav.display(), stderr(&out)));
    let seconds = audio.samples.len() as f64 / f64::from(audio.rate);
    (out, audio.spans(0.02, 120).len(), seconds)
}

#[test]
fn an_unsynchronised_clock_is_said_before_a_totp_code_in_each_language() {
    for lang in ["da", "en"] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), TOTP, "warn");
        let (warned, warned_sounds, warned_s) = speak(dir.path(), "warned", lang);
        assert!(warned.status.success(), "{}", stderr(&warned));
        assert!(
            stderr(&warned).contains("has not been synchronised since boot"),
            "{}",
            stderr(&warned)
        );
        let clock = String::from_utf8(codereader(dir.path(), &["clock"]).stdout).unwrap();
        assert!(clock.contains("synchronised since boot: NO"), "{clock}");
        fs::write(dir.path().join("synchronized"), "").unwrap();
        let clock = String::from_utf8(codereader(dir.path(), &["clock"]).stdout).unwrap();
        assert!(
            clock.contains("synchronised since boot: yes") && clock.contains("unsynced = \"warn\""),
            "{clock}"
        );
        let (plain, plain_sounds, plain_s) = speak(dir.path(), "plain", lang);
        assert!(plain.status.success(), "{}", stderr(&plain));
        assert!(
            !stderr(&plain).contains("synchronised"),
            "{}",
            stderr(&plain)
        );
        // One more phrase ("Uret kan være forkert." / "The clock may be wrong.") and its
        // pause, before the code.
        assert!(
            warned_sounds > plain_sounds && warned_s > plain_s + 1.0,
            "{lang}: warned {warned_sounds} sounds {warned_s:.2} s, plain {plain_sounds} \
             sounds {plain_s:.2} s"
        );
    }
}

#[test]
fn refuse_gives_no_totp_code_and_uses_no_time_step() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TOTP, "refuse");
    let (out, sounds, _) = speak(dir.path(), "refused", "en");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unsynced = \"refuse\""),
        "{}",
        stderr(&out)
    );
    assert!(sounds < 6, "{sounds} sounds: a code was spoken");
    let status = codereader(dir.path(), &["status"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("last step given: none"), "{status}");
}

#[test]
fn hotp_given_times_and_ignore_do_not_doubt_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), HOTP, "refuse");
    let (out, _, _) = speak(dir.path(), "hotp", "da");
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TOTP, "refuse");
    let wav = dir.path().join("at.wav");
    let out = codereader(
        dir.path(),
        &[
            "speak",
            "--wav",
            wav.to_str().unwrap(),
            "--at",
            "2000000000",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TOTP, "ignore");
    let (out, _, _) = speak(dir.path(), "ignored", "da");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("synchronised"), "{}", stderr(&out));
}
