//! Every sense: which outputs give the code (speech on the sound card, Speech Dispatcher,
//! a braille display, large print), and [`Senses`], the non-audio ones the device and
//! `speak` drive through one small interface.
//!
//! Each output fails alone: a braille display that is missing or goes away is logged once
//! (again only when the reason changes) and looked for again every few seconds, while speech
//! goes on; a terminal that cannot be written to only loses the large print, and one that
//! stops reading (a stalled SSH connection, a paused terminal) never stops the device: the
//! large print is written on a thread of its own, only its newest picture waiting.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::braille::{BrailleKey, BrailleSettings, Display};
use crate::largeprint;

/// How often a missing braille display is looked for again.
const RETRY: Duration = Duration::from_secs(2);

/// One way of giving the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    /// Spoken on the sound card (the voice packs, espeak-ng or clips).
    Speech,
    /// Spoken by Speech Dispatcher, in the desktop's voice (earcons still on the sound card).
    Speechd,
    /// Written to a braille display through BRLTTY.
    Braille,
    /// Block digits on the terminal `run` reads keys from (on by default where `run`'s
    /// standard output is a terminal).
    Large,
}

impl Output {
    /// Its name in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Output::Speech => "speech",
            Output::Speechd => "speechd",
            Output::Braille => "braille",
            Output::Large => "large",
        }
    }
}

/// An output name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown output `{0}`; use speech, speechd, braille or large")]
pub struct UnknownOutput(String);

impl FromStr for Output {
    type Err = UnknownOutput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "speech" => Ok(Output::Speech),
            "speechd" => Ok(Output::Speechd),
            "braille" => Ok(Output::Braille),
            "large" => Ok(Output::Large),
            other => Err(UnknownOutput(other.to_owned())),
        }
    }
}

/// Checks a list of outputs: known names, none twice, at least one, and one voice at most
/// (`speech` and `speechd` together would say the code twice at once).
///
/// # Errors
/// The message to show, naming the bad entry.
pub fn parse_outputs<S: AsRef<str>>(names: &[S]) -> Result<Vec<Output>, String> {
    let mut outputs = Vec::new();
    for name in names {
        for part in name.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
            let output: Output = part.parse().map_err(|e: UnknownOutput| e.to_string())?;
            if outputs.contains(&output) {
                return Err(format!("`{}` is listed twice", output.name()));
            }
            outputs.push(output);
        }
    }
    if outputs.is_empty() {
        return Err("no output: list at least one of speech, speechd, braille, large".into());
    }
    if outputs.contains(&Output::Speech) && outputs.contains(&Output::Speechd) {
        return Err(
            "`speech` and `speechd` are both voices; choose one (the code would be said twice)"
                .into(),
        );
    }
    Ok(outputs)
}

/// `[braille]` in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrailleConfig {
    /// BrlAPI host: `:N` (local socket), `HOST:N` (TCP port 4101 + N).
    pub host: Option<String>,
    /// Key file, when BRLTTY asks for key authorization.
    pub key_file: Option<PathBuf>,
    /// Virtual terminal number our text belongs to.
    pub tty: Option<u32>,
}

/// `[speechd]` in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechdConfig {
    /// `unix_socket:PATH` or `inet_socket:HOST:PORT`.
    pub address: Option<String>,
}

/// The outputs part of the config, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputsConfig {
    /// The outputs, in the order given.
    pub list: Vec<Output>,
    /// How to reach BRLTTY.
    pub braille: BrailleSettings,
    /// Speech Dispatcher's address, if set (else `$SPEECHD_ADDRESS` or the default socket).
    pub speechd_address: Option<String>,
}

impl Default for OutputsConfig {
    /// Speech, and large print where `run` has a terminal: a partially sighted user at their
    /// own screen reads the code as it is spoken. A config whose `outputs` leave `large` out
    /// turns it off (others can see the screen).
    fn default() -> Self {
        OutputsConfig {
            list: vec![Output::Speech, Output::Large],
            braille: BrailleSettings::default(),
            speechd_address: None,
        }
    }
}

/// A value of the outputs' part of the config file that cannot be used: the config module
/// reports it with the file's path (this module does not know the config's error type, so
/// the two do not import each other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The key, e.g. `braille.host`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl OutputsConfig {
    /// From the config file's `outputs`, `[braille]` and `[speechd]`.
    ///
    /// # Errors
    /// [`BadValue`] naming the key.
    pub fn from_raw(
        outputs: Option<&[String]>,
        braille: Option<&BrailleConfig>,
        speechd: Option<&SpeechdConfig>,
    ) -> Result<Self, BadValue> {
        let bad = |key: &'static str, message: String| BadValue { key, message };
        let mut config = OutputsConfig::default();
        if let Some(names) = outputs {
            config.list = parse_outputs(names).map_err(|m| bad("outputs", m))?;
        }
        if let Some(b) = braille {
            if let Some(host) = &b.host {
                crate::braille::address(host).map_err(|e| bad("braille.host", e.to_string()))?;
                config.braille.host.clone_from(host);
            }
            if let Some(file) = &b.key_file {
                config.braille.key_file.clone_from(file);
            }
            if let Some(tty) = b.tty {
                config.braille.tty = tty;
            }
        }
        if let Some(address) = speechd.and_then(|s| s.address.as_ref()) {
            crate::speechd::SpeechdAddress::parse(address)
                .map_err(|e| bad("speechd.address", e.to_string()))?;
            config.speechd_address = Some(address.clone());
        }
        Ok(config)
    }

    /// Whether `output` is on.
    pub fn has(&self, output: Output) -> bool {
        self.list.contains(&output)
    }
}

/// Receives the keys pressed on the braille display (on the key thread); `false` means the
/// receiver is gone and the thread should end.
pub type KeySink = Box<dyn Fn(BrailleKey) -> bool + Send + Sync>;

/// The braille display, connected or looked for.
struct Braille {
    settings: BrailleSettings,
    display: Option<Display>,
    last_attempt: Option<Instant>,
    /// The last failure logged, so that retries do not repeat it.
    last_error: Option<String>,
    keys: Option<std::sync::Arc<KeySink>>,
    /// Set by the key thread when the connection ends (BRLTTY stopped or restarted): the
    /// display is then looked for again, so that its keys work again without a word
    /// written to it first (for a deafblind user they may be the only input).
    lost: Arc<Mutex<Option<String>>>,
    /// What the display shows, to show again after a reconnection.
    text: String,
    /// The first character of `text` on the display (panned across a long message).
    offset: usize,
}

impl Braille {
    fn ensure(&mut self, log: &dyn Fn(&str)) {
        let lost = self
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(why), Some(_)) = (lost, &self.display) {
            self.display = None;
            self.last_attempt = None;
            self.failed(&format!("the connection to BRLTTY ended ({why})"), log);
        }
        if self.display.is_some() || self.last_attempt.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        self.last_attempt = Some(Instant::now());
        match Display::connect(&self.settings) {
            Ok((display, mut reader)) => {
                log(&format!(
                    "braille: display of {} cells at {}",
                    display.cells(),
                    display.address()
                ));
                self.last_error = None;
                self.display = Some(display);
                // A flag of this connection's own: a reader of an earlier one that ends
                // late must not end this one.
                self.lost = Arc::new(Mutex::new(None));
                if let Some(keys) = self.keys.clone() {
                    let lost = Arc::clone(&self.lost);
                    let spawned =
                        thread::Builder::new()
                            .name("braille-keys".into())
                            .spawn(move || {
                                let error = loop {
                                    match reader.next_keys() {
                                        Ok(pressed) => {
                                            for key in pressed {
                                                if !keys(key) {
                                                    return;
                                                }
                                            }
                                        }
                                        Err(e) => break e,
                                    }
                                };
                                *lost.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(error.to_string());
                            });
                    if let Err(e) = spawned {
                        log(&format!("error: braille: cannot read its keys: {e}"));
                    }
                }
                let text = std::mem::take(&mut self.text);
                self.show(&text, log);
            }
            Err(e) => self.failed(&e.to_string(), log),
        }
    }

    /// Whether the connected display's connection has ended (seen by its key thread).
    fn gone(&self) -> bool {
        self.display.is_some()
            && self
                .lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    fn failed(&mut self, message: &str, log: &dyn Fn(&str)) {
        if self.last_error.as_deref() != Some(message) {
            log(&format!(
                "warning: braille: {message}; the other outputs go on, and the display is \
                 looked for every {} s",
                RETRY.as_secs()
            ));
            self.last_error = Some(message.to_owned());
        }
    }

    fn show(&mut self, text: &str, log: &dyn Fn(&str)) {
        text.clone_into(&mut self.text);
        self.offset = 0;
        self.write(log);
    }

    /// Moves a message longer than the display one window right or left; `false` when the
    /// message fits (the key then keeps its own meaning).
    fn pan(&mut self, right: bool, log: &dyn Fn(&str)) -> bool {
        let Some(cells) = self.display.as_ref().map(Display::cells) else {
            return false;
        };
        let len = self.text.chars().count();
        if len <= cells {
            return false;
        }
        self.offset = if right {
            if self.offset + cells < len {
                self.offset + cells
            } else {
                self.offset
            }
        } else {
            self.offset.saturating_sub(cells)
        };
        self.write(log);
        true
    }

    fn write(&mut self, log: &dyn Fn(&str)) {
        self.ensure(log);
        let Some(display) = &mut self.display else {
            return;
        };
        let window: String = self.text.chars().skip(self.offset).collect();
        if let Err(e) = display.show(&window) {
            self.display = None;
            self.last_attempt = None;
            self.failed(&e.to_string(), log);
            // Once more, at once: BRLTTY may have restarted.
            self.ensure(log);
        }
    }
}

/// What is shown now, until when.
#[derive(Debug, Clone)]
struct Shown {
    code: String,
    sizes: Vec<usize>,
    /// The language of the validity line.
    language: String,
    /// `None`: a counter-based code, valid until used.
    expires: Option<Instant>,
    /// The validity last drawn, to redraw only when it changes.
    drawn_seconds: Option<u64>,
}

/// Standard output, written on a thread of its own: the main loop hands over whole
/// pictures and never waits for the terminal; a picture not yet written is replaced by the
/// next one (each is a whole screen).
struct Screen {
    shared: Arc<(Mutex<ScreenState>, Condvar)>,
}

#[derive(Default)]
struct ScreenState {
    /// The picture to write next.
    pending: Option<String>,
    /// A picture is being written.
    writing: bool,
    /// Writing failed; nothing more is written.
    failed: bool,
}

impl Screen {
    fn start() -> io::Result<Screen> {
        let shared = Arc::new((Mutex::new(ScreenState::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        thread::Builder::new()
            .name("large-print".into())
            .spawn(move || {
                let (lock, changed) = &*theirs;
                let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let Some(text) = state.pending.take() else {
                        state = changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                        continue;
                    };
                    state.writing = true;
                    drop(state);
                    let mut out = io::stdout().lock();
                    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                    drop(out);
                    state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    state.writing = false;
                    state.failed = written.is_err();
                    changed.notify_all();
                    if state.failed {
                        return;
                    }
                }
            })?;
        Ok(Screen { shared })
    }

    /// Hands `text` over to be written; `false` if writing has failed.
    fn write(&self, text: String) -> bool {
        let (lock, changed) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending = Some(text);
        changed.notify_all();
        !state.failed
    }

    /// Waits up to `limit` until everything handed over is written.
    fn flush(&self, limit: Duration) {
        let (lock, changed) = &*self.shared;
        let state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = changed.wait_timeout_while(state, limit, |s| {
            !s.failed && (s.pending.is_some() || s.writing)
        });
    }
}

/// The non-audio outputs: braille display and large print.
pub struct Senses {
    braille: Option<Braille>,
    /// Large print's terminal, while it works.
    large: Option<Screen>,
    shown: Option<Shown>,
    log: Box<dyn Fn(&str)>,
}

impl std::fmt::Debug for Senses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senses")
            .field("braille", &self.braille.is_some())
            .field("large", &self.large.is_some())
            .finish_non_exhaustive()
    }
}

impl Senses {
    /// The outputs of `config` that are not audio. Large print is for a caller reading keys
    /// from a terminal (`terminal`, i.e. `run`), and needs standard output to be one too
    /// (logged when it is not; other callers skip it without a word). Braille keys go to
    /// `keys`, if given. `log` writes one line to the journal.
    pub fn new(
        config: &OutputsConfig,
        terminal: bool,
        keys: Option<KeySink>,
        log: Box<dyn Fn(&str)>,
    ) -> Self {
        let braille = config.has(Output::Braille).then(|| Braille {
            settings: config.braille.clone(),
            display: None,
            last_attempt: None,
            last_error: None,
            keys: keys.map(std::sync::Arc::new),
            lost: Arc::new(Mutex::new(None)),
            text: String::new(),
            offset: 0,
        });
        let wanted = config.has(Output::Large) && terminal;
        let large = if wanted && io::stdout().is_terminal() {
            Screen::start()
                .map_err(|e| {
                    log(&format!(
                        "warning: large print: cannot start: {e}; not shown"
                    ))
                })
                .ok()
        } else {
            if wanted {
                log("warning: large print needs a terminal on standard output; not shown");
            }
            None
        };
        let mut senses = Senses {
            braille,
            large,
            shown: None,
            log,
        };
        senses.connect();
        senses
    }

    /// Looks for the braille display now (it is also looked for at every [`Senses::tick`]).
    pub fn connect(&mut self) {
        if let Some(braille) = &mut self.braille {
            braille.ensure(&self.log);
        }
    }

    /// Whether a braille display is connected.
    pub fn braille_connected(&self) -> bool {
        self.braille.as_ref().is_some_and(|b| b.display.is_some())
    }

    /// Shows `code` grouped by `sizes`; `seconds_left` is its remaining validity (`None` for
    /// a counter-based code). Shown until it expires or [`Senses::key_pressed`].
    /// Large print says so in `language` (a voice pack's tag).
    pub fn show_code(
        &mut self,
        code: &str,
        sizes: &[usize],
        seconds_left: Option<u64>,
        language: &str,
    ) {
        let line = largeprint::grouped(code, sizes);
        if let Some(braille) = &mut self.braille {
            braille.show(&line, &self.log);
        }
        self.shown = Some(Shown {
            code: code.to_owned(),
            sizes: sizes.to_vec(),
            language: language.to_owned(),
            expires: seconds_left.map(|s| Instant::now() + Duration::from_secs(s)),
            drawn_seconds: None,
        });
        self.draw();
    }

    /// Shows a message (what the device says: errors, status, help) in braille and in large
    /// print; it replaces a code shown (which is then no longer counted down: after an
    /// error it may not be valid).
    pub fn show_text(&mut self, text: &str) {
        if let Some(braille) = &mut self.braille {
            braille.show(text, &self.log);
        }
        self.shown = None;
        if self.large.is_some() {
            let size = largeprint::terminal_size(io::stdout());
            let mut screen = String::from(largeprint::CLEAR_SCREEN);
            screen.push_str(&largeprint::message(text, size));
            self.write_terminal(screen);
        }
    }

    /// Pans a message longer than the braille display (`right`, else left); `false` when
    /// nothing longer than the display is shown, and the panning key keeps its meaning.
    pub fn pan(&mut self, right: bool) -> bool {
        match &mut self.braille {
            Some(braille) => braille.pan(right, &self.log),
            None => false,
        }
    }

    /// A key was pressed: the braille display is cleared (the key's action shows what it
    /// shows next). Large print stays until the code expires.
    pub fn key_pressed(&mut self) {
        if let Some(braille) = &mut self.braille {
            if !braille.text.is_empty() {
                braille.show("", &self.log);
            }
        }
    }

    /// Whether a code is shown and still valid.
    pub fn showing(&self) -> bool {
        self.shown
            .as_ref()
            .is_some_and(|s| s.expires.is_none_or(|e| Instant::now() < e))
    }

    /// How long until [`Senses::tick`] has something to do.
    pub fn next_tick(&self, idle: Duration) -> Duration {
        match &self.shown {
            Some(Shown {
                expires: Some(e), ..
            }) => {
                let left = e.saturating_duration_since(Instant::now());
                // The next whole second of the countdown.
                let frac = Duration::from_nanos(u64::from(left.subsec_nanos()));
                if frac.is_zero() {
                    Duration::from_secs(1).min(idle)
                } else {
                    frac.min(idle)
                }
            }
            _ => idle,
        }
    }

    /// Updates the countdown, clears an expired code, looks for a missing display.
    pub fn tick(&mut self) {
        self.connect();
        if let Some(Shown {
            expires: Some(e), ..
        }) = &self.shown
        {
            if Instant::now() >= *e {
                self.shown = None;
                if let Some(braille) = &mut self.braille {
                    braille.show("", &self.log);
                }
                self.write_terminal(largeprint::CLEAR_SCREEN.to_owned());
                return;
            }
        }
        self.draw();
    }

    fn draw(&mut self) {
        if self.large.is_none() {
            return;
        }
        let Some(shown) = &mut self.shown else { return };
        let seconds = shown.expires.map(|e| {
            e.saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil() as u64
        });
        if shown.drawn_seconds.is_some() && shown.drawn_seconds == seconds {
            return;
        }
        shown.drawn_seconds = seconds;
        // The terminal's size now (it may have been resized since the last picture).
        let size = largeprint::terminal_size(io::stdout());
        let mut text = String::from(largeprint::CLEAR_SCREEN);
        text.push_str(&largeprint::block(
            &shown.code,
            &shown.sizes,
            seconds,
            true,
            size,
            &shown.language,
        ));
        // `run` keeps the terminal's output processing on, so newlines stay newlines.
        self.write_terminal(text);
    }

    fn write_terminal(&mut self, text: String) {
        let Some(screen) = &self.large else { return };
        if !screen.write(text) {
            (self.log)("warning: cannot write to the terminal; large print is off");
            self.large = None;
        }
    }

    /// Waits until the shown code expires or a braille key arrives on `keys`, at most
    /// `limit` (for `speak`, which shows the code or message and then ends); not longer
    /// than the display is there (BRLTTY stopped: nobody reads it any more).
    pub fn hold(&mut self, keys: &std::sync::mpsc::Receiver<BrailleKey>, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let now = Instant::now();
            let until = match self.shown.as_ref().and_then(|s| s.expires) {
                Some(e) => e.min(end),
                None => end,
            };
            if now >= until {
                break;
            }
            // Woken every quarter second to see whether the display is still there.
            match keys.recv_timeout((until - now).min(Duration::from_millis(250))) {
                // Panning reads on through a long message.
                Ok(key @ (BrailleKey::PanLeft | BrailleKey::PanRight))
                    if self.pan(key == BrailleKey::PanRight) => {}
                // Any other key (or no sender left: nothing more can arrive).
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.braille.as_ref().is_some_and(Braille::gone) {
                        break;
                    }
                }
            }
        }
        self.shown = None;
        if let Some(braille) = &mut self.braille {
            braille.show("", &self.log);
        }
    }
}

impl Drop for Senses {
    /// A code still shown when the program ends is taken off the screen (and the display:
    /// BRLTTY takes it back when the connection closes).
    fn drop(&mut self) {
        if self.showing() {
            if let Some(screen) = &self.large {
                screen.write(largeprint::CLEAR_SCREEN.to_owned());
                screen.flush(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn output_lists_are_checked() {
        assert_eq!(
            parse_outputs(&["speech", "braille", "large"]).unwrap(),
            [Output::Speech, Output::Braille, Output::Large]
        );
        assert_eq!(
            parse_outputs(&["speechd,braille"]).unwrap(),
            [Output::Speechd, Output::Braille]
        );
        for (list, want) in [
            (vec!["speech", "smell"], "`smell`"),
            (vec!["braille", "braille"], "twice"),
            (vec!["speech", "speechd"], "choose one"),
            (vec![], "no output"),
        ] {
            let err = parse_outputs(&list).unwrap_err();
            assert!(err.contains(want), "{list:?}: {err}");
        }
    }

    #[test]
    fn a_missing_display_is_logged_once_and_nothing_else_stops() {
        let dir = tempfile::tempdir().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = std::sync::Arc::clone(&lines);
        let config = OutputsConfig {
            list: vec![Output::Speech, Output::Braille],
            braille: BrailleSettings {
                host: ":0".into(),
                key_file: dir.path().join("key"),
                tty: 1,
            },
            speechd_address: None,
        };
        let mut config = config;
        // A unix socket path that does not exist: `:N` maps under /var/lib/BrlAPI, so use a
        // TCP port nothing listens on instead (bound then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        config.braille.host = format!("127.0.0.1:{}", port - 4101);
        let mut senses = Senses::new(
            &config,
            false,
            None,
            Box::new(move |l| sink.lock().unwrap().push(l.to_owned())),
        );
        assert!(!senses.braille_connected());
        senses.show_text("Your code is");
        senses.show_code("482915", &[3, 3], Some(30), "en");
        senses.tick();
        let logged = lines.lock().unwrap().clone();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].contains("cannot reach BRLTTY"), "{logged:?}");
        assert!(senses.showing());
        // A message said after the code replaces it: the code is no longer counted down.
        senses.show_text("The clock has moved backwards.");
        assert!(!senses.showing());
    }
}
