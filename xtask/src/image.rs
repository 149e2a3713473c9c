//! `cargo xtask image [--arch amd64|arm64]`: the appliance, a bootable Debian bookworm disk
//! image with the device program (`crates/device/PACKAGING.md`, "The appliance image").
//!
//! The root file system comes from `mmdebstrap` with Debian's packages (the mirrors apt is
//! configured with here), is cached as a tarball by the hash of what it is made of, and
//! gets our `.deb` installed with `dpkg` in a chroot. The disk (MBR, as a Raspberry Pi's
//! firmware wants) is assembled from file-system images made without mounting anything
//! (`mkfs.vfat` + `mcopy`, `mkfs.ext4 -d`), so this runs in a container (the one mount is
//! the arm64 image's `/proc` for raspi-firmware's hook, in a private mount namespace, as
//! `mmdebstrap` itself does):
//!
//! ```text
//! p1  boot   FAT32  128 MiB  amd64: systemd-boot (EFI/BOOT/BOOTX64.EFI), kernel, initrd
//!                   256 MiB  arm64: what raspi-firmware's kernel hook writes to
//!                            /boot/firmware (the Pi's firmware, config.txt, cmdline.txt,
//!                            kernel, initrd, device trees); mounted read-only there
//! p2  root   ext4   mounted read-only: a power cut cannot damage the system
//! p3  state  ext4    64 MiB  /state: the token and settings (/var/lib/codereader) and
//!                            systemd's state (timesync clock, random seed), bind-mounted
//! ```
//!
//! The test image (`cargo xtask system-test`) is the same plus a control agent on a
//! virtio-serial port and the test's config; the shipped image has neither.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::target_dir;
use crate::{packages, run};

/// Bump when the way images are made changes (the cache key includes it).
const FORMAT: &str = "codereader-image-1";

/// Where built root file systems and images are kept between runs (outside the clone, so a
/// fresh clone on the same machine reuses them).
pub(crate) const CACHE: &str = "/var/cache/codereader/images";

/// The Debian packages of the root file system, besides `mmdebstrap`'s minbase.
fn packages_for(arch: Arch) -> Vec<&'static str> {
    let mut list = vec![
        "systemd",
        "systemd-sysv",
        "udev",
        "systemd-timesyncd",
        "initramfs-tools",
        "kmod",
        "e2fsprogs",
        "adduser",
        // Sets the sound card's mixer at boot (a fresh card starts muted) and keeps the
        // user's levels on the state partition.
        "alsa-utils",
        // What the .deb depends on, so that `dpkg -i` finds it all.
        "libespeak-ng1",
        "espeak-ng-data",
        "libasound2",
    ];
    match arch {
        Arch::Amd64 => list.extend(["linux-image-amd64", "systemd-boot-efi"]),
        // No boot loader: a Pi's firmware loads the kernel and initrd that raspi-firmware's
        // hooks copy to the firmware partition, and QEMU's `virt` loads the same two files.
        Arch::Arm64 => list.extend(["linux-image-arm64", "raspi-firmware"]),
    }
    list
}

/// Files `dpkg` leaves out of the image (kept out on upgrades too, as
/// `/etc/dpkg/dpkg.cfg.d/` says): documentation and translations, and the kernel modules of
/// hardware an appliance does not have (graphics, wireless, cameras, most file systems and
/// network protocols). The sound, USB, input, GPIO and block drivers stay.
fn dpkg_excludes(arch: Arch) -> Vec<String> {
    let mut rules = vec![
        "path-exclude=/usr/share/man/*".to_owned(),
        "path-exclude=/usr/share/locale/*".to_owned(),
        "path-include=/usr/share/locale/locale.alias".to_owned(),
        "path-exclude=/usr/share/doc/*".to_owned(),
        "path-include=/usr/share/doc/*/copyright".to_owned(),
    ];
    let modules = "/lib/modules/*/kernel";
    let mut dirs = vec![
        "drivers/net/wireless",
        "drivers/net/ethernet",
        "drivers/infiniband",
        "drivers/media",
        "drivers/staging",
        "net",
        "fs",
    ];
    if arch == Arch::Amd64 {
        // A Pi's HDMI sound needs its graphics driver (vc4).
        dirs.push("drivers/gpu");
    }
    for dir in dirs {
        rules.push(format!("path-exclude={modules}/{dir}/*"));
    }
    let mut keeps = vec![
        "fs/ext4/*",
        "fs/autofs/*",
        "fs/jbd2/*",
        "fs/mbcache.ko",
        "fs/fat/*",
        "fs/nls/*",
        "fs/9p/*",
        "net/9p/*",
    ];
    if arch == Arch::Arm64 {
        // A Pi's headphone jack: the firmware's audio service (snd-bcm2835, vchiq).
        keeps.push("drivers/staging/vc04_services/*");
    }
    for keep in keeps {
        rules.push(format!("path-include={modules}/{keep}"));
    }
    rules
}

/// Which image.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub(crate) fn parse(name: &str) -> Result<Arch, String> {
        match name {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            other => Err(format!("unknown architecture '{other}' (amd64 or arm64)")),
        }
    }

    pub(crate) fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// What goes into an image besides the base system.
pub(crate) struct Spec<'a> {
    pub(crate) arch: Arch,
    /// The device program's package.
    pub(crate) deb: &'a Path,
    /// `/etc/codereader/config.toml` of the image.
    pub(crate) config: &'a str,
    /// Extra files (path inside the image, content, mode) and units to enable: the test
    /// image's agent.
    pub(crate) extra: &'a [(&'a str, Vec<u8>, u32)],
    pub(crate) enable: &'a [&'a str],
    /// Name of the image file in the cache (`codereader-amd64`, `codereader-test-amd64`).
    pub(crate) name: &'a str,
}

/// The config the shipped image starts with: English, spoken, no terminal (a keypad is
/// taken when it appears).
pub(crate) const SHIPPED_CONFIG: &str = "\
# codereader on the appliance image (crates/device/PACKAGING.md, \"The appliance image\").
# Every key of /usr/share/doc/codereader/config.example.toml can be set here. The root file
# system is read-only: `mount -o remount,rw /` before editing, then reboot.
language = \"en\"
outputs = [\"speech\"]

[input]
terminal = false
";

pub(crate) fn image(args: &[String]) -> Result<(), String> {
    let mut arch = Arch::Amd64;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--arch" => arch = Arch::parse(rest.next().ok_or("--arch needs amd64 or arm64")?)?,
            other => return Err(format!("image: unknown argument '{other}'")),
        }
    }
    // The base system first: for arm64 it is the slow part (its maintainer scripts run under
    // emulation), and a failure there is better known before the release build.
    packages::ensure(packages::IMAGE)?;
    base(arch)?;
    let deb = release_deb(arch)?;
    let name = format!("codereader-{}", arch.debian());
    let built = build(&Spec {
        arch,
        deb: &deb,
        config: SHIPPED_CONFIG,
        extra: &[],
        enable: &[],
        name: &name,
    })?;
    let out = target_dir().join("image");
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dest = out.join(format!("{name}.img"));
    run(
        "copying the image",
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&built)
            .arg(&dest),
    )?;
    let bmap = dest.with_extension("bmap");
    run(
        "the block map (bmaptool)",
        Command::new("bmaptool")
            .args(["create", "-o"])
            .arg(&bmap)
            .arg(&dest),
    )?;
    println!(
        "xtask: image: {} ({} MiB) and its block map {}; write it to a card with \
         `bmaptool copy` or `dd` (crates/device/PACKAGING.md, \"Writing it to an SD card\")",
        dest.display(),
        fs::metadata(&dest).map(|m| m.len() >> 20).unwrap_or(0),
        bmap.display()
    );
    Ok(())
}

/// The release package for `arch` (`cargo xtask dist`, cross-built for arm64), with every
/// voice at every speed step.
pub(crate) fn release_deb(arch: Arch) -> Result<PathBuf, String> {
    let mut dist_args = Vec::new();
    if arch == Arch::Arm64 {
        dist_args.extend([
            "--target".to_owned(),
            "aarch64-unknown-linux-gnu".to_owned(),
        ]);
    }
    crate::dist::dist(&dist_args)?;
    Ok(target_dir().join("dist").join(format!(
        "codereader_{}_{}.deb",
        crate::VERSION.to_owned(),
        arch.debian()
    )))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

pub(crate) fn hash_hex(parts: &[&[u8]]) -> String {
    // Two differently seeded std hashes: 128 bits is plenty for a cache key of our own
    // inputs (not an adversary's).
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    0xc0de_u32.hash(&mut b);
    for p in parts {
        p.hash(&mut a);
        p.hash(&mut b);
    }
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

/// The base root file system as a tarball, from the cache or made with `mmdebstrap`.
pub(crate) fn base(arch: Arch) -> Result<PathBuf, String> {
    let packages = packages_for(arch).join(",");
    let excludes = dpkg_excludes(arch);
    let sources = apt_sources(arch)?;
    let key = hash_hex(&[
        FORMAT.as_bytes(),
        arch.debian().as_bytes(),
        packages.as_bytes(),
        excludes.join("\n").as_bytes(),
        sources.as_bytes(),
    ]);
    let cache = Path::new(CACHE);
    let tar = cache.join(format!("base-{}-{key}.tar", arch.debian()));
    if tar.is_file() {
        println!("xtask: base system from the cache: {}", tar.display());
        return Ok(tar);
    }
    fs::create_dir_all(cache).map_err(io(cache))?;
    if arch == Arch::Arm64 {
        packages::ensure(packages::IMAGE_ARM64)?;
        arm64_emulation()?;
    }
    let partial = tar.with_extension("tar.partial");
    let mut mm = Command::new("mmdebstrap");
    mm.args(["--variant=minbase", "--architectures", arch.debian()])
        .arg(format!("--include={packages}"));
    for rule in &excludes {
        mm.arg(format!("--dpkgopt={rule}"));
    }
    // The same rules stay in the image, so an upgrade installs no more than this did.
    mm.arg(format!(
        "--customize-hook=printf '%s\\n' {} > \"$1/etc/dpkg/dpkg.cfg.d/codereader-image\"",
        excludes
            .iter()
            .map(|r| format!("'{r}'"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    mm.args(["--format=tar", "bookworm"]).arg(&partial);
    // The machine's own apt sources (deb822 text on standard input).
    mm.arg("-");
    let started = std::time::Instant::now();
    if let Err(e) = run_with_stdin("mmdebstrap (the base system)", &mut mm, &sources) {
        // Nothing half-made stays in the shared cache.
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, &tar).map_err(io(&tar))?;
    prune(cache, &format!("base-{}-", arch.debian()), ".tar", &tar);
    println!(
        "xtask: base system built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        tar.display()
    );
    Ok(tar)
}

/// Makes arm64 programs run here through `qemu-user-static` (the packages' maintainer
/// scripts, and later raspi-firmware's hook). In a container neither the `binfmt_misc`
/// file system nor binfmt-support's service is started at boot, so both are done here.
fn arm64_emulation() -> Result<(), String> {
    let registry = Path::new("/proc/sys/fs/binfmt_misc");
    if registry.join("qemu-aarch64").exists() {
        return Ok(());
    }
    if !registry.join("register").exists() {
        run(
            "mounting binfmt_misc",
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(registry),
        )?;
    }
    run(
        "registering qemu-aarch64 with binfmt_misc",
        Command::new("update-binfmts").args(["--enable", "qemu-aarch64"]),
    )
}

/// The bookworm sources of this machine's apt (one-line or deb822 files), as one deb822
/// text for the image: Debian's main archive, updates and security, never backports. The
/// arm64 image also takes `non-free-firmware`, where bookworm keeps `raspi-firmware` (the
/// Pi's boot firmware, which Broadcom ships as binaries).
fn apt_sources(arch: Arch) -> Result<String, String> {
    let components = match arch {
        Arch::Amd64 => "main",
        Arch::Arm64 => "main non-free-firmware",
    };
    let mut text = String::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sources" || x == "list"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(content) = fs::read_to_string(&file) else {
            continue;
        };
        if file.extension().is_some_and(|x| x == "sources") {
            for stanza in content.split("\n\n") {
                let field = |name: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::trim)
                };
                let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                    continue;
                };
                if !uris.contains("debian") {
                    continue;
                }
                let suites: Vec<&str> = suites
                    .split_whitespace()
                    .filter(|s| s.starts_with("bookworm") && !s.ends_with("backports"))
                    .collect();
                if suites.is_empty() {
                    continue;
                }
                text.push_str(&format!(
                    "Types: deb\nURIs: {uris}\nSuites: {}\nComponents: {components}\n\
                     Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n",
                    suites.join(" ")
                ));
            }
        } else {
            for line in content.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"deb")
                    && words.len() >= 3
                    && words[1].contains("debian")
                    && words[2].starts_with("bookworm")
                    && !words[2].ends_with("backports")
                {
                    text.push_str(&format!(
                        "Types: deb\nURIs: {}\nSuites: {}\nComponents: {components}\n\
                         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n",
                        words[1], words[2]
                    ));
                }
            }
        }
    }
    if text.is_empty() {
        return Err("no Debian bookworm source in this machine's apt configuration".to_owned());
    }
    Ok(text)
}

fn run_with_stdin(step: &str, command: &mut Command, input: &str) -> Result<(), String> {
    use std::io::Write;
    println!("xtask: {step}");
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{step}: cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{step}: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("{step}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step}: failed ({status})"))
    }
}

/// Builds (or finds in the cache) the disk image `spec` describes; returns its path.
pub(crate) fn build(spec: &Spec<'_>) -> Result<PathBuf, String> {
    packages::ensure(packages::IMAGE)?;
    let base = base(spec.arch)?;
    let deb = fs::read(spec.deb).map_err(io(spec.deb))?;
    let layout = format!("boot {} MiB, state {STATE_MIB} MiB", boot_mib(spec.arch));
    let mut parts: Vec<&[u8]> = vec![
        FORMAT.as_bytes(),
        base.as_os_str().as_encoded_bytes(),
        &deb,
        spec.config.as_bytes(),
        spec.name.as_bytes(),
        layout.as_bytes(),
    ];
    for (path, content, _) in spec.extra {
        parts.push(path.as_bytes());
        parts.push(content);
    }
    for unit in spec.enable {
        parts.push(unit.as_bytes());
    }
    let key = hash_hex(&parts);
    let cache = Path::new(CACHE);
    let image = cache.join(format!("{}-{key}.img", spec.name));
    if image.is_file() {
        println!("xtask: image from the cache: {}", image.display());
        return Ok(image);
    }
    let work = target_dir().join("image-work").join(spec.name);
    if work.exists() {
        fs::remove_dir_all(&work).map_err(io(&work))?;
    }
    let rootfs = work.join("root");
    fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
    run(
        "unpacking the base system",
        Command::new("tar")
            .args(["-xpf"])
            .arg(&base)
            .args(["--numeric-owner", "-C"])
            .arg(&rootfs),
    )?;
    configure(&rootfs, spec)?;
    let partial = image.with_extension("img.partial");
    if let Err(e) = assemble(&rootfs, &work, spec.arch, &partial) {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, &image).map_err(io(&image))?;
    fs::remove_dir_all(&work).map_err(io(&work))?;
    prune(cache, &format!("{}-", spec.name), ".img", &image);
    println!(
        "xtask: image built: {} ({} MiB)",
        image.display(),
        fs::metadata(&image).map(|m| m.len() >> 20).unwrap_or(0)
    );
    Ok(image)
}

/// Removes the cache's older files of the same kind as `keep` (each new `.deb` makes a new
/// image of about 500 MB; only the newest is worth keeping).
fn prune(cache: &Path, prefix: &str, suffix: &str, keep: &Path) {
    let Ok(dir) = fs::read_dir(cache) else {
        return;
    };
    for path in dir.filter_map(Result::ok).map(|e| e.path()) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path != keep && name.starts_with(prefix) && name.ends_with(suffix) {
            let _ = fs::remove_file(&path);
        }
    }
}

fn write(rootfs: &Path, path: &str, content: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let file = rootfs.join(path.trim_start_matches('/'));
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::write(&file, content).map_err(io(&file))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(mode)).map_err(io(&file))
}

fn symlink(rootfs: &Path, link: &str, to: &str) -> Result<(), String> {
    let file = rootfs.join(link.trim_start_matches('/'));
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let _ = fs::remove_file(&file);
    std::os::unix::fs::symlink(to, &file).map_err(io(&file))
}

/// The file-system table: root read-only, the state partition read-write with its two
/// directories bound where the programs look, logs and temporary files in memory.
const FSTAB: &str = "\
# codereader appliance (crates/device/PACKAGING.md, \"The appliance image\")
LABEL=cr-root   /                    ext4   ro,noatime,errors=remount-ro  0 1
LABEL=cr-state  /state               ext4   rw,noatime,nodev,nosuid,noexec 0 2
/state/codereader /var/lib/codereader none bind 0 0
/state/systemd  /var/lib/systemd     none   bind 0 0
/state/alsa     /var/lib/alsa        none   bind 0 0
tmpfs           /tmp                 tmpfs  nosuid,nodev,mode=1777 0 0
tmpfs           /var/tmp             tmpfs  nosuid,nodev,mode=1777 0 0
tmpfs           /var/log             tmpfs  nosuid,nodev,noexec,mode=0755 0 0
";

/// The arm64 image's firmware partition, read-only like the root: the firmware reads it,
/// nothing at run time writes it; a kernel upgrade needs `mount -o remount,rw` of both.
const FSTAB_PI_FIRMWARE: &str = "\
LABEL=CR-BOOT   /boot/firmware       vfat   ro,noatime,nofail             0 0
";

/// What `raspi-firmware`'s kernel hook writes to `/boot/firmware` when the kernel or the
/// initramfs changes (as on Debian's own Raspberry Pi images): the Pi's boot firmware, the
/// kernel, the initrd, the device trees, `config.txt` (`kernel=`, `initramfs`) and
/// `cmdline.txt`, the latter two from `/etc/default/raspi-firmware` and the two files
/// beside it. Setting those files and running the hook here means an upgrade on the device
/// writes the same boot configuration again.
const PI_FIRMWARE_DEFAULTS: &str = "
# codereader appliance (crates/device/PACKAGING.md, \"The appliance image\"): the root by
# its label on any card or USB disk; the screen and the Pi 3/4 serial console (not probed
# on the building machine); no cma= (the hook leaves it out only when it runs on a Pi 4,
# and a Pi 4 does not boot with cma=64M).
ROOTPART=LABEL=cr-root
CONSOLES=\"tty0 ttyS1,115200\"
CMA=0
";

fn pi_firmware(rootfs: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let defaults = rootfs.join("etc/default/raspi-firmware");
    fs::OpenOptions::new()
        .append(true)
        .open(&defaults)
        .and_then(|mut f| f.write_all(PI_FIRMWARE_DEFAULTS.as_bytes()))
        .map_err(io(&defaults))?;
    // The hook's command line says `rw`; the later `ro` wins (the kernel and the
    // initramfs read the options in order).
    write(
        rootfs,
        "/etc/default/raspi-extra-cmdline",
        b"ro quiet\n",
        0o644,
    )?;
    // The headphone jack (the firmware's audio parameter for the device tree).
    write(
        rootfs,
        "/etc/default/raspi-firmware-custom",
        b"dtparam=audio=on\n",
        0o644,
    )?;
    // The hook checks that it runs in a chroot (else it wants /boot/firmware mounted):
    // `ischroot` needs /proc, mounted in a private mount namespace that ends with it.
    run(
        "raspi-firmware's hook (the firmware partition's files)",
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" \
                 env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware",
            )
            .arg(rootfs),
    )
}

fn configure(rootfs: &Path, spec: &Spec<'_>) -> Result<(), String> {
    // Our package, as apt would install it (postinst: user, groups, enabled unit).
    let inside = "/tmp/codereader.deb";
    fs::copy(spec.deb, rootfs.join(inside.trim_start_matches('/'))).map_err(io(spec.deb))?;
    run(
        "installing the codereader package in the image",
        Command::new("chroot")
            .arg(rootfs)
            .args(["dpkg", "--install", inside])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    fs::remove_file(rootfs.join(inside.trim_start_matches('/'))).map_err(io(rootfs))?;
    write(
        rootfs,
        "/etc/codereader/config.toml",
        spec.config.as_bytes(),
        0o644,
    )?;
    let mut fstab = FSTAB.to_owned();
    if spec.arch == Arch::Arm64 {
        fstab.push_str(FSTAB_PI_FIRMWARE);
        pi_firmware(rootfs)?;
    }
    write(rootfs, "/etc/fstab", fstab.as_bytes(), 0o644)?;
    write(rootfs, "/etc/hostname", b"codereader\n", 0o644)?;
    // Empty: systemd makes one at each boot on the read-only root.
    write(rootfs, "/etc/machine-id", b"", 0o444)?;
    // The journal in memory (the root is read-only; /var/log is a tmpfs).
    write(
        rootfs,
        "/etc/systemd/journald.conf.d/codereader.conf",
        b"[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n",
        0o644,
    )?;
    // No login on any console: the device is used by its keys alone.
    for unit in ["getty@.service", "serial-getty@.service", "getty.target"] {
        symlink(rootfs, &format!("/etc/systemd/system/{unit}"), "/dev/null")?;
    }
    // Nothing to upgrade from on a read-only root without network; no LVM to scrub.
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
    ] {
        symlink(rootfs, &format!("/etc/systemd/system/{unit}"), "/dev/null")?;
    }
    for (path, content, mode) in spec.extra {
        write(rootfs, path, content, *mode)?;
    }
    // Kernel modules among the extras (the test image's gpio-sim) are indexed like the
    // kernel's own, so that `modprobe` finds them and what they need.
    let mut kernels: Vec<&str> = spec
        .extra
        .iter()
        .filter(|(path, _, _)| path.ends_with(".ko"))
        .filter_map(|(path, _, _)| path.split("/lib/modules/").nth(1)?.split('/').next())
        .collect();
    kernels.sort_unstable();
    kernels.dedup();
    for kernel in kernels {
        run(
            "depmod (the extra kernel modules)",
            Command::new("chroot").arg(rootfs).args(["depmod", kernel]),
        )?;
    }
    for unit in spec.enable {
        symlink(
            rootfs,
            &format!("/etc/systemd/system/multi-user.target.wants/{unit}"),
            &format!("/etc/systemd/system/{unit}"),
        )?;
    }
    fs::create_dir_all(rootfs.join("state")).map_err(io(rootfs))?;
    Ok(())
}

/// Runs `command`, returning its standard output.
fn capture(step: &str, command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("{step}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{step}: failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const MIB: u64 = 1 << 20;
const STATE_MIB: u64 = 64;

/// The boot partition's size. A Pi's holds the firmware (20 MB), a kernel (33 MB) and an
/// initrd (21 MB), and a kernel upgrade copies the new pair before the hook deletes the old
/// one: 256 MiB leaves room for that.
fn boot_mib(arch: Arch) -> u64 {
    match arch {
        Arch::Amd64 => 128,
        Arch::Arm64 => 256,
    }
}

fn assemble(rootfs: &Path, work: &Path, arch: Arch, image: &Path) -> Result<(), String> {
    let boot_size = boot_mib(arch);
    // The boot partition's files, taken out of the root.
    let boot = work.join("boot");
    fs::create_dir_all(&boot).map_err(io(&boot))?;
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match arch {
        Arch::Amd64 => {
            let cmdline = "root=LABEL=cr-root ro rootwait console=ttyS0,115200 quiet";
            files.push((
                newest(&rootfs.join("boot"), "vmlinuz-")?,
                "vmlinuz".to_owned(),
            ));
            files.push((
                newest(&rootfs.join("boot"), "initrd.img-")?,
                "initrd.img".to_owned(),
            ));
            files.push((
                rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
                "EFI/BOOT/BOOTX64.EFI".to_owned(),
            ));
            write(
                &boot,
                "loader/loader.conf",
                b"default codereader.conf\ntimeout 0\n",
                0o644,
            )?;
            write(
                &boot,
                "loader/entries/codereader.conf",
                format!(
                    "title codereader\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n"
                )
                .as_bytes(),
                0o644,
            )?;
        }
        Arch::Arm64 => {
            // What raspi-firmware's hooks put in /boot/firmware (`pi_firmware`) is the
            // partition's content; the root keeps the empty directory to mount it on.
            let firmware = rootfs.join("boot/firmware");
            for entry in fs::read_dir(&firmware).map_err(io(&firmware))? {
                let path = entry.map_err(|e| e.to_string())?.path();
                let name = path.file_name().unwrap_or_default();
                fs::rename(&path, boot.join(name)).map_err(io(&path))?;
            }
        }
    }
    for (from, to) in &files {
        let dest = boot.join(to);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        fs::copy(from, &dest).map_err(io(from))?;
    }
    let boot_img = work.join("boot.img");
    let _ = fs::remove_file(&boot_img);
    run(
        "mkfs.vfat (boot)",
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "CR-BOOT", "-C"])
            .arg(&boot_img)
            .arg((boot_size * 1024).to_string()),
    )?;
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-p", "-m", "-i"]).arg(&boot_img);
    for entry in fs::read_dir(&boot).map_err(io(&boot))? {
        mcopy.arg(entry.map_err(|e| e.to_string())?.path());
    }
    mcopy.arg("::/");
    run("mcopy (boot files)", &mut mcopy)?;

    // The state partition: the token's directory (the service user's, 0700) and systemd's.
    let state = work.join("state");
    let ids = fs::read_to_string(rootfs.join("etc/passwd")).map_err(io(rootfs))?;
    let owner = ids
        .lines()
        .find(|l| l.starts_with("codereader:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.to_string(), f.get(3)?.to_string()))
        })
        .ok_or("the package made no codereader user in the image")?;
    fs::create_dir_all(state.join("codereader")).map_err(io(&state))?;
    run(
        "the state partition's token directory",
        Command::new("chown")
            .arg(format!("{}:{}", owner.0, owner.1))
            .arg(state.join("codereader")),
    )?;
    run(
        "chmod",
        Command::new("chmod")
            .arg("0700")
            .arg(state.join("codereader")),
    )?;
    run(
        "the state partition's systemd directory",
        Command::new("cp")
            .args(["-a"])
            .arg(rootfs.join("var/lib/systemd"))
            .arg(state.join("systemd")),
    )?;
    run(
        "the state partition's ALSA directory",
        Command::new("cp")
            .args(["-a"])
            .arg(rootfs.join("var/lib/alsa"))
            .arg(state.join("alsa")),
    )?;
    let state_img = work.join("state.img");
    run(
        "mkfs.ext4 (state)",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "cr-state", "-d"])
            .arg(&state)
            .arg(&state_img)
            .arg(format!("{STATE_MIB}M")),
    )?;

    // The root, with room to spare for an upgrade's unpacked files.
    let used: u64 = capture(
        "du (root)",
        Command::new("du").args(["-s", "-B1M"]).arg(rootfs),
    )?
    .split_whitespace()
    .next()
    .and_then(|n| n.parse().ok())
    .ok_or("du printed no size")?;
    let root_mib = used + used / 4 + 64;
    let root_img = work.join("root.img");
    run(
        "mkfs.ext4 (root)",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "cr-root", "-d"])
            .arg(rootfs)
            .arg(&root_img)
            .arg(format!("{root_mib}M")),
    )?;

    // The disk: 1 MiB for the partition table, then the three partitions.
    let total = 1 + boot_size + root_mib + STATE_MIB;
    let _ = fs::remove_file(image);
    let disk = fs::File::create(image).map_err(io(image))?;
    disk.set_len(total * MIB).map_err(io(image))?;
    drop(disk);
    let layout = format!(
        "label: dos\nunit: sectors\n\n\
         start=2048, size={}, type=c, bootable\n\
         start={}, size={}, type=83\n\
         start={}, size={}, type=83\n",
        boot_size * 2048,
        (1 + boot_size) * 2048,
        root_mib * 2048,
        (1 + boot_size + root_mib) * 2048,
        STATE_MIB * 2048
    );
    run_with_stdin(
        "sfdisk (partition table)",
        Command::new("sfdisk").args(["--quiet"]).arg(image),
        &layout,
    )?;
    for (part, offset) in [
        (&boot_img, 1),
        (&root_img, 1 + boot_size),
        (&state_img, 1 + boot_size + root_mib),
    ] {
        run(
            &format!("writing {}", part.display()),
            Command::new("dd")
                .arg(format!("if={}", part.display()))
                .arg(format!("of={}", image.display()))
                .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                .arg(format!("seek={offset}")),
        )?;
    }
    Ok(())
}

/// The file or directory in `dir` whose name starts with `prefix`, newest version last by
/// name (one kernel is installed).
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("no {prefix}* in {}", dir.display()))
}
