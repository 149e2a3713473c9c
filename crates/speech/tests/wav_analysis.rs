//! Acceptance: a fixed code in `da` and `en`, with both backends, rendered to WAV and analysed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codereader_speech::{
    ClipSynth, CodeIntro, Espeak, Prompt, Renderer, SampleRate, Segment, Settings, Speed, Synth,
    Utterance, VoicePack, Volume,
};
use common::{pack_with_clips, read_wav, rms, segments, temp_dir, voices_dir};

const CODE: &str = "471293";

/// Renders CODE to a WAV at `rate` and checks everything the acceptance list asks for.
fn check(pack: &VoicePack, synth: &mut dyn Synth, rate: u32, label: &str) {
    let tmp = temp_dir(label);
    let path = tmp.path().join("code.wav");
    let utterance = Utterance::code(pack, CODE, CodeIntro::First).unwrap();
    let report = Renderer::new(SampleRate::new(rate).unwrap())
        .render_to_wav(&utterance, synth, Settings::default(), &path)
        .unwrap();
    let (wav_rate, samples, peak) = read_wav(&path);

    assert_eq!(wav_rate, rate, "{label}: sample rate");
    assert_eq!(samples.len(), report.samples, "{label}: reported length");
    assert!(peak < 32767, "{label}: a sample reached full scale");

    let (lo, hi) = pack.six_digit_code_ms();
    let ms = samples.len() as u64 * 1000 / u64::from(rate);
    assert!(
        (u64::from(lo)..=u64::from(hi)).contains(&ms),
        "{label}: {ms} ms outside {lo}..{hi}"
    );

    // Find where the intro ends and the end earcon starts from the plan's spans, then let
    // energy segmentation alone find the digits between them.
    let segs = utterance.segments();
    let intro = report
        .spans
        .iter()
        .find(|s| matches!(&segs[s.index], Segment::Speech(p) if p.key == codereader_speech::PhraseKey::Prompt(Prompt::Intro)))
        .unwrap();
    let end_earcon = report.spans.last().unwrap();
    let digits_region = &samples[intro.end..end_earcon.start];
    let found = segments(digits_region, rate, 120);
    assert_eq!(found.len(), 6, "{label}: digit segments {found:?}");
    // The same without any help from the plan: the whole file segments into start earcon,
    // intro, six digits, end earcon, and the six are the ones found above.
    let whole = segments(&samples, rate, 120);
    assert_eq!(
        whole.len(),
        9,
        "{label}: segments of the whole file {whole:?}"
    );
    // Both segmentations are on 10 ms frame grids, offset from each other. Each puts a
    // boundary within one frame of where the energy crosses the threshold (a frame that
    // straddles it may fall either way), so the two may differ by up to two frames.
    let tolerance = 2 * (rate as usize / 100);
    for (w, f) in whole[2..8].iter().zip(&found) {
        let (start, end) = (f.start + intro.end, f.end + intro.end);
        assert!(
            w.start.abs_diff(start) <= tolerance && w.end.abs_diff(end) <= tolerance,
            "{label}: {w:?} vs {start}..{end}"
        );
    }

    let gaps: Vec<usize> = found.windows(2).map(|w| w[1].start - w[0].end).collect();
    let group_gap = gaps[2];
    let max_digit_gap = gaps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, g)| *g)
        .max()
        .unwrap();
    assert!(
        group_gap > max_digit_gap + (rate as usize) / 10,
        "{label}: group pause {group_gap} not longer than digit pauses {gaps:?}"
    );
}

#[test]
fn espeak_codes_in_danish_and_english_analyse_correctly() {
    let espeak = Espeak::shared().unwrap();
    for (tag, rate) in [
        ("da", 22_050),
        ("en", 16_000),
        ("da", 48_000),
        ("en", 44_100),
    ] {
        let pack = VoicePack::load(&voices_dir().join(tag)).unwrap();
        let mut synth = espeak.voice(&pack).unwrap();
        check(&pack, &mut synth, rate, &format!("espeak-{tag}-{rate}"));
    }
}

#[test]
fn clip_codes_in_danish_and_english_analyse_correctly() {
    let root = temp_dir("clip-packs");
    for (tag, rate) in [("da", 22_050), ("en", 48_000)] {
        let pack = pack_with_clips(root.path(), tag, &[Speed::new(0)]);
        let mut synth = ClipSynth::load(&pack).unwrap();
        check(&pack, &mut synth, rate, &format!("clips-{tag}-{rate}"));
    }
}

#[test]
fn each_volume_step_changes_rms_by_the_step_size() {
    let pack = VoicePack::load(&voices_dir().join("da")).unwrap();
    let mut synth = Espeak::shared().unwrap().voice(&pack).unwrap();
    let utterance = Utterance::code(&pack, CODE, CodeIntro::First).unwrap();
    let mut renderer = Renderer::new(SampleRate::ESPEAK);
    let mut previous: Option<f64> = None;
    let mut quietest: Option<f64> = None;
    let mut step = Volume::MIN;
    loop {
        let settings = Settings {
            volume: step,
            ..Settings::default()
        };
        let (samples, _) = renderer
            .render_to_vec(&utterance, &mut synth, settings)
            .unwrap();
        assert!(
            samples
                .iter()
                .all(|s| s.abs() <= codereader_speech::dsp::CEILING)
        );
        let level = 20.0 * rms(&samples).log10();
        if let Some(prev) = previous {
            let delta = level - prev;
            assert!(
                (delta - f64::from(Volume::STEP_DB)).abs() <= 0.5,
                "step {} changed RMS by {delta:.2} dB",
                step.step()
            );
        }
        previous = Some(level);
        quietest.get_or_insert(level);
        if step == Volume::MAX {
            break;
        }
        step = step.louder();
    }
    // The whole range, measured: at least 18 dB (EN 301 549 8.2.1).
    let range = previous.unwrap() - quietest.unwrap();
    assert!(range >= 18.0, "volume range {range:.1} dB");
    assert!((range - f64::from(Volume::MAX.gain_db() - Volume::MIN.gain_db())).abs() < 0.5);
}

#[test]
fn faster_speed_is_shorter_and_slower_is_longer() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    let mut synth = Espeak::shared().unwrap().voice(&pack).unwrap();
    let utterance = Utterance::code(&pack, CODE, CodeIntro::First).unwrap();
    let mut renderer = Renderer::new(SampleRate::ESPEAK);
    let lengths: Vec<usize> = Speed::ALL
        .iter()
        .map(|&speed| {
            let settings = Settings {
                speed,
                ..Settings::default()
            };
            renderer
                .render_to_vec(&utterance, &mut synth, settings)
                .unwrap()
                .1
                .samples
        })
        .collect();
    assert!(lengths.windows(2).all(|w| w[1] < w[0]), "{lengths:?}");
}

#[test]
fn every_prompt_renders_audible_speech_in_both_languages() {
    let espeak = Espeak::shared().unwrap();
    for tag in ["da", "en"] {
        let pack = VoicePack::load(&voices_dir().join(tag)).unwrap();
        let mut synth = espeak.voice(&pack).unwrap();
        let mut renderer = Renderer::new(SampleRate::ESPEAK);
        for prompt in Prompt::ALL {
            let utterance = Utterance::prompt(&pack, prompt);
            let (samples, _) = renderer
                .render_to_vec(&utterance, &mut synth, Settings::default())
                .unwrap();
            assert!(samples.len() > 22_050 / 5, "{tag} {prompt:?} too short");
            assert!(rms(&samples) > 0.01, "{tag} {prompt:?} silent");
        }
    }
}

#[test]
fn clip_backend_matches_espeak_backend_segment_by_segment() {
    let root = temp_dir("clip-vs-espeak");
    let pack = pack_with_clips(root.path(), "en", &[Speed::new(-1), Speed::new(0)]);
    let utterance = Utterance::code(&pack, CODE, CodeIntro::First).unwrap();
    let mut renderer = Renderer::new(SampleRate::ESPEAK);
    for speed in [Speed::new(-1), Speed::new(0)] {
        let settings = Settings {
            speed,
            ..Settings::default()
        };
        let mut espeak = Espeak::shared().unwrap().voice(&pack).unwrap();
        let mut clips = ClipSynth::load(&pack).unwrap();
        let (_, a) = renderer
            .render_to_vec(&utterance, &mut espeak, settings)
            .unwrap();
        let (_, b) = renderer
            .render_to_vec(&utterance, &mut clips, settings)
            .unwrap();
        // espeak-ng's output for a phrase varies a little with what the engine spoke before
        // (measured: 260 samples, 12 ms, on the intro when the tests run one at a time, on
        // main as well), so the clips, rendered from it earlier, match each segment's length
        // within 20 ms, not exactly.
        assert_eq!(a.spans.len(), b.spans.len());
        for (x, y) in a.spans.iter().zip(&b.spans) {
            let (lx, ly) = (x.end - x.start, y.end - y.start);
            assert!(
                lx.abs_diff(ly) <= 441,
                "segment {}: {lx} vs {ly} samples",
                x.index
            );
        }
    }
}

/// Median fundamental frequency of the voiced 40 ms frames, by autocorrelation (60-400 Hz).
fn median_pitch(x: &[f32], rate: u32) -> f64 {
    let frame = rate as usize / 25;
    let (min_lag, max_lag) = (rate as usize / 400, rate as usize / 60);
    let mut pitches: Vec<f64> = x
        .chunks_exact(frame)
        .filter(|f| rms(f) > 0.03)
        .filter_map(|f| {
            let energy: f64 = f.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            let (lag, score) = (min_lag..max_lag)
                .map(|lag| {
                    let c: f64 = f[..frame - lag]
                        .iter()
                        .zip(&f[lag..])
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    (lag, c / energy)
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (score > 0.5).then(|| f64::from(rate) / lag as f64)
        })
        .collect();
    assert!(pitches.len() >= 5, "too few voiced frames");
    pitches.sort_by(f64::total_cmp);
    pitches[pitches.len() / 2]
}

#[test]
fn speed_changes_the_rate_not_the_pitch() {
    let espeak = Espeak::shared().unwrap();
    for tag in ["da", "en"] {
        let pack = VoicePack::load(&voices_dir().join(tag)).unwrap();
        let mut synth = espeak.voice(&pack).unwrap();
        let utterance = Utterance::prompt(&pack, Prompt::NoToken);
        let mut renderer = Renderer::new(SampleRate::ESPEAK);
        let mut render = |speed| {
            let settings = Settings {
                speed,
                ..Settings::default()
            };
            renderer
                .render_to_vec(&utterance, &mut synth, settings)
                .unwrap()
                .0
        };
        let (slow, fast) = (render(Speed::MIN), render(Speed::MAX));
        // Three steps each way: 1.15^6 = 2.3 times the rate.
        let ratio = slow.len() as f64 / fast.len() as f64;
        assert!(ratio > 1.8, "{tag}: slow/fast duration ratio {ratio:.2}");
        let (p_slow, p_fast) = (median_pitch(&slow, 22_050), median_pitch(&fast, 22_050));
        assert!(
            (p_slow / p_fast - 1.0).abs() < 0.1,
            "{tag}: pitch {p_slow:.0} Hz slow vs {p_fast:.0} Hz fast"
        );
    }
}

/// A WAV written to a FIFO (a listener reading a pipe; `/dev/null` is the same case, a file
/// that is not regular) arrives whole through the pipe, and the FIFO is still a FIFO: the
/// sink never renames its temporary file over something that is not a regular file (as root
/// that replaced `/dev/null` with a plain file).
#[test]
fn a_wav_to_a_fifo_is_written_into_it_not_renamed_over_it() {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;

    let tmp = temp_dir("fifo");
    let fifo = tmp.path().join("listener");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        })
    };
    let mut sink =
        codereader_speech::WavSink::create(&fifo, SampleRate::new(8000).unwrap()).unwrap();
    codereader_speech::Sink::write(&mut sink, &[0.25; 800]).unwrap();
    assert_eq!(sink.finish().unwrap(), 800);
    let bytes = reader.join().unwrap();
    assert!(
        std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    // 44-byte header, then 800 16-bit samples.
    assert_eq!(bytes.len(), 44 + 2 * 800);
    assert!(!tmp.path().join("listener.tmp").exists());
}
