//! Where codereader keeps its files: the one rule for the state directory, shared by the
//! device (`codereader`, token and settings) and the verifier server (database, KEK, API
//! keys), so the two programs cannot drift apart on the same machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The state directory (not created here): `explicit` if given (a `--state` option), else
/// `$CODEREADER_STATE`, else `$XDG_STATE_HOME/codereader`, else
/// `$HOME/.local/state/codereader`. An empty variable counts as unset. `None` when none of
/// them is set; each program says in its own words what the user can give.
#[must_use]
pub fn state_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    state_dir_from(explicit, |name| std::env::var_os(name))
}

/// [`state_dir`] with the environment given, so the rule is tested without changing the
/// process's environment (which other test threads read).
fn state_dir_from(
    explicit: Option<&Path>,
    var: impl Fn(&str) -> Option<OsString>,
) -> Option<PathBuf> {
    let var = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = var("CODEREADER_STATE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return Some(PathBuf::from(dir).join("codereader"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".local/state/codereader"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(explicit: Option<&str>, vars: &[(&str, &str)]) -> Option<PathBuf> {
        state_dir_from(explicit.map(Path::new), |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn the_first_one_set_wins_in_order() {
        let all = [
            ("CODEREADER_STATE", "/s"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(lookup(Some("/e"), &all), Some(PathBuf::from("/e")));
        assert_eq!(lookup(None, &all), Some(PathBuf::from("/s")));
        assert_eq!(
            lookup(None, &all[1..]),
            Some(PathBuf::from("/x/codereader"))
        );
        assert_eq!(
            lookup(None, &all[2..]),
            Some(PathBuf::from("/h/.local/state/codereader"))
        );
        assert_eq!(lookup(None, &[]), None);
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let vars = [
            ("CODEREADER_STATE", ""),
            ("XDG_STATE_HOME", ""),
            ("HOME", "/h"),
        ];
        assert_eq!(
            lookup(None, &vars),
            Some(PathBuf::from("/h/.local/state/codereader"))
        );
        assert_eq!(lookup(None, &[("HOME", "")]), None);
    }
}
