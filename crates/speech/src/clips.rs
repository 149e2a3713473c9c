//! Pre-rendering a pack's clips from a synthesiser (what `cargo xtask voices` calls).

use std::path::Path;

use crate::dsp::{to_f32, trim_silence};
use crate::error::SpeechError;
use crate::pack::{ClipSet, ClipSource, VoicePack};
use crate::plan::{PhraseKey, Speed};
use crate::sink::{Sink, WavSink};
use crate::synth::Synth;

/// Renders every digit word and prompt of `pack` at each of `speeds` with `synth` into
/// `out_dir` (normally `<pack>/clips`), as mono 16-bit WAVs at the synthesiser's rate, with
/// leading and trailing silence trimmed, then writes `clips.toml` declaring them as
/// `source = "espeak-ng"`. Returns the number of clips written. Reload the pack afterwards to
/// validate and use them.
///
/// # Errors
/// Synthesis or file errors.
pub fn render_clips(
    pack: &VoicePack,
    synth: &mut dyn Synth,
    speeds: &[Speed],
    out_dir: &Path,
) -> Result<usize, SpeechError> {
    render_clips_from(
        pack,
        synth,
        ClipSource::EspeakNg,
        speeds,
        out_dir,
        &mut |_, _| {},
    )
}

/// [`render_clips`] for any engine: the manifest declares `source`, and `progress` is told
/// (done, total) after each clip.
///
/// # Errors
/// Synthesis or file errors.
pub fn render_clips_from(
    pack: &VoicePack,
    synth: &mut dyn Synth,
    source: ClipSource,
    speeds: &[Speed],
    out_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize, SpeechError> {
    let total = speeds.len() * PhraseKey::all().count();
    std::fs::create_dir_all(out_dir).map_err(|source| SpeechError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    // Until the new set is complete, no manifest claims the directory holds a valid set.
    let file = out_dir.join("clips.toml");
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SpeechError::Io {
                path: file,
                source: e,
            });
        }
        _ => {}
    }
    let rate = synth.sample_rate();
    let mut count = 0;
    for &speed in speeds {
        for key in PhraseKey::all() {
            let mut raw = Vec::new();
            synth.speak(&pack.phrase(key), speed, &mut |chunk| {
                raw.extend_from_slice(chunk);
                true
            })?;
            let samples = to_f32(&raw);
            let trimmed = trim_silence(&samples, rate.samples_for_ms(5));
            let mut sink = WavSink::create(&out_dir.join(ClipSet::file_name(key, speed)), rate)?;
            // `to_f32` and the sink's `to_i16` are exact inverses: the clip holds the
            // synthesiser's own samples.
            sink.write(trimmed)?;
            sink.finish()?;
            count += 1;
            progress(count, total);
        }
    }
    let steps: Vec<String> = speeds.iter().map(|s| s.step().to_string()).collect();
    let manifest = format!(
        "# Written by codereader_speech::render_clips; do not edit by hand.\n\
         source = \"{}\"\nsample_rate = {}\nspeeds = [{}]\n",
        source.name(),
        rate.hz(),
        steps.join(", ")
    );
    let tmp = out_dir.join("clips.toml.tmp");
    std::fs::write(&tmp, manifest)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|source| SpeechError::Io { path: file, source })?;
    Ok(count)
}
