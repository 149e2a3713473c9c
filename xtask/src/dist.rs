//! `cargo xtask dist [--target TRIPLE] [--verifier-only]`: a release tarball and a Debian package
//! (`codereader_<version>_<arch>.deb`, see `deb.rs`) of the device program, and (for this
//! machine) the verifier service's package (`codereader-verifier_<version>_<arch>.deb`, see
//! `deb_verifier.rs`).
//!
//! The tarball `target/dist/codereader-<version>-<target>.tar.gz` unpacks to a prefix
//! (`/usr`, `/usr/local` or `/opt/codereader`):
//!
//! ```text
//! bin/codereader
//! share/codereader/voices/<lang>/...      the voice packs (found relative to the binary)
//! share/doc/codereader/                   config.example.toml, PACKAGING.md, licences
//! lib/systemd/system/codereader.service
//! ```
//!
//! The build is reproducible from the last commit's time (`SOURCE_DATE_EPOCH`).
//!
//! For `aarch64-unknown-linux-gnu` (Raspberry Pi OS 64-bit) on an x86-64 Debian machine the
//! task cross-compiles: it installs Debian's `gcc-aarch64-linux-gnu` and
//! `libc6-dev-arm64-cross`, downloads the arm64 build of the one C library the program
//! links (ALSA's; espeak-ng is opened at run time) into a private sysroot under
//! `target/dist/` without changing the machine's dpkg architectures, and points the linker
//! and pkg-config at it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, packages, run};
use crate::{root, target_dir};

const PI_TARGET: &str = "aarch64-unknown-linux-gnu";

/// arm64 packages whose libraries and headers the cross link needs: ALSA's, for cpal
/// (`libasound.so.2` needs only the C library). The C library itself comes from Debian's
/// `libc6-dev-arm64-cross`: the arm64 `libc6-dev` names absolute paths in its linker scripts,
/// which would point the linker at the host's `/lib`.
const ARM64_LIBS: &[&str] = &["libasound2", "libasound2-dev"];

fn capture(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn host_target() -> String {
    capture(Command::new("rustc").arg("-vV"))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "x86_64-unknown-linux-gnu".to_owned())
}

pub(crate) fn dist(args: &[String]) -> Result<(), String> {
    let mut target = host_target();
    let mut verifier_only = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--target" => {
                target = rest.next().ok_or("--target needs a target triple")?.clone();
            }
            "--verifier-only" => verifier_only = true,
            other => return Err(format!("dist: unknown argument '{other}'")),
        }
    }
    let epoch = capture(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(root()),
    )
    .unwrap_or_else(|| "0".to_owned());
    let cross = target != host_target();
    if verifier_only {
        // A server's package needs neither the speech libraries nor the voices.
        return verifier_package(&target, &epoch, cross);
    }
    packages::ensure(packages::DEMO)?;
    let mut build = cargo();
    build
        .args(["build", "--release", "--locked", "--package", "codereader"])
        .env("SOURCE_DATE_EPOCH", &epoch);
    if cross {
        if target != PI_TARGET {
            return Err(format!(
                "dist: cross builds are set up for {PI_TARGET} only, not {target}"
            ));
        }
        prepare_pi_cross(&mut build)?;
        build.args(["--target", &target]);
    }
    run(&format!("release build for {target}"), &mut build)?;
    let built = if cross {
        target_dir().join(&target).join("release/codereader")
    } else {
        target_dir().join("release/codereader")
    };
    package(&built, &target, &epoch, cross)?;
    verifier_package(&target, &epoch, cross)
}

/// The verifier service's `.deb` (`deb_verifier.rs`), for this machine only: it runs on
/// servers, not on the Pi, so a cross build of the device skips it.
fn verifier_package(target: &str, epoch: &str, cross: bool) -> Result<(), String> {
    if cross {
        println!("xtask: the verifier's package is built for this machine only (not {target})");
        return Ok(());
    }
    run(
        "release build of the verifier",
        cargo()
            .args(["build", "--release", "--locked", "--package"])
            .args(["codereader-verifier-server", "--bin", "codereader-verifier"])
            .env("SOURCE_DATE_EPOCH", epoch),
    )?;
    let deb = crate::deb_verifier::build(
        &target_dir().join("release/codereader-verifier"),
        crate::deb::debian_arch(target)?,
        "strip",
        epoch,
        &target_dir().join("dist"),
        crate::deb_verifier::Compression::Release,
    )?;
    println!("xtask: wrote {}", deb.display());
    Ok(())
}

/// Installs the cross toolchain, builds the arm64 sysroot and sets the environment.
fn prepare_pi_cross(build: &mut Command) -> Result<(), String> {
    packages::ensure(packages::DIST_PI)?;
    let installed =
        capture(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l == PI_TARGET) {
        run(
            "installing the Rust standard library for the Pi",
            Command::new("rustup").args(["target", "add", PI_TARGET]),
        )
        .map_err(|e| {
            format!("{e}\n(without network access to the Rust toolchain server, build on the Pi itself: see crates/device/PACKAGING.md)")
        })?;
    }
    let sysroot = target_dir().join("dist/sysroot-arm64");
    if !sysroot
        .join("usr/lib/aarch64-linux-gnu/libasound.so")
        .exists()
    {
        build_sysroot(&sysroot)?;
    }
    let lib = sysroot.join("usr/lib/aarch64-linux-gnu");
    let lib2 = sysroot.join("lib/aarch64-linux-gnu");
    build
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            format!(
                "-C link-arg=-L{l} -C link-arg=-Wl,-rpath-link,{l} -C link-arg=-Wl,-rpath-link,{l2}",
                l = lib.display(),
                l2 = lib2.display()
            ),
        )
        .env("PKG_CONFIG_ALLOW_CROSS", "1")
        .env("PKG_CONFIG_SYSROOT_DIR", &sysroot)
        .env(
            "PKG_CONFIG_LIBDIR",
            format!(
                "{}:{}",
                lib.join("pkgconfig").display(),
                sysroot.join("usr/share/pkgconfig").display()
            ),
        );
    Ok(())
}

/// Downloads the arm64 packages with a private apt state (the machine's dpkg architectures
/// and package lists stay as they are) and unpacks them into `sysroot`.
fn build_sysroot(sysroot: &Path) -> Result<(), String> {
    let apt_dir = target_dir().join("dist/apt-arm64");
    let debs = apt_dir.join("debs");
    for dir in [
        apt_dir.join("lists/partial"),
        apt_dir.join("cache/archives/partial"),
        debs.clone(),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let apt_options = |command: &mut Command| {
        command
            .arg("-o")
            .arg("APT::Architecture=arm64")
            .arg("-o")
            .arg("APT::Architectures::=arm64")
            .arg("-o")
            .arg(format!(
                "Dir::State::Lists={}",
                apt_dir.join("lists").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt_dir.join("cache").display()))
            .arg("-o")
            .arg("Dir::State::status=/dev/null")
            .env("DEBIAN_FRONTEND", "noninteractive");
    };
    let mut update = Command::new("apt-get");
    apt_options(&mut update);
    update.args(["-q", "update"]);
    run("apt-get update (arm64, private lists)", &mut update)?;
    let mut download = Command::new("apt-get");
    apt_options(&mut download);
    download.arg("download").args(ARM64_LIBS).current_dir(&debs);
    run("downloading arm64 libraries", &mut download)?;
    let entries = std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(
                &format!("unpacking {}", path.display()),
                Command::new("dpkg-deb").arg("-x").arg(&path).arg(sysroot),
            )?;
        }
    }
    Ok(())
}

fn package(binary: &Path, target: &str, epoch: &str, cross: bool) -> Result<(), String> {
    let name = format!("codereader-{}-{target}", crate::VERSION);
    let dist = target_dir().join("dist");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    }
    let device = root().join("crates/device");
    let copies: Vec<(PathBuf, PathBuf)> = vec![
        (binary.to_path_buf(), stage.join("bin/codereader")),
        (
            device.join("packaging/codereader.service"),
            stage.join("lib/systemd/system/codereader.service"),
        ),
        (
            device.join("config.example.toml"),
            stage.join("share/doc/codereader/config.example.toml"),
        ),
        (
            device.join("PACKAGING.md"),
            stage.join("share/doc/codereader/PACKAGING.md"),
        ),
        (
            root().join("README.md"),
            stage.join("share/doc/codereader/README.md"),
        ),
    ];
    for (from, to) in &copies {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::copy(from, to).map_err(|e| format!("copy {}: {e}", from.display()))?;
    }
    std::fs::create_dir_all(stage.join("share/codereader"))
        .map_err(|e| format!("{}: {e}", stage.display()))?;
    copy_tree(&root(), &stage)?;
    let strip = if cross {
        "aarch64-linux-gnu-strip"
    } else {
        "strip"
    };
    if Command::new(strip)
        .arg(stage.join("bin/codereader"))
        .status()
        .map_or(true, |s| !s.success())
    {
        println!("xtask: note: {strip} failed; the binary keeps its symbols");
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    run(
        "writing the tarball",
        Command::new("tar")
            .arg("--sort=name")
            .arg(format!("--mtime=@{epoch}"))
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&dist)
            .arg(&name),
    )?;
    println!("xtask: wrote {}", tarball.display());
    let deb = crate::deb::build(&crate::deb::Deb {
        binary,
        arch: crate::deb::debian_arch(target)?,
        strip,
        voices: &root().join("voices"),
        epoch,
        out_dir: &dist,
    })?;
    println!("xtask: wrote {}", deb.display());
    Ok(())
}

/// Renders every voice's clips (the device plays clips; without them a flite voice such as
/// English's default would fall back to espeak-ng), then copies the voice packs and the
/// licence texts.
fn copy_tree(root: &Path, stage: &Path) -> Result<(), String> {
    crate::voices(&[])?;
    run(
        "copying voice packs",
        Command::new("cp")
            .arg("-r")
            .arg(root.join("voices"))
            .arg(stage.join("share/codereader/voices")),
    )?;
    run(
        "copying licences",
        Command::new("cp")
            .arg("-r")
            .arg(root.join("LICENSES"))
            .arg(stage.join("share/doc/codereader/LICENSES")),
    )
}
