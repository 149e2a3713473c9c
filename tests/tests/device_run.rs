//! `codereader run` driven through a pseudo-terminal, with what it plays captured through
//! ALSA's `file` plugin (paced in real time, see `AlsaCapture`). Keys speak, replay, stop
//! mid-utterance, lower the volume and change the language; the captured audio must show
//! each effect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use codereader_e2e::{AlsaCapture, Audio, Pty, Span, codereader_bin, correlation, voices_dir};

const SECRET_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const T: u64 = 2_000_000_000;

fn run_ok(state: &Path, args: &[&str]) {
    let out = Command::new(codereader_bin())
        .args(args)
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first-to-last sound of a reference rendering, in seconds, and its envelope.
fn reference(path: &Path) -> (f64, Vec<f32>) {
    let audio = Audio::read_wav(path).unwrap();
    let loudest = audio.envelope().iter().fold(0.0f32, |m, r| m.max(*r));
    let spans = audio.spans(loudest * 0.01, 1000);
    assert_eq!(spans.len(), 1, "reference {}: {spans:?}", path.display());
    let whole = audio.slice(spans[0]);
    (spans[0].seconds(audio.rate), whole.envelope())
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.log10()
}

#[test]
fn keys_speak_replay_stop_change_volume_and_language() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    run_ok(&state, &["enroll", "--uri", &uri]);
    let at = T.to_string();
    let (ref_da, ref_en) = (dir.path().join("da.wav"), dir.path().join("en.wav"));
    for (lang, wav) in [("da", &ref_da), ("en", &ref_en)] {
        run_ok(
            &state,
            &[
                "speak",
                "--at",
                &at,
                "--lang",
                lang,
                "--wav",
                wav.to_str().unwrap(),
            ],
        );
    }
    let (len_da, env_da) = reference(&ref_da);
    let (len_en, env_en) = reference(&ref_en);

    let capture = AlsaCapture::start(dir.path()).unwrap();
    let pty = Pty::open().unwrap();
    let mut child = Command::new(codereader_bin())
        .args(["run", "--at", &at])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            lines
                .lock()
                .unwrap()
                .push(line.trim_end_matches('\r').to_owned());
        }
    });
    let logged = |needle: &str| log.lock().unwrap().iter().any(|l| l.contains(needle));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(logged("ready") && capture.started().is_some()) {
        assert!(
            Instant::now() < deadline,
            "run did not start: {:?}",
            log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let mut keys = pty.master.try_clone().unwrap();
    let mut press = |key: &str, wait: f64| {
        keys.write_all(key.as_bytes()).unwrap();
        thread::sleep(Duration::from_secs_f64(wait));
    };
    let quiet = 1.5; // silence after each utterance, longer than any pause inside one
    press("s", len_da + quiet); // 1: the code
    press("r", len_da * 1.4 + quiet); // 2: "again", the same code
    press("s", 1.0); // 3: the code, stopped after a second...
    press("x", quiet);
    press("-", 1.5 + quiet); // 4: "quieter"
    press("s", len_da + quiet); // 5: the code, 3 dB quieter
    press("l", 1.5 + quiet); // 6: "English"
    press("s", len_en + quiet); // 7: the code in English
    press("q", 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "run did not quit: {:?}",
            log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "run failed: {log:?}");
    for needle in [
        "speaking the code of time step",
        "repeating the last code",
        "stopped",
        "volume -3",
        "language en",
    ] {
        assert!(
            log.iter().any(|l| l.contains(needle)),
            "log lacks {needle:?}: {log:?}"
        );
    }

    let audio = capture.audio();
    let loudest = audio.envelope().iter().fold(0.0f32, |m, r| m.max(*r));
    let utterances: Vec<Span> = audio.spans(loudest * 0.01, 1000);
    let secs: Vec<f64> = utterances.iter().map(|s| s.seconds(audio.rate)).collect();
    assert_eq!(
        utterances.len(),
        7,
        "utterances (s): {secs:?}; log: {log:?}"
    );
    // 1: the whole code, as long as the reference rendering.
    assert!(
        (secs[0] - len_da).abs() < 0.15 * len_da,
        "code {} s, reference {len_da} s",
        secs[0]
    );
    let first = audio.slice(utterances[0]).envelope();
    assert!(
        correlation(&first, &env_da) > 0.8,
        "captured code does not match the rendering"
    );
    // 2: replay: "again" and the same digits, so at least as long.
    assert!(
        secs[1] >= secs[0] * 0.95 && secs[1] < secs[0] * 1.6,
        "replay {} s",
        secs[1]
    );
    // 3: stopped after about a second.
    assert!(
        secs[2] < 0.5 * secs[0] && secs[2] > 0.5,
        "stopped code lasted {} s",
        secs[2]
    );
    // 4: a short prompt.
    assert!(secs[3] < 2.0, "volume prompt {} s", secs[3]);
    // 5: the same code one step (3 dB) quieter.
    let change = db(audio.rms(utterances[4]) / audio.rms(utterances[0]));
    assert!(
        (change + 3.0).abs() < 1.0,
        "volume changed by {change:.2} dB"
    );
    assert!((secs[4] - secs[0]).abs() < 0.15 * secs[0]);
    // 7: English words: matches the English rendering, not the Danish one.
    assert!(
        (secs[6] - len_en).abs() < 0.15 * len_en,
        "English code {} s, reference {len_en} s",
        secs[6]
    );
    let last = audio.slice(utterances[6]).envelope();
    let (to_en, to_da) = (correlation(&last, &env_en), correlation(&last, &env_da));
    assert!(
        to_en > 0.8 && to_en > to_da + 0.1,
        "English code: r(en) = {to_en}, r(da) = {to_da}"
    );
    println!(
        "utterances (s): {secs:?}; volume step {change:.2} dB; r(en) {to_en:.2}, r(da) {to_da:.2}"
    );
}

/// Without a sound card `run` keeps going, says so in the log, and starts speaking once the
/// device appears (ALSA rereads its changed configuration on the next open).
#[test]
fn run_waits_for_a_missing_sound_card_and_uses_it_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    run_ok(&state, &["enroll", "--uri", &uri]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let working = std::fs::read_to_string(capture.dir.join("asound.conf")).unwrap();
    let conf = dir.path().join("switching.conf");
    std::fs::write(&conf, "pcm.!default { type hw; card 31 }\n").unwrap();
    let pty = Pty::open().unwrap();
    let mut child = Command::new(codereader_bin())
        .args(["run", "--at", &T.to_string()])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            lines
                .lock()
                .unwrap()
                .push(line.trim_end_matches('\r').to_owned());
        }
    });
    let wait_for = |needle: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("no audio device", 20);
    wait_for("ready", 20);
    let mut keys = pty.master.try_clone().unwrap();
    // A key without a sound card: the code is taken and logged, nothing crashes.
    keys.write_all(b"s").unwrap();
    wait_for("speaking the code", 10);
    assert!(
        child.try_wait().unwrap().is_none(),
        "run ended without a sound card"
    );
    // The sound card appears.
    std::fs::write(&conf, working).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.started().is_none() {
        assert!(
            Instant::now() < deadline,
            "the device was not opened: {:?}",
            log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
    wait_for("audio: ", 5);
    keys.write_all(b"s").unwrap();
    thread::sleep(Duration::from_secs(7));
    keys.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "run did not quit");
        thread::sleep(Duration::from_millis(20));
    }
    let audio = capture.audio();
    let loudest = audio.envelope().iter().fold(0.0f32, |m, r| m.max(*r));
    assert!(
        loudest > 0.01,
        "nothing was played after the device appeared"
    );
    let spans = audio.spans(loudest * 0.01, 1000);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert!(spans[0].seconds(audio.rate) > 3.0, "{spans:?}");
}

/// `speak` without `--wav` plays on the sound card what `--wav` would have written.
#[test]
fn speak_plays_the_rendered_code_on_the_sound_card() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    run_ok(&state, &["enroll", "--uri", &uri]);
    let at = T.to_string();
    let wav = dir.path().join("en.wav");
    run_ok(
        &state,
        &[
            "speak",
            "--at",
            &at,
            "--lang",
            "en",
            "--wav",
            wav.to_str().unwrap(),
        ],
    );
    let (length, envelope) = reference(&wav);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let out = Command::new(codereader_bin())
        .args(["speak", "--at", &at, "--lang", "en"])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `speak` returns once the device has taken the last sample; let the capture catch up.
    thread::sleep(Duration::from_millis(300));
    let audio = capture.audio();
    let loudest = audio.envelope().iter().fold(0.0f32, |m, r| m.max(*r));
    let spans = audio.spans(loudest * 0.01, 1000);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let played = spans[0].seconds(audio.rate);
    assert!(
        (played - length).abs() < 0.1 * length,
        "played {played} s, rendered {length} s"
    );
    let r = correlation(&audio.slice(spans[0]).envelope(), &envelope);
    assert!(
        r > 0.9,
        "played audio does not match the rendering (r = {r})"
    );
}

/// In `run` an HOTP code is prepared (its counter stored) before the key press, so the press
/// does not wait for the disk; each press still speaks a new counter, and a counter prepared
/// but never spoken is skipped, never reused.
#[test]
fn run_prepares_hotp_codes_and_never_reuses_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("otpauth://hotp/Bank:bob?secret={SECRET_B32}&counter=0");
    run_ok(&state, &["enroll", "--uri", &uri]);
    let conf = dir.path().join("none.conf");
    std::fs::write(&conf, "pcm.!default { type hw; card 31 }\n").unwrap();
    let pty = Pty::open().unwrap();
    let mut child = Command::new(codereader_bin())
        .arg("run")
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            lines
                .lock()
                .unwrap()
                .push(line.trim_end_matches('\r').to_owned());
        }
    });
    let count = |needle: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };
    let wait_for = |needle: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("ready", 1);
    wait_for("HOTP counter 0 is ready", 1);
    let mut keys = pty.master.try_clone().unwrap();
    keys.write_all(b"s").unwrap();
    wait_for("speaking the code of HOTP counter 0", 1);
    wait_for("HOTP counter 1 is ready", 1);
    // Another process takes a counter meanwhile: the prepared one must not be spoken.
    let out = Command::new(codereader_bin())
        .arg("code")
        .env("CODEREADER_STATE", &state)
        .output()
        .unwrap();
    assert!(out.status.success());
    keys.write_all(b"s").unwrap();
    wait_for("the token changed since the code was prepared", 1);
    wait_for("speaking the code of HOTP counter 3", 1);
    wait_for("HOTP counter 4 is ready", 1);
    // Volume up from the default (-2) three times: -1, 0, then the end of the range, where
    // no "louder" is said (only a tone) and nothing changes.
    keys.write_all(b"+++").unwrap();
    wait_for("volume 0 (at the end of the range)", 1);
    assert_eq!(count("volume -1"), 1);
    keys.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "run did not quit");
        thread::sleep(Duration::from_millis(20));
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(
        count_in(&log, "speaking the code of HOTP counter 1"),
        0,
        "{log:?}"
    );
    let out = Command::new(codereader_bin())
        .arg("status")
        .env("CODEREADER_STATE", &state)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("next counter: 5"), "{status}");
    let settings = std::fs::read_to_string(state.join("settings.toml")).unwrap();
    assert!(settings.contains("volume = 0"), "{settings}");
    // The missing sound card is logged once, not at every retry or key press.
    assert_eq!(count_in(&log, "no audio device"), 1, "{log:?}");
}

fn count_in(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

/// Configured evdev and GPIO inputs that are not there (keypad unplugged, no such chip) are
/// reported and retried; the terminal keeps working, and status is spoken.
#[test]
fn missing_evdev_and_gpio_inputs_are_reported_and_the_terminal_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank");
    run_ok(&state, &["enroll", "--uri", &uri, "--serial", "0012-3456"]);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[input]\nevdev = [\"/nonexistent/event-kbd\"]\n\n[[gpio]]\nchip = \"/nonexistent/gpiochip9\"\nline = 17\naction = \"speak\"\n\n[[evdev_chord]]\nhold = \"KEY_F1\"\nkey = \"KEY_1\"\naction = \"status\"\n",
    )
    .unwrap();
    let conf = dir.path().join("none.conf");
    std::fs::write(&conf, "pcm.!default { type hw; card 31 }\n").unwrap();
    let pty = Pty::open().unwrap();
    let mut child = Command::new(codereader_bin())
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--at",
            &T.to_string(),
        ])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            lines
                .lock()
                .unwrap()
                .push(line.trim_end_matches('\r').to_owned());
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("ready");
    wait_for("input device /nonexistent/event-kbd");
    wait_for("GPIO /nonexistent/gpiochip9 line 17");
    let mut keys = pty.master.try_clone().unwrap();
    keys.write_all(b"i").unwrap();
    wait_for("status: serial …3456, 0 problem(s)");
    keys.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "run did not quit");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{:?}", log.lock().unwrap());
}
