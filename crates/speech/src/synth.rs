//! Synthesis backends behind one trait: espeak-ng (one owner thread) and pre-rendered clips.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

use crate::error::SpeechError;
use crate::ffi;
use crate::pack::{ClipSet, VoicePack};
use crate::plan::{Phrase, PhraseKey, SampleRate, Speed};

/// Turns one phrase into 16-bit mono samples at [`Synth::sample_rate`], chunk by chunk.
pub trait Synth: Send {
    /// Rate of the samples this backend produces.
    fn sample_rate(&self) -> SampleRate;

    /// Speaks `phrase` at `speed`, handing samples to `out` as they are produced; `out`
    /// returns `false` to stop early (then `speak` returns `Ok`).
    ///
    /// # Errors
    /// Backend failures: espeak-ng errors, a missing clip.
    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError>;
}

/// espeak-ng's chunk length: short chunks give an early first sample.
const ESPEAK_BUFFER_MS: u16 = 10;

/// espeak-ng's own amplitude parameter; chosen so speech peaks near -3 dBFS at volume MAX.
const ESPEAK_VOLUME: u8 = 100;

/// What the owner thread is asked to do.
enum Request {
    /// Synthesise.
    Speak(Job),
    /// Answer whether espeak-ng has a voice of this name.
    HasVoice(String, mpsc::Sender<bool>),
}

struct Job {
    voice: CString,
    wpm: u16,
    text: CString,
    reply: mpsc::Sender<Reply>,
}

enum Reply {
    Chunk(Vec<i16>),
    Done(Result<(), SpeechError>),
}

/// Handle to the process-wide espeak-ng owner thread. Cheap to clone; every call from every
/// handle is serialised on that one thread, which initialised espeak-ng once.
#[derive(Debug, Clone)]
pub struct Espeak {
    jobs: mpsc::Sender<Request>,
    sample_rate: SampleRate,
}

/// Why the engine could not start (kept in [`ENGINE`], so a failure is reported every time).
#[derive(Debug, Clone)]
enum StartError {
    /// The owner thread could not be spawned or died during initialisation.
    Thread,
    /// The shared library could not be loaded (the reason).
    Load(String),
    /// `espeak_Initialize` (or the first parameter call) failed with this code.
    Init(i32),
}

impl From<ffi::FfiError> for StartError {
    fn from(e: ffi::FfiError) -> Self {
        match e {
            ffi::FfiError::Load(reason) => StartError::Load(reason),
            ffi::FfiError::Initialize(code) | ffi::FfiError::Call(_, code) => {
                StartError::Init(code)
            }
        }
    }
}

static ENGINE: OnceLock<Result<Espeak, StartError>> = OnceLock::new();

impl Espeak {
    /// The shared engine, starting its owner thread and initialising espeak-ng on first use.
    ///
    /// # Errors
    /// [`SpeechError::EspeakMissing`] if the library cannot be loaded,
    /// [`SpeechError::EspeakInit`] if espeak-ng cannot initialise (e.g. no `espeak-ng-data`),
    /// [`SpeechError::EspeakThread`] if the thread could not start; the failure is sticky.
    pub fn shared() -> Result<Espeak, SpeechError> {
        match ENGINE.get_or_init(Self::start) {
            Ok(engine) => Ok(engine.clone()),
            Err(StartError::Thread) => Err(SpeechError::EspeakThread),
            Err(StartError::Load(reason)) => Err(SpeechError::EspeakMissing(reason.clone())),
            Err(StartError::Init(code)) => Err(SpeechError::EspeakInit(*code)),
        }
    }

    fn start() -> Result<Espeak, StartError> {
        let (jobs, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, StartError>>();
        let spawned = thread::Builder::new()
            .name("espeak-ng".into())
            .spawn(move || owner_thread(&rx, &ready_tx));
        if spawned.is_err() {
            return Err(StartError::Thread);
        }
        match ready_rx.recv() {
            Ok(Ok(hz)) => {
                // `initialize` rejects a zero rate, so this error cannot happen.
                let sample_rate = SampleRate::new(hz).map_err(|_| StartError::Init(0))?;
                Ok(Espeak { jobs, sample_rate })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartError::Thread),
        }
    }

    /// espeak-ng's output rate.
    pub fn sample_rate(&self) -> SampleRate {
        self.sample_rate
    }

    /// Whether espeak-ng has the voice `name` (e.g. `da`, `en-us`). An unknown name is not
    /// an error when speaking: espeak-ng speaks another voice instead, in the wrong language.
    ///
    /// # Errors
    /// [`SpeechError::EspeakThread`] if the owner thread is gone.
    pub fn has_voice(&self, name: &str) -> Result<bool, SpeechError> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Request::HasVoice(name.to_owned(), reply))
            .map_err(|_| SpeechError::EspeakThread)?;
        answer.recv().map_err(|_| SpeechError::EspeakThread)
    }

    /// A synthesiser speaking with `pack`'s espeak-ng voice and default rate.
    ///
    /// # Errors
    /// [`SpeechError::NulInText`] if the voice name contains a NUL byte.
    pub fn voice(&self, pack: &VoicePack) -> Result<EspeakSynth, SpeechError> {
        Ok(EspeakSynth {
            engine: self.clone(),
            voice: CString::new(pack.espeak_voice()).map_err(|_| SpeechError::NulInText)?,
            default_wpm: pack.default_rate(),
            cache: HashMap::new(),
            cached_samples: 0,
        })
    }
}

fn ffi_error(e: ffi::FfiError) -> SpeechError {
    match e {
        ffi::FfiError::Load(reason) => SpeechError::EspeakMissing(reason),
        ffi::FfiError::Initialize(code) => SpeechError::EspeakInit(code),
        ffi::FfiError::Call(call, code) => SpeechError::Espeak { call, code },
    }
}

/// The one thread that talks to espeak-ng.
fn owner_thread(jobs: &mpsc::Receiver<Request>, ready: &mpsc::Sender<Result<u32, StartError>>) {
    let started = ffi::initialize(ESPEAK_BUFFER_MS)
        .and_then(|t| ffi::set_volume(&t, ESPEAK_VOLUME).map(|()| t));
    let token = match started {
        Ok(token) => token,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let _ = ready.send(Ok(token.sample_rate()));
    let mut current: Option<(CString, u16)> = None;
    while let Ok(request) = jobs.recv() {
        match request {
            Request::Speak(job) => {
                let result = run_job(&token, &mut current, &job);
                let _ = job.reply.send(Reply::Done(result));
            }
            Request::HasVoice(name, reply) => {
                let _ = reply.send(ffi::has_voice(&token, &name));
            }
        }
    }
}

fn run_job(
    token: &ffi::EspeakToken,
    current: &mut Option<(CString, u16)>,
    job: &Job,
) -> Result<(), SpeechError> {
    let voice_changed = current.as_ref().is_none_or(|(v, _)| *v != job.voice);
    if voice_changed {
        // Forget the state first: if selecting fails, the next job must try again.
        *current = None;
        ffi::set_voice(token, &job.voice).map_err(ffi_error)?;
    }
    if voice_changed || current.as_ref().is_some_and(|(_, w)| *w != job.wpm) {
        ffi::set_rate(token, job.wpm).map_err(ffi_error)?;
    }
    *current = Some((job.voice.clone(), job.wpm));
    let mut on_chunk = |samples: &[i16]| job.reply.send(Reply::Chunk(samples.to_vec())).is_ok();
    ffi::synth(token, &job.text, &mut on_chunk).map_err(ffi_error)
}

/// espeak-ng speaking one pack's voice; see [`Espeak::voice`].
///
/// A device says the same few phrases (ten digit words, a dozen prompts) again and again, so
/// each complete phrase is kept, per text and rate, and replayed from memory the next time:
/// after the first code, a code costs no synthesis at all, and a replay is sample-identical.
/// The cache holds at most [`EspeakSynth::CACHE_SAMPLES`] samples (then it starts afresh).
#[derive(Debug, Clone)]
pub struct EspeakSynth {
    engine: Espeak,
    voice: CString,
    default_wpm: u16,
    cache: HashMap<(u16, String), Vec<i16>>,
    cached_samples: usize,
}

impl EspeakSynth {
    /// Most samples the phrase cache holds (about 8 MB: every phrase of a pack at several
    /// speeds).
    pub const CACHE_SAMPLES: usize = 4 << 20;

    /// Forgets every cached phrase, so the next ones are synthesised afresh.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.cached_samples = 0;
    }
}

impl Synth for EspeakSynth {
    fn sample_rate(&self) -> SampleRate {
        self.engine.sample_rate
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        let wpm = speed.words_per_minute(self.default_wpm);
        let key = (wpm, phrase.text.clone());
        if let Some(samples) = self.cache.get(&key) {
            emit_chunks(samples, out);
            return Ok(());
        }
        let text = CString::new(phrase.text.as_str()).map_err(|_| SpeechError::NulInText)?;
        let (reply, replies) = mpsc::channel();
        self.engine
            .jobs
            .send(Request::Speak(Job {
                voice: self.voice.clone(),
                wpm,
                text,
                reply,
            }))
            .map_err(|_| SpeechError::EspeakThread)?;
        let mut whole = Vec::new();
        loop {
            match replies.recv() {
                Ok(Reply::Chunk(samples)) => {
                    whole.extend_from_slice(&samples);
                    if !out(&samples) {
                        // Dropping the receiver makes the owner thread's next send fail,
                        // which aborts the synthesis there. A partial phrase is not cached.
                        return Ok(());
                    }
                }
                Ok(Reply::Done(result)) => {
                    result?;
                    if self.cached_samples + whole.len() > Self::CACHE_SAMPLES {
                        self.clear_cache();
                    }
                    self.cached_samples += whole.len();
                    self.cache.insert(key, whole);
                    return Ok(());
                }
                Err(_) => return Err(SpeechError::EspeakThread),
            }
        }
    }
}

/// Plays a pack's pre-rendered clips, read into memory one speed step at a time: the step
/// nearest to 0 when it is made, another the first time something is spoken at it. A device
/// thus reads the clips it speaks, not every step's (7 steps of every voice of every
/// language used to be opened to say one code).
///
/// A clip that cannot be read is remembered with its reason, and speaking that phrase is an
/// error (which [`crate::FallbackSynth`] answers with another synthesiser): one bad file
/// must not silence the others, whether it is found when the synthesiser is made or when a
/// step is first read.
#[derive(Debug, Clone)]
pub struct ClipSynth {
    clips: ClipSet,
    /// Per phrase and step read: `Ok(None)` once the clip's header was checked, `Ok(Some)`
    /// once its samples were read (when first spoken), `Err` with the clip's problem.
    samples: HashMap<(PhraseKey, Speed), ClipState>,
    report: Option<ProblemReport>,
}

/// A clip of a step read: `Ok(None)` checked, `Ok(Some)` read, `Err` its problem.
type ClipState = Result<Option<Vec<i16>>, String>;

/// Told the problems of a speed step read after the synthesiser was made, when it has any
/// (see [`ClipSynth::on_step_problems`]): each clip's file and what is wrong with it, sorted.
/// Never a phrase being spoken: the whole step is checked at once, whatever is said.
#[derive(Clone)]
pub struct ProblemReport(pub std::sync::Arc<ReportFn>);

/// What a [`ProblemReport`] calls.
pub type ReportFn = dyn Fn(&[String]) + Send + Sync;

impl std::fmt::Debug for ProblemReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProblemReport")
    }
}

/// Chunk length handed to the consumer, so the first samples arrive at once.
const CLIP_CHUNK: usize = 256;

/// Hands `samples` to `out` in short chunks, until `out` asks to stop.
pub(crate) fn emit_chunks(samples: &[i16], out: &mut dyn FnMut(&[i16]) -> bool) {
    for chunk in samples.chunks(CLIP_CHUNK) {
        if !out(chunk) {
            break;
        }
    }
}

impl ClipSynth {
    /// Loads the clips of `pack` at the speed step nearest to 0 (others when first spoken).
    ///
    /// # Errors
    /// [`SpeechError::NoClips`] if the pack has none; [`SpeechError::Pack`] if not one clip
    /// of that step can be read.
    pub fn load(pack: &VoicePack) -> Result<Self, SpeechError> {
        let clips = pack
            .clips()
            .cloned()
            .ok_or_else(|| SpeechError::NoClips(pack.tag().to_owned()))?;
        Self::from_clips(clips)
    }

    /// Loads the clips of a clip set at the speed step nearest to 0 (others when first
    /// spoken); those that cannot be read are kept as problems ([`ClipSynth::problems`]).
    ///
    /// # Errors
    /// [`SpeechError::Pack`] with the first clip's problem if not one clip of that step can
    /// be read: the set is then unusable as a whole.
    pub fn from_clips(clips: ClipSet) -> Result<Self, SpeechError> {
        let mut synth = Self {
            clips,
            samples: HashMap::new(),
            report: None,
        };
        let step = synth.clips.nearest_speed(Speed::default());
        match synth.read_step(step) {
            Some(unusable) => Err(SpeechError::Pack(unusable)),
            None => Ok(synth),
        }
    }

    /// From now on, the problems of each step read for the first time go to `report` (the
    /// problems found so far are in [`ClipSynth::problems`]).
    pub fn on_step_problems(&mut self, report: ProblemReport) {
        self.report = Some(report);
    }

    /// Checks every clip of the listed step nearest to `speed`, unless already done; returns
    /// that step. A clip that cannot be read is kept as a problem (and reported, see
    /// [`ClipSynth::on_step_problems`]), the others are used.
    pub fn load_step(&mut self, speed: Speed) -> Speed {
        let step = self.clips.nearest_speed(speed);
        if self.samples.contains_key(&(PhraseKey::Digit(0), step)) {
            return step;
        }
        self.read_step(step);
        if let Some(report) = &self.report {
            let mut problems: Vec<String> = PhraseKey::all()
                .filter_map(|key| match self.samples.get(&(key, step)) {
                    Some(Err(reason)) => Some(reason.clone()),
                    _ => None,
                })
                .collect();
            if !problems.is_empty() {
                problems.sort();
                (report.0)(&problems);
            }
        }
        step
    }

    /// Checks the clips of `step` unless already done; the first problem if not one of them
    /// can be used.
    fn read_step(&mut self, step: Speed) -> Option<crate::PackError> {
        if self.samples.contains_key(&(PhraseKey::Digit(0), step)) {
            return None;
        }
        let mut first_problem = None;
        let mut usable = false;
        // Only the headers now: a code says a dozen of the step's phrases, and decoding all
        // of them was most of a one-shot `speak`. Samples are read when first spoken.
        for key in PhraseKey::all() {
            let clip = match self.clips.check_clip(key, step) {
                Ok(()) => {
                    usable = true;
                    Ok(None)
                }
                Err(e) => {
                    let reason = e.to_string();
                    first_problem.get_or_insert(e);
                    Err(reason)
                }
            };
            self.samples.insert((key, step), clip);
        }
        if usable { None } else { first_problem }
    }

    /// Every clip read so far that cannot be played, with its reason (file name and
    /// problem), sorted. Grows when a step is first read.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .samples
            .values()
            .filter_map(|clip| clip.as_ref().err().cloned())
            .collect();
        problems.sort();
        problems
    }
}

impl Synth for ClipSynth {
    fn sample_rate(&self) -> SampleRate {
        self.clips.sample_rate
    }

    fn speak(
        &mut self,
        phrase: &Phrase,
        speed: Speed,
        out: &mut dyn FnMut(&[i16]) -> bool,
    ) -> Result<(), SpeechError> {
        let speed = self.load_step(speed);
        let no_clip = || SpeechError::NoClip(ClipSet::file_name(phrase.key, speed));
        let Some(entry) = self.samples.get_mut(&(phrase.key, speed)) else {
            return Err(no_clip());
        };
        if let Ok(None) = entry {
            // A clip whose header was good can still be cut short: then it is a problem like
            // any other, and this phrase fails (a `FallbackSynth` says it instead).
            *entry = self
                .clips
                .read_clip(phrase.key, speed)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        match entry {
            Ok(Some(clip)) => {
                emit_chunks(clip, out);
                Ok(())
            }
            Ok(None) | Err(_) => Err(no_clip()),
        }
    }
}
