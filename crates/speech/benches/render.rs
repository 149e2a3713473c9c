//! Speed of the speech pipeline, per backend (espeak-ng library, clips): time to the first
//! sample and to a whole code in a WAV file, beside the baseline of spawning `espeak-ng -w`
//! for the same words, all in the same run. `cargo bench -p codereader-speech`.
//!
//! "uncached" clears the espeak backend's phrase cache before each run, so every phrase is
//! synthesised; "cached" is the warm device after its first code. After criterion's own
//! report, a table gives each case's median over repeated runs in this process and its ratio
//! to the `espeak-ng -w` baseline measured just before it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use codereader_speech::{
    ClipSynth, CodeIntro, Espeak, EspeakSynth, PhraseKey, Prompt, Renderer, SampleRate, Settings,
    Sink, SpeechError, Synth, Utterance, VoicePack, clips,
};
use criterion::{Criterion, black_box};

const CODE: &str = "471293";

/// Everything a case needs, prepared (and warmed) once.
struct Fixture {
    tag: &'static str,
    pack: VoicePack,
    espeak: EspeakSynth,
    clips: Box<dyn Synth>,
    utterance: Utterance,
    /// The same words as one text for the `espeak-ng` command line.
    text: String,
    dir: PathBuf,
    /// Renderers with their resamplers built, as the live player keeps them: 22.05, 48 kHz.
    renderers: [Renderer; 2],
}

impl Fixture {
    fn new(tag: &'static str, root: &Path) -> Self {
        let voices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
        let dir = root.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(voices.join(tag).join("voice.toml"), dir.join("voice.toml")).unwrap();
        // The `espeak` voice's clips, so that clips and espeak say the same thing.
        let words = VoicePack::load_words(&dir)
            .unwrap()
            .with_voice_words("espeak")
            .unwrap();
        let mut espeak = Espeak::shared().unwrap().voice(&words).unwrap();
        clips::render_clips(
            &words,
            &mut espeak,
            &[Default::default()],
            &words.voice().clips_dir,
        )
        .unwrap();
        let pack = VoicePack::load(&dir).unwrap().with_voice("espeak").unwrap();
        let clips = ClipSynth::load(&pack).unwrap();
        let utterance = Utterance::code(&pack, CODE, CodeIntro::First).unwrap();
        // Intro, then the two groups, with sentence and comma pauses like the plan's.
        let digit = |c: char| pack.text(PhraseKey::Digit(c as u8 - b'0')).to_owned();
        let group = |s: &str| s.chars().map(digit).collect::<Vec<_>>().join(", ");
        let text = format!(
            "{}. {}. {}.",
            pack.text(PhraseKey::Prompt(Prompt::Intro)),
            group(&CODE[..3]),
            group(&CODE[3..])
        );
        let mut renderers =
            [SampleRate::ESPEAK, SampleRate::new(48_000).unwrap()].map(Renderer::new);
        for r in &mut renderers {
            r.prepare(espeak.sample_rate()).unwrap();
        }
        Self {
            tag,
            renderers,
            espeak,
            clips: Box::new(clips),
            pack,
            utterance,
            text,
            dir,
        }
    }

    /// The backend and the prepared renderer for `rate`.
    fn parts(&mut self, backend: &str, rate: u32) -> (&mut dyn Synth, &mut Renderer, &Utterance) {
        let synth = match backend {
            "espeak" => &mut self.espeak,
            "espeak-uncached" => {
                self.espeak.clear_cache();
                &mut self.espeak
            }
            _ => self.clips.as_mut(),
        };
        let renderer = if rate == 48_000 {
            &mut self.renderers[1]
        } else {
            &mut self.renderers[0]
        };
        (synth, renderer, &self.utterance)
    }
}

/// A sink that flags when its `n`-th write arrives, so the render can stop there.
struct FirstSamples<'a> {
    rate: SampleRate,
    writes: usize,
    stop_after: usize,
    done: &'a Cell<bool>,
}

impl Sink for FirstSamples<'_> {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        black_box(samples);
        self.writes += 1;
        if self.writes >= self.stop_after {
            self.done.set(true);
        }
        Ok(())
    }
}

/// Time until the `nth` segment's samples reach the sink (1: the start earcon; 3: the first
/// spoken sample, after the earcon and its pause), at `rate`.
fn first_samples(f: &mut Fixture, backend: &str, rate: u32, nth: usize) {
    let rate = SampleRate::new(rate).unwrap();
    let done = Cell::new(false);
    let mut sink = FirstSamples {
        rate,
        writes: 0,
        stop_after: nth,
        done: &done,
    };
    let (synth, renderer, utterance) = f.parts(backend, rate.hz());
    let report = renderer
        .render(utterance, synth, Settings::default(), &mut sink, &|| {
            done.get()
        })
        .unwrap();
    assert!(report.cancelled);
}

fn whole_code_wav(f: &mut Fixture, backend: &str) {
    let path = f.dir.join(format!("code-{backend}.wav"));
    let (synth, renderer, utterance) = f.parts(backend, SampleRate::ESPEAK.hz());
    renderer
        .render_to_wav(utterance, synth, Settings::default(), &path)
        .unwrap();
}

fn espeak_cli(f: &Fixture) {
    let path = f.dir.join("cli.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", f.pack.espeak_voice()])
        .args(["-s", &f.pack.default_rate().to_string()])
        .arg("-w")
        .arg(&path)
        .arg(&f.text)
        .status()
        .expect("espeak-ng (Debian package espeak-ng) must be installed for the baseline");
    assert!(status.success());
}

type Case = (&'static str, fn(&mut Fixture));

const CASES: [Case; 9] = [
    ("baseline: spawn `espeak-ng -w` per code", |f| espeak_cli(f)),
    ("espeak, uncached: whole code to WAV", |f| {
        whole_code_wav(f, "espeak-uncached")
    }),
    ("espeak, cached: whole code to WAV", |f| {
        whole_code_wav(f, "espeak")
    }),
    ("clips: whole code to WAV", |f| whole_code_wav(f, "clips")),
    ("espeak, uncached: first spoken sample, 48 kHz", |f| {
        first_samples(f, "espeak-uncached", 48_000, 3)
    }),
    ("espeak, cached: first spoken sample, 48 kHz", |f| {
        first_samples(f, "espeak", 48_000, 3)
    }),
    ("clips: first spoken sample, 48 kHz", |f| {
        first_samples(f, "clips", 48_000, 3)
    }),
    ("espeak: first sample (start earcon), 48 kHz", |f| {
        first_samples(f, "espeak", 48_000, 1)
    }),
    ("clips: first sample (start earcon), 48 kHz", |f| {
        first_samples(f, "clips", 48_000, 1)
    }),
];

fn median_of(f: &mut Fixture, case: fn(&mut Fixture)) -> Duration {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 15 || (times.len() < 200 && start.elapsed() < Duration::from_secs(2)) {
        let t = Instant::now();
        case(f);
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let root = std::env::temp_dir().join(format!("codereader-speech-bench-{}", std::process::id()));
    let cold = Instant::now();
    Espeak::shared().unwrap();
    let cold = cold.elapsed();
    let mut fixtures = vec![Fixture::new("en", &root), Fixture::new("da", &root)];

    let mut c = Criterion::default().configure_from_args();
    for f in &mut fixtures {
        let mut group = c.benchmark_group(format!("speak {CODE} ({})", f.tag));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(3));
        for (name, case) in CASES {
            group.bench_function(name, |b| b.iter(|| case(f)));
        }
        group.finish();
    }
    c.final_summary();

    // Only under `cargo bench`; `cargo test` runs each case once above as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        println!("\nespeak-ng cold initialisation (first use in this process): {cold:.2?}");
        for f in &mut fixtures {
            println!(
                "\n{} (code {CODE}; median; ratio = baseline / case):",
                f.tag
            );
            let baseline = median_of(f, CASES[0].1);
            for (i, (name, case)) in CASES.into_iter().enumerate() {
                let t = if i == 0 { baseline } else { median_of(f, case) };
                let ratio = baseline.as_secs_f64() / t.as_secs_f64();
                println!(
                    "  {name:<46} {:>10.3} ms  {ratio:>8.1}x",
                    t.as_secs_f64() * 1e3
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
