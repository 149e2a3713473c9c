//! Where keys come from: the terminal, evdev keypads and GPIO buttons, one thread each, all
//! sending [`Event`]s into one channel that the run loop (`run_loop::run`) reads. The loop
//! decides what a key means; the inputs only say which key (or, for chords and buttons, which
//! action) arrived.

mod gpio;
mod keypad;
mod terminal;

use std::time::Duration;

use crate::braille::BrailleKey;
use crate::keys::{Action, EvKey, TermKey};

pub(crate) use gpio::start_gpio;
pub(crate) use keypad::{start_evdev, watch_for_keypads};
pub(crate) use terminal::RawTerminal;

/// How often a missing audio device or evdev device is looked for again.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// What an input thread reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// A terminal key.
    Term(TermKey),
    /// An evdev key press (chords already resolved into actions).
    Ev(EvKey),
    /// An action decided by the input itself (chords, GPIO buttons).
    Action(Action),
    /// The terminal closed (end of input).
    TermClosed,
    /// A key of the braille display.
    Braille(BrailleKey),
    /// The last keypad went away (unplugged): the user is told, since their keys now do
    /// nothing until it is back.
    KeypadGone,
}
