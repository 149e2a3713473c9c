//! The pipeline's contracts: streaming order, the plan's shape, the limiter, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use codereader_speech::{
    CodeIntro, Espeak, Phrase, PhraseKey, Prompt, Renderer, SampleRate, Segment, Settings, Sink,
    SpeechError, Speed, Synth, Utterance, VoicePack, Volume, dsp,
};
use common::voices_dir;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    SynthStart(PhraseKey),
    SynthEnd,
    Write(usize),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Wraps a real synthesiser and logs when each phrase is synthesised.
struct Recording<S> {
    inner: S,
    log: Log,
}

impl<S: Synth> Synth for Recording<S> {
    fn sample_rate(&self) -> SampleRate {
        self.inner.sample_rate()
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        self.log.lock().unwrap().push(Event::SynthStart(phrase.key));
        let result = self.inner.speak(phrase, speed, out);
        self.log.lock().unwrap().push(Event::SynthEnd);
        result
    }
}

/// A sink that logs each write.
struct LogSink {
    rate: SampleRate,
    log: Log,
}

impl Sink for LogSink {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        self.log.lock().unwrap().push(Event::Write(samples.len()));
        Ok(())
    }
}

#[test]
fn each_segment_reaches_the_sink_before_the_next_is_synthesised() {
    let pack = VoicePack::load(&voices_dir().join("da")).unwrap();
    let log: Log = Arc::default();
    let mut synth = Recording {
        inner: Espeak::shared().unwrap().voice(&pack).unwrap(),
        log: Arc::clone(&log),
    };
    let mut sink = LogSink {
        rate: SampleRate::new(48_000).unwrap(),
        log: Arc::clone(&log),
    };
    let utterance = Utterance::code(&pack, "471293", CodeIntro::First).unwrap();
    Renderer::new(sink.rate)
        .render(
            &utterance,
            &mut synth,
            Settings::default(),
            &mut sink,
            &|| false,
        )
        .unwrap();
    let log = log.lock().unwrap().clone();
    // The start earcon is written before anything is synthesised at all.
    assert!(
        matches!(log.first(), Some(Event::Write(n)) if *n > 0),
        "{log:?}"
    );
    // Every synthesised phrase is written out before the next synthesis starts.
    let starts: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::SynthStart(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 7, "intro and six digits: {log:?}");
    for pair in starts.windows(2) {
        let between = &log[pair[0]..pair[1]];
        let end = between.iter().position(|e| *e == Event::SynthEnd).unwrap();
        assert!(
            between[end..]
                .iter()
                .any(|e| matches!(e, Event::Write(n) if *n > 0)),
            "segment not written before the next synthesis: {between:?}"
        );
    }
}

#[test]
fn a_code_is_planned_as_digit_words_in_groups() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    let plan = Utterance::code(&pack, "04712930", CodeIntro::Replay).unwrap();
    let said: Vec<&str> = plan
        .segments()
        .iter()
        .filter_map(|s| match s {
            Segment::Speech(p) => Some(p.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        said,
        [
            "Again. Your code is",
            "zero",
            "four",
            "seven",
            "one",
            "two",
            "nine",
            "three",
            "zero"
        ]
    );
    assert_eq!(
        plan.segments().first(),
        Some(&Segment::Earcon(codereader_speech::Earcon::Start))
    );
    assert_eq!(
        plan.segments().last(),
        Some(&Segment::Earcon(codereader_speech::Earcon::End))
    );
    // 4 + 4: the longer pause sits after the fourth digit word, and only there.
    let pauses = pack.pauses();
    let group_pauses: Vec<usize> = plan
        .segments()
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            **s == Segment::Pause {
                ms: pauses.between_groups_ms,
            }
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(group_pauses.len(), 1);
    let digits_before = plan.segments()[..group_pauses[0]]
        .iter()
        .filter(|s| matches!(s, Segment::Speech(p) if matches!(p.key, PhraseKey::Digit(_))))
        .count();
    assert_eq!(digits_before, 4);
}

#[test]
fn bad_codes_are_rejected_without_echoing_them() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    for bad in [
        "",
        "12345",
        "123456789",
        "12a456",
        "１２３４５６",
        "12 456",
        "-12345",
    ] {
        match Utterance::code(&pack, bad, CodeIntro::First) {
            Err(e @ SpeechError::InvalidCode { .. }) => {
                assert!(bad.is_empty() || !e.to_string().contains(bad), "{e}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

/// A synthesiser that "says" everything as a quiet tone with one full-scale click: a crest
/// factor far beyond speech, so that bringing it to speech loudness drives the click far
/// past full scale and makes the limiter work.
struct Hot;

impl Synth for Hot {
    fn sample_rate(&self) -> SampleRate {
        SampleRate::ESPEAK
    }

    fn speak(
        &mut self,
        _: &Phrase,
        _: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        let wave: Vec<i16> = (0..4410)
            .map(|i| match i {
                2000..2010 => i16::MAX,
                _ => (300.0 * (f64::from(i) * 0.3).sin()) as i16,
            })
            .collect();
        out(&wave);
        Ok(())
    }
}

#[test]
fn the_limiter_keeps_even_full_scale_input_below_the_ceiling() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    let utterance = Utterance::code(&pack, "471293", CodeIntro::First).unwrap();
    for rate in [22_050, 48_000] {
        let mut renderer = Renderer::new(SampleRate::new(rate).unwrap());
        let settings = Settings {
            volume: Volume::MAX,
            ..Settings::default()
        };
        let (samples, _) = renderer
            .render_to_vec(&utterance, &mut Hot, settings)
            .unwrap();
        let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak <= dsp::CEILING, "{rate} Hz: peak {peak}");
        // The limiter lowers peaks, it does not mute: the level stays near the ceiling.
        assert!(peak > dsp::CEILING * 0.9, "{rate} Hz: peak {peak}");
    }
}

#[test]
fn every_prompt_is_its_own_utterance_without_earcons() {
    let pack = VoicePack::load(&voices_dir().join("da")).unwrap();
    for prompt in Prompt::ALL {
        let u = Utterance::prompt(&pack, prompt);
        assert_eq!(u.segments().len(), 1);
        assert!(
            matches!(&u.segments()[0], Segment::Speech(p) if p.key == PhraseKey::Prompt(prompt) && !p.text.is_empty())
        );
    }
}

/// A synthesiser that fails on its third phrase, as a broken backend would.
struct FailsLater(usize);

impl Synth for FailsLater {
    fn sample_rate(&self) -> SampleRate {
        SampleRate::ESPEAK
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        _: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        self.0 += 1;
        if self.0 == 3 {
            return Err(SpeechError::NoClip(format!("{:?}", phrase.key)));
        }
        out(&[1000; 2205]);
        Ok(())
    }
}

#[test]
fn a_failed_render_leaves_an_existing_wav_untouched() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    let utterance = Utterance::code(&pack, "471293", CodeIntro::First).unwrap();
    let dir = common::temp_dir("wav-fail");
    let path = dir.path().join("code.wav");
    std::fs::write(&path, b"the previous file").unwrap();
    let mut renderer = Renderer::new(SampleRate::ESPEAK);
    let result = renderer.render_to_wav(&utterance, &mut FailsLater(0), Settings::default(), &path);
    assert!(matches!(result, Err(SpeechError::NoClip(_))), "{result:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind");

    // An unwritable place is a typed error naming the file, not a panic.
    let nowhere = dir.path().join("missing-dir/code.wav");
    match renderer.render_to_wav(
        &utterance,
        &mut FailsLater(0),
        Settings::default(),
        &nowhere,
    ) {
        Err(SpeechError::Wav { path, .. }) => {
            assert!(path.starts_with(dir.path().join("missing-dir")))
        }
        other => panic!("{other:?}"),
    }
}

/// espeak-ng speaks an unknown voice name as some other voice without an error, so the
/// device asks whether the voice exists.
#[test]
fn espeak_knows_which_voices_it_has() {
    let espeak = Espeak::shared().unwrap();
    for name in ["da", "en", "en-us", "EN-US", "en+f3"] {
        assert!(espeak.has_voice(name).unwrap(), "{name}");
    }
    for name in ["no-such-voice", "xx", ""] {
        assert!(!espeak.has_voice(name).unwrap(), "{name}");
    }
}

/// `Until` pads with silence to its moment from the start of the utterance, at any speed,
/// and adds nothing once that moment has passed; `Pause` scales with the speed.
#[test]
fn until_waits_for_its_moment_whatever_the_speed() {
    let pack = VoicePack::load(&voices_dir().join("en")).unwrap();
    let phrase = pack.phrase(PhraseKey::Prompt(Prompt::CodeChanging));
    let rate = SampleRate::new(22_050).unwrap();
    // What `Hot` says, as rendered: the moment after it.
    let (said, _) = Renderer::new(rate)
        .render_to_vec(
            &Utterance::from_segments(vec![Segment::Speech(phrase.clone())]),
            &mut Hot,
            Settings::default(),
        )
        .unwrap();
    for speed in [Speed::MIN, Speed::new(0), Speed::MAX] {
        let settings = Settings {
            speed,
            ..Settings::default()
        };
        let render = |segments: Vec<Segment>| {
            let (samples, report) = Renderer::new(rate)
                .render_to_vec(&Utterance::from_segments(segments), &mut Hot, settings)
                .unwrap();
            assert_eq!(samples.len(), report.samples);
            samples.len()
        };
        let until = |ms| render(vec![Segment::Speech(phrase.clone()), Segment::Until { ms }]);
        assert_eq!(until(2000), rate.samples_for_ms(2000), "{speed:?}");
        assert_eq!(until(50), said.len(), "{speed:?}: the moment has passed");
        assert_eq!(
            render(vec![Segment::Pause { ms: 2000 }]),
            rate.samples_for_ms(speed.scale_ms(2000)),
            "{speed:?}"
        );
    }
}
