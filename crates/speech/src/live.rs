//! Live playback on a sound card with cpal (ALSA's `default`, or a device named in the
//! config, see [`output_devices`]), fed through a lock-free `rtrb` ring.
//!
//! A worker thread owns the cpal stream, the synthesiser and the [`Renderer`]; it renders
//! utterances at the device's rate and pushes mono samples into the ring. The cpal data
//! callback only pops from the ring, copies each sample to every channel in the device's
//! sample format, zero-fills on underrun and bumps atomic counters: it never allocates, frees,
//! locks, blocks, logs or calls espeak-ng.
//!
//! An utterance starts sounding once [`LEAD_MS`] of it is queued (or all of it): the start
//! earcon, its pause and the intro, so the device never waits on the synthesiser mid-code.
//!
//! alsa-lib prints its own errors ("ALSA lib confmisc.c:855:(parse_card) cannot find card")
//! to standard error, eight lines at every attempt to open a missing card: under systemd,
//! hundreds of thousands of journal lines a day while the headphones are unplugged. While
//! this module opens or lists devices, a thread-local handler (the `alsa` crate's safe
//! `Output::local_error_handler`) collects them instead, and they become part of the
//! [`SpeechError::Device`] message, which the caller logs once per distinct failure.
//!
//! Stopping is immediate: [`LivePlayer::stop`] bumps a generation counter; from its next
//! callback on, the audio thread discards whatever is queued and plays silence, and the worker
//! abandons the render at its next chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use rtrb::{Consumer, Producer, RingBuffer};

use crate::error::SpeechError;
use crate::pipeline::Renderer;
use crate::plan::{SampleRate, Settings, Utterance};
use crate::sink::Sink;
use crate::synth::Synth;

/// Ring length: how much rendered audio may wait for the device.
const RING_MS: u32 = 2000;

/// An utterance starts sounding once this much of it is queued (or all of it, if shorter).
/// With the start earcon and its pause first, that covers the intro too, so a slow or busy
/// machine cannot open a gap between intro and digits; rendering it takes about 1.5 ms with
/// uncached espeak-ng and 0.2 ms warm, which nobody hears.
pub const LEAD_MS: u32 = 500;

/// After this long without a request the stream is paused: ALSA's thread otherwise wakes
/// every period (about 26 times a second) forever, which costs power on a Pi. The next
/// request resumes it before its first sample is queued: `snd_pcm_pause` where the device
/// can pause; otherwise the device was closed when idle and is opened again (the ALSA
/// `file` plugin of the tests cannot pause, and reopening it takes about a millisecond).
pub const IDLE_PAUSE: Duration = Duration::from_secs(10);

/// How the output device was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputInfo {
    /// Device rate (the renderer resamples to it).
    pub sample_rate: SampleRate,
    /// Device channel count (the mono signal goes to every channel).
    pub channels: u16,
    /// Device sample format, as cpal names it (`i16`, `f32`, ...).
    pub sample_format: String,
    /// Frames per callback, if the backend reports it.
    pub period_frames: Option<u32>,
}

/// An output device a user can name (`audio.device` in the device's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDevice {
    /// The ALSA PCM name to give: `default`, `sysdefault:CARD=Headphones`,
    /// `plughw:CARD=vc4hdmi0,DEV=0`, ...
    pub name: String,
    /// What ALSA says it is, on one line.
    pub description: String,
}

/// The output devices ALSA knows (its hints, then each card's `hw` and `plughw` devices),
/// `default` first.
///
/// # Errors
/// [`SpeechError::Device`] if ALSA cannot list them.
pub fn output_devices() -> Result<Vec<OutputDevice>, SpeechError> {
    let alsa_says = AlsaMessages::collect();
    let host = cpal::default_host();
    let devices = host
        .output_devices()
        .map_err(|e| alsa_says.error(&format!("cannot list output devices: {e}")))?;
    let mut list: Vec<OutputDevice> = devices
        .filter_map(|device| {
            let name = device.id().ok()?.id().to_owned();
            let description = device.description().ok().map_or_else(String::new, |d| {
                let mut text = d.name().to_owned();
                for line in d.extended() {
                    if line != d.name() {
                        text.push_str("; ");
                        text.push_str(line);
                    }
                }
                text
            });
            Some(OutputDevice { name, description })
        })
        .collect();
    if !list.iter().any(|d| d.name == "default") {
        list.insert(
            0,
            OutputDevice {
                name: "default".to_owned(),
                description: "ALSA's default device".to_owned(),
            },
        );
    }
    Ok(list)
}

/// alsa-lib's error messages on this thread, collected instead of printed while it lives.
struct AlsaMessages(Option<std::rc::Rc<std::cell::RefCell<alsa::Output>>>);

impl AlsaMessages {
    fn collect() -> Self {
        Self(alsa::Output::local_error_handler().ok())
    }

    /// What alsa-lib said so far, one line, de-duplicated.
    fn text(&self) -> String {
        let Some(output) = &self.0 else {
            return String::new();
        };
        let all = output.borrow().to_string();
        let mut lines: Vec<&str> = Vec::new();
        for line in all.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines.join("; ")
    }

    /// A device error: `message`, and what alsa-lib said, if anything.
    fn error(&self, message: &str) -> SpeechError {
        let said = self.text();
        if said.is_empty() {
            SpeechError::Device(message.to_owned())
        } else {
            SpeechError::Device(format!("{message} (ALSA: {said})"))
        }
    }
}

/// State shared between the player, its worker thread and the audio callback (atomics only).
#[derive(Debug, Default)]
struct Shared {
    /// Bumped by every stop and every new play or replay; a request plays only while this
    /// still equals the generation it was given.
    stop_gen: AtomicU64,
    /// Generation whose audio is in the ring; the callback plays only while it equals
    /// `stop_gen`, and discards the ring otherwise.
    play_gen: AtomicU64,
    /// Requests sent / finished (played to the end of the ring, stopped, or superseded).
    requested: AtomicU64,
    completed: AtomicU64,
    /// `true` from the first sample the worker pushed for a request until its render ended.
    rendering: AtomicBool,
    /// `false` while the current request is still queueing its lead ([`LEAD_MS`]): the
    /// callback plays silence and leaves the ring alone until then.
    started: AtomicBool,
    /// Callbacks that found the ring empty while the render was still running (a gap).
    underruns: AtomicU64,
    /// Utterance samples handed to the device.
    frames_played: AtomicU64,
    /// Utterance samples the worker pushed into the ring.
    frames_queued: AtomicU64,
    /// The stream reported an error.
    failed: AtomicBool,
    /// Audio callbacks so far (each is one wake-up of the audio thread).
    callbacks: AtomicU64,
    /// The stream is paused (or closed) for being idle.
    paused: AtomicBool,
}

impl Shared {
    fn busy(&self) -> bool {
        self.completed.load(Ordering::Acquire) != self.requested.load(Ordering::Acquire)
    }

    /// Starts a new request: stops the current one and returns the new generation.
    fn next_generation(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::AcqRel);
        self.stop_gen.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }
}

enum Command {
    Play(Utterance, Settings, u64),
    Replay(Settings, u64),
    SetSynth(Box<dyn Synth>),
    IdlePause(Duration),
    Shutdown,
}

/// Plays utterances on an output device. Dropping it stops playback and closes the device.
#[derive(Debug)]
pub struct LivePlayer {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    info: OutputInfo,
    worker: Option<thread::JoinHandle<()>>,
}

impl LivePlayer {
    /// Opens the default output device of the default cpal host in its default configuration
    /// (any sample format, rate and channel count) and starts the stream (silent until
    /// [`LivePlayer::play`]).
    ///
    /// # Errors
    /// [`SpeechError::Device`] if there is no output device or the stream cannot start.
    pub fn open_default(synth: Box<dyn Synth>) -> Result<Self, SpeechError> {
        Self::open(None, synth)
    }

    /// Opens the output device `name` (one of [`output_devices`]; `None`: ALSA's default) in
    /// its default configuration and starts the stream (silent until [`LivePlayer::play`]).
    ///
    /// # Errors
    /// [`SpeechError::Device`] if there is no such device or the stream cannot start; the
    /// message includes what alsa-lib said (which is not printed).
    pub fn open(name: Option<&str>, synth: Box<dyn Synth>) -> Result<Self, SpeechError> {
        let name = name.map(str::to_owned);
        let shared = Arc::new(Shared::default());
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker_shared = Arc::clone(&shared);
        let worker = thread::Builder::new()
            .name("speech-live".into())
            .spawn(move || worker(&rx, &worker_shared, name.as_deref(), synth, &ready_tx))
            .map_err(|e| SpeechError::Device(format!("cannot start playback thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(info)) => Ok(Self {
                commands,
                shared,
                info,
                worker: Some(worker),
            }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => {
                let _ = worker.join();
                Err(SpeechError::Device("playback thread ended".into()))
            }
        }
    }

    /// How the device was opened.
    pub fn info(&self) -> &OutputInfo {
        &self.info
    }

    fn send(&self, command: Command) -> Result<(), SpeechError> {
        let is_request = matches!(command, Command::Play(..) | Command::Replay(..));
        self.commands.send(command).map_err(|_| {
            if is_request {
                // Nobody will finish it: do not leave `is_playing` true forever.
                self.shared.completed.fetch_add(1, Ordering::AcqRel);
            }
            SpeechError::Device("playback thread ended".into())
        })
    }

    /// Stops whatever is playing and plays `utterance`; returns at once.
    ///
    /// # Errors
    /// [`SpeechError::Device`] if the playback thread has ended.
    pub fn play(&self, utterance: Utterance, settings: Settings) -> Result<(), SpeechError> {
        let generation = self.shared.next_generation();
        self.send(Command::Play(utterance, settings, generation))
    }

    /// Stops whatever is playing and plays the last utterance again (with new settings).
    /// Does nothing if nothing was played yet.
    ///
    /// # Errors
    /// [`SpeechError::Device`] if the playback thread has ended.
    pub fn replay(&self, settings: Settings) -> Result<(), SpeechError> {
        let generation = self.shared.next_generation();
        self.send(Command::Replay(settings, generation))
    }

    /// Switches the synthesiser (e.g. after a language change); applies from the next play.
    ///
    /// # Errors
    /// [`SpeechError::Device`] if the playback thread has ended.
    pub fn set_synth(&self, synth: Box<dyn Synth>) -> Result<(), SpeechError> {
        self.send(Command::SetSynth(synth))
    }

    /// Silences playback at once: from the device's next callback on, queued audio is
    /// discarded and the render is abandoned. [`LivePlayer::replay`] plays it again.
    pub fn stop(&self) {
        self.shared.stop_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// `true` while a play or replay request has not finished. A request finishes when the
    /// device has taken its last sample from the ring (the device's own buffer, about one
    /// period, then still sounds), or when it was stopped or superseded.
    pub fn is_playing(&self) -> bool {
        self.shared.busy()
    }

    /// Waits until every request has finished or `timeout` passes; `true` if idle.
    pub fn wait_until_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.busy() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Callbacks that ran dry while an utterance was still being rendered.
    pub fn underruns(&self) -> u64 {
        self.shared.underruns.load(Ordering::Relaxed)
    }

    /// Utterance samples (frames) pushed into the ring so far: the first one marks when a
    /// request's audio is ready for the device (it starts sounding after [`LEAD_MS`]).
    pub fn frames_queued(&self) -> u64 {
        self.shared.frames_queued.load(Ordering::Acquire)
    }

    /// Utterance samples (frames) handed to the device so far.
    pub fn frames_played(&self) -> u64 {
        self.shared.frames_played.load(Ordering::Relaxed)
    }

    /// `true` if the stream reported an error.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Audio callbacks so far: how often the audio thread woke up.
    pub fn callbacks(&self) -> u64 {
        self.shared.callbacks.load(Ordering::Relaxed)
    }

    /// `true` while the stream is paused (or the device closed) for being idle.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }

    /// Pauses the stream after `after` without a request instead of [`IDLE_PAUSE`].
    ///
    /// # Errors
    /// [`SpeechError::Device`] if the playback thread has ended.
    pub fn set_idle_pause(&self, after: Duration) -> Result<(), SpeechError> {
        self.send(Command::IdlePause(after))
    }
}

impl Drop for LivePlayer {
    fn drop(&mut self) {
        self.stop();
        let _ = self.commands.send(Command::Shutdown);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker: opens the device, then serves commands until shutdown.
fn worker(
    commands: &mpsc::Receiver<Command>,
    shared: &Arc<Shared>,
    name: Option<&str>,
    synth: Box<dyn Synth>,
    ready: &mpsc::Sender<Result<OutputInfo, SpeechError>>,
) {
    // Collects alsa-lib's messages for as long as the worker runs (it opens the device
    // again after an idle close).
    let alsa_says = AlsaMessages::collect();
    if let Some(worker) = Worker::open(shared, name, synth, &alsa_says, ready) {
        worker.serve(commands);
    }
}

/// What the worker thread owns while it serves: the stream (`None` while closed for being
/// idle), the ring's producer, the renderer and the synthesiser. Fields drop in this order.
struct Worker<'a> {
    stream: Option<cpal::Stream>,
    /// The last utterance played, for a replay.
    last: Option<Utterance>,
    renderer: Renderer,
    producer: Producer<f32>,
    synth: Box<dyn Synth>,
    shared: &'a Arc<Shared>,
    name: Option<&'a str>,
    /// Requests finished so far (published as `Shared::completed`).
    finished: u64,
    /// How long without a request before the stream is paused.
    idle_pause: Duration,
}

impl<'a> Worker<'a> {
    /// Opens the device and prepares the renderer, and tells the player through `ready`
    /// how it went; `None` when it failed (or the player is gone).
    fn open(
        shared: &'a Arc<Shared>,
        name: Option<&'a str>,
        synth: Box<dyn Synth>,
        alsa_says: &AlsaMessages,
        ready: &mpsc::Sender<Result<OutputInfo, SpeechError>>,
    ) -> Option<Self> {
        let (stream, info, producer) = match open_stream(shared, name) {
            Ok(opened) => opened,
            Err(e) => {
                let message = match e {
                    SpeechError::Device(message) => message,
                    other => other.to_string(),
                };
                let _ = ready.send(Err(alsa_says.error(&message)));
                return None;
            }
        };
        let mut renderer = Renderer::new(info.sample_rate);
        if let Err(e) = renderer.prepare(synth.sample_rate()) {
            let _ = ready.send(Err(e));
            return None;
        }
        if ready.send(Ok(info.clone())).is_err() {
            return None;
        }
        Some(Worker {
            stream: Some(stream),
            last: None,
            renderer,
            producer,
            synth,
            shared,
            name,
            finished: 0,
            idle_pause: IDLE_PAUSE,
        })
    }

    /// Serves commands until shutdown (or the player is gone), pausing the stream when idle.
    fn serve(mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            let paused = self.shared.paused.load(Ordering::Acquire);
            let command = if paused {
                commands
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                commands.recv_timeout(self.idle_pause)
            };
            let command = match command {
                Ok(command) => command,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.pause();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if paused && matches!(command, Command::Play(..) | Command::Replay(..)) {
                self.resume();
            }
            if !self.obey(command) {
                break;
            }
            self.shared
                .completed
                .store(self.finished, Ordering::Release);
        }
        drop(self.stream.take());
    }

    /// Idle: every request has finished, so nothing queued is cut off. Pauses where the
    /// device can; otherwise closes it (the next request opens it again).
    fn pause(&mut self) {
        if self.stream.as_ref().is_some_and(|s| s.pause().is_err()) {
            self.stream = None;
        }
        self.shared.paused.store(true, Ordering::Release);
    }

    /// Resumes the paused stream, or opens the device again if it was closed.
    fn resume(&mut self) {
        let resumed = match &self.stream {
            Some(running) => running.play().is_ok(),
            None => match open_stream(self.shared, self.name) {
                Ok((reopened, info, ring)) => {
                    if info.sample_rate != self.renderer.sample_rate() {
                        self.renderer = Renderer::new(info.sample_rate);
                        let _ = self.renderer.prepare(self.synth.sample_rate());
                    }
                    self.producer = ring;
                    self.stream = Some(reopened);
                    true
                }
                Err(_) => false,
            },
        };
        if !resumed {
            // The request ends at once; the caller sees `failed` and reopens the device.
            self.shared.failed.store(true, Ordering::Relaxed);
        }
        self.shared.paused.store(false, Ordering::Release);
    }

    /// Does `command`; `false` on shutdown.
    fn obey(&mut self, command: Command) -> bool {
        match command {
            Command::Play(utterance, settings, generation) => {
                let job = Job {
                    settings,
                    generation,
                };
                speak(
                    &utterance,
                    job,
                    &mut self.renderer,
                    self.synth.as_mut(),
                    &mut self.producer,
                    self.shared,
                );
                self.last = Some(utterance);
                self.finished += 1;
            }
            Command::Replay(settings, generation) => {
                if let Some(utterance) = &self.last {
                    let job = Job {
                        settings,
                        generation,
                    };
                    speak(
                        utterance,
                        job,
                        &mut self.renderer,
                        self.synth.as_mut(),
                        &mut self.producer,
                        self.shared,
                    );
                }
                self.finished += 1;
            }
            Command::SetSynth(new) => {
                self.synth = new;
                let _ = self.renderer.prepare(self.synth.sample_rate());
            }
            Command::IdlePause(after) => self.idle_pause = after,
            Command::Shutdown => return false,
        }
        true
    }
}

/// One play request as the worker sees it.
#[derive(Clone, Copy)]
struct Job {
    settings: Settings,
    generation: u64,
}

/// Renders one utterance into the ring and waits until the device has taken all of it (or a
/// stop arrives).
fn speak(
    utterance: &Utterance,
    job: Job,
    renderer: &mut Renderer,
    synth: &mut dyn Synth,
    producer: &mut Producer<f32>,
    shared: &Shared,
) {
    let cancelled = || shared.stop_gen.load(Ordering::Acquire) != job.generation;
    if cancelled() {
        // Stopped or superseded before it started.
        return;
    }
    // While `play_gen` is stale the callback discards what is queued: wait for that, so the
    // new utterance never starts with the tail of the old one.
    wait_for_empty_ring(producer, shared, None);
    shared.started.store(false, Ordering::Release);
    shared.play_gen.store(job.generation, Ordering::Release);
    let mut sink = RingSink {
        producer,
        shared,
        rate: renderer.sample_rate(),
        lead: renderer.sample_rate().samples_for_ms(LEAD_MS),
        cancelled: &cancelled,
    };
    // A failed render simply ends this utterance; the device reports audio faults via
    // `LivePlayer::failed`.
    let _ = renderer.render(utterance, synth, job.settings, &mut sink, &cancelled);
    shared.rendering.store(false, Ordering::Release);
    shared.started.store(true, Ordering::Release);
    wait_for_empty_ring(producer, shared, Some(&cancelled));
}

/// Polls until the ring is empty, the stream failed, `stop` says so, or 3 s pass.
fn wait_for_empty_ring(producer: &Producer<f32>, shared: &Shared, stop: Option<&dyn Fn() -> bool>) {
    let capacity = producer.buffer().capacity();
    let deadline = Instant::now() + Duration::from_millis(u64::from(RING_MS) + 1000);
    while producer.slots() < capacity
        && !shared.failed.load(Ordering::Relaxed)
        && !stop.is_some_and(|s| s())
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(2));
    }
}

/// Sink that pushes into the ring, waiting (on the worker thread) while it is full.
struct RingSink<'a> {
    producer: &'a mut Producer<f32>,
    shared: &'a Shared,
    rate: SampleRate,
    /// Samples to queue before the callback may start (capped by the ring's capacity).
    lead: usize,
    cancelled: &'a dyn Fn() -> bool,
}

impl Sink for RingSink<'_> {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), SpeechError> {
        let mut rest = samples;
        while !rest.is_empty() {
            if (self.cancelled)() {
                return Ok(());
            }
            if self.shared.failed.load(Ordering::Relaxed) {
                return Err(SpeechError::Device("output stream failed".into()));
            }
            let (pushed, remainder) = self.producer.push_partial_slice(rest);
            if pushed.is_empty() {
                thread::sleep(Duration::from_millis(2));
            } else {
                self.shared
                    .frames_queued
                    .fetch_add(pushed.len() as u64, Ordering::Release);
                // From the first sample on, an empty ring is a gap in the speech.
                self.shared.rendering.store(true, Ordering::Release);
                let capacity = self.producer.buffer().capacity();
                let queued = capacity - self.producer.slots();
                if queued >= self.lead.min(capacity) {
                    self.shared.started.store(true, Ordering::Release);
                }
            }
            rest = remainder;
        }
        Ok(())
    }
}

fn open_stream(
    shared: &Arc<Shared>,
    name: Option<&str>,
) -> Result<(cpal::Stream, OutputInfo, Producer<f32>), SpeechError> {
    let device_err =
        |what: &str, e: &dyn std::fmt::Display| SpeechError::Device(format!("{what}: {e}"));
    let host = cpal::default_host();
    let device = match name {
        None => host
            .default_output_device()
            .ok_or_else(|| SpeechError::Device("no default output device".into()))?,
        Some(name) => host
            .device_by_id(&cpal::DeviceId::new(host.id(), name))
            .ok_or_else(|| {
                SpeechError::Device(format!(
                    "no output device `{name}` (`codereader audio --list` lists them)"
                ))
            })?,
    };
    let supported = device
        .default_output_config()
        .map_err(|e| device_err("no default output configuration", &e))?;
    let config = supported.config();
    let rate = SampleRate::new(config.sample_rate)
        .map_err(|_| SpeechError::Device("device reports a sample rate of 0".into()))?;
    let (producer, consumer) = RingBuffer::<f32>::new(rate.samples_for_ms(RING_MS));
    let format = supported.sample_format();
    let s = Arc::clone(shared);
    let stream = match format {
        SampleFormat::I8 => build::<i8>(&device, config, consumer, s),
        SampleFormat::I16 => build::<i16>(&device, config, consumer, s),
        SampleFormat::I24 => build::<cpal::I24>(&device, config, consumer, s),
        SampleFormat::I32 => build::<i32>(&device, config, consumer, s),
        SampleFormat::I64 => build::<i64>(&device, config, consumer, s),
        SampleFormat::U8 => build::<u8>(&device, config, consumer, s),
        SampleFormat::U16 => build::<u16>(&device, config, consumer, s),
        SampleFormat::U24 => build::<cpal::U24>(&device, config, consumer, s),
        SampleFormat::U32 => build::<u32>(&device, config, consumer, s),
        SampleFormat::U64 => build::<u64>(&device, config, consumer, s),
        SampleFormat::F32 => build::<f32>(&device, config, consumer, s),
        SampleFormat::F64 => build::<f64>(&device, config, consumer, s),
        other => {
            return Err(SpeechError::Device(format!(
                "unsupported sample format {other}"
            )));
        }
    }
    .map_err(|e| device_err("cannot open output stream", &e))?;
    stream
        .play()
        .map_err(|e| device_err("cannot start output stream", &e))?;
    let info = OutputInfo {
        sample_rate: rate,
        channels: config.channels,
        sample_format: format.to_string(),
        period_frames: stream.buffer_size().ok(),
    };
    Ok((stream, info, producer))
}

fn build<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut consumer: Consumer<f32>,
    shared: Arc<Shared>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32> + Send + 'static,
{
    let channels = usize::from(config.channels.max(1));
    let error_shared = Arc::clone(&shared);
    device.build_output_stream(
        config,
        move |data: &mut [T], _info: &cpal::OutputCallbackInfo| {
            fill(data, channels, &mut consumer, &shared);
        },
        move |error: cpal::Error| {
            // An underrun (xrun, also reported when a paused stream resumes) is recovered by
            // cpal itself (prepare and start again): not a failure of the output.
            if error.kind() != cpal::ErrorKind::Xrun {
                error_shared.failed.store(true, Ordering::Relaxed);
            }
        },
        None,
    )
}

/// The real-time part: no allocation, no locks, no blocking.
fn fill<T>(data: &mut [T], channels: usize, consumer: &mut Consumer<f32>, shared: &Shared)
where
    T: SizedSample + FromSample<f32>,
{
    shared.callbacks.fetch_add(1, Ordering::Relaxed);
    let stopped =
        shared.stop_gen.load(Ordering::Acquire) != shared.play_gen.load(Ordering::Acquire);
    if stopped {
        let queued = consumer.slots();
        if let Ok(chunk) = consumer.read_chunk(queued) {
            chunk.commit_all();
        }
    }
    let waiting = !stopped && !shared.started.load(Ordering::Acquire);
    let silence = T::from_sample(0.0f32);
    let mut played = 0u64;
    let mut ran_dry = false;
    for frame in data.chunks_mut(channels) {
        let value = if stopped || waiting {
            silence
        } else if let Ok(sample) = consumer.pop() {
            played += 1;
            T::from_sample(sample)
        } else {
            ran_dry = true;
            silence
        };
        for out in frame {
            *out = value;
        }
    }
    if played > 0 {
        shared.frames_played.fetch_add(played, Ordering::Relaxed);
    }
    if ran_dry && !stopped && !waiting && shared.rendering.load(Ordering::Acquire) {
        shared.underruns.fetch_add(1, Ordering::Relaxed);
    }
}
