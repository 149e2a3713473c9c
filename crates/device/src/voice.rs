//! The device's side of the speech crate: finding the voice packs, choosing the synthesiser,
//! and planning what the device says (codes, feedback, errors, status).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use codereader_speech::{
    ClipSynth, CodeIntro, Earcon, Espeak, PhraseKey, Prompt, Segment, Settings, SpeechError, Speed,
    Synth, Utterance, VoiceLibrary, VoicePack, Volume,
};

use crate::config::{Listening, SynthChoice};

/// Why the voices cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoiceError {
    /// The voice packs failed to load.
    #[error("voice packs in {dir}: {source}")]
    Load {
        /// The voices directory.
        dir: PathBuf,
        /// The speech crate's error.
        source: codereader_speech::PackError,
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
    #[error("voice for `{tag}`: {source}")]
    Voice {
        /// Language.
        tag: String,
        /// The speech crate's error.
        source: codereader_speech::PackError,
    },
    /// The synthesiser could not start.
    #[error("cannot start the synthesiser for `{tag}`: {source}")]
    Synth {
        /// Language.
        tag: String,
        /// Why.
        source: SpeechError,
    },
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
    /// Loads every pack in `dir`.
    ///
    /// # Errors
    /// [`VoiceError::Load`].
    pub fn load(dir: &Path, choice: SynthChoice) -> Result<Self, VoiceError> {
        let library = VoiceLibrary::load(dir).map_err(|source| VoiceError::Load {
            dir: dir.to_path_buf(),
            source,
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
            let pack = self
                .pack(tag)?
                .with_voice(name)
                .map_err(|source| VoiceError::Voice {
                    tag: tag.clone(),
                    source,
                })?;
            self.chosen.insert(tag.clone(), pack);
        }
        Ok(self)
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
        let wrap = |source| VoiceError::Synth {
            tag: pack.tag().to_owned(),
            source,
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
