//! The Debian packages each task needs, and installing the missing ones.
//!
//! As root, missing packages are installed with `apt-get`; otherwise the exact
//! `sudo apt-get install ...` line is printed and the task stops, so nothing is left
//! half-installed behind the user's back.

use std::process::{Command, Stdio};

/// What `cargo xtask demo` needs.
pub(crate) const DEMO: &[&str] = &[
    // speech: espeak-ng's library (opened at run time) and voice data; ALSA and pkg-config
    // to build cpal.
    "libespeak-ng1",
    "espeak-ng-data",
    "libasound2-dev",
    "pkg-config",
    // The English default voice's engine: the demo renders its clips before speaking.
    "flite",
];

/// What `cargo xtask dist --target aarch64-unknown-linux-gnu` needs besides [`DEMO`]: the
/// cross linker and the arm64 C library (the arm64 espeak-ng and ALSA libraries are unpacked
/// into a private sysroot, see `xtask/src/dist.rs`).
pub(crate) const DIST_PI: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];

/// What `cargo xtask test` (and so CI) needs.
pub(crate) const TEST: &[&str] = &[
    // otp: the independent implementation the cross-check runs.
    "oathtool",
    // device: `code --at` checked against pyotp too, and the real clock's checks tested
    // with the clock shifted by libfaketime.
    "python3-pyotp",
    "faketime",
    // speech: espeak-ng's library and voice data, and its header, which the test of the
    // hand-written declarations in crates/speech/src/ffi.rs compiles against; ALSA for cpal.
    "libespeak-ng-dev",
    "espeak-ng-data",
    "libasound2-dev",
    "pkg-config",
    // speech: the `espeak-ng -w` baseline the benchmark runs (built and run once by tests).
    "espeak-ng",
    // speech: the flite voices' clips (the English default) and the intelligibility test's
    // virtualenv for PocketSphinx (from PyPI).
    "flite",
    "python3-venv",
    // verifier: the store tests start a real PostgreSQL (initdb into a temp dir).
    "postgresql",
    // server: the failover test (crates/server/tests/failover.rs) runs three PostgreSQL
    // nodes under Patroni with etcd (its v2 API, through python3-etcd; etcdctl for humans).
    "patroni",
    "etcd-server",
    "etcd-client",
    "python3-etcd",
    // server: the end-to-end tests send SIGTERM/SIGHUP to the server with kill(1).
    "procps",
    // device: the braille test starts a real BRLTTY (its `tt` driver on a pseudo-terminal),
    // the desktop-voice test a real Speech Dispatcher with its espeak-ng module.
    "brltty",
    "speech-dispatcher",
    "speech-dispatcher-espeak-ng",
    // server and device: `systemd-analyze security --offline` rates the shipped systemd units
    // (installing systemd in a container is safe: it does not become PID 1 there);
    // crates/device/tests/unit_hardening.rs and crates/server/tests/packaging.rs fail without it.
    "systemd",
    // device: `--copy` is tested on a real X server (Xvfb, read back with xclip) and a real
    // Wayland compositor (sway's headless backend, read back with wl-paste); xclip and
    // wl-clipboard are also what the device copies with.
    "xvfb",
    "xclip",
    "sway",
    "wl-clipboard",
    // The PKCS#11 key-encryption key's tests (crates/verifier/tests/pkcs11.rs, the server's
    // hsm tests) make fresh SoftHSM2 tokens with softhsm2-util.
    "softhsm2",
];

/// What `cargo xtask deb-check` (run by `cargo xtask test`) needs besides [`TEST`]: the
/// Debian package checker, and the engines that render the clips it ships.
pub(crate) const DEB_CHECK: &[&str] = &["lintian", "flite", "espeak-ng-data"];

/// What `cargo xtask voices` and `cargo xtask intelligibility` need: building the speech
/// crate, the engines that render clips (espeak-ng's library, the flite command line), and a
/// Python virtualenv for the recognizer (PocketSphinx comes from PyPI into `target/`).
pub(crate) const VOICES: &[&str] = &[
    "libespeak-ng1",
    "espeak-ng-data",
    "libasound2-dev",
    "pkg-config",
    "flite",
    "python3-venv",
];

/// What `cargo xtask intelligibility` needs besides [`VOICES`]: the Festival voices it also
/// measures (no shipped voice uses Festival).
pub(crate) const INTELLIGIBILITY: &[&str] =
    &["festival", "festvox-kallpc16k", "festvox-us-slt-hts"];

/// What `cargo xtask image` needs on the building machine: the root file system from
/// Debian's packages, the disk assembled without mounting anything, and its block map (so
/// `bmaptool copy` writes a card with only the blocks in use).
pub(crate) const IMAGE: &[&str] = &[
    "mmdebstrap",
    "fdisk",
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "bmap-tools",
];

/// What an arm64 image needs besides [`IMAGE`]: the arm64 packages' maintainer scripts run
/// under emulation (`mmdebstrap` checks with `arch-test` that arm64 programs can run here).
pub(crate) const IMAGE_ARM64: &[&str] = &["qemu-user-static", "binfmt-support", "arch-test"];

/// What `cargo xtask system-test` needs besides [`IMAGE`]: the UEFI firmware the image boots
/// with, and (from [`BACKPORTS`]) QEMU itself. The test image's `gpio-sim` module
/// (`xtask/src/gpio_sim.rs`) is built from the kernel's source package with `make` and
/// stripped with binutils' `strip`; it also needs `linux-headers-<the image's kernel>`, whose
/// name changes with the kernel's ABI, so that one is installed by name when it is known.
pub(crate) const SYSTEM_TEST: &[&str] =
    &["ovmf", "oathtool", "linux-source-6.1", "make", "binutils"];

/// Packages taken from `bookworm-backports`: QEMU 10, because these machines carry
/// backports' `qemu-utils` 10, which bookworm's `qemu-system-x86` 7.2 cannot be installed
/// beside. [`ensure_backports`] adds the suite to apt's sources when it is missing.
/// `qemu-utils` (`qemu-img`, for the test's copy-on-write disk) is named too: QEMU only
/// recommends it, and recommendations are not installed.
pub(crate) const BACKPORTS: &[&str] = &["qemu-system-x86", "qemu-utils"];

/// What `cargo xtask system-test --arch arm64` takes from `bookworm-backports` besides
/// [`BACKPORTS`]: `qemu-system-aarch64` (its `virt` board direct-boots the image's kernel,
/// so no UEFI firmware is needed).
pub(crate) const BACKPORTS_ARM64: &[&str] = &["qemu-system-arm"];

/// apt's sources file this module writes for backports.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs whatever of `packages` is missing.
pub(crate) fn ensure(packages: &[&str]) -> Result<(), String> {
    install(packages, None)
}

/// Installs whatever of `packages` is missing from `bookworm-backports`, adding that suite
/// (Debian's own archive, pinned low by its release file as always: nothing else is taken
/// from it) to apt's sources first when no source names it.
pub(crate) fn ensure_backports(packages: &[&str]) -> Result<(), String> {
    if packages.iter().all(|p| installed(p)) {
        return Ok(());
    }
    let configured = ["/etc/apt/sources.list"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(
            std::fs::read_dir("/etc/apt/sources.list.d")
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path()),
        )
        .filter(|p| p.extension().is_none_or(|x| x == "list" || x == "sources"))
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("bookworm-backports")));
    if !configured {
        if !is_root() {
            return Err(format!(
                "QEMU comes from bookworm-backports; add it to apt's sources as \
                 {BACKPORTS_SOURCES} and install with:\n  \
                 sudo apt-get install -y -t bookworm-backports {}",
                packages.join(" ")
            ));
        }
        println!("xtask: adding bookworm-backports to apt's sources ({BACKPORTS_SOURCES})");
        std::fs::write(
            BACKPORTS_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .map_err(|e| format!("{BACKPORTS_SOURCES}: {e}"))?;
    }
    install(packages, Some("bookworm-backports"))
}

fn install(packages: &[&str], release: Option<&str>) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let from = release.map(|r| format!("-t {r} ")).unwrap_or_default();
    if !is_root() {
        return Err(format!(
            "missing Debian packages; install them with:\n  sudo apt-get install -y {from}{list}"
        ));
    }
    println!("xtask: installing Debian packages: {list}");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    apt(&["-o", "DPkg::Lock::Timeout=600", "update", "-q"])?;
    // Wait for a concurrent apt/dpkg (unattended upgrades, another task) instead of failing.
    let mut args = vec![
        "-o",
        "DPkg::Lock::Timeout=600",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    if let Some(release) = release {
        args.extend(["-t", release]);
    }
    args.extend(&missing);
    let status = apt(&args)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get install {list} failed ({status})"))
    }
}
