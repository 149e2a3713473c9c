//! `codereader run`: the device loop. Keys arrive from the terminal, evdev devices and GPIO
//! lines (one thread each, all feeding one channel: the `input` module); the loop turns them
//! into speech.
//!
//! Any key first stops the speech in progress (EN 301 549 5.1.3.5), then does its action.
//! Codes are taken from the state (progress stored before speaking), feedback and errors are
//! spoken in the user's language, and settings changes are saved at once.
//!
//! This file starts the device and runs the loop (settings, inputs, the event loop); what
//! each action does is in `actions.rs`, how the device speaks and shows in `speaking.rs`.

mod actions;
mod speaking;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use codereader_otp::UnixTime;
use codereader_speech::{CodeIntro, LivePlayer, Prompt};
use zeroize::Zeroizing;

use crate::braille::BrailleKey;
use crate::config::{ClockConfig, Config, Effective, Listening, UserSettings};
use crate::input::{Event, RETRY, RawTerminal, start_evdev, start_gpio, watch_for_keypads};
use crate::keys::Action;
use crate::outputs::{Output, Senses};
use crate::process::{Failure, build_floor, log};
use crate::speechd::SpeechdVoice;
use crate::token_file::{Basis, Progress, Reserved, StateDir, StateError, current_step};
use crate::voice::{self, Message, Voices};

/// With no input configured, how long `run` looks for a keypad before it greets: one plugged
/// in at power-on may appear in /dev/input a moment after the service starts, and the
/// greeting says "No keypad is connected" only when there is none.
const FIRST_LOOK: Duration = Duration::from_secs(2);

/// Battery level at and below which `status` warns.
const LOW_BATTERY_PERCENT: u8 = 20;

/// `run` options from the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Fixed time instead of the clock.
    pub at: Option<u64>,
    /// Read keys from the terminal.
    pub terminal: bool,
    /// Mistakes of the config set aside (its defaults used for them), to log and announce.
    pub mistakes: Vec<String>,
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

/// How a helper sets up the token in `state`: the exact commands (for the log, `status`
/// and large print), one per way the token's data can arrive.
pub fn enroll_help(state: &StateDir) -> String {
    let me = format!("codereader --state {}", state.path().display());
    format!(
        "no token is set up; a helper can enrol one: `{me} enroll --uri -` (paste the \
         otpauth:// URI, then Ctrl-D); from a QR code image: `zbarimg -q --raw QR.png | {me} \
         enroll --uri -`; from a PSKC file: `{me} enroll --pskc FILE --serial SERIAL \
         [--pskc-key HEX]`; as the user the device runs as (the system service: `sudo -u \
         codereader ...`)"
    )
}

/// How long to wait for the next time step before giving a code at `now`: the seconds
/// left in the current step, when there are fewer than `threshold` (`[code]
/// wait_for_next_below`) and the token is time-based and would give a code now. `stated`:
/// `now` is the caller's (`--at`), so the clock's checks do not apply.
pub fn wait_for_next(state: &StateDir, threshold: u64, now: UnixTime, stated: bool) -> Option<u64> {
    if threshold == 0 {
        return None;
    }
    let Progress::Totp {
        period,
        t0,
        last_step,
    } = state.load().ok()?.progress
    else {
        return None;
    };
    let (last, floor) = if stated {
        (None, UnixTime(0))
    } else {
        (last_step, build_floor())
    };
    let current = current_step(period, t0, last, now, floor).ok()?;
    (current.seconds_left < threshold).then_some(current.seconds_left)
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
    /// Braille display and large print.
    senses: Senses,
    /// Whether the sound card speaks (`outputs` has `speech`).
    speech_on: bool,
    /// Speech Dispatcher, when it is the voice (`outputs` has `speechd`).
    speechd: Option<SpeechdVoice>,
    /// The start-up announcement, until it has been played.
    greeting: Option<Message<'static>>,
    /// The key maps, for the help.
    keys: Effective,
    /// Whether the last key came from a keypad (evdev, GPIO) rather than the terminal.
    from_keypad: bool,
    /// The config's `audio.device` (`None`: ALSA's default).
    output: Option<String>,
    /// The config's `[clock]`: what to do while the clock is not synchronised since boot.
    clock: ClockConfig,
    /// Since when the sound card has been quiet, while a notice waits for quiet.
    quiet_since: Option<Instant>,
    /// The config's `[code] wait_for_next_below`.
    wait_below: u64,
    /// A code promised ("this code is about to change"), to give when its step begins.
    pending: Option<PendingCode>,
}

/// A code to give when the next time step begins.
#[derive(Debug, Clone, Copy)]
struct PendingCode {
    /// When the step begins.
    due: Instant,
    /// The time to take the code at (the clock's, or `--at`'s plus the wait).
    at: UnixTime,
    /// What to say before it.
    intro: CodeIntro,
}

/// How long the device must have been quiet before the damaged-clips notice is said.
const QUIET_BEFORE_NOTICE: Duration = Duration::from_millis(1500);

/// How soon a pending announcement is tried again while speech is playing.
const ANNOUNCE_POLL: Duration = Duration::from_millis(200);

/// The language to speak for `tag`: `tag` itself if it can be spoken, else the first that
/// can (logged); `None` if none can.
fn speakable_language(voices: &Voices, tag: &str) -> Option<String> {
    let pack = voices.pack(tag).ok()?;
    let Err(why) = voices.check_speakable(pack) else {
        return Some(tag.to_owned());
    };
    let other = voices.speakable_instead(tag);
    match &other {
        Some(other) => log(&format!(
            "error: language `{tag}` cannot be spoken ({why}); speaking `{other}` instead"
        )),
        None => log(&format!(
            "error: language `{tag}` cannot be spoken ({why}), and no other language can"
        )),
    }
    other
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
    let settled = Settled::load(state, config, voices_dir, options)?;
    let (events, rx) = mpsc::channel();
    let Inputs {
        terminal,
        senses,
        only_terminal,
        no_input,
    } = Inputs::start(config, options, events)?;
    let no_token = matches!(state.load(), Err(StateError::NoToken { .. }));
    let mut device = Device::new(state, config, options, settled, senses, no_input, no_token);
    device.ensure_player(true);
    device.prepare();
    device.log_ready(no_token);
    loop {
        let wait = device.next_wait();
        let event = match rx.recv_timeout(device.senses.next_tick(wait)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                device.ensure_player(false);
                device.senses.tick();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if !device.on_event(event, only_terminal) {
            break;
        }
    }
    device.stop();
    drop(terminal);
    log("bye");
    Ok(())
}

/// What `run` works with from the config, the user's settings and the voice packs.
struct Settled {
    effective: Effective,
    voices: Voices,
    listening: Listening,
    /// Mistakes of the config, the settings and the packs, each set aside for its default.
    mistakes: Vec<String>,
    /// Whether the chosen language cannot be spoken (another one is spoken instead).
    language_unusable: bool,
}

impl Settled {
    /// Loads them leniently. A mistake in the config or the settings never silences the
    /// device: the defaults are used for what is wrong, the log says which key and how to
    /// fix it, and the user hears once that a helper can fix the settings.
    fn load(
        state: &StateDir,
        config: &Config,
        voices_dir: Option<&Path>,
        options: &RunOptions,
    ) -> Result<Self, Failure> {
        let mut mistakes = options.mistakes.clone();
        let (user, more) = UserSettings::load_lenient(state.path());
        mistakes.extend(more.iter().map(ToString::to_string));
        let (effective, more) = Effective::lenient(config, &user, state.path());
        mistakes.extend(more.iter().map(ToString::to_string));
        let (voices, more) = voice::load_voices_lenient(state, config, &user, voices_dir)?;
        mistakes.extend(more);
        let mut listening = effective.listening.clone();
        mistakes.extend(voice::settle_language(
            &voices,
            config,
            &user,
            &mut listening,
        ));
        crate::config::log_mistakes(&mistakes);
        let language_unusable = match speakable_language(&voices, &listening.language) {
            Some(other) if other != listening.language => {
                listening.language = other;
                true
            }
            _ => false,
        };
        Ok(Settled {
            effective,
            voices,
            listening,
            mistakes,
            language_unusable,
        })
    }
}

/// The inputs `run` listens to, started, each sending into one channel.
struct Inputs {
    /// The terminal in raw mode, while it is read.
    terminal: Option<RawTerminal>,
    /// Braille display and large print (the display's keys are input too).
    senses: Senses,
    /// Whether the terminal is the only input configured (its end ends `run`).
    only_terminal: bool,
    /// Whether nothing is there to listen to (the greeting says so).
    no_input: bool,
}

impl Inputs {
    /// Starts the terminal (with `--terminal`), the configured evdev devices and GPIO
    /// buttons, the braille display, and, with no keypad named, the watch for any keypad.
    fn start(
        config: &Config,
        options: &RunOptions,
        events: Sender<Event>,
    ) -> Result<Self, Failure> {
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
        let braille_keys = events.clone();
        let senses = Senses::new(
            &config.outputs,
            terminal.is_some(),
            Some(Box::new(move |key| {
                braille_keys.send(Event::Braille(key)).is_ok()
            })),
            Box::new(log),
        );
        // A braille display's keys are input too (a deafblind user's device may have no other).
        let only_terminal = config.input.evdev.is_empty()
            && config.gpio.is_empty()
            && !config.outputs.has(Output::Braille);
        // Nothing configured to listen to: take any keypad or keyboard that is plugged in, and
        // say that none is connected only when none is.
        let mut no_input = false;
        if terminal.is_none() && only_terminal {
            log(&format!(
                "no input: standard input is not a terminal and the config lists no evdev device \
                 ([input] evdev), no GPIO button ([[gpio]]) and no braille output; listening for a \
                 keypad or keyboard to appear in /dev/input (checked every {} s)",
                RETRY.as_secs()
            ));
        }
        // No keypad named and no terminal: any keypad that is plugged in is taken, also beside
        // GPIO buttons or a braille display (an appliance's button stays while its USB keypad
        // comes and goes). That none is connected is said at start only when nothing else was
        // configured to listen to and none is there.
        if terminal.is_none() && config.input.evdev.is_empty() {
            // Waiting a moment for a keypad at start is worth it only when nothing else listens.
            let first_look = if only_terminal {
                FIRST_LOOK
            } else {
                Duration::ZERO
            };
            let found = watch_for_keypads(
                config.input.grab,
                config.chords.clone(),
                events.clone(),
                first_look,
            );
            if found == 0 && only_terminal {
                log("no keypad or keyboard in /dev/input yet");
            }
            no_input = found == 0 && only_terminal;
        }
        drop(events);
        Ok(Inputs {
            terminal,
            senses,
            only_terminal,
            no_input,
        })
    }
}

impl<'a> Device<'a> {
    /// The device as `run` starts it: nothing said yet, the greeting (which says when there
    /// is no input or no token) waiting for the sound card.
    fn new(
        state: &'a StateDir,
        config: &Config,
        options: &RunOptions,
        settled: Settled,
        senses: Senses,
        no_input: bool,
        no_token: bool,
    ) -> Self {
        Device {
            state,
            voices: settled.voices,
            listening: settled.listening,
            player: None,
            last_attempt: None,
            last_code: None,
            reserved: None,
            audio_error: None,
            fallbacks_logged: BTreeSet::new(),
            at: options.at,
            senses,
            speech_on: config.outputs.has(Output::Speech),
            speechd: config
                .outputs
                .has(Output::Speechd)
                .then(|| SpeechdVoice::new(config.outputs.speechd_address.clone())),
            greeting: Some(Message::Ready {
                language_unusable: settled.language_unusable,
                settings_mistake: !settled.mistakes.is_empty(),
                no_token,
                phrase: config.say_ready,
                no_input,
            }),
            keys: settled.effective,
            from_keypad: false,
            output: config.audio.device.clone(),
            clock: config.clock.clone(),
            quiet_since: None,
            wait_below: config.code.wait_for_next_below,
            pending: None,
        }
    }
}

impl Device<'_> {
    /// Logs how the device starts: what is wrong with the token, and "ready" with the
    /// language, voice and speak keys.
    fn log_ready(&self, no_token: bool) {
        if no_token {
            log(&format!(
                "saying `no_token_set_up`: {}",
                enroll_help(self.state)
            ));
        } else if self.state.load().is_err() {
            log("warning: no usable token; the speak key will say so");
        }
        let speak_keys: Vec<String> = self
            .keys
            .keys
            .bindings()
            .get(&Action::Speak)
            .map(|k| k.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let voice = self
            .pack()
            .map_or_else(String::new, |p| format!(", voice {}", p.voice().name));
        log(&format!(
            "ready (language {}{voice}); speak: {}",
            self.listening.language,
            speak_keys.join(", ")
        ));
    }

    /// Says the greeting or a waiting notice, or gives a promised code, when due; returns
    /// how long the loop may wait for a key before it looks again.
    fn next_wait(&mut self) -> Duration {
        let mut wait = if self.announce() {
            ANNOUNCE_POLL
        } else {
            RETRY
        };
        if self.give_pending() {
            if let Some(pending) = self.pending {
                let due = pending.due.saturating_duration_since(Instant::now());
                wait = wait.min(due.max(ANNOUNCE_POLL.min(wait)));
            }
        }
        wait
    }

    /// Does what `event` asks; `false` means `run` ends (the quit key, or the end of the
    /// terminal when it is the only input).
    fn on_event(&mut self, event: Event, only_terminal: bool) -> bool {
        self.from_keypad = !matches!(event, Event::Term(_));
        // Panning keys read on through a message longer than the display.
        if let Event::Braille(key @ (BrailleKey::PanLeft | BrailleKey::PanRight)) = &event {
            if self.senses.pan(*key == BrailleKey::PanRight) {
                return true;
            }
        }
        let action = match event {
            Event::Term(key) => self.keys.keys.action(key),
            Event::Ev(key) => self.keys.evdev_keys.action(key),
            Event::Action(action) => Some(action),
            Event::TermClosed => return !only_terminal,
            Event::Braille(key) => braille_action(key, &self.keys),
            Event::KeypadGone => {
                log("the keypad was disconnected; waiting for one");
                self.stop();
                self.say(&Message::Prompt(Prompt::NoInput));
                return true;
            }
        };
        // Any key stops the speech in progress, bound or not, and takes the shown message
        // off the braille display.
        self.stop();
        self.senses.key_pressed();
        if self.pending.take().is_some() {
            log("the promised code is cancelled by a key");
        }
        match action {
            Some(action) => self.act(action),
            None => {
                // Which key is not logged: it could be a digit of a code being typed.
                log("a key with no action: a short tone");
                self.say(&Message::UnknownKey);
                true
            }
        }
    }
}

/// What a key of the braille display does: a routing key (above any cell) or panning right
/// speaks the code, panning left replays it; keys typed on its braille keyboard mean what the
/// same terminal key means (`[keys]`).
fn braille_action(key: BrailleKey, effective: &Effective) -> Option<Action> {
    match key {
        BrailleKey::Route(_) | BrailleKey::PanRight => Some(Action::Speak),
        BrailleKey::PanLeft => Some(Action::Replay),
        BrailleKey::Typed(key) => effective.keys.action(key),
        // Stops speech (as any key does) and nothing else.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TermKey;

    #[test]
    fn braille_routing_and_panning_keys_speak_and_replay() {
        let config = Config::defaults();
        let dir = tempfile::tempdir().unwrap();
        let effective = Effective::new(&config, &UserSettings::default(), dir.path()).unwrap();
        let act = |key| braille_action(key, &effective);
        assert_eq!(act(BrailleKey::Route(0)), Some(Action::Speak));
        assert_eq!(act(BrailleKey::Route(39)), Some(Action::Speak));
        assert_eq!(act(BrailleKey::PanRight), Some(Action::Speak));
        assert_eq!(act(BrailleKey::PanLeft), Some(Action::Replay));
        assert_eq!(
            act(BrailleKey::Typed(TermKey::Char('r'))),
            Some(Action::Replay)
        );
        assert_eq!(
            act(BrailleKey::Typed(TermKey::Char('q'))),
            Some(Action::Quit)
        );
        assert_eq!(act(BrailleKey::Other), None);
    }
}
