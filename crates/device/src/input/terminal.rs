//! The terminal as input: raw mode (single keys, no echo) while `run` reads it, restored when
//! it ends, and a thread that decodes its keys into [`Event`]s.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::mpsc::Sender;
use std::thread;

use crate::keys::TermDecoder;
use crate::process::{Failure, set_raw_terminal};

use super::Event;

/// The terminal in raw mode (single keys, no echo) until dropped.
pub(crate) struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    pub(crate) fn start(events: Sender<Event>) -> Result<Self, Failure> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd())
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's mode: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Output processing stays on so that log lines still end properly.
        raw.output_modes = saved.output_modes;
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        set_raw_terminal(true);
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
        set_raw_terminal(false);
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
