//! The desktop's voice: speaking through Speech Dispatcher, the service Orca and other
//! screen readers speak through, so the code comes in the voice, rate and volume the user
//! chose there.
//!
//! SSIP (Speech Synthesis Interface Protocol) is a line protocol over a local socket; it is
//! spoken here directly (libspeechd is C, and the workspace keeps `unsafe` to two modules).
//! The code is sent as one SSML message of digit *words* with `<break>`s for the voice pack's
//! pauses, so grouping and pauses are the same as on the device; rate, pitch, volume and
//! voice are not set, so the user's Speech Dispatcher settings apply. The earcons are not
//! sent (Speech Dispatcher has no tones): the caller plays them through the sound card.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use codereader_speech::{Segment, Utterance};

/// How long a reply to a command may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Speech Dispatcher cannot speak.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechdError {
    /// `SPEECHD_ADDRESS` (or the config's address) is not `unix_socket:PATH` or
    /// `inet_socket:HOST:PORT`.
    #[error("Speech Dispatcher address `{0}`: expected unix_socket:PATH or inet_socket:HOST:PORT")]
    BadAddress(String),
    /// Nothing listens there. (The cause is part of the message, not a `source()`, so a
    /// report of the whole chain says it once.)
    #[error("cannot reach Speech Dispatcher at {address}: {cause}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        cause: io::Error,
    },
    /// The connection failed or a reply did not come in time.
    #[error("Speech Dispatcher connection: {0}")]
    Io(io::Error),
    /// A command was refused.
    #[error("Speech Dispatcher refused `{command}`: {reply}")]
    Refused {
        /// The command (never a code: message text is not echoed).
        command: String,
        /// Its reply.
        reply: String,
    },
    /// Speaking did not end in time.
    #[error("Speech Dispatcher did not finish speaking within {0} s")]
    Timeout(u64),
    /// The message was taken but speaking did not start in time (a daemon whose output
    /// module hangs or has no sound).
    #[error("Speech Dispatcher took the message but did not start speaking within {0} s")]
    Silent(u64),
}

impl From<io::Error> for SpeechdError {
    fn from(e: io::Error) -> Self {
        SpeechdError::Io(e)
    }
}

/// Where Speech Dispatcher listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeechdAddress {
    /// A local socket.
    Unix(PathBuf),
    /// TCP.
    Inet(String, u16),
}

impl std::fmt::Display for SpeechdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpeechdAddress::Unix(p) => write!(f, "unix_socket:{}", p.display()),
            SpeechdAddress::Inet(h, p) => write!(f, "inet_socket:{h}:{p}"),
        }
    }
}

impl SpeechdAddress {
    /// Parses `unix_socket:PATH` or `inet_socket:HOST:PORT` (as `SPEECHD_ADDRESS`).
    ///
    /// # Errors
    /// [`SpeechdError::BadAddress`].
    pub fn parse(text: &str) -> Result<Self, SpeechdError> {
        let bad = || SpeechdError::BadAddress(text.to_owned());
        if let Some(path) = text.strip_prefix("unix_socket:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(SpeechdAddress::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("inet_socket:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse().map_err(|_| bad())?;
            if host.is_empty() {
                return Err(bad());
            }
            return Ok(SpeechdAddress::Inet(host.to_owned(), port));
        }
        Err(bad())
    }

    /// `explicit` (the config's), else `$SPEECHD_ADDRESS`, else the user's default socket
    /// `$XDG_RUNTIME_DIR/speech-dispatcher/speechd.sock`.
    ///
    /// # Errors
    /// [`SpeechdError::BadAddress`].
    pub fn find(explicit: Option<&str>) -> Result<Self, SpeechdError> {
        if let Some(text) = explicit {
            return Self::parse(text);
        }
        if let Some(text) = std::env::var("SPEECHD_ADDRESS")
            .ok()
            .filter(|t| !t.is_empty())
        {
            return Self::parse(&text);
        }
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/run/user/0"), PathBuf::from);
        Ok(SpeechdAddress::Unix(
            runtime.join("speech-dispatcher/speechd.sock"),
        ))
    }
}

/// The SSML for the spoken parts of `utterance`: each phrase's text (escaped), each pause a
/// `<break>`; earcons are left out (see [`split_earcons`]).
pub fn ssml(segments: &[Segment]) -> String {
    let mut text = String::from("<speak>");
    for segment in segments {
        match segment {
            Segment::Speech(phrase) => {
                for c in phrase.text.chars() {
                    match c {
                        '&' => text.push_str("&amp;"),
                        '<' => text.push_str("&lt;"),
                        '>' => text.push_str("&gt;"),
                        c => text.push(c),
                    }
                }
            }
            Segment::Pause { ms } => text.push_str(&format!("<break time=\"{ms}ms\"/>")),
            // Speech Dispatcher does not say how long the words before took: the wait
            // begins where they end.
            Segment::Until { ms } => text.push_str(&format!("<break time=\"{ms}ms\"/>")),
            Segment::Earcon(_) => {}
        }
    }
    text.push_str("</speak>");
    text
}

/// `utterance` split into what comes before the first phrase (earcon, pause), the phrases
/// with the pauses between them, and what comes after the last phrase.
pub fn split_earcons(utterance: &Utterance) -> (Utterance, Vec<Segment>, Utterance) {
    let segments = utterance.segments();
    let is_speech = |s: &Segment| matches!(s, Segment::Speech(_));
    let first = segments.iter().position(is_speech);
    let last = segments.iter().rposition(is_speech);
    match (first, last) {
        (Some(first), Some(last)) => (
            Utterance::from_segments(segments[..first].to_vec()),
            segments[first..=last].to_vec(),
            Utterance::from_segments(segments[last + 1..].to_vec()),
        ),
        _ => (
            utterance.clone(),
            Vec::new(),
            Utterance::from_segments(Vec::new()),
        ),
    }
}

/// A connection to Speech Dispatcher.
#[derive(Debug)]
pub struct Speechd {
    reader: BufReader<Box<dyn ReadStream>>,
    writer: Box<dyn ReadStream>,
}

/// A socket we both read and write.
trait ReadStream: io::Read + io::Write + std::fmt::Debug + Send {
    /// How long a read may wait.
    fn wait_at_most(&self, limit: Duration) -> io::Result<()>;
}
impl ReadStream for UnixStream {
    fn wait_at_most(&self, limit: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(limit))
    }
}
impl ReadStream for TcpStream {
    fn wait_at_most(&self, limit: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(limit))
    }
}

/// How long `speech-dispatcher --spawn` and the new daemon's socket may take.
const SPAWN_LIMIT: Duration = Duration::from_secs(5);

/// Connects to Speech Dispatcher at `address`; if nothing listens on its local socket,
/// starts it first as the client libraries do (`speech-dispatcher --spawn`, which respects
/// the user's `DisableAutoSpawn`) and connects to the new daemon.
///
/// # Errors
/// [`SpeechdError::Connect`] (with why it could not be started, when that was tried) and the
/// other [`SpeechdError`]s of [`Speechd::connect`].
pub fn connect_or_spawn(address: &SpeechdAddress) -> Result<Speechd, SpeechdError> {
    let first = match Speechd::connect(address) {
        Err(e @ SpeechdError::Connect { .. }) => e,
        other => return other,
    };
    let SpeechdAddress::Unix(path) = address else {
        return Err(first);
    };
    let not_started = |why: String| SpeechdError::Connect {
        address: address.to_string(),
        cause: io::Error::other(format!(
            "not running, and `speech-dispatcher --spawn` {why}"
        )),
    };
    let spawned = std::process::Command::new("speech-dispatcher")
        .args([
            "--spawn",
            "--communication-method",
            "unix_socket",
            "--socket-path",
        ])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_started("cannot run: it is not installed".into()));
        }
        Err(e) => return Err(not_started(format!("cannot run: {e}"))),
    };
    // The spawning process exits once the daemon has forked off (or refused to start).
    let deadline = Instant::now() + SPAWN_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(not_started(format!(
                    "did not finish within {} s",
                    SPAWN_LIMIT.as_secs()
                )));
            }
            Err(e) => return Err(not_started(format!("cannot be waited for: {e}"))),
        }
    };
    if !status.success() {
        return Err(not_started(format!(
            "refused ({status}; autospawn may be disabled in its settings)"
        )));
    }
    // A daemon still starting up may refuse or drop a connection: tried again until the
    // deadline.
    loop {
        match Speechd::connect(address) {
            Err(SpeechdError::Connect { cause: e, .. } | SpeechdError::Io(e))
                if Instant::now() >= deadline =>
            {
                return Err(not_started(format!(
                    "ran, but its socket does not answer ({e})"
                )));
            }
            Err(SpeechdError::Connect { .. } | SpeechdError::Io(_)) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Speechd {
    /// Connects and introduces us (`codereader`), with notification of the end of speech
    /// and SSML on.
    ///
    /// # Errors
    /// [`SpeechdError`]s.
    pub fn connect(address: &SpeechdAddress) -> Result<Self, SpeechdError> {
        let connect_error = |cause| SpeechdError::Connect {
            address: address.to_string(),
            cause,
        };
        let (reader, writer): (Box<dyn ReadStream>, Box<dyn ReadStream>) = match address {
            SpeechdAddress::Unix(path) => {
                let s = UnixStream::connect(path).map_err(connect_error)?;
                s.set_read_timeout(Some(REPLY_TIMEOUT))?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
            SpeechdAddress::Inet(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port)).map_err(connect_error)?;
                s.set_read_timeout(Some(REPLY_TIMEOUT))?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
        };
        let mut speechd = Speechd {
            reader: BufReader::new(reader),
            writer,
        };
        let user: String = std::env::var("USER")
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let user = if user.is_empty() { "user" } else { &user };
        speechd.command(&format!("SET self CLIENT_NAME {user}:codereader:code"))?;
        speechd.command("SET self NOTIFICATION begin on")?;
        speechd.command("SET self NOTIFICATION end on")?;
        speechd.command("SET self NOTIFICATION cancel on")?;
        speechd.command("SET self SSML_MODE on")?;
        Ok(speechd)
    }

    /// Reads one reply (its lines); events (7xx) that arrive meanwhile are returned as they
    /// are, so the caller can tell.
    fn reply(&mut self) -> Result<Vec<String>, SpeechdError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(SpeechdError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let line = line.trim_end().to_owned();
            // `NNN-...` continues, `NNN ...` ends a reply.
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Sends one command line and checks its reply is a success (2xx).
    fn command(&mut self, command: &str) -> Result<Vec<String>, SpeechdError> {
        self.writer.write_all(format!("{command}\r\n").as_bytes())?;
        self.expect_ok(command)
    }

    fn expect_ok(&mut self, command: &str) -> Result<Vec<String>, SpeechdError> {
        loop {
            let reply = self.reply()?;
            let last = reply.last().cloned().unwrap_or_default();
            match last.as_bytes().first() {
                Some(b'2') => return Ok(reply),
                // An event of an earlier message; not our reply.
                Some(b'7') => continue,
                _ => {
                    return Err(SpeechdError::Refused {
                        command: command.to_owned(),
                        reply: last,
                    });
                }
            }
        }
    }

    /// Sets the language (a voice pack's tag, e.g. `da`), so the user's voice for it speaks.
    ///
    /// # Errors
    /// [`SpeechdError`]s.
    pub fn set_language(&mut self, tag: &str) -> Result<(), SpeechdError> {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.command(&format!("SET self LANGUAGE {tag}"))?;
        Ok(())
    }

    /// Speaks `segments` (phrases and pauses) as one SSML message and returns when Speech
    /// Dispatcher says it ended (or was cancelled), at most after `limit`. Speaking must
    /// begin within `start` (else it is cancelled: the caller can say it another way).
    ///
    /// # Errors
    /// [`SpeechdError`]s; [`SpeechdError::Silent`] when speaking did not begin within
    /// `start`, [`SpeechdError::Timeout`] when no end came within `limit`.
    pub fn speak(
        &mut self,
        segments: &[Segment],
        start: Duration,
        limit: Duration,
    ) -> Result<(), SpeechdError> {
        let id = self.queue(segments)?;
        let began = Instant::now();
        // Short reads, so the start and end limits are checked on time.
        self.reader
            .get_ref()
            .wait_at_most(Duration::from_millis(100))?;
        let deadline = began + limit;
        let mut speaking = false;
        loop {
            if !speaking && began.elapsed() >= start {
                let _ = self.cancel();
                return Err(SpeechdError::Silent(start.as_secs()));
            }
            if Instant::now() >= deadline {
                return Err(SpeechdError::Timeout(limit.as_secs()));
            }
            let event = match self.reply() {
                Ok(event) => event,
                Err(SpeechdError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let code = event.last().and_then(|l| l.get(..3)).unwrap_or_default();
            let ours = event.first().and_then(|l| l.get(4..)) == Some(id.as_str());
            if !(ours || id.is_empty()) {
                continue;
            }
            match code {
                "701" => speaking = true,
                "702" | "703" => return Ok(()),
                _ => {}
            }
        }
    }

    /// Queues `segments` as one SSML message and returns its message id at once (the
    /// events of its end are skipped by the next command).
    ///
    /// # Errors
    /// [`SpeechdError`]s.
    pub fn queue(&mut self, segments: &[Segment]) -> Result<String, SpeechdError> {
        self.command("SPEAK")?;
        let mut body = String::new();
        for line in ssml(segments).lines() {
            // A line holding only "." would end the message: SSIP doubles a leading dot.
            if line.starts_with('.') {
                body.push('.');
            }
            body.push_str(line);
            body.push_str("\r\n");
        }
        body.push_str(".\r\n");
        self.writer.write_all(body.as_bytes())?;
        let queued = self.expect_ok("SPEAK (message)")?;
        // `225-<id>`: the message id.
        Ok(queued
            .first()
            .and_then(|l| l.get(4..))
            .unwrap_or_default()
            .to_owned())
    }

    /// Stops what we are saying.
    ///
    /// # Errors
    /// [`SpeechdError`]s.
    pub fn cancel(&mut self) -> Result<(), SpeechdError> {
        self.command("CANCEL self")?;
        Ok(())
    }
}

/// Speech Dispatcher as the voice of `run`: connected when first needed, connected again
/// after a failure (logged once per reason), never blocking the key loop (messages are
/// queued, the stop key cancels them). `run` plays no earcons with it.
#[derive(Debug)]
pub struct SpeechdVoice {
    address: Option<String>,
    connection: Option<Speechd>,
    language: Option<String>,
    last_error: Option<String>,
}

impl SpeechdVoice {
    /// For the config's address (`None`: `$SPEECHD_ADDRESS` or the default socket).
    pub fn new(address: Option<String>) -> Self {
        SpeechdVoice {
            address,
            connection: None,
            language: None,
            last_error: None,
        }
    }

    fn connected(&mut self, language: &str) -> Result<&mut Speechd, SpeechdError> {
        if self.connection.is_none() {
            let address = SpeechdAddress::find(self.address.as_deref())?;
            self.connection = Some(Speechd::connect(&address)?);
            self.language = None;
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(SpeechdError::Io(io::ErrorKind::NotConnected.into()));
        };
        if self.language.as_deref() != Some(language) {
            connection.set_language(language)?;
            self.language = Some(language.to_owned());
        }
        Ok(connection)
    }

    /// Says the phrases and pauses of `utterance` in `language`; a failure is logged (once
    /// per reason) and the next message tries a new connection. Whether Speech Dispatcher
    /// took the words (`false`: the caller should say them some other way).
    pub fn say(&mut self, utterance: &Utterance, language: &str, log: &dyn Fn(&str)) -> bool {
        let (_, words, _) = split_earcons(utterance);
        if words.is_empty() {
            return true;
        }
        let result = self
            .connected(language)
            .and_then(|connection| connection.queue(&words));
        match result {
            Ok(_) => {
                self.last_error = None;
                true
            }
            Err(e) => {
                self.connection = None;
                let message = e.to_string();
                if self.last_error.as_ref() != Some(&message) {
                    log(&format!("error: speechd: {message}"));
                    self.last_error = Some(message);
                }
                false
            }
        }
    }

    /// Cancels what is being said.
    pub fn stop(&mut self) {
        if let Some(connection) = &mut self.connection {
            if connection.cancel().is_err() {
                self.connection = None;
            }
        }
    }
}

impl Drop for Speechd {
    fn drop(&mut self) {
        let _ = self.writer.write_all(b"QUIT\r\n");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use codereader_speech::{Earcon, Phrase, PhraseKey};

    #[test]
    fn addresses_parse_as_speechd_address_does() {
        assert_eq!(
            SpeechdAddress::parse("unix_socket:/run/user/1000/speech-dispatcher/speechd.sock")
                .unwrap(),
            SpeechdAddress::Unix("/run/user/1000/speech-dispatcher/speechd.sock".into())
        );
        assert_eq!(
            SpeechdAddress::parse("inet_socket:127.0.0.1:6560").unwrap(),
            SpeechdAddress::Inet("127.0.0.1".into(), 6560)
        );
        for bad in [
            "",
            "unix_socket:",
            "inet_socket:host",
            "tcp:1",
            "inet_socket::1",
        ] {
            assert!(SpeechdAddress::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SpeechdAddress::find(Some("unix_socket:/x")).unwrap(),
            SpeechdAddress::Unix("/x".into())
        );
    }

    fn speech(text: &str, d: u8) -> Segment {
        Segment::Speech(Phrase {
            key: PhraseKey::Digit(d),
            text: text.into(),
        })
    }

    #[test]
    fn the_code_becomes_ssml_words_with_breaks_and_the_earcons_stay_out() {
        let utterance = Utterance::from_segments(vec![
            Segment::Earcon(Earcon::Start),
            Segment::Pause { ms: 200 },
            speech("four", 4),
            Segment::Pause { ms: 150 },
            speech("<&>", 8),
            Segment::Pause { ms: 200 },
            Segment::Earcon(Earcon::End),
        ]);
        let (head, words, tail) = split_earcons(&utterance);
        assert_eq!(head.segments().len(), 2);
        assert_eq!(tail.segments().len(), 2);
        assert_eq!(
            ssml(&words),
            "<speak>four<break time=\"150ms\"/>&lt;&amp;&gt;</speak>"
        );
        // A wait for a moment: Speech Dispatcher cannot say when the words before ended, so
        // the wait begins there.
        assert_eq!(
            ssml(&[
                speech("four", 4),
                Segment::Until { ms: 8000 },
                speech("two", 2)
            ]),
            "<speak>four<break time=\"8000ms\"/>two</speak>"
        );
    }
}
