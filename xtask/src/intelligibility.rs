//! `cargo xtask intelligibility`: how often an offline recognizer hears a spoken code exactly,
//! per English voice, on the same seeded random six-digit codes.
//!
//! Each voice's clips are rendered at speed step 0 with its engine and the codes spoken
//! through the speech crate's normal pipeline (`codereader-speak codes`); then
//! `crates/speech/tools/recognize_digits.py` (PocketSphinx from PyPI with its bundled en-us
//! model, in a virtualenv under `target/`; nothing is downloaded at run time besides the
//! pinned wheel on first use) segments each code by energy and decodes each digit against a
//! one-word digit grammar. The method is documented in that script and `docs/voices.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, packages, run};

/// The PocketSphinx release the figures in `docs/voices.md` were measured with.
pub(crate) const POCKETSPHINX: &str = "pocketsphinx==5.1.1";

/// Voices the task measures besides the packs' own: (label, engine spec).
const CANDIDATES: &[(&str, &str)] = &[
    ("espeak-ng en-us", "espeak-ng:en-us"),
    ("espeak-ng en-gb-x-rp", "espeak-ng:en-gb-x-rp"),
    ("espeak-ng en+f3", "espeak-ng:en+f3"),
    ("flite kal", "flite:kal"),
    ("flite kal16", "flite:kal16"),
    ("flite awb", "flite:awb"),
    ("flite rms", "flite:rms"),
    ("festival kal_diphone", "festival:kal_diphone"),
    (
        "festival cmu_us_slt_arctic_hts",
        "festival:cmu_us_slt_arctic_hts",
    ),
];

/// The workspace root (xtask's parent).
pub(crate) fn root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "xtask has no parent directory".to_owned())
}

/// A Python with `pocketsphinx` importable: a virtualenv in `target/asr-venv`, created and
/// filled with the pinned wheel from PyPI when missing.
pub(crate) fn recognizer_python() -> Result<PathBuf, String> {
    let venv = root()?.join("target/asr-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import pocketsphinx"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.is_file() && ready(&python) {
        return Ok(python);
    }
    run(
        "python3 -m venv target/asr-venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    )?;
    run(
        &format!("pip install {POCKETSPHINX}"),
        Command::new(&python).args(["-m", "pip", "install", "-q", POCKETSPHINX]),
    )?;
    if ready(&python) {
        Ok(python)
    } else {
        Err("pocketsphinx installed but cannot be imported".into())
    }
}

/// The English pack's voices: (label, voice name).
fn shipped_voices(voices: &Path) -> Result<Vec<(String, String)>, String> {
    let file = voices.join("en/voice.toml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // The tool reads `[voices]` properly; here a line scan for `NAME = { engine = ... }`
    // keeps xtask free of a TOML dependency.
    let mut out = Vec::new();
    let mut in_voices = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_voices = line == "[voices]";
        } else if in_voices && line.contains("engine") {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim().to_owned();
                out.push((format!("en/{name} (shipped)"), name));
            }
        }
    }
    Ok(out)
}

/// `--count N --seed S --speed STEP --only ID,...`: `--speed` is the device's rate step the
/// codes are spoken at (default 0); `--only` measures just the voices named, by their id: a
/// shipped English voice's name (`flite-slt`, `espeak`) or a candidate's engine spec
/// (`espeak-ng:en-us`, `flite:rms`, ...).
pub(crate) fn intelligibility(args: &[String]) -> Result<(), String> {
    let mut count = "100".to_owned();
    let mut seed = "7".to_owned();
    let mut speed = "0".to_owned();
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--count" => count.clone_from(value),
            "--seed" => seed.clone_from(value),
            "--speed" => {
                let step: i8 = value
                    .parse()
                    .map_err(|_| format!("--speed {value}: not a step from -3 to 3"))?;
                if !(-3..=3).contains(&step) {
                    return Err(format!("--speed {value}: not a step from -3 to 3"));
                }
                speed.clone_from(value);
            }
            "--only" => only = Some(value.split(',').map(|v| v.trim().to_owned()).collect()),
            other => {
                return Err(format!(
                    "unknown option {other}; use --count N --seed S --speed STEP --only ID,..."
                ));
            }
        }
    }
    packages::ensure(packages::VOICES)?;
    packages::ensure(packages::INTELLIGIBILITY)?;
    let python = recognizer_python()?;
    let root = root()?;
    let voices = root.join("voices");
    let out = root.join("target/intelligibility");
    let _ = std::fs::remove_dir_all(&out);
    let mut runs: Vec<(String, PathBuf)> = Vec::new();
    // (label, id for --only, codereader-speak's voice selector)
    let mut jobs: Vec<(String, String, Vec<String>)> = shipped_voices(&voices)?
        .into_iter()
        .map(|(label, name)| (label, name.clone(), vec!["--voice".to_owned(), name]))
        .collect();
    jobs.extend(CANDIDATES.iter().map(|(label, spec)| {
        (
            (*label).to_owned(),
            (*spec).to_owned(),
            vec!["--engine".into(), (*spec).into()],
        )
    }));
    if let Some(only) = &only {
        if let Some(unknown) = only.iter().find(|id| !jobs.iter().any(|j| &j.1 == *id)) {
            let ids: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
            return Err(format!(
                "--only: no voice `{unknown}`; the ids are: {}",
                ids.join(", ")
            ));
        }
        jobs.retain(|j| only.contains(&j.1));
    }
    let jobs: Vec<(String, Vec<String>)> = jobs.into_iter().map(|(l, _, s)| (l, s)).collect();
    for (i, (label, selector)) in jobs.into_iter().enumerate() {
        let dir = out.join(format!("{i:02}"));
        run(
            &format!("render {count} codes: {label}"),
            cargo()
                .args(["run", "--quiet", "--package", "codereader-speech"])
                .args(["--bin", "codereader-speak", "--", "codes", "--voices"])
                .arg(&voices)
                .args(["--lang", "en", "--count", &count, "--seed", &seed])
                .args(["--speed", &speed, "--out"])
                .arg(&dir)
                .args(&selector),
        )?;
        runs.push((label, dir));
    }
    println!("xtask: recognising (PocketSphinx, one-word digit grammar per energy segment)");
    let output = Command::new(&python)
        .arg(root.join("crates/speech/tools/recognize_digits.py"))
        .args(["--speed", &speed])
        .args(runs.iter().map(|(_, d)| d))
        .output()
        .map_err(|e| format!("cannot run the recognizer: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "recognizer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    println!("\n| voice | codes heard exactly | digits heard right | first misses (said->heard) |");
    println!("|---|---|---|---|");
    for ((label, _), line) in runs
        .iter()
        .zip(text.lines().filter(|l| l.starts_with("RESULT")))
    {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("?")
                .to_owned()
        };
        let misses = line.split_once("misses=").map_or("", |(_, m)| m).trim();
        println!(
            "| {label} | {} ({}/{}) | {} | {} |",
            field("share="),
            field("exact="),
            field("n="),
            field("digits="),
            misses
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "\nN = {count} random six-digit codes, seed {seed}, speed step {speed}, the same for \
         every voice."
    );
    Ok(())
}
