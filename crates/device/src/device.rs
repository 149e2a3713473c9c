//! `codereader run`: the device loop. Keys arrive from the terminal, evdev devices and GPIO
//! lines (one thread each, all feeding one channel); the loop turns them into speech.
//!
//! Any key first stops the speech in progress (EN 301 549 5.1.3.5), then does its action.
//! Codes are taken from the state (progress stored before speaking), feedback and errors are
//! spoken in the user's language, and settings changes are saved at once.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use codereader_speech::{LivePlayer, Prompt, Utterance, VoicePack};
use zeroize::Zeroizing;

use crate::cli::{Exit, Failure, build_floor, load_voices, now, prompt_for};
use crate::config::{
    Chord, ClockConfig, Config, Effective, Gpio, Listening, RATE_RANGE, UserSettings, VOLUME_RANGE,
};
use crate::keys::{Action, EvKey, TermDecoder, TermKey};
use crate::state::{Basis, Progress, Reserved, StateDir, TakeError};
use crate::timesync::{self, ClockVerdict};
use crate::voice::{self, Message, Voices};

/// How often a missing audio device or evdev device is looked for again.
const RETRY: Duration = Duration::from_secs(2);

/// Battery level at and below which `status` warns.
const LOW_BATTERY_PERCENT: u8 = 20;

/// `run` options from the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Fixed time instead of the clock.
    pub at: Option<u64>,
    /// Read keys from the terminal.
    pub terminal: bool,
}

/// What an input thread reports.
#[derive(Debug)]
enum Event {
    /// A terminal key.
    Term(TermKey),
    /// An evdev key press (chords already resolved into actions).
    Ev(EvKey),
    /// An action decided by the input itself (chords, GPIO buttons).
    Action(Action),
    /// The terminal closed (end of input).
    TermClosed,
}

/// Set while the terminal is raw, so log lines carry their own carriage return.
static RAW: AtomicBool = AtomicBool::new(false);

/// Logs one line to standard error (the journal, under systemd).
pub fn log(message: &str) {
    let end = if RAW.load(Ordering::Relaxed) {
        "\r\n"
    } else {
        "\n"
    };
    // One write for the whole line: standard error is unbuffered, and a formatted write
    // would go out piece by piece, so a process killed mid-line (kill -9 while speaking)
    // could leave half a line, e.g. a counter message without its number.
    let line = format!("codereader: {message}{end}");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// The battery charge in percent, if the platform reports a battery.
pub fn battery_percent() -> Option<u8> {
    let entries = fs::read_dir("/sys/class/power_supply").ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let kind = fs::read_to_string(path.join("type")).unwrap_or_default();
        if kind.trim() == "Battery" {
            if let Ok(text) = fs::read_to_string(path.join("capacity")) {
                if let Ok(percent) = text.trim().parse::<u8>() {
                    return Some(percent.min(100));
                }
            }
        }
    }
    None
}

/// The last code given, for replay.
struct LastCode {
    code: Zeroizing<String>,
    basis: Basis,
}

/// The running device.
struct Device<'a> {
    state: &'a StateDir,
    voices: Voices,
    listening: Listening,
    player: Option<LivePlayer>,
    last_attempt: Option<Instant>,
    last_code: Option<LastCode>,
    reserved: Option<Reserved>,
    /// The last audio failure logged, so that retries do not repeat it.
    audio_error: Option<String>,
    /// Voices (`tag/name`) already reported as speaking through live espeak-ng for lack of
    /// clips, so the journal says it once per voice, not at every reopening.
    fallbacks_logged: BTreeSet<String>,
    at: Option<u64>,
    /// The config's `audio.device` (`None`: ALSA's default).
    output: Option<String>,
    /// The config's `[clock]`: what to do while the clock is not synchronised since boot.
    clock: ClockConfig,
}

impl Device<'_> {
    fn pack(&self) -> Option<&VoicePack> {
        self.voices.pack_or_first(&self.listening.language)
    }

    /// Opens the sound card if it is not open (at most every [`RETRY`]).
    fn ensure_player(&mut self, force: bool) {
        if self.player.is_some() {
            return;
        }
        if !force && self.last_attempt.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        self.last_attempt = Some(Instant::now());
        let Some(pack) = self.pack() else { return };
        let synth = match self.voices.synth(pack) {
            Ok(synth) => synth,
            Err(e) => {
                log(&format!("error: {e}"));
                return;
            }
        };
        self.log_fallback();
        match LivePlayer::open(self.output.as_deref(), synth) {
            Ok(player) => {
                self.audio_error = None;
                let info = player.info();
                log(&format!(
                    "audio: {} Hz, {} channel(s), {}",
                    info.sample_rate.hz(),
                    info.channels,
                    info.sample_format
                ));
                self.player = Some(player);
            }
            Err(e) => {
                // Said once per kind of failure, not at every retry: the journal of a device
                // without headphones plugged in must not fill up.
                let message = e.to_string();
                if self.audio_error.as_ref() != Some(&message) {
                    log(&format!(
                        "error: no audio device ({message}); trying again every {} s",
                        RETRY.as_secs()
                    ));
                    self.audio_error = Some(message);
                }
            }
        }
    }

    fn say(&mut self, message: &Message<'_>) {
        self.ensure_player(true);
        let Some(pack) = self.pack() else { return };
        let utterance: Utterance = match voice::plan(pack, message) {
            Ok(u) => u,
            Err(e) => {
                log(&format!("error: {e}"));
                return;
            }
        };
        let settings = voice::speech_settings(&self.listening);
        if let Some(player) = &self.player {
            if player.failed() {
                log("error: the audio output failed; reopening it");
                self.player = None;
                self.ensure_player(true);
            }
        }
        if let Some(player) = &self.player {
            if let Err(e) = player.play(utterance, settings) {
                log(&format!("error: cannot play: {e}"));
                self.player = None;
            }
        }
    }

    /// Logs, once per voice, that the current voice has no clips and live espeak-ng speaks
    /// instead (see [`Voices::fallback_note`]).
    fn log_fallback(&mut self) {
        let Some(pack) = self.pack() else { return };
        let Some(note) = self.voices.fallback_note(pack) else {
            return;
        };
        let key = format!("{}/{}", pack.tag(), pack.voice().name);
        if self.fallbacks_logged.insert(key) {
            log(&format!("warning: {note}"));
        }
    }

    /// Gives the player the synthesiser of the current language and voice.
    fn switch_synth(&mut self) {
        if let (Some(player), Some(pack)) = (&self.player, self.pack()) {
            match self.voices.synth(pack) {
                Ok(synth) => {
                    if let Err(e) = player.set_synth(synth) {
                        log(&format!("error: {e}"));
                    }
                }
                Err(e) => log(&format!("error: {e}")),
            }
        }
        self.log_fallback();
    }

    /// Switches the current language to its next voice (wrapping around), saves the choice
    /// and says the language's name in the new voice, so the user hears the change at once
    /// (the replay key then says the last code in it). A voice that cannot be used (its
    /// clips are broken) is skipped and logged. With no other voice, says so and changes
    /// nothing.
    fn next_voice(&mut self) {
        let tag = self.listening.language.clone();
        let (names, now) = match self.voices.voice_names(&tag) {
            Ok(found) => found,
            Err(e) => {
                log(&format!("error: {e}"));
                return;
            }
        };
        let here = names.iter().position(|n| *n == now).unwrap_or(0);
        let mut chosen = None;
        for k in 1..names.len() {
            let Some(name) = names.get((here + k) % names.len()) else {
                continue;
            };
            match self.voices.choose(&tag, name) {
                Ok(()) => {
                    chosen = Some(name.clone());
                    break;
                }
                Err(e) => log(&format!("error: {e}; skipping it")),
            }
        }
        let Some(name) = chosen else {
            log(&format!("voice {now} ({tag}): there is no other voice"));
            self.say(&Message::Prompt(Prompt::NoOtherVoice));
            return;
        };
        let result = UserSettings::load(self.state.path()).and_then(|mut user| {
            user.voice.insert(tag.clone(), name.clone());
            user.save(self.state.path())
        });
        if let Err(e) = result {
            log(&format!("error: cannot save the settings: {e}"));
        }
        log(&format!("voice {name} ({tag})"));
        self.switch_synth();
        self.say(&Message::Prompt(Prompt::LanguageName));
    }

    fn stop(&self) {
        if let Some(player) = &self.player {
            player.stop();
        }
    }

    fn save_listening(&self) {
        let result = UserSettings::load(self.state.path()).and_then(|mut user| {
            user.language = Some(self.listening.language.clone());
            user.volume = Some(i64::from(self.listening.volume));
            user.rate = Some(i64::from(self.listening.rate));
            user.save(self.state.path())
        });
        if let Err(e) = result {
            log(&format!("error: cannot save the settings: {e}"));
        }
    }

    /// Takes the next HOTP code ahead of time (its counter durably used up now), so that the
    /// key press does not wait for the disk. Costs one unspoken counter when `run` ends.
    fn prepare(&mut self) {
        if self.reserved.is_some() {
            return;
        }
        match self.state.reserve() {
            Ok(Some(reserved)) => {
                if let Basis::Counter(c) = reserved.basis() {
                    log(&format!(
                        "HOTP counter {} is ready for the next key press",
                        c.0
                    ));
                }
                self.reserved = Some(reserved);
            }
            Ok(None) => {}
            // Said when a key is pressed; no need to repeat it here.
            Err(_) => {}
        }
    }

    /// What the clock's synchronisation says about a code now; logs anything but trust.
    fn clock_verdict(&self) -> ClockVerdict {
        let progress = self.state.load().ok().map(|t| t.progress);
        let verdict = timesync::verdict(&self.clock, self.at, progress.as_ref());
        if let Some(line) = timesync::explain(&self.clock, verdict) {
            log(&line);
        }
        verdict
    }

    /// Says a code, after "the clock may be wrong" when the verdict is to warn.
    fn say_code(&mut self, code: &str, replay: bool, verdict: ClockVerdict) {
        if verdict == ClockVerdict::Warn {
            self.say(&Message::WarnedCode {
                warning: Prompt::ClockUnsynced,
                code,
                replay,
            });
        } else {
            self.say(&Message::Code { code, replay });
        }
    }

    fn speak_code(&mut self) {
        let verdict = self.clock_verdict();
        if verdict == ClockVerdict::Refuse {
            // The prepared HOTP code (if any) stays prepared; TOTP is what was refused.
            self.say(&Message::Prompt(Prompt::ClockUnsynced));
            return;
        }
        let claimed = match self.reserved.take().map(|r| self.state.claim(r)) {
            Some(Ok(Some(taken))) => Some(taken),
            Some(Ok(None)) => {
                log("the token changed since the code was prepared; taking a new one");
                None
            }
            Some(Err(e)) => {
                log(&format!("error: {e}"));
                None
            }
            None => None,
        };
        let result = match claimed {
            Some(taken) => Ok((taken, None)),
            None => self
                .state
                .take_code_record_later(now(self.at), build_floor()),
        };
        match result {
            Ok((taken, unrecorded)) => {
                match taken.basis {
                    Basis::Counter(c) => log(&format!("speaking the code of HOTP counter {}", c.0)),
                    Basis::Step { step, seconds_left } => log(&format!(
                        "speaking the code of time step {step} ({seconds_left} s left)"
                    )),
                }
                let code = Zeroizing::new(taken.code.as_str().to_owned());
                self.say_code(&code, false, verdict);
                self.last_code = Some(LastCode {
                    code,
                    basis: taken.basis,
                });
                // Speech has started; now the disk (off the key-to-sound path).
                if let Some(step) = unrecorded {
                    if let Err(e) = self.state.record_step(step) {
                        log(&format!("error: cannot record the time step: {e}"));
                    }
                }
                self.prepare();
            }
            Err(e) => {
                log(&format!("error: {e}"));
                self.say(&Message::Prompt(prompt_for(&e)));
            }
        }
    }

    fn replay(&mut self) {
        let still_valid = match &self.last_code {
            None => false,
            Some(LastCode {
                basis: Basis::Counter(_),
                ..
            }) => true,
            // A TOTP code is repeated only while its time step lasts; after that the new code
            // is what the user needs.
            Some(LastCode {
                basis: Basis::Step { step, .. },
                ..
            }) => match self.state.load().map(|t| t.progress) {
                Ok(Progress::Totp { period, t0, .. }) => {
                    let now = now(self.at).0;
                    now >= t0.0 && (now - t0.0) / period.seconds() == step.0
                }
                _ => false,
            },
        };
        match (&self.last_code, still_valid) {
            (Some(last), true) => {
                log("repeating the last code");
                let code = last.code.clone();
                let verdict = self.clock_verdict();
                self.say_code(&code, true, verdict);
            }
            _ => self.speak_code(),
        }
    }

    fn status(&mut self) {
        let token = match self.state.load() {
            Ok(token) => token,
            Err(e) => {
                log(&format!("error: {e}"));
                let e = TakeError::State(e);
                self.say(&Message::Prompt(prompt_for(&e)));
                return;
            }
        };
        let serial: String = token
            .label
            .serial
            .as_deref()
            .unwrap_or(&token.label.account)
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let serial_digits = &serial[serial.len().saturating_sub(4)..];
        let mut problems = Vec::new();
        if let Progress::Totp {
            period,
            t0,
            last_step,
        } = token.progress
        {
            let now = now(self.at);
            if now.0 < build_floor().0 || now.0 < t0.0 {
                problems.push(Prompt::ClockNotSet);
            } else if last_step.is_some_and(|l| l.0 > (now.0 - t0.0) / period.seconds()) {
                problems.push(Prompt::ClockBackwards);
            }
        }
        if battery_percent().is_some_and(|p| p <= LOW_BATTERY_PERCENT) {
            problems.push(Prompt::LowBattery);
        }
        log(&format!(
            "status: serial …{serial_digits}, {} problem(s)",
            problems.len()
        ));
        self.say(&Message::Status {
            serial_digits,
            problems: &problems,
        });
    }

    /// Moves the listening setting `name` (the field `setting` picks) one step up or down
    /// within `range`, saves it and says `prompt`. At the end of the range nothing changes:
    /// the limit tone is played instead.
    fn step_listening(
        &mut self,
        name: &str,
        setting: fn(&mut Listening) -> &mut i8,
        range: &RangeInclusive<i8>,
        up: bool,
        prompt: Prompt,
    ) {
        let step = if up { 1 } else { -1 };
        let value = setting(&mut self.listening);
        let old = *value;
        *value = (old + step).clamp(*range.start(), *range.end());
        let new = *value;
        if new == old {
            log(&format!("{name} {old} (at the end of the range)"));
            self.say(&Message::Limit);
            return;
        }
        self.save_listening();
        log(&format!("{name} {new}"));
        self.say(&Message::Prompt(prompt));
    }

    /// Does `action`; `false` means quit.
    fn act(&mut self, action: Action) -> bool {
        match action {
            Action::Speak => self.speak_code(),
            Action::Replay => self.replay(),
            Action::Stop => log("stopped"),
            Action::VolumeUp | Action::VolumeDown => {
                let up = action == Action::VolumeUp;
                let prompt = if up {
                    Prompt::VolumeUp
                } else {
                    Prompt::VolumeDown
                };
                self.step_listening("volume", |l| &mut l.volume, &VOLUME_RANGE, up, prompt);
            }
            Action::Faster | Action::Slower => {
                let up = action == Action::Faster;
                let prompt = if up { Prompt::Faster } else { Prompt::Slower };
                self.step_listening("rate", |l| &mut l.rate, &RATE_RANGE, up, prompt);
            }
            Action::NextLanguage => {
                self.listening.language = self.voices.next_language(&self.listening.language);
                self.save_listening();
                log(&format!("language {}", self.listening.language));
                self.switch_synth();
                self.say(&Message::Prompt(Prompt::LanguageName));
            }
            Action::NextVoice => self.next_voice(),
            Action::Status => self.status(),
            Action::Quit => return false,
        }
        true
    }
}

/// Runs the device loop until a quit key or the end of terminal input.
///
/// # Errors
/// Bad config or settings, voice packs that do not load.
pub fn run(
    state: &StateDir,
    config: &Config,
    voices_dir: Option<&Path>,
    options: &RunOptions,
) -> Result<(), Failure> {
    let user = UserSettings::load(state.path())?;
    let effective = Effective::new(config, &user, state.path())?;
    let voices = load_voices(state, config, &user, voices_dir)?;
    let mut listening = effective.listening.clone();
    if let Err(e) = voices.pack(&listening.language) {
        log(&format!(
            "error: {e}; using {}",
            voices.languages().join(", ")
        ));
        if let Some(first) = voices.languages().first() {
            listening.language.clone_from(first);
        }
    }
    let (events, rx) = mpsc::channel();
    let terminal = if options.terminal && rustix::termios::isatty(io::stdin()) {
        Some(RawTerminal::start(events.clone())?)
    } else {
        None
    };
    for path in &config.input.evdev {
        start_evdev(
            path.clone(),
            config.input.grab,
            config.chords.clone(),
            events.clone(),
        );
    }
    for button in &config.gpio {
        start_gpio(button.clone(), events.clone());
    }
    let only_terminal = config.input.evdev.is_empty() && config.gpio.is_empty();
    if terminal.is_none() && only_terminal {
        return Err(Failure {
            exit: Exit::Config,
            error: anyhow::anyhow!(
                "no input: standard input is not a terminal and the config lists no evdev \
                 device ([input] evdev) and no GPIO button ([[gpio]])"
            ),
        });
    }
    drop(events);
    let mut device = Device {
        state,
        voices,
        listening,
        player: None,
        last_attempt: None,
        last_code: None,
        reserved: None,
        audio_error: None,
        fallbacks_logged: BTreeSet::new(),
        at: options.at,
        output: config.audio.device.clone(),
        clock: config.clock.clone(),
    };
    device.ensure_player(true);
    device.prepare();
    if state.load().is_err() {
        log("warning: no usable token; the speak key will say so");
    }
    let speak_keys: Vec<String> = effective
        .keys
        .bindings()
        .get(&Action::Speak)
        .map(|k| k.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let voice = device
        .pack()
        .map_or_else(String::new, |p| format!(", voice {}", p.voice().name));
    log(&format!(
        "ready (language {}{voice}); speak: {}",
        device.listening.language,
        speak_keys.join(", ")
    ));
    loop {
        let event = match rx.recv_timeout(RETRY) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                device.ensure_player(false);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let action = match event {
            Event::Term(key) => effective.keys.action(key),
            Event::Ev(key) => effective.evdev_keys.action(key),
            Event::Action(action) => Some(action),
            Event::TermClosed => {
                if only_terminal {
                    break;
                }
                continue;
            }
        };
        // Any key stops the speech in progress, bound or not.
        device.stop();
        if let Some(action) = action {
            if !device.act(action) {
                break;
            }
        }
    }
    device.stop();
    drop(terminal);
    log("bye");
    Ok(())
}

/// The terminal in raw mode (single keys, no echo) until dropped.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn start(events: Sender<Event>) -> Result<Self, Failure> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd())
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's mode: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Output processing stays on so that log lines still end properly.
        raw.output_modes = saved.output_modes;
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        RAW.store(true, Ordering::Relaxed);
        thread::Builder::new()
            .name("terminal".into())
            .spawn(move || terminal_thread(&events))
            .map_err(|e| anyhow::anyhow!("cannot start the terminal thread: {e}"))?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
        RAW.store(false, Ordering::Relaxed);
    }
}

fn terminal_thread(events: &Sender<Event>) {
    let mut decoder = TermDecoder::default();
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = events.send(Event::TermClosed);
                return;
            }
            Ok(n) => {
                // Escape sequences arrive in one read, so a lone ESC at the end is the key.
                for key in decoder.feed(&buf[..n], true) {
                    if events.send(Event::Term(key)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads one evdev device, reopening it when it disappears (USB keypads come and go).
fn start_evdev(path: PathBuf, grab: bool, chords: Vec<Chord>, events: Sender<Event>) {
    let spawned = thread::Builder::new().name("evdev".into()).spawn(move || {
        loop {
            match read_evdev(&path, grab, &chords, &events) {
                Ok(()) => return,
                Err(e) => log(&format!(
                    "error: input device {}: {e}; trying again in {} s",
                    path.display(),
                    RETRY.as_secs()
                )),
            }
            thread::sleep(RETRY);
        }
    });
    if let Err(e) = spawned {
        log(&format!("error: cannot start the evdev thread: {e}"));
    }
}

/// Returns `Ok` only when the loop has ended (the receiver is gone).
fn read_evdev(path: &Path, grab: bool, chords: &[Chord], events: &Sender<Event>) -> io::Result<()> {
    let mut device = evdev::Device::open(path)?;
    if grab {
        device.grab()?;
    }
    log(&format!(
        "input device {} ({})",
        path.display(),
        device.name().unwrap_or("unnamed")
    ));
    let mut chords = ChordTracker::new(chords.to_vec());
    loop {
        for event in device.fetch_events()? {
            if let evdev::EventSummary::Key(_, code, value) = event.destructure() {
                if let Some(event) = chords.key(EvKey(code), value) {
                    if events.send(event).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Turns evdev key events into [`Event`]s: presses only (auto-repeat and releases do
/// nothing, so holding a key never repeats its action), and a configured chord's action when
/// its key is pressed while its hold key is down.
#[derive(Debug)]
struct ChordTracker {
    chords: Vec<Chord>,
    held: Vec<EvKey>,
}

impl ChordTracker {
    fn new(chords: Vec<Chord>) -> Self {
        ChordTracker {
            chords,
            held: Vec::new(),
        }
    }

    /// `value` is evdev's: 1 press, 0 release, 2 auto-repeat.
    fn key(&mut self, key: EvKey, value: i32) -> Option<Event> {
        match value {
            1 => {
                let chord = self
                    .chords
                    .iter()
                    .find(|c| c.key == key && self.held.contains(&c.hold));
                let event = match chord {
                    Some(chord) => Event::Action(chord.action),
                    None => Event::Ev(key),
                };
                self.held.push(key);
                Some(event)
            }
            0 => {
                self.held.retain(|k| *k != key);
                None
            }
            _ => None,
        }
    }
}

/// Watches one GPIO button.
fn start_gpio(button: Gpio, events: Sender<Event>) {
    let spawned = thread::Builder::new().name("gpio".into()).spawn(move || {
        loop {
            match read_gpio(&button, &events) {
                Ok(()) => return,
                Err(e) => log(&format!(
                    "error: GPIO {} line {}: {e}; trying again in {} s",
                    button.chip.display(),
                    button.line,
                    RETRY.as_secs()
                )),
            }
            thread::sleep(RETRY);
        }
    });
    if let Err(e) = spawned {
        log(&format!("error: cannot start the GPIO thread: {e}"));
    }
}

fn read_gpio(button: &Gpio, events: &Sender<Event>) -> Result<(), gpiocdev::Error> {
    use gpiocdev::line::{Bias, EdgeDetection};
    let mut builder = gpiocdev::Request::builder();
    builder
        .on_chip(&button.chip)
        .with_consumer("codereader")
        .with_line(button.line)
        .as_input();
    if button.active_low {
        builder.as_active_low().with_bias(Bias::PullUp);
    } else {
        builder.with_bias(Bias::PullDown);
    }
    let request = builder
        // With active_low, pressing is the rising edge of the *logical* value.
        .with_edge_detection(EdgeDetection::RisingEdge)
        .with_debounce_period(Duration::from_millis(u64::from(button.debounce_ms)))
        .request()?;
    log(&format!(
        "GPIO button {} line {} does {}",
        button.chip.display(),
        button.line,
        button.action
    ));
    loop {
        request.read_edge_event()?;
        if events.send(Event::Action(button.action)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> EvKey {
        name.parse().unwrap()
    }

    #[test]
    fn chords_fire_only_while_the_hold_key_is_down() {
        let mut t = ChordTracker::new(vec![Chord {
            hold: key("KEY_F1"),
            key: key("KEY_1"),
            action: Action::Status,
        }]);
        assert!(matches!(t.key(key("KEY_1"), 1), Some(Event::Ev(k)) if k == key("KEY_1")));
        assert!(t.key(key("KEY_1"), 0).is_none());
        assert!(matches!(t.key(key("KEY_F1"), 1), Some(Event::Ev(_))));
        assert!(
            t.key(key("KEY_F1"), 2).is_none(),
            "auto-repeat must not act"
        );
        assert!(matches!(
            t.key(key("KEY_1"), 1),
            Some(Event::Action(Action::Status))
        ));
        assert!(t.key(key("KEY_1"), 0).is_none());
        assert!(t.key(key("KEY_F1"), 0).is_none());
        assert!(matches!(t.key(key("KEY_1"), 1), Some(Event::Ev(_))));
    }
}
