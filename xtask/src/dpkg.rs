//! The dpkg steps `cargo xtask deb-check` takes with both packages, the device's
//! (`deb_check.rs`) and the verifier's (`deb_verifier.rs`): refusing a machine where the
//! package is installed already, inspecting the `.deb` (`dpkg-deb`, lintian), installing,
//! removing and purging it, each step checked. The two checks say only what differs: the
//! names, the files, and what to do with the installed program.

use std::path::Path;
use std::process::Command;

use crate::{ensure, ok, output, run};

/// Whether `name` is in the `getent` database `database` (`passwd`, `group`).
pub(crate) fn getent(database: &str, name: &str) -> bool {
    Command::new("getent")
        .args([database, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An error if `package` is installed here: deb-check would replace and purge it, and with
/// it what it keeps (`keeps`, e.g. "its token").
pub(crate) fn refuse_if_installed(package: &str, keeps: &str) -> Result<(), String> {
    let installed = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
    ensure(
        !String::from_utf8_lossy(&installed.stdout).contains("install ok installed"),
        || {
            format!(
                "the {package} package is installed on this machine; deb-check would replace \
                 and purge it (with {keeps}): remove it first"
            )
        },
    )
}

/// What a package must hold, for [`inspect`].
pub(crate) struct Expected<'a> {
    pub(crate) package: &'a str,
    /// Text `dpkg-deb --info` must show (fields, dependencies, maintainer scripts).
    pub(crate) info: &'a [&'a str],
    /// The one conffile.
    pub(crate) conffile: &'a str,
    /// Files (`./usr/bin/...`) and the mode and owner `dpkg-deb --contents` shows them with.
    pub(crate) files: &'a [(&'a str, &'a str)],
}

/// The package's metadata, scripts and contents, then `lintian --fail-on error`.
pub(crate) fn inspect(file: &Path, expected: &Expected<'_>) -> Result<(), String> {
    let info = ok(
        "dpkg-deb --info",
        &output(Command::new("dpkg-deb").arg("--info").arg(file))?,
    )?;
    for needle in expected.info {
        ensure(info.contains(needle), || {
            format!("dpkg-deb --info lacks `{needle}`:\n{info}")
        })?;
    }
    let conffiles = ok(
        "dpkg-deb --info conffiles",
        &output(
            Command::new("dpkg-deb")
                .arg("--info")
                .arg(file)
                .arg("conffiles"),
        )?,
    )?;
    ensure(conffiles.trim() == expected.conffile, || {
        format!("conffiles: {conffiles}")
    })?;
    let contents = ok(
        "dpkg-deb --contents",
        &output(Command::new("dpkg-deb").arg("--contents").arg(file))?,
    )?;
    for (path, mode) in expected.files {
        let line = contents
            .lines()
            .find(|l| l.ends_with(path))
            .ok_or_else(|| format!("the package lacks {path}:\n{contents}"))?;
        ensure(line.starts_with(mode), || {
            format!("{path}: expected {mode}, got {line}")
        })?;
    }
    run(
        &format!("lintian --fail-on error ({})", expected.package),
        Command::new("lintian")
            .args([
                "--fail-on",
                "error",
                "--allow-root",
                "--tag-display-limit",
                "0",
            ])
            .arg(file),
    )
}

/// `dpkg -i`.
pub(crate) fn install(file: &Path) -> Result<(), String> {
    ok(
        "dpkg -i",
        &output(Command::new("dpkg").arg("-i").arg(file))?,
    )
    .map(drop)
}

/// `dpkg -r`: the program goes, the conffile stays (only a purge may remove it).
pub(crate) fn remove(package: &str, program: &str, conffile: &str) -> Result<(), String> {
    ok(
        "dpkg -r",
        &output(Command::new("dpkg").args(["-r", package]))?,
    )?;
    ensure(!Path::new(program).exists(), || {
        format!("dpkg -r left {program}")
    })?;
    ensure(Path::new(conffile).exists(), || {
        "dpkg -r removed the conffile (only purge may)".to_owned()
    })
}

/// `dpkg --purge`, run whatever `installed` (what was done with the package installed)
/// says, so that the machine is left as it was; then nothing of `leftovers` (paths) nor the
/// user named like the package may be left. `installed`'s error comes first.
pub(crate) fn purge_after(
    installed: Result<(), String>,
    package: &str,
    leftovers: &[&str],
) -> Result<(), String> {
    let purge = output(Command::new("dpkg").args(["--purge", package]));
    installed?;
    ok(&format!("dpkg --purge {package}"), &purge?)?;
    for path in leftovers {
        ensure(!Path::new(path).exists(), || format!("purge left {path}"))?;
    }
    ensure(!getent("passwd", package), || {
        format!("purge left the {package} user")
    })
}
