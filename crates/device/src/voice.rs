//! The device's side of the speech crate: finding the voice packs, choosing the synthesiser,
//! and planning what the device says (codes, feedback, errors, status).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use codereader_speech::{
    ClipSet, ClipSynth, CodeIntro, Earcon, Engine, Espeak, FallbackSynth, PhraseKey, ProblemReport,
    Prompt, Segment, Settings, SpeechError, Speed, StartBackup, Synth, Utterance, VoiceLibrary,
    VoicePack, Volume,
};

use crate::config::{Config, Listening, SETTINGS_FILE, SynthChoice, UserSettings};
use crate::process::log;
use crate::timesync::ClockVerdict;
use crate::token_file::{StateDir, StateError, TakeError};

/// Why the voices cannot be used.
///
/// Each message includes its cause (the speech crate's error), so the cause is not also
/// chained as `source()`: `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoiceError {
    /// The voice packs failed to load.
    #[error("voice packs in {dir}: {error}{}", render_hint(.error))]
    Load {
        /// The voices directory.
        dir: PathBuf,
        /// The speech crate's error.
        error: codereader_speech::PackError,
    },
    /// No pack for the language asked for.
    #[error("no voice pack for language `{tag}`; available: {available}")]
    UnknownLanguage {
        /// The tag asked for.
        tag: String,
        /// The tags there are.
        available: String,
    },
    /// A chosen voice is not in its language's pack, or its clips are broken.
    #[error("voice for `{tag}`: {error}")]
    Voice {
        /// Language.
        tag: String,
        /// The speech crate's error.
        error: codereader_speech::PackError,
    },
    /// The synthesiser could not start.
    #[error("cannot start the synthesiser for `{tag}`: {error}")]
    Synth {
        /// Language.
        tag: String,
        /// Why.
        error: SpeechError,
    },
}

/// For a clip problem: how to render the clips afresh (clips rendered by an older version
/// lack the newer prompts).
fn render_hint(error: &codereader_speech::PackError) -> &'static str {
    match error {
        codereader_speech::PackError::BadClip { .. }
        | codereader_speech::PackError::ClipSampleRate { .. } => {
            "; render the clips again with `cargo xtask voices`"
        }
        _ => "",
    }
}

/// Loads the voice packs for `config` and applies the voice choices: the config's `[voice]`
/// strictly (a voice it names must exist), then the user's (kept in the state directory)
/// leniently: a choice that cannot be followed is logged, naming the settings file, and
/// that language speaks the config's or pack's default voice; nothing is changed on disk.
///
/// # Errors
/// [`VoiceError`]s of the packs or of the config's choices.
pub fn load_voices(
    state: &StateDir,
    config: &Config,
    user: &UserSettings,
    voices_dir: Option<&Path>,
) -> Result<Voices, VoiceError> {
    let dir = locate_voices(voices_dir, config.voices.as_deref());
    let mut voices = Voices::load(&dir, config.synth)?.choosing(&config.voice)?;
    let settings = state.path().join(SETTINGS_FILE);
    for problem in voices.choosing_leniently(&user.voice) {
        log(&format!("warning: {}: {problem}", settings.display()));
    }
    Ok(voices)
}

/// [`load_voices`] for the device itself (`run`, `speak`): a mistake of the config never
/// stops it. A `voices` directory of the config that does not load is set aside for the
/// usual places (unless `--voices` named one), and a `[voice]` choice that cannot be
/// followed leaves that language speaking its pack's default; each such mistake is returned
/// (naming the config file and the key) for the caller to log and announce.
///
/// # Errors
/// [`VoiceError`]s of the packs themselves.
pub fn load_voices_lenient(
    state: &StateDir,
    config: &Config,
    user: &UserSettings,
    voices_dir: Option<&Path>,
) -> Result<(Voices, Vec<String>), VoiceError> {
    let mut mistakes = Vec::new();
    let file = config
        .source
        .as_ref()
        .map_or_else(|| "the config".to_owned(), |p| p.display().to_string());
    let dir = locate_voices(voices_dir, config.voices.as_deref());
    let mut voices = match Voices::load(&dir, config.synth) {
        Ok(voices) => voices,
        Err(e) if voices_dir.is_none() && config.voices.is_some() => {
            let usual = locate_voices(None, None);
            mistakes.push(format!(
                "{file}: key `voices`: {e}; use a directory of voice packs, or leave the key                  out for {}",
                usual.display()
            ));
            Voices::load(&usual, config.synth)?
        }
        Err(e) => return Err(e),
    };
    for problem in voices.choosing_leniently(&config.voice) {
        mistakes.push(format!("{file}: key `voice`: {problem}"));
    }
    let settings = state.path().join(SETTINGS_FILE);
    for problem in voices.choosing_leniently(&user.voice) {
        log(&format!("warning: {}: {problem}", settings.display()));
    }
    Ok((voices, mistakes))
}

/// The language to speak when `listening.language` has no voice pack: a language the
/// config or the settings named is a mistake (returned, to log and announce); one that came
/// from the system's locale is not (logged): Danish speaks, or else the first language.
pub fn settle_language(
    voices: &Voices,
    config: &Config,
    user: &UserSettings,
    listening: &mut Listening,
) -> Option<String> {
    let Err(e) = voices.pack(&listening.language) else {
        return None;
    };
    let chosen = user.language.is_some() || config.language_set;
    let instead = if !chosen && voices.pack(crate::config::FALLBACK_LANGUAGE).is_ok() {
        crate::config::FALLBACK_LANGUAGE.to_owned()
    } else {
        voices.languages().into_iter().next()?
    };
    let old = std::mem::replace(&mut listening.language, instead.clone());
    if chosen {
        Some(format!("language `{old}`: {e}; speaking `{instead}`"))
    } else {
        log(&format!(
            "the locale's language `{old}` has no voice pack; speaking `{instead}` (set \
             `language` in the config to choose)"
        ));
        None
    }
}

/// The spoken form of a failure to give a code: what a blind user hears instead of a code.
pub fn prompt_for(error: &TakeError) -> Prompt {
    match error {
        TakeError::ClockNotSet { .. } => Prompt::ClockNotSet,
        TakeError::ClockBackwards { .. } => Prompt::ClockBackwards,
        // Said with what to do: a helper can set one up (the log has the command).
        TakeError::State(StateError::NoToken { .. }) => Prompt::NoTokenSetUp,
        // Damaged or truncated: the token must be enrolled again; the user should hear that,
        // not just that the device is blocked.
        TakeError::State(StateError::Corrupt { .. }) => Prompt::StateDamaged,
        // The HOTP counter is used up: the token itself can give no more codes.
        TakeError::State(StateError::CounterExhausted) => Prompt::DeviceBlocked,
        // The rest (a file too open or not ours, written by a newer program, unreadable)
        // need a helper, not a new enrolment. "Blocked" would be wrong: in MitID's words
        // that means the credential was blocked.
        _ => Prompt::NeedsService,
    }
}

/// Where the voice packs are: `explicit` (`--voices`, `CODEREADER_VOICES`), the config's
/// `voices`, `../share/codereader/voices` beside the program (an installed tarball),
/// `/usr/share/codereader/voices`, and last the source tree's `voices/` (development).
pub fn locate_voices(explicit: Option<&Path>, configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit.or(configured) {
        return dir.to_path_buf();
    }
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(Path::parent)
            .map(|prefix| prefix.join("share/codereader/voices"))
    });
    let candidates = beside_exe.into_iter().chain([
        PathBuf::from("/usr/share/codereader/voices"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices"),
    ]);
    let mut last = PathBuf::from("/usr/share/codereader/voices");
    for dir in candidates {
        if dir.is_dir() {
            return dir;
        }
        last = dir;
    }
    last
}

/// Clips found unusable, per voice: each voice's problem is logged once (however often its
/// synthesiser is rebuilt), and `run` announces once that another voice speaks for them.
#[derive(Debug, Clone, Default)]
pub struct ClipTrouble(Arc<Mutex<TroubleLog>>);

#[derive(Debug, Default)]
struct TroubleLog {
    voices: BTreeSet<String>,
    unannounced: bool,
}

impl ClipTrouble {
    /// Logs `message` about `voice` unless something was already logged about that voice.
    pub fn report(&self, voice: &str, message: &str) {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if log.voices.insert(voice.to_owned()) {
            log.unannounced = true;
            drop(log);
            crate::process::log(&format!("warning: {message}"));
        }
    }

    /// Whether a problem was reported that has not been announced yet.
    pub fn unannounced(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unannounced
    }

    /// Marks every problem reported so far as announced.
    pub fn announced(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unannounced = false;
    }
}

/// The loaded voice packs, the voice chosen per language and the synthesiser choice.
#[derive(Debug)]
pub struct Voices {
    library: VoiceLibrary,
    /// Packs speaking a voice the user chose instead of the pack's default.
    chosen: BTreeMap<String, VoicePack>,
    choice: SynthChoice,
    trouble: ClipTrouble,
}

impl Voices {
    /// Loads every pack in `dir`: the words and each voice's clip manifest, not the clips
    /// (the synthesiser reads those of the speed step it speaks at, when it first does).
    ///
    /// # Errors
    /// [`VoiceError::Load`].
    pub fn load(dir: &Path, choice: SynthChoice) -> Result<Self, VoiceError> {
        let library = VoiceLibrary::load_manifests(dir).map_err(|error| VoiceError::Load {
            dir: dir.to_path_buf(),
            error,
        })?;
        Ok(Voices {
            library,
            chosen: BTreeMap::new(),
            choice,
            trouble: ClipTrouble::default(),
        })
    }

    /// Speaks each language in `picks` (tag -> voice name, the config's `[voice]`) with that
    /// voice instead of its pack's default.
    ///
    /// # Errors
    /// [`VoiceError::UnknownLanguage`] or [`VoiceError::Voice`] (no such voice: the message
    /// lists the pack's voices; or its clips are broken).
    pub fn choosing(mut self, picks: &BTreeMap<String, String>) -> Result<Self, VoiceError> {
        for (tag, name) in picks {
            self.choose(tag, name)?;
        }
        Ok(self)
    }

    /// Speaks each language in `picks` (the user's choices, kept in the state directory)
    /// with that voice where possible. A choice that cannot be followed (the language or the
    /// voice is gone, or the voice's clips are broken) leaves that language speaking what it
    /// spoke before (the config's choice or the pack's default) and gives a message saying
    /// so; the others still apply.
    pub fn choosing_leniently(&mut self, picks: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        for (tag, name) in picks {
            if let Err(e) = self.choose(tag, name) {
                let why = match &e {
                    VoiceError::Voice { error, .. } => error.to_string(),
                    other => other.to_string(),
                };
                let instead = match self.pack(tag) {
                    Ok(pack) => format!("speaking `{}` instead", pack.voice().name),
                    Err(_) => "the choice is ignored".to_owned(),
                };
                problems.push(format!(
                    "the voice chosen for `{tag}`, `{name}`, cannot be used ({why}); {instead}"
                ));
            }
        }
        problems
    }

    /// Speaks `tag` with its voice `name` from now on.
    ///
    /// # Errors
    /// [`VoiceError::UnknownLanguage`], or [`VoiceError::Voice`] (no such voice: the message
    /// lists the pack's voices; or not one of its clips at the speed step nearest to 0 can be
    /// used; damaged clips among usable ones, and the other steps, are spoken by live
    /// espeak-ng when first met). Nothing changes then.
    pub fn choose(&mut self, tag: &str, name: &str) -> Result<(), VoiceError> {
        let wrap = |error| VoiceError::Voice {
            tag: tag.to_owned(),
            error,
        };
        let pack = self.pack(tag)?.with_voice_manifest(name).map_err(wrap)?;
        if let Some(clips) = pack.clips() {
            clips.check_step_usable(Speed::default()).map_err(wrap)?;
        }
        self.chosen.insert(tag.to_owned(), pack);
        Ok(())
    }

    /// Whether `pack`'s voice is spoken by something else than it names: under
    /// `synth = "auto"`, a voice whose engine is not espeak-ng but which has no clips is
    /// spoken by live espeak-ng. Then the one line that says so, which voice speaks instead
    /// and how to render the clips.
    pub fn fallback_note(&self, pack: &VoicePack) -> Option<String> {
        let voice = pack.voice();
        let falls_back = self.choice == SynthChoice::Auto
            && pack.clips().is_none()
            && pack.clip_problem().is_none()
            && !matches!(voice.engine, Engine::EspeakNg(_));
        falls_back.then(|| {
            format!(
                "voice `{}` of `{}` ({}) has no clips in {}, so live espeak-ng (voice `{}`) \
                 speaks instead; render the clips with `cargo xtask voices {}`",
                voice.name,
                pack.tag(),
                voice.engine,
                voice.clips_dir.display(),
                pack.espeak_voice(),
                pack.tag()
            )
        })
    }

    /// Every language's voices, for `codereader settings --list-voices`: per language its
    /// name, the voice speaking now and each voice with its engine and clips.
    pub fn listing(&self) -> String {
        let mut text = String::new();
        for tag in self.languages() {
            let Ok(pack) = self.pack(&tag) else { continue };
            let now = pack.voice().name.clone();
            text.push_str(&format!("{tag} ({}): speaking {now}\n", pack.name()));
            for (i, voice) in pack.voices().iter().enumerate() {
                let mut notes = vec![voice.engine.to_string()];
                if i == 0 {
                    notes.push("pack default".to_owned());
                }
                notes.push(match pack.with_voice(&voice.name) {
                    Err(e) => format!("BROKEN: {e}"),
                    Ok(voiced) => match (voiced.clips(), &voice.engine) {
                        (Some(clips), _) => {
                            let steps: Vec<String> =
                                clips.speeds.iter().map(|s| s.step().to_string()).collect();
                            format!("clips at speed steps {}", steps.join(", "))
                        }
                        (None, Engine::EspeakNg(_)) => "no clips: live espeak-ng".to_owned(),
                        (None, _) if self.choice == SynthChoice::Auto => format!(
                            "NO CLIPS: live espeak-ng `{}` speaks instead; render them with \
                             `cargo xtask voices {tag}`",
                            voiced.espeak_voice()
                        ),
                        (None, _) => "NO CLIPS".to_owned(),
                    },
                });
                let mark = if voice.name == now { "*" } else { " " };
                text.push_str(&format!("  {mark} {} ({})\n", voice.name, notes.join("; ")));
            }
        }
        text
    }

    /// The voices of `tag`'s pack (default first) and the one speaking now.
    ///
    /// # Errors
    /// [`VoiceError::UnknownLanguage`].
    pub fn voice_names(&self, tag: &str) -> Result<(Vec<String>, String), VoiceError> {
        let pack = self.pack(tag)?;
        Ok((pack.voice_names(), pack.voice().name.clone()))
    }

    /// Language tags, sorted.
    pub fn languages(&self) -> Vec<String> {
        self.library.languages().map(str::to_owned).collect()
    }

    /// The pack for `tag`.
    ///
    /// # Errors
    /// [`VoiceError::UnknownLanguage`].
    pub fn pack(&self, tag: &str) -> Result<&VoicePack, VoiceError> {
        self.chosen
            .get(tag)
            .or_else(|| self.library.pack(tag))
            .ok_or_else(|| VoiceError::UnknownLanguage {
                tag: tag.to_owned(),
                available: self.languages().join(", "),
            })
    }

    /// The pack for `tag`, or else the first one (so errors can still be spoken).
    pub fn pack_or_first(&self, tag: &str) -> Option<&VoicePack> {
        self.chosen
            .get(tag)
            .or_else(|| self.library.pack(tag))
            .or_else(|| self.library.packs().next())
    }

    /// The language after `tag`, wrapping around.
    pub fn next_language(&self, tag: &str) -> String {
        let tags = self.languages();
        let next = tags
            .iter()
            .position(|t| t == tag)
            .map_or(0, |i| (i + 1) % tags.len().max(1));
        tags.get(next).cloned().unwrap_or_else(|| tag.to_owned())
    }

    /// Whether `pack`'s language can be spoken at all: by the voice's clips at the step read
    /// first, every one of them playable; else by live espeak-ng (it has the pack's voice);
    /// else by the voice's clips, all of them usable at every step.
    ///
    /// The clips are asked first because they are cheap to check (their headers) and
    /// starting espeak-ng is not; a clip found bad later, at another step, is said by
    /// espeak-ng then ([`FallbackSynth`]), or fails that phrase where nothing can say it.
    ///
    /// # Errors
    /// Why it cannot.
    pub fn check_speakable(&self, pack: &VoicePack) -> Result<(), String> {
        if let (SynthChoice::Clips | SynthChoice::Auto, Some(clips)) = (self.choice, pack.clips()) {
            if clips.check_step(Speed::default()).is_ok() {
                return Ok(());
            }
        }
        let voice = pack.espeak_voice();
        let espeak = match Espeak::shared().and_then(|engine| engine.has_voice(voice)) {
            Ok(true) => return Ok(()),
            Ok(false) => format!("espeak-ng has no voice `{voice}`"),
            Err(e) => e.to_string(),
        };
        let clips = match (self.choice, pack.clips()) {
            (SynthChoice::Espeak, _) => "the config chose espeak-ng".to_owned(),
            (_, None) => pack
                .clip_problem()
                .unwrap_or("the voice has no clips")
                .to_owned(),
            // Every step is checked here (not only the one read first): without espeak-ng
            // no other voice can say a damaged clip's phrase.
            (_, Some(clips)) => match ClipSet::load(&clips.dir) {
                Ok(_) => return Ok(()),
                Err(e) => format!("not all its clips can be played ({e})"),
            },
        };
        Err(format!("{espeak}, and {clips}"))
    }

    /// The first language other than `tag` that can be spoken, to say in it that `tag`
    /// cannot.
    pub fn speakable_instead(&self, tag: &str) -> Option<String> {
        self.languages().into_iter().find(|other| {
            other != tag
                && self
                    .pack(other)
                    .is_ok_and(|pack| self.check_speakable(pack).is_ok())
        })
    }

    /// The clip problems met so far (for `run` to announce).
    pub fn trouble(&self) -> &ClipTrouble {
        &self.trouble
    }

    /// A synthesiser for `pack`, as the config chose. A voice's clips are never the only
    /// source: each phrase whose clip is missing or damaged is spoken by live espeak-ng in
    /// the pack's language ([`FallbackSynth`]), and a voice whose clips cannot be used at all
    /// is spoken by espeak-ng; either is logged once per voice ([`Voices::trouble`]).
    ///
    /// # Errors
    /// [`VoiceError::Synth`].
    pub fn synth(&self, pack: &VoicePack) -> Result<Box<dyn Synth>, VoiceError> {
        let wrap = |error| VoiceError::Synth {
            tag: pack.tag().to_owned(),
            error,
        };
        let label = format!("voice `{}` of `{}`", pack.voice().name, pack.tag());
        let instead = format!(
            "live espeak-ng (voice `{}`) speaks instead; render the clips again with `cargo \
             xtask voices {}`",
            pack.espeak_voice(),
            pack.tag()
        );
        let use_clips = match self.choice {
            SynthChoice::Clips => true,
            SynthChoice::Espeak => false,
            SynthChoice::Auto => pack.clips().is_some(),
        };
        if !use_clips {
            if let (SynthChoice::Auto, Some(problem)) = (self.choice, pack.clip_problem()) {
                self.trouble.report(
                    &label,
                    &format!("{label}: its clips cannot be used ({problem}), so {instead}"),
                );
            }
            let engine = Espeak::shared().map_err(wrap)?;
            return Ok(Box::new(engine.voice(pack).map_err(wrap)?));
        }
        let mut clips = match ClipSynth::load(pack) {
            Ok(clips) => clips,
            Err(e) => {
                let why = pack
                    .clip_problem()
                    .map_or_else(|| e.to_string(), str::to_owned);
                self.trouble
                    .report(&label, &format!("{label}: {why}, so {instead}"));
                let engine = Espeak::shared().map_err(wrap)?;
                return Ok(Box::new(engine.voice(pack).map_err(wrap)?));
            }
        };
        // The step read now, and each step read later (a speed first spoken at), with its
        // bad files; logged once per voice.
        let report_problems = {
            let (trouble, label, instead) = (self.trouble.clone(), label.clone(), instead.clone());
            move |problems: &[String]| {
                if let Some(first) = problems.first() {
                    let more = match problems.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    };
                    trouble.report(
                        &label,
                        &format!(
                            "{label}: a clip cannot be played ({first}{more}), so for those \
                             phrases {instead}"
                        ),
                    );
                }
            }
        };
        report_problems(&clips.problems());
        clips.on_step_problems(ProblemReport(Arc::new(report_problems)));
        // Live espeak-ng starts only if a phrase needs it: loading it costs more than
        // speaking a whole code from clips.
        let start_backup: StartBackup = {
            let pack = pack.clone();
            Box::new(move || {
                let engine = Espeak::shared()?;
                Ok(Box::new(engine.voice(&pack)?) as Box<dyn Synth>)
            })
        };
        let trouble = self.trouble.clone();
        let key = label.clone();
        let synth = FallbackSynth::new(
            Box::new(clips),
            start_backup,
            &label,
            Box::new(move |message| trouble.report(&key, message)),
        );
        Ok(Box::new(synth))
    }
}

/// The speech crate's settings for the user's volume and rate steps.
pub fn speech_settings(listening: &Listening) -> Settings {
    Settings {
        speed: Speed::new(listening.rate),
        volume: Volume::new(listening.volume),
    }
}

/// What the device says.
#[derive(Debug, Clone)]
pub enum Message<'a> {
    /// A code, first time or again.
    Code {
        /// The digits.
        code: &'a str,
        /// "Again" instead of "Your code is".
        replay: bool,
    },
    /// A new code, asked for as a replay after the last code's time step had passed: "That
    /// code has expired. Your new code is ...".
    ExpiredCode {
        /// The digits of the new code.
        code: &'a str,
    },
    /// A code after a warning ("the clock may be wrong"), said between the start earcon and
    /// the intro.
    WarnedCode {
        /// What to say first.
        warning: Prompt,
        /// The digits.
        code: &'a str,
        /// What is said before the digits.
        intro: CodeIntro,
    },
    /// One prompt: feedback or an error.
    Prompt(Prompt),
    /// A setting is already at its end: a short tone instead of "louder" that is not louder.
    Limit,
    /// A key that does nothing: a short low tone.
    UnknownKey,
    /// `run` is quitting: the falling chime.
    Goodbye,
    /// The key map, most important action first: each action with up to two of its keys
    /// (by name, as the config writes them).
    Help {
        /// Each action's help prompt and its keys' names, in the order to say them.
        actions: &'a [(Prompt, Vec<String>)],
    },
    /// `run` has started: the start tone, then that the chosen language cannot be spoken
    /// (when so), "Ready" if configured, and "No keypad is connected" when there is nothing
    /// to listen to.
    Ready {
        /// Say that the chosen language cannot be spoken (in the language used instead).
        language_unusable: bool,
        /// Say that the settings have a mistake (the defaults are used for it) and a helper
        /// can fix it.
        settings_mistake: bool,
        /// Say that no token is set up yet and a helper can do it.
        no_token: bool,
        /// Say "Ready" after the tone.
        phrase: bool,
        /// Say that no input is connected.
        no_input: bool,
    },
    /// Status, as a sentence: "Token ending in 0 8 1 5. Clock set." and each problem, or
    /// "All is well." when there is none.
    Status {
        /// Up to four digits of the token's serial number.
        serial_digits: &'a str,
        /// Whether to say that the clock is set (a TOTP token whose clock is fine).
        clock_set: bool,
        /// Problems to report (clock, battery), in order.
        problems: &'a [Prompt],
    },
}

/// The message for a code said with `intro`: after "the clock may be wrong" when `verdict`
/// is to warn.
pub fn code_message(code: &str, intro: CodeIntro, verdict: ClockVerdict) -> Message<'_> {
    match (verdict, intro) {
        (ClockVerdict::Warn, intro) => Message::WarnedCode {
            warning: Prompt::ClockUnsynced,
            code,
            intro,
        },
        (_, CodeIntro::Expired) => Message::ExpiredCode { code },
        (_, intro) => Message::Code {
            code,
            replay: intro == CodeIntro::Replay,
        },
    }
}

/// Plans `message` in `pack`'s language.
///
/// # Errors
/// [`SpeechError::InvalidCode`] if a code is not 6 to 8 digits.
pub fn plan(pack: &VoicePack, message: &Message<'_>) -> Result<Utterance, SpeechError> {
    match message {
        Message::Code { code, replay } => {
            let intro = if *replay {
                CodeIntro::Replay
            } else {
                CodeIntro::First
            };
            Utterance::code(pack, code, intro)
        }
        Message::ExpiredCode { code } => Utterance::code(pack, code, CodeIntro::Expired),
        Message::WarnedCode {
            warning,
            code,
            intro,
        } => warned_code(pack, *warning, code, *intro),
        Message::Prompt(prompt) => Ok(Utterance::prompt(pack, *prompt)),
        Message::Limit | Message::Goodbye => {
            Ok(Utterance::from_segments(vec![Segment::Earcon(Earcon::End)]))
        }
        Message::UnknownKey => Ok(Utterance::from_segments(vec![Segment::Earcon(
            Earcon::Unknown,
        )])),
        Message::Help { actions } => Ok(help(pack, actions)),
        Message::Ready {
            language_unusable,
            settings_mistake,
            no_token,
            phrase,
            no_input,
        } => {
            let prompts = language_unusable
                .then_some(Prompt::LanguageUnusable)
                .into_iter()
                .chain(settings_mistake.then_some(Prompt::SettingsMistake))
                .chain(no_token.then_some(Prompt::NoTokenSetUp))
                .chain(phrase.then_some(Prompt::Ready))
                .chain(no_input.then_some(Prompt::NoInput));
            Ok(ready(pack, prompts))
        }
        Message::Status {
            serial_digits,
            clock_set,
            problems,
        } => Ok(status(pack, serial_digits, *clock_set, problems)),
    }
}

/// [`Message::WarnedCode`]: after the start earcon and its pause, `warning`, then the code
/// as usual.
fn warned_code(
    pack: &VoicePack,
    warning: Prompt,
    code: &str,
    intro: CodeIntro,
) -> Result<Utterance, SpeechError> {
    let plain = Utterance::code(pack, code, intro)?;
    let mut segments = plain.segments().to_vec();
    let at = segments
        .iter()
        .position(|s| matches!(s, Segment::Speech(_)))
        .unwrap_or(0);
    segments.splice(
        at..at,
        [
            Segment::Speech(pack.phrase(PhraseKey::Prompt(warning))),
            Segment::Pause {
                ms: pack.pauses().between_groups_ms,
            },
        ],
    );
    Ok(Utterance::from_segments(segments))
}

/// [`Message::Ready`]: the start tone, then each of `prompts` after a pause.
fn ready(pack: &VoicePack, prompts: impl IntoIterator<Item = Prompt>) -> Utterance {
    let mut segments = vec![Segment::Earcon(Earcon::Start)];
    for prompt in prompts {
        segments.push(Segment::Pause {
            ms: pack.pauses().around_earcon_ms,
        });
        segments.push(Segment::Speech(pack.phrase(PhraseKey::Prompt(prompt))));
    }
    Utterance::from_segments(segments)
}

/// [`Message::Status`]: between the start and end tones, "Token ending in" and the serial's
/// digits (when there are any), "Clock set." when `clock_set`, and each problem or "All is
/// well.".
fn status(
    pack: &VoicePack,
    serial_digits: &str,
    clock_set: bool,
    problems: &[Prompt],
) -> Utterance {
    let pauses = pack.pauses();
    let mut segments = vec![
        Segment::Earcon(Earcon::Start),
        Segment::Pause {
            ms: pauses.around_earcon_ms,
        },
    ];
    let digits: Vec<u8> = serial_digits
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| d - b'0')
        .collect();
    if !digits.is_empty() {
        segments.push(Segment::Speech(
            pack.phrase(PhraseKey::Prompt(Prompt::StatusToken)),
        ));
        segments.push(Segment::Pause {
            ms: pauses.after_intro_ms,
        });
    }
    for (i, d) in digits.into_iter().enumerate() {
        if i > 0 {
            segments.push(Segment::Pause {
                ms: pauses.between_digits_ms,
            });
        }
        segments.push(Segment::Speech(pack.phrase(PhraseKey::Digit(d))));
    }
    let sentences = clock_set
        .then_some(Prompt::StatusClockSet)
        .into_iter()
        .chain(problems.iter().copied())
        .chain(problems.is_empty().then_some(Prompt::StatusAllWell));
    for prompt in sentences {
        segments.push(Segment::Pause {
            ms: pauses.between_groups_ms,
        });
        segments.push(Segment::Speech(pack.phrase(PhraseKey::Prompt(prompt))));
    }
    segments.push(Segment::Pause {
        ms: pauses.around_earcon_ms,
    });
    segments.push(Segment::Earcon(Earcon::End));
    Utterance::from_segments(segments)
}

/// What `message` says, as text for a braille display or large print, in `pack`'s
/// language; `None` for a code (shown with its validity by the display's own code view) and
/// for the tones. Digits stay digits ("Token ending in 0815.").
pub fn text(pack: &VoicePack, message: &Message<'_>) -> Option<String> {
    let say = |prompt| pack.text(PhraseKey::Prompt(prompt)).to_owned();
    let sentences: Vec<String> = match message {
        Message::Code { .. }
        | Message::ExpiredCode { .. }
        | Message::WarnedCode { .. }
        | Message::Limit
        | Message::Goodbye
        | Message::UnknownKey => return None,
        Message::Prompt(prompt) => vec![say(*prompt)],
        Message::Status {
            serial_digits,
            clock_set,
            problems,
        } => {
            let mut all = Vec::new();
            if !serial_digits.is_empty() {
                all.push(format!("{} {serial_digits}.", say(Prompt::StatusToken)));
            }
            if *clock_set {
                all.push(say(Prompt::StatusClockSet));
            }
            all.extend(problems.iter().map(|p| say(*p)));
            if problems.is_empty() {
                all.push(say(Prompt::StatusAllWell));
            }
            all
        }
        Message::Help { actions } => std::iter::once(say(Prompt::HelpIntro))
            .chain(actions.iter().map(|(prompt, keys)| {
                let or = format!(" {} ", say(Prompt::KeyOr));
                format!("{} {}.", say(*prompt), keys.join(&or))
            }))
            .collect(),
        Message::Ready {
            language_unusable,
            settings_mistake,
            no_token,
            phrase,
            no_input,
        } => [
            (*language_unusable, Prompt::LanguageUnusable),
            (*settings_mistake, Prompt::SettingsMistake),
            (*no_token, Prompt::NoTokenSetUp),
            (*phrase, Prompt::Ready),
            (*no_input, Prompt::NoInput),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, prompt)| say(prompt))
        .collect(),
    };
    (!sentences.is_empty()).then(|| sentences.join(" "))
}

/// `utterance` with `prompt` said first (e.g. that the chosen language cannot be spoken).
pub fn after_notice(pack: &VoicePack, prompt: Prompt, utterance: &Utterance) -> Utterance {
    let ms = pack.pauses().between_groups_ms;
    after_notice_and(pack, prompt, Segment::Until { ms }, utterance)
}

/// `utterance` with `prompt` said first, and `utterance` beginning `ms` after the start of
/// what is said, whatever the speed: the wait for the next time step after "this code is
/// about to change" (the notice is part of the wait; if it is longer, the code follows it).
pub fn after_notice_until(
    pack: &VoicePack,
    prompt: Prompt,
    ms: u32,
    utterance: &Utterance,
) -> Utterance {
    after_notice_and(pack, prompt, Segment::Until { ms }, utterance)
}

fn after_notice_and(
    pack: &VoicePack,
    prompt: Prompt,
    gap: Segment,
    utterance: &Utterance,
) -> Utterance {
    let mut segments = vec![Segment::Speech(pack.phrase(PhraseKey::Prompt(prompt))), gap];
    segments.extend(utterance.segments().iter().cloned());
    Utterance::from_segments(segments)
}

/// The spoken help: "Keys, most important first." then each action's prompt and its keys
/// ("Hear your code: keypad enter or keypad 5.").
fn help(pack: &VoicePack, actions: &[(Prompt, Vec<String>)]) -> Utterance {
    let pauses = pack.pauses();
    let mut segments = vec![
        Segment::Earcon(Earcon::Start),
        Segment::Pause {
            ms: pauses.around_earcon_ms,
        },
        Segment::Speech(pack.phrase(PhraseKey::Prompt(Prompt::HelpIntro))),
    ];
    for (prompt, keys) in actions {
        segments.push(Segment::Pause {
            ms: pauses.between_groups_ms,
        });
        segments.push(Segment::Speech(pack.phrase(PhraseKey::Prompt(*prompt))));
        for (i, key) in keys.iter().enumerate() {
            segments.push(Segment::Pause {
                ms: pauses.between_digits_ms,
            });
            if i > 0 {
                segments.push(Segment::Speech(
                    pack.phrase(PhraseKey::Prompt(Prompt::KeyOr)),
                ));
                segments.push(Segment::Pause {
                    ms: pauses.between_digits_ms,
                });
            }
            segments.extend(key_words(key).into_iter().map(|key| {
                Segment::Speech(match key {
                    Word::Phrase(key) => pack.phrase(key),
                    Word::Text(text) => codereader_speech::Phrase {
                        key: PhraseKey::Text,
                        text,
                    },
                })
            }));
        }
    }
    segments.push(Segment::Pause {
        ms: pauses.around_earcon_ms,
    });
    segments.push(Segment::Earcon(Earcon::End));
    Utterance::from_segments(segments)
}

/// One word of a key's spoken name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// A pack phrase (a key name prompt or a digit).
    Phrase(PhraseKey),
    /// Anything else, spoken live as written (a letter, `F5`).
    Text(String),
}

/// How a key is said: a terminal key (`s`, `space`, `+`) or an evdev key (`KEY_KP5`,
/// `KEY_ENTER`, `BTN_0`) as words: "keypad" before keypad keys, the pack's names of the
/// common keys, digits as digit words, and other names as written.
fn key_words(name: &str) -> Vec<Word> {
    let (keypad, rest) = match name.strip_prefix("KEY_KP") {
        Some(rest) => (true, rest),
        None => (false, name.strip_prefix("KEY_").unwrap_or(name)),
    };
    let lower = rest.to_ascii_lowercase();
    let prompt = match lower.as_str() {
        "enter" | "return" => Some(Prompt::KeyEnter),
        "space" => Some(Prompt::KeySpace),
        "esc" | "escape" => Some(Prompt::KeyEscape),
        "up" => Some(Prompt::KeyUp),
        "down" => Some(Prompt::KeyDown),
        "left" => Some(Prompt::KeyLeft),
        "right" => Some(Prompt::KeyRight),
        "plus" | "+" => Some(Prompt::KeyPlus),
        "minus" | "-" => Some(Prompt::KeyMinus),
        "asterisk" | "*" => Some(Prompt::KeyStar),
        "slash" | "/" => Some(Prompt::KeySlash),
        "dot" | "." => Some(Prompt::KeyDot),
        _ => None,
    };
    let word = match (prompt, lower.as_bytes()) {
        (Some(prompt), _) => Word::Phrase(PhraseKey::Prompt(prompt)),
        (None, [d]) if d.is_ascii_digit() => Word::Phrase(PhraseKey::Digit(d - b'0')),
        (None, _) => Word::Text(lower.replace('_', " ")),
    };
    if keypad {
        vec![Word::Phrase(PhraseKey::Prompt(Prompt::KeyKeypad)), word]
    } else {
        vec![word]
    }
}

/// The keys help names for an action, at most two: keypad keys first, then letters and
/// digits, then named keys; a second key only if it is not a bare symbol (which a
/// synthesiser may not say).
pub fn keys_to_name(mut names: Vec<String>) -> Vec<String> {
    let rank = |name: &str| {
        if name.starts_with("KEY_KP") {
            0
        } else if name.chars().count() == 1 && name.chars().all(char::is_alphanumeric) {
            1
        } else if name.chars().count() > 1 {
            2
        } else {
            3
        }
    };
    names.sort_by_key(|n| rank(n));
    names.truncate(2);
    if names.get(1).is_some_and(|n| rank(n) == 3) {
        names.truncate(1);
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_state_failure_gets_its_spoken_prompt() {
        let path = PathBuf::from("/state/token.toml");
        let damaged = TakeError::State(StateError::Corrupt {
            path: path.clone(),
            reason: "checksum does not match".into(),
        });
        assert_eq!(prompt_for(&damaged), Prompt::StateDamaged);
        let newer = TakeError::State(StateError::FutureVersion {
            path,
            found: 9,
            supported: 1,
        });
        assert_eq!(prompt_for(&newer), Prompt::NeedsService);
        let open = TakeError::State(StateError::Permissions {
            path: PathBuf::from("/state/token.toml"),
            mode: 0o644,
        });
        assert_eq!(prompt_for(&open), Prompt::NeedsService);
        let exhausted = TakeError::State(StateError::CounterExhausted);
        assert_eq!(prompt_for(&exhausted), Prompt::DeviceBlocked);
        let clock = TakeError::ClockNotSet { now: 1, floor: 2 };
        assert_eq!(prompt_for(&clock), Prompt::ClockNotSet);
    }

    fn shipped() -> Voices {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
        Voices::load(&dir, SynthChoice::Espeak).unwrap()
    }

    fn picks(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(t, v)| ((*t).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_language_speaks_its_default_unless_the_config_picks_another() {
        let voices = shipped();
        assert_eq!(voices.pack("en").unwrap().voice().name, "flite-slt");
        assert_eq!(voices.pack("da").unwrap().voice().name, "espeak");
        let voices = voices.choosing(&picks(&[("en", "espeak")])).unwrap();
        assert_eq!(voices.pack("en").unwrap().voice().name, "espeak");
        assert_eq!(voices.pack_or_first("en").unwrap().voice().name, "espeak");
        let (names, now) = voices.voice_names("en").unwrap();
        assert_eq!(names, ["flite-slt", "espeak"]);
        assert_eq!(now, "espeak");
    }

    /// The shipped packs' `voice.toml` files without any clips (a development machine may
    /// have rendered clips into `voices/`).
    fn packs_without_clips() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../voices");
        for tag in ["da", "en"] {
            std::fs::create_dir(dir.path().join(tag)).unwrap();
            std::fs::copy(
                shipped.join(tag).join("voice.toml"),
                dir.path().join(tag).join("voice.toml"),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn the_users_choices_apply_and_those_that_cannot_are_reported() {
        let voices = shipped().choosing(&picks(&[("en", "espeak")])).unwrap();
        let mut voices = voices;
        let problems = voices.choosing_leniently(&picks(&[
            ("da", "espeak"),
            ("en", "robot"),
            ("xx", "espeak"),
        ]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("`robot`")
                && problems[0].contains("flite-slt, espeak")
                && problems[0].contains("speaking `espeak` instead"),
            "{}",
            problems[0]
        );
        assert!(problems[1].contains("`xx`"), "{}", problems[1]);
        // The config's choice still speaks English; the valid choice applied.
        assert_eq!(voices.pack("en").unwrap().voice().name, "espeak");
        assert_eq!(voices.pack("da").unwrap().voice().name, "espeak");
        voices.choose("en", "flite-slt").unwrap();
        assert_eq!(voices.pack("en").unwrap().voice().name, "flite-slt");
        assert!(voices.choose("en", "robot").is_err());
        assert_eq!(voices.pack("en").unwrap().voice().name, "flite-slt");
    }

    #[test]
    fn a_voice_without_clips_spoken_by_espeak_is_noted() {
        let dir = packs_without_clips();
        let voices = Voices::load(dir.path(), SynthChoice::Auto).unwrap();
        let note = voices.fallback_note(voices.pack("en").unwrap()).unwrap();
        for part in [
            "`flite-slt`",
            "flite:slt",
            "live espeak-ng (voice `en`)",
            "cargo xtask voices en",
        ] {
            assert!(note.contains(part), "{part:?} missing in {note}");
        }
        // An espeak-ng voice without clips is spoken by espeak-ng as it should be.
        assert!(voices.fallback_note(voices.pack("da").unwrap()).is_none());
        let voices = voices.choosing(&picks(&[("en", "espeak")])).unwrap();
        assert!(voices.fallback_note(voices.pack("en").unwrap()).is_none());
        // With synth = "espeak" the config asked for espeak-ng: nothing to note.
        let voices = Voices::load(dir.path(), SynthChoice::Espeak).unwrap();
        assert!(voices.fallback_note(voices.pack("en").unwrap()).is_none());
        let listing = Voices::load(dir.path(), SynthChoice::Auto)
            .unwrap()
            .listing();
        assert!(
            listing.contains("* flite-slt (flite:slt; pack default; NO CLIPS"),
            "{listing}"
        );
        assert!(
            listing.contains("  espeak (espeak-ng:en; no clips"),
            "{listing}"
        );
    }

    /// The phrase keys an utterance says, in order.
    fn said(utterance: &Utterance) -> Vec<PhraseKey> {
        utterance
            .segments()
            .iter()
            .filter_map(|s| match s {
                Segment::Speech(p) => Some(p.key),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn status_is_a_sentence_and_an_expired_replay_says_so() {
        let voices = shipped();
        let pack = voices.pack("en").unwrap();
        let p = PhraseKey::Prompt;
        let d = PhraseKey::Digit;
        let well = plan(
            pack,
            &Message::Status {
                serial_digits: "0815",
                clock_set: true,
                problems: &[],
            },
        )
        .unwrap();
        assert_eq!(
            said(&well),
            [
                p(Prompt::StatusToken),
                d(0),
                d(8),
                d(1),
                d(5),
                p(Prompt::StatusClockSet),
                p(Prompt::StatusAllWell)
            ]
        );
        let unwell = plan(
            pack,
            &Message::Status {
                serial_digits: "",
                clock_set: false,
                problems: &[Prompt::ClockBackwards, Prompt::LowBattery],
            },
        )
        .unwrap();
        assert_eq!(
            said(&unwell),
            [p(Prompt::ClockBackwards), p(Prompt::LowBattery)]
        );
        let expired = plan(pack, &Message::ExpiredCode { code: "123456" }).unwrap();
        assert_eq!(said(&expired)[0], p(Prompt::ExpiredIntro));
        assert_eq!(said(&expired).len(), 7);
    }

    #[test]
    fn messages_read_as_text_for_braille_and_large_print() {
        let voices = shipped();
        let pack = voices.pack("en").unwrap();
        let status = Message::Status {
            serial_digits: "0815",
            clock_set: true,
            problems: &[],
        };
        assert_eq!(
            text(pack, &status).unwrap(),
            "Token ending in 0815. Clock set. All is well."
        );
        let actions = [(Prompt::HelpSpeak, vec!["s".to_owned(), "space".to_owned()])];
        assert_eq!(
            text(pack, &Message::Help { actions: &actions }).unwrap(),
            "Keys, most important first. Hear your code: s or space."
        );
        let ready = Message::Ready {
            language_unusable: false,
            settings_mistake: false,
            no_token: false,
            phrase: false,
            no_input: true,
        };
        assert_eq!(
            text(pack, &ready).unwrap(),
            "No keypad is connected. Waiting for one."
        );
        let first_start = Message::Ready {
            language_unusable: false,
            settings_mistake: true,
            no_token: true,
            phrase: true,
            no_input: false,
        };
        assert_eq!(
            text(pack, &first_start).unwrap(),
            "The settings have a mistake, so the standard settings are used. A helper can fix \
             it. No token is set up on this device yet. A helper can set it up. Ready."
        );
        let code = Message::ExpiredCode { code: "123456" };
        assert!(text(pack, &code).is_none());
        assert!(text(pack, &Message::UnknownKey).is_none());
    }

    #[test]
    fn keys_are_named_in_words() {
        let p = |p| Word::Phrase(PhraseKey::Prompt(p));
        assert_eq!(
            key_words("KEY_KP5"),
            [p(Prompt::KeyKeypad), Word::Phrase(PhraseKey::Digit(5))]
        );
        assert_eq!(
            key_words("KEY_KPENTER"),
            [p(Prompt::KeyKeypad), p(Prompt::KeyEnter)]
        );
        assert_eq!(key_words("space"), [p(Prompt::KeySpace)]);
        assert_eq!(key_words("+"), [p(Prompt::KeyPlus)]);
        assert_eq!(key_words("KEY_H"), [Word::Text("h".into())]);
        assert_eq!(key_words("BTN_0"), [Word::Text("btn 0".into())]);
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            keys_to_name(names(&["KEY_ENTER", "KEY_SPACE", "KEY_KP5", "KEY_KPENTER"])),
            names(&["KEY_KP5", "KEY_KPENTER"])
        );
        assert_eq!(keys_to_name(names(&["?", "h"])), names(&["h"]));
        assert_eq!(
            keys_to_name(names(&["s", "space", "enter"])),
            names(&["s", "space"])
        );
    }

    #[test]
    fn an_unknown_voice_or_language_is_a_clear_error() {
        match shipped().choosing(&picks(&[("en", "robot")])) {
            Err(e @ VoiceError::Voice { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("robot") && m.contains("flite-slt, espeak"),
                    "{m}"
                );
            }
            other => panic!("expected VoiceError::Voice, got {other:?}"),
        }
        assert!(matches!(
            shipped().choosing(&picks(&[("xx", "espeak")])),
            Err(VoiceError::UnknownLanguage { .. })
        ));
    }
}
