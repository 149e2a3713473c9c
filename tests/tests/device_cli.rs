//! End-to-end tests of the `codereader` binary's one-shot commands: enrol, code (checked
//! against Debian's `oathtool`), speak to WAV (segmented), spoken errors, damaged state
//! files, settings and config errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use codereader_e2e::{
    Audio, code_segments, codereader_bin, packs_with_english_clips, packs_without_clips, voices_dir,
};

/// RFC 4226's secret "12345678901234567890" in base32 and hex.
const SECRET_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const SECRET_HEX: &str = "3132333435363738393031323334353637383930";
/// A time after any build of this program (2033-05-18).
const T: u64 = 2_000_000_000;

fn codereader(state: &Path, args: &[&str]) -> Output {
    Command::new(codereader_bin())
        .args(args)
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", voices_dir())
        .env_remove("CODEREADER_CONFIG")
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn oathtool(args: &[&str]) -> String {
    let out = Command::new("oathtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run oathtool ({e}); install it with: apt-get install oathtool")
        });
    assert!(out.status.success(), "oathtool {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn code_equals_oathtool_for_totp_and_hotp_tokens() {
    let cases: [(&str, &str, &str, u64); 3] = [
        ("SHA1", "6", "30", 30),
        ("SHA256", "8", "60", 60),
        ("SHA512", "7", "30", 30),
    ];
    for (algorithm, digits, period, step) in cases {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!(
            "otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank&algorithm={algorithm}&digits={digits}&period={period}"
        );
        let out = ok(&codereader(dir.path(), &["enroll", "--uri", &uri]));
        assert!(
            !out.contains(SECRET_B32),
            "enroll printed the secret: {out}"
        );
        // Several times, increasing (a later step is always allowed).
        for t in [T, T + step - 1, T + step, T + 12_345] {
            let ours = ok(&codereader(dir.path(), &["code", "--at", &t.to_string()]));
            let mode = algorithm.to_lowercase();
            let theirs = oathtool(&[
                &format!("--totp={mode}"),
                &format!("--digits={digits}"),
                &format!("--time-step-size={period}s"),
                &format!("--now=@{t}"),
                SECRET_HEX,
            ]);
            assert_eq!(ours.trim(), theirs, "{algorithm} {digits} digits at {t}");
        }
    }
    // HOTP: each `code` uses the next counter.
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("otpauth://hotp/Bank:bob?secret={SECRET_B32}&counter=5");
    ok(&codereader(dir.path(), &["enroll", "--uri", &uri]));
    for counter in 5..10 {
        let ours = ok(&codereader(dir.path(), &["code"]));
        let theirs = oathtool(&["--hotp", &format!("--counter={counter}"), SECRET_HEX]);
        assert_eq!(ours.trim(), theirs, "counter {counter}");
    }
}

fn enroll_totp(state: &Path) {
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    ok(&codereader(
        state,
        &["enroll", "--uri", &uri, "--serial", "4711-0815"],
    ));
}

#[test]
fn speak_wav_has_six_digit_segments_in_each_language() {
    for lang in ["da", "en"] {
        let dir = tempfile::tempdir().unwrap();
        enroll_totp(dir.path());
        let wav = dir.path().join("code.wav");
        let at = T.to_string();
        ok(&codereader(
            dir.path(),
            &[
                "speak",
                "--wav",
                wav.to_str().unwrap(),
                "--at",
                &at,
                "--lang",
                lang,
            ],
        ));
        let audio = Audio::read_wav(&wav).unwrap();
        assert_eq!(audio.rate, 22_050);
        assert!(audio.peak() < 1.0, "{lang}: clipped");
        let parts = code_segments(&audio);
        assert_eq!(
            parts.digits.len(),
            6,
            "{lang}: expected earcon, intro, 6 digits, earcon; found {:?}",
            parts.spans
        );
        // The pause between the two groups of three is the longest between digits.
        let gaps: Vec<usize> = parts
            .digits
            .windows(2)
            .map(|w| w[1].start - w[0].end)
            .collect();
        let longest = gaps.iter().enumerate().max_by_key(|(_, g)| **g).unwrap().0;
        assert_eq!(longest, 2, "{lang}: gaps {gaps:?}");
    }
}

#[test]
fn failures_are_spoken_and_give_their_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("e.wav");
    let w = wav.to_str().unwrap();
    // No token: exit 3, and the WAV says so.
    let out = codereader(dir.path(), &["speak", "--wav", w, "--lang", "en"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no token is enrolled"),
        "{}",
        stderr(&out)
    );
    let spoken = Audio::read_wav(&wav).unwrap();
    assert!(
        spoken.samples.len() > 22_050 / 2,
        "the error was not spoken"
    );
    // Clock not set (the real clock, made to read 2001): exit 5, spoken, no code printed,
    // and the log says what can be done.
    enroll_totp(dir.path());
    let out = faked_clock(dir.path(), "@2001-01-01 00:00:00", &["speak", "--wav", w]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    for part in [
        "clock is not set",
        "A helper can set the clock",
        "saying `clock_not_set`",
    ] {
        assert!(stderr(&out).contains(part), "{part:?}: {}", stderr(&out));
    }
    assert!(!Audio::read_wav(&wav).unwrap().samples.is_empty());
    let out = faked_clock(dir.path(), "@2001-01-01 00:00:00", &["code"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    let out = faked_clock(dir.path(), "@2001-01-01 00:00:00", &["clock"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("clock: NOT SET") && shown.contains("set the system clock"),
        "{shown}"
    );
    // The clock as a date a helper can compare with a watch, not seconds since 1970.
    assert!(shown.contains("(reads 2001-01-01 00:00:0"), "{shown}");
    let out = faked_clock(dir.path(), "@2033-05-18 03:33:20", &["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("clock: ok (2033-05-18 03:33:2"), "{shown}");
    assert!(
        shown.trim_end().ends_with(" UTC)") || shown.contains("UTC)\n"),
        "{shown}"
    );
    // Clock moved back past the last step given: exit 5, no code, and the log line keeps
    // the command that accepts the clock.
    ok(&faked_clock(dir.path(), "+1d", &["code"]));
    let out = codereader(dir.path(), &["code"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    for part in ["moved backwards", "codereader clock --accept"] {
        assert!(stderr(&out).contains(part), "{part:?}: {}", stderr(&out));
    }
    let out = codereader(dir.path(), &["speak", "--wav", w]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("saying `clock_backwards`"),
        "{}",
        stderr(&out)
    );
    // Unknown language: clear error.
    let out = codereader(dir.path(), &["speak", "--wav", w, "--lang", "xx"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no voice pack for language `xx`"),
        "{}",
        stderr(&out)
    );
}

/// `codereader ARGS` with the real clock shifted by libfaketime (`faketime FAKE`: an
/// absolute `@2001-01-01 00:00:00` or a relative `+1d`).
fn faked_clock(state: &Path, fake: &str, args: &[&str]) -> Output {
    Command::new("faketime")
        .arg("-f")
        .arg(fake)
        .arg(codereader_bin())
        .args(args)
        .env("TZ", "UTC")
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", voices_dir())
        .env_remove("CODEREADER_CONFIG")
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run faketime ({e}); install it with: apt-get install faketime")
        })
}

/// pyotp's code for the RFC 4226 secret at `at` (Debian's python3-pyotp).
fn pyotp(at: u64) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import pyotp; print(pyotp.TOTP('{SECRET_B32}').at({at}))"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyotp: {} (install it with: apt-get install python3-pyotp)",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `code --at T` is the caller's statement of the time: before the build, far in the future
/// and in any order it equals pyotp and oathtool, and it never touches the clock record, so
/// the real clock keeps working afterwards and keeps its checks.
#[test]
fn code_at_any_time_equals_pyotp_and_leaves_the_real_clock_alone() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    // The real clock first: its step is recorded.
    ok(&codereader(dir.path(), &["code"]));
    let record = fs::read(dir.path().join("token.toml")).unwrap();
    for at in [
        1u64 << 34,
        0,
        59,
        1_000,
        1_111_111_109,
        (1 << 34) + 29,
        1_700_000_000,
        30,
    ] {
        let ours = ok(&codereader(dir.path(), &["code", "--at", &at.to_string()]));
        let theirs = oathtool(&["--totp", &format!("--now=@{at}"), SECRET_HEX]);
        assert_eq!(ours.trim(), theirs, "oathtool at {at}");
        assert_eq!(ours.trim(), pyotp(at), "pyotp at {at}");
    }
    let wav = dir.path().join("code.wav");
    ok(&codereader(
        dir.path(),
        &["speak", "--wav", wav.to_str().unwrap(), "--at", "0"],
    ));
    assert_eq!(
        code_segments(&Audio::read_wav(&wav).unwrap()).digits.len(),
        6
    );
    assert_eq!(
        fs::read(dir.path().join("token.toml")).unwrap(),
        record,
        "--at changed the token file"
    );
    // The real clock still gives codes, and still refuses one that ran backwards.
    let before = oathtool(&["--totp", SECRET_HEX]);
    let ours = ok(&codereader(dir.path(), &["code"]));
    let after = oathtool(&["--totp", SECRET_HEX]);
    assert!(
        ours.trim() == before || ours.trim() == after,
        "{ours} vs {before}/{after}"
    );
    ok(&faked_clock(dir.path(), "+1d", &["code"]));
    let out = codereader(dir.path(), &["code"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("moved backwards"), "{}", stderr(&out));
}

#[test]
fn live_speak_without_a_sound_card_fails_clearly_and_uses_no_counter() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("otpauth://hotp/Bank:bob?secret={SECRET_B32}&counter=0");
    ok(&codereader(dir.path(), &["enroll", "--uri", &uri]));
    // An ALSA default device that does not exist, whatever the machine has.
    let conf = dir.path().join("asound.conf");
    fs::write(
        &conf,
        "pcm.!default { type hw; card 31 }\nctl.!default { type hw; card 31 }\n",
    )
    .unwrap();
    let out = Command::new(codereader_bin())
        .args(["speak"])
        .env("CODEREADER_STATE", dir.path())
        .env("CODEREADER_VOICES", voices_dir())
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no working audio output device"),
        "{}",
        stderr(&out)
    );
    let status = ok(&codereader(dir.path(), &["status"]));
    assert!(status.contains("next counter: 0"), "{status}");
}

#[test]
fn enroll_keeps_the_secret_out_of_output_and_needs_replace() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    // From standard input, so the secret is not in the process list.
    let mut child = Command::new(codereader_bin())
        .args(["enroll", "--uri", "-"])
        .env("CODEREADER_STATE", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(uri.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", ok(&out), stderr(&out));
    assert!(!all.contains(SECRET_B32) && !all.contains("GEZDG"), "{all}");
    let token = dir.path().join("token.toml");
    assert_eq!(fs::metadata(&token).unwrap().mode() & 0o777, 0o600);
    let before = fs::read(&token).unwrap();
    let other = "otpauth://hotp/X:y?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&counter=1";
    let out = codereader(dir.path(), &["enroll", "--uri", other]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--replace"), "{}", stderr(&out));
    assert_eq!(fs::read(&token).unwrap(), before);
    ok(&codereader(
        dir.path(),
        &["enroll", "--uri", other, "--replace"],
    ));
    assert!(ok(&codereader(dir.path(), &["status"])).contains("hotp"));
    // A bad URI: a clear error that does not echo the input.
    let out = codereader(
        dir.path(),
        &[
            "enroll",
            "--replace",
            "--uri",
            "otpauth://totp/A:b?secret=MZXW6!!!",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("MZXW6"), "{}", stderr(&out));
}

/// Everything about a file that must not change.
fn fingerprint(path: &Path) -> (Vec<u8>, u32, i64, i64) {
    let meta = fs::metadata(path).unwrap();
    (
        fs::read(path).unwrap(),
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

#[test]
fn damaged_state_files_give_clear_errors_and_are_left_untouched() {
    type Damage = fn(&Path);
    let mut table: Vec<(&str, Damage, &str)> = vec![
        (
            "bit flip",
            |p| {
                let mut b = fs::read(p).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x04;
                fs::write(p, b).unwrap();
            },
            "checksum does not match",
        ),
        (
            "truncated",
            |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..b.len() / 2]).unwrap();
            },
            "truncated",
        ),
        (
            "cut inside the checksum",
            |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..b.len() - 10]).unwrap();
            },
            "truncated",
        ),
        ("empty", |p| fs::write(p, b"").unwrap(), "empty"),
        (
            "binary garbage",
            |p| fs::write(p, [0xffu8, 0xfe, 0x00, 0x13, 0x37]).unwrap(),
            "not UTF-8",
        ),
        (
            "readable by others",
            |p| fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap(),
            "must be 0600",
        ),
        (
            "future version",
            |p| {
                let t = fs::read_to_string(p).unwrap();
                fs::write(p, t.replace("format = 1", "format = 2")).unwrap();
            },
            "newer codereader (state format 2",
        ),
    ];
    // Giving a file away needs root (as CI runs).
    if rustix::process::geteuid().is_root() {
        table.push((
            "owned by another user",
            |p| std::os::unix::fs::chown(p, Some(4242), None).unwrap(),
            "belongs to user id 4242",
        ));
    }
    // Samples of the spoken error per case: a damaged file says the token must be set up
    // again, the others that the device needs service; neither says "blocked".
    let mut spoken = Vec::new();
    for (name, damage, expected) in table {
        let dir = tempfile::tempdir().unwrap();
        enroll_totp(dir.path());
        let token = dir.path().join("token.toml");
        damage(&token);
        let before = fingerprint(&token);
        let wav = dir.path().join("e.wav");
        let at = T.to_string();
        for args in [
            vec!["code", "--at", &at],
            vec!["speak", "--wav", wav.to_str().unwrap(), "--at", &at],
            vec!["status"],
            vec!["clock", "--accept"],
        ] {
            let out = codereader(dir.path(), &args);
            assert_eq!(
                out.status.code(),
                Some(4),
                "{name}, {args:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(expected),
                "{name}, {args:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("left untouched"),
                "{name}: {}",
                stderr(&out)
            );
            assert!(!stderr(&out).contains("GEZDG"), "{name}: secret in error");
            assert!(out.stdout.is_empty(), "{name}: printed {:?}", out.stdout);
            assert_eq!(
                fingerprint(&token),
                before,
                "{name}, {args:?}: file changed"
            );
            if args[0] == "speak" {
                spoken.push((name, Audio::read_wav(&wav).unwrap().samples.len()));
                let prompt = if spoken.len() <= 5 {
                    "saying `state_damaged`"
                } else {
                    "saying `needs_service`"
                };
                assert!(stderr(&out).contains(prompt), "{name}: {}", stderr(&out));
            }
        }
        // Enrolling over it without --replace does not touch it either.
        let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}");
        let out = codereader(dir.path(), &["enroll", "--uri", &uri]);
        assert!(!out.status.success(), "{name}");
        assert_eq!(
            fingerprint(&token),
            before,
            "{name}: enroll changed the file"
        );
    }
    // "Blocked" is kept for a token that can give no more codes: an HOTP counter used up.
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "otpauth://hotp/Bank:bob?secret={SECRET_B32}&counter={}",
        u64::MAX
    );
    ok(&codereader(dir.path(), &["enroll", "--uri", &uri]));
    let wav = dir.path().join("blocked.wav");
    let out = codereader(dir.path(), &["speak", "--wav", wav.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saying `device_blocked`"),
        "{}",
        stderr(&out)
    );
    let blocked = Audio::read_wav(&wav).unwrap().samples.len();
    assert!(blocked > 0);
    // Both longer sentences are spoken in full, and neither is the short "blocked".
    for (name, n) in &spoken {
        assert!(
            *n * 2 > blocked * 3,
            "{name}: spoke {n} samples, \"blocked\" has {blocked}: {spoken:?}"
        );
    }
}

#[test]
fn settings_persist_and_bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let shown = ok(&codereader(dir.path(), &["settings"]));
    assert!(
        shown.contains("language = da") && shown.contains("volume = -2"),
        "{shown}"
    );
    ok(&codereader(
        dir.path(),
        &[
            "settings",
            "--volume",
            "-5",
            "--rate",
            "2",
            "--lang",
            "en",
            "--bind",
            "speak=k,enter",
        ],
    ));
    let shown = ok(&codereader(dir.path(), &["settings"]));
    for expected in [
        "language = en",
        "volume = -5",
        "rate = 2",
        "speak = k, enter",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in\n{shown}");
    }
    // Conflicting binding, out-of-range value, unknown language: refused, nothing saved.
    let saved = fs::read(dir.path().join("settings.toml")).unwrap();
    for args in [
        &["settings", "--bind", "stop=k"][..],
        &["settings", "--volume", "4"],
        &["settings", "--lang", "xx"],
        &["settings", "--bind", "jump=j"],
    ] {
        let out = codereader(dir.path(), args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(fs::read(dir.path().join("settings.toml")).unwrap(), saved);
    }
    ok(&codereader(dir.path(), &["settings", "--reset"]));
    assert!(ok(&codereader(dir.path(), &["settings"])).contains("language = da"));
    // A bad config file names the key and gives exit status 7.
    let config = dir.path().join("config.toml");
    for (text, key) in [
        ("volume = 3\n", "volume"),
        ("[input]\nterminl = true\n", "terminl"),
    ] {
        fs::write(&config, text).unwrap();
        let out = codereader(
            dir.path(),
            &["--config", config.to_str().unwrap(), "settings"],
        );
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        assert!(stderr(&out).contains(key), "{}", stderr(&out));
    }
}

fn pskc_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/otp/tests/data/pskc")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn enroll_from_pskc_plain_and_encrypted_matches_oathtool() {
    for (file, key) in [
        ("rfc6030-figure3.xml", None),
        (
            "rfc6030-figure6.xml",
            Some("12345678901234567890123456789012"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = pskc_file(file);
        let mut args = vec!["enroll", "--pskc", &path, "--serial", "987654321"];
        if let Some(key) = key {
            args.extend(["--pskc-key", key]);
        }
        let out = ok(&codereader(dir.path(), &args));
        assert!(
            out.contains("hotp") && out.contains("8 digits"),
            "{file}: {out}"
        );
        let status = ok(&codereader(dir.path(), &["status"]));
        assert!(status.contains("serial: 987654321"), "{status}");
        for counter in 0..3 {
            let ours = ok(&codereader(dir.path(), &["code"]));
            let theirs = oathtool(&[
                "--hotp",
                "--digits=8",
                &format!("--counter={counter}"),
                SECRET_HEX,
            ]);
            assert_eq!(ours.trim(), theirs, "{file}, counter {counter}");
        }
    }
    // Wrong serial, missing or wrong pre-shared key, a weak key: clear errors, nothing stored.
    let table: [(&str, &[&str], &str); 4] = [
        (
            "rfc6030-figure3.xml",
            &["--serial", "1"],
            "no key with serial `1`; it has: 987654321",
        ),
        (
            "rfc6030-figure6.xml",
            &["--serial", "987654321"],
            "cannot be used",
        ),
        (
            "rfc6030-figure6.xml",
            &[
                "--serial",
                "987654321",
                "--pskc-key",
                "00000000000000000000000000000000",
            ],
            "cannot be used",
        ),
        (
            "rfc6030-figure2.xml",
            &["--serial", "12345678"],
            "cannot be used",
        ),
    ];
    for (file, extra, expected) in table {
        let dir = tempfile::tempdir().unwrap();
        let path = pskc_file(file);
        let mut args = vec!["enroll", "--pskc", &path];
        args.extend_from_slice(extra);
        let out = codereader(dir.path(), &args);
        assert!(!out.status.success(), "{file} {extra:?} was accepted");
        assert!(
            stderr(&out).contains(expected),
            "{file} {extra:?}: {}",
            stderr(&out)
        );
        assert!(!dir.path().join("token.toml").exists());
    }
}

/// `codereader --voices VOICES ARGS...`.
fn with_voices(state: &Path, voices: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--voices", voices.to_str().unwrap()];
    all.extend_from_slice(args);
    codereader(state, &all)
}

#[test]
fn settings_choose_and_list_the_voice_of_each_language() {
    let dir = tempfile::tempdir().unwrap();
    let voices = packs_without_clips(dir.path());
    let state = dir.path().join("state");
    let file = state.join("settings.toml");
    let settings = |args: &[&str]| {
        let mut all = vec!["settings"];
        all.extend_from_slice(args);
        with_voices(&state, &voices, &all)
    };
    let listed = ok(&settings(&["--list-voices"]));
    for line in [
        "da (Dansk): speaking espeak",
        "  * espeak (espeak-ng:da; pack default;",
        "en (English): speaking flite-slt",
        "  * flite-slt (flite:slt; pack default; NO CLIPS",
        "    espeak (espeak-ng:en; no clips",
    ] {
        assert!(listed.contains(line), "{line:?} missing in\n{listed}");
    }
    assert!(!file.exists(), "listing saved settings");
    // The current language (the built-in default, da) has one voice: choosing it works.
    assert!(ok(&settings(&["--voice", "espeak"])).contains("da = espeak (of espeak)"));
    // --voice goes with the language set in the same command.
    let shown = ok(&settings(&["--lang", "en", "--voice", "espeak"]));
    for line in [
        "language = en",
        "en = espeak (of flite-slt, espeak)",
        "da = espeak",
    ] {
        assert!(shown.contains(line), "{line:?} missing in\n{shown}");
    }
    // And alone, with the current language (now en).
    assert!(ok(&settings(&["--voice", "flite-slt"])).contains("en = flite-slt (of"));
    assert!(ok(&settings(&["--language", "en", "--voice", "espeak"])).contains("en = espeak"));
    assert!(ok(&settings(&["--list-voices"])).contains("en (English): speaking espeak"));
    let saved = fs::read_to_string(&file).unwrap();
    assert!(
        saved.contains("format = 2")
            && saved.contains("[voice]")
            && saved.contains("en = \"espeak\""),
        "{saved}"
    );
    // An unknown voice: the voices there are, the same exit status as an unknown language,
    // nothing saved.
    let unknown_language = settings(&["--lang", "xx"]).status.code();
    assert_eq!(unknown_language, Some(1));
    for (args, available) in [
        (&["--voice", "robot"][..], "it has: flite-slt, espeak"),
        (&["--lang", "da", "--voice", "flite-slt"], "it has: espeak"),
    ] {
        let out = settings(args);
        assert_eq!(out.status.code(), unknown_language, "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(args[args.len() - 1]) && err.contains(available),
            "{args:?}: {err}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), saved, "{args:?}");
    }
    // --list-voices changes nothing, so it takes no change with it.
    let out = settings(&["--list-voices", "--voice", "espeak"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Reset forgets the voices too.
    let shown = ok(&settings(&["--reset"]));
    assert!(shown.contains("en = flite-slt"), "{shown}");
}

#[test]
fn a_voice_without_clips_says_once_which_voice_speaks_instead() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    let voices = packs_without_clips(dir.path());
    let wav = dir.path().join("code.wav");
    let at = T.to_string();
    let speak = |extra: &[&str]| {
        let mut args = vec!["speak", "--wav", wav.to_str().unwrap(), "--at", &at];
        args.extend_from_slice(extra);
        let out = with_voices(dir.path(), &voices, &args);
        ok(&out);
        stderr(&out)
    };
    let err = speak(&["--lang", "en"]);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("has no clips")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for part in [
        "voice `flite-slt` of `en` (flite:slt)",
        &voices.join("en/clips/flite-slt").display().to_string(),
        "live espeak-ng (voice `en`) speaks instead",
        "`cargo xtask voices en`",
    ] {
        assert!(lines[0].contains(part), "{part:?} missing in {}", lines[0]);
    }
    // The code was still spoken.
    assert_eq!(
        code_segments(&Audio::read_wav(&wav).unwrap()).digits.len(),
        6
    );
    // espeak-ng voices are spoken by espeak-ng: nothing to say.
    for extra in [
        &["--lang", "en", "--voice", "espeak"][..],
        &["--lang", "da"],
    ] {
        let err = speak(extra);
        assert!(!err.contains("has no clips"), "{extra:?}: {err}");
    }
}

#[test]
fn a_chosen_voice_that_is_gone_falls_back_and_keeps_the_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    let voices = packs_without_clips(dir.path());
    ok(&with_voices(
        dir.path(),
        &voices,
        &[
            "settings", "--lang", "en", "--volume", "-5", "--voice", "espeak",
        ],
    ));
    // A new version of the pack renames the voice.
    let pack = voices.join("en/voice.toml");
    let text = fs::read_to_string(&pack).unwrap();
    fs::write(&pack, text.replace("\nespeak = {", "\nespeak-classic = {")).unwrap();
    let file = dir.path().join("settings.toml");
    let before = fingerprint(&file);
    let wav = dir.path().join("code.wav");
    let out = with_voices(
        dir.path(),
        &voices,
        &[
            "speak",
            "--wav",
            wav.to_str().unwrap(),
            "--at",
            &T.to_string(),
        ],
    );
    ok(&out);
    let err = stderr(&out);
    for part in [
        "settings.toml",
        "the voice chosen for `en`, `espeak`, cannot be used",
        "it has: flite-slt, espeak-classic",
        "speaking `flite-slt` instead",
    ] {
        assert!(err.contains(part), "{part:?} missing in {err}");
    }
    assert_eq!(
        code_segments(&Audio::read_wav(&wav).unwrap()).digits.len(),
        6
    );
    let shown = ok(&with_voices(dir.path(), &voices, &["settings"]));
    for line in [
        "language = en",
        "volume = -5",
        "en = flite-slt (of flite-slt, espeak-classic)",
    ] {
        assert!(shown.contains(line), "{line:?} missing in\n{shown}");
    }
    assert_eq!(fingerprint(&file), before, "the settings file was changed");
}

/// `crates/device/tests/data/settings-format-1.toml` was written by `codereader settings` of
/// main at d524e46 (settings format 1, before the voice choice).
#[test]
fn settings_of_the_previous_format_load_unchanged_and_newer_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    let old = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/device/tests/data/settings-format-1.toml");
    fs::copy(&old, &file).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let before = fingerprint(&file);
    let expected = [
        "language = en",
        "volume = -5",
        "rate = 2",
        "speak = k, enter",
        "status = KEY_F2",
    ];
    let shown = ok(&codereader(dir.path(), &["settings"]));
    for line in expected {
        assert!(shown.contains(line), "{line:?} missing in\n{shown}");
    }
    assert_eq!(fingerprint(&file), before, "showing changed the file");
    // The first change writes format 2 and keeps everything else.
    let shown = ok(&codereader(dir.path(), &["settings", "--voice", "espeak"]));
    for line in expected.iter().chain(&["en = espeak"]) {
        assert!(shown.contains(line), "{line:?} missing in\n{shown}");
    }
    let saved = fs::read_to_string(&file).unwrap();
    for part in [
        "format = 2",
        "volume = -5",
        "rate = 2",
        "speak = [\"k\", \"enter\"]",
        "status = [\"KEY_F2\"]",
        "en = \"espeak\"",
    ] {
        assert!(saved.contains(part), "{part:?} missing in\n{saved}");
    }
    // A newer format, with keys this build does not know: refused, left untouched.
    fs::write(
        &file,
        saved.replace("format = 2", "format = 3") + "\n[earcons]\nstart = \"bell\"\n",
    )
    .unwrap();
    let before = fingerprint(&file);
    for args in [&["settings"][..], &["settings", "--voice", "flite-slt"]] {
        let out = codereader(dir.path(), args);
        assert_eq!(out.status.code(), Some(7), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("newer codereader (format 3"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fingerprint(&file), before, "{args:?} changed the file");
    }
}

/// Damages clips of every kind a voice has (a digit word missing, the intro and another
/// digit overwritten with garbage, a prompt at the wrong sample rate) in `voices`' English
/// flite clips, for the digits of `code`.
fn damage_clips(voices: &Path, code: &str) {
    let clips = voices.join("en/clips/flite-slt");
    let digit = |i: usize| format!("digit-{}@0.wav", &code[i..=i]);
    fs::remove_file(clips.join(digit(0))).unwrap();
    fs::write(clips.join("intro@0.wav"), b"RIFF garbage, not a WAV file").unwrap();
    let last = clips.join(digit(5));
    if last.exists() {
        fs::write(&last, [0u8; 300]).unwrap();
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wrong_rate = hound::WavWriter::create(clips.join("no_token@0.wav"), spec).unwrap();
    for i in 0..4000 {
        wrong_rate.write_sample((i % 50) as i16 * 100).unwrap();
    }
    wrong_rate.finalize().unwrap();
}

/// Missing and damaged clips (a digit, the intro, a prompt; several at once) no longer stop
/// `speak`: live espeak-ng says those phrases, the whole code is spoken, and the problem is
/// one line on standard error that does not tell which digits the code has.
#[test]
fn damaged_and_missing_clips_are_spoken_by_espeak_and_the_whole_code_is_said() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    let voices = packs_with_english_clips(dir.path());
    let at = T.to_string();
    let code = ok(&codereader(dir.path(), &["code", "--at", &at]))
        .trim()
        .to_owned();
    let wav = dir.path().join("code.wav");
    let speak = |state: &Path| {
        with_voices(
            state,
            &voices,
            &[
                "speak",
                "--wav",
                wav.to_str().unwrap(),
                "--at",
                &at,
                "--lang",
                "en",
            ],
        )
    };
    let whole = speak(dir.path());
    assert!(!stderr(&whole).contains("warning"), "{}", stderr(&whole));
    let intact = code_segments(&Audio::read_wav(&wav).unwrap());
    assert_eq!(intact.digits.len(), 6, "{:?}", intact.spans);

    damage_clips(&voices, &code);
    let out = speak(dir.path());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let audio = Audio::read_wav(&wav).unwrap();
    let parts = code_segments(&audio);
    assert_eq!(
        parts.digits.len(),
        6,
        "earcon, intro, 6 digits, earcon expected: {:?}; {err}",
        parts.spans
    );
    // Every digit is audible speech, not a click.
    for span in &parts.digits {
        assert!(span.seconds(audio.rate) > 0.15, "{:?}", parts.spans);
    }
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for part in [
        "voice `flite-slt` of `en`",
        "live espeak-ng (voice `en`)",
        "cargo xtask voices en",
    ] {
        assert!(
            warnings[0].contains(part),
            "{part:?} missing in {}",
            warnings[0]
        );
    }
    // The line names the first damaged file in sorted order (digit clips sort first) and how
    // many more there are, never which phrase was being spoken.
    assert!(
        warnings[0].contains("and 3 more") || warnings[0].contains("and 2 more"),
        "{}",
        warnings[0]
    );

    // A prompt whose clip has the wrong rate: the error is still spoken, by espeak-ng.
    let empty = dir.path().join("no-token");
    let out = speak(&empty);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let spoken = Audio::read_wav(&wav).unwrap();
    assert!(spoken.samples.len() > 22_050, "the error was not spoken");
}

/// The loudness of speech in `audio`'s `spans`, in dBFS: the RMS over the sounding 10 ms
/// frames (within 40 dB of the loudest), so the pauses between words do not count.
fn speech_db(audio: &Audio, spans: &[codereader_e2e::Span]) -> f32 {
    let frames: Vec<f32> = spans
        .iter()
        .flat_map(|s| audio.slice(*s).envelope())
        .collect();
    let loudest = frames.iter().fold(0f32, |m, f| m.max(*f));
    let sounding: Vec<f32> = frames
        .into_iter()
        .filter(|f| *f >= loudest * 0.01)
        .collect();
    let power = sounding.iter().map(|f| f * f).sum::<f32>() / sounding.len().max(1) as f32;
    10.0 * power.log10()
}

/// Every shipped voice of every language (Danish espeak-ng, English flite slt from its
/// clips, English espeak-ng) speaks at one loudness: the codes, a prompt and the earcons all
/// within 1 dB, at the same volume step (they differed by 5 to 7 dB before).
#[test]
fn every_voice_and_language_speaks_at_one_loudness() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    let voices = packs_with_english_clips(dir.path());
    let wav = dir.path().join("code.wav");
    let at = T.to_string();
    let mut levels = Vec::new();
    for (lang, voice) in [("da", "espeak"), ("en", "flite-slt"), ("en", "espeak")] {
        for state in [dir.path().to_path_buf(), dir.path().join("no-token")] {
            let args = [
                "speak",
                "--wav",
                wav.to_str().unwrap(),
                "--at",
                &at,
                "--lang",
                lang,
                "--voice",
                voice,
                "--volume",
                "-2",
            ];
            let out = with_voices(&state, &voices, &args);
            assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
            let audio = Audio::read_wav(&wav).unwrap();
            let spans = audio.spans(audio.loudest_frame() * 0.01, 120);
            if state == dir.path() {
                // A code: earcon, speech, earcon.
                let n = spans.len();
                levels.push((
                    format!("{lang} {voice} code"),
                    speech_db(&audio, &spans[1..n - 1]),
                ));
                levels.push((
                    format!("{lang} {voice} earcon"),
                    speech_db(&audio, &spans[..1]),
                ));
            } else {
                assert_eq!(out.status.code(), Some(3));
                levels.push((
                    format!("{lang} {voice} no-token prompt"),
                    speech_db(&audio, &spans),
                ));
            }
        }
    }
    let (min, max) = levels
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), (_, db)| {
            (lo.min(*db), hi.max(*db))
        });
    println!("speech loudness (dBFS): {levels:?}");
    assert!(
        max - min <= 1.0,
        "loudness differs by {:.2} dB: {levels:?}",
        max - min
    );
}

/// A language nothing can speak (no clips, and espeak-ng has no such voice) is said so in a
/// language that can be spoken, followed by the code; the other languages are unaffected.
#[test]
fn a_language_nothing_can_speak_is_said_so_in_another_language() {
    let dir = tempfile::tempdir().unwrap();
    enroll_totp(dir.path());
    let voices = packs_without_clips(dir.path());
    fs::create_dir_all(voices.join("xx")).unwrap();
    let danish = fs::read_to_string(voices.join("da/voice.toml")).unwrap();
    fs::write(
        voices.join("xx/voice.toml"),
        danish
            .replace("tag = \"da\"", "tag = \"xx\"")
            .replace("espeak_voice = \"da\"", "espeak_voice = \"no-such-voice\"")
            .replace("voice = \"da\" }", "voice = \"no-such-voice\" }"),
    )
    .unwrap();
    let wav = dir.path().join("code.wav");
    let at = T.to_string();
    let speak = |lang: &str| {
        let args = [
            "speak",
            "--wav",
            wav.to_str().unwrap(),
            "--at",
            &at,
            "--lang",
            lang,
        ];
        let out = with_voices(dir.path(), &voices, &args);
        let audio = Audio::read_wav(&wav).unwrap();
        (out, audio)
    };
    let (out, plain) = speak("da");
    assert!(
        !stderr(&out).contains("cannot be spoken"),
        "{}",
        stderr(&out)
    );
    let (out, noticed) = speak("xx");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("language `xx` cannot be spoken") && err.contains("speaking `da` instead"),
        "{err}"
    );
    // The notice ("Det valgte sprog kan ikke udtales ...") comes before the whole code.
    let extra = (noticed.samples.len() as f64 - plain.samples.len() as f64) / 22_050.0;
    assert!(extra > 2.0, "the notice added {extra} s");
    let tail = Audio {
        rate: noticed.rate,
        samples: noticed.samples[noticed.samples.len() - plain.samples.len()..].to_vec(),
    };
    assert_eq!(code_segments(&tail).digits.len(), 6);
}

/// `settings` on a full disk (a 64 KiB tmpfs filled up, mounted in a private mount namespace
/// so nothing outlives the test): exit status 4, as for the token (a storage failure, not a
/// settings mistake), and the settings file as it was. Needs root (CI runs as root).
#[test]
fn settings_on_a_full_disk_exit_4_and_keep_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    fs::create_dir(&mount).unwrap();
    let script = r#"
        set -e
        mount -t tmpfs -o size=64k tmpfs "$1"
        export CODEREADER_STATE="$1/state"
        "$2" settings --volume -2 > /dev/null
        cp "$1/state/settings.toml" "$1/../before.toml"
        dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null || true
        set +e
        "$2" settings --volume -3 > /dev/null
        echo "exit $?"
        cmp "$1/state/settings.toml" "$1/../before.toml" && echo unchanged
    "#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&mount)
        .arg(codereader_bin())
        .env("CODEREADER_VOICES", voices_dir())
        .env_remove("CODEREADER_CONFIG")
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = stderr(&out);
    assert!(out.status.success(), "{said}{log}");
    assert!(said.contains("exit 4\n"), "{said}{log}");
    assert!(said.contains("unchanged"), "{said}{log}");
    assert!(log.contains("No space left on device"), "{log}");
}
