//! `serve --config FILE`: a TOML file whose keys are `serve`'s long flags (`max-body =
//! 65536`, `unknown-as-rejected = true`, `old-kek-file = ["a", "b"]`), merged into the
//! command line before clap parses it, so the file's values go through the same parsers and
//! checks as typed flags, and a flag given on the command line wins over the file.
//!
//! Nothing here names a flag: the keys, their kinds (a switch, one value, values that may
//! repeat) and their parsers come from the subcommand's clap definition, so a flag added to
//! `serve` is a key of the file with no code here. A key that names no flag, a value of the
//! wrong kind and a value its flag's parser refuses are errors naming the file, the line
//! and the key.
//!
//! [`Settings`] is what a running server compares on SIGHUP: the effective raw value of every
//! flag, so that it can tell which keys of a re-read file changed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// The flag of the subcommand that names the file (not itself a key of the file).
pub const CONFIG_FLAG: &str = "config";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{}:{line}: not TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A key that is not a long flag of the subcommand.
    #[error("{}:{line}: unknown key `{key}`{hint}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key as written.
        key: String,
        /// A suggestion, or what the key would be, starting with "; ".
        hint: String,
    },
    /// A value of the wrong kind, or one its flag refuses.
    #[error("{}:{line}: bad value for `{key}`: {message}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One key of the file: its flag's long name and the command-line words it stands for.
#[derive(Debug, Clone)]
struct Entry {
    /// The flag's id in the clap definition (what `ArgMatches` knows it by).
    id: String,
    /// `--key=value` words (none for a switch set to false).
    words: Vec<OsString>,
}

/// A configuration file read and checked against a subcommand's flags.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl ConfigFile {
    /// Reads `path` and checks every key and value against the flags of `command` (the
    /// subcommand, e.g. `serve`).
    ///
    /// # Errors
    /// [`ConfigError`]: the file unreadable or not TOML, a key naming no long flag (tables
    /// included), a value of the wrong kind for its flag (a switch takes `true`/`false`, a
    /// flag that may repeat takes an array, others one string or number), or a value the
    /// flag's parser refuses (the same message as on the command line).
    pub fn load(path: &Path, command: &Command) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let line_of = |offset: usize| line_at(&text, offset);
        let table = DeTable::parse(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let mut entries = Vec::new();
        for (key, value) in table.get_ref() {
            let line = line_of(key.span().start);
            let name: &str = key.get_ref();
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(name) && is_setting(a.get_action(), name))
                .ok_or_else(|| ConfigError::UnknownKey {
                    path: path.to_owned(),
                    line,
                    key: name.to_owned(),
                    hint: unknown_hint(command, name, value.get_ref()),
                })?;
            let bad = |message: String| ConfigError::BadValue {
                path: path.to_owned(),
                line,
                key: name.to_owned(),
                message,
            };
            let words = match (arg.get_action(), value.get_ref()) {
                (ArgAction::SetTrue, DeValue::Boolean(true))
                | (ArgAction::SetFalse, DeValue::Boolean(false)) => {
                    vec![OsString::from(format!("--{name}"))]
                }
                (ArgAction::SetTrue | ArgAction::SetFalse, DeValue::Boolean(_)) => Vec::new(),
                (ArgAction::SetTrue | ArgAction::SetFalse, _) => {
                    return Err(bad("a switch: true or false".to_owned()));
                }
                (ArgAction::Append, DeValue::Array(items)) => items
                    .iter()
                    .map(|item| scalar(item.get_ref()).map(|v| flag_word(name, &v)))
                    .collect::<Result<_, _>>()
                    .map_err(|()| bad("an array of strings or numbers".to_owned()))?,
                (ArgAction::Append, _) => {
                    return Err(bad("an array (the flag may be given several times)".into()));
                }
                (_, value) => vec![flag_word(
                    name,
                    &scalar(value).map_err(|()| bad("one string or number".to_owned()))?,
                )],
            };
            check_words(command, &words).map_err(bad)?;
            entries.push(Entry {
                id: arg.get_id().as_str().to_owned(),
                words,
            });
        }
        Ok(ConfigFile {
            path: path.to_owned(),
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The command-line words of every key whose flag `given` does not already hold.
    fn words_except(&self, given: impl Fn(&str) -> bool) -> Vec<OsString> {
        self.entries
            .iter()
            .filter(|e| !given(&e.id))
            .flat_map(|e| e.words.iter().cloned())
            .collect()
    }
}

/// `argv` (a whole command line, program name first) with the keys of the `--config` file
/// of `subcommand` added as flags, except those the command line gives itself. Without a
/// `--config`, or when `argv` does not parse at all (clap then reports it), `argv` as it is.
/// Also returns the file, if there is one.
///
/// # Errors
/// As [`ConfigFile::load`].
pub fn merge(
    root: &Command,
    subcommand: &str,
    argv: &[OsString],
) -> Result<(Vec<OsString>, Option<ConfigFile>), ConfigError> {
    let unchanged = || Ok((argv.to_vec(), None));
    // A first look, only to find the file and what the command line sets itself: errors
    // (e.g. `--tls-cert` here with its `--tls-key` in the file) are the final parse's to report.
    let Ok(first) = root.clone().ignore_errors(true).try_get_matches_from(argv) else {
        return unchanged();
    };
    let (Some(matches), Some(command)) = (
        first.subcommand_matches(subcommand),
        root.find_subcommand(subcommand),
    ) else {
        return unchanged();
    };
    let Ok(Some(path)) = matches.try_get_raw(CONFIG_FLAG) else {
        return unchanged();
    };
    let Some(path) = path.into_iter().next_back() else {
        return unchanged();
    };
    let file = ConfigFile::load(Path::new(path), command)?;
    let mut merged = argv.to_vec();
    merged
        .extend(file.words_except(|id| matches.value_source(id) == Some(ValueSource::CommandLine)));
    Ok((merged, Some(file)))
}

/// The effective raw value of every flag of a subcommand, to compare a re-read file with the
/// settings a server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<String, Setting>,
}

/// One flag's long name and raw values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    key: String,
    values: Vec<OsString>,
}

impl Settings {
    /// The settings in `matches` (of `command`, the subcommand).
    pub fn of(command: &Command, matches: &ArgMatches) -> Settings {
        let values = command
            .get_arguments()
            .filter_map(|arg| {
                let key = arg.get_long()?;
                if !is_setting(arg.get_action(), key) {
                    return None;
                }
                let id = arg.get_id().as_str();
                let values = match matches.try_get_raw(id) {
                    Ok(Some(raw)) => raw.map(OsStr::to_owned).collect(),
                    _ => Vec::new(),
                };
                Some((
                    id.to_owned(),
                    Setting {
                        key: key.to_owned(),
                        values,
                    },
                ))
            })
            .collect();
        Settings { values }
    }

    /// The ids of the flags whose values differ in `other`, with their long names (the
    /// keys), in the order of the ids.
    pub fn changed(&self, other: &Settings) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter(|(id, s)| other.values.get(*id).map(|o| &o.values) != Some(&s.values))
            .map(|(id, s)| (id.clone(), s.key.clone()))
            .collect()
    }

    /// Takes the value of flag `id` from `other` (once a reload has applied it).
    pub fn adopt(&mut self, other: &Settings, id: &str) {
        if let Some(setting) = other.values.get(id) {
            self.values.insert(id.to_owned(), setting.clone());
        }
    }
}

/// Whether a flag is a setting a file may hold: not `--help`, `--version` or `--config`.
fn is_setting(action: &ArgAction, long: &str) -> bool {
    !matches!(action, ArgAction::Help | ArgAction::Version) && long != CONFIG_FLAG
}

/// `--name=value`: the `=` form, so that a value starting with `-` stays a value.
fn flag_word(name: &str, value: &str) -> OsString {
    OsString::from(format!("--{name}={value}"))
}

/// A string or a number as the text a command line would carry.
fn scalar(value: &DeValue<'_>) -> Result<String, ()> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|_| ()),
        DeValue::Float(f) => Ok(f.as_str().to_owned()),
        _ => Err(()),
    }
}

/// Runs the flag's own parser on its words, alone: a refused value gives the message the
/// command line would, without clap's "error: " and usage lines. Errors that are about other
/// flags (one that this one requires, say) are left for the final parse.
fn check_words(command: &Command, words: &[OsString]) -> Result<(), String> {
    use clap::error::ErrorKind;
    let argv = std::iter::once(OsString::from(command.get_name())).chain(words.iter().cloned());
    match command.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        }
    }
}

/// What to say after "unknown key `name`": the key meant with dashes for underscores, or
/// that tables are not keys.
fn unknown_hint(command: &Command, name: &str, value: &DeValue<'_>) -> String {
    let dashed = name.replace('_', "-");
    if dashed != name
        && command
            .get_arguments()
            .any(|a| a.get_long() == Some(dashed.as_str()))
    {
        return format!("; the keys are the flags' long names: `{dashed}`");
    }
    if matches!(value, DeValue::Table(_)) {
        return "; the file has no tables, only `serve`'s long flags as keys".to_owned();
    }
    format!("; not a flag of `{}`", command.get_name())
}

/// The line (from 1) of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::{Arg, ArgAction};

    fn serve() -> Command {
        Command::new("serve")
            .arg(Arg::new("config").long("config"))
            .arg(
                Arg::new("max_body")
                    .long("max-body")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("10"),
            )
            .arg(Arg::new("open").long("open").action(ArgAction::SetTrue))
            .arg(Arg::new("old").long("old").action(ArgAction::Append))
            .arg(Arg::new("cert").long("cert").requires("key"))
            .arg(Arg::new("key").long("key"))
    }

    fn root() -> Command {
        Command::new("prog").subcommand(serve())
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn merged(text: &str, cli: &[&str]) -> Result<ArgMatches, ConfigError> {
        let (_dir, path) = write(text);
        let mut argv: Vec<OsString> = vec!["prog".into(), "serve".into()];
        argv.push(format!("--config={}", path.display()).into());
        argv.extend(cli.iter().map(OsString::from));
        let (argv, file) = merge(&root(), "serve", &argv)?;
        assert!(file.is_some());
        let m = root().try_get_matches_from(argv).unwrap();
        Ok(m.subcommand_matches("serve").unwrap().clone())
    }

    #[test]
    fn keys_of_every_kind_apply_and_the_command_line_wins() {
        let m = merged(
            "max-body = 0x20\nopen = true\nold = [\"a\", \"-b\"]\ncert = \"c\"\n",
            &["--key", "k"],
        )
        .unwrap();
        assert_eq!(m.get_one::<usize>("max_body"), Some(&32));
        assert!(m.get_flag("open"));
        let old: Vec<&String> = m.get_many("old").unwrap().collect();
        assert_eq!(old, ["a", "-b"]);
        let m = merged(
            "max-body = 5\nold = [\"a\"]\n",
            &["--max-body", "7", "--old=z"],
        )
        .unwrap();
        assert_eq!(m.get_one::<usize>("max_body"), Some(&7));
        let old: Vec<&String> = m.get_many("old").unwrap().collect();
        assert_eq!(
            old,
            ["z"],
            "a repeated flag on the command line replaces the file's"
        );
        assert!(!merged("open = false\n", &[]).unwrap().get_flag("open"));
    }

    fn refused(text: &str) -> String {
        merged(text, &[]).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_name_the_line_and_key() {
        let e = refused("open = true\nmax_body = 3\n");
        assert!(
            e.ends_with(
                ":2: unknown key `max_body`; the keys are the flags' long names: `max-body`"
            ),
            "{e}"
        );
        let e = refused("\nnope = 1\n");
        assert!(
            e.ends_with(":2: unknown key `nope`; not a flag of `serve`"),
            "{e}"
        );
        assert!(refused("config = \"x\"\n").contains("unknown key `config`"));
        assert!(refused("[serve]\nopen = true\n").contains("no tables"));
        let e = refused("open = true\n\nmax-body = \"ten\"\n");
        assert!(
            e.contains(":3: bad value for `max-body`: invalid value 'ten'"),
            "{e}"
        );
        assert!(refused("max-body = -1\n").contains("bad value for `max-body`"));
        assert!(refused("open = 1\n").contains("bad value for `open`: a switch"));
        assert!(refused("old = \"a\"\n").contains("bad value for `old`: an array"));
        assert!(refused("max-body = [1]\n").contains("bad value for `max-body`: one string"));
        assert!(refused("open = \n").contains(":1: not TOML"));
    }

    #[test]
    fn settings_tell_what_changed() {
        let a = Settings::of(&serve(), &merged("max-body = 1\n", &[]).unwrap());
        let b = Settings::of(
            &serve(),
            &merged("max-body = 2\nopen = true\n", &[]).unwrap(),
        );
        let changed = a.changed(&b);
        assert_eq!(
            changed,
            [
                ("max_body".to_owned(), "max-body".to_owned()),
                ("open".to_owned(), "open".to_owned())
            ]
        );
        let mut c = a.clone();
        c.adopt(&b, "open");
        assert_eq!(c.changed(&b).len(), 1);
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_at("a\nb\nc", 0), 1);
        assert_eq!(line_at("a\nb\nc", 2), 2);
        assert_eq!(line_at("a\nb\nc", 4), 3);
    }
}
