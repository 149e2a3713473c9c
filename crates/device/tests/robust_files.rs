//! The device's files under damage: the token state file, `settings.toml` and the config
//! file, fed arbitrary bytes and mutations of valid files. Each load gives a value or a typed
//! error that never shows the secret, and a failed load (or a refused change) leaves the file
//! on disk byte for byte as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use codereader::config::{Config, ConfigError, Effective, SETTINGS_FILE, UserSettings};
use codereader::token_file::{StateDir, StateError, TakeError, Token};
use codereader_otp::{KeyUri, TimeStep, UnixTime};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const HOTP: &str = "otpauth://hotp/Bank:bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=7";
const TOTP: &str = "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank";
const CHECKSUM_KEY: &str = "checksum = \"sha256:";
/// Long after the build: clock checks pass.
const NOW: UnixTime = UnixTime(1_900_000_000);
const FLOOR: UnixTime = UnixTime(1_700_000_000);

/// A state directory holding the file a normal enrolment of `uri` writes, and its bytes.
/// The file is made once per URI (enrolling fsyncs) and copied into each case's directory.
fn enrolled(uri: &str) -> (tempfile::TempDir, StateDir, Vec<u8>) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    static FILES: std::sync::Mutex<Vec<(String, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
    let bytes = {
        let mut files = FILES.lock().unwrap();
        if let Some((_, bytes)) = files.iter().find(|(u, _)| u == uri) {
            bytes.clone()
        } else {
            let dir = tempfile::tempdir().unwrap();
            let state = StateDir::new(dir.path().join("state"));
            let parsed: KeyUri = uri.parse().unwrap();
            state
                .enroll(&Token::from_uri(&parsed, Some("SN-1".into())), false)
                .unwrap();
            let bytes = fs::read(state.token_path()).unwrap();
            files.push((uri.to_owned(), bytes.clone()));
            bytes
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
    let state = StateDir::new(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(state.token_path())
        .unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    assert!(state.load().is_ok(), "the copied token file does not load");
    (dir, state, bytes)
}

/// Replaces the token file's content in place (its mode stays 0600).
fn damage(state: &StateDir, bytes: &[u8]) {
    fs::write(state.token_path(), bytes).unwrap();
}

/// The file with its body edited by `edit` and the checksum made to match again: only the
/// field checks behind the checksum can catch these.
fn rechecksummed(valid: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let text = std::str::from_utf8(valid).unwrap();
    let body = &text[..text.rfind(CHECKSUM_KEY).unwrap()];
    let body = edit(body);
    let sum: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{body}{CHECKSUM_KEY}{sum}\"\n").into_bytes()
}

/// `body` with the line of `key` replaced by `line` (or `line` added if `key` has none).
fn set_line(body: &str, key: &str, line: &str) -> String {
    let prefix = format!("{key} = ");
    let mut found = false;
    let mut out: Vec<String> = body
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        out.push(line.to_owned());
    }
    out.join("\n") + "\n"
}

/// Loading and every state-changing call on a damaged file fail with a state error, never
/// show the secret, and leave the file exactly as it was.
fn check_refused_untouched(state: &StateDir, bytes: &[u8]) -> Result<StateError, TestCaseError> {
    let err = match state.load() {
        Ok(_) => return Err(TestCaseError::fail("a damaged token file loaded")),
        Err(e) => e,
    };
    let shown = format!("{err} {err:?}");
    prop_assert!(!shown.contains(SECRET), "secret in {}", shown);
    prop_assert!(
        !shown.to_ascii_uppercase().contains(&SECRET[..16]),
        "part of the secret in {}",
        shown
    );
    let take = state.take_code(NOW, FLOOR);
    prop_assert!(
        matches!(take, Err(TakeError::State(_))),
        "{:?}",
        take.map(|t| t.basis)
    );
    prop_assert!(state.record_step(TimeStep(99_999_999)).is_err());
    prop_assert!(state.accept_clock().is_err());
    prop_assert!(state.reserve().is_err());
    let now = fs::read(state.token_path()).unwrap();
    prop_assert!(now == bytes, "the damaged file was changed");
    Ok(err)
}

/// A field edit behind a valid checksum, with whether it must be refused.
fn field_edit() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        (0u32..100)
            .prop_filter("not 6..=8", |d| !(6..=8).contains(d))
            .prop_map(|d| ("digits", format!("digits = {d}"))),
        "[a-z]{0,6}"
            .prop_filter("not a kind", |k| k != "totp" && k != "hotp")
            .prop_map(|k| ("kind", format!("kind = \"{k}\""))),
        "[A-Za-z0-9-]{0,8}"
            .prop_filter("not an algorithm", |a| {
                let name: String = a
                    .to_ascii_uppercase()
                    .chars()
                    .filter(|c| *c != '-')
                    .collect();
                !["SHA1", "SHA256", "SHA512"].contains(&name.as_str())
            })
            .prop_map(|a| ("algorithm", format!("algorithm = \"{a}\""))),
        "[A-Z2-7]{0,8}[018!]".prop_map(|s| ("secret", format!("secret = \"{s}\""))),
        Just(("secret", "secret = \"\"".to_owned())),
        Just(("account", "account = \"\"".to_owned())),
        // 21 digits or more, past u64::MAX (a 20-digit number may still fit).
        "[1-9][0-9]{20,39}".prop_map(|n| ("next_counter", format!("next_counter = {n}"))),
        (i64::MIN..0).prop_map(|n| ("next_counter", format!("next_counter = {n}"))),
        Just(("digits", "digits = \"6\"".to_owned())),
        Just(("next_counter", "next_counter = \"7\"".to_owned())),
        Just(("secret", "secret = 12345".to_owned())),
        Just(("kind", "kind = [\"hotp\"]".to_owned())),
        "[a-z_]{1,10}"
            .prop_filter("unknown key", |k| ![
                "format",
                "kind",
                "issuer",
                "account",
                "serial",
                "algorithm",
                "digits",
                "period",
                "t0",
                "last_step",
                "next_counter",
                "secret",
            ]
            .contains(&k.as_str()))
            .prop_map(|k| ("unknown", format!("{k} = 1"))),
        Just(("duplicate", "digits = 6\ndigits = 6".to_owned())),
        Just(("format", "format = 0".to_owned())),
        Just(("format", "format = -1".to_owned())),
        Just(("format", "format = \"1\"".to_owned())),
        (2u32..1000).prop_map(|n| ("future", format!("format = {n}"))),
        Just(("period", "period = 0".to_owned())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary bytes in place of the token file.
    #[test]
    fn state_file_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (_dir, state, _) = enrolled(HOTP);
        damage(&state, &bytes);
        let err = check_refused_untouched(&state, &bytes)?;
        prop_assert!(matches!(err, StateError::Corrupt { .. } | StateError::FutureVersion { .. }), "{}", err);
    }

    /// One byte changed, a cut, or bytes inserted, in a valid file of either kind.
    #[test]
    fn state_file_damaged(
        totp in any::<bool>(),
        at in any::<prop::sample::Index>(),
        how in 0u8..3,
        byte in 1u8..=255,
        insert in prop::collection::vec(any::<u8>(), 1..20),
    ) {
        let (_dir, state, valid) = enrolled(if totp { TOTP } else { HOTP });
        let mut bytes = valid.clone();
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] ^= byte,
            1 => bytes.truncate(i),
            _ => {
                bytes.splice(i..i, insert);
            }
        }
        damage(&state, &bytes);
        let err = check_refused_untouched(&state, &bytes)?;
        prop_assert!(matches!(err, StateError::Corrupt { .. } | StateError::FutureVersion { .. }), "{}", err);
    }

    /// Edits that keep the checksum right but break a field: the field checks refuse them
    /// (a newer format number as "written by a newer codereader").
    #[test]
    fn state_file_with_a_bad_field_behind_a_good_checksum(totp in any::<bool>(), (field, line) in field_edit()) {
        let (_dir, state, valid) = enrolled(if totp { TOTP } else { HOTP });
        // An HOTP file ignores a `period` line (it cannot come from the writer anyway).
        prop_assume!(totp || field != "period");
        let key = match field {
            // Added as a new line.
            "unknown" | "duplicate" => "\u{0}",
            "future" => "format",
            other => other,
        };
        let bytes = rechecksummed(&valid, |body| set_line(body, key, &line));
        damage(&state, &bytes);
        let err = check_refused_untouched(&state, &bytes)?;
        if field == "future" {
            prop_assert!(matches!(err, StateError::FutureVersion { .. }), "{}", err);
        } else {
            prop_assert!(matches!(err, StateError::Corrupt { .. }), "{}: {}", line, err);
        }
    }
}

/// Settings as `codereader settings` writes them.
fn saved_settings(dir: &Path) -> Vec<u8> {
    let text = include_str!("data/settings-format-1.toml");
    fs::write(dir.join(SETTINGS_FILE), text).unwrap();
    let mut user = UserSettings::load(dir).unwrap();
    user.voice.insert("en".into(), "espeak".into());
    user.save(dir).unwrap();
    fs::read(dir.join(SETTINGS_FILE)).unwrap()
}

/// Loads `settings.toml` (and applies it over the defaults when it loads): a value or a
/// typed error, and the file unchanged either way.
fn check_settings(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    match UserSettings::load(dir) {
        Ok(user) => {
            if let Err(e) = Effective::new(&Config::defaults(), &user, dir) {
                prop_assert!(matches!(e, ConfigError::Value { .. }), "{}", e);
            }
        }
        Err(e) => {
            prop_assert!(
                matches!(
                    e,
                    ConfigError::Syntax { .. }
                        | ConfigError::FutureVersion { .. }
                        | ConfigError::Io { .. }
                ),
                "{}",
                e
            );
            prop_assert!(e.to_string().contains(SETTINGS_FILE), "{}", e);
        }
    }
    prop_assert!(
        fs::read(dir.join(SETTINGS_FILE)).unwrap() == bytes,
        "settings changed by loading"
    );
    Ok(())
}

/// The config file, loaded: a config or a typed error naming the file; never changed.
fn check_config(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = Config::load(path) {
        prop_assert!(
            matches!(
                e,
                ConfigError::Syntax { .. } | ConfigError::Value { .. } | ConfigError::Io { .. }
            ),
            "{}",
            e
        );
        prop_assert!(e.to_string().contains("config.toml"), "{}", e);
    }
    prop_assert!(
        fs::read(path).unwrap() == bytes,
        "config changed by loading"
    );
    Ok(())
}

const CONFIG: &str = include_str!("../config.example.toml");

/// Damage to a text file: a changed byte, a cut, a duplicated line or a line dropped.
fn damaged(valid: &[u8], at: prop::sample::Index, how: u8, byte: u8) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    let i = at.index(bytes.len());
    match how {
        0 => bytes[i] ^= byte.max(1),
        1 => bytes.truncate(i),
        _ => {
            let lines: Vec<&[u8]> = valid.split(|b| *b == b'\n').collect();
            let n = at.index(lines.len());
            let mut out: Vec<&[u8]> = lines.clone();
            if how == 2 {
                out.insert(n, lines[n]);
            } else {
                out.remove(n);
            }
            bytes = out.join(&b'\n');
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary bytes as `settings.toml`.
    #[test]
    fn settings_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SETTINGS_FILE), &bytes).unwrap();
        check_settings(dir.path(), &bytes)?;
    }

    /// A saved `settings.toml` with a byte changed, cut, or a line doubled or dropped.
    #[test]
    fn settings_damaged(at in any::<prop::sample::Index>(), how in 0u8..4, byte in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        let valid = saved_settings(dir.path());
        let bytes = damaged(&valid, at, how, byte);
        fs::write(dir.path().join(SETTINGS_FILE), &bytes).unwrap();
        check_settings(dir.path(), &bytes)?;
    }

    /// Arbitrary bytes as the config file.
    #[test]
    fn config_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, &bytes).unwrap();
        check_config(&path, &bytes)?;
    }

    /// The example config with a byte changed, cut, or a line doubled or dropped.
    #[test]
    fn config_damaged(at in any::<prop::sample::Index>(), how in 0u8..4, byte in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let bytes = damaged(CONFIG.as_bytes(), at, how, byte);
        fs::write(&path, &bytes).unwrap();
        check_config(&path, &bytes)?;
    }
}

/// A save that cannot complete (the temporary file's name is taken by a directory) is an
/// error, and the settings saved before still load unchanged. (The name is this thread's,
/// as `codereader-atomicfile` chooses it.)
#[test]
fn a_failed_settings_save_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let valid = saved_settings(dir.path());
    let before = UserSettings::load(dir.path()).unwrap();
    fs::create_dir(codereader_atomicfile::temp_path(
        &dir.path().join(SETTINGS_FILE),
    ))
    .unwrap();
    let changed = UserSettings {
        volume: Some(-1),
        ..before.clone()
    };
    let err = changed.save(dir.path()).unwrap_err();
    assert!(
        matches!(err, ConfigError::Save(StateError::Io { .. })),
        "{err}"
    );
    assert_eq!(fs::read(dir.path().join(SETTINGS_FILE)).unwrap(), valid);
    assert_eq!(UserSettings::load(dir.path()).unwrap(), before);
}

/// `codereader settings` with random changes, many of them refused (out-of-range steps, a
/// key bound to two actions, unknown actions or keys): a refused change writes nothing and
/// the old settings still load; an accepted one leaves settings that load and apply.
#[test]
fn refused_settings_changes_write_nothing() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let voices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
    let bind = prop_oneof![
        Just("speak=r".to_owned()),
        Just("replay=space".to_owned()),
        Just("speak=k".to_owned()),
        Just("status=j,u".to_owned()),
        Just("nonsense=k".to_owned()),
        Just("speak=notakey".to_owned()),
        Just("speak".to_owned()),
        "[a-z_]{1,8}=[a-z]{1,3}",
    ];
    let strategy = (
        prop::option::of(-12i8..4),
        prop::option::of(-5i8..6),
        prop::collection::vec(bind, 0..2),
    );
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 40,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let (refused, accepted) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&strategy, |(volume, rate, binds)| {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            fs::create_dir(&state).unwrap();
            let valid = saved_settings(&state);
            let before = UserSettings::load(&state).unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_codereader"));
            command
                .env_clear()
                .env("HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .arg("--state")
                .arg(&state)
                .arg("--voices")
                .arg(&voices)
                .arg("settings");
            if let Some(v) = volume {
                command.arg(format!("--volume={v}"));
            }
            if let Some(r) = rate {
                command.arg(format!("--rate={r}"));
            }
            for b in &binds {
                command.arg(format!("--bind={b}"));
            }
            let out = command.output().unwrap();
            let now = fs::read(state.join(SETTINGS_FILE)).unwrap();
            let loaded = UserSettings::load(&state);
            prop_assert!(
                loaded.is_ok(),
                "settings no longer load: {:?}",
                loaded.err()
            );
            if out.status.success() {
                accepted.set(accepted.get() + 1);
                let user = loaded.unwrap();
                prop_assert!(Effective::new(&Config::defaults(), &user, &state).is_ok());
                if let Some(v) = volume {
                    prop_assert_eq!(user.volume, Some(i64::from(v)));
                }
            } else {
                refused.set(refused.get() + 1);
                prop_assert!(now == valid, "a refused change rewrote the settings");
                prop_assert_eq!(loaded.unwrap(), before);
                let stderr = String::from_utf8_lossy(&out.stderr);
                prop_assert!(!stderr.trim().is_empty(), "refused without a message");
                prop_assert!(!stderr.contains("panicked"), "{}", stderr);
            }
            Ok(())
        })
        .unwrap();
    let (refused, accepted) = (refused.get(), accepted.get());
    assert!(
        // About 40 % are accepted: both branches are exercised whatever the seed.
        refused >= 3 && accepted >= 3,
        "{refused} refused, {accepted} accepted"
    );
}
