//! The device's side of the speech crate: finding the voice packs, choosing the synthesiser,
//! and planning what the device says (codes, feedback, errors, status).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use codereader_speech::{
    ClipSynth, CodeIntro, Earcon, Engine, Espeak, PhraseKey, Prompt, Segment, Settings,
    SpeechError, Speed, Synth, Utterance, VoiceLibrary, VoicePack, Volume,
};

use crate::config::{Listening, SynthChoice};

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

/// The loaded voice packs, the voice chosen per language and the synthesiser choice.
#[derive(Debug)]
pub struct Voices {
    library: VoiceLibrary,
    /// Packs speaking a voice the user chose instead of the pack's default.
    chosen: BTreeMap<String, VoicePack>,
    choice: SynthChoice,
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
    /// lists the pack's voices; or its clips at the speed step nearest to 0 are broken; the
    /// other steps are checked when first spoken). Nothing changes then.
    pub fn choose(&mut self, tag: &str, name: &str) -> Result<(), VoiceError> {
        let wrap = |error| VoiceError::Voice {
            tag: tag.to_owned(),
            error,
        };
        let pack = self.pack(tag)?.with_voice_manifest(name).map_err(wrap)?;
        if let Some(clips) = pack.clips() {
            clips.check_step(Speed::default()).map_err(wrap)?;
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

    /// A synthesiser for `pack`, as the config chose.
    ///
    /// # Errors
    /// [`VoiceError::Synth`].
    pub fn synth(&self, pack: &VoicePack) -> Result<Box<dyn Synth>, VoiceError> {
        let wrap = |error| VoiceError::Synth {
            tag: pack.tag().to_owned(),
            error,
        };
        let use_clips = match self.choice {
            SynthChoice::Clips => true,
            SynthChoice::Espeak => false,
            SynthChoice::Auto => pack.clips().is_some(),
        };
        if use_clips {
            Ok(Box::new(ClipSynth::load(pack).map_err(wrap)?))
        } else {
            let engine = Espeak::shared().map_err(wrap)?;
            Ok(Box::new(engine.voice(pack).map_err(wrap)?))
        }
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
    /// A code after a warning ("the clock may be wrong"), said between the start earcon and
    /// the intro.
    WarnedCode {
        /// What to say first.
        warning: Prompt,
        /// The digits.
        code: &'a str,
        /// "Again" instead of "Your code is".
        replay: bool,
    },
    /// One prompt: feedback or an error.
    Prompt(Prompt),
    /// A setting is already at its end: a short tone instead of "louder" that is not louder.
    Limit,
    /// Status: the serial's last digits, then each problem's prompt.
    Status {
        /// Up to four digits of the token's serial number.
        serial_digits: &'a str,
        /// Problems to report (clock, battery), in order.
        problems: &'a [Prompt],
    },
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
        Message::WarnedCode {
            warning,
            code,
            replay,
        } => {
            let plain = plan(
                pack,
                &Message::Code {
                    code,
                    replay: *replay,
                },
            )?;
            let mut segments = plain.segments().to_vec();
            // After the start earcon and its pause: the warning, then the code as usual.
            let at = segments
                .iter()
                .position(|s| matches!(s, Segment::Speech(_)))
                .unwrap_or(0);
            segments.splice(
                at..at,
                [
                    Segment::Speech(pack.phrase(PhraseKey::Prompt(*warning))),
                    Segment::Pause {
                        ms: pack.pauses().between_groups_ms,
                    },
                ],
            );
            Ok(Utterance::from_segments(segments))
        }
        Message::Prompt(prompt) => Ok(Utterance::prompt(pack, *prompt)),
        Message::Limit => Ok(Utterance::from_segments(vec![Segment::Earcon(Earcon::End)])),
        Message::Status {
            serial_digits,
            problems,
        } => {
            let pauses = pack.pauses();
            let mut segments = vec![
                Segment::Earcon(Earcon::Start),
                Segment::Pause {
                    ms: pauses.around_earcon_ms,
                },
            ];
            for (i, d) in serial_digits.bytes().filter(u8::is_ascii_digit).enumerate() {
                if i > 0 {
                    segments.push(Segment::Pause {
                        ms: pauses.between_digits_ms,
                    });
                }
                segments.push(Segment::Speech(pack.phrase(PhraseKey::Digit(d - b'0'))));
            }
            for prompt in *problems {
                segments.push(Segment::Pause {
                    ms: pauses.between_groups_ms,
                });
                segments.push(Segment::Speech(pack.phrase(PhraseKey::Prompt(*prompt))));
            }
            segments.push(Segment::Pause {
                ms: pauses.around_earcon_ms,
            });
            segments.push(Segment::Earcon(Earcon::End));
            Ok(Utterance::from_segments(segments))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
