//! The pipeline: plays an [`Utterance`] through a [`Synth`] into a [`Sink`], segment by
//! segment, so the first segment reaches the sink before later ones are synthesised.

use crate::dsp::{self, Resample};
use crate::error::SpeechError;
use crate::plan::{SampleRate, Segment, Settings, Utterance};
use crate::sink::{MemorySink, Sink};
use crate::synth::Synth;

/// Where one planned segment landed in the output, in samples at the sink's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    /// Index into [`Utterance::segments`].
    pub index: usize,
    /// First sample.
    pub start: usize,
    /// One past the last sample.
    pub end: usize,
}

/// What a render produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderReport {
    /// Output rate.
    pub sample_rate: SampleRate,
    /// Total samples written.
    pub samples: usize,
    /// Span of each segment, in order.
    pub spans: Vec<SegmentSpan>,
    /// `true` if the render stopped early because it was cancelled.
    pub cancelled: bool,
}

/// Margin of silence kept around each spoken phrase after trimming, ms.
const TRIM_MARGIN_MS: u32 = 5;

/// Renders utterances at one output rate, reusing its resampler between calls.
#[derive(Debug)]
pub struct Renderer {
    rate: SampleRate,
    resample: Option<Resample>,
}

impl Renderer {
    /// A renderer producing audio at `rate`.
    pub fn new(rate: SampleRate) -> Self {
        Self {
            rate,
            resample: None,
        }
    }

    /// Output rate.
    pub fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    /// Prepares the resampler from `from` now, so the first render does not pay for it.
    ///
    /// # Errors
    /// [`SpeechError::Resample`] if rubato rejects the rates.
    pub fn prepare(&mut self, from: SampleRate) -> Result<(), SpeechError> {
        if self.resample.as_ref().is_none_or(|r| r.from() != from) {
            self.resample = Some(Resample::new(from, self.rate)?);
        }
        Ok(())
    }

    /// Renders `utterance` into `sink` (which must run at this renderer's rate).
    /// `cancelled` is polled between segments and chunks; when it returns `true` the render
    /// stops and the report says so.
    ///
    /// # Errors
    /// Synthesis, resampling or sink errors.
    pub fn render(
        &mut self,
        utterance: &Utterance,
        synth: &mut dyn Synth,
        settings: Settings,
        sink: &mut dyn Sink,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<RenderReport, SpeechError> {
        if sink.sample_rate() != self.rate {
            self.rate = sink.sample_rate();
            self.resample = None;
        }
        let gain = settings.volume.gain();
        let mut report = RenderReport {
            sample_rate: self.rate,
            samples: 0,
            spans: Vec::with_capacity(utterance.segments().len()),
            cancelled: false,
        };
        for (index, segment) in utterance.segments().iter().enumerate() {
            if cancelled() {
                report.cancelled = true;
                break;
            }
            let mut audio = match segment {
                Segment::Earcon(kind) => dsp::earcon(*kind, self.rate),
                Segment::Pause { ms } => {
                    vec![0.0; self.rate.samples_for_ms(settings.speed.scale_ms(*ms))]
                }
                Segment::Until { ms } => {
                    vec![0.0; self.rate.samples_for_ms(*ms).saturating_sub(report.samples)]
                }
                Segment::Speech(phrase) => {
                    let mut raw: Vec<i16> = Vec::new();
                    synth.speak(phrase, settings.speed, &mut |chunk| {
                        raw.extend_from_slice(chunk);
                        !cancelled()
                    })?;
                    let raw = dsp::to_f32(&raw);
                    let margin = synth.sample_rate().samples_for_ms(TRIM_MARGIN_MS);
                    let trimmed = dsp::trim_silence(&raw, margin);
                    self.prepare(synth.sample_rate())?;
                    let mut speech = match self.resample.as_mut() {
                        Some(r) => r.process(trimmed)?,
                        None => trimmed.to_vec(),
                    };
                    dsp::normalize_speech(&mut speech, self.rate);
                    speech
                }
            };
            dsp::apply_gain(&mut audio, gain);
            dsp::limit(&mut audio, self.rate);
            sink.write(&audio)?;
            report.spans.push(SegmentSpan {
                index,
                start: report.samples,
                end: report.samples + audio.len(),
            });
            report.samples += audio.len();
        }
        Ok(report)
    }

    /// Renders into memory and returns the samples with the report.
    ///
    /// # Errors
    /// As [`Renderer::render`].
    pub fn render_to_vec(
        &mut self,
        utterance: &Utterance,
        synth: &mut dyn Synth,
        settings: Settings,
    ) -> Result<(Vec<f32>, RenderReport), SpeechError> {
        let mut sink = MemorySink::new(self.rate);
        let report = self.render(utterance, synth, settings, &mut sink, &|| false)?;
        Ok((sink.into_samples(), report))
    }

    /// Renders to a mono 16-bit WAV file at this renderer's rate (written atomically).
    ///
    /// # Errors
    /// As [`Renderer::render`], plus file errors.
    pub fn render_to_wav(
        &mut self,
        utterance: &Utterance,
        synth: &mut dyn Synth,
        settings: Settings,
        path: &std::path::Path,
    ) -> Result<RenderReport, SpeechError> {
        let mut sink = crate::sink::WavSink::create(path, self.rate)?;
        let report = self.render(utterance, synth, settings, &mut sink, &|| false)?;
        sink.finish()?;
        Ok(report)
    }
}
