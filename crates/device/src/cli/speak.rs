//! `codereader speak`: the desktop's one-shot command. It opens every output first (Speech
//! Dispatcher, the sound card, the braille display), takes the code only when at least one
//! works, so no HOTP counter is used for nothing, and speaks it to its end; or writes what
//! it would say to a WAV file.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use codereader_otp::{TimeStep, UnixTime};
use codereader_speech::{
    CodeIntro, LivePlayer, PhraseKey, Prompt, Renderer, SampleRate, Settings, Utterance, VoicePack,
};
use zeroize::Zeroizing;

use crate::config::{Config, Listening, RATE_RANGE, VOLUME_RANGE};
use crate::outputs::{Output, OutputsConfig};
use crate::process::{Exit, Failure, log, now};
use crate::run_loop;
use crate::speechd::{Speechd, SpeechdAddress};
use crate::timesync::{self, ClockVerdict};
use crate::token_file::{Basis, StateDir, TakeError};
use crate::voice::{self, Message, Voices};

use super::{
    JoinOnDrop, SpeakArgs, check_step, copy_to_clipboard, load_settings_lenient, take_code,
};

/// How long Speech Dispatcher may take to start speaking a code before `speak` says it on
/// the sound card instead (a spawned daemon loads its voice module in well under a second).
const SPEECHD_START: Duration = Duration::from_secs(4);

pub(super) fn speak(
    state: &StateDir,
    config_path: Option<&Path>,
    voices_dir: Option<&Path>,
    args: &SpeakArgs,
) -> Result<(), Failure> {
    let setup = SpeakSetup::load(state, config_path, voices_dir, args)?;
    let (pack, notices) = setup.pack_to_speak()?;
    if let Some(note) = setup.voices.fallback_note(pack) {
        log(&format!("warning: {note}"));
    }
    let config = &setup.config;
    let job = SpeakJob {
        state,
        args,
        config,
        voices: &setup.voices,
        pack,
        notices,
        settings: voice::speech_settings(&setup.listening),
        verdict: timesync::verdict(
            &config.clock,
            args.at,
            state.load().ok().map(|t| t.progress).as_ref(),
        ),
    };
    if let Some(path) = &args.wav {
        return job.speak_to_wav(path);
    }
    // Open every output before taking the code: with none working, no HOTP counter is used.
    // Each fails alone; the code is taken when at least one works.
    let (braille_keys, braille_rx) = std::sync::mpsc::channel();
    let mut senses = crate::outputs::Senses::new(
        &setup.outputs,
        false,
        Some(Box::new(move |key| braille_keys.send(key).is_ok())),
        Box::new(log),
    );
    let mut voices = job.open_voices(&setup.outputs, senses.braille_connected())?;
    let (utterance, result) = job.take()?;
    // Waited for however `speak` ends, so its line is logged and the holder started.
    let _copying = JoinOnDrop(job.start_copying(&utterance));
    job.show(&mut senses, &utterance, &result);
    job.say(&mut voices, utterance.utterance)?;
    record_when_due(state, utterance.record);
    if senses.braille_connected() {
        // The code stays on the display until it expires or a key is pressed there (a
        // counter-based code, which does not expire, for two minutes at most); a message
        // (no code) until a key, for twenty seconds at most.
        let limit = if utterance.shown.is_some() { 120 } else { 20 };
        senses.hold(&braille_rx, Duration::from_secs(limit));
    }
    job.refused(result)
}

/// What `speak` speaks with: the config and the user's settings with this command's options
/// over them, and the voices.
struct SpeakSetup {
    config: Config,
    listening: Listening,
    outputs: OutputsConfig,
    voices: Voices,
    /// Mistakes of the config, the settings or the voice packs (each set aside for its
    /// default and logged), so the user hears that a helper can fix the settings.
    mistakes: Vec<String>,
}

impl SpeakSetup {
    /// Loads the config, the settings and the voices leniently (a bad setting falls back to
    /// its default and is said before the code: only the token decides whether a code is
    /// given), applies the options and logs the mistakes.
    fn load(
        state: &StateDir,
        config_path: Option<&Path>,
        voices_dir: Option<&Path>,
        args: &SpeakArgs,
    ) -> Result<Self, Failure> {
        let (config, user, effective, mut mistakes) = load_settings_lenient(state, config_path);
        let mut listening = effective.listening;
        if let Some(lang) = &args.lang {
            listening.language.clone_from(lang);
        }
        if let Some(rate) = args.rate {
            check_step("--rate", rate, &RATE_RANGE)?;
            listening.rate = rate;
        }
        if let Some(volume) = args.volume {
            check_step("--volume", volume, &VOLUME_RANGE)?;
            listening.volume = volume;
        }
        let mut outputs = config.outputs.clone();
        if !args.output.is_empty() {
            outputs.list = crate::outputs::parse_outputs(&args.output)
                .map_err(|m| anyhow!("--output: {m}"))?;
        }
        let (mut voices, more) = voice::load_voices_lenient(state, &config, &user, voices_dir)?;
        mistakes.extend(more);
        if args.lang.is_none() {
            // The language of the config or the settings: one without a pack is a mistake too.
            mistakes.extend(voice::settle_language(
                &voices,
                &config,
                &user,
                &mut listening,
            ));
        }
        if let Some(name) = &args.voice {
            voices.choose(&listening.language, name)?;
        }
        crate::config::log_mistakes(&mistakes);
        Ok(SpeakSetup {
            config,
            listening,
            outputs,
            voices,
            mistakes,
        })
    }

    /// The pack of the language to speak, and the notices to say before the code: a
    /// language nothing can speak is said so, in one that can be spoken; a mistake in the
    /// settings is said too.
    fn pack_to_speak(&self) -> Result<(&VoicePack, Vec<Prompt>), Failure> {
        let voices = &self.voices;
        let mut notices = Vec::new();
        let mut pack = voices.pack(&self.listening.language)?;
        if let Err(why) = voices.check_speakable(pack) {
            let Some(other) = voices.speakable_instead(pack.tag()) else {
                return Err(anyhow!(
                    "language `{}` cannot be spoken ({why}), and no other language can",
                    pack.tag()
                )
                .into());
            };
            log(&format!(
                "error: language `{}` cannot be spoken ({why}); speaking `{other}` instead",
                pack.tag()
            ));
            pack = voices.pack(&other)?;
            notices.push(Prompt::LanguageUnusable);
        }
        if !self.mistakes.is_empty() {
            notices.push(Prompt::SettingsMistake);
        }
        Ok((pack, notices))
    }
}

/// One `speak`: what it speaks with, and the clock's verdict on giving a code now.
struct SpeakJob<'a> {
    state: &'a StateDir,
    args: &'a SpeakArgs,
    config: &'a Config,
    voices: &'a Voices,
    pack: &'a VoicePack,
    notices: Vec<Prompt>,
    settings: Settings,
    verdict: ClockVerdict,
}

/// The voices `speak` opened: Speech Dispatcher, the sound card, or both (the sound card
/// for the earcons beside Speech Dispatcher).
struct SpeakVoices {
    // Dropped in this order: the player, then Speech Dispatcher's connection.
    player: Option<LivePlayer>,
    speechd: Option<Speechd>,
    /// Whether the device's own voice speaks the code on the sound card.
    own_voice: bool,
}

impl SpeakJob<'_> {
    /// Writes what would be said to a WAV file: the sound card's speech, whatever the
    /// outputs say.
    fn speak_to_wav(&self, path: &Path) -> Result<(), Failure> {
        let (utterance, result) = self.take()?;
        let mut synth = self.voices.synth(self.pack)?;
        Renderer::new(SampleRate::ESPEAK)
            .render_to_wav(&utterance.utterance, synth.as_mut(), self.settings, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        record_when_due(self.state, utterance.record);
        self.refused(result)
    }

    /// Opens Speech Dispatcher and the sound card as the outputs ask. Without Speech
    /// Dispatcher (after trying to start it), the device's own voice speaks on the sound
    /// card: a desktop shortcut must never end in silence. Fails when nothing works
    /// (`braille`: the braille display is connected).
    fn open_voices(&self, outputs: &OutputsConfig, braille: bool) -> Result<SpeakVoices, Failure> {
        let uses = |o| outputs.has(o);
        let mut speechd = None;
        let mut failures = Vec::new();
        let mut own_voice = uses(Output::Speech);
        if uses(Output::Speechd) {
            let connected = SpeechdAddress::find(outputs.speechd_address.as_deref())
                .and_then(|address| crate::speechd::connect_or_spawn(&address))
                .and_then(|mut s| s.set_language(self.pack.tag()).map(|()| s));
            match connected {
                Ok(s) => speechd = Some(s),
                Err(e) => {
                    log(&format!(
                        "warning: {e}; the device's own voice speaks on the sound card instead"
                    ));
                    own_voice = true;
                }
            }
        }
        let player = if own_voice || speechd.is_some() {
            let device = self.config.audio.device.as_deref();
            match LivePlayer::open(device, self.voices.synth(self.pack)?) {
                Ok(player) => Some(player),
                Err(e) if own_voice => {
                    failures.push(
                        anyhow::Error::new(e)
                            .context("cannot speak: no working audio output device"),
                    );
                    None
                }
                Err(e) => {
                    // Speech Dispatcher has its own audio; only the earcons are lost.
                    log(&format!(
                        "warning: no earcons: no audio output device ({e})"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let speaking = (own_voice && player.is_some()) || speechd.is_some();
        if !speaking && !braille {
            // Nothing works: the first failure says why (the sound card's gives exit status 6).
            return Err(failures.into_iter().next().map_or_else(
                || anyhow!("no output works (see the messages above)").into(),
                Failure::from,
            ));
        }
        for failure in &failures {
            log(&format!("error: {failure:#}; the other outputs go on"));
        }
        Ok(SpeakVoices {
            player,
            speechd,
            own_voice,
        })
    }

    /// Logs the clock's warning (just before the code is taken: a failure to open the
    /// outputs comes alone), then takes the code and plans what to say.
    fn take(&self) -> Result<(Planned, Result<(), TakeError>), Failure> {
        if self.verdict == ClockVerdict::Warn {
            if let Some(line) = timesync::explain(&self.config.clock, self.verdict) {
                log(&line);
            }
        }
        take_and_plan(
            self.state,
            self.pack,
            self.args.at,
            &self.notices,
            self.verdict,
            self.config.code.wait_for_next_below,
        )
    }

    /// Copies the code to the clipboard while it is spoken (taking the clipboard takes up to
    /// half a second), when `--copy` or the config asks.
    fn start_copying(&self, utterance: &Planned) -> Option<std::thread::JoinHandle<()>> {
        (self.args.copy || self.config.desktop.copy)
            .then(|| utterance.shown.clone())
            .flatten()
            .map(|(code, left)| {
                std::thread::spawn(move || {
                    copy_to_clipboard(
                        &code,
                        left.unwrap_or(crate::clipboard::COUNTER_CODE_SECONDS),
                    );
                })
            })
    }

    /// Shows the code, or why there is none, on the braille display.
    fn show(
        &self,
        senses: &mut crate::outputs::Senses,
        utterance: &Planned,
        result: &Result<(), TakeError>,
    ) {
        let pack = self.pack;
        match (&utterance.shown, result) {
            (Some((code, left)), _) => {
                senses.show_code(code, &pack.grouping(code.len()), *left, pack.tag());
            }
            (None, Err(e)) => {
                senses.show_text(&pack.phrase(PhraseKey::Prompt(voice::prompt_for(e))).text)
            }
            (None, Ok(())) if self.verdict == ClockVerdict::Refuse => {
                senses.show_text(&pack.phrase(PhraseKey::Prompt(Prompt::ClockUnsynced)).text);
            }
            (None, Ok(())) => {}
        }
    }

    /// Says `utterance` through Speech Dispatcher (the earcons on the sound card; the rest
    /// too if Speech Dispatcher fails) or the device's own voice, to its end.
    fn say(&self, voices: &mut SpeakVoices, utterance: Utterance) -> Result<(), Failure> {
        let player = &voices.player;
        let play = |part: Utterance| -> Result<(), Failure> {
            let Some(player) = player else { return Ok(()) };
            player.play(part, self.settings)?;
            // Long enough for the slowest code; normal codes take about five seconds.
            if !player.wait_until_idle(Duration::from_secs(60)) || player.failed() {
                return Err(Failure {
                    exit: Exit::Audio,
                    error: anyhow!("the audio output failed while speaking"),
                });
            }
            Ok(())
        };
        if let Some(speechd) = &mut voices.speechd {
            let (head, words, tail) = crate::speechd::split_earcons(&utterance);
            play(head)?;
            match speechd.speak(&words, SPEECHD_START, Duration::from_secs(60)) {
                Ok(()) => play(tail)?,
                Err(e) if player.is_some() => {
                    log(&format!(
                        "warning: {e}; the device's own voice speaks on the sound card instead"
                    ));
                    let mut rest = words;
                    rest.extend(tail.segments().iter().cloned());
                    play(Utterance::from_segments(rest))?;
                }
                Err(e) => return Err(anyhow::Error::new(e).into()),
            }
        } else if voices.own_voice {
            play(utterance)?;
        }
        Ok(())
    }

    /// `result`, unless `[clock] unsynced = "refuse"` refused the code: then the device has
    /// said why, and `speak` exits 5.
    fn refused(&self, result: Result<(), TakeError>) -> Result<(), Failure> {
        if self.verdict == ClockVerdict::Refuse {
            return Err(Failure {
                exit: Exit::Clock,
                error: anyhow!(
                    "the clock has not been synchronised since boot ({} does not exist) and \
                     [clock] unsynced = \"refuse\": no code given",
                    self.config.clock.sync_flag.display()
                ),
            });
        }
        result.map_err(Failure::from)
    }
}

/// What `speak` says, and the code to show (with its seconds left) if there is one.
struct Planned {
    utterance: Utterance,
    shown: Option<(Zeroizing<String>, Option<u64>)>,
    /// A code of the next time step, given before its step began: its step, recorded once
    /// the step has begun ([`record_when_due`]).
    record: Option<(TimeStep, Instant)>,
}

/// Records the time step of a code given ahead of its step ([`Planned::record`]) once the
/// step has begun, so a `speak` meanwhile does not find the clock "moved backwards".
fn record_when_due(state: &StateDir, record: Option<(TimeStep, Instant)>) {
    let Some((step, due)) = record else { return };
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
    if let Err(e) = state.record_step(step) {
        log(&format!("error: cannot record the time step: {e}"));
    }
}

/// Takes the code (or the reason there is none) and plans what to say.
fn take_and_plan(
    state: &StateDir,
    pack: &VoicePack,
    at: Option<u64>,
    notices: &[Prompt],
    verdict: ClockVerdict,
    wait_below: u64,
) -> Result<(Planned, Result<(), TakeError>), Failure> {
    let wait = (verdict != ClockVerdict::Refuse)
        .then(|| run_loop::wait_for_next(state, wait_below, now(at), at.is_some()))
        .flatten();
    let next = wait.and_then(|wait| plan_next_code(state, pack, at, wait, verdict).transpose());
    let (mut planned, result) = match next {
        Some(planned) => (planned?, Ok(())),
        None => take_and_plan_in(state, pack, at, verdict)?,
    };
    // The first notice is said first.
    for notice in notices.iter().rev() {
        planned.utterance = voice::after_notice(pack, *notice, &planned.utterance);
    }
    Ok((planned, result))
}

/// With `wait` seconds left in the step (under `[code] wait_for_next_below`): "this code is
/// about to change", silence until the next step begins, and that step's code, valid for
/// the whole step. `None` if the next step's code cannot be had (then the usual path says
/// why).
fn plan_next_code(
    state: &StateDir,
    pack: &VoicePack,
    at: Option<u64>,
    wait: u64,
    verdict: ClockVerdict,
) -> Result<Option<Planned>, Failure> {
    let Ok(taken) = state.code_at(UnixTime(now(at).0.saturating_add(wait))) else {
        return Ok(None);
    };
    let Basis::Step { step, seconds_left } = taken.basis else {
        return Ok(None);
    };
    log(&format!(
        "saying `code_changing`: {wait} s left (under [code] wait_for_next_below); speaking \
         the code of time step {step} when it begins"
    ));
    let code = Zeroizing::new(taken.code.as_str().to_owned());
    let utterance = voice::plan(pack, &voice::code_message(&code, CodeIntro::First, verdict))?;
    let ms = u32::try_from(wait.saturating_mul(1000)).unwrap_or(u32::MAX);
    Ok(Some(Planned {
        utterance: voice::after_notice_until(pack, Prompt::CodeChanging, ms, &utterance),
        shown: Some((code, Some(seconds_left))),
        // A stated time (`--at`) leaves the clock's record alone.
        record: at
            .is_none()
            .then(|| (step, Instant::now() + Duration::from_secs(wait))),
    }))
}

fn take_and_plan_in(
    state: &StateDir,
    pack: &VoicePack,
    at: Option<u64>,
    verdict: ClockVerdict,
) -> Result<(Planned, Result<(), TakeError>), Failure> {
    if verdict == ClockVerdict::Refuse {
        // No time step is used: the prepared HOTP code (if any) stays prepared.
        log("saying `clock_unsynced`; no code given");
        let utterance = voice::plan(pack, &Message::Prompt(Prompt::ClockUnsynced))?;
        return Ok((
            Planned {
                utterance,
                shown: None,
                record: None,
            },
            Ok(()),
        ));
    }
    match take_code(state, at) {
        Ok(taken) => {
            let left = match taken.basis {
                Basis::Counter(c) => {
                    log(&format!("speaking HOTP counter {}", c.0));
                    None
                }
                Basis::Step { seconds_left, .. } => Some(seconds_left),
            };
            let code = Zeroizing::new(taken.code.as_str().to_owned());
            let utterance =
                voice::plan(pack, &voice::code_message(&code, CodeIntro::First, verdict))?;
            Ok((
                Planned {
                    utterance,
                    shown: Some((code, left)),
                    record: None,
                },
                Ok(()),
            ))
        }
        Err(e) => {
            let prompt = voice::prompt_for(&e);
            log(&format!("saying `{}`", prompt.key()));
            let utterance = voice::plan(pack, &Message::Prompt(prompt))?;
            Ok((
                Planned {
                    utterance,
                    shown: None,
                    record: None,
                },
                Err(e),
            ))
        }
    }
}
