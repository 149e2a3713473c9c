//! Braille: a BrlAPI client, so a deafblind user reads the code on a refreshable braille
//! display driven by BRLTTY.
//!
//! BrlAPI's protocol is spoken directly over its socket, in safe Rust: libbrlapi is C (the
//! workspace keeps `unsafe` to two modules) and would add a build-time library to the Pi
//! cross build. The protocol is small and stable (version 8 since BRLTTY 6.1): packets are a
//! big-endian `u32` payload size, a `u32` type and the payload. We connect, answer the
//! server's version, authorize (none, or the key file), ask for the display size, take a
//! virtual terminal ("tty mode") and then write text; BRLTTY translates the text with the
//! user's own braille table. Keys pressed on the display arrive as `k` packets and are read
//! on their own thread ([`KeyReader`]).
//!
//! Hosts are written as BrlAPI writes them: `:N` is the local socket
//! `/var/lib/BrlAPI/N`, `HOST:N` is TCP port 4101 + N on HOST, `HOST` is port 4101.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::{TermDecoder, TermKey};

/// The protocol version this client speaks (BrlAPI 0.8, BRLTTY 6.1 and later).
const PROTOCOL_VERSION: u32 = 8;
/// The largest packet either side sends.
const MAX_PACKET: usize = 4096;
/// Where BRLTTY puts its local sockets.
const SOCKET_DIR: &str = "/var/lib/BrlAPI";
/// TCP port of display 0.
const BASE_PORT: u16 = 4101;
/// How long the handshake and each write may take before the display counts as gone.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The default key file of `auth = keyfile`.
pub const DEFAULT_KEY_FILE: &str = "/etc/brlapi.key";

/// Packet types (`brlapi_protocol.h`).
mod packet {
    pub(super) const VERSION: u32 = b'v' as u32;
    pub(super) const AUTH: u32 = b'a' as u32;
    pub(super) const DISPLAY_SIZE: u32 = b's' as u32;
    pub(super) const ENTER_TTY: u32 = b't' as u32;
    pub(super) const KEY: u32 = b'k' as u32;
    pub(super) const WRITE: u32 = b'w' as u32;
    pub(super) const ACK: u32 = b'A' as u32;
    pub(super) const ERROR: u32 = b'e' as u32;
    pub(super) const EXCEPTION: u32 = b'E' as u32;
}

/// Authorization methods (`BRLAPI_AUTH_*`).
const AUTH_NONE: u32 = b'N' as u32;
const AUTH_KEY: u32 = b'K' as u32;

/// Write flags (`BRLAPI_WF_*`).
const WF_REGION: u32 = 0x02;
const WF_TEXT: u32 = 0x04;
const WF_CURSOR: u32 = 0x20;
const WF_CHARSET: u32 = 0x40;

/// Why the braille display cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrailleError {
    /// The host setting is not `:N`, `HOST:N` or `HOST`.
    #[error("braille host `{0}`: expected :N, HOST:N or HOST")]
    BadHost(String),
    /// No BRLTTY answers there.
    #[error("cannot reach BRLTTY at {address}: {source}")]
    Connect {
        /// Where we looked.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or timed out.
    #[error("BRLTTY connection: {0}")]
    Io(#[from] io::Error),
    /// BRLTTY speaks another protocol version.
    #[error("BRLTTY speaks BrlAPI protocol {0}; this codereader speaks {PROTOCOL_VERSION}")]
    Version(u32),
    /// None of BRLTTY's authorization methods worked.
    #[error("BRLTTY refused us: {0}")]
    Auth(String),
    /// BRLTTY answered something unexpected.
    #[error("BRLTTY protocol: {0}")]
    Protocol(String),
    /// BRLTTY reported an error for one of our requests.
    #[error("BRLTTY error {code} for request `{request}`")]
    Refused {
        /// BrlAPI error number.
        code: u32,
        /// The request it refused.
        request: char,
    },
    /// BRLTTY has no display connected (size 0).
    #[error("BRLTTY has no braille display connected")]
    NoDisplay,
}

/// How to reach BRLTTY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrailleSettings {
    /// BrlAPI host (`:0`, `HOST:N`); the default is `$BRLAPI_HOST`, else `:0`.
    pub host: String,
    /// Key file for key authorization (used only when BRLTTY asks for a key).
    pub key_file: PathBuf,
    /// The virtual terminal our text belongs to (BRLTTY shows it while that one is active).
    pub tty: u32,
}

impl Default for BrailleSettings {
    fn default() -> Self {
        BrailleSettings {
            host: std::env::var("BRLAPI_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| ":0".to_owned()),
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
            tty: controlling_console().unwrap_or(1),
        }
    }
}

/// The virtual console this process runs on (`/dev/ttyN`), if it runs on one.
fn controlling_console() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 7 (tty_nr), counted after the command name's closing parenthesis.
    let after = stat.rsplit_once(')')?.1;
    let tty_nr: u32 = after.split_whitespace().nth(4)?.parse().ok()?;
    let (major, minor) = (
        (tty_nr >> 8) & 0xfff,
        (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00),
    );
    (major == 4 && (1..=63).contains(&minor)).then_some(minor)
}

/// Where a host setting points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A local socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp(String, u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(host, port) => write!(f, "{host} port {port}"),
        }
    }
}

/// Parses a BrlAPI host as libbrlapi does.
///
/// # Errors
/// [`BrailleError::BadHost`].
pub fn address(host: &str) -> Result<Address, BrailleError> {
    let bad = || BrailleError::BadHost(host.to_owned());
    let (name, number) = match host.rsplit_once(':') {
        Some((name, n)) => (name, n.parse::<u16>().map_err(|_| bad())?),
        None => (host, 0),
    };
    if name.is_empty() {
        if host.is_empty() {
            return Err(bad());
        }
        return Ok(Address::Unix(
            PathBuf::from(SOCKET_DIR).join(number.to_string()),
        ));
    }
    let port = BASE_PORT.checked_add(number).ok_or_else(bad)?;
    Ok(Address::Tcp(name.to_owned(), port))
}

/// A connection to BRLTTY's socket, local or TCP.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_timeouts(&self, read: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(TIMEOUT))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(TIMEOUT))
            }
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

fn send(stream: &mut Stream, kind: u32, payload: &[u8]) -> Result<(), BrailleError> {
    let size = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PACKET)
        .ok_or_else(|| BrailleError::Protocol(format!("packet of {} bytes", payload.len())))?;
    let mut bytes = Vec::with_capacity(8 + payload.len());
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&kind.to_be_bytes());
    bytes.extend_from_slice(payload);
    stream.write_all(&bytes)?;
    Ok(())
}

fn receive(stream: &mut Stream) -> Result<(u32, Vec<u8>), BrailleError> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let [s0, s1, s2, s3, t0, t1, t2, t3] = header;
    let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
    let kind = u32::from_be_bytes([t0, t1, t2, t3]);
    if size > MAX_PACKET {
        return Err(BrailleError::Protocol(format!(
            "a packet of {size} bytes announced"
        )));
    }
    let mut payload = vec![0u8; size];
    stream.read_exact(&mut payload)?;
    Ok((kind, payload))
}

fn u32_at(payload: &[u8], index: usize) -> Option<u32> {
    let bytes = payload.get(index * 4..index * 4 + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Waits for the answer of type `want` (or an acknowledgement), turning BRLTTY's error
/// packets into [`BrailleError::Refused`]; keys pressed meanwhile are dropped.
fn answer(stream: &mut Stream, want: u32, request: u32) -> Result<Vec<u8>, BrailleError> {
    loop {
        let (kind, payload) = receive(stream)?;
        match kind {
            k if k == want => return Ok(payload),
            packet::ERROR | packet::EXCEPTION => {
                return Err(BrailleError::Refused {
                    code: u32_at(&payload, 0).unwrap_or(0),
                    request: char::from_u32(request).unwrap_or('?'),
                });
            }
            packet::KEY => {}
            other => {
                return Err(BrailleError::Protocol(format!(
                    "expected `{}`, got packet type {other:#x}",
                    char::from_u32(want).unwrap_or('?')
                )));
            }
        }
    }
}

/// A braille display taken for our text.
#[derive(Debug)]
pub struct Display {
    stream: Stream,
    cells: usize,
    address: Address,
}

impl Display {
    /// Connects to BRLTTY, authorizes, takes `settings.tty`; returns the display and the
    /// reader of its keys (for its own thread).
    ///
    /// # Errors
    /// [`BrailleError`]s: nothing listening, refused, no display.
    pub fn connect(settings: &BrailleSettings) -> Result<(Display, KeyReader), BrailleError> {
        let address = address(&settings.host)?;
        let connect_error = |source| BrailleError::Connect {
            address: address.to_string(),
            source,
        };
        let mut stream = match &address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(connect_error)?),
            Address::Tcp(host, port) => {
                let stream = TcpStream::connect((host.as_str(), *port)).map_err(connect_error)?;
                let _ = stream.set_nodelay(true);
                Stream::Tcp(stream)
            }
        };
        stream.set_timeouts(Some(TIMEOUT))?;
        let version = answer(&mut stream, packet::VERSION, packet::VERSION)?;
        let server = u32_at(&version, 0).unwrap_or(0);
        if server != PROTOCOL_VERSION {
            return Err(BrailleError::Version(server));
        }
        send(
            &mut stream,
            packet::VERSION,
            &PROTOCOL_VERSION.to_be_bytes(),
        )?;
        let methods = answer(&mut stream, packet::AUTH, packet::VERSION)?;
        let methods: Vec<u32> = (0..methods.len() / 4)
            .filter_map(|i| u32_at(&methods, i))
            .collect();
        if !methods.contains(&AUTH_NONE) {
            if !methods.contains(&AUTH_KEY) {
                return Err(BrailleError::Auth(
                    "it offers no method this client has (none, key file)".to_owned(),
                ));
            }
            let key = zeroize::Zeroizing::new(std::fs::read(&settings.key_file).map_err(|e| {
                BrailleError::Auth(format!(
                    "it wants the key in {}, which cannot be read: {e}",
                    settings.key_file.display()
                ))
            })?);
            let mut payload = zeroize::Zeroizing::new(AUTH_KEY.to_be_bytes().to_vec());
            payload.extend_from_slice(&key);
            send(&mut stream, packet::AUTH, &payload)?;
            answer(&mut stream, packet::ACK, packet::AUTH).map_err(|e| match e {
                BrailleError::Refused { .. } => BrailleError::Auth(format!(
                    "the key in {} was not accepted",
                    settings.key_file.display()
                )),
                other => other,
            })?;
        }
        send(&mut stream, packet::DISPLAY_SIZE, &[])?;
        let size = answer(&mut stream, packet::DISPLAY_SIZE, packet::DISPLAY_SIZE)?;
        let (columns, rows) = (u32_at(&size, 0).unwrap_or(0), u32_at(&size, 1).unwrap_or(0));
        let cells = usize::try_from(columns.saturating_mul(rows)).unwrap_or(0);
        if cells == 0 || cells > 1024 {
            return Err(BrailleError::NoDisplay);
        }
        let mut enter = Vec::new();
        enter.extend_from_slice(&1u32.to_be_bytes());
        enter.extend_from_slice(&settings.tty.to_be_bytes());
        // No driver-specific key codes: BRLTTY's commands are what we want.
        enter.push(0);
        send(&mut stream, packet::ENTER_TTY, &enter)?;
        answer(&mut stream, packet::ACK, packet::ENTER_TTY)?;
        // From now on the reader thread blocks on keys; writes keep their timeout.
        stream.set_timeouts(None)?;
        let reader = KeyReader {
            stream: stream.try_clone()?,
            decoder: TermDecoder::default(),
        };
        Ok((
            Display {
                stream,
                cells,
                address,
            },
            reader,
        ))
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// Where BRLTTY was reached.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Shows `text` from the first cell (cut to the display, the rest blank), cursor off.
    ///
    /// # Errors
    /// [`BrailleError::Io`] when the connection is gone.
    pub fn show(&mut self, text: &str) -> Result<(), BrailleError> {
        let mut shown: String = text.chars().take(self.cells).collect();
        let len = shown.chars().count();
        shown.extend(std::iter::repeat_n(' ', self.cells - len));
        let mut payload = Vec::new();
        payload.extend_from_slice(&(WF_REGION | WF_TEXT | WF_CURSOR | WF_CHARSET).to_be_bytes());
        payload.extend_from_slice(&1u32.to_be_bytes());
        let cells = u32::try_from(self.cells).unwrap_or(u32::MAX);
        payload.extend_from_slice(&cells.to_be_bytes());
        let bytes = u32::try_from(shown.len()).unwrap_or(u32::MAX);
        payload.extend_from_slice(&bytes.to_be_bytes());
        payload.extend_from_slice(shown.as_bytes());
        // Cursor 0: no cursor.
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.push(5);
        payload.extend_from_slice(b"UTF-8");
        send(&mut self.stream, packet::WRITE, &payload)
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        // Wakes the reader thread, which then ends.
        self.stream.shutdown();
    }
}

/// A key pressed on the braille display, as BRLTTY's command for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrailleKey {
    /// A routing key above cell N (from 0).
    Route(u16),
    /// Pan (go) one window left.
    PanLeft,
    /// Pan one window right.
    PanRight,
    /// A key typed on the display's braille keyboard, decoded like the terminal's.
    Typed(TermKey),
    /// Any other key.
    Other,
}

/// Key type and command fields (`brlapi_keycodes.h`).
const KEY_TYPE_SHIFT: u64 = 29;
const KEY_TYPE_CMD: u64 = 1;
const KEY_TYPE_SYM: u64 = 0;
const KEY_CODE_MASK: u64 = 0x1FFF_FFFF;
const CMD_BLOCK_SHIFT: u64 = 16;
const CMD_ROUTE_BLOCK: u64 = 1;
const CMD_FWINLT: u64 = 23;
const CMD_FWINRT: u64 = 24;
/// Keysyms for keys without a character (X11's), and the Unicode keysym range.
const SYM_UNICODE: u64 = 0x0100_0000;

/// Decodes a BrlAPI key code: commands (routing, panning) and keysyms (typed characters,
/// fed through `decoder` so they mean what the same terminal key means).
pub fn decode_key(code: u64, decoder: &mut TermDecoder) -> Vec<BrailleKey> {
    let value = code & KEY_CODE_MASK;
    match (code >> KEY_TYPE_SHIFT) & 0x7 {
        KEY_TYPE_CMD => {
            let block = value >> CMD_BLOCK_SHIFT;
            let argument = value & 0xFFFF;
            vec![match (block, argument) {
                (CMD_ROUTE_BLOCK, cell) => BrailleKey::Route(u16::try_from(cell).unwrap_or(0)),
                (0, CMD_FWINLT) => BrailleKey::PanLeft,
                (0, CMD_FWINRT) => BrailleKey::PanRight,
                _ => BrailleKey::Other,
            }]
        }
        KEY_TYPE_SYM => {
            let bytes: Vec<u8> = match value {
                0xFF08 => vec![0x7f],
                0xFF09 => vec![b'\t'],
                0xFF0D => vec![b'\r'],
                0xFF1B => vec![0x1b],
                0xFF51 => b"\x1b[D".to_vec(),
                0xFF52 => b"\x1b[A".to_vec(),
                0xFF53 => b"\x1b[C".to_vec(),
                0xFF54 => b"\x1b[B".to_vec(),
                v if v < 0x100 || v & SYM_UNICODE != 0 => {
                    let point = u32::try_from(v & !SYM_UNICODE).unwrap_or(0);
                    char::from_u32(point)
                        .map(|c| c.to_string().into_bytes())
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            if bytes.is_empty() {
                return vec![BrailleKey::Other];
            }
            decoder
                .feed(&bytes, true)
                .into_iter()
                .map(BrailleKey::Typed)
                .collect()
        }
        _ => vec![BrailleKey::Other],
    }
}

/// Reads the keys pressed on the display (blocking; run it on its own thread).
#[derive(Debug)]
pub struct KeyReader {
    stream: Stream,
    decoder: TermDecoder,
}

impl KeyReader {
    /// The next keys pressed.
    ///
    /// # Errors
    /// [`BrailleError::Io`] when the connection ends (BRLTTY stopped, or the [`Display`] was
    /// dropped), [`BrailleError::Refused`] for BRLTTY's exceptions.
    pub fn next_keys(&mut self) -> Result<Vec<BrailleKey>, BrailleError> {
        loop {
            let (kind, payload) = receive(&mut self.stream)?;
            match kind {
                packet::KEY => {
                    let hi = u64::from(u32_at(&payload, 0).unwrap_or(0));
                    let lo = u64::from(u32_at(&payload, 1).unwrap_or(0));
                    return Ok(decode_key(hi << 32 | lo, &mut self.decoder));
                }
                packet::EXCEPTION => {
                    return Err(BrailleError::Refused {
                        code: u32_at(&payload, 0).unwrap_or(0),
                        request: '?',
                    });
                }
                // Non-fatal errors and anything else: ignored.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts_are_read_as_libbrlapi_reads_them() {
        assert_eq!(
            address(":0").unwrap(),
            Address::Unix(PathBuf::from("/var/lib/BrlAPI/0"))
        );
        assert_eq!(
            address("127.0.0.1:7").unwrap(),
            Address::Tcp("127.0.0.1".into(), 4108)
        );
        assert_eq!(
            address("braille.local").unwrap(),
            Address::Tcp("braille.local".into(), 4101)
        );
        for bad in ["", ":x", "host:-1", "host:70000"] {
            assert!(
                matches!(address(bad), Err(BrailleError::BadHost(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn routing_panning_and_typed_keys_decode() {
        let mut d = TermDecoder::default();
        let cmd = |block: u64, arg: u64| (KEY_TYPE_CMD << KEY_TYPE_SHIFT) | (block << 16) | arg;
        assert_eq!(decode_key(cmd(1, 5), &mut d), [BrailleKey::Route(5)]);
        assert_eq!(decode_key(cmd(0, 23), &mut d), [BrailleKey::PanLeft]);
        assert_eq!(decode_key(cmd(0, 24), &mut d), [BrailleKey::PanRight]);
        assert_eq!(decode_key(cmd(0, 1), &mut d), [BrailleKey::Other]);
        // Flags in the upper half do not change the key.
        assert_eq!(
            decode_key((0x8000u64 << 32) | cmd(0, 24), &mut d),
            [BrailleKey::PanRight]
        );
        assert_eq!(
            decode_key(u64::from(b's'), &mut d),
            [BrailleKey::Typed(TermKey::Char('s'))]
        );
        assert_eq!(
            decode_key(0xFF0D, &mut d),
            [BrailleKey::Typed(TermKey::Enter)]
        );
        assert_eq!(
            decode_key(0x1b, &mut d),
            [BrailleKey::Typed(TermKey::Escape)]
        );
        assert_eq!(
            decode_key(SYM_UNICODE | 0xE6, &mut d),
            [BrailleKey::Typed(TermKey::Char('æ'))]
        );
        assert_eq!(decode_key(0xFFBE, &mut d), [BrailleKey::Other]);
    }
}
