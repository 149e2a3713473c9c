//! How the running device speaks and shows: the sound card opened (and opened again after
//! a failure, at most every `RETRY`), Speech Dispatcher with the sound card as its fallback,
//! the braille display and large print, and the greeting and notices that wait for quiet.

use std::time::Instant;

use codereader_speech::{LivePlayer, Prompt, Utterance, VoicePack};

use crate::input::RETRY;
use crate::process::log;
use crate::token_file::TakeError;
use crate::voice::{self, Message};

use super::{Device, QUIET_BEFORE_NOTICE, enroll_help};

impl Device<'_> {
    pub(super) fn pack(&self) -> Option<&VoicePack> {
        self.voices.pack_or_first(&self.listening.language)
    }

    /// Opens the sound card if it is not open (at most every [`RETRY`]).
    pub(super) fn ensure_player(&mut self, force: bool) {
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

    pub(super) fn say(&mut self, message: &Message<'_>) {
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
    pub(super) fn show_code(&mut self, code: &str, seconds_left: Option<u64>) {
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
    pub(super) fn switch_synth(&mut self) {
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

    /// Plays the start-up announcement (the ready tone, and the phrases configured or
    /// needed) once the sound card is open; then, when it is quiet, the announcement of
    /// damaged clips. `true` while something waits for silence.
    pub(super) fn announce(&mut self) -> bool {
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
    pub(super) fn say_failure(&mut self, error: &TakeError) {
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

    pub(super) fn stop(&mut self) {
        if let Some(player) = &self.player {
            player.stop();
        }
        if let Some(speechd) = &mut self.speechd {
            speechd.stop();
        }
    }
}
