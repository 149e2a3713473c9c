//! Acceptance: the live path, headless. cpal plays through ALSA's `file` plugin (slave
//! `null`), selected with `ALSA_CONFIG_PATH` in a child process; the plugin writes into a FIFO
//! that this test drains at a steady pace, so the "device" consumes audio in real time (2x)
//! like a sound card instead of as fast as the CPU allows. The captured audio is compared
//! with the same utterance rendered offline. A missing ALSA or device fails the test.
//!
//! `harness = false`: the same binary is the parent (the checks) and, with
//! `CODEREADER_LIVE_CHILD` set, the child scenarios that need the ALSA variable at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use codereader_speech::{ClipSynth, CodeIntro, LivePlayer, Settings, Speed, Utterance, VoicePack};
use common::{correlation, pack_with_clips, sound_bounds, temp_dir, voices_dir};

const CODE: &str = "471293";
const CHILD_ENV: &str = "CODEREADER_LIVE_CHILD";
/// The voices directory (with clips) the child scenario uses.
const VOICES_ENV: &str = "CODEREADER_LIVE_VOICES";
/// How much faster than real time the FIFO is drained (a 2x "sound card").
const PACE: f64 = 2.0;
/// Silence the stop scenario leaves between the stopped utterance and its replay, ms.
const GAP_MS: u64 = 1500;

fn main() -> ExitCode {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        child(&scenario);
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let root = temp_dir("live");
    let clip_root = root.path().join("voices");
    pack_with_clips(&clip_root, "en", &[Speed::new(0)]);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_codereader-speak"));
    for (tag, backend, voices) in [
        ("da", "espeak", voices_dir()),
        ("en", "clips", clip_root.clone()),
    ] {
        let mut cmd = Command::new(&bin);
        // The `espeak` voice (every shipped pack has one), which is what the clips hold.
        cmd.args(["play", "--lang", tag, "--code", CODE, "--backend", backend])
            .args(["--voice", "espeak"])
            .arg("--voices")
            .arg(&voices);
        let run = capture(root.path(), &format!("{tag}-{backend}"), cmd);
        check_full_play(&run, root.path(), &voices, tag, backend);
        println!("live {tag}/{backend}: ok");
    }
    // Clips, because a replay through espeak-ng is not sample-identical (see `reference`).
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, "stop-replay")
        .env(VOICES_ENV, &clip_root);
    let run = capture(root.path(), "stop-replay", cmd);
    check_stop_and_replay(&run, root.path(), &clip_root);
    println!("live stop/replay: ok");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, "idle-pause").env(VOICES_ENV, &clip_root);
    let run = capture(root.path(), "idle-pause", cmd);
    check_idle_pause(&run);
    println!("live idle pause: ok");
    check_missing_device(root.path());
    println!("live missing device: ok");
    println!(
        "live_alsa: all passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// What a child printed (`key=value` words) and what the "sound card" received.
struct Run {
    info: HashMap<String, String>,
    rate: u32,
    period: usize,
    /// Channel 0 of the captured audio, as f32.
    audio: Vec<f32>,
}

impl Run {
    fn number(&self, key: &str) -> u64 {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("child did not report `{key}`: {:?}", self.info))
            .parse()
            .unwrap()
    }
}

/// Runs `cmd` with ALSA's default PCM pointing at a FIFO that is drained at `PACE` times real
/// time, and returns the child's report and the captured audio.
fn capture(dir: &Path, label: &str, mut cmd: Command) -> Run {
    let fifo = dir.join(format!("{label}.fifo"));
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    let conf = dir.join(format!("{label}.asoundrc"));
    std::fs::write(
        &conf,
        format!(
            "pcm.!default {{ type file; slave.pcm \"null\"; file \"{}\"; format \"raw\" }}\n",
            fifo.display()
        ),
    )
    .unwrap();
    let alsa_path = format!("/usr/share/alsa/alsa.conf:{}", conf.display());

    // The reader opens the FIFO at once (the child's open of the PCM waits for it) and keeps
    // it open until the child has exited: ALSA may open and close the file several times
    // (probing, then the stream), and a FIFO without a reader would block the next open.
    // It drains at `PACE` times the device's byte rate; until the child has said what that
    // is, at the rate of 48 kHz stereo f32.
    let byte_rate = Arc::new(AtomicU64::new(48_000 * 2 * 4));
    let opened = Arc::new(AtomicBool::new(false));
    let child_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let fifo = fifo.clone();
        let (byte_rate, opened, child_done) = (
            Arc::clone(&byte_rate),
            Arc::clone(&opened),
            Arc::clone(&child_done),
        );
        thread::spawn(move || -> Vec<u8> {
            let mut file = std::fs::File::open(&fifo).unwrap();
            opened.store(true, Ordering::Release);
            let mut data = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut allowed = 0.0;
            let mut last = Instant::now();
            loop {
                let now = Instant::now();
                allowed +=
                    (now - last).as_secs_f64() * byte_rate.load(Ordering::Acquire) as f64 * PACE;
                last = now;
                let want = (allowed as usize).saturating_sub(data.len()).min(buf.len());
                if want == 0 {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                match file.read(&mut buf[..want]) {
                    Ok(0) if child_done.load(Ordering::Acquire) => return data,
                    // No writer right now (between ALSA's opens): wait for the next.
                    Ok(0) => thread::sleep(Duration::from_millis(2)),
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("reading the FIFO: {e}"),
                }
            }
        })
    };

    let mut child = cmd
        .env("ALSA_CONFIG_PATH", &alsa_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hung child must fail the test, not hang CI: kill it (by its id) after two minutes.
    let watchdog = {
        let (pid, child_done) = (child.id(), Arc::clone(&child_done));
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !child_done.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return true;
                }
                thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let stderr = {
        let mut pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let mut info = HashMap::new();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        for word in line.split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                info.insert(k.to_owned(), v.to_owned());
            }
        }
        if line.starts_with("device ") {
            let bytes = sample_bytes(&info["format"]) as u64;
            let rate: u64 = info["rate"].parse().unwrap();
            let channels: u64 = info["channels"].parse().unwrap();
            byte_rate.store(rate * channels * bytes, Ordering::Release);
        }
    }
    let status = child.wait().unwrap();
    child_done.store(true, Ordering::Release);
    let killed = watchdog.join().unwrap();
    if !opened.load(Ordering::Acquire) {
        // The child never opened the PCM: release the reader blocked in `open`.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    let raw = reader.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(!killed, "{label}: child hung and was killed: {stderr}");
    assert!(status.success(), "{label}: child failed: {stderr}");
    assert!(
        info.contains_key("format"),
        "{label}: child never reported its device: {stderr}"
    );

    let rate: u32 = info["rate"].parse().unwrap();
    let channels: usize = info["channels"].parse().unwrap();
    let period: usize = info["period"].parse().unwrap();
    assert!(period > 0, "{label}: device period unknown");
    let audio = decode(&raw, &info["format"], channels);
    Run {
        info,
        rate,
        period,
        audio,
    }
}

fn sample_bytes(format: &str) -> usize {
    match format {
        "i8" | "u8" => 1,
        "i16" | "u16" => 2,
        "i32" | "u32" | "f32" => 4,
        "i64" | "u64" | "f64" => 8,
        other => panic!("the device chose sample format `{other}`, which this test cannot decode"),
    }
}

/// Decodes native-endian interleaved samples to channel 0 as f32, checking every channel
/// carries the same signal.
fn decode(raw: &[u8], format: &str, channels: usize) -> Vec<f32> {
    let width = sample_bytes(format);
    let samples: Vec<f32> = raw
        .chunks_exact(width)
        .map(|b| match format {
            "i8" => f32::from(i8::from_ne_bytes([b[0]])) / 128.0,
            "u8" => (f32::from(b[0]) - 128.0) / 128.0,
            "i16" => f32::from(i16::from_ne_bytes([b[0], b[1]])) / 32768.0,
            "u16" => (f32::from(u16::from_ne_bytes([b[0], b[1]])) - 32768.0) / 32768.0,
            "i32" => i32::from_ne_bytes(b.try_into().unwrap()) as f32 / 2_147_483_648.0,
            "u32" => {
                (f64::from(u32::from_ne_bytes(b.try_into().unwrap())) / 2_147_483_648.0 - 1.0)
                    as f32
            }
            "f32" => f32::from_ne_bytes(b.try_into().unwrap()),
            "f64" => f64::from_ne_bytes(b.try_into().unwrap()) as f32,
            "i64" => (i64::from_ne_bytes(b.try_into().unwrap()) as f64 / 9.223_372e18) as f32,
            "u64" => (u64::from_ne_bytes(b.try_into().unwrap()) as f64 / 9.223_372e18 - 1.0) as f32,
            other => panic!("cannot decode `{other}`"),
        })
        .collect();
    let frames: Vec<&[f32]> = samples.chunks_exact(channels).collect();
    assert!(
        frames.iter().all(|f| f.iter().all(|&s| s == f[0])),
        "channels differ: the mono signal must go to every channel"
    );
    frames.iter().map(|f| f[0]).collect()
}

/// The utterance the children play, rendered offline at the device's rate by a fresh
/// `codereader-speak render` process. A fresh process, because espeak-ng carries state from
/// one synthesis to the next (its pitch flutter runs on), so only a process whose first
/// synthesis is this utterance produces the same samples as the child did.
fn reference(dir: &Path, voices: &Path, tag: &str, backend: &str, rate: u32) -> Vec<f32> {
    let wav = dir.join(format!("reference-{tag}-{backend}-{rate}.wav"));
    let output = Command::new(env!("CARGO_BIN_EXE_codereader-speak"))
        .args([
            "render",
            "--lang",
            tag,
            "--code",
            CODE,
            "--backend",
            backend,
            "--voice",
            "espeak",
        ])
        .arg("--voices")
        .arg(voices)
        .args(["--rate", &rate.to_string()])
        .arg("--out")
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (wav_rate, samples, _) = common::read_wav(&wav);
    assert_eq!(wav_rate, rate);
    samples
}

/// Compares `captured[start..]` with the sound part of `reference`: returns the correlation
/// over the reference's sound, after checking the lengths agree within one period.
fn compare(captured: &[f32], reference: &[f32], period: usize, what: &str) -> f64 {
    let (r0, r1) = sound_bounds(reference).unwrap();
    let (c0, c1) = sound_bounds(captured).unwrap_or_else(|| panic!("{what}: captured silence"));
    let (rlen, clen) = (r1 - r0, c1 - c0);
    assert!(
        rlen.abs_diff(clen) <= period,
        "{what}: captured {clen} samples of sound, rendered {rlen} (period {period})"
    );
    let c0 = align(captured, c0, &reference[r0..]);
    let n = rlen.min(captured.len() - c0);
    let r = correlation(&captured[c0..c0 + n], &reference[r0..r0 + n]);
    assert!(r > 0.99, "{what}: correlation {r:.4}");
    r
}

/// Where the sound starting near `c0` in `captured` lines up best with `reference` (the
/// silence threshold can cut a few samples differently in 16-bit and float audio).
fn align(captured: &[f32], c0: usize, reference: &[f32]) -> usize {
    let window = reference.len().min(4800);
    (c0.saturating_sub(32)..=c0 + 32)
        .filter(|&c| c + window <= captured.len())
        .max_by(|&a, &b| {
            let ra = correlation(&captured[a..a + window], &reference[..window]);
            let rb = correlation(&captured[b..b + window], &reference[..window]);
            ra.total_cmp(&rb)
        })
        .unwrap_or(c0)
}

fn check_full_play(run: &Run, dir: &Path, voices: &Path, tag: &str, backend: &str) {
    let what = format!("{tag}/{backend}");
    assert_eq!(
        run.number("underruns"),
        0,
        "{what}: the ring ran dry mid-utterance"
    );
    // Everything rendered into the ring reached the device: nothing dropped or repeated.
    assert_eq!(
        run.number("frames"),
        run.number("queued"),
        "{what}: frames lost"
    );
    let reference = reference(dir, voices, tag, backend, run.rate);
    assert!(
        run.audio.iter().all(|s| s.abs() < 0.999),
        "{what}: a sample at full scale"
    );
    let r = compare(&run.audio, &reference, run.period, &what);
    println!(
        "  {what}: {} Hz {} ch {} period {}: {} samples captured, correlation {r:.5}",
        run.rate,
        run.info["channels"],
        run.info["format"],
        run.period,
        run.audio.len()
    );
}

fn check_stop_and_replay(run: &Run, dir: &Path, voices: &Path) {
    let reference = reference(dir, voices, "en", "clips", run.rate);
    let (r0, r1) = sound_bounds(&reference).unwrap();
    let stopped_at = usize::try_from(run.number("stopped_at")).unwrap();
    let after_stop = usize::try_from(run.number("after_stop")).unwrap();
    // "At once": after `stop` returned, at most the callback already running played on.
    assert!(
        after_stop - stopped_at <= run.period,
        "{} frames played after stop (period {})",
        after_stop - stopped_at,
        run.period
    );
    assert_eq!(
        run.info.get("idle_after_stop").map(String::as_str),
        Some("true")
    );

    // Split the capture at the long silence the child leaves between stop and replay.
    let audio = &run.audio;
    let gap = run.rate as usize * usize::try_from(GAP_MS).unwrap() / 1000 * 2 / 3;
    let (c0, _) = sound_bounds(audio).unwrap();
    let mut quiet = 0;
    let mut split = None;
    for (i, s) in audio.iter().enumerate().skip(c0) {
        if s.abs() > common::SILENT {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet == gap {
                split = Some(i + 1 - gap);
                break;
            }
        }
    }
    let split = split.expect("no silence between the stopped utterance and the replay");
    let first = &audio[..split];
    let (f0, f1) = sound_bounds(first).unwrap();
    let heard = f1 - f0;
    // The stopped utterance: what was heard is the start of the utterance, and no more than
    // what had been played when stop took effect.
    assert!(
        heard <= after_stop + run.period,
        "heard {heard}, stopped after {after_stop}"
    );
    assert!(
        heard < (r1 - r0) / 2,
        "stop did not shorten the utterance: {heard} samples"
    );
    let f0 = align(first, f0, &reference[r0..]);
    let heard_from_aligned = f1 - f0;
    let r = correlation(&first[f0..f1], &reference[r0..r0 + heard_from_aligned]);
    assert!(
        r > 0.99,
        "stopped part differs from the utterance: correlation {r:.4}"
    );
    // The replay: the whole utterance again.
    let replay_r = compare(&audio[split..], &reference, run.period, "replay");
    println!(
        "  stop/replay: stop after {stopped_at} frames, {} more played, heard {heard}; replay correlation {replay_r:.5}",
        after_stop - stopped_at
    );
}

/// A machine whose default PCM is a sound card that does not exist: opening the player is a
/// clear `SpeechError::Device`, and the command line tool exits non-zero saying so.
fn check_missing_device(dir: &Path) {
    let conf = dir.join("no-card.asoundrc");
    std::fs::write(
        &conf,
        "pcm.!default { type hw; card 97 }\nctl.!default { type hw; card 97 }\n",
    )
    .unwrap();
    let alsa_path = format!("/usr/share/alsa/alsa.conf:{}", conf.display());
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "no-device")
        .env("ALSA_CONFIG_PATH", &alsa_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("device error: audio device:"), "{stdout}");
    let output = Command::new(env!("CARGO_BIN_EXE_codereader-speak"))
        .args(["play", "--lang", "da", "--code", CODE, "--voices"])
        .arg(voices_dir())
        .env("ALSA_CONFIG_PATH", &alsa_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "played without a sound card");
    assert!(stderr.contains("audio device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Idle, the stream was paused (the audio thread stopped waking), and the next request
/// resumed it and played within 100 ms of what the first one took on a running stream (the
/// `file` plugin cannot pause, so this is the close-and-reopen path: ~10 ms more here).
fn check_idle_pause(run: &Run) {
    assert_eq!(
        run.info.get("paused_when_idle").map(String::as_str),
        Some("true"),
        "{:?}",
        run.info
    );
    let idle_callbacks = run.number("idle_callbacks");
    let running_callbacks = run.number("running_callbacks");
    assert!(
        idle_callbacks <= 1 && running_callbacks >= 10,
        "callbacks in a second: {running_callbacks} running, {idle_callbacks} paused"
    );
    let first = run.number("first_ms");
    let resumed = run.number("resume_ms");
    println!(
        "  idle pause: {running_callbacks} callbacks/s running, {idle_callbacks} paused; first \
         frame {first} ms after play on a running stream, {resumed} ms after a resume"
    );
    assert!(
        resumed <= first + 100,
        "first sound {resumed} ms after a resume, {first} ms on a running stream"
    );
    assert_eq!(
        run.info.get("paused_after").map(String::as_str),
        Some("false")
    );
}

/// Child side: the English pack's `espeak` voice from its clips (`VOICES_ENV`) on ALSA's
/// default device, whose format is reported for the parent.
fn open_clip_player() -> (VoicePack, LivePlayer) {
    let voices = PathBuf::from(std::env::var_os(VOICES_ENV).unwrap());
    let pack = VoicePack::load(&voices.join("en"))
        .unwrap()
        .with_voice("espeak")
        .unwrap();
    let player = LivePlayer::open_default(Box::new(ClipSynth::load(&pack).unwrap())).unwrap();
    let info = player.info();
    println!(
        "device rate={} channels={} format={} period={}",
        info.sample_rate.hz(),
        info.channels,
        info.sample_format,
        info.period_frames.unwrap_or(0)
    );
    (pack, player)
}

/// Child side of `idle-pause`: plays a prompt on a running stream, idles until paused,
/// counts callbacks, plays again; reports how long each took to its first frame.
fn child_idle_pause() {
    let (pack, player) = open_clip_player();
    player.set_idle_pause(Duration::from_millis(300)).unwrap();
    let utterance = Utterance::prompt(&pack, codereader_speech::Prompt::VolumeUp);
    let time_to_sound = |player: &LivePlayer| {
        let before = player.frames_played();
        let t0 = Instant::now();
        player.play(utterance.clone(), Settings::default()).unwrap();
        let deadline = t0 + Duration::from_secs(5);
        while player.frames_played() == before {
            assert!(Instant::now() < deadline, "no sound");
            thread::sleep(Duration::from_micros(200));
        }
        let ms = t0.elapsed().as_millis();
        assert!(player.wait_until_idle(Duration::from_secs(10)));
        ms
    };
    let c0 = player.callbacks();
    thread::sleep(Duration::from_millis(1000));
    let running = player.callbacks() - c0;
    let first_ms = time_to_sound(&player);
    thread::sleep(Duration::from_millis(1000));
    let paused = player.is_paused();
    let c1 = player.callbacks();
    thread::sleep(Duration::from_millis(1000));
    let idle = player.callbacks() - c1;
    let resume_ms = time_to_sound(&player);
    println!(
        "paused_when_idle={paused} running_callbacks={running} idle_callbacks={idle} \
         first_ms={first_ms} resume_ms={resume_ms} paused_after={}",
        player.is_paused()
    );
    assert!(!player.failed(), "stream error");
}

/// Child side: plays, stops after ~0.8 s of audio, waits, replays; reports counters.
fn child(scenario: &str) {
    if scenario == "idle-pause" {
        child_idle_pause();
        return;
    }
    if scenario == "no-device" {
        let pack = VoicePack::load(&voices_dir().join("da")).unwrap();
        let synth = codereader_speech::Espeak::shared()
            .unwrap()
            .voice(&pack)
            .unwrap();
        match LivePlayer::open_default(Box::new(synth)) {
            Err(e @ codereader_speech::SpeechError::Device(_)) => println!("device error: {e}"),
            Err(e) => panic!("wrong error: {e:?}"),
            Ok(player) => panic!("opened a card that does not exist: {:?}", player.info()),
        }
        return;
    }
    assert_eq!(scenario, "stop-replay", "unknown child scenario");
    let (pack, player) = open_clip_player();
    let info = player.info().clone();
    let utterance = Utterance::code(&pack, CODE, CodeIntro::First).unwrap();
    player.play(utterance, Settings::default()).unwrap();
    let target = u64::from(info.sample_rate.hz()) * 8 / 10;
    let deadline = Instant::now() + Duration::from_secs(20);
    while player.frames_played() < target {
        assert!(Instant::now() < deadline, "playback did not start");
        thread::sleep(Duration::from_millis(1));
    }
    player.stop();
    let stopped_at = player.frames_played();
    thread::sleep(Duration::from_millis(100));
    let after_stop = player.frames_played();
    let idle = player.wait_until_idle(Duration::from_secs(2));
    println!("stopped_at={stopped_at} after_stop={after_stop} idle_after_stop={idle}");
    thread::sleep(Duration::from_millis(GAP_MS));
    player.replay(Settings::default()).unwrap();
    assert!(
        player.wait_until_idle(Duration::from_secs(30)),
        "replay did not finish"
    );
    thread::sleep(Duration::from_millis(500));
    assert!(!player.failed(), "stream error");
    println!("underruns={}", player.underruns());
}
