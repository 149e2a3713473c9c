//! `codereader-speak`: renders, plays and pre-renders voice-pack audio from the command line.
//! Used by `cargo xtask voices` (clips), by the headless ALSA test (play) and by hand.
//!
//! ```text
//! codereader-speak render --voices DIR --lang TAG --code DIGITS --out FILE [--rate HZ] [COMMON]
//! codereader-speak play   --voices DIR --lang TAG --code DIGITS [COMMON]
//! codereader-speak clips  --voices DIR --lang TAG [--speeds -3,...,3] [--out DIR]
//! COMMON: [--backend espeak|clips] [--speed STEP] [--volume STEP]
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use codereader_speech::{
    ClipSynth, CodeIntro, Espeak, LivePlayer, Renderer, SampleRate, Settings, Speed, Synth,
    Utterance, VoiceLibrary, VoicePack, Volume, clips,
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

/// `clips`: renders every digit word and prompt at each speed step (default: all steps) into
/// `<pack>/clips` (or `--out`), then checks that the result loads as a valid clip set.
fn render_clips(args: &Args, pack: &VoicePack) -> anyhow::Result<()> {
    let speeds = match args.options.get("speeds") {
        None => Speed::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse::<i8>().map(Speed::new))
            .collect::<Result<Vec<_>, _>>()
            .context("--speeds")?,
    };
    let out = args
        .options
        .get("out")
        .map_or_else(|| pack.dir().join("clips"), PathBuf::from);
    let mut synth = Espeak::shared()?.voice(pack)?;
    let n = clips::render_clips(pack, &mut synth, &speeds, &out)?;
    if out == pack.dir().join("clips") {
        let reloaded = VoicePack::load(pack.dir()).context("the rendered clips do not load")?;
        anyhow::ensure!(reloaded.clips().is_some(), "no clips after rendering");
    }
    let steps: Vec<String> = speeds.iter().map(|s| s.step().to_string()).collect();
    println!(
        "{}: wrote {n} clips (speed steps {}) to {}",
        pack.tag(),
        steps.join(","),
        out.display()
    );
    Ok(())
}
