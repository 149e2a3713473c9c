//! Voice packs: `voices/<tag>/voice.toml` (+ optional `clips/`), loaded and validated.
//!
//! Adding a language is adding a directory: nothing here names a language. Loading checks
//! every key (unknown keys are errors, so typos surface), every digit word and prompt, the
//! grouping and pauses, and, if the pack has clips, every clip's WAV format and sample rate.
//!
//! Format of `voice.toml` (all keys required):
//!
//! ```toml
//! [language]
//! tag = "da"              # must equal the directory name
//! name = "Dansk"          # the language's own name
//! espeak_voice = "da"     # espeak-ng voice name
//! default_rate = 150      # words per minute at speed step 0 (80..=450)
//!
//! [digits]                # the word for each digit 0..=9
//! 0 = "nul"
//! # ... through 9
//!
//! [prompts]               # one per `Prompt::key()`
//! intro = "Din kode er"
//! # replay_intro, volume_up, volume_down, faster, slower, language_name, no_token,
//! # clock_not_set, device_blocked, audio_fault, low_battery, clock_backwards,
//! # no_other_voice, state_damaged, clips_damaged, language_unusable, needs_service,
//! # expired_intro, status_token, status_clock_set, status_all_well, ready, no_input,
//! # help_intro, help_speak, help_replay, help_stop, help_volume_up, help_volume_down,
//! # help_slower, help_faster, help_status, help_help, help_next_language, help_next_voice,
//! # help_quit, key_or, key_keypad, key_space, key_enter, key_escape, key_up, key_down,
//! # key_left, key_right, key_plus, key_minus, key_star, key_slash, key_dot,
//! # clock_unsynced, settings_mistake, no_token_set_up, code_changing
//!
//! [grouping]              # group sizes per code length; each must add up to the length
//! 6 = [3, 3]
//! 7 = [4, 3]
//! 8 = [4, 4]
//!
//! [pauses]                # milliseconds at speed step 0
//! around_earcon = 150
//! after_intro = 450
//! between_digits = 250
//! between_groups = 750
//!
//! [bounds]                # accepted length of a six-digit code utterance at step 0, ms
//! six_digit_code_ms = [2500, 9000]
//! ```
//!
//! Optionally, several voices for the language, each naming the engine that renders its
//! clips (see [`Engine`]); `default` is the one a device uses unless the user picks another:
//!
//! ```toml
//! [voices]
//! default = "flite-slt"
//! espeak = { engine = "espeak-ng", voice = "en" }
//! flite-slt = { engine = "flite", voice = "slt" }
//! kal = { engine = "festival", voice = "kal_diphone" }
//! alice = { engine = "recorded" }
//! ```
//!
//! Without `[voices]` the pack has one voice, `espeak`, speaking `language.espeak_voice`.
//!
//! Clips are optional. A voice has them when `clips/<voice>/clips.toml` exists (for a pack
//! without `[voices]`: `clips/clips.toml`):
//!
//! ```toml
//! source = "flite"        # "espeak-ng", "flite", "festival" or "recorded"
//! sample_rate = 22050
//! speeds = [-1, 0, 1]     # speed steps rendered; recorded packs usually have [0]
//! ```
//!
//! and then `<stem>@<step>.wav` beside it for every phrase stem ([`PhraseKey::clip_stem`])
//! and listed step, e.g. `clips/flite-slt/digit-7@0.wav`: mono, 16-bit PCM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::PackError;
use crate::phrase::{Phrase, PhraseKey, Prompt, SampleRate, Speed};

/// Pauses between segments, milliseconds at speed step 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pauses {
    /// Between an earcon and speech.
    pub around_earcon_ms: u32,
    /// After the intro, before the first digit.
    pub after_intro_ms: u32,
    /// Between digits of one group.
    pub between_digits_ms: u32,
    /// Between groups; validated to be longer than `between_digits_ms`.
    pub between_groups_ms: u32,
}

/// Where a pack's clips come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClipSource {
    /// Rendered from espeak-ng (by [`crate::clips::render_clips`]).
    EspeakNg,
    /// Rendered by the flite command line.
    Flite,
    /// Rendered by Festival's text2wave.
    Festival,
    /// Recorded by a person.
    Recorded,
}

impl ClipSource {
    /// The name used in `clips.toml`.
    pub fn name(self) -> &'static str {
        match self {
            ClipSource::EspeakNg => "espeak-ng",
            ClipSource::Flite => "flite",
            ClipSource::Festival => "festival",
            ClipSource::Recorded => "recorded",
        }
    }
}

/// The engine that renders a voice's clips.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// espeak-ng's library with this voice name (e.g. `en`, `en-us`, `da`).
    EspeakNg(String),
    /// The flite command line with this voice (`slt`, `kal`, `awb`, `rms`).
    Flite(String),
    /// Festival's `text2wave` with this voice (`kal_diphone`, `cmu_us_slt_arctic_hts`).
    Festival(String),
    /// A person recorded the clips (`voices/RECORDING.md`); nothing renders them.
    Recorded,
}

impl Engine {
    /// Parses `espeak-ng:VOICE`, `flite:VOICE` or `recorded`.
    pub fn parse(spec: &str) -> Option<Engine> {
        match spec.split_once(':') {
            Some(("espeak-ng", v)) if !v.is_empty() => Some(Engine::EspeakNg(v.to_owned())),
            Some(("flite", v)) if !v.is_empty() => Some(Engine::Flite(v.to_owned())),
            Some(("festival", v)) if !v.is_empty() => Some(Engine::Festival(v.to_owned())),
            None if spec == "recorded" => Some(Engine::Recorded),
            _ => None,
        }
    }

    /// What the clips it renders declare as their source.
    pub fn clip_source(&self) -> ClipSource {
        match self {
            Engine::EspeakNg(_) => ClipSource::EspeakNg,
            Engine::Flite(_) => ClipSource::Flite,
            Engine::Festival(_) => ClipSource::Festival,
            Engine::Recorded => ClipSource::Recorded,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::EspeakNg(v) => write!(f, "espeak-ng:{v}"),
            Engine::Flite(v) => write!(f, "flite:{v}"),
            Engine::Festival(v) => write!(f, "festival:{v}"),
            Engine::Recorded => f.write_str("recorded"),
        }
    }
}

/// One voice of a pack: a name and the engine that renders its clips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceSpec {
    /// Name, unique within the pack (`espeak`, `flite-slt`).
    pub name: String,
    /// The engine.
    pub engine: Engine,
    /// Where its clips live.
    pub clips_dir: PathBuf,
}

/// A pack's pre-rendered clips (validated: every file exists with the declared format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSet {
    /// Where they come from.
    pub source: ClipSource,
    /// Their sample rate.
    pub sample_rate: SampleRate,
    /// The speed steps rendered.
    pub speeds: Vec<Speed>,
    /// The `clips/` directory.
    pub dir: PathBuf,
}

impl ClipSet {
    /// File name of a phrase's clip at a speed step: `digit-7@0.wav`.
    pub fn file_name(key: PhraseKey, speed: Speed) -> String {
        format!("{}@{}.wav", key.clip_stem(), speed.step())
    }

    /// The listed step nearest to `speed` (ties go to the slower step).
    pub fn nearest_speed(&self, speed: Speed) -> Speed {
        self.speeds
            .iter()
            .copied()
            .min_by_key(|s| (i16::from(s.step()) - i16::from(speed.step())).abs())
            .unwrap_or_default()
    }
}

/// A validated voice pack for one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoicePack {
    dir: PathBuf,
    tag: String,
    name: String,
    espeak_voice: String,
    default_rate: u16,
    digits: Vec<String>,
    prompts: Vec<String>,
    grouping: BTreeMap<usize, Vec<usize>>,
    pauses: Pauses,
    six_digit_code_ms: (u32, u32),
    voices: Vec<VoiceSpec>,
    selected: usize,
    clips: Option<ClipSet>,
    /// Why the selected voice's clips as a whole cannot be used (manifest unreadable, no
    /// clip usable), when the pack was loaded anyway.
    clip_problem: Option<String>,
}

impl VoicePack {
    /// Loads and validates the pack in `dir` (which holds `voice.toml`).
    ///
    /// # Errors
    /// A [`PackError`] naming the file and key of the first problem found.
    ///
    /// Clip problems never fail the load: a clip set with some unusable clips is kept (those
    /// phrases are spoken by another synthesiser, see [`crate::FallbackSynth`]), and one
    /// that cannot be used at all is dropped, with the reason in
    /// [`VoicePack::clip_problem`].
    pub fn load(dir: &Path) -> Result<Self, PackError> {
        let mut pack = Self::load_words(dir)?;
        match ClipSet::load_usable(&pack.voice().clips_dir) {
            Ok(clips) => pack.clips = clips,
            Err(e) => pack.clip_problem = Some(e.to_string()),
        }
        Ok(pack)
    }

    /// The same pack speaking its voice `name`, with that voice's clips (if any) loaded.
    /// Some unusable clips are accepted (see [`VoicePack::load`]).
    ///
    /// # Errors
    /// [`PackError::UnknownVoice`], or a voice whose clips cannot be used at all (its
    /// manifest is bad or not one clip is usable).
    pub fn with_voice(&self, name: &str) -> Result<Self, PackError> {
        let mut pack = self.with_voice_words(name)?;
        pack.clips = ClipSet::load_usable(&pack.voice().clips_dir)?;
        Ok(pack)
    }

    /// Why the voice's clips cannot be used at all, if [`VoicePack::load`] dropped them.
    pub fn clip_problem(&self) -> Option<&str> {
        self.clip_problem.as_deref()
    }

    /// Like [`VoicePack::with_voice`] but reading only that voice's clip manifest
    /// (`clips.toml`), not its clips: [`crate::ClipSynth`] opens and checks the clips of a
    /// speed step when it first speaks at that step. What a device uses, so that switching
    /// voice or starting up never opens clips nobody will hear.
    ///
    /// # Errors
    /// [`PackError::UnknownVoice`], or a problem of that voice's `clips.toml`.
    pub fn with_voice_manifest(&self, name: &str) -> Result<Self, PackError> {
        let mut pack = self.with_voice_words(name)?;
        pack.clips = ClipSet::load_manifest(&pack.voice().clips_dir)?;
        Ok(pack)
    }

    /// [`VoicePack::load`] reading only the default voice's clip manifest, not its clips
    /// (see [`VoicePack::with_voice_manifest`]). As with `load`, a clip problem never fails
    /// the load: a bad `clips.toml` drops the clips, with the reason in
    /// [`VoicePack::clip_problem`]; a bad clip shows when its step is first read.
    ///
    /// # Errors
    /// A [`PackError`] naming the file and key of the first problem of `voice.toml`.
    pub fn load_manifest(dir: &Path) -> Result<Self, PackError> {
        let mut pack = Self::load_words(dir)?;
        match ClipSet::load_manifest(&pack.voice().clips_dir) {
            Ok(clips) => pack.clips = clips,
            Err(e) => pack.clip_problem = Some(e.to_string()),
        }
        Ok(pack)
    }

    /// Like [`VoicePack::with_voice`] but without loading clips (for tools that render them).
    ///
    /// # Errors
    /// [`PackError::UnknownVoice`].
    pub fn with_voice_words(&self, name: &str) -> Result<Self, PackError> {
        let selected = self
            .voices
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| PackError::UnknownVoice {
                tag: self.tag.clone(),
                voice: name.to_owned(),
                available: self.voice_names().join(", "),
            })?;
        let mut pack = self.clone();
        pack.selected = selected;
        pack.clips = None;
        pack.clip_problem = None;
        Ok(pack)
    }

    /// The same words spoken by an ad-hoc espeak-ng voice (no clips): for measuring voices
    /// a pack does not ship.
    pub fn with_espeak_voice(&self, espeak_voice: &str) -> Self {
        let mut pack = self.clone();
        pack.voices = vec![VoiceSpec {
            name: format!("espeak-{espeak_voice}"),
            engine: Engine::EspeakNg(espeak_voice.to_owned()),
            clips_dir: self
                .dir
                .join("clips")
                .join(format!("espeak-{espeak_voice}")),
        }];
        pack.selected = 0;
        pack.clips = None;
        pack.clip_problem = None;
        pack
    }

    /// The pack's voices; the first is the default.
    pub fn voices(&self) -> &[VoiceSpec] {
        &self.voices
    }

    /// Names of the pack's voices, the default first.
    pub fn voice_names(&self) -> Vec<String> {
        self.voices.iter().map(|v| v.name.clone()).collect()
    }

    /// The voice this pack speaks with (the default unless [`VoicePack::with_voice`] chose).
    pub fn voice(&self) -> &VoiceSpec {
        // `voices` is never empty and `selected` always indexes it (both set by this module).
        &self.voices[self.selected.min(self.voices.len().saturating_sub(1))]
    }

    /// Loads and validates `voice.toml` only, ignoring any clips: for tools that (re)render
    /// the clips, which must work even when the old ones are stale or broken.
    ///
    /// # Errors
    /// A [`PackError`] naming the file and key of the first problem found.
    pub fn load_words(dir: &Path) -> Result<Self, PackError> {
        let file = dir.join("voice.toml");
        let table = read_toml(&file)?;
        let mut root = Section::new(&file, "", &table);

        let mut language = root.table("language")?;
        let tag = language.string("tag")?;
        let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !dir_name.is_empty() && dir_name != tag {
            return Err(language.bad(
                "tag",
                format!("is `{tag}` but the directory is `{dir_name}`"),
            ));
        }
        let name = language.string("name")?;
        let espeak_voice = language.string("espeak_voice")?;
        let default_rate = language.integer("default_rate", 80, 450)?;
        let default_rate = u16::try_from(default_rate).unwrap_or(175);
        language.finish()?;

        let mut digit_table = root.table("digits")?;
        let mut digits = Vec::with_capacity(10);
        for d in 0..10 {
            digits.push(digit_table.string(&d.to_string())?);
        }
        digit_table.finish()?;

        let mut prompt_table = root.table("prompts")?;
        let mut prompts = Vec::with_capacity(Prompt::ALL.len());
        for p in Prompt::ALL {
            prompts.push(prompt_table.string(p.key())?);
        }
        prompt_table.finish()?;

        let mut group_table = root.table("grouping")?;
        let mut grouping = BTreeMap::new();
        for len in 6..=8usize {
            let key = len.to_string();
            let sizes = group_table.integers(&key)?;
            if sizes.contains(&0) || sizes.iter().sum::<usize>() != len {
                return Err(group_table.bad(
                    &key,
                    format!("groups must be non-empty and add up to {len}"),
                ));
            }
            grouping.insert(len, sizes);
        }
        group_table.finish()?;

        let mut pause_table = root.table("pauses")?;
        let ms = |s: &mut Section<'_>, k: &str| -> Result<u32, PackError> {
            s.integer(k, 0, 5000).map(|v| u32::try_from(v).unwrap_or(0))
        };
        let pauses = Pauses {
            around_earcon_ms: ms(&mut pause_table, "around_earcon")?,
            after_intro_ms: ms(&mut pause_table, "after_intro")?,
            between_digits_ms: ms(&mut pause_table, "between_digits")?,
            between_groups_ms: ms(&mut pause_table, "between_groups")?,
        };
        if pauses.between_groups_ms <= pauses.between_digits_ms {
            return Err(pause_table.bad(
                "between_groups",
                "must be longer than between_digits".into(),
            ));
        }
        pause_table.finish()?;

        let mut bounds = root.table("bounds")?;
        let range = bounds.integers("six_digit_code_ms")?;
        let six_digit_code_ms = match range.as_slice() {
            [lo, hi] if lo < hi => (
                u32::try_from(*lo).unwrap_or(u32::MAX),
                u32::try_from(*hi).unwrap_or(u32::MAX),
            ),
            _ => {
                return Err(bounds.bad(
                    "six_digit_code_ms",
                    "must be [min, max] with min < max".into(),
                ));
            }
        };
        bounds.finish()?;
        let voices = match root.optional_table("voices")? {
            None => vec![VoiceSpec {
                name: "espeak".to_owned(),
                engine: Engine::EspeakNg(espeak_voice.clone()),
                clips_dir: dir.join("clips"),
            }],
            Some(section) => read_voices(section, dir)?,
        };
        root.finish()?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tag,
            name,
            espeak_voice,
            default_rate,
            digits,
            prompts,
            grouping,
            pauses,
            six_digit_code_ms,
            voices,
            selected: 0,
            clips: None,
            clip_problem: None,
        })
    }

    /// The pack's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Language tag, e.g. `da`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The language's own name, e.g. `Dansk`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// espeak-ng voice name: the selected voice's if it is an espeak-ng voice, else the
    /// language's `espeak_voice` (what speaks when there are no clips).
    pub fn espeak_voice(&self) -> &str {
        match &self.voice().engine {
            Engine::EspeakNg(v) => v,
            _ => &self.espeak_voice,
        }
    }

    /// Words per minute at speed step 0.
    pub fn default_rate(&self) -> u16 {
        self.default_rate
    }

    /// Pauses between segments.
    pub fn pauses(&self) -> Pauses {
        self.pauses
    }

    /// Accepted length of a six-digit code utterance at speed step 0, in ms.
    pub fn six_digit_code_ms(&self) -> (u32, u32) {
        self.six_digit_code_ms
    }

    /// Group sizes for a code of `len` digits (one group if `len` is not 6..=8).
    pub fn grouping(&self, len: usize) -> Vec<usize> {
        self.grouping
            .get(&len)
            .cloned()
            .unwrap_or_else(|| vec![len])
    }

    /// The pack's clips, if it has any.
    pub fn clips(&self) -> Option<&ClipSet> {
        self.clips.as_ref()
    }

    /// Text of a digit word or prompt.
    pub fn text(&self, key: PhraseKey) -> &str {
        match key {
            PhraseKey::Digit(d) => self.digits.get(usize::from(d)).map_or("", String::as_str),
            PhraseKey::Prompt(p) => self.prompts.get(p.index()).map_or("", String::as_str),
            PhraseKey::Text => "",
        }
    }

    /// A phrase (key and text) of this pack.
    pub fn phrase(&self, key: PhraseKey) -> Phrase {
        Phrase {
            key,
            text: self.text(key).to_owned(),
        }
    }
}

/// All packs of a `voices/` directory, by language tag.
#[derive(Debug, Clone)]
pub struct VoiceLibrary {
    packs: BTreeMap<String, VoicePack>,
}

impl VoiceLibrary {
    /// Loads every `<dir>/*/voice.toml`; fails on the first invalid pack.
    ///
    /// # Errors
    /// [`PackError`] of the first bad pack, or [`PackError::Empty`] if there is none.
    pub fn load(dir: &Path) -> Result<Self, PackError> {
        Self::load_with(dir, VoicePack::load)
    }

    /// Like [`VoiceLibrary::load`], reading only each pack's clip manifest, not its clips
    /// ([`VoicePack::load_manifest`]): what a device uses to start, whatever the number of
    /// languages, voices and speed steps.
    ///
    /// # Errors
    /// [`PackError`] of the first bad pack, or [`PackError::Empty`] if there is none.
    pub fn load_manifests(dir: &Path) -> Result<Self, PackError> {
        Self::load_with(dir, VoicePack::load_manifest)
    }

    fn load_with(
        dir: &Path,
        load: fn(&Path) -> Result<VoicePack, PackError>,
    ) -> Result<Self, PackError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PackError::Io {
            file: dir.to_path_buf(),
            source,
        })?;
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PackError::Io {
                file: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.join("voice.toml").is_file() {
                subdirs.push(path);
            }
        }
        subdirs.sort();
        let mut packs = BTreeMap::new();
        for sub in subdirs {
            let pack = load(&sub)?;
            packs.insert(pack.tag.clone(), pack);
        }
        if packs.is_empty() {
            return Err(PackError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self { packs })
    }

    /// Language tags, sorted.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.packs.keys().map(String::as_str)
    }

    /// The pack for a tag.
    pub fn pack(&self, tag: &str) -> Option<&VoicePack> {
        self.packs.get(tag)
    }

    /// All packs, sorted by tag.
    pub fn packs(&self) -> impl Iterator<Item = &VoicePack> {
        self.packs.values()
    }
}

/// Reads `[voices]`: `default = NAME` and `NAME = { engine = ..., voice = ... }` entries;
/// the default is put first.
fn read_voices(mut section: Section<'_>, dir: &Path) -> Result<Vec<VoiceSpec>, PackError> {
    let default = section.string("default")?;
    let names: Vec<String> = section
        .table
        .keys()
        .filter(|k| k.as_str() != "default")
        .cloned()
        .collect();
    let mut voices = Vec::new();
    for name in names {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(section.bad(
                &name,
                "voice names are ASCII letters, digits, - and _".into(),
            ));
        }
        let mut entry = section.table(&name)?;
        let engine = match entry.string("engine")?.as_str() {
            "espeak-ng" => Engine::EspeakNg(entry.string("voice")?),
            "flite" => Engine::Flite(entry.string("voice")?),
            "festival" => Engine::Festival(entry.string("voice")?),
            "recorded" => Engine::Recorded,
            other => {
                return Err(entry.bad(
                    "engine",
                    format!("`{other}` is not `espeak-ng`, `flite`, `festival` or `recorded`"),
                ));
            }
        };
        entry.finish()?;
        let clips_dir = dir.join("clips").join(&name);
        voices.push(VoiceSpec {
            name,
            engine,
            clips_dir,
        });
    }
    let Some(first) = voices.iter().position(|v| v.name == default) else {
        return Err(section.bad(
            "default",
            format!("names no voice of this pack: `{default}`"),
        ));
    };
    let default_voice = voices.remove(first);
    voices.insert(0, default_voice);
    section.finish()?;
    Ok(voices)
}

impl ClipSet {
    /// Loads and validates the clip set in `dir` (`clips.toml` and every clip it implies);
    /// `None` if `dir` has no `clips.toml`.
    ///
    /// # Errors
    /// A [`PackError`] naming the first bad file.
    pub fn load(dir: &Path) -> Result<Option<ClipSet>, PackError> {
        load_clips(dir, Strictness::EveryClip)
    }

    /// Reads `dir/clips.toml` only; `None` if there is none. The clips themselves are
    /// checked when they are read ([`ClipSet::read_clip`]).
    ///
    /// # Errors
    /// A [`PackError`] naming `clips.toml`.
    pub fn load_manifest(dir: &Path) -> Result<Option<ClipSet>, PackError> {
        load_clips(dir, Strictness::ManifestOnly)
    }

    /// Like [`ClipSet::load`], but a set in which only some clips are missing or unusable is
    /// accepted: the device speaks those phrases with another synthesiser.
    ///
    /// # Errors
    /// A bad `clips.toml`, or not one usable clip (the first clip's problem).
    pub fn load_usable(dir: &Path) -> Result<Option<ClipSet>, PackError> {
        load_clips(dir, Strictness::AnyClip)
    }

    /// Checks every clip of the listed step nearest to `speed` (opens each, reads no samples).
    ///
    /// # Errors
    /// [`PackError::BadClip`] or [`PackError::ClipSampleRate`] of the first bad clip.
    pub fn check_step(&self, speed: Speed) -> Result<(), PackError> {
        self.check(&[self.nearest_speed(speed)], Strictness::EveryClip)
    }

    /// Checks that at least one clip of the listed step nearest to `speed` is usable: a
    /// device speaks the others with another synthesiser ([`crate::FallbackSynth`]).
    ///
    /// # Errors
    /// The first clip's problem when not one clip of the step is usable.
    pub fn check_step_usable(&self, speed: Speed) -> Result<(), PackError> {
        self.check(&[self.nearest_speed(speed)], Strictness::AnyClip)
    }

    /// Checks the clips of `steps` as `strictness` asks.
    fn check(&self, steps: &[Speed], strictness: Strictness) -> Result<(), PackError> {
        if strictness == Strictness::ManifestOnly {
            return Ok(());
        }
        let mut first_problem = None;
        let mut usable = 0usize;
        for speed in steps {
            for key in PhraseKey::all() {
                match check_clip(
                    &self.dir.join(ClipSet::file_name(key, *speed)),
                    self.sample_rate,
                ) {
                    Ok(_) => usable += 1,
                    Err(e) if strictness == Strictness::EveryClip => return Err(e),
                    Err(e) => {
                        first_problem.get_or_insert(e);
                    }
                }
            }
        }
        match (usable, first_problem) {
            (0, Some(problem)) => Err(problem),
            _ => Ok(()),
        }
    }

    /// Checks one clip's header as [`ClipSet::load`] does (exists, mono, 16-bit PCM, the
    /// set's rate, not empty), reading no samples.
    pub(crate) fn check_clip(&self, key: PhraseKey, speed: Speed) -> Result<(), PackError> {
        check_clip(
            &self.dir.join(ClipSet::file_name(key, speed)),
            self.sample_rate,
        )
        .map(|_| ())
    }

    /// Reads one clip, checked as [`ClipSet::load`] checks it (exists, mono, 16-bit PCM, the
    /// set's rate, not empty).
    ///
    /// # Errors
    /// [`PackError::BadClip`] or [`PackError::ClipSampleRate`].
    pub fn read_clip(&self, key: PhraseKey, speed: Speed) -> Result<Vec<i16>, PackError> {
        let file = self.dir.join(ClipSet::file_name(key, speed));
        let reader = check_clip(&file, self.sample_rate)?;
        // The checked header says: 16-bit little-endian mono PCM, `len` samples, and the
        // reader is at the first. Read them in one go: hound's per-sample iterator was a
        // quarter of a one-shot `speak`'s time.
        let count = usize::try_from(reader.len()).unwrap_or(usize::MAX);
        let mut bytes = vec![0u8; count.saturating_mul(2)];
        std::io::Read::read_exact(&mut reader.into_inner(), &mut bytes).map_err(|e| {
            PackError::BadClip {
                file: file.clone(),
                reason: format!("truncated: {e}"),
            }
        })?;
        Ok(bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}

/// How many clips of a set (or of one of its steps) must be usable for it to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Every one (checking freshly rendered clips).
    EveryClip,
    /// At least one (a device: the others are spoken by another synthesiser).
    AnyClip,
    /// None is opened (a device reads a step's clips when it first speaks at it).
    ManifestOnly,
}

/// Reads and parses one TOML file of a pack; errors name the file.
fn read_toml(file: &Path) -> Result<Table, PackError> {
    let text = std::fs::read_to_string(file).map_err(|source| PackError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| PackError::Syntax {
            file: file.to_path_buf(),
            message: e.message().to_owned(),
        })
}

fn load_clips(dir: &Path, strictness: Strictness) -> Result<Option<ClipSet>, PackError> {
    let file = dir.join("clips.toml");
    if !file.exists() {
        return Ok(None);
    }
    let table = read_toml(&file)?;
    let mut root = Section::new(&file, "", &table);
    let source = match root.string("source")?.as_str() {
        "espeak-ng" => ClipSource::EspeakNg,
        "flite" => ClipSource::Flite,
        "festival" => ClipSource::Festival,
        "recorded" => ClipSource::Recorded,
        other => {
            return Err(root.bad(
                "source",
                format!("`{other}` is not `espeak-ng`, `flite`, `festival` or `recorded`"),
            ));
        }
    };
    let rate = root.integer("sample_rate", 8000, 192_000)?;
    let sample_rate = SampleRate::new(u32::try_from(rate).unwrap_or(0))
        .map_err(|_| root.bad("sample_rate", "must be non-zero".into()))?;
    let mut speeds = BTreeSet::new();
    for step in root.signed_integers("speeds")? {
        let min = i64::from(Speed::MIN.step());
        let max = i64::from(Speed::MAX.step());
        if !(min..=max).contains(&step) {
            return Err(root.bad("speeds", format!("step {step} outside {min}..={max}")));
        }
        speeds.insert(Speed::new(i8::try_from(step).unwrap_or(0)));
    }
    if speeds.is_empty() {
        return Err(root.bad("speeds", "lists no speed step".into()));
    }
    root.finish()?;
    let set = ClipSet {
        source,
        sample_rate,
        speeds: speeds.into_iter().collect(),
        dir: dir.to_path_buf(),
    };
    set.check(&set.speeds, strictness)?;
    Ok(Some(set))
}

/// Opens a clip and checks its format; the reader is positioned at the samples.
fn check_clip(
    file: &Path,
    rate: SampleRate,
) -> Result<hound::WavReader<std::io::BufReader<std::fs::File>>, PackError> {
    let bad = |reason: String| PackError::BadClip {
        file: file.to_path_buf(),
        reason,
    };
    if !file.is_file() {
        return Err(bad("missing".into()));
    }
    let reader = hound::WavReader::open(file).map_err(|e| bad(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(bad(format!("{} channels, expected mono", spec.channels)));
    }
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(bad("not 16-bit integer PCM".into()));
    }
    if spec.sample_rate != rate.hz() {
        return Err(PackError::ClipSampleRate {
            file: file.to_path_buf(),
            expected: rate.hz(),
            found: spec.sample_rate,
        });
    }
    if reader.len() == 0 {
        return Err(bad("no samples".into()));
    }
    Ok(reader)
}

/// A TOML table being read: remembers which keys were used so leftovers are errors.
struct Section<'a> {
    file: &'a Path,
    prefix: String,
    table: &'a Table,
    used: BTreeSet<String>,
}

impl<'a> Section<'a> {
    fn new(file: &'a Path, prefix: &str, table: &'a Table) -> Self {
        Self {
            file,
            prefix: prefix.to_owned(),
            table,
            used: BTreeSet::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn bad(&self, key: &str, reason: String) -> PackError {
        PackError::BadValue {
            file: self.file.to_path_buf(),
            key: self.path(key),
            reason,
        }
    }

    fn get(&mut self, key: &str) -> Result<&'a Value, PackError> {
        self.used.insert(key.to_owned());
        self.table.get(key).ok_or_else(|| PackError::MissingKey {
            file: self.file.to_path_buf(),
            key: self.path(key),
        })
    }

    fn optional_table(&mut self, key: &str) -> Result<Option<Section<'a>>, PackError> {
        if self.table.contains_key(key) {
            self.table(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn table(&mut self, key: &str) -> Result<Section<'a>, PackError> {
        let path = self.path(key);
        match self.get(key)? {
            Value::Table(t) => Ok(Section::new(self.file, &path, t)),
            _ => Err(self.bad(key, "must be a table".into())),
        }
    }

    fn string(&mut self, key: &str) -> Result<String, PackError> {
        match self.get(key)? {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Value::String(_) => Err(self.bad(key, "must not be empty".into())),
            _ => Err(self.bad(key, "must be a string".into())),
        }
    }

    fn integer(&mut self, key: &str, min: i64, max: i64) -> Result<i64, PackError> {
        match self.get(key)? {
            Value::Integer(i) if (min..=max).contains(i) => Ok(*i),
            Value::Integer(i) => Err(self.bad(key, format!("{i} outside {min}..={max}"))),
            _ => Err(self.bad(key, "must be an integer".into())),
        }
    }

    fn signed_integers(&mut self, key: &str) -> Result<Vec<i64>, PackError> {
        let Value::Array(items) = self.get(key)? else {
            return Err(self.bad(key, "must be an array of integers".into()));
        };
        items
            .iter()
            .map(|v| match v {
                Value::Integer(i) => Ok(*i),
                _ => Err(self.bad(key, "must be an array of integers".into())),
            })
            .collect()
    }

    fn integers(&mut self, key: &str) -> Result<Vec<usize>, PackError> {
        self.signed_integers(key)?
            .into_iter()
            .map(|i| usize::try_from(i).map_err(|_| self.bad(key, format!("{i} is negative"))))
            .collect()
    }

    fn finish(self) -> Result<(), PackError> {
        match self.table.keys().find(|k| !self.used.contains(k.as_str())) {
            Some(k) => Err(PackError::UnknownKey {
                file: self.file.to_path_buf(),
                key: self.path(k),
            }),
            None => Ok(()),
        }
    }
}
