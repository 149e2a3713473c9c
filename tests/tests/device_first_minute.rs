//! What a user alone meets around the code (issue 22): a config or settings mistake does not
//! silence the device (it starts on the defaults for what is wrong and says so once), a
//! device without a token says that a helper can set one up (and the log and `status` give
//! the command), the language follows the system's locale, and a code asked for with little
//! time left is replaced by the next one after "this code is about to change". Each through
//! the real binary: WAV files, and `run` on a pseudo-terminal with its sound captured through
//! ALSA's `file` plugin, compared with reference renderings of the same words; the English
//! codes said after a notice are also transcribed by the speech crate's offline recognizer
//! (PocketSphinx, `crates/speech/tools/recognize_digits.py`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use codereader_e2e::{
    AlsaCapture, Audio, Pty, Span, asr_python, codereader_bin, correlation,
    packs_with_english_clips, voices_dir,
};

const URI: &str = "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Bank";
/// 2033-05-18 03:33:20 UTC: 10 s before the end of time step 66666666.
const T: u64 = 2_000_000_000;

/// `codereader ARGS` with the state in `dir/state` and the config `dir/config.toml` (which
/// need not exist), in no particular locale.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(codereader_bin());
    command
        .args(args)
        .env("CODEREADER_STATE", dir.join("state"))
        .env("CODEREADER_VOICES", voices_dir())
        .env("CODEREADER_CONFIG", dir.join("config.toml"))
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env_remove("LANG");
    command
}

fn codereader(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary directory with a TOTP token enrolled and `config` as its config file.
fn setup(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.toml"), config).unwrap();
    ok(&codereader(dir.path(), &["enroll", "--uri", URI]));
    dir
}

/// `speak --wav` at `at` with `extra` arguments; the WAV and standard error.
fn speak(dir: &Path, name: &str, at: u64, extra: &[&str]) -> (Audio, String) {
    let wav = dir.join(format!("{name}.wav"));
    let at = at.to_string();
    let mut args = vec!["speak", "--wav", wav.to_str().unwrap(), "--at", &at];
    args.extend_from_slice(extra);
    let out = codereader(dir, &args);
    ok(&out);
    (Audio::read_wav(&wav).unwrap(), stderr(&out))
}

/// The stretch from the first sound to the last.
fn sounding(audio: &Audio) -> Span {
    let spans = audio.spans(audio.loudest_frame() * 0.01, 120);
    Span {
        start: spans.first().unwrap().start,
        end: spans.last().unwrap().end,
    }
}

/// The envelope of the last `frames` 10-ms frames of the sound in `audio`.
fn tail(audio: &Audio, frames: usize) -> Vec<f32> {
    let env = audio.slice(sounding(audio)).envelope();
    env[env.len().saturating_sub(frames)..].to_vec()
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.log10()
}

/// Where in `spoken` (seconds from its start) `code`, a whole utterance that `spoken` ends
/// with, begins. Not to the sample: the resampler carries its state from the words before
/// into the code's, so the samples (and their count, by a few) differ slightly.
fn code_starts(spoken: &Audio, code: &Audio) -> f64 {
    assert_eq!(spoken.rate, code.rate);
    assert!(spoken.samples.len() >= code.samples.len());
    let tail = Audio {
        rate: spoken.rate,
        samples: spoken.samples[spoken.samples.len() - code.samples.len()..].to_vec(),
    };
    let r = correlation(&tail.envelope(), &code.envelope());
    assert!(
        r > 0.95,
        "the utterance does not end with the code: r = {r:.3}"
    );
    (spoken.samples.len() - code.samples.len()) as f64 / f64::from(spoken.rate)
}

/// The longest silence between two sounds in `audio`, in seconds.
fn longest_gap(audio: &Audio) -> f64 {
    audio
        .spans(audio.loudest_frame() * 0.01, 120)
        .windows(2)
        .map(|w| (w[1].start - w[0].end) as f64 / f64::from(audio.rate))
        .fold(0.0, f64::max)
}

/// Polls `done` every 20 ms; fails with `why()` after `secs` seconds.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        thread::sleep(Duration::from_millis(20));
    }
}

/// The stretches of sound in `audio` that a second of silence separates.
fn utterances(audio: &Audio) -> Vec<Span> {
    audio.spans(audio.loudest_frame() * 0.01, 1000)
}

/// Waits until `capture` holds `n` utterances followed by a second of silence.
fn wait_for_utterances(capture: &AlsaCapture, n: usize, secs: u64) -> Audio {
    let mut audio = capture.audio();
    wait_until(
        secs,
        || {
            audio = capture.audio();
            let spans = utterances(&audio);
            spans.len() >= n
                && spans
                    .last()
                    .is_some_and(|s| audio.samples.len() - s.end > audio.rate as usize * 6 / 5)
        },
        || {
            format!(
                "{n} utterances expected: {:?}",
                utterances(&capture.audio())
            )
        },
    );
    audio
}

/// `codereader run` on a pseudo-terminal, its sound captured and its log collected.
struct Running {
    child: Child,
    keys: fs::File,
    log: Arc<Mutex<Vec<String>>>,
    _pty: Pty,
}

impl Running {
    fn start(mut command: Command, capture: &AlsaCapture) -> Running {
        let pty = Pty::open().unwrap();
        let mut child = command
            .env("ALSA_CONFIG_PATH", &capture.config_path)
            .stdin(pty.slave.try_clone().unwrap())
            .stdout(pty.slave.try_clone().unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                lines
                    .lock()
                    .unwrap()
                    .push(line.trim_end_matches('\r').to_owned());
            }
        });
        let run = Running {
            child,
            keys: pty.master.try_clone().unwrap(),
            log,
            _pty: pty,
        };
        run.wait_for("ready (language", 20);
        run
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    fn wait_for(&self, needle: &str, secs: u64) {
        wait_until(
            secs,
            || self.count(needle) > 0,
            || format!("no {needle:?} in {:?}", self.log()),
        );
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }

    fn quit(&mut self) -> ExitStatus {
        self.press("q");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "run did not quit: {:?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A config with a mistake of every kind: a value out of range, a misspelt key, the wrong
/// type, an unknown output, a bad key inside a table; and a settings file with a rate out of
/// range. Everything else in them is right and kept (English, the terminal's keys).
const MISTAKES: &str = "volume = 5\nvolme = -3\nsay_ready = \"yes\"\n\
                        outputs = [\"speech\", \"smell\"]\nlanguage = \"en\"\n\
                        [input]\nterminal = \"no\"\n";

fn with_mistakes() -> tempfile::TempDir {
    let dir = setup(MISTAKES);
    fs::write(
        dir.path().join("state/settings.toml"),
        "format = 2\nrate = 9\n",
    )
    .unwrap();
    dir
}

/// The log names each key set aside and how to fix it.
fn assert_mistakes_logged(log: &str) {
    for part in [
        "key `volume`: 5 is out of range; use -8 to 0; set aside",
        "key `volme`: unknown field `volme`, expected one of",
        "key `say_ready`: invalid type: string \"yes\", expected a boolean",
        "key `outputs`: unknown output `smell`; use speech, speechd, braille or large",
        "key `input.terminal`: invalid type: string \"no\", expected a boolean",
        "settings.toml: key `rate`: 9 is out of range; use -3 to 3",
        "saying `settings_mistake`",
    ] {
        assert!(log.contains(part), "{part:?} not in the log:\n{log}");
    }
}

#[test]
fn speak_with_settings_mistakes_falls_back_warns_and_gives_the_code() {
    let good = setup("language = \"en\"\n");
    let (reference, _) = speak(good.path(), "reference", T, &[]);
    let dir = with_mistakes();
    let (spoken, log) = speak(dir.path(), "mistakes", T, &[]);
    assert_mistakes_logged(&log);
    let code = reference.slice(sounding(&reference));
    let whole = spoken.slice(sounding(&spoken));
    let (code_s, whole_s) = (
        code.samples.len() as f64 / f64::from(code.rate),
        whole.samples.len() as f64 / f64::from(whole.rate),
    );
    // "The settings have a mistake, ... A helper can fix it." and then the code, whole, at
    // the default volume and rate (the bad ones were set aside).
    assert!(
        whole_s > code_s + 3.0,
        "{whole_s:.2} s spoken, the code alone {code_s:.2} s: no notice"
    );
    let r = correlation(&tail(&spoken, code.envelope().len()), &code.envelope());
    assert!(
        r > 0.9,
        "the code after the notice is not the code: r = {r:.3}"
    );
    let tail_audio = spoken.slice(Span {
        start: sounding(&spoken).end - code.samples.len(),
        end: sounding(&spoken).end,
    });
    let level = db(tail_audio.rms(sounding(&tail_audio)) / code.rms(sounding(&code)));
    assert!(
        level.abs() < 0.5,
        "the code is {level:.2} dB off the default volume"
    );
    // `settings`, the helper's command, still refuses the file and names the key.
    let out = codereader(dir.path(), &["settings"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    println!("notice and code {whole_s:.2} s, code {code_s:.2} s, r = {r:.3}");
}

#[test]
fn run_with_settings_mistakes_starts_says_so_once_and_gives_codes() {
    let good = setup("language = \"en\"\n");
    let (reference, _) = speak(good.path(), "reference", T, &[]);
    let dir = with_mistakes();
    let (notice_wav, _) = speak(dir.path(), "notice", T, &[]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let at = T.to_string();
    let mut run = Running::start(command(dir.path(), &["run", "--at", &at]), &capture);
    let greeting = wait_for_utterances(&capture, 1, 20);
    run.press("s");
    run.wait_for("speaking the code of time step", 5);
    let audio = wait_for_utterances(&capture, 2, 20);
    let status = run.quit();
    let log = run.log().join("\n");
    assert!(status.success(), "{log}");
    assert_mistakes_logged(&log);
    assert_eq!(run.count("saying `settings_mistake`"), 1, "{log}");

    // The greeting: the start tone, then the notice, as `speak` says it before a code.
    let first = utterances(&greeting)[0];
    let parts = greeting
        .slice(first)
        .spans(greeting.loudest_frame() * 0.01, 120);
    assert!(parts.len() >= 2, "tone and notice expected: {parts:?}");
    let notice = greeting.slice(first).slice(Span {
        start: parts[1].start,
        end: parts.last().unwrap().end,
    });
    let notice_env = notice.envelope();
    let head = notice_wav.slice(sounding(&notice_wav)).envelope();
    let r_notice = correlation(&notice_env, &head[..notice_env.len().min(head.len())]);
    assert!(
        notice_env.len() > 300 && r_notice > 0.8,
        "greeting {} frames, r(notice) = {r_notice:.3}",
        notice_env.len()
    );
    // The key: the code, as the reference says it, at the default volume.
    let code = utterances(&audio)[1];
    let code_ref = reference.slice(sounding(&reference));
    let r_code = correlation(&audio.slice(code).envelope(), &code_ref.envelope());
    assert!(r_code > 0.8, "r(code) = {r_code:.3}");
    let level = db(audio.rms(code) / code_ref.rms(sounding(&code_ref)));
    assert!(
        level.abs() < 1.0,
        "the code is {level:.2} dB off the default"
    );
    println!("r(notice) = {r_notice:.3}, r(code) = {r_code:.3}, level {level:.2} dB");
}

#[test]
fn without_a_token_the_device_says_a_helper_can_set_one_up_and_shows_how() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.toml"), "language = \"en\"\n").unwrap();
    let state = dir.path().join("state");
    let command_line = format!("codereader --state {} enroll --uri -", state.display());
    // `status`: no token (exit 3), and the commands that enrol one.
    let out = codereader(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for part in [
        "token: none",
        &command_line,
        "zbarimg -q --raw QR.png |",
        "enroll --pskc FILE --serial SERIAL",
    ] {
        assert!(shown.contains(part), "{part:?} not in:\n{shown}");
    }
    // `run`: said at start and at the key; the log has the command.
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = Running::start(command(dir.path(), &["run"]), &capture);
    let greeting = wait_for_utterances(&capture, 1, 20);
    run.press("s");
    let audio = wait_for_utterances(&capture, 2, 20);
    let status = run.quit();
    let log = run.log().join("\n");
    assert!(status.success(), "{log}");
    assert!(log.contains(&command_line), "{log}");
    assert_eq!(run.count("saying `no_token_set_up`"), 2, "{log}");
    // The greeting is the tone and the sentence; the key says the same sentence.
    let first = utterances(&greeting)[0];
    let parts = greeting
        .slice(first)
        .spans(greeting.loudest_frame() * 0.01, 120);
    let sentence = greeting.slice(first).slice(Span {
        start: parts[1].start,
        end: parts.last().unwrap().end,
    });
    let key = audio.slice(utterances(&audio)[1]);
    let seconds = key.samples.len() as f64 / f64::from(key.rate);
    let r = correlation(&key.envelope(), &sentence.envelope());
    assert!(seconds > 2.5 && r > 0.8, "key: {seconds:.2} s, r = {r:.3}");
    // Once enrolled, `run` starts without it.
    ok(&codereader(dir.path(), &["enroll", "--uri", URI]));
    let out = command(dir.path(), &["status"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("token: none"));
}

/// The language the device starts in, per locale (`settings` shows it).
fn language_with(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut command = command(dir, &["settings"]);
    for (key, value) in env {
        command.env(key, value);
    }
    let shown = ok(&command.output().unwrap());
    shown
        .lines()
        .find_map(|l| l.strip_prefix("language = "))
        .unwrap()
        .to_owned()
}

#[test]
fn the_language_follows_the_locale_and_is_danish_without_one() {
    let dir = setup("");
    assert_eq!(language_with(dir.path(), &[]), "da");
    assert_eq!(language_with(dir.path(), &[("LANG", "C.UTF-8")]), "da");
    assert_eq!(language_with(dir.path(), &[("LANG", "da_DK.UTF-8")]), "da");
    assert_eq!(language_with(dir.path(), &[("LANG", "en_GB.UTF-8")]), "en");
    assert_eq!(
        language_with(
            dir.path(),
            &[("LANG", "da_DK.UTF-8"), ("LC_MESSAGES", "en_US.UTF-8")]
        ),
        "en"
    );
    assert_eq!(
        language_with(
            dir.path(),
            &[("LC_ALL", "da_DK.UTF-8"), ("LANG", "en_US.UTF-8")]
        ),
        "da"
    );
    // Spoken: English from the locale is the English code; a locale without a pack (German)
    // speaks Danish, and says so only in the log (not a mistake of the settings).
    let (en, _) = speak(dir.path(), "en", T, &["--lang", "en"]);
    let (da, _) = speak(dir.path(), "da", T, &["--lang", "da"]);
    for (locale, expected, other) in [("en_GB.UTF-8", &en, &da), ("de_DE.UTF-8", &da, &en)] {
        let wav = dir.path().join("locale.wav");
        let out = command(
            dir.path(),
            &[
                "speak",
                "--at",
                &T.to_string(),
                "--wav",
                wav.to_str().unwrap(),
            ],
        )
        .env("LANG", locale)
        .output()
        .unwrap();
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        assert!(!log.contains("settings_mistake"), "{log}");
        let spoken = Audio::read_wav(&wav).unwrap();
        let env = spoken.slice(sounding(&spoken)).envelope();
        let same = correlation(&env, &expected.slice(sounding(expected)).envelope());
        let different = correlation(&env, &other.slice(sounding(other)).envelope());
        assert!(
            same > 0.95 && same > different,
            "{locale}: {same:.3} vs {different:.3}"
        );
        if locale.starts_with("de") {
            assert!(
                log.contains("the locale's language `de` has no voice pack"),
                "{log}"
            );
        }
    }
}

/// The code of the token at `at` (`code --at`).
fn code_at(dir: &Path, at: u64) -> String {
    ok(&codereader(dir, &["code", "--at", &at.to_string()]))
        .trim()
        .to_owned()
}

#[test]
fn a_code_with_little_time_left_is_replaced_by_the_next_after_a_notice() {
    let dir = setup("language = \"en\"\n[code]\nwait_for_next_below = 0\n");
    assert_ne!(code_at(dir.path(), T + 7), code_at(dir.path(), T + 10));
    // The code of the step with little time left, as it would be said without waiting.
    let (current, _) = speak(dir.path(), "current", T + 7, &[]);
    let current_code = current.slice(sounding(&current));
    fs::write(dir.path().join("config.toml"), "language = \"en\"\n").unwrap();
    // The next step's code, said with its whole step ahead: the reference.
    let (next, _) = speak(dir.path(), "next", T + 10, &[]);
    let next_code = next.slice(sounding(&next));
    let next_s = next_code.samples.len() as f64 / f64::from(next.rate);
    // 10 s left (the threshold): the code itself. 9 s and 3 s: the notice, the silence
    // until the step ends, and the next code. The notice (about 4 s) is longer than 3 s: then
    // the code follows it.
    let (at_threshold, log) = speak(dir.path(), "ten", T, &[]);
    assert!(!log.contains("code_changing"), "{log}");
    assert!(longest_gap(&at_threshold) < 1.0);
    for left in [9, 3] {
        let (spoken, log) = speak(dir.path(), &format!("left{left}"), T + 10 - left, &[]);
        assert!(
            log.contains(&format!("saying `code_changing`: {left} s left")),
            "{log}"
        );
        let gap = longest_gap(&spoken);
        let starts = code_starts(&spoken, &next);
        assert!(
            starts >= left as f64 - 0.05 && (starts <= left as f64 + 0.05 || gap < 1.0),
            "{left} s left: the next code starts {starts:.2} s in, after {gap:.2} s of silence"
        );
        let r = correlation(
            &tail(&spoken, next_code.envelope().len()),
            &next_code.envelope(),
        );
        let r_current = correlation(
            &tail(&spoken, current_code.envelope().len()),
            &current_code.envelope(),
        );
        assert!(
            r > 0.9 && r > r_current + 0.05,
            "{left} s left: the last code is not the next one: r = {r:.3}, r(current) = \
             {r_current:.3}"
        );
        println!(
            "{left} s left: silence {gap:.2} s, then the next code {starts:.2} s in (r = \
             {r:.3}; the current one: {r_current:.3})"
        );
    }
    // At the slowest rate too the code begins with its step: the wait is on the clock, not
    // stretched like the pauses between words.
    ok(&codereader(dir.path(), &["settings", "--rate", "-3"]));
    let (slow_next, _) = speak(dir.path(), "slow-next", T + 10, &[]);
    let (slow, log) = speak(dir.path(), "slow", T + 1, &[]);
    assert!(log.contains("saying `code_changing`: 9 s left"), "{log}");
    let starts = code_starts(&slow, &slow_next);
    assert!(
        (starts - 9.0).abs() <= 0.05,
        "at rate -3 the next code starts {starts:.2} s in, not with its step 9 s in"
    );
    ok(&codereader(dir.path(), &["settings", "--rate", "0"]));
    // The threshold is a setting: 0 never waits, 3 waits only below 3 s.
    for threshold in [0, 3] {
        fs::write(
            dir.path().join("config.toml"),
            format!("language = \"en\"\n[code]\nwait_for_next_below = {threshold}\n"),
        )
        .unwrap();
        let (spoken, log) = speak(dir.path(), "setting", T + 7, &[]);
        assert!(!log.contains("code_changing"), "{threshold}: {log}");
        let seconds = spoken.slice(sounding(&spoken)).samples.len() as f64 / 22_050.0;
        assert!(
            (seconds - next_s).abs() < 1.0 && longest_gap(&spoken) < 1.0,
            "{threshold}: {seconds:.2} s: not the code alone"
        );
    }
    fs::write(
        dir.path().join("config.toml"),
        "[code]\nwait_for_next_below = 25\n",
    )
    .unwrap();
    let out = codereader(
        dir.path(),
        &[
            "speak",
            "--wav",
            dir.path().join("x.wav").to_str().unwrap(),
            "--at",
            "0",
        ],
    );
    assert!(
        stderr(&out).contains("key `code.wait_for_next_below`: 25 is out of range"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_says_the_code_is_about_to_change_and_gives_the_next_when_its_step_begins() {
    let dir = setup("language = \"en\"\n");
    let (next, _) = speak(dir.path(), "next", T + 10, &[]);
    let next_code = next.slice(sounding(&next));
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let at = (T + 7).to_string();
    let mut run = Running::start(command(dir.path(), &["run", "--at", &at]), &capture);
    wait_for_utterances(&capture, 1, 10);
    let pressed = Instant::now();
    run.press("s");
    run.wait_for("saying `code_changing`: 3 s left", 5);
    run.wait_for("speaking the code of time step 66666667", 15);
    let waited = pressed.elapsed().as_secs_f64();
    let audio = wait_for_utterances(&capture, 2, 20);
    // The stated time moved on with the wait: the key again gives that step's code at once.
    run.press("s");
    wait_until(
        5,
        || run.count("speaking the code of time step 66666667") == 2,
        || format!("{:?}", run.log()),
    );
    let status = run.quit();
    assert!(status.success(), "{:?}", run.log());
    assert_eq!(run.count("saying `code_changing`"), 1, "{:?}", run.log());
    assert_eq!(run.count("moved backwards"), 0, "{:?}", run.log());
    assert!(
        waited > 3.0,
        "the next code came {waited:.2} s after the key"
    );
    // After the tone: the notice, then (once it has been said and the step has begun) the
    // next step's code.
    let said = utterances(&audio)[1..].to_vec();
    let last = audio.slice(Span {
        start: said[0].start,
        end: said.last().unwrap().end,
    });
    let r = correlation(
        &tail(&last, next_code.envelope().len()),
        &next_code.envelope(),
    );
    let seconds = last.samples.len() as f64 / f64::from(last.rate);
    let code_s = next_code.samples.len() as f64 / f64::from(next_code.rate);
    assert!(
        r > 0.8 && seconds > code_s + 3.0,
        "{seconds:.2} s said (the code alone {code_s:.2} s), r(next code) = {r:.3}"
    );
    println!("the next code {waited:.2} s after the key; r = {r:.3}");
}

/// With the real clock (libfaketime: 3 s before a step ends): `speak` gives the next step's
/// code and records that step only once it has begun, so the clock's record never runs
/// ahead of the clock.
#[test]
fn speak_on_the_real_clock_records_the_next_step_once_it_has_begun() {
    let dir = setup("language = \"en\"\n");
    let (next, _) = speak(dir.path(), "next", T + 10, &[]);
    let next_code = next.slice(sounding(&next));
    let wav: PathBuf = dir.path().join("real.wav");
    let started = Instant::now();
    let out = Command::new("faketime")
        .args(["-f", "@2033-05-18 03:33:27"])
        .arg(codereader_bin())
        .args(["speak", "--wav", wav.to_str().unwrap()])
        .env("TZ", "UTC")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("CODEREADER_STATE", dir.path().join("state"))
        .env("CODEREADER_VOICES", voices_dir())
        .env("CODEREADER_CONFIG", dir.path().join("config.toml"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run faketime ({e}); apt-get install faketime"));
    let took = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saying `code_changing`"),
        "{}",
        stderr(&out)
    );
    assert!(
        took > 2.0,
        "speak returned after {took:.2} s, before the step began"
    );
    let spoken = Audio::read_wav(&wav).unwrap();
    let r = correlation(
        &tail(&spoken, next_code.envelope().len()),
        &next_code.envelope(),
    );
    assert!(r > 0.9, "r(next code) = {r:.3}");
    let status = ok(&codereader(dir.path(), &["status"]));
    assert!(status.contains("last step given: 66666667"), "{status}");
}

/// `audio` resampled to `rate` with a windowed-sinc low-pass (the recognizer takes 16 kHz).
fn resample(audio: &Audio, rate: u32) -> Vec<i16> {
    let ratio = f64::from(audio.rate) / f64::from(rate);
    // Cut-off a little below the new Nyquist frequency, in cycles per input sample.
    let cutoff = 0.5 / ratio * 0.9;
    let half = 24i64;
    let n = (audio.samples.len() as f64 / ratio) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 * ratio;
            let centre = t.floor() as i64;
            let mut sum = 0.0;
            for k in centre - half..=centre + half {
                let Some(&x) = usize::try_from(k).ok().and_then(|k| audio.samples.get(k)) else {
                    continue;
                };
                let d = t - k as f64;
                let sinc = if d.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * 2.0 * cutoff * d).sin()
                        / (std::f64::consts::PI * 2.0 * cutoff * d)
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * d / (half as f64 + 1.0)).cos();
                sum += f64::from(x) * 2.0 * cutoff * sinc * window;
            }
            (sum * 32767.0).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// What the offline recognizer hears as the code in `audio` (the digit words before its end
/// tone), given that it should be `code`: `Ok` when heard exactly, else the recognizer's line.
fn recognized(audio: &Audio, code: &str, dir: &Path) -> Result<(), String> {
    let out = dir.join("asr");
    fs::create_dir_all(&out).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(out.join("code.wav"), spec).unwrap();
    for sample in resample(audio, 16_000) {
        wav.write_sample(sample).unwrap();
    }
    wav.finalize().unwrap();
    fs::write(out.join("codes.txt"), format!("code.wav {code}\n")).unwrap();
    let python = asr_python();
    let heard = Command::new(&python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crates/speech/tools/recognize_digits.py"),
        )
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        heard.status.success(),
        "the recognizer failed (run `cargo xtask test`, which installs PocketSphinx into \
         target/asr-venv, or set CODEREADER_ASR_PYTHON): {}",
        String::from_utf8_lossy(&heard.stderr)
    );
    let line = String::from_utf8_lossy(&heard.stdout)
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap()
        .to_owned();
    if line.contains(" exact=1 ") {
        Ok(())
    } else {
        Err(line)
    }
}

/// The codes said after a notice (the settings' mistake; the code about to change) are the
/// right ones to an independent listener: an offline recognizer hears them exactly.
#[test]
fn the_codes_after_a_notice_are_heard_exactly_by_a_recognizer() {
    let dir = with_mistakes();
    let voices = packs_with_english_clips(dir.path());
    let spoken = |name: &str, at: u64| -> (Audio, String) {
        let wav = dir.path().join(format!("{name}.wav"));
        let at = at.to_string();
        let out = command(
            dir.path(),
            &["speak", "--wav", wav.to_str().unwrap(), "--at", &at],
        )
        .env("CODEREADER_VOICES", &voices)
        .output()
        .unwrap();
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        assert!(!log.contains("no clips"), "not the clearest voice: {log}");
        (Audio::read_wav(&wav).unwrap(), log)
    };
    // After "The settings have a mistake ...": the code of T.
    let (mistake, _) = spoken("mistake", T);
    assert!(longest_gap(&mistake) < 1.0);
    let code = code_at(dir.path(), T);
    recognized(&mistake, &code, dir.path())
        .unwrap_or_else(|line| panic!("after the notice, {code} was not heard: {line}"));
    // 3 s left: "This code is about to change ..." (after the mistake's notice, together
    // longer than the 3 s), and the next step's code.
    let (next, log) = spoken("next", T + 7);
    assert!(log.contains("saying `code_changing`: 3 s left"), "{log}");
    let code = code_at(dir.path(), T + 10);
    recognized(&next, &code, dir.path())
        .unwrap_or_else(|line| panic!("after the wait, {code} was not heard: {line}"));
    // The listener tells codes apart: it does not hear the expiring code there.
    let expiring = code_at(dir.path(), T + 7);
    assert!(
        recognized(&next, &expiring, dir.path()).is_err(),
        "the recognizer heard the expiring code {expiring} as well as {code}"
    );
}
