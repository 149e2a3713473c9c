//! Audio sinks that take the rendered mono `f32` stream: memory and WAV file (offline). The
//! live sound-card sink is in [`crate::live`].

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::dsp::to_i16;
use crate::error::SpeechError;
use crate::plan::SampleRate;

/// Receives rendered audio: mono `f32` samples in -1.0..=1.0 at [`Sink::sample_rate`].
pub trait Sink {
    /// The rate the sink wants; the renderer resamples to it.
    fn sample_rate(&self) -> SampleRate;

    /// Appends samples.
    ///
    /// # Errors
    /// Sink-specific failures (I/O for files).
    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError>;
}

/// Collects samples in memory (tests, analysis, replay buffers).
#[derive(Debug, Clone)]
pub struct MemorySink {
    rate: SampleRate,
    samples: Vec<f32>,
}

impl MemorySink {
    /// An empty sink at `rate`.
    pub fn new(rate: SampleRate) -> Self {
        Self {
            rate,
            samples: Vec::new(),
        }
    }

    /// The samples written so far.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }

    /// Takes the samples out.
    pub fn into_samples(self) -> Vec<f32> {
        self.samples
    }
}

impl Sink for MemorySink {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        self.samples.extend_from_slice(samples);
        Ok(())
    }
}

/// Writes a mono 16-bit PCM WAV file with `hound`.
///
/// The data goes to `<path>.tmp` and is renamed over `path` by [`WavSink::finish`], so a
/// reader never sees a half-written file. It is deliberately not `fsync`ed: a spoken code is
/// stale within a minute, so surviving a power cut is worth nothing, while a sync costs more
/// than rendering the whole code.
pub struct WavSink {
    path: PathBuf,
    tmp: PathBuf,
    rate: SampleRate,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    written: usize,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("rate", &self.rate)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl WavSink {
    /// Starts writing `path` at `rate`.
    ///
    /// # Errors
    /// [`SpeechError::Wav`] if the temporary file cannot be created.
    pub fn create(path: &Path, rate: SampleRate) -> Result<Self, SpeechError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&tmp, spec).map_err(|e| SpeechError::Wav {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            rate,
            writer: Some(writer),
            written: 0,
        })
    }

    /// Samples written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Completes the header and moves the file into place; returns the sample count.
    ///
    /// # Errors
    /// [`SpeechError::Wav`] or [`SpeechError::Io`] if finishing or renaming fails.
    pub fn finish(mut self) -> Result<usize, SpeechError> {
        let wav_err = |path: &Path, e: hound::Error| SpeechError::Wav {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(writer) = self.writer.take() {
            writer.finalize().map_err(|e| wav_err(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|source| SpeechError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.written)
    }
}

impl Sink for WavSink {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        // hound's 16-bit block writer is several times faster than one `write_sample` per
        // sample. It panics when given more samples than reserved, or fewer at `flush` (and
        // on a non-16-bit spec, which `create` rules out): each block reserves exactly the
        // length of its chunk.
        for chunk in samples.chunks(4096) {
            let reserved = u32::try_from(chunk.len()).unwrap_or(4096);
            let mut block = writer.get_i16_writer(reserved);
            for &s in chunk {
                block.write_sample(to_i16(s));
            }
            block.flush().map_err(|e| SpeechError::Wav {
                path: self.tmp.clone(),
                message: e.to_string(),
            })?;
        }
        self.written += samples.len();
        Ok(())
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            // Not finished: remove the partial temporary file.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
