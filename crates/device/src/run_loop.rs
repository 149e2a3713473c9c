//! `codereader run`: the device loop. Keys arrive from the terminal, evdev devices and GPIO
//! lines (one thread each, all feeding one channel: the `input` module); the loop turns them
//! into speech.
//!
//! Any key first stops the speech in progress (EN 301 549 5.1.3.5), then does its action.
//! Codes are taken from the state (progress stored before speaking), feedback and errors are
//! spoken in the user's language, and settings changes are saved at once.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use codereader_otp::UnixTime;
use codereader_speech::{CodeIntro, LivePlayer, Prompt, Utterance, VoicePack};
use zeroize::Zeroizing;

use crate::braille::BrailleKey;
use crate::config::{
    ClockConfig, Config, Effective, Listening, RATE_RANGE, UserSettings, VOLUME_RANGE,
};
use crate::input::{Event, RETRY, RawTerminal, start_evdev, start_gpio, watch_for_keypads};
use crate::keys::Action;
use crate::outputs::{Output, Senses};
use crate::process::{Failure, build_floor, log, now};
use crate::speechd::SpeechdVoice;
use crate::timesync::{self, ClockVerdict};
use crate::token_file::{Basis, Progress, Reserved, StateDir, StateError, TakeError, current_step};
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

impl Device<'_> {
    fn pack(&self) -> Option<&VoicePack> {
        self.voices.pack_or_first(&self.listening.language)
    }

    /// Opens the sound card if it is not open (at most every [`RETRY`]).
    fn ensure_player(&mut self, force: bool) {
        if self.player.is_some() || !self.speech_on {
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
        self.show(message);
        if let Some(speechd) = &mut self.speechd {
            let Some(pack) = self.voices.pack_or_first(&self.listening.language) else {
                return;
            };
            let taken = match voice::plan(pack, message) {
                Ok(utterance) => speechd.say(&utterance, pack.tag(), &log),
                Err(e) => {
                    log(&format!("error: {e}"));
                    true
                }
            };
            if taken {
                return;
            }
            // Silence is the worst failure: without Speech Dispatcher, the device's own
            // voice speaks on the sound card (until Speech Dispatcher answers again).
            if !self.speech_on {
                log("warning: speechd: the device's own voice speaks on the sound card instead");
                self.speech_on = true;
            }
        }
        if !self.speech_on {
            return;
        }
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
                // Not an error line: the user hears nothing wrong (a stream resumed after
                // being idle can report a problem and work on when opened again). If opening
                // it again fails, that is logged as an error.
                log("audio: the output reported a problem; opening it again");
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

    /// Shows what `message` says on the braille display, as text in the user's language
    /// (codes are shown by [`Device::show_code`], with their validity; tones show nothing).
    fn show(&mut self, message: &Message<'_>) {
        let Some(pack) = self.pack() else { return };
        if let Some(mut text) = voice::text(pack, message) {
            // At start, when a helper is likely setting the device up, the screen and the
            // display show the commands too (the key's message is the sentence alone).
            if matches!(message, Message::Ready { no_token: true, .. }) {
                text = format!("{text} {}", enroll_help(self.state));
            }
            self.senses.show_text(&text);
        }
    }

    /// Shows `code` (valid for `seconds_left`, `None` for a counter) on the braille display
    /// and in large print.
    fn show_code(&mut self, code: &str, seconds_left: Option<u64>) {
        let (sizes, language) = self.pack().map_or_else(
            || (vec![code.len()], String::new()),
            |p| (p.grouping(code.len()), p.tag().to_owned()),
        );
        self.senses.show_code(code, &sizes, seconds_left, &language);
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

    /// Plays the start-up announcement (the ready tone, and the phrases configured or
    /// needed) once the sound card is open; then, when it is quiet, the announcement of
    /// damaged clips. `true` while something waits for silence.
    fn announce(&mut self) -> bool {
        // Once the sound card is open; without speech on the sound card (Speech Dispatcher,
        // braille only) at once.
        if self.player.is_some() || !self.speech_on {
            if let Some(greeting) = self.greeting.take() {
                self.say(&greeting);
            }
        }
        self.announce_trouble()
    }

    /// Says why no code can be given, and logs which prompt that is.
    fn say_failure(&mut self, error: &TakeError) {
        let prompt = voice::prompt_for(error);
        log(&format!("saying `{}`", prompt.key()));
        self.say(&Message::Prompt(prompt));
    }

    /// Says once, when nothing else is being said, that some of the voice's clips are
    /// damaged and another voice speaks for them (the details are in the log). `true` while
    /// such an announcement is still waiting for silence.
    fn announce_trouble(&mut self) -> bool {
        let trouble = self.voices.trouble().clone();
        if !trouble.unannounced() {
            return false;
        }
        match &self.player {
            Some(player) if !player.is_playing() => {
                // Quiet for a moment, not just between two sounds: right after a code the
                // notice would run into its last digit.
                let since = *self.quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() < QUIET_BEFORE_NOTICE {
                    return true;
                }
                self.quiet_since = None;
                trouble.announced();
                log("announcing that another voice speaks for damaged clips");
                self.say(&Message::Prompt(Prompt::ClipsDamaged));
                false
            }
            Some(_) => {
                self.quiet_since = None;
                true
            }
            None => false,
        }
    }

    fn stop(&mut self) {
        if let Some(player) = &self.player {
            player.stop();
        }
        if let Some(speechd) = &mut self.speechd {
            speechd.stop();
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

    fn speak_code(&mut self) {
        self.speak_code_after(CodeIntro::First, now(self.at));
    }

    /// Gives the promised code once its time step has begun and "this code is about to
    /// change" has been said to its end. `true` while one is pending.
    fn give_pending(&mut self) -> bool {
        let speaking = self.player.as_ref().is_some_and(LivePlayer::is_playing);
        match self.pending {
            Some(pending) if Instant::now() >= pending.due && !speaking => {
                self.pending = None;
                // A stated time (`--at`) moves on with the wait, as the clock does: a later
                // key must not find the clock behind the step just given.
                if self.at.is_some() {
                    self.at = Some(pending.at.0);
                }
                let at = now(self.at).max(pending.at);
                self.speak_code_after(pending.intro, at);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Speaks the current code with `intro`: [`CodeIntro::Expired`] says first that the last
    /// code has expired (a replay asked for after its time step had passed). While the clock
    /// is not synchronised since boot, "the clock may be wrong" comes first, or no code.
    fn speak_code_after(&mut self, intro: CodeIntro, time: UnixTime) {
        let verdict = self.clock_verdict();
        if verdict == ClockVerdict::Refuse {
            // The prepared HOTP code (if any) stays prepared; TOTP is what was refused.
            self.say(&Message::Prompt(Prompt::ClockUnsynced));
            return;
        }
        // Too little time left to type it: say so, and give the next step's code when it
        // begins (any key meanwhile cancels; the speak key asks again).
        if let Some(wait) = wait_for_next(self.state, self.wait_below, time, self.at.is_some()) {
            log(&format!(
                "saying `code_changing`: {wait} s left (under [code] wait_for_next_below); \
                 the next code comes when its time step begins"
            ));
            self.say(&Message::Prompt(Prompt::CodeChanging));
            self.pending = Some(PendingCode {
                due: Instant::now() + Duration::from_secs(wait),
                at: UnixTime(time.0.saturating_add(wait)),
                intro,
            });
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
            None => self.state.take_code_record_later(time, build_floor()),
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
                if intro == CodeIntro::Expired {
                    log("the last code has expired; saying so before the new one");
                }
                self.say(&voice::code_message(&code, intro, verdict));
                let left = match taken.basis {
                    Basis::Step { seconds_left, .. } => Some(seconds_left),
                    Basis::Counter(_) => None,
                };
                self.show_code(&code, left);
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
                self.say_failure(&e);
            }
        }
    }

    fn replay(&mut self) {
        // Whether the last code is still valid, and for how many seconds (None: a counter).
        let mut left = None;
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
                // The clock rule without its floor or record: only whether the step is the same.
                Ok(Progress::Totp { period, t0, .. }) => {
                    match current_step(period, t0, None, now(self.at), UnixTime(0)) {
                        Ok(current) => {
                            left = Some(current.seconds_left);
                            current.step == *step
                        }
                        Err(_) => false,
                    }
                }
                _ => false,
            },
        };
        match (&self.last_code, still_valid) {
            (Some(last), true) => {
                log("repeating the last code");
                let code = last.code.clone();
                let verdict = self.clock_verdict();
                self.say(&voice::code_message(&code, CodeIntro::Replay, verdict));
                self.show_code(&code, left);
            }
            (Some(_), false) => self.speak_code_after(CodeIntro::Expired, now(self.at)),
            (None, _) => self.speak_code(),
        }
    }

    fn status(&mut self) {
        let token = match self.state.load() {
            Ok(token) => token,
            Err(e) => {
                log(&format!("error: {e}"));
                self.say_failure(&TakeError::State(e));
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
        let mut clock_set = false;
        if let Progress::Totp {
            period,
            t0,
            last_step,
        } = token.progress
        {
            match current_step(period, t0, last_step, now(self.at), build_floor()) {
                Ok(_) => clock_set = true,
                Err(TakeError::ClockBackwards { .. }) => problems.push(Prompt::ClockBackwards),
                Err(_) => problems.push(Prompt::ClockNotSet),
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
            clock_set,
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
                // A language that cannot be spoken at all is skipped (and logged).
                let start = self.listening.language.clone();
                let mut next = self.voices.next_language(&start);
                while next != start
                    && speakable_language(&self.voices, &next).is_some_and(|l| l != next)
                {
                    next = self.voices.next_language(&next);
                }
                self.listening.language = next;
                self.save_listening();
                log(&format!("language {}", self.listening.language));
                self.switch_synth();
                self.say(&Message::Prompt(Prompt::LanguageName));
            }
            Action::NextVoice => self.next_voice(),
            Action::Status => self.status(),
            Action::Quit => {
                // A short falling tone, the start-up tone's mirror: the user hears that the
                // device is off, not that it stopped answering.
                self.say(&Message::Goodbye);
                if let Some(player) = &self.player {
                    player.wait_until_idle(Duration::from_secs(1));
                }
                return false;
            }
            Action::Help => self.help(),
        }
        true
    }

    /// Says the key map of the input the help key came from (the terminal's or the
    /// keypads'), most important action first, each with up to two keys.
    fn help(&mut self) {
        let names = |keys: Option<Vec<String>>| voice::keys_to_name(keys.unwrap_or_default());
        let term = self.keys.keys.bindings();
        let ev = self.keys.evdev_keys.bindings();
        let mut actions = Vec::new();
        let mut said = Vec::new();
        for action in Action::BY_IMPORTANCE {
            let keys = if self.from_keypad {
                names(
                    ev.get(&action)
                        .map(|k| k.iter().map(ToString::to_string).collect()),
                )
            } else {
                names(
                    term.get(&action)
                        .map(|k| k.iter().map(ToString::to_string).collect()),
                )
            };
            if keys.is_empty() {
                continue;
            }
            said.push(format!("{action} = {}", keys.join(" or ")));
            actions.push((action.help_prompt(), keys));
        }
        log(&format!("help: {}", said.join("; ")));
        self.say(&Message::Help { actions: &actions });
    }
}

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
