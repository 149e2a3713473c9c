//! `codereader run` driven through a pseudo-terminal, with what it plays captured through
//! ALSA's `file` plugin (paced in real time, see `AlsaCapture`). Keys speak, replay, stop
//! mid-utterance, lower the volume, change the language and the voice; the captured audio
//! must show each effect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use codereader_e2e::{
    AlsaCapture, Audio, Pty, Span, codereader_bin, codereader_speak_bin, correlation, voices_dir,
};
use tempfile::TempDir;

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

/// The TOTP token most tests enrol.
fn totp_uri() -> String {
    format!("otpauth://totp/Bank:alice?secret={SECRET_B32}&issuer=Bank")
}

/// A temporary directory whose `state/` has the token of `uri` enrolled (with `extra`
/// arguments to `enroll`).
fn enrolled(uri: &str, extra: &[&str]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut args = vec!["enroll", "--uri", uri];
    args.extend_from_slice(extra);
    run_ok(&state, &args);
    (dir, state)
}

/// Writes to `conf` an ALSA configuration whose default device is a sound card that does
/// not exist; returns the value for `ALSA_CONFIG_PATH`.
fn alsa_without_sound_card(conf: &Path) -> String {
    std::fs::write(conf, "pcm.!default { type hw; card 31 }\n").unwrap();
    format!("/usr/share/alsa/alsa.conf:{}", conf.display())
}

/// The stretches of sound in `audio`, split at a second of silence: one a spoken code or
/// prompt (the pauses inside one are shorter). The start-up tone of `run` (a quarter of a
/// second) is left out: [`ready_tone`] finds it.
fn utterances(audio: &Audio) -> Vec<Span> {
    audio
        .spans(audio.loudest_frame() * 0.01, 1000)
        .into_iter()
        .filter(|s| s.seconds(audio.rate) > 0.3)
        .collect()
}

/// The start-up tone of `run`, if `audio` begins with it: a first sound of under 0.3 s.
fn ready_tone(audio: &Audio) -> Option<Span> {
    audio
        .spans(audio.loudest_frame() * 0.01, 1000)
        .first()
        .copied()
        .filter(|s| s.seconds(audio.rate) < 0.3)
}

/// Starts `command` (a `codereader run`) playing into `capture`; returns once it is ready
/// and its start-up tone has been played.
fn start_with_capture(command: &mut Command, capture: &AlsaCapture) -> Running {
    let run = Running::start(command.env("ALSA_CONFIG_PATH", &capture.config_path));
    wait_until(
        20,
        || run.logged("ready") && capture.started().is_some(),
        || format!("run did not start: {:?}", run.log()),
    );
    ready_tone_played(capture);
    run
}

/// Silence after each utterance, longer than any pause inside one (the analysis splits
/// utterances at a second of silence).
const QUIET: Duration = Duration::from_millis(1500);

/// Longest a single wait for the device's audio may take: the whole help is ~25 s.
const SAYING: Duration = Duration::from_secs(60);

/// Waits until the start-up tone has been played and a little over a second of silence has
/// followed, so that it stays apart from what the test's keys make it say.
fn ready_tone_played(capture: &AlsaCapture) {
    capture
        .wait_for_sound_then_quiet(0, Duration::from_millis(1100), SAYING)
        .unwrap();
}

/// Presses `keys` and waits until what they make `run` say has been said, followed by
/// [`QUIET`].
fn press_and_hear(run: &mut Running, capture: &AlsaCapture, keys: &str) {
    let from = capture.position();
    run.press(keys);
    capture
        .wait_for_sound_then_quiet(from, QUIET, SAYING)
        .unwrap_or_else(|e| panic!("after {keys:?}: {e}; log: {:?}", run.log()));
}

/// Presses `keys`, waits until what they make `run` say has been heard for `length`, then
/// stops it with `stop` and waits for [`QUIET`].
fn press_and_stop_after(
    run: &mut Running,
    capture: &AlsaCapture,
    keys: &str,
    length: Duration,
    stop: &str,
) {
    let from = capture.position();
    run.press(keys);
    capture
        .wait_for_sound_lasting(from, length, SAYING)
        .unwrap_or_else(|e| panic!("after {keys:?}: {e}; log: {:?}", run.log()));
    run.press(stop);
    capture
        .wait_for_sound_then_quiet(from, QUIET, SAYING)
        .unwrap_or_else(|e| panic!("after {stop:?}: {e}; log: {:?}", run.log()));
}

/// Renders the code at `T` in `lang` to `wav`; returns its first-to-last sound in seconds
/// and its envelope, the reference the played audio is compared with.
fn reference(state: &Path, lang: &str, wav: &Path) -> (f64, Vec<f32>) {
    let at = T.to_string();
    run_ok(
        state,
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
    let audio = Audio::read_wav(wav).unwrap();
    let spans = utterances(&audio);
    assert_eq!(spans.len(), 1, "reference {}: {spans:?}", wav.display());
    let whole = audio.slice(spans[0]);
    (spans[0].seconds(audio.rate), whole.envelope())
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.log10()
}

/// Polls `done` every 20 ms; fails with the message `why()` once `secs` seconds have passed.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `codereader run` on a pseudo-terminal, its log (standard error) collected line by line.
struct Running {
    child: Child,
    keys: File,
    log: Arc<Mutex<Vec<String>>>,
    // The child's end of the terminal stays open as long as the test runs.
    _pty: Pty,
}

impl Running {
    /// Spawns `command` with the terminal as its input and output.
    fn start(command: &mut Command) -> Running {
        let pty = Pty::open().unwrap();
        let mut child = command
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
        Running {
            child,
            keys: pty.master.try_clone().unwrap(),
            log,
            _pty: pty,
        }
    }

    /// The log so far.
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many lines of the log so far contain `needle`.
    fn count(&self, needle: &str) -> usize {
        count_in(&self.log.lock().unwrap(), needle)
    }

    /// Whether a line of the log so far contains `needle`.
    fn logged(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// Waits until a line of the log contains `needle`; fails after `secs` seconds.
    fn wait_for(&self, needle: &str, secs: u64) {
        wait_until(
            secs,
            || self.logged(needle),
            || format!("no {needle:?} in {:?}", self.log()),
        );
    }

    /// Types `keys` on the terminal.
    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits up to 10 s for the program to end; its exit status.
    fn wait_for_exit(&mut self) -> ExitStatus {
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

fn count_in(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn keys_speak_replay_stop_change_volume_and_language() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let at = T.to_string();
    let (len_da, env_da) = reference(&state, "da", &dir.path().join("da.wav"));
    let (len_en, env_en) = reference(&state, "en", &dir.path().join("en.wav"));

    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = Running::start(
        Command::new(codereader_bin())
            .args(["run", "--at", &at])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .env("ALSA_CONFIG_PATH", &capture.config_path),
    );
    wait_until(
        20,
        || run.logged("ready") && capture.started().is_some(),
        || format!("run did not start: {:?}", run.log()),
    );
    ready_tone_played(&capture);
    press_and_hear(&mut run, &capture, "s"); // 1: the code
    press_and_hear(&mut run, &capture, "r"); // 2: "again", the same code
    // 3: the code, stopped after a second.
    press_and_stop_after(&mut run, &capture, "s", Duration::from_secs(1), "x");
    press_and_hear(&mut run, &capture, "-"); // 4: "quieter"
    press_and_hear(&mut run, &capture, "s"); // 5: the code, 3 dB quieter
    press_and_hear(&mut run, &capture, "l"); // 6: "English"
    press_and_hear(&mut run, &capture, "s"); // 7: the code in English
    run.press("q");
    let status = run.wait_for_exit();
    let log = run.log();
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
    let tone = ready_tone(&audio).expect("no start-up tone");
    assert!(tone.seconds(audio.rate) > 0.15, "{tone:?}");
    let utterances: Vec<Span> = utterances(&audio);
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
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let working = std::fs::read_to_string(capture.dir.join("asound.conf")).unwrap();
    let conf = dir.path().join("switching.conf");
    let mut run = Running::start(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .env("ALSA_CONFIG_PATH", alsa_without_sound_card(&conf)),
    );
    run.wait_for("no audio device", 20);
    run.wait_for("ready", 20);
    // A key without a sound card: the code is taken and logged, nothing crashes.
    run.press("s");
    run.wait_for("speaking the code", 10);
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "run ended without a sound card"
    );
    // The sound card appears.
    std::fs::write(&conf, working).unwrap();
    wait_until(
        10,
        || capture.started().is_some(),
        || format!("the device was not opened: {:?}", run.log()),
    );
    run.wait_for("audio: ", 5);
    ready_tone_played(&capture);
    press_and_hear(&mut run, &capture, "s");
    run.press("q");
    run.wait_for_exit();
    let audio = capture.audio();
    assert!(
        audio.loudest_frame() > 0.01,
        "nothing was played after the device appeared"
    );
    let spans = utterances(&audio);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert!(spans[0].seconds(audio.rate) > 3.0, "{spans:?}");
}

/// `speak` without `--wav` plays on the sound card what `--wav` would have written.
#[test]
fn speak_plays_the_rendered_code_on_the_sound_card() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let at = T.to_string();
    let (length, envelope) = reference(&state, "en", &dir.path().join("en.wav"));
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
    // `speak` returns once the device has taken the last sample; the capture catches up
    // when it has read the rest (the device is closed).
    capture.wait_for_end(Duration::from_secs(10)).unwrap();
    let audio = capture.audio();
    let spans = utterances(&audio);
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
    let uri = format!("otpauth://hotp/Bank:bob?secret={SECRET_B32}&counter=0");
    let (dir, state) = enrolled(&uri, &[]);
    let mut run = Running::start(
        Command::new(codereader_bin())
            .arg("run")
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .env(
                "ALSA_CONFIG_PATH",
                alsa_without_sound_card(&dir.path().join("none.conf")),
            ),
    );
    run.wait_for("ready", 20);
    run.wait_for("HOTP counter 0 is ready", 20);
    run.press("s");
    run.wait_for("speaking the code of HOTP counter 0", 20);
    run.wait_for("HOTP counter 1 is ready", 20);
    // Another process takes a counter meanwhile: the prepared one must not be spoken.
    let out = Command::new(codereader_bin())
        .arg("code")
        .env("CODEREADER_STATE", &state)
        .output()
        .unwrap();
    assert!(out.status.success());
    run.press("s");
    run.wait_for("the token changed since the code was prepared", 20);
    run.wait_for("speaking the code of HOTP counter 3", 20);
    run.wait_for("HOTP counter 4 is ready", 20);
    // Volume up from the default (-2) three times: -1, 0, then the end of the range, where
    // no "louder" is said (only a tone) and nothing changes.
    run.press("+++");
    run.wait_for("volume 0 (at the end of the range)", 20);
    assert_eq!(run.count("volume -1"), 1);
    run.press("q");
    run.wait_for_exit();
    let log = run.log();
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

/// Configured evdev and GPIO inputs that are not there (keypad unplugged, no such chip) are
/// reported and retried; the terminal keeps working, and status is spoken.
#[test]
fn missing_evdev_and_gpio_inputs_are_reported_and_the_terminal_still_works() {
    let (dir, state) = enrolled(&totp_uri(), &["--serial", "0012-3456"]);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[input]\nevdev = [\"/nonexistent/event-kbd\"]\n\n[[gpio]]\nchip = \"/nonexistent/gpiochip9\"\nline = 17\naction = \"speak\"\n\n[[evdev_chord]]\nhold = \"KEY_F1\"\nkey = \"KEY_1\"\naction = \"status\"\n",
    )
    .unwrap();
    let mut run = Running::start(
        Command::new(codereader_bin())
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
                alsa_without_sound_card(&dir.path().join("none.conf")),
            ),
    );
    run.wait_for("ready", 20);
    run.wait_for("input device /nonexistent/event-kbd", 20);
    run.wait_for("GPIO /nonexistent/gpiochip9 line 17", 20);
    run.press("i");
    run.wait_for("status: serial …3456, 0 problem(s)", 20);
    run.press("q");
    let status = run.wait_for_exit();
    assert!(status.success(), "{:?}", run.log());
}

/// The shipped packs' `voice.toml` files in `dir/voices`, without clips; with `render`, the
/// English voices' clips at speed step 0, rendered by the speech crate's `codereader-speak`
/// (flite for `flite-slt`, espeak-ng for `espeak`), as `cargo xtask voices` would.
fn packs(dir: &Path, render: bool) -> PathBuf {
    let voices = dir.join("voices");
    for tag in ["da", "en"] {
        std::fs::create_dir_all(voices.join(tag)).unwrap();
        std::fs::copy(
            voices_dir().join(tag).join("voice.toml"),
            voices.join(tag).join("voice.toml"),
        )
        .unwrap();
    }
    if render {
        let out = Command::new(codereader_speak_bin())
            .args(["clips", "--lang", "en", "--speeds", "0", "--voices"])
            .arg(&voices)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rendering the clips: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    voices
}

/// Runs `codereader --voices VOICES ARGS...` with the state in `state`; its standard error.
fn run_with_voices(state: &Path, voices: &Path, args: &[&str]) -> String {
    let out = Command::new(codereader_bin())
        .arg("--voices")
        .arg(voices)
        .args(args)
        .env("CODEREADER_STATE", state)
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {err}");
    err
}

/// The code at `T` rendered to `wav` with `extra` `speak` arguments: its length in seconds
/// and envelope.
fn voice_reference(state: &Path, voices: &Path, extra: &[&str], wav: &Path) -> (f64, Vec<f32>) {
    let at = T.to_string();
    let mut args = vec!["speak", "--at", &at, "--wav", wav.to_str().unwrap()];
    args.extend_from_slice(extra);
    let err = run_with_voices(state, voices, &args);
    assert!(!err.contains("has no clips"), "{err}");
    let audio = Audio::read_wav(wav).unwrap();
    let spans = utterances(&audio);
    assert_eq!(spans.len(), 1, "reference {}: {spans:?}", wav.display());
    (
        spans[0].seconds(audio.rate),
        audio.slice(spans[0]).envelope(),
    )
}

/// The next-voice key (v) switches English from its default voice (flite's slt, clips) to
/// espeak-ng and back, saying the language's name in the new voice at once; the codes played
/// afterwards match that voice's rendering, not the other's. Danish has one voice: the key
/// says so and changes nothing.
#[test]
fn the_next_voice_key_switches_the_voice_and_the_codes_are_spoken_in_it() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), true);
    run_with_voices(&state, &voices, &["settings", "--lang", "en"]);
    let (len_slt, env_slt) = voice_reference(&state, &voices, &[], &dir.path().join("slt.wav"));
    let (len_esp, env_esp) = voice_reference(
        &state,
        &voices,
        &["--voice", "espeak"],
        &dir.path().join("espeak.wav"),
    );

    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = Running::start(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", &voices)
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .env("ALSA_CONFIG_PATH", &capture.config_path),
    );
    wait_until(
        20,
        || run.logged("ready") && capture.started().is_some(),
        || format!("run did not start: {:?}", run.log()),
    );
    ready_tone_played(&capture);
    assert!(
        run.logged("ready (language en, voice flite-slt)"),
        "{:?}",
        run.log()
    );
    press_and_hear(&mut run, &capture, "s"); // 1: the code, flite slt
    press_and_hear(&mut run, &capture, "v"); // 2: "English" in espeak-ng
    press_and_hear(&mut run, &capture, "s"); // 3: the code, espeak-ng
    press_and_hear(&mut run, &capture, "v"); // 4: "English" in flite slt again (wrapped around)
    press_and_hear(&mut run, &capture, "l"); // 5: "Dansk"
    press_and_hear(&mut run, &capture, "v"); // 6: "Der er ingen anden stemme."
    run.press("q");
    let status = run.wait_for_exit();
    let log = run.log();
    assert!(status.success(), "run failed: {log:?}");
    for needle in [
        "voice espeak (en)",
        "voice flite-slt (en)",
        "language da",
        "voice espeak (da): there is no other voice",
    ] {
        assert_eq!(count_in(&log, needle), 1, "{needle:?} in {log:?}");
    }
    assert_eq!(count_in(&log, "has no clips"), 0, "{log:?}");

    let audio = capture.audio();
    let spans = utterances(&audio);
    let secs: Vec<f64> = spans.iter().map(|s| s.seconds(audio.rate)).collect();
    assert_eq!(spans.len(), 6, "utterances (s): {secs:?}; log: {log:?}");
    let r = |i: usize, reference: &[f32]| correlation(&audio.slice(spans[i]).envelope(), reference);
    // 1: flite's slt, as rendered.
    let (slt_slt, slt_esp) = (r(0, &env_slt), r(0, &env_esp));
    assert!(
        (secs[0] - len_slt).abs() < 0.15 * len_slt && slt_slt > 0.8 && slt_slt > slt_esp + 0.1,
        "first code {} s (slt {len_slt} s, espeak {len_esp} s): r(slt) {slt_slt}, r(espeak) {slt_esp}",
        secs[0]
    );
    // 3: after the key, espeak-ng's rendering and not slt's.
    let (esp_esp, esp_slt) = (r(2, &env_esp), r(2, &env_slt));
    assert!(
        (secs[2] - len_esp).abs() < 0.15 * len_esp && esp_esp > 0.8 && esp_esp > esp_slt + 0.1,
        "code after next_voice {} s (espeak {len_esp} s, slt {len_slt} s): r(espeak) {esp_esp}, r(slt) {esp_slt}",
        secs[2]
    );
    // 2, 4, 5: a word each; 6: a sentence.
    for i in [1, 3, 4] {
        assert!(secs[i] < 1.5, "utterance {} lasted {} s", i + 1, secs[i]);
    }
    assert!(secs[5] > secs[4], "\"no other voice\" {} s", secs[5]);
    // The choice was saved: English back at its default after the wrap; Danish untouched.
    let saved = std::fs::read_to_string(state.join("settings.toml")).unwrap();
    assert!(
        saved.contains("en = \"flite-slt\"")
            && !saved.contains("da = ")
            && saved.contains("language = \"da\""),
        "{saved}"
    );
    println!(
        "utterances (s): {secs:?}; r(slt, espeak) first {slt_slt:.2}, {slt_esp:.2}; after the key {esp_slt:.2}, {esp_esp:.2}"
    );
}

/// `codereader run` at time `T` with `voices`, no config file and no sound card.
fn run_without_sound_card(dir: &Path, state: &Path, voices: &Path) -> Running {
    Running::start(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", state)
            .env("CODEREADER_VOICES", voices)
            .env("XDG_CONFIG_HOME", dir.join("no-config"))
            .env(
                "ALSA_CONFIG_PATH",
                alsa_without_sound_card(&dir.join("none.conf")),
            ),
    )
}

/// Without rendered clips the default English voice is spoken by live espeak-ng: `run` says
/// so in one line, once, however often the voice comes back.
#[test]
fn run_says_once_that_a_voice_without_clips_is_spoken_by_espeak() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), false);
    run_with_voices(&state, &voices, &["settings", "--lang", "en"]);
    let mut run = run_without_sound_card(dir.path(), &state, &voices);
    run.wait_for("ready", 20);
    run.press("v");
    run.wait_for("voice espeak (en)", 10);
    run.press("v");
    run.wait_for("voice flite-slt (en)", 10);
    run.press("q");
    run.wait_for_exit();
    let log = run.log();
    let lines: Vec<&String> = log.iter().filter(|l| l.contains("has no clips")).collect();
    assert_eq!(lines.len(), 1, "{log:?}");
    for part in [
        "voice `flite-slt` of `en`",
        "live espeak-ng (voice `en`) speaks instead",
        "cargo xtask voices en",
    ] {
        assert!(lines[0].contains(part), "{part:?} missing in {}", lines[0]);
    }
}

/// A voice whose clips are broken (a stale manifest without its clips) is skipped by the
/// next-voice key, with the reason in the log; the key goes on to the next usable voice.
#[test]
fn the_next_voice_key_skips_a_voice_whose_clips_are_broken() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), false);
    let pack = voices.join("en/voice.toml");
    let text = std::fs::read_to_string(&pack).unwrap();
    std::fs::write(
        &pack,
        format!("{text}x-broken = {{ engine = \"espeak-ng\", voice = \"en-us\" }}\n"),
    )
    .unwrap();
    let clips = voices.join("en/clips/x-broken");
    std::fs::create_dir_all(&clips).unwrap();
    std::fs::write(
        clips.join("clips.toml"),
        "source = \"espeak-ng\"\nsample_rate = 22050\nspeeds = [0]\n",
    )
    .unwrap();
    run_with_voices(&state, &voices, &["settings", "--lang", "en"]);
    let mut run = run_without_sound_card(dir.path(), &state, &voices);
    run.wait_for("ready (language en, voice flite-slt)", 20);
    // Two presses go round the three voices: espeak once, x-broken skipped, back to slt.
    run.press("v");
    run.wait_for("voice espeak (en)", 10);
    run.press("v");
    run.wait_for("voice flite-slt (en)", 10);
    run.press("q");
    run.wait_for_exit();
    let log = run.log();
    let skipped: Vec<&String> = log.iter().filter(|l| l.contains("skipping it")).collect();
    assert_eq!(skipped.len(), 1, "{log:?}");
    assert!(
        skipped[0].contains("x-broken") && skipped[0].contains("missing"),
        "{}",
        skipped[0]
    );
    let saved = std::fs::read_to_string(state.join("settings.toml")).unwrap();
    assert!(saved.contains("en = \"flite-slt\""), "{saved}");
}

/// Missing and damaged clips (a digit word, the intro) do not stop `run`: it says once that
/// another voice speaks for damaged recordings, logs the problem once, and every code is
/// spoken whole (the damaged phrases by live espeak-ng).
#[test]
fn run_with_damaged_clips_announces_it_once_and_speaks_every_code_whole() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), true);
    run_with_voices(&state, &voices, &["settings", "--lang", "en"]);
    let at = T.to_string();
    let out = Command::new(codereader_bin())
        .args(["code", "--at", &at])
        .env("CODEREADER_STATE", &state)
        .output()
        .unwrap();
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let clips = voices.join("en/clips/flite-slt");
    for (i, damage) in [(0, None), (3, Some(&b"not a WAV"[..]))] {
        let file = clips.join(format!("digit-{}@0.wav", &code[i..=i]));
        match damage {
            None => {
                let _ = std::fs::remove_file(file);
            }
            Some(bytes) => std::fs::write(file, bytes).unwrap(),
        }
    }
    std::fs::write(clips.join("intro@0.wav"), [0u8; 100]).unwrap();

    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = Running::start(
        Command::new(codereader_bin())
            .args(["run", "--at", &at])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", &voices)
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .env("ALSA_CONFIG_PATH", &capture.config_path),
    );
    run.wait_for("announcing that another voice speaks for damaged clips", 20);
    // The announcement (a long sentence) has begun: it ends in silence.
    capture
        .wait_for_sound_then_quiet(capture.position(), QUIET, SAYING)
        .unwrap();
    for _ in 0..2 {
        press_and_hear(&mut run, &capture, "s");
    }
    run.press("q");
    let status = run.wait_for_exit();
    let log = run.log();
    assert!(status.success(), "{log:?}");
    assert_eq!(
        count_in(&log, "warning: voice `flite-slt` of `en`"),
        1,
        "{log:?}"
    );
    assert_eq!(
        count_in(&log, "announcing that another voice"),
        1,
        "{log:?}"
    );
    let audio = capture.audio();
    let spans = utterances(&audio);
    let secs: Vec<f64> = spans.iter().map(|s| s.seconds(audio.rate)).collect();
    assert_eq!(
        spans.len(),
        3,
        "announcement and two codes expected: {secs:?}; {log:?}"
    );
    assert!(secs[0] > 4.0, "announcement {secs:?}");
    for span in &spans[1..] {
        let parts = codereader_e2e::code_segments(&audio.slice(*span));
        assert_eq!(
            parts.digits.len(),
            6,
            "a code lost digits: {:?}",
            parts.spans
        );
    }
}

/// With the real clock (started by libfaketime 7 s before a time step ends and running at
/// normal speed): a replay asked for after the step has passed says that the code expired
/// before the new code (a longer utterance than the first code), and status speaks a
/// sentence: "Token ending in 0 8 1 5. Clock set. All is well."
#[test]
fn replay_after_the_step_says_the_code_expired_and_status_is_a_sentence() {
    let (dir, state) = enrolled(&totp_uri(), &["--serial", "4711-0815"]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    // The code of a step with 7 s left is given (not the next step's after a wait).
    let no_wait = dir.path().join("config.toml");
    std::fs::write(&no_wait, "[code]\nwait_for_next_below = 0\n").unwrap();
    // T + 3: the step of T ends at T + 10.
    let started = Instant::now();
    let mut run = start_with_capture(
        Command::new("faketime")
            .args(["-f", "@2033-05-18 03:33:23"])
            .arg(codereader_bin())
            .arg("run")
            .env("TZ", "UTC")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("CODEREADER_CONFIG", &no_wait),
        &capture,
    );
    press_and_hear(&mut run, &capture, "s");
    run.wait_for("speaking the code of time step 66666666", 5);
    // The replay must come after the step's end, 7 s after the start on the faked clock
    // (which runs at real speed): a time to let pass, not a state to wait for; usually
    // already over once the code has been said.
    let step_ended = started + Duration::from_secs(8);
    thread::sleep(step_ended.saturating_duration_since(Instant::now()));
    press_and_hear(&mut run, &capture, "r");
    run.wait_for("the last code has expired", 5);
    run.wait_for("speaking the code of time step 66666667", 5);
    press_and_hear(&mut run, &capture, "i");
    run.wait_for("status: serial …0815, 0 problem(s)", 5);
    run.press("q");
    let status = run.wait_for_exit();
    let log = run.log();
    assert!(status.success(), "{log:?}");
    assert_eq!(count_in(&log, "repeating the last code"), 0, "{log:?}");
    let audio = capture.audio();
    let spans = utterances(&audio);
    let secs: Vec<f64> = spans.iter().map(|s| s.seconds(audio.rate)).collect();
    assert_eq!(
        spans.len(),
        3,
        "code, expired code, status: {secs:?}; {log:?}"
    );
    assert!(
        secs[1] > secs[0] + 1.0,
        "the expired replay is not longer than the first code: {secs:?}"
    );
    // Status: earcon, "Token ending in", four digits, "Clock set.", "All is well.", earcon.
    let status = audio.slice(spans[2]);
    let parts = status.spans(status.loudest_frame() * 0.01, 120);
    assert!(
        secs[2] > 4.0 && parts.len() >= 9,
        "status {} s in {} parts: not a sentence",
        secs[2],
        parts.len()
    );
    println!("utterances (s): {secs:?}; status parts {}", parts.len());
}

/// `run` with nothing to listen to (standard input not a terminal, no evdev device, no GPIO
/// button) does not exit: it plays its start-up tone, says "Ready" (as configured) and that
/// no keypad is connected, and keeps waiting for one. The packaged unit does not restart
/// the exits a restart cannot fix.
#[test]
fn run_without_input_says_so_and_keeps_waiting() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "say_ready = true\nlanguage = \"en\"\n").unwrap();
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(codereader_bin())
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Everything said (tone, "Ready.", "No keypad ..."), then quiet: `run` has reached the
    // point where it only waits for a keypad. An exit for want of input would come before.
    capture
        .wait_for_sound_then_quiet(0, QUIET, SAYING)
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap()));
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(running, "run exited without input: {text}");
    assert!(
        text.contains("no input: standard input is not a terminal")
            && text.contains("listening for a keypad or keyboard to appear"),
        "{text}"
    );
    let audio = capture.audio();
    let spans = audio.spans(audio.loudest_frame() * 0.01, 1000);
    let secs: Vec<f64> = spans.iter().map(|s| s.seconds(audio.rate)).collect();
    // Tone, "Ready.", "No keypad is connected. Waiting for one." as one utterance.
    assert_eq!(spans.len(), 1, "{secs:?}; {text}");
    assert!(secs[0] > 2.5, "{secs:?}");
    let parts = audio.spans(audio.loudest_frame() * 0.01, 120);
    assert!(
        parts.len() >= 3,
        "tone and two sentences expected: {parts:?}"
    );

    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/device/packaging/codereader.service"),
    )
    .unwrap();
    assert!(unit.contains("\nRestartPreventExitStatus=2 7\n"), "{unit}");
    let out = Command::new(codereader_bin())
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", voices_dir())
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A bad config no longer stops `run` (it starts on the defaults for what is wrong and
    // says so): tests/tests/device_first_minute.rs.
}

/// A key with no action plays a short low tone (not the chimes); the help key (h) says the
/// key map, most important first, with the keys' names, and any key stops it.
#[test]
fn an_unknown_key_gives_a_tone_and_help_says_the_keys() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    run_ok(&state, &["settings", "--lang", "en", "--voice", "espeak"]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = start_with_capture(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("XDG_CONFIG_HOME", dir.path().join("no-config")),
        &capture,
    );
    press_and_hear(&mut run, &capture, "z");
    run.wait_for("a key with no action", 5);
    press_and_hear(&mut run, &capture, "h");
    run.wait_for("help: ", 5);
    // The help again, stopped after two seconds.
    press_and_stop_after(&mut run, &capture, "h", Duration::from_secs(2), "x");
    run.press("q");
    let status = run.wait_for_exit();
    let log = run.log();
    assert!(status.success(), "{log:?}");
    let help: Vec<&String> = log.iter().filter(|l| l.contains("help: ")).collect();
    assert_eq!(help.len(), 2, "{log:?}");
    assert!(
        help[0].contains("help: speak = s or space; replay = r; stop = x or escape;")
            && help[0].contains("help = h;")
            && help[0].ends_with("quit = q or ctrl-c"),
        "{}",
        help[0]
    );
    // The paced capture may still be reading the closing tone: wait until it has read all.
    capture
        .wait_for_end(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {log:?}"));
    let audio = capture.audio();
    let spans = audio.spans(audio.loudest_frame() * 0.01, 1000);
    let secs: Vec<f64> = spans.iter().map(|s| s.seconds(audio.rate)).collect();
    // Ready tone, unknown-key tone, the whole help, the help stopped after two seconds, the
    // closing tone.
    assert_eq!(spans.len(), 5, "{secs:?}; {log:?}");
    assert!(secs[4] < 0.3, "closing tone {secs:?}");
    let tone = audio.slice(spans[1]);
    let crossings = tone
        .samples
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    let hz = crossings as f64 / secs[1];
    assert!(
        secs[1] < 0.2 && (180.0..260.0).contains(&hz),
        "unknown-key tone {} s at {hz:.0} Hz",
        secs[1]
    );
    // Twelve actions, each a phrase and one or two key names: many parts, in the order said.
    let whole = audio.slice(spans[2]);
    let parts = whole.spans(whole.loudest_frame() * 0.01, 120);
    assert!(
        secs[2] > 15.0 && parts.len() >= 30,
        "help {} s in {} parts",
        secs[2],
        parts.len()
    );
    assert!(secs[3] < 3.0, "the help was not stopped: {secs:?}");
    println!("help {} s in {} parts; {secs:?}", secs[2], parts.len());
}

/// A language nothing can speak is not used by `run`: it starts in the first language that
/// can be spoken (saying why in it, with the start-up tone), and the next-language key
/// skips it.
#[test]
fn run_uses_a_speakable_language_instead_of_one_nothing_can_speak() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), false);
    std::fs::create_dir_all(voices.join("xx")).unwrap();
    let danish = std::fs::read_to_string(voices.join("da/voice.toml")).unwrap();
    std::fs::write(
        voices.join("xx/voice.toml"),
        danish
            .replace("tag = \"da\"", "tag = \"xx\"")
            .replace("voice = \"da\"", "voice = \"no-such-voice\""),
    )
    .unwrap();
    run_with_voices(&state, &voices, &["settings", "--lang", "xx"]);
    let mut run = run_without_sound_card(dir.path(), &state, &voices);
    run.wait_for("ready (language da", 20);
    assert!(
        run.logged("language `xx` cannot be spoken (espeak-ng has no voice `no-such-voice`"),
        "{:?}",
        run.log()
    );
    run.press("l");
    run.wait_for("language en", 10);
    run.press("l");
    run.wait_for("language da", 10);
    run.press("q");
    run.wait_for_exit();
    assert_eq!(run.count("language xx"), 0, "{:?}", run.log());
}

/// `q` quits with a short closing tone (the start-up tone's falling mirror), so a user hears
/// that the device is off rather than silent.
#[test]
fn quitting_plays_a_short_closing_tone() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = start_with_capture(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .env("XDG_CONFIG_HOME", dir.path().join("no-config")),
        &capture,
    );
    run.press("q");
    let status = run.wait_for_exit();
    assert!(status.success(), "{:?}", run.log());
    // The paced capture may still be reading what was written before the exit: wait until
    // it has read all (waiting for two sounds measured a tone still arriving: 0.02 s).
    capture.wait_for_end(Duration::from_secs(10)).unwrap();
    let audio = capture.audio();
    let sounds = audio.spans(audio.loudest_frame() * 0.01, 500);
    assert_eq!(
        sounds.len(),
        2,
        "the ready tone and the closing tone: {sounds:?}"
    );
    let closing = sounds[1].seconds(audio.rate);
    assert!((0.15..0.3).contains(&closing), "closing tone {closing} s");
}

/// Damage found while speaking (the clips of a speed step are read when that step is first
/// used) is announced only once the device has been quiet for a moment, not straight after
/// the last word (it followed 190 ms after a code's last digit).
#[test]
fn the_damaged_clips_notice_waits_until_the_device_is_quiet() {
    let (dir, state) = enrolled(&totp_uri(), &[]);
    let voices = packs(dir.path(), false);
    let out = Command::new(codereader_speak_bin())
        .args(["clips", "--lang", "en", "--speeds", "0,1", "--voices"])
        .arg(&voices)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_with_voices(&state, &voices, &["settings", "--lang", "en"]);
    std::fs::write(
        voices.join("en/clips/flite-slt/digit-5@1.wav"),
        b"not a WAV",
    )
    .unwrap();
    let capture = AlsaCapture::start(dir.path()).unwrap();
    let mut run = start_with_capture(
        Command::new(codereader_bin())
            .args(["run", "--at", &T.to_string()])
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", &voices)
            .env("XDG_CONFIG_HOME", dir.path().join("no-config")),
        &capture,
    );
    // Faster: step 1's clips are read and the damage found; then the code, at once.
    run.press("]");
    run.wait_for("warning: ", 20);
    run.press("s");
    run.wait_for("announcing that another voice speaks for damaged clips", 20);
    // Both said and followed by a second of silence.
    let said = || {
        let audio = capture.audio();
        let spans = utterances(&audio);
        let done = spans.len() >= 2
            && spans
                .last()
                .is_some_and(|s| audio.samples.len() > s.end + audio.rate as usize);
        done.then_some((spans, audio.rate))
    };
    wait_until(
        20,
        || said().is_some(),
        || format!("{:?}; {:?}", utterances(&capture.audio()), run.log()),
    );
    run.press("q");
    assert!(run.wait_for_exit().success(), "{:?}", run.log());
    let (spans, rate) = said().unwrap();
    // The code (after what was said of "faster"), then the notice, apart (an utterance ends
    // at a second of silence).
    let audio = capture.audio();
    let [.., code, notice] = spans[..] else {
        panic!("the notice is not apart from the code: {spans:?}")
    };
    let digits = codereader_e2e::code_segments(&audio.slice(code))
        .digits
        .len();
    assert_eq!(digits, 6, "{spans:?}");
    assert!(notice.seconds(rate) > 3.0, "{spans:?}");
    let gap = (notice.start - code.end) as f64 / f64::from(rate);
    assert!(gap >= 1.2, "the notice came {gap} s after the code");
    println!("the notice came {gap:.2} s after the code");
}
