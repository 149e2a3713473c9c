//! `codereader-speak`: renders, plays and pre-renders voice-pack audio from the command line.
//! Used by `cargo xtask voices` (clips), by the headless ALSA test (play) and by hand.
//!
//! ```text
//! codereader-speak render --voices DIR --lang TAG --code DIGITS --out FILE [--rate HZ] [COMMON]
//! codereader-speak play   --voices DIR --lang TAG --code DIGITS [COMMON]
//! codereader-speak clips  --voices DIR --lang TAG [--voice NAME] [--speeds -3,...,3] [--out DIR]
//! codereader-speak check  --voices DIR --lang TAG [--voice NAME]
//! codereader-speak codes  --voices DIR --lang TAG (--voice NAME | --engine SPEC)
//!                         --count N [--seed S] [--speed STEP] --out DIR
//! COMMON: [--backend espeak|clips] [--voice NAME] [--speed STEP] [--volume STEP]
//! ```
//!
//! `check` validates recorded voices (every recorded voice of the pack, or `--voice`):
//! every word present, levels in range, no clipping, silence trimmed; it lists every problem.
//! `clips` renders each voice's clips (all of the pack's voices unless `--voice`) with the
//! engine the voice names, with a progress bar on stderr when it is a terminal (else one
//! line per voice when it is done). `codes` is the intelligibility
//! harness's renderer: it renders the voice's clips at speed step `--speed` (default 0) into
//! `OUT/clips` (or uses a recorded voice's clips), then `N` random codes from a seeded generator through the
//! normal pipeline at 16 kHz into `OUT/NNNN.wav`, listing `NNNN.wav CODE` in `OUT/codes.txt`.
//! `--engine` is `espeak-ng:VOICE`, `flite:VOICE` or `festival:VOICE`, for trying voices no pack ships yet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use std::io::Write;

use codereader_speech::{
    ClipSet, ClipSynth, CodeIntro, Engine, Espeak, FliteSynth, LivePlayer, Renderer, SampleRate,
    Settings, Speed, Synth, Utterance, VoiceLibrary, VoicePack, Volume, clips,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codereader-speak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    command: String,
    options: HashMap<String, String>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut raw = std::env::args().skip(1);
        let command = raw
            .next()
            .context("missing command (render, play or clips)")?;
        let mut options = HashMap::new();
        while let Some(flag) = raw.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("unexpected argument `{flag}`");
            };
            let value = raw
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            options.insert(name.to_owned(), value);
        }
        Ok(Self { command, options })
    }

    fn get(&self, name: &str) -> anyhow::Result<&str> {
        self.options
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("missing --{name}"))
    }

    fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.options.get(name).map_or(default, String::as_str)
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::default();
        if let Some(step) = self.options.get("speed") {
            settings.speed = Speed::new(step.parse().context("--speed")?);
        }
        if let Some(step) = self.options.get("volume") {
            settings.volume = Volume::new(step.parse().context("--volume")?);
        }
        Ok(settings)
    }
}

fn synth_for(args: &Args, pack: &VoicePack) -> anyhow::Result<Box<dyn Synth>> {
    let pack = &match args.options.get("voice") {
        Some(name) => pack.with_voice(name)?,
        None => pack.clone(),
    };
    Ok(match args.get_or("backend", "espeak") {
        "espeak" => Box::new(Espeak::shared()?.voice(pack)?),
        "clips" => Box::new(ClipSynth::load(pack)?),
        other => bail!("unknown backend `{other}`"),
    })
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let voices = PathBuf::from(args.get("voices")?);
    let lang = args.get("lang")?;
    if args.command == "clips" {
        // Only the words: the old clips may be stale or broken, which is why we re-render.
        let pack = VoicePack::load_words(&voices.join(lang))?;
        return render_clips(&args, &pack);
    }
    if args.command == "check" {
        let pack = VoicePack::load_words(&voices.join(lang))?;
        return check_recorded(&args, &pack);
    }
    if args.command == "codes" {
        let pack = VoicePack::load(&voices.join(lang))?;
        return render_codes(&args, &pack);
    }
    let library = VoiceLibrary::load(&voices)?;
    let pack = library
        .pack(lang)
        .with_context(|| format!("no voice pack `{lang}` in {}", voices.display()))?;
    match args.command.as_str() {
        "render" => {
            let rate = SampleRate::new(args.get_or("rate", "22050").parse().context("--rate")?)?;
            let utterance = Utterance::code(pack, args.get("code")?, CodeIntro::First)?;
            let mut synth = synth_for(&args, pack)?;
            let out = PathBuf::from(args.get("out")?);
            let report = Renderer::new(rate).render_to_wav(
                &utterance,
                synth.as_mut(),
                args.settings()?,
                &out,
            )?;
            println!("samples={} rate={}", report.samples, rate.hz());
        }
        "play" => {
            let utterance = Utterance::code(pack, args.get("code")?, CodeIntro::First)?;
            let player = LivePlayer::open_default(synth_for(&args, pack)?)?;
            let info = player.info().clone();
            println!(
                "device rate={} channels={} format={} period={}",
                info.sample_rate.hz(),
                info.channels,
                info.sample_format,
                info.period_frames.unwrap_or(0)
            );
            player.play(utterance, args.settings()?)?;
            if !player.wait_until_idle(Duration::from_secs(30)) {
                bail!("playback did not finish within 30 s");
            }
            // Let the device take the last period before the stream closes.
            std::thread::sleep(Duration::from_millis(300));
            if player.failed() {
                bail!("the output stream reported an error");
            }
            println!(
                "played frames={} queued={} underruns={}",
                player.frames_played(),
                player.frames_queued(),
                player.underruns()
            );
        }
        other => bail!("unknown command `{other}`"),
    }
    Ok(())
}

/// A synthesiser for an engine that renders clips (not for recorded voices).
fn engine_synth(engine: &Engine, pack: &VoicePack) -> anyhow::Result<Box<dyn Synth>> {
    Ok(match engine {
        Engine::EspeakNg(_) => Box::new(Espeak::shared()?.voice(pack)?),
        Engine::Flite(voice) => Box::new(FliteSynth::new(voice, pack.default_rate())?),
        Engine::Festival(voice) => Box::new(FliteSynth::festival(voice, pack.default_rate())?),
        other => bail!("the engine `{other}` does not render clips"),
    })
}

/// A progress bar on stderr: `label [#####.....] done/total`, redrawn in place on a
/// terminal. Into a file or a pipe (a CI log) the frames would pile up, so there it writes
/// nothing and the one line `clips` prints per voice when it is done is the progress.
fn progress_bar(label: &str) -> impl FnMut(usize, usize) + '_ {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    move |done, total| {
        if !terminal {
            return;
        }
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r  {label:<18} [{}{}] {done}/{total}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        if done == total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// `clips`: renders each voice's clips (every voice, or `--voice`) with its engine.
fn render_clips(args: &Args, pack: &VoicePack) -> anyhow::Result<()> {
    let names = match args.options.get("voice") {
        Some(name) => vec![name.clone()],
        None => pack.voice_names(),
    };
    for name in names {
        let voice = pack.with_voice_words(&name)?;
        if voice.voice().engine == Engine::Recorded {
            println!(
                "{}/{name}: recorded voice, nothing to render (check it with `cargo xtask voices --check`)",
                pack.tag()
            );
            continue;
        }
        render_voice_clips(args, &voice)?;
    }
    Ok(())
}

/// Renders every digit word and prompt of the pack's selected voice at each speed step
/// (default: all steps) into its clips directory (or `--out`), then checks that the result
/// loads as a valid clip set.
fn render_voice_clips(args: &Args, pack: &VoicePack) -> anyhow::Result<()> {
    let speeds = match args.options.get("speeds") {
        None => Speed::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse::<i8>().map(Speed::new))
            .collect::<Result<Vec<_>, _>>()
            .context("--speeds")?,
    };
    let spec = pack.voice();
    let out = args
        .options
        .get("out")
        .map_or_else(|| spec.clips_dir.clone(), PathBuf::from);
    let mut synth = engine_synth(&spec.engine, pack)?;
    let label = format!("{}/{}", pack.tag(), spec.name);
    let n = clips::render_clips_from(
        pack,
        synth.as_mut(),
        spec.engine.clip_source(),
        &speeds,
        &out,
        &mut progress_bar(&label),
    )?;
    let loaded = ClipSet::load(&out).context("the rendered clips do not load")?;
    anyhow::ensure!(loaded.is_some(), "no clips after rendering");
    let steps: Vec<String> = speeds.iter().map(|s| s.step().to_string()).collect();
    println!(
        "{label} ({}): wrote {n} clips (speed steps {}) to {}",
        spec.engine,
        steps.join(","),
        out.display()
    );
    Ok(())
}

/// `check`: validates recorded voices; fails listing every problem.
fn check_recorded(args: &Args, pack: &VoicePack) -> anyhow::Result<()> {
    let names = match args.options.get("voice") {
        Some(name) => vec![name.clone()],
        None => pack
            .voices()
            .iter()
            .filter(|v| v.engine == Engine::Recorded)
            .map(|v| v.name.clone())
            .collect(),
    };
    let mut failed = 0;
    for name in &names {
        let voice = pack.with_voice_words(name)?;
        let problems = codereader_speech::check_recorded(
            &voice,
            &codereader_speech::RecordingLimits::default(),
        );
        if problems.is_empty() {
            println!("{}/{name}: recorded voice ok", pack.tag());
        } else {
            failed += 1;
            println!("{}/{name}: {} problem(s):", pack.tag(), problems.len());
            for p in &problems {
                println!("  {p}");
            }
        }
    }
    if names.is_empty() {
        println!("{}: no recorded voice to check", pack.tag());
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} recorded voice(s) of `{}` failed the check",
        pack.tag()
    );
    Ok(())
}

/// A small seeded generator (SplitMix64) so that every voice hears the same codes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn code(&mut self) -> String {
        (0..6)
            .map(|_| char::from(b'0' + (self.next() % 10) as u8))
            .collect()
    }
}

/// `codes`: the intelligibility harness's renderer (see the module docs).
fn render_codes(args: &Args, pack: &VoicePack) -> anyhow::Result<()> {
    let count: usize = args.get("count")?.parse().context("--count")?;
    let seed: u64 = args.get_or("seed", "7").parse().context("--seed")?;
    let out = PathBuf::from(args.get("out")?);
    // `--speed` is the device's rate step: clips rendered at that step, pauses scaled to it.
    let settings = Settings {
        speed: args.settings()?.speed,
        ..Settings::default()
    };
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let (engine, pack) = match (args.options.get("engine"), args.options.get("voice")) {
        (Some(spec), None) => (
            Engine::parse(spec).with_context(|| format!("--engine `{spec}`"))?,
            pack.clone(),
        ),
        (None, Some(name)) => {
            let voice = pack.with_voice(name)?;
            (voice.voice().engine.clone(), voice)
        }
        _ => bail!("give exactly one of --voice and --engine"),
    };
    let clip_set = if engine == Engine::Recorded {
        pack.clips()
            .cloned()
            .context("the recorded voice has no clips")?
    } else {
        // Espeak takes its voice name from the pack; an --engine override needs a pack
        // whose selected voice is that espeak voice.
        let pack = match &engine {
            Engine::EspeakNg(v) => pack.with_espeak_voice(v),
            _ => pack.clone(),
        };
        let mut synth = engine_synth(&engine, &pack)?;
        let dir = out.join("clips");
        clips::render_clips_from(
            &pack,
            synth.as_mut(),
            engine.clip_source(),
            &[settings.speed],
            &dir,
            &mut |_, _| {},
        )?;
        ClipSet::load(&dir)?.context("no clips after rendering")?
    };
    let mut synth = ClipSynth::from_clips(clip_set)?;
    let mut renderer = Renderer::new(SampleRate::new(16_000)?);
    let mut rng = SplitMix(seed);
    let mut list = String::new();
    for i in 0..count {
        let code = rng.code();
        let file = format!("{i:04}.wav");
        let utterance = Utterance::code(&pack, &code, CodeIntro::First)?;
        renderer.render_to_wav(&utterance, &mut synth, settings, &out.join(&file))?;
        list.push_str(&format!("{file} {code}\n"));
    }
    std::fs::write(out.join("codes.txt"), list).context("codes.txt")?;
    println!(
        "{}: {count} codes by {engine} at speed step {} in {}",
        pack.tag(),
        settings.speed.step(),
        out.display()
    );
    Ok(())
}
