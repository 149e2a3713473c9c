//! A synthesiser that never leaves a phrase unsaid because one clip is bad: each phrase the
//! primary synthesiser (a voice's clips) cannot speak is spoken by a backup (live espeak-ng
//! in the same language) instead.
//!
//! The decision is made per phrase, when the phrase is synthesised, so it holds whether a
//! voice's clips were loaded up front or are read when first needed. A blind user alone
//! with the device must hear the whole code; one damaged file must not make it silent.
//!
//! The backup is started only when a phrase first needs it: starting live espeak-ng (loading
//! its library and data) costs more than speaking a whole code from clips, and a voice whose
//! clips are all good never needs it.

use crate::dsp::{Resample, to_f32, to_i16};
use crate::error::SpeechError;
use crate::plan::{Phrase, PhraseKey, SampleRate, Speed};
use crate::synth::{Synth, emit_chunks};

/// Told once per [`FallbackSynth`] when the backup first has to speak; the message names
/// the voice but never the phrase (a digit word would give away part of a code).
pub type FallbackReport = Box<dyn FnMut(&str) + Send>;

/// Starts the backup synthesiser, when a phrase first needs it.
pub type StartBackup = Box<dyn FnOnce() -> Result<Box<dyn Synth>, SpeechError> + Send>;

/// The backup, in the order of its life.
enum Backup {
    /// Not needed yet.
    Waiting(StartBackup),
    /// Started, with the converter from its rate to the primary's (if they differ).
    Ready {
        synth: Box<dyn Synth>,
        resample: Option<Box<Resample>>,
    },
    /// Could not start (why): every phrase that needs it fails with this reason.
    Failed(String),
    /// Only while starting.
    Starting,
}

/// Speaks with `primary`, and every phrase `primary` fails on with a backup (started when
/// first needed), resampled to `primary`'s rate.
pub struct FallbackSynth {
    primary: Box<dyn Synth>,
    backup: Backup,
    label: String,
    report: FallbackReport,
    reported: bool,
}

impl std::fmt::Debug for FallbackSynth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FallbackSynth({})", self.label)
    }
}

impl FallbackSynth {
    /// `label` names the primary voice in the report (e.g. "voice `flite-slt` of `en`");
    /// `start_backup` runs when a phrase first needs the backup, never before.
    pub fn new(
        primary: Box<dyn Synth>,
        start_backup: StartBackup,
        label: &str,
        report: FallbackReport,
    ) -> Self {
        Self {
            primary,
            backup: Backup::Waiting(start_backup),
            label: label.to_owned(),
            report,
            reported: false,
        }
    }

    /// Whether the backup has been started (or tried to start).
    pub fn backup_started(&self) -> bool {
        !matches!(self.backup, Backup::Waiting(_))
    }

    /// The backup, started now if this is its first use.
    fn backup(&mut self) -> Result<(&mut dyn Synth, Option<&mut Resample>), SpeechError> {
        if let Backup::Waiting(_) = self.backup {
            let Backup::Waiting(start) = std::mem::replace(&mut self.backup, Backup::Starting)
            else {
                unreachable!("matched just above");
            };
            self.backup = match start().and_then(|synth| {
                let (from, to) = (synth.sample_rate(), self.primary.sample_rate());
                let resample = if from == to {
                    None
                } else {
                    Some(Box::new(Resample::new(from, to)?))
                };
                Ok(Backup::Ready { synth, resample })
            }) {
                Ok(ready) => ready,
                Err(e) => {
                    (self.report)(&format!(
                        "{}: a clip could not be played, and no other synthesiser can say \
                         that phrase ({e}); render the clips again with `cargo xtask voices`",
                        self.label
                    ));
                    self.reported = true;
                    Backup::Failed(e.to_string())
                }
            };
        }
        match &mut self.backup {
            Backup::Ready { synth, resample } => Ok((synth.as_mut(), resample.as_deref_mut())),
            Backup::Failed(reason) => Err(SpeechError::NoBackup(reason.clone())),
            Backup::Waiting(_) | Backup::Starting => Err(SpeechError::NoBackup(
                "the backup synthesiser did not start".to_owned(),
            )),
        }
    }
}

impl Synth for FallbackSynth {
    fn sample_rate(&self) -> SampleRate {
        self.primary.sample_rate()
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        if phrase.key == PhraseKey::Text {
            // Free text never has a clip: not a damaged one.
            let (backup, resample) = self.backup()?;
            return Self::speak_with(backup, resample, phrase, speed, out);
        }
        let mut stopped = false;
        let primary = self.primary.speak(phrase, speed, &mut |chunk| {
            let go_on = out(chunk);
            stopped |= !go_on;
            go_on
        });
        if primary.is_ok() || stopped {
            return Ok(());
        }
        let (backup, resample) = self.backup()?;
        let said = Self::speak_with(backup, resample, phrase, speed, out);
        if !self.reported {
            self.reported = true;
            (self.report)(&format!(
                "{}: a clip could not be played, so live espeak-ng speaks that phrase \
                 instead; render the clips again with `cargo xtask voices`",
                self.label
            ));
        }
        said
    }
}

impl FallbackSynth {
    /// Speaks `phrase` with the backup, at the primary's rate.
    fn speak_with(
        backup: &mut dyn Synth,
        resample: Option<&mut Resample>,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        let Some(resample) = resample else {
            return backup.speak(phrase, speed, out);
        };
        // Resampled whole: a phrase is short, and this only happens for a damaged clip.
        let mut raw = Vec::new();
        backup.speak(phrase, speed, &mut |chunk| {
            raw.extend_from_slice(chunk);
            true
        })?;
        let converted: Vec<i16> = resample
            .process(&to_f32(&raw))?
            .into_iter()
            .map(to_i16)
            .collect();
        emit_chunks(&converted, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Prompt;
    use std::sync::{Arc, Mutex};

    /// A synthesiser that fails on `bad` digits and otherwise gives `len` samples of `value`.
    struct Fixed {
        rate: SampleRate,
        value: i16,
        len: usize,
        bad: Vec<u8>,
    }

    impl Synth for Fixed {
        fn sample_rate(&self) -> SampleRate {
            self.rate
        }
        fn speak(
            &mut self,
            phrase: &Phrase,
            _: Speed,
            out: &mut dyn FnMut(&[i16]) -> bool,
        ) -> Result<(), SpeechError> {
            if matches!(phrase.key, PhraseKey::Digit(d) if self.bad.contains(&d)) {
                return Err(SpeechError::NoClip("digit".into()));
            }
            out(&vec![self.value; self.len]);
            Ok(())
        }
    }

    fn phrase(key: PhraseKey) -> Phrase {
        Phrase {
            key,
            text: "x".into(),
        }
    }

    /// Everything `synth` says for `key`.
    fn said(synth: &mut FallbackSynth, key: PhraseKey) -> Vec<i16> {
        let mut all = Vec::new();
        synth
            .speak(&phrase(key), Speed::default(), &mut |c| {
                all.extend_from_slice(c);
                true
            })
            .unwrap();
        all
    }

    #[test]
    fn failed_phrases_are_spoken_by_the_backup_at_the_primary_rate_and_reported_once() {
        let primary = Fixed {
            rate: SampleRate::new(16_000).unwrap(),
            value: 100,
            len: 1600,
            bad: vec![5, 7],
        };
        let backup = Fixed {
            rate: SampleRate::ESPEAK,
            value: 3000,
            len: 22_050,
            bad: vec![],
        };
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let mut synth = FallbackSynth::new(
            Box::new(primary),
            Box::new(move || Ok(Box::new(backup) as Box<dyn Synth>)),
            "voice `v` of `en`",
            Box::new(move |m| sink.lock().unwrap().push(m.to_owned())),
        );
        assert_eq!(synth.sample_rate().hz(), 16_000);
        assert_eq!(said(&mut synth, PhraseKey::Digit(1)), vec![100; 1600]);
        assert_eq!(
            said(&mut synth, PhraseKey::Prompt(Prompt::Intro)).len(),
            1600
        );
        assert!(
            !synth.backup_started(),
            "good clips must not start the backup"
        );
        for bad in [5, 7] {
            let backup = said(&mut synth, PhraseKey::Digit(bad));
            // One second of the backup's audio, at the primary's rate.
            assert!(
                (backup.len() as i64 - 16_000).abs() < 50,
                "{}",
                backup.len()
            );
            assert!(backup[8000] > 2500, "{}", backup[8000]);
        }
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].contains("voice `v` of `en`"), "{}", reports[0]);
        assert!(!reports[0].contains("digit"), "{}", reports[0]);
    }

    #[test]
    fn a_backup_that_cannot_start_fails_the_phrase_with_its_reason_and_is_reported_once() {
        let primary = Fixed {
            rate: SampleRate::new(16_000).unwrap(),
            value: 100,
            len: 1600,
            bad: vec![5],
        };
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let mut synth = FallbackSynth::new(
            Box::new(primary),
            Box::new(|| {
                Err(SpeechError::EspeakMissing(
                    "cannot load libespeak-ng".into(),
                ))
            }),
            "voice `v` of `en`",
            Box::new(move |m| sink.lock().unwrap().push(m.to_owned())),
        );
        let mut out = |_: &[i16]| true;
        for _ in 0..2 {
            let error = synth
                .speak(&phrase(PhraseKey::Digit(5)), Speed::default(), &mut out)
                .unwrap_err();
            assert!(
                error.to_string().contains("cannot load libespeak-ng"),
                "{error}"
            );
        }
        // The good phrases still speak.
        synth
            .speak(&phrase(PhraseKey::Digit(1)), Speed::default(), &mut out)
            .unwrap();
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            reports[0].contains("no other synthesiser"),
            "{}",
            reports[0]
        );
        assert!(!reports[0].contains("digit"), "{}", reports[0]);
    }
}
