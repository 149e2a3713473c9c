//! Shared helpers for the end-to-end tests in `tests/tests/`: finding the built binaries,
//! analysing speech audio (energy segmentation, RMS, envelopes), pseudo-terminals, and a
//! capture of what the sound card plays through ALSA's `file` plugin, paced in real time.
//!
//! The `codereader` binary is looked up next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` and `cargo test -p codereader -p codereader-e2e` build it. The
//! voice tests also render clips with the speech crate's `codereader-speak`, which
//! `cargo test --workspace` builds too (otherwise: `cargo build -p codereader-speech`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `codereader` binary of this build.
///
/// # Panics
/// If it has not been built (then the message says how to build it).
pub fn codereader_bin() -> PathBuf {
    // The library modules the binary is built from (`src/` and its module folders; not
    // other binaries in `src/bin/`, which do not make this one stale).
    let sources = [
        "crates/device/src",
        "crates/speech/src",
        "crates/otp/src",
        "crates/atomicfile/src",
    ];
    built_bin("codereader", "codereader", &sources)
}

/// The speech crate's `codereader-speak` binary of this build (renders voice clips).
///
/// # Panics
/// If it has not been built (then the message says how to build it).
pub fn codereader_speak_bin() -> PathBuf {
    built_bin(
        "codereader-speak",
        "codereader-speech",
        &["crates/speech/src", "crates/speech/src/bin"],
    )
}

/// The binary `name` of package `package` next to the test executable, checked to be newer
/// than the sources in `sources` (directories relative to the workspace root).
fn built_bin(name: &str, package: &str, sources: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p {package}` before \
         `cargo test -p codereader-e2e`, or test with `cargo test --workspace`",
        bin.display()
    );
    // `cargo test -p codereader-e2e` alone does not rebuild another package's binary: refuse
    // to test an old one.
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = sources
        .iter()
        .filter_map(|dir| newest_source(&root.join(dir)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        assert!(
            built >= newest,
            "{} is older than its sources: run `cargo build -p {package}` first (or test \
             with `cargo test --workspace`)",
            bin.display()
        );
    }
    bin
}

/// When the newest `.rs` file under `dir` was changed, looking into module folders at any
/// depth but not into `bin/` folders below `dir` (other binaries' sources).
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                (path.file_name() != Some("bin".as_ref()))
                    .then(|| newest_source(&path))
                    .flatten()
            } else if path.extension().is_some_and(|e| e == "rs") {
                meta.modified().ok()
            } else {
                None
            }
        })
        .max()
}

/// The repository's `voices/` directory.
pub fn voices_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../voices")
}

/// `dir/voices` with the shipped packs' `voice.toml` (Danish and English) and no clips (a
/// development machine may have rendered clips into the repository's `voices/`).
///
/// # Panics
/// When the files cannot be copied (a test helper).
pub fn packs_without_clips(dir: &Path) -> PathBuf {
    let voices = dir.join("voices");
    for tag in ["da", "en"] {
        let (from, to) = (voices_dir().join(tag), voices.join(tag));
        std::fs::create_dir_all(&to)
            .and_then(|()| std::fs::copy(from.join("voice.toml"), to.join("voice.toml")))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
    }
    voices
}

/// [`packs_without_clips`] with the English default voice's (flite `slt`, the clearest)
/// clips at speed step 0, rendered by the speech crate's `codereader-speak` as `cargo xtask
/// voices` would.
///
/// # Panics
/// When the packs cannot be copied or the clips not rendered (a test helper).
pub fn packs_with_english_clips(dir: &Path) -> PathBuf {
    let voices = packs_without_clips(dir);
    let out = std::process::Command::new(codereader_speak_bin())
        .args([
            "clips",
            "--lang",
            "en",
            "--voice",
            "flite-slt",
            "--speeds",
            "0",
        ])
        .arg("--voices")
        .arg(&voices)
        .output()
        .unwrap_or_else(|e| panic!("cannot run codereader-speak: {e}"));
    assert!(
        out.status.success(),
        "rendering the clips: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    voices
}

/// The Python with PocketSphinx for the offline recognizer
/// (`crates/speech/tools/recognize_digits.py`): `CODEREADER_ASR_PYTHON` (set by `cargo xtask
/// test`), else the virtualenv `cargo xtask test` makes in `target/asr-venv`, else `python3`.
pub fn asr_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CODEREADER_ASR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/asr-venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Mono audio as floats in -1..1.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Sample rate, Hz.
    pub rate: u32,
    /// Samples.
    pub samples: Vec<f32>,
}

/// A stretch of sound between silences, in samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First sample.
    pub start: usize,
    /// One past the last sample.
    pub end: usize,
}

impl Span {
    /// Length in seconds at `rate`.
    pub fn seconds(&self, rate: u32) -> f64 {
        (self.end - self.start) as f64 / f64::from(rate)
    }
}

/// Frame length for energy analysis, ms.
const FRAME_MS: u32 = 10;

impl Audio {
    /// Reads a mono 16-bit WAV file.
    ///
    /// # Errors
    /// hound's errors, or a file that is not mono 16-bit.
    pub fn read_wav(path: &Path) -> Result<Audio, String> {
        let mut reader = hound::WavReader::open(path).map_err(|e| e.to_string())?;
        let spec = reader.spec();
        if spec.channels != 1 || spec.bits_per_sample != 16 {
            return Err(format!(
                "{}: expected mono 16-bit, got {spec:?}",
                path.display()
            ));
        }
        let samples: Result<Vec<i16>, _> = reader.samples::<i16>().collect();
        let samples = samples.map_err(|e| e.to_string())?;
        Ok(Audio {
            rate: spec.sample_rate,
            samples: samples.iter().map(|&s| f32::from(s) / 32768.0).collect(),
        })
    }

    /// Audio from raw signed 16-bit little-endian mono bytes.
    pub fn from_s16le(bytes: &[u8], rate: u32) -> Audio {
        Audio {
            rate,
            samples: bytes
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect(),
        }
    }

    fn frame_len(&self) -> usize {
        (self.rate * FRAME_MS / 1000).max(1) as usize
    }

    /// RMS of each 10 ms frame.
    pub fn envelope(&self) -> Vec<f32> {
        self.samples
            .chunks(self.frame_len())
            .map(|f| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt())
            .collect()
    }

    /// Stretches of sound: frames above `threshold` RMS, joined across gaps shorter than
    /// `min_gap_ms`.
    pub fn spans(&self, threshold: f32, min_gap_ms: u32) -> Vec<Span> {
        let frame = self.frame_len();
        let min_gap = (min_gap_ms / FRAME_MS) as usize;
        let mut spans: Vec<Span> = Vec::new();
        for (i, rms) in self.envelope().iter().enumerate() {
            if *rms < threshold {
                continue;
            }
            let (start, end) = (i * frame, ((i + 1) * frame).min(self.samples.len()));
            match spans.last_mut() {
                Some(last) if start - last.end <= min_gap * frame => last.end = end,
                _ => spans.push(Span { start, end }),
            }
        }
        spans
    }

    /// RMS of the loudest 10 ms frame (0 for silence), the level that sound and silence are
    /// told apart relative to.
    pub fn loudest_frame(&self) -> f32 {
        self.envelope().iter().fold(0.0f32, |m, r| m.max(*r))
    }

    /// RMS over a span.
    pub fn rms(&self, span: Span) -> f32 {
        let s = &self.samples[span.start..span.end];
        (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
    }

    /// Largest absolute sample.
    pub fn peak(&self) -> f32 {
        self.samples.iter().fold(0.0, |m, s| m.max(s.abs()))
    }

    /// The part of the audio in `span`.
    pub fn slice(&self, span: Span) -> Audio {
        Audio {
            rate: self.rate,
            samples: self.samples[span.start..span.end].to_vec(),
        }
    }
}

/// Pearson correlation of two signals or envelopes over their common length (1.0 = same
/// shape; 0 when either is flat). Summed in `f64`, so long sample buffers (the speech crate's
/// tests compare whole captures) lose no precision. The one copy: the speech crate's tests
/// use it too.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        num += x * y;
        da += x * x;
        db += y * y;
    }
    num / (da.sqrt() * db.sqrt()).max(f64::EPSILON)
}

/// What the segmentation of one spoken code found.
#[derive(Debug, Clone)]
pub struct CodeSegments {
    /// Every stretch of sound: start earcon, intro, the digits, end earcon.
    pub spans: Vec<Span>,
    /// The digit words (all spans but the earcons and the intro).
    pub digits: Vec<Span>,
}

/// Splits a spoken code into its parts by energy: a frame is sound when its RMS is above
/// -40 dB relative to the loudest frame, and parts are separated by at least 120 ms of
/// silence (the plan puts 150 ms and more between parts; words have shorter gaps inside).
pub fn code_segments(audio: &Audio) -> CodeSegments {
    let spans = audio.spans(audio.loudest_frame() * 0.01, 120);
    let digits = if spans.len() >= 3 {
        spans[2..spans.len() - 1].to_vec()
    } else {
        Vec::new()
    };
    CodeSegments { spans, digits }
}

/// A pseudo-terminal pair: the test writes keys to `master`; the child gets `slave`.
#[derive(Debug)]
pub struct Pty {
    /// The test's end.
    pub master: File,
    /// The child's terminal.
    pub slave: File,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    ///
    /// # Errors
    /// The system's errors.
    pub fn open() -> io::Result<Pty> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Pty {
            master: File::from(master),
            slave,
        })
    }
}

/// Sample rate and format the capture config asks ALSA's `plug` to convert to.
pub const CAPTURE_RATE: u32 = 48_000;

/// Captures what programs play on ALSA's default device, paced in real time.
///
/// ALSA's `file` plugin over the `null` device accepts audio as fast as it is written (it
/// has no clock), so a player would race through its ring in microseconds. Here the file is
/// a FIFO with a small pipe buffer, read at exactly 48 000 samples per second: the player's
/// writes block like a real sound card's, and the capture shows what a listener would hear
/// and when.
#[derive(Debug)]
pub struct AlsaCapture {
    /// Directory holding the config and the FIFO.
    pub dir: PathBuf,
    /// Value for `ALSA_CONFIG_PATH`.
    pub config_path: String,
    data: Arc<Mutex<Vec<u8>>>,
    started: Arc<Mutex<Option<Instant>>>,
    ended: Arc<AtomicBool>,
}

/// RMS (full scale 1.0) above which a 10 ms frame counts as sound while waiting: -60 dBFS.
/// Players write digital silence between sounds, and speech is far louder, so this tells
/// them apart more strictly than the analysis does (1 % of the loudest frame): a quiet
/// stretch here is a quiet stretch there too.
const SOUND_RMS: f32 = 0.001;

/// How often the waits of [`AlsaCapture`] look at the capture.
const POLL: Duration = Duration::from_millis(50);

impl AlsaCapture {
    /// Sets up the config and FIFO in `dir` and starts the reader thread (which waits for a
    /// player to open the device).
    ///
    /// # Errors
    /// File system errors.
    pub fn start(dir: &Path) -> io::Result<AlsaCapture> {
        let fifo = dir.join("capture.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )?;
        let conf = dir.join("asound.conf");
        std::fs::write(
            &conf,
            format!(
                "pcm.!default {{ type plug; slave {{ pcm \"capture\"; format S16_LE; rate {CAPTURE_RATE}; channels 1 }} }}\n\
                 pcm.capture {{ type file; slave.pcm \"null\"; file \"{}\"; format \"raw\" }}\n",
                fifo.display()
            ),
        )?;
        let data = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(Mutex::new(None));
        let ended = Arc::new(AtomicBool::new(false));
        let (d, s, e) = (Arc::clone(&data), Arc::clone(&started), Arc::clone(&ended));
        thread::spawn(move || {
            // Set however the reader stops: the player closed the device, or an error.
            let _ended = SetOnDrop(e);
            // Blocks until a player opens the FIFO for writing.
            let Ok(mut file) = File::open(&fifo) else {
                return;
            };
            // A small pipe buffer keeps the player within ~20 ms of real time.
            let _ = rustix::pipe::fcntl_setpipe_size(&file, 4096);
            let t0 = Instant::now();
            *s.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
            let bytes_per_second = f64::from(CAPTURE_RATE) * 2.0;
            let mut total = 0usize;
            let mut buf = vec![0u8; 8192];
            loop {
                let due = (t0.elapsed().as_secs_f64() * bytes_per_second) as usize;
                let allowed = due.saturating_sub(total) & !1;
                if allowed == 0 {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let n = allowed.min(buf.len());
                match file.read(&mut buf[..n]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        total += n;
                        d.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        Ok(AlsaCapture {
            dir: dir.to_path_buf(),
            config_path: format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
            data,
            started,
            ended,
        })
    }

    /// Everything captured so far.
    pub fn audio(&self) -> Audio {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        Audio::from_s16le(&data, CAPTURE_RATE)
    }

    /// When the player opened the device, if it has.
    pub fn started(&self) -> Option<Instant> {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples captured so far: the point to wait from for what comes next.
    pub fn position(&self) -> usize {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).len() / 2
    }

    /// The sound after sample `from`: its first and last loud frame (as a span of samples
    /// counted from `from`, `None` while all is quiet), and how many samples follow `from`.
    fn sound_since(&self, from: usize) -> (Option<Span>, usize) {
        let audio = {
            let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
            Audio::from_s16le(&data[(from * 2).min(data.len())..], CAPTURE_RATE)
        };
        let frame = audio.frame_len();
        let envelope = audio.envelope();
        let first = envelope.iter().position(|r| *r >= SOUND_RMS);
        let last = envelope.iter().rposition(|r| *r >= SOUND_RMS);
        let span = first.zip(last).map(|(first, last)| Span {
            start: first * frame,
            end: ((last + 1) * frame).min(audio.samples.len()),
        });
        (span, audio.samples.len())
    }

    /// Polls `done` with what [`Self::sound_since`] says of `from` until it holds; an
    /// error after `timeout`, with `what` and the state last seen.
    fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        done: impl Fn(Option<Span>, usize) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read before the samples: once it is set, the samples are all there will be.
            let ended = self.ended.load(Ordering::Acquire);
            let (sound, captured) = self.sound_since(from);
            if done(sound, captured) {
                return Ok(());
            }
            if ended || Instant::now() >= deadline {
                return Err(format!(
                    "{what}: not within {timeout:?} (sound {sound:?} in {captured} samples after \
                     sample {from}; player gone: {ended})"
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until a sound has been captured after sample `from` and `quiet` of silence has
    /// followed it: something has been said, whole (pauses inside speech are shorter).
    ///
    /// # Errors
    /// Not so within `timeout`, or the player closed the device first.
    pub fn wait_for_sound_then_quiet(
        &self,
        from: usize,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        let quiet = samples(quiet);
        self.wait_for(from, timeout, "a sound, then quiet", |sound, captured| {
            sound.is_some_and(|s| captured - s.end >= quiet)
        })
    }

    /// Waits until a sound that began after sample `from` has lasted `length` (counting
    /// from its first loud frame; pauses inside it count too).
    ///
    /// # Errors
    /// Not so within `timeout`, or the player closed the device first.
    pub fn wait_for_sound_lasting(
        &self,
        from: usize,
        length: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        let length = samples(length);
        self.wait_for(from, timeout, "a long enough sound", |sound, captured| {
            sound.is_some_and(|s| captured - s.start >= length)
        })
    }

    /// Waits until the player has closed the device and everything it wrote has been read.
    ///
    /// # Errors
    /// Not so within `timeout`.
    pub fn wait_for_end(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.ended.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the player did not close the device within {timeout:?}"
                ));
            }
            thread::sleep(POLL);
        }
        Ok(())
    }
}

/// Samples at [`CAPTURE_RATE`] in `length`.
fn samples(length: Duration) -> usize {
    (length.as_secs_f64() * f64::from(CAPTURE_RATE)) as usize
}

/// Sets its flag when dropped: the capture thread's "I have stopped", however it returns.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}
