//! The Debian package of the device program, built with `dpkg-deb` (no debhelper, no
//! cargo-deb: the layout is small and fixed, and xtask stays standard-library only).
//!
//! ```text
//! usr/bin/codereader                          the program, stripped
//! usr/share/codereader/voices/<lang>/...      voice packs with their rendered clips
//! usr/share/doc/codereader/                   copyright, changelog.gz, README, PACKAGING,
//!                                             config.example.toml
//! etc/codereader/config.toml                  conffile (the documented example)
//! lib/systemd/system/codereader.service       hardened unit (enabled, started only where
//!                                             systemd runs)
//! lib/udev/rules.d/60-codereader.rules        keypads and GPIO lines for the service user
//! DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}
//! ```
//!
//! The maintainer scripts live in `crates/device/packaging/debian/`; `postinst` creates the
//! `codereader` user and adds it to those of `audio`, `input` and `gpio` that exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;
use crate::run;

/// Runtime dependencies of the program. The libraries are those `readelf -d` lists as
/// NEEDED for the binary (the versions are the oldest Debian 12 / Raspberry Pi OS builds
/// that provide the symbols it uses); `passwd` provides useradd for `postinst`.
const DEPENDS: &str = "libc6 (>= 2.34), libgcc-s1 (>= 4.2), libasound2 (>= 1.0.16), \
                       libespeak-ng1 (>= 1.49.0), espeak-ng-data, passwd";

/// What goes into one package.
pub(crate) struct Deb<'a> {
    /// The program to ship (stripped into the package with `strip`).
    pub(crate) binary: &'a Path,
    /// Debian architecture: `amd64` or `arm64`.
    pub(crate) arch: &'a str,
    /// The `strip` that understands the binary.
    pub(crate) strip: &'a str,
    /// The voice packs to ship (each `<tag>/voice.toml`, with `clips/` rendered).
    pub(crate) voices: &'a Path,
    /// Build time (`SOURCE_DATE_EPOCH`), for the changelog's date and file times.
    pub(crate) epoch: &'a str,
    /// Where the `.deb` goes.
    pub(crate) out_dir: &'a Path,
}

/// The Debian architecture of a Rust target triple.
pub(crate) fn debian_arch(target: &str) -> Result<&'static str, String> {
    match target.split('-').next() {
        Some("x86_64") => Ok("amd64"),
        Some("aarch64") => Ok("arm64"),
        _ => Err(format!("no Debian architecture known for {target}")),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Copies `from` to `to` with the given mode, creating the parent directories.
pub(crate) fn install(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::copy(from, to).map_err(io(from))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(io(to))
}

pub(crate) fn write(to: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(to, text).map_err(io(to))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(io(to))
}

/// Files under `dir` (recursively), sorted, with their sizes.
pub(crate) fn files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            files(&path, out)?;
        } else {
            out.push((path, meta.len()));
        }
    }
    Ok(())
}

/// Builds the package and returns its path.
pub(crate) fn build(deb: &Deb<'_>) -> Result<PathBuf, String> {
    let version = crate::VERSION.to_owned();
    let stage = deb.out_dir.join(format!("deb-{}", deb.arch));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(io(&stage))?;
    }
    let device = root().join("crates/device");
    let packaging = device.join("packaging");
    let doc = stage.join("usr/share/doc/codereader");
    install(deb.binary, &stage.join("usr/bin/codereader"), 0o755)?;
    run(
        "stripping the program",
        Command::new(deb.strip)
            .arg("--strip-unneeded")
            .arg(stage.join("usr/bin/codereader")),
    )?;
    for (from, to, mode) in [
        (
            packaging.join("codereader.service"),
            stage.join("lib/systemd/system/codereader.service"),
            0o644,
        ),
        (
            packaging.join("60-codereader.rules"),
            stage.join("lib/udev/rules.d/60-codereader.rules"),
            0o644,
        ),
        (
            device.join("config.example.toml"),
            stage.join("etc/codereader/config.toml"),
            0o644,
        ),
        (
            device.join("config.example.toml"),
            doc.join("config.example.toml"),
            0o644,
        ),
        (device.join("PACKAGING.md"), doc.join("PACKAGING.md"), 0o644),
        (root().join("README.md"), doc.join("README.md"), 0o644),
    ] {
        install(&from, &to, mode)?;
    }
    install_debian_files(&packaging, &stage, &doc)?;
    copy_voices(deb.voices, &stage.join("usr/share/codereader/voices"))?;
    changelog(&doc, "codereader", &version, deb.epoch)?;

    let file = deb
        .out_dir
        .join(format!("codereader_{version}_{}.deb", deb.arch));
    seal(
        &stage,
        &Control {
            package: "codereader",
            version: &version,
            arch: deb.arch,
            depends: DEPENDS,
            section: "misc",
            description: "talking one-time-code token for blind and partially sighted users\n \
                          At the press of a key, codereader speaks the current one-time code (TOTP or\n \
                          HOTP) of the token enrolled on it, digit by digit, in Danish or English, on\n \
                          the sound card. It runs as a hardened system service reading keypads and\n \
                          GPIO buttons, and keeps the token's secret in /var/lib/codereader.\n",
            conffiles: &["/etc/codereader/config.toml"],
        },
        &["-Zxz"],
        &file,
        deb.epoch,
    )?;
    Ok(file)
}

/// Copies the voice packs: each pack's `voice.toml` and its clips (WAVs and `clips.toml`),
/// nothing else a working tree may hold there.
fn copy_voices(from: &Path, to: &Path) -> Result<(), String> {
    let mut all = Vec::new();
    files(from, &mut all)?;
    for (path, _) in all {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let shipped = name == "voice.toml"
            || name == "clips.toml"
            || (name.ends_with(".wav") && path.components().any(|c| c.as_os_str() == "clips"));
        if shipped {
            let relative = path.strip_prefix(from).map_err(|e| e.to_string())?;
            install(&path, &to.join(relative), 0o644)?;
        }
    }
    Ok(())
}

/// `changelog.gz`, which Debian requires of every package (a native package's one entry).
pub(crate) fn changelog(
    doc: &Path,
    package: &str,
    version: &str,
    epoch: &str,
) -> Result<(), String> {
    let date = Command::new("date")
        .args(["-R", "-u", "-d"])
        .arg(format!("@{epoch}"))
        .output()
        .map_err(|e| format!("date: {e}"))?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    let file = doc.join("changelog");
    write(
        &file,
        &format!(
            "{package} ({version}) unstable; urgency=medium\n\n  \
             * Release {version}, built by `cargo xtask dist`.\n\n \
             -- codereader developers <codereader@example.org>  {date}\n"
        ),
        0o644,
    )?;
    run(
        &format!("compressing {package}'s changelog"),
        Command::new("gzip").args(["-9n", "--force"]).arg(&file),
    )
}

/// Installs what a package's `packaging/debian/` holds: `copyright` into `doc`, and the
/// maintainer scripts (`postinst`, `prerm`, `postrm`) into the stage's `DEBIAN/`.
pub(crate) fn install_debian_files(
    packaging: &Path,
    stage: &Path,
    doc: &Path,
) -> Result<(), String> {
    let debian = packaging.join("debian");
    install(&debian.join("copyright"), &doc.join("copyright"), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &debian.join(script),
            &stage.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    Ok(())
}

/// What `DEBIAN/control` says of a package, beside what [`seal`] measures.
pub(crate) struct Control<'a> {
    pub(crate) package: &'a str,
    pub(crate) version: &'a str,
    pub(crate) arch: &'a str,
    pub(crate) depends: &'a str,
    pub(crate) section: &'a str,
    /// The summary line, then the long description's lines, each starting with a space and
    /// ending with a newline.
    pub(crate) description: &'a str,
    pub(crate) conffiles: &'a [&'a str],
}

/// Finishes a staged package: `DEBIAN/control` (with the Installed-Size of what `stage`
/// holds under etc, lib and usr), `conffiles` and `md5sums`; then builds `file` with
/// dpkg-deb, compressed as `compress` says, dated `epoch`.
pub(crate) fn seal(
    stage: &Path,
    control: &Control<'_>,
    compress: &[&str],
    file: &Path,
    epoch: &str,
) -> Result<(), String> {
    let mut payload = Vec::new();
    for top in ["etc", "lib", "usr"] {
        files(&stage.join(top), &mut payload)?;
    }
    let installed_kib: u64 = payload.iter().map(|(_, len)| len.div_ceil(1024)).sum();
    let Control {
        package,
        version,
        arch,
        depends,
        section,
        description,
        conffiles,
    } = control;
    write(
        &stage.join("DEBIAN/control"),
        &format!(
            "Package: {package}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: codereader developers <codereader@example.org>\n\
             Installed-Size: {installed_kib}\n\
             Depends: {depends}\n\
             Section: {section}\n\
             Priority: optional\n\
             Description: {description}"
        ),
        0o644,
    )?;
    let conffiles: String = conffiles.iter().map(|c| format!("{c}\n")).collect();
    write(&stage.join("DEBIAN/conffiles"), &conffiles, 0o644)?;
    md5sums(stage, &payload)?;
    run(
        &format!("building {}", file.display()),
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .args(compress)
            .arg("--build")
            .arg(stage)
            .arg(file)
            .env("SOURCE_DATE_EPOCH", epoch),
    )
}

/// `DEBIAN/md5sums`: every shipped file but the conffiles (dpkg tracks those itself).
pub(crate) fn md5sums(stage: &Path, payload: &[(PathBuf, u64)]) -> Result<(), String> {
    let relative: Vec<String> = payload
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(stage).ok())
        .filter(|p| !p.starts_with("etc"))
        .map(|p| p.display().to_string())
        .collect();
    let out = Command::new("md5sum")
        .args(&relative)
        .current_dir(stage)
        .output()
        .map_err(|e| format!("md5sum: {e}"))?;
    if !out.status.success() {
        return Err(format!("md5sum failed ({})", out.status));
    }
    write(
        &stage.join("DEBIAN/md5sums"),
        &String::from_utf8_lossy(&out.stdout),
        0o644,
    )
}
