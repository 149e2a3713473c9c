//! What each action of the running device does: speak the code (prepared ahead for HOTP,
//! promised when its time step is about to end), replay it, the spoken status, volume,
//! speed, language, voice and help; settings changes are saved at once.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use codereader_otp::UnixTime;
use codereader_speech::{CodeIntro, LivePlayer, Prompt};
use zeroize::Zeroizing;

use crate::config::{Listening, RATE_RANGE, UserSettings, VOLUME_RANGE};
use crate::keys::Action;
use crate::process::{build_floor, log, now};
use crate::timesync::{self, ClockVerdict};
use crate::token_file::{Basis, Progress, TakeError, current_step};
use crate::voice::{self, Message};

use super::{
    Device, LOW_BATTERY_PERCENT, LastCode, PendingCode, battery_percent, speakable_language,
    wait_for_next,
};

impl Device<'_> {
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
    pub(super) fn prepare(&mut self) {
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
    pub(super) fn give_pending(&mut self) -> bool {
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
    pub(super) fn act(&mut self, action: Action) -> bool {
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
