//! Actions the user can take and the keys bound to them: terminal keys and evdev key codes.
//!
//! Every action has a single-key binding by default (EN 301 549 5.9: no chord is ever
//! required). Chords ("hold a function key, press a digit", as on MitID's code reader) can be
//! added for evdev devices in the config.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use codereader_speech::Prompt;

/// Defines [`Action`] from one table: each row is the variant with its docs, its name in the
/// config file and on the command line, the help prompt that describes it, and its place
/// in the spoken help (0 first). The enum, [`Action::ALL`], [`Action::name`],
/// [`Action::help_prompt`], [`Action::BY_IMPORTANCE`] and the list in [`UnknownAction`]'s
/// message all come from it, so adding an action is adding one row.
macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $help:ident, $rank:literal;)+) => {
        /// Something the user asks the device to do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $($(#[$doc])* $variant,)+
        }

        impl Action {
            /// Every action, in the order the config documents them.
            pub const ALL: [Action; [$($name),+].len()] = [$(Action::$variant),+];

            /// Every action in the order the spoken help says them: most important first.
            pub const BY_IMPORTANCE: [Action; Action::ALL.len()] = by_importance();

            /// Its name in the config file and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)+
                }
            }

            /// The prompt the spoken help says for it.
            pub fn help_prompt(self) -> Prompt {
                match self {
                    $(Action::$variant => Prompt::$help,)+
                }
            }

            /// Its place in the spoken help, 0 first.
            const fn importance(self) -> usize {
                match self {
                    $(Action::$variant => $rank,)+
                }
            }
        }
    };
}

actions! {
    /// Speak the current code.
    Speak = "speak", HelpSpeak, 0;
    /// Say the last code again.
    Replay = "replay", HelpReplay, 1;
    /// Stop speaking (every key does that too; this one does nothing else).
    Stop = "stop", HelpStop, 2;
    /// One volume step up.
    VolumeUp = "volume_up", HelpVolumeUp, 3;
    /// One volume step down.
    VolumeDown = "volume_down", HelpVolumeDown, 4;
    /// Speak faster.
    Faster = "faster", HelpFaster, 6;
    /// Speak slower.
    Slower = "slower", HelpSlower, 5;
    /// Switch to the next language.
    NextLanguage = "next_language", HelpNextLanguage, 9;
    /// Switch to the next voice of the current language.
    NextVoice = "next_voice", HelpNextVoice, 10;
    /// Say the token's serial digits and what is wrong (clock, battery), if anything.
    Status = "status", HelpStatus, 7;
    /// End `codereader run` (terminal only by default).
    Quit = "quit", HelpQuit, 11;
    /// Say the key map, most important first.
    Help = "help", HelpHelp, 8;
}

/// [`Action::ALL`] ordered by [`Action::importance`]. Evaluated at compile time: two actions
/// with one place, or a place out of range, stop the build.
const fn by_importance() -> [Action; Action::ALL.len()] {
    let mut out = Action::ALL;
    let mut placed = [false; Action::ALL.len()];
    let mut i = 0;
    while i < Action::ALL.len() {
        let action = Action::ALL[i];
        let place = action.importance();
        assert!(
            place < Action::ALL.len() && !placed[place],
            "each action needs its own place in the help"
        );
        placed[place] = true;
        out[place] = action;
        i += 1;
    }
    out
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action `{name}`; the actions are: {list}",
    name = .0,
    list = Action::ALL.map(Action::name).join(", ")
)]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

/// A key read from a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TermKey {
    /// A printable character (not space).
    Char(char),
    /// The space bar.
    Space,
    /// Return / Enter.
    Enter,
    /// Tab.
    Tab,
    /// Backspace.
    Backspace,
    /// Escape (alone, not part of a sequence).
    Escape,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Control-C (the terminal is in raw mode, so it arrives as a key).
    CtrlC,
    /// Anything else (function keys, other control keys): it still stops speech.
    Other,
}

/// A terminal key name that is neither one character nor a known name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown terminal key `{0}`; use one character or one of: space, enter, tab, backspace, escape, up, down, left, right, ctrl-c"
)]
pub struct UnknownKey(pub String);

impl FromStr for TermKey {
    type Err = UnknownKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = match s {
            "space" | " " => TermKey::Space,
            "enter" | "return" => TermKey::Enter,
            "tab" => TermKey::Tab,
            "backspace" => TermKey::Backspace,
            "escape" | "esc" => TermKey::Escape,
            "up" => TermKey::Up,
            "down" => TermKey::Down,
            "left" => TermKey::Left,
            "right" => TermKey::Right,
            "ctrl-c" => TermKey::CtrlC,
            _ => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if !c.is_control() => TermKey::Char(c),
                    _ => return Err(UnknownKey(s.to_owned())),
                }
            }
        };
        Ok(key)
    }
}

impl fmt::Display for TermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TermKey::Char(c) => write!(f, "{c}"),
            TermKey::Space => f.write_str("space"),
            TermKey::Enter => f.write_str("enter"),
            TermKey::Tab => f.write_str("tab"),
            TermKey::Backspace => f.write_str("backspace"),
            TermKey::Escape => f.write_str("escape"),
            TermKey::Up => f.write_str("up"),
            TermKey::Down => f.write_str("down"),
            TermKey::Left => f.write_str("left"),
            TermKey::Right => f.write_str("right"),
            TermKey::CtrlC => f.write_str("ctrl-c"),
            TermKey::Other => f.write_str("other"),
        }
    }
}

/// A key of an evdev input device (USB keypad, big button), named as in
/// `linux/input-event-codes.h`: `KEY_ENTER`, `KEY_KP5`, `BTN_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EvKey(pub evdev::KeyCode);

/// An evdev key name that Linux does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown evdev key `{0}`; use a name from linux/input-event-codes.h such as KEY_ENTER, KEY_KP5 or BTN_0"
)]
pub struct UnknownEvKey(pub String);

impl FromStr for EvKey {
    type Err = UnknownEvKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(EvKey).map_err(|_| UnknownEvKey(s.to_owned()))
    }
}

impl fmt::Display for EvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Splits terminal input bytes into keys; keeps an incomplete escape sequence or UTF-8
/// character for the next call.
#[derive(Debug, Default)]
pub struct TermDecoder {
    pending: Vec<u8>,
}

impl TermDecoder {
    /// Feeds bytes; returns the complete keys. `flush` says no more bytes follow soon (a lone
    /// ESC is then the Escape key).
    pub fn feed(&mut self, bytes: &[u8], flush: bool) -> Vec<TermKey> {
        self.pending.extend_from_slice(bytes);
        let mut keys = Vec::new();
        let mut i = 0;
        let buf = &self.pending;
        while i < buf.len() {
            let b = buf[i];
            let (key, used) = match b {
                0x1b => match buf.get(i + 1) {
                    None if !flush => break,
                    None => (TermKey::Escape, 1),
                    Some(b'[' | b'O') => match buf.get(i + 2) {
                        None if !flush => break,
                        None => (TermKey::Other, 2),
                        Some(b'A') => (TermKey::Up, 3),
                        Some(b'B') => (TermKey::Down, 3),
                        Some(b'C') => (TermKey::Right, 3),
                        Some(b'D') => (TermKey::Left, 3),
                        Some(_) => {
                            // Other CSI sequences end with a byte in 0x40..=0x7e.
                            let end = buf[i + 2..].iter().position(|c| (0x40..=0x7e).contains(c));
                            match end {
                                Some(n) => (TermKey::Other, n + 3),
                                None if !flush => break,
                                None => (TermKey::Other, buf.len() - i),
                            }
                        }
                    },
                    Some(_) => (TermKey::Escape, 1),
                },
                0x03 => (TermKey::CtrlC, 1),
                b'\r' | b'\n' => (TermKey::Enter, 1),
                b'\t' => (TermKey::Tab, 1),
                0x7f | 0x08 => (TermKey::Backspace, 1),
                b' ' => (TermKey::Space, 1),
                0x00..=0x1f => (TermKey::Other, 1),
                0x21..=0x7e => (TermKey::Char(char::from(b)), 1),
                _ => {
                    let len = match b {
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf7 => 4,
                        _ => 1,
                    };
                    match buf.get(i..i + len) {
                        None if !flush => break,
                        None => (TermKey::Other, buf.len() - i),
                        Some(bytes) => match std::str::from_utf8(bytes)
                            .ok()
                            .and_then(|s| s.chars().next())
                        {
                            Some(c) => (TermKey::Char(c), len),
                            None => (TermKey::Other, 1),
                        },
                    }
                }
            };
            keys.push(key);
            i += used;
        }
        self.pending.drain(..i.min(self.pending.len()));
        keys
    }
}

/// Which action each key triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMap<K: Ord> {
    keys: BTreeMap<K, Action>,
}

impl<K: Ord> Default for KeyMap<K> {
    /// No key bound.
    fn default() -> Self {
        KeyMap {
            keys: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy + fmt::Display> KeyMap<K> {
    /// Builds a map from action → keys lists.
    ///
    /// # Errors
    /// A message naming the key bound to two actions.
    pub fn new(bindings: &BTreeMap<Action, Vec<K>>) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for (&action, list) in bindings {
            for &key in list {
                if let Some(previous) = keys.insert(key, action) {
                    if previous != action {
                        return Err(format!(
                            "key `{key}` is bound to both `{previous}` and `{action}`"
                        ));
                    }
                }
            }
        }
        Ok(KeyMap { keys })
    }

    /// The action of `key`, if it has one.
    pub fn action(&self, key: K) -> Option<Action> {
        self.keys.get(&key).copied()
    }

    /// The keys of each action, for display.
    pub fn bindings(&self) -> BTreeMap<Action, Vec<K>> {
        let mut out: BTreeMap<Action, Vec<K>> = BTreeMap::new();
        for (&key, &action) in &self.keys {
            out.entry(action).or_default().push(key);
        }
        out
    }
}

/// Default terminal keys: one key per action, mnemonic where possible, plus the arrows.
pub fn default_terminal_keys() -> BTreeMap<Action, Vec<String>> {
    let table: [(Action, &[&str]); 12] = [
        (Action::Speak, &["space", "enter", "s"]),
        (Action::Replay, &["r"]),
        (Action::Stop, &["x", "escape"]),
        (Action::VolumeUp, &["+", "=", "up"]),
        (Action::VolumeDown, &["-", "down"]),
        (Action::Faster, &["]", "right"]),
        (Action::Slower, &["[", "left"]),
        (Action::NextLanguage, &["l"]),
        (Action::NextVoice, &["v"]),
        (Action::Status, &["i"]),
        (Action::Quit, &["q", "ctrl-c"]),
        (Action::Help, &["h", "?"]),
    ];
    to_owned_table(&table)
}

/// Default evdev keys: a numeric keypad, media keys and a single big button (which usually
/// sends Enter or `BTN_0`).
pub fn default_evdev_keys() -> BTreeMap<Action, Vec<String>> {
    let table: [(Action, &[&str]); 11] = [
        (
            Action::Speak,
            &["KEY_KPENTER", "KEY_ENTER", "KEY_SPACE", "KEY_KP5", "BTN_0"],
        ),
        (Action::Replay, &["KEY_KP0", "KEY_R"]),
        (Action::Stop, &["KEY_KPDOT", "KEY_ESC", "KEY_X"]),
        (
            Action::VolumeUp,
            &["KEY_KPPLUS", "KEY_VOLUMEUP", "KEY_UP", "KEY_KP8"],
        ),
        (
            Action::VolumeDown,
            &["KEY_KPMINUS", "KEY_VOLUMEDOWN", "KEY_DOWN", "KEY_KP2"],
        ),
        (Action::Faster, &["KEY_KP6", "KEY_RIGHT"]),
        (Action::Slower, &["KEY_KP4", "KEY_LEFT"]),
        (Action::NextLanguage, &["KEY_KPSLASH", "KEY_L"]),
        (Action::NextVoice, &["KEY_KP7", "KEY_V"]),
        (Action::Status, &["KEY_KPASTERISK", "KEY_I"]),
        (Action::Help, &["KEY_KP9", "KEY_H", "KEY_HELP"]),
    ];
    to_owned_table(&table)
}

fn to_owned_table(table: &[(Action, &[&str])]) -> BTreeMap<Action, Vec<String>> {
    table
        .iter()
        .map(|(a, keys)| (*a, keys.iter().map(|k| (*k).to_owned()).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_table_keeps_names_help_order_and_message() {
        assert_eq!(
            UnknownAction("jump".into()).to_string(),
            "unknown action `jump`; the actions are: speak, replay, stop, volume_up, \
             volume_down, faster, slower, next_language, next_voice, status, quit, help"
        );
        assert_eq!(
            Action::BY_IMPORTANCE,
            [
                Action::Speak,
                Action::Replay,
                Action::Stop,
                Action::VolumeUp,
                Action::VolumeDown,
                Action::Slower,
                Action::Faster,
                Action::Status,
                Action::Help,
                Action::NextLanguage,
                Action::NextVoice,
                Action::Quit,
            ]
        );
        for action in Action::ALL {
            assert_eq!(action.name().parse::<Action>(), Ok(action));
        }
        assert_eq!(Action::Slower.help_prompt(), Prompt::HelpSlower);
        assert_eq!(Action::Help.help_prompt(), Prompt::HelpHelp);
    }

    #[test]
    fn decoder_splits_keys_and_sequences() {
        let mut d = TermDecoder::default();
        let keys = d.feed(b"s \r\x1b[A\x1b[Bq\x03", false);
        assert_eq!(
            keys,
            [
                TermKey::Char('s'),
                TermKey::Space,
                TermKey::Enter,
                TermKey::Up,
                TermKey::Down,
                TermKey::Char('q'),
                TermKey::CtrlC
            ]
        );
        // A sequence split across reads.
        assert_eq!(d.feed(b"\x1b", false), []);
        assert_eq!(d.feed(b"[", false), []);
        assert_eq!(d.feed(b"C", false), [TermKey::Right]);
        // A lone escape once no more bytes come.
        assert_eq!(d.feed(b"\x1b", true), [TermKey::Escape]);
        // Function key F5 (CSI 15~) and UTF-8.
        assert_eq!(
            d.feed("\x1b[15~æ".as_bytes(), true),
            [TermKey::Other, TermKey::Char('æ')]
        );
    }

    #[test]
    fn default_maps_are_single_keys_without_conflicts() {
        let mut parsed = BTreeMap::new();
        for (action, names) in default_terminal_keys() {
            let keys: Vec<TermKey> = names.iter().map(|n| n.parse().unwrap()).collect();
            assert!(!keys.is_empty());
            parsed.insert(action, keys);
        }
        let map = KeyMap::new(&parsed).unwrap();
        assert_eq!(map.action(TermKey::Space), Some(Action::Speak));
        for action in Action::ALL {
            assert!(map.bindings().contains_key(&action), "{action} has no key");
        }
        let mut evdev = BTreeMap::new();
        for (action, names) in default_evdev_keys() {
            let keys: Vec<EvKey> = names.iter().map(|n| n.parse().unwrap()).collect();
            evdev.insert(action, keys);
        }
        assert!(KeyMap::new(&evdev).is_ok());
    }

    #[test]
    fn conflicts_and_bad_names_are_reported() {
        assert!("nope".parse::<TermKey>().is_err());
        assert!("jump".parse::<Action>().is_err());
        let mut b = BTreeMap::new();
        b.insert(Action::Speak, vec![TermKey::Char('a')]);
        b.insert(Action::Stop, vec![TermKey::Char('a')]);
        let err = KeyMap::new(&b).unwrap_err();
        assert!(err.contains("`a`"), "{err}");
    }
}
