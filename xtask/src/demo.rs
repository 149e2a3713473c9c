//! `cargo xtask demo`: the README's main job. Enrols a demo token in `target/demo/state` and
//! speaks its current code on the sound card; on a machine without one, writes the spoken code
//! to `target/demo/code.wav` and says so.
//!
//! The demo secret is public (RFC 6238's test secret), so nothing real is exposed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{cargo, packages, run};

const DEMO_URI: &str = "otpauth://totp/codereader%20demo:demo?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=codereader%20demo&algorithm=SHA1&digits=6&period=30";

/// `codereader`'s exit status when there is no audio device.
const EXIT_NO_AUDIO: i32 = 6;

/// The workspace root (xtask lives in `<root>/xtask`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn codereader(bin: &Path, state: &Path, args: &[&str]) -> Result<Output, String> {
    Command::new(bin)
        .args(args)
        .env("CODEREADER_STATE", state)
        .env("CODEREADER_VOICES", root().join("voices"))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))
}

fn check(step: &str, out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{step} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn demo(_args: &[String]) -> Result<(), String> {
    packages::ensure(packages::DEMO)?;
    run(
        "building the device program (codereader)",
        cargo().args(["build", "--quiet", "--package", "codereader"]),
    )?;
    let bin = target_dir().join("debug/codereader");
    let work = target_dir().join("demo");
    let state = work.join("state");
    let enrolled = codereader(
        &bin,
        &state,
        &[
            "enroll",
            "--replace",
            "--serial",
            "0000-4711",
            "--uri",
            DEMO_URI,
        ],
    )?;
    println!("xtask: {}", check("enrolling the demo token", &enrolled)?);
    let code = check("computing the code", &codereader(&bin, &state, &["code"])?)?;
    println!("xtask: the demo token's current code is {code}; speaking it");
    let spoken = codereader(&bin, &state, &["speak"])?;
    if spoken.status.success() {
        println!("xtask: spoken on the sound card");
        return Ok(());
    }
    if spoken.status.code() != Some(EXIT_NO_AUDIO) {
        return Err(check("speaking the code", &spoken)
            .err()
            .unwrap_or_default());
    }
    let wav = work.join("code.wav");
    let wav_arg = wav.to_string_lossy().into_owned();
    check(
        "speaking the code into a WAV file",
        &codereader(&bin, &state, &["speak", "--wav", &wav_arg])?,
    )?;
    println!(
        "xtask: this machine has no sound card, so the spoken code went to {}\n\
         xtask: play it elsewhere, or with `aplay {}` where there is sound",
        wav.display(),
        wav.display()
    );
    Ok(())
}
