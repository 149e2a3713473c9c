//! Device benchmarks: key event to first sample, and the resident memory of `codereader run`.
//!
//! *Key to first sample* runs what `codereader run` does for the speak key: decode the key
//! from terminal bytes, look up its action, take the code from the state directory, plan the
//! utterance, hand it to a worker thread (as the live player does) that renders into a sink
//! standing in for the audio ring. `run-totp`: every press in a new time step, recorded on
//! disk after speech has started; `run-hotp`: the code was reserved (counter stored) before
//! the press. For comparison `speak-totp`/`speak-hotp`: the one-shot command's order, with the
//! durable write (file fsync, rename, directory fsync) before the first sample. Measured to
//! the first sample (the start earcon) and to the first *speech*
//! sample (the intro phrase), with the espeak-ng backend and with clips rendered from it.
//! Baseline in the same run: spawning `espeak-ng --stdout` for the intro and waiting for its
//! first byte of audio, what a shell-script device would do.
//!
//! *Resident memory*: `codereader run` idle (voices loaded, espeak-ng initialised, audio
//! stream open on ALSA's file plugin), read from `/proc/PID/status`, beside a trivial process
//! (`sleep`) as the baseline.
//!
//! The audio device's own buffer adds its period on top of these figures.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path as FsPath;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use codereader::config::{Listening, SynthChoice};
use codereader::keys::{Action, KeyMap, TermDecoder, TermKey};
use codereader::token_file::{StateDir, Token};
use codereader::voice::{self, Message, Voices};
use codereader_e2e::{AlsaCapture, Pty};
use codereader_otp::{KeyPolicy, KeyUri, UnixTime};
use codereader_speech::{Renderer, SampleRate, Sink, SpeechError, Speed, Utterance, clips};
use criterion::{Criterion, criterion_group};

const T: UnixTime = UnixTime(2_000_000_000);

/// Stands in for the audio ring: notes when the first and the third write arrive (earcon,
/// pause, then the first spoken phrase).
struct FirstSamples {
    rate: SampleRate,
    writes: usize,
    first: Option<Instant>,
    speech: Option<Instant>,
}

impl Sink for FirstSamples {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }
    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        if samples.is_empty() {
            return Ok(());
        }
        self.writes += 1;
        let now = Instant::now();
        self.first.get_or_insert(now);
        if self.writes == 3 {
            self.speech = Some(now);
        }
        Ok(())
    }
}

/// The render worker: owns renderer and synthesiser, like the live player's thread.
struct Worker {
    jobs: mpsc::Sender<(Utterance, Instant)>,
    done: mpsc::Receiver<(Duration, Duration)>,
}

fn worker(voices: &Voices, lang: &str) -> Worker {
    let pack = voices.pack(lang).unwrap();
    let mut synth = voices.synth(pack).unwrap();
    let (jobs, rx) = mpsc::channel::<(Utterance, Instant)>();
    let (tx, done) = mpsc::channel();
    thread::spawn(move || {
        let mut renderer = Renderer::new(SampleRate::new(48_000).unwrap());
        renderer.prepare(synth.sample_rate()).unwrap();
        while let Ok((utterance, start)) = rx.recv() {
            let mut sink = FirstSamples {
                rate: renderer.sample_rate(),
                writes: 0,
                first: None,
                speech: None,
            };
            let settings = voice::speech_settings(&Listening::default());
            let cancelled = || sink_done();
            renderer
                .render(&utterance, synth.as_mut(), settings, &mut sink, &cancelled)
                .unwrap();
            let first = sink.first.unwrap() - start;
            let speech = sink.speech.unwrap() - start;
            tx.send((first, speech)).unwrap();
        }
    });
    Worker { jobs, done }
}

/// Renders whole utterances: nothing cancels.
fn sink_done() -> bool {
    false
}

fn enrolled(dir: &FsPath, uri: &str) -> StateDir {
    let state = StateDir::new(dir);
    let uri = KeyUri::parse(uri, KeyPolicy::Rfc4226).unwrap();
    state.enroll(&Token::from_uri(&uri, None), true).unwrap();
    state
}

/// Copies `voices/` and renders clips at speed step 0 into the copy.
fn voices_with_clips(dir: &FsPath) -> Voices {
    let source = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&source)
        .arg(dir.join("voices"))
        .status()
        .unwrap();
    assert!(status.success());
    // Every pack's `espeak` voice, so that both backends speak the same words with the same
    // engine: the clips are that voice's own (`clips/espeak/`), rendered here.
    let espeak_voice = |voices: &Voices| -> BTreeMap<String, String> {
        voices
            .languages()
            .into_iter()
            .map(|lang| (lang, "espeak".to_owned()))
            .collect()
    };
    let espeak = Voices::load(&dir.join("voices"), SynthChoice::Espeak).unwrap();
    let picks = espeak_voice(&espeak);
    let espeak = espeak.choosing(&picks).unwrap();
    for lang in espeak.languages() {
        let pack = espeak.pack(&lang).unwrap();
        let mut synth = espeak.synth(pack).unwrap();
        let out = &pack.voice().clips_dir;
        clips::render_clips(pack, synth.as_mut(), &[Speed::new(0)], out).unwrap();
    }
    let with_clips = Voices::load(&dir.join("voices"), SynthChoice::Clips).unwrap();
    let picks = espeak_voice(&with_clips);
    with_clips.choosing(&picks).unwrap()
}

/// How the code is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `run`, TOTP: the new step is recorded after speech starts.
    TotpRun,
    /// `run`, HOTP: the code was reserved (its counter stored) before the key press.
    HotpRun,
    /// `speak`, TOTP: the new step is stored before speaking.
    TotpCli,
    /// `speak`, HOTP: the counter is stored before speaking.
    HotpCli,
}

impl Path {
    const ALL: [Path; 4] = [Path::TotpRun, Path::HotpRun, Path::TotpCli, Path::HotpCli];

    fn is_hotp(self) -> bool {
        matches!(self, Path::HotpRun | Path::HotpCli)
    }

    fn name(self) -> &'static str {
        match self {
            Path::TotpRun => "run-totp",
            Path::HotpRun => "run-hotp",
            Path::TotpCli => "speak-totp",
            Path::HotpCli => "speak-hotp",
        }
    }
}

fn key_to_first_sample(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let espeak = Voices::load(
        &FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../../voices"),
        SynthChoice::Espeak,
    )
    .unwrap();
    let clip_voices = voices_with_clips(tmp.path());
    let mut keymap = std::collections::BTreeMap::new();
    keymap.insert(Action::Speak, vec![TermKey::Space]);
    let keymap = KeyMap::new(&keymap).unwrap();
    let totp = enrolled(
        &tmp.path().join("totp"),
        "otpauth://totp/B:a?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
    );
    let hotp = enrolled(
        &tmp.path().join("hotp"),
        "otpauth://hotp/B:a?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=0",
    );
    let mut group = c.benchmark_group("key_to_first_sample");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    // One clock for every path: time only moves forward, as the state requires.
    let time = std::cell::Cell::new(T.0);
    for (backend, voices) in [("espeak", &espeak), ("clips", &clip_voices)] {
        let w = worker(voices, "da");
        let pack = voices.pack("da").unwrap();
        for path in Path::ALL {
            let state = if path.is_hotp() { &hotp } else { &totp };
            let mut reserved = state.reserve().unwrap();
            let mut press = |which: fn((Duration, Duration)) -> Duration, iters: u64| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A user presses about once a minute: every TOTP press is in a new step.
                    time.set(time.get() + 60);
                    let start = Instant::now();
                    let mut decoder = TermDecoder::default();
                    let key = decoder.feed(b" ", true)[0];
                    assert_eq!(keymap.action(key), Some(Action::Speak));
                    let (taken, unrecorded) = match path {
                        Path::TotpRun => state
                            .take_code_record_later(UnixTime(time.get()), UnixTime(0))
                            .unwrap(),
                        Path::HotpRun => (
                            state.claim(reserved.take().unwrap()).unwrap().unwrap(),
                            None,
                        ),
                        Path::TotpCli | Path::HotpCli => (
                            state.take_code(UnixTime(time.get()), UnixTime(0)).unwrap(),
                            None,
                        ),
                    };
                    let message = Message::Code {
                        code: taken.code.as_str(),
                        replay: false,
                    };
                    let utterance = voice::plan(pack, &message).unwrap();
                    w.jobs.send((utterance, start)).unwrap();
                    // What `run` does once speech has started.
                    if let Some(step) = unrecorded {
                        state.record_step(step).unwrap();
                    }
                    if path == Path::HotpRun {
                        reserved = state.reserve().unwrap();
                    }
                    total += which(w.done.recv().unwrap());
                }
                total
            };
            let name = path.name();
            group.bench_function(format!("{backend}/{name}/first_sample"), |b| {
                b.iter_custom(|iters| press(|(first, _)| first, iters));
            });
            group.bench_function(format!("{backend}/{name}/first_speech_sample"), |b| {
                b.iter_custom(|iters| press(|(_, speech)| speech, iters));
            });
        }
    }
    let intro = espeak
        .pack("da")
        .unwrap()
        .text(codereader_speech::PhraseKey::Prompt(
            codereader_speech::Prompt::Intro,
        ));
    let intro = intro.to_owned();
    group.bench_function("baseline/espeak-ng_process_first_byte", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut child = Command::new("espeak-ng")
                    .args(["-v", "da", "--stdout"])
                    .arg(&intro)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("espeak-ng (Debian package espeak-ng) must be installed");
                let mut byte = [0u8; 1];
                child
                    .stdout
                    .as_mut()
                    .unwrap()
                    .read_exact(&mut byte)
                    .unwrap();
                total += start.elapsed();
                let _ = child.kill();
                let _ = child.wait();
            }
            total
        });
    });
    group.finish();
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resident memory of `codereader run`, idle, beside `sleep`.
fn resident_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    enrolled(
        &state,
        "otpauth://totp/B:a?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
    );
    let capture = AlsaCapture::start(tmp.path()).unwrap();
    let pty = Pty::open().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_codereader"))
        .arg("run")
        .env("CODEREADER_STATE", &state)
        .env("CODEREADER_VOICES", codereader_e2e::voices_dir())
        .env("XDG_CONFIG_HOME", tmp.path().join("no-config"))
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while capture.started().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_secs(2));
    let (idle, _) = rss_kib(child.id());
    // One code spoken, then idle again: the high-water mark includes speaking.
    let mut keys = pty.master.try_clone().unwrap();
    keys.write_all(b"s").unwrap();
    thread::sleep(Duration::from_secs(7));
    let (after, peak) = rss_kib(child.id());
    keys.write_all(b"q").unwrap();
    let _ = child.wait();
    let mut sleep = Command::new("sleep").arg("5").spawn().unwrap();
    thread::sleep(Duration::from_millis(200));
    let (baseline, _) = rss_kib(sleep.id());
    let _ = sleep.kill();
    let _ = sleep.wait();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("\nresident memory of `codereader run` (goal <= 20 MiB)");
    println!("| what | RSS MiB | x `sleep` |");
    println!("|---|---|---|");
    println!("| `sleep 5` (baseline) | {:.1} | 1.0 |", mib(baseline));
    for (what, kib) in [
        ("run, idle", idle),
        ("run, idle after speaking a code", after),
        ("run, peak (VmHWM)", peak),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} |",
            mib(kib),
            kib as f64 / baseline.max(1) as f64
        );
    }
}

criterion_group!(benches, key_to_first_sample);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file once as a test
    // of an unoptimised build, whose memory figure would mislead.
    if std::env::args().any(|a| a == "--bench") {
        resident_memory();
    }
}
