//! Start-up benchmarks, each with its baseline from the same run (a table, not criterion):
//!
//! - *One-shot speak*: `codereader speak --wav` (a TOTP code, Danish, clips) against the
//!   shell pipeline a script device would run, `oathtool --totp | espeak-ng -w`, alternating
//!   one of each per round. Goal: at least 2x faster.
//! - *`run` start to ready*: spawn to the "ready" log line, with clips and with live
//!   espeak-ng. Goal: <= 150 ms warm, whatever the number of voices.
//! - *Idle memory*: `codereader run` (clips) idle after ready, beside `sleep`. Goal:
//!   <= 12 MiB.
//!
//! The voices are a copy of `voices/` with clips for **every** voice at **every** speed step
//! (rendered here with espeak-ng, 3 voices x 7 steps), so start-up pays for whatever it
//! opens. Audio goes to ALSA's `file` plugin (no sound card needed).
//!
//! Runs only under `cargo bench` (`cargo test --all-targets` runs this file once as a test of
//! an unoptimised build, whose figures would mislead).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use codereader::config::SynthChoice;
use codereader::voice::Voices;
use codereader_e2e::{AlsaCapture, Pty};
use codereader_speech::{Espeak, Speed, clips};

const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const AT: &str = "2000000000";
const ROUNDS: usize = 10;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_codereader")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A copy of `voices/` with clips for every voice at every speed step; returns it and the
/// number of clip files.
fn voices_with_every_clip(dir: &Path) -> (PathBuf, usize) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
    let voices = dir.join("voices");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.join("voice.toml").is_file() {
            let to = voices.join(path.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(path.join("voice.toml"), to.join("voice.toml")).unwrap();
        }
    }
    let library = Voices::load(&voices, SynthChoice::Espeak).unwrap();
    let engine = Espeak::shared().unwrap();
    let mut files = 0;
    for tag in library.languages() {
        let pack = library.pack(&tag).unwrap();
        for name in pack.voice_names() {
            let voice = pack.with_voice_words(&name).unwrap();
            let mut synth = engine.voice(&voice).unwrap();
            files += clips::render_clips(&voice, &mut synth, &Speed::ALL, &voice.voice().clips_dir)
                .unwrap();
        }
    }
    (voices, files)
}

fn codereader(state: &Path, voices: &Path, dir: &Path) -> Command {
    let mut command = Command::new(bin());
    command
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", voices)
        .env("XDG_CONFIG_HOME", dir.join("no-config"))
        .env_remove("CODEREADER_CONFIG");
    command
}

fn timed(command: &mut Command) -> f64 {
    let t0 = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert!(status.success(), "{command:?} failed");
    ms
}

fn one_shot(dir: &Path, state: &Path, voices: &Path) {
    let wav = dir.join("speak.wav");
    let pipeline_wav = dir.join("pipeline.wav");
    let pipeline = format!(
        "oathtool --totp -b {SECRET} --now=@{AT} | espeak-ng -v da -w {}",
        pipeline_wav.display()
    );
    let (mut ours, mut shell) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(timed(
            codereader(state, voices, dir)
                .args(["speak", "--at", AT, "--wav"])
                .arg(&wav),
        ));
        shell.push(timed(Command::new("sh").args(["-c", &pipeline])));
    }
    let (ours, shell) = (median(ours), median(shell));
    println!("\none-shot: a TOTP code to WAV, Danish, median of {ROUNDS} alternating rounds");
    println!("| what | ms | x pipeline |");
    println!("|---|---|---|");
    println!("| `oathtool --totp \\| espeak-ng -w` (baseline) | {shell:.1} | 1.00 |");
    println!(
        "| `codereader speak --wav` (clips) | {ours:.1} | {:.2} (goal <= 0.50) |",
        ours / shell
    );
}

/// Spawns `codereader run` and returns the ms to its "ready" line and the process.
fn start(
    dir: &Path,
    state: &Path,
    voices: &Path,
    config: Option<&Path>,
) -> (f64, std::process::Child, Pty, AlsaCapture) {
    let capture = AlsaCapture::start(dir).unwrap();
    let pty = Pty::open().unwrap();
    let mut command = codereader(state, voices, dir);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let t0 = Instant::now();
    let mut child = command
        .args(["run", "--at", AT])
        .env("ALSA_CONFIG_PATH", &capture.config_path)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("run ended before ready").unwrap();
        if line.contains("ready (") {
            break;
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Keep draining its log so it never blocks on a full pipe.
    thread::spawn(move || lines.for_each(drop));
    (ms, child, pty, capture)
}

fn stop(mut child: std::process::Child, pty: &Pty) {
    let _ = pty.master.try_clone().unwrap().write_all(b"q");
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn startup_and_memory(dir: &Path, state: &Path, voices: &Path) {
    let espeak = dir.join("espeak.toml");
    std::fs::write(&espeak, "synth = \"espeak\"\n").unwrap();
    let (mut clips, mut live) = (Vec::new(), Vec::new());
    let mut idle_rss = 0.0;
    let mut started = 0;
    for round in 0..ROUNDS {
        for (config, times) in [(None, &mut clips), (Some(espeak.as_path()), &mut live)] {
            started += 1;
            let run_dir = dir.join(format!("run-{started}"));
            std::fs::create_dir_all(&run_dir).unwrap();
            let (ms, child, pty, _capture) = start(&run_dir, state, voices, config);
            times.push(ms);
            if round == ROUNDS - 1 && config.is_none() {
                thread::sleep(Duration::from_secs(2));
                idle_rss = rss_mib(child.id());
            }
            stop(child, &pty);
        }
    }
    let mut sleep = Command::new("sleep").arg("5").spawn().unwrap();
    thread::sleep(Duration::from_millis(200));
    let baseline = rss_mib(sleep.id());
    let _ = sleep.kill();
    let _ = sleep.wait();
    println!("\n`codereader run`: spawn to \"ready\", median of {ROUNDS} alternating rounds");
    println!("| what | ms |");
    println!("|---|---|");
    println!(
        "| live espeak-ng (`synth = \"espeak\"`, baseline) | {:.1} |",
        median(live)
    );
    println!(
        "| clips, every voice at every step on disk (goal <= 150) | {:.1} |",
        median(clips)
    );
    println!("\nresident memory, idle 2 s after ready");
    println!("| what | MiB |");
    println!("|---|---|");
    println!("| `sleep 5` (baseline) | {baseline:.1} |");
    println!("| `codereader run`, clips (goal <= 12) | {idle_rss:.1} |");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (voices, files) = voices_with_every_clip(tmp.path());
    println!("voices: {files} clip files on disk (every voice, every speed step)");
    let state = tmp.path().join("state");
    let status = codereader(&state, &voices, tmp.path())
        .args(["enroll", "--uri"])
        .arg(format!("otpauth://totp/B:a?secret={SECRET}"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    one_shot(tmp.path(), &state, &voices);
    startup_and_memory(tmp.path(), &state, &voices);
}
