//! HOTP safety under kill -9: 200 `speak` runs, many killed at random moments (while loading,
//! while writing the state, while synthesising). No counter may be spoken twice, and the state
//! file must parse after every kill. A killed writer's temporary file (which holds the
//! secret) is removed by the next write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use codereader_e2e::{codereader_bin, voices_dir};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const RUNS: usize = 200;
const SEED: u64 = 0x4b11_1e9d;

fn next_counter(state: &std::path::Path) -> u64 {
    let out = Command::new(codereader_bin())
        .arg("status")
        .env("CODEREADER_STATE", state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "state unreadable after a kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("next counter: "))
        .unwrap_or_else(|| panic!("no counter in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn two_hundred_speaks_with_kill_9_never_reuse_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = "otpauth://hotp/Bank:bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=0";
    let out = Command::new(codereader_bin())
        .args(["enroll", "--uri", uri])
        .env("CODEREADER_STATE", &state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let speak = |i: usize| {
        Command::new(codereader_bin())
            .args(["speak", "--wav"])
            .arg(dir.path().join(format!("{i}.wav")))
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long one uninterrupted speak takes here, so that kills land all over it.
    let t = Instant::now();
    let out = speak(RUNS).wait_with_output().unwrap();
    assert!(out.status.success());
    // A speak takes some tens of milliseconds, so a busy machine can make runs several times
    // slower than this first one: the estimate follows what the runs take (up when a kill
    // lands after the estimated end, down when a run ends well before it), so kills keep
    // landing all over a run and both outcomes stay common however loaded the machine is.
    let first = t.elapsed();
    let mut full = first;
    let mut spoken: Vec<u64> = vec![0];
    let mut rng = StdRng::seed_from_u64(SEED);
    let (mut killed, mut finished) = (0, 0);
    for i in 0..RUNS {
        let before = next_counter(&state);
        let mut child = speak(i);
        let share = rng.random_range(0.0..1.2);
        thread::sleep(full.mul_f64(share));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
            if share < 0.5 {
                full = full.mul_f64(0.9).max(first / 2);
            }
        } else {
            killed += 1;
            if share >= 1.0 {
                full = full.mul_f64(1.25).min(first * 20);
            }
        }
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        let after = next_counter(&state);
        // The counter only ever moves forward, by at most one per run.
        assert!(
            after == before || after == before + 1,
            "run {i}: {before} -> {after}"
        );
        for line in log.lines() {
            if let Some(n) = line.strip_prefix("codereader: speaking HOTP counter ") {
                let n: u64 = n.trim().parse().unwrap();
                // Said only after the next counter was stored.
                assert!(
                    n < after,
                    "run {i}: spoke {n} but the state says next is {after}"
                );
                spoken.push(n);
            }
        }
    }
    // Whatever temporary files the kills left, the next write removes them.
    let left = temp_files(&state);
    let out = speak(RUNS + 1).wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        temp_files(&state),
        Vec::<String>::new(),
        "left before: {left:?}"
    );
    let unique: BTreeSet<u64> = spoken.iter().copied().collect();
    assert_eq!(
        unique.len(),
        spoken.len(),
        "a counter was spoken twice: {spoken:?}"
    );
    assert!(
        killed >= RUNS / 4,
        "only {killed} runs were killed: the test did not test"
    );
    assert!(finished >= RUNS / 10, "only {finished} runs finished");
    println!(
        "{killed} killed, {finished} finished, {} codes spoken",
        spoken.len()
    );
}

/// The temporary files in `state` (`.NAME.PID-N.tmp`).
fn temp_files(state: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// A `speak` killed with SIGKILL in the middle of writing the token leaves
/// `.token.toml.PID-N.tmp` holding the secret; the next `speak` removes it. (The moment of a
/// write is a few milliseconds, so the file a kill leaves there is put in place by hand, named
/// for the killed process, with the content a write was putting there.)
#[test]
fn a_writer_killed_mid_write_leaves_no_secret_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = "otpauth://hotp/Bank:bob?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=0";
    let run = |args: &[&str]| {
        let mut c = Command::new(codereader_bin());
        c.args(args)
            .env("CODEREADER_STATE", &state)
            .env("CODEREADER_VOICES", voices_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    assert!(run(&["enroll", "--uri", uri]).status().unwrap().success());
    let wav = dir.path().join("code.wav");
    let wav = wav.to_str().unwrap();
    let mut killed = run(&["speak", "--wav", wav]).spawn().unwrap();
    let pid = killed.id();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let token = std::fs::read(state.join("token.toml")).unwrap();
    let left = state.join(format!(".token.toml.{pid}-0.tmp"));
    std::fs::write(&left, &token).unwrap();
    // A live writer's file (this test process is alive) is not touched.
    let busy = state.join(format!(".token.toml.{}-7.tmp", std::process::id()));
    std::fs::write(&busy, b"busy").unwrap();
    assert!(run(&["speak", "--wav", wav]).status().unwrap().success());
    assert!(!left.exists(), "the killed writer's file is still there");
    assert!(busy.exists(), "a live writer's file was removed");
}
