//! `cargo xtask demo`: the README's main job. Renders the clips of the clearest voice (the
//! English default, flite `slt`; once, with the renderer's progress), enrols a demo token in
//! `target/demo/state` and speaks its current code in that voice on the sound card; on a
//! machine without one, writes the spoken code to `target/demo/code.wav` and says so. It says
//! which voice spoke and shows `codereader`'s own messages.
//!
//! The demo secret is public (RFC 6238's test secret), so nothing real is exposed.

use std::path::Path;
use std::process::{Command, Output};

use crate::{cargo, packages, root, run, target_dir};

const DEMO_URI: &str = "otpauth://totp/codereader%20demo:demo?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=codereader%20demo&algorithm=SHA1&digits=6&period=30";

/// `codereader`'s exit status when there is no audio device.
const EXIT_NO_AUDIO: i32 = 6;

/// The demo's own config: English, whose default voice (flite `slt`, from rendered clips)
/// is the clearest measured (`docs/voices.md`); everything else at its default.
const DEMO_CONFIG: &str = "# Written by `cargo xtask demo`.\nlanguage = \"en\"\n";

fn codereader(bin: &Path, work: &Path, args: &[&str]) -> Result<Output, String> {
    Command::new(bin)
        .args(args)
        .env("CODEREADER_STATE", work.join("state"))
        .env("CODEREADER_CONFIG", work.join("config.toml"))
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

/// Shows `codereader`'s own messages (warnings, what it said), as it wrote them.
fn show_messages(out: &Output) {
    let text = String::from_utf8_lossy(&out.stderr);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }
}

/// The English voice `codereader` speaks with, and whether its clips are rendered.
fn english_voice(bin: &Path, work: &Path) -> Result<(String, String, bool), String> {
    let listing = check(
        "listing the voices",
        &codereader(bin, work, &["settings", "--list-voices"])?,
    )?;
    speaking_voice(&listing, "en").ok_or_else(|| format!("no English voice in:\n{listing}"))
}

/// From `settings --list-voices`, the voice that speaks `tag` (marked `*`), its notes and
/// whether it speaks from rendered clips: `  * flite-slt (flite:slt; pack default; clips at
/// speed steps -3, ...)`.
fn speaking_voice(listing: &str, tag: &str) -> Option<(String, String, bool)> {
    let speaking = listing
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{tag} (")))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| l.trim_start().strip_prefix("* "))?;
    let (name, notes) = speaking
        .split_once(" (")
        .map_or((speaking, ""), |(n, rest)| (n, rest.trim_end_matches(')')));
    let rendered = notes.contains("clips at speed steps");
    Some((name.to_owned(), notes.to_owned(), rendered))
}

pub(crate) fn demo(_args: &[String]) -> Result<(), String> {
    packages::ensure(packages::DEMO)?;
    run(
        "building the device program (codereader) and the clip renderer (codereader-speak)",
        cargo().args([
            "build",
            "--quiet",
            "--package",
            "codereader",
            "--package",
            "codereader-speech",
        ]),
    )?;
    let bin = target_dir().join("debug/codereader");
    let work = target_dir().join("demo");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let config = work.join("config.toml");
    std::fs::write(&config, DEMO_CONFIG).map_err(|e| format!("{}: {e}", config.display()))?;
    // The clearest voice needs its clips: without them live espeak-ng would speak, which an
    // outside recognizer heard wrong (docs/voices.md).
    let (voice, _, rendered) = english_voice(&bin, &work)?;
    if !rendered {
        let voices = root().join("voices");
        run(
            &format!(
                "rendering the clips of `{voice}`, English's default and clearest voice, at \
                 every speed step into voices/en/clips/{voice}/ (once; about 20 s)"
            ),
            Command::new(target_dir().join("debug/codereader-speak"))
                .args(["clips", "--lang", "en", "--voice", &voice, "--voices"])
                .arg(&voices),
        )?;
    }
    let (voice, notes, rendered) = english_voice(&bin, &work)?;
    if !rendered {
        return Err(format!(
            "the English voice `{voice}` still cannot speak from clips ({notes})"
        ));
    }
    let enrolled = codereader(
        &bin,
        &work,
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
    let code = check("computing the code", &codereader(&bin, &work, &["code"])?)?;
    println!("xtask: the demo token's current code is {code}; speaking it");
    let spoken = codereader(&bin, &work, &["speak"])?;
    show_messages(&spoken);
    let said = |out: &Output| -> Result<(), String> {
        println!("xtask: spoken in English by the voice `{voice}` ({notes})");
        if String::from_utf8_lossy(&out.stderr).contains("saying `code_changing`") {
            let next = check("computing the code", &codereader(&bin, &work, &["code"])?)?;
            println!(
                "xtask: that code had under 10 s left, so codereader said it is about to \
                 change and spoke the next one when it began: {next}"
            );
        }
        Ok(())
    };
    if spoken.status.success() {
        println!("xtask: spoken on the sound card");
        return said(&spoken);
    }
    if spoken.status.code() != Some(EXIT_NO_AUDIO) {
        return Err(check("speaking the code", &spoken)
            .err()
            .unwrap_or_default());
    }
    let wav = work.join("code.wav");
    let wav_arg = wav.to_string_lossy().into_owned();
    let written = codereader(&bin, &work, &["speak", "--wav", &wav_arg])?;
    show_messages(&written);
    check("speaking the code into a WAV file", &written)?;
    println!(
        "xtask: this machine has no sound card, so the spoken code went to {}\n\
         xtask: play it elsewhere, or with `aplay {}` where there is sound",
        wav.display(),
        wav.display()
    );
    said(&written)
}

#[cfg(test)]
mod tests {
    use super::speaking_voice;

    /// The listing as `codereader settings --list-voices` writes it, before and after the
    /// clips are rendered.
    #[test]
    fn the_speaking_voice_and_its_clips_are_read_from_the_listing() {
        let before = "da (Dansk): speaking espeak\n  * espeak (espeak-ng:da; pack default; no \
                      clips: live espeak-ng)\nen (English): speaking flite-slt\n  * flite-slt \
                      (flite:slt; pack default; NO CLIPS: live espeak-ng `en` speaks instead; \
                      render them with `cargo xtask voices en`)\n    espeak (espeak-ng:en; no \
                      clips: live espeak-ng)\n";
        let (name, _, rendered) = speaking_voice(before, "en").unwrap();
        assert_eq!((name.as_str(), rendered), ("flite-slt", false));
        let after = before.replace(
            "NO CLIPS: live espeak-ng `en` speaks instead; render them with `cargo xtask \
             voices en`",
            "clips at speed steps -3, -2, -1, 0, 1, 2, 3",
        );
        let (name, notes, rendered) = speaking_voice(&after, "en").unwrap();
        assert_eq!((name.as_str(), rendered), ("flite-slt", true));
        assert!(notes.starts_with("flite:slt; pack default;"), "{notes}");
        assert_eq!(speaking_voice(&after, "fr"), None);
        let (name, _, rendered) = speaking_voice(&after, "da").unwrap();
        assert_eq!((name.as_str(), rendered), ("espeak", false));
    }
}
