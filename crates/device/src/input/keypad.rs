//! Keypads and keyboards read through evdev: the devices the config names (reopened when they
//! come back), or, with none named, any keypad that is plugged in (hot-plug), and chords (an
//! action for a key pressed while a hold key is down).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use evdev::KeyCode;

use crate::config::Chord;
use crate::keys::EvKey;
use crate::process::log;

use super::{Event, RETRY};

/// With no input configured: every [`RETRY`], takes each keypad or keyboard in /dev/input
/// not yet read (one that has Enter, keypad Enter or a first button) and reads it until it
/// goes away; then it may be taken again when it comes back. Looks before it returns (for
/// up to `first_look` while there is none) and returns how many it took.
pub(crate) fn watch_for_keypads(
    grab: bool,
    chords: Vec<Chord>,
    events: Sender<Event>,
    first_look: Duration,
) -> usize {
    let reading: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
    let scan = move || {
        let mut taken = 0;
        for (path, device) in evdev::enumerate() {
            let keypad = device.supported_keys().is_some_and(|keys| {
                [KeyCode::KEY_ENTER, KeyCode::KEY_KPENTER, KeyCode::BTN_0]
                    .into_iter()
                    .any(|k| keys.contains(k))
            });
            drop(device);
            let new = keypad
                && reading
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(path.clone());
            if new {
                read_found_keypad(path, grab, chords.clone(), events.clone(), &reading);
                taken += 1;
            }
        }
        taken
    };
    let looking = Instant::now();
    let mut found = scan();
    while found == 0 && looking.elapsed() < first_look {
        thread::sleep(Duration::from_millis(200));
        found = scan();
    }
    let spawned = thread::Builder::new()
        .name("keypad-watch".into())
        .spawn(move || {
            loop {
                thread::sleep(RETRY);
                scan();
            }
        });
    if let Err(e) = spawned {
        log(&format!("error: cannot start the keypad watch thread: {e}"));
    }
    found
}

/// Reads a keypad [`watch_for_keypads`] found, until it goes away.
fn read_found_keypad(
    path: PathBuf,
    grab: bool,
    chords: Vec<Chord>,
    events: Sender<Event>,
    reading: &Arc<Mutex<BTreeSet<PathBuf>>>,
) {
    let mine = Arc::clone(reading);
    let forget = path.clone();
    let spawned = thread::Builder::new().name("evdev".into()).spawn(move || {
        let opened = Instant::now();
        let failed = read_evdev(&path, grab, &chords, &events).err();
        if let Some(e) = &failed {
            log(&format!("input device {}: {e}", path.display()));
        }
        // Gone after it was read a while (not a device that fails at once, e.g. grabbed by
        // another program, which would otherwise be announced at every 2 s scan).
        let gone = failed.is_some() && opened.elapsed() > Duration::from_millis(100);
        let mut reading = mine.lock().unwrap_or_else(PoisonError::into_inner);
        reading.remove(&path);
        if gone && reading.is_empty() {
            let _ = events.send(Event::KeypadGone);
        }
    });
    if let Err(e) = spawned {
        log(&format!("error: cannot start the evdev thread: {e}"));
        reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&forget);
    }
}

/// Reads one evdev device, reopening it when it disappears (USB keypads come and go).
pub(crate) fn start_evdev(path: PathBuf, grab: bool, chords: Vec<Chord>, events: Sender<Event>) {
    let spawned = thread::Builder::new().name("evdev".into()).spawn(move || {
        loop {
            let opened = Instant::now();
            match read_evdev(&path, grab, &chords, &events) {
                Ok(()) => return,
                Err(e) => {
                    // Failing after it was open a while: it went away (said once; a device
                    // that cannot be opened fails at once, at every retry, silently).
                    if opened.elapsed() > Duration::from_millis(100)
                        && events.send(Event::KeypadGone).is_err()
                    {
                        return;
                    }
                    log(&format!(
                        "error: input device {}: {e}; trying again in {} s",
                        path.display(),
                        RETRY.as_secs()
                    ));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Action;

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
