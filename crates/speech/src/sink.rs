//! Audio sinks that take the rendered mono `f32` stream: memory and WAV file (offline). The
//! live sound-card sink is in [`crate::live`].

use std::fs::File;
use std::io::{BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
///
/// A `path` that exists and is not a regular file (`/dev/null`, a FIFO a listener reads, a
/// terminal) is never renamed over: as root that would replace the device node with a plain
/// file and break the whole machine. Such a target gets the finished WAV written into it in
/// one go (a pipe cannot seek back to complete the header, so the file is built in memory).
pub struct WavSink {
    path: PathBuf,
    tmp: PathBuf,
    rate: SampleRate,
    writer: Option<hound::WavWriter<Out>>,
    /// The whole WAV when `path` is a device or a pipe (see [`Out::Memory`]).
    memory: Option<Arc<Mutex<Cursor<Vec<u8>>>>>,
    written: usize,
}

/// Where a [`WavSink`]'s bytes go before [`WavSink::finish`].
enum Out {
    /// The temporary file beside a regular (or not yet existing) target.
    Temporary(BufWriter<File>),
    /// Memory, for a target that is a device or a pipe. Shared, because hound's writer is
    /// consumed by `finalize` and gives nothing back.
    Memory(Arc<Mutex<Cursor<Vec<u8>>>>),
}

impl Out {
    fn memory<T>(
        bytes: &Mutex<Cursor<Vec<u8>>>,
        f: impl FnOnce(&mut Cursor<Vec<u8>>) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut bytes = bytes
            .lock()
            .map_err(|_| std::io::Error::other("WAV buffer poisoned"))?;
        f(&mut bytes)
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Temporary(file) => file.write(buf),
            Self::Memory(bytes) => Self::memory(bytes, |b| b.write(buf)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Temporary(file) => file.flush(),
            Self::Memory(_) => Ok(()),
        }
    }
}

impl Seek for Out {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Self::Temporary(file) => file.seek(pos),
            Self::Memory(bytes) => Self::memory(bytes, |b| b.seek(pos)),
        }
    }
}

/// Whether `path` names something other than a regular file (following symlinks).
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| !meta.is_file() && !meta.is_dir())
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
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let memory = is_special(path).then(|| Arc::new(Mutex::new(Cursor::new(Vec::new()))));
        let (tmp, out) = if let Some(bytes) = &memory {
            (path.to_path_buf(), Out::Memory(Arc::clone(bytes)))
        } else {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let file = File::create(&tmp).map_err(|e| SpeechError::Wav {
                path: tmp.clone(),
                message: e.to_string(),
            })?;
            (tmp, Out::Temporary(BufWriter::new(file)))
        };
        let writer = hound::WavWriter::new(out, spec).map_err(|e| SpeechError::Wav {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            rate,
            writer: Some(writer),
            memory,
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
        let Some(writer) = self.writer.take() else {
            return Ok(self.written);
        };
        writer.finalize().map_err(|e| wav_err(&self.tmp, e))?;
        let io_err = |source| SpeechError::Io {
            path: self.path.clone(),
            source,
        };
        match self.memory.take() {
            None => std::fs::rename(&self.tmp, &self.path).map_err(io_err)?,
            Some(bytes) => {
                let bytes =
                    Out::memory(&bytes, |b| Ok(std::mem::take(b.get_mut()))).map_err(io_err)?;
                // Opened for writing only: a device or FIFO is written into, never replaced.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .and_then(|mut target| target.write_all(&bytes))
                    .map_err(io_err)?;
            }
        }
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
        if self.writer.take().is_some() && self.memory.is_none() {
            // Not finished: remove the partial temporary file (a device or FIFO target was
            // never touched).
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
