//! The test image's GPIO button: the kernel's `gpio-sim` module, built here for the image's
//! own kernel, and the boot-time setup of a simulated chip whose line the device reads as its
//! button (issue 23, check 3). Only the test image carries any of it.
//!
//! Debian's 6.1 kernel ships neither `gpio-sim` nor `gpio-mockup`, nor the interrupt
//! simulator they select (`CONFIG_IRQ_SIM` is not set: nothing built in selects it), and the
//! image leaves out the `configfs` module (its `fs/` modules are excluded, `image.rs`) that
//! `gpio-sim` is configured through. So three pieces of Debian's `linux-source-6.1` are built
//! out of tree against `linux-headers-<the image's kernel>`, in seconds:
//!
//! ```text
//! configfs.ko   fs/configfs/*.c                      (as Debian builds it: CONFIG_CONFIGFS_FS=m)
//! gpio-sim.ko   drivers/gpio/gpio-sim.c + gpiolib.h  (the simulator)
//!               kernel/irq/irq_sim.c                 (linked in: the kernel has no irq_sim)
//! ```
//!
//! One change to the sources, made here: `irq_sim.c` delivers a simulated interrupt with
//! `handle_simple_irq(irq_to_desc(irq))`, and `irq_to_desc` is not exported to modules; it
//! becomes `generic_handle_irq(irq)`, which is exported, looks up the same descriptor and
//! calls its handler (the `handle_simple_irq` that `irq_sim_domain_map` installed).
//!
//! The modules are cached by content (the kernel release, the versions of the headers and
//! source packages, the build recipe) next to the images, and checked before use: their
//! `vermagic` must equal that of a module the image's kernel package shipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::image::{self, Arch, CACHE};
use crate::target_dir;
use crate::{packages, run};

/// Bump when the recipe below changes (the cache key includes it).
const FORMAT: &str = "gpio-sim-1";

/// The simulated chip's line the test config names as the button, and its name on the chip.
pub(crate) const LINE: u32 = 5;
const LINE_NAME: &str = "codereader-button";
/// The only GPIO chip of the virtual machine, so the first one.
pub(crate) const CHIP: &str = "gpiochip0";

/// The out-of-tree build: one directory, two modules.
const KBUILD: &str = "\
obj-m := configfs.o gpio-sim.o
configfs-y := inode.o file.o dir.o symlink.o mount.o item.o
gpio-sim-y := gpio-sim-main.o irq-sim.o
";

/// The line of `irq_sim.c` that needs an unexported symbol, and what replaces it.
const UNEXPORTED: &str = "handle_simple_irq(irq_to_desc(irqnum));";
const EXPORTED: &str = "generic_handle_irq(irqnum);";

/// The test config's button: the simulated line, pressed when pulled low (the device then
/// asks for the pull-up bias, as for a real button to ground).
pub(crate) fn config() -> String {
    format!(
        "\n# The system test's button (test image only): a gpio-sim line.\n\
         [[gpio]]\nchip = \"/dev/{CHIP}\"\nline = {LINE}\naction = \"speak\"\nactive_low = true\n"
    )
}

/// The boot-time setup: the module loaded and a chip made live through configfs, before the
/// device starts; `udevadm settle` so that the package's rule has given the chip to the
/// `codereader` group by then.
const SETUP: &str = r#"#!/bin/sh
# codereader system test (test image only): a simulated GPIO chip with the button's line.
set -eu
modprobe gpio-sim
config=/sys/kernel/config
mountpoint -q "$config" || mount -t configfs configfs "$config"
chip="$config/gpio-sim/codereader"
mkdir "$chip" "$chip/bank0" "$chip/bank0/line@LINE@"
echo codereader-buttons > "$chip/bank0/label"
echo 8 > "$chip/bank0/num_lines"
echo @NAME@ > "$chip/bank0/line@LINE@/name"
echo 1 > "$chip/live"
name=$(cat "$chip/bank0/chip_name")
if [ "$name" != @CHIP@ ]; then
    echo "the simulated chip is $name, the test config names @CHIP@" >&2
    exit 1
fi
udevadm settle
echo "gpio-sim: $name line @LINE@ (@NAME@) from $(cat "$chip/dev_name")"
"#;

const SETUP_UNIT: &str = "\
[Unit]
Description=codereader system test: a simulated GPIO button (test image only)
After=sys-kernel-config.mount systemd-udevd.service
Before=codereader.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/codereader-gpio-sim
[Install]
WantedBy=multi-user.target
";

/// The unit the test image enables.
pub(crate) const UNIT: &str = "codereader-gpio-sim.service";

/// The sysfs file that pulls the simulated line, i.e. presses (`pull-down`) and releases
/// (`pull-up`) the button.
pub(crate) fn pull_path() -> String {
    format!("/sys/bus/gpio/devices/{CHIP}/sim_gpio{LINE}/pull")
}

/// The modules for the image whose base system is `base`, from the cache or built now.
pub(crate) struct Modules {
    /// The kernel release they are for (`6.1.0-57-amd64`).
    pub(crate) kernel: String,
    pub(crate) configfs: Vec<u8>,
    pub(crate) gpio_sim: Vec<u8>,
}

impl Modules {
    /// The test image's extra files: the modules (indexed by the image builder's `depmod`),
    /// the setup script and its unit. Enable [`UNIT`].
    pub(crate) fn extras(&self) -> Vec<(String, Vec<u8>, u32)> {
        let extra = format!("/usr/lib/modules/{}/extra", self.kernel);
        let setup = SETUP
            .replace("@LINE@", &LINE.to_string())
            .replace("@NAME@", LINE_NAME)
            .replace("@CHIP@", CHIP);
        vec![
            (format!("{extra}/configfs.ko"), self.configfs.clone(), 0o644),
            (format!("{extra}/gpio-sim.ko"), self.gpio_sim.clone(), 0o644),
            (
                "/usr/local/sbin/codereader-gpio-sim".to_owned(),
                setup.into_bytes(),
                0o755,
            ),
            (
                format!("/etc/systemd/system/{UNIT}"),
                SETUP_UNIT.as_bytes().to_vec(),
                0o644,
            ),
        ]
    }
}

/// Builds (or takes from the cache) `configfs.ko` and `gpio-sim.ko` for the kernel in the
/// base system `base` (a tarball from `image::base`).
pub(crate) fn modules(arch: Arch, base: &Path) -> Result<Modules, String> {
    if arch != Arch::Amd64 {
        // The arm64 kernel's headers (and their host tools) would have to be installed
        // beside this machine's and used with a cross compiler: not done yet.
        return Err(format!(
            "gpio-sim is built for the amd64 test image only, not {}",
            arch.debian()
        ));
    }
    let kernel = kernel_release(base)?;
    let series = kernel.split('.').take(2).collect::<Vec<_>>().join(".");
    let headers = format!("linux-headers-{kernel}");
    let source = format!("linux-source-{series}");
    // The headers' name carries the kernel's ABI, so it is not in a fixed list.
    packages::ensure(&[headers.as_str(), source.as_str()])?;
    let key = image::hash_hex(&[
        FORMAT.as_bytes(),
        kernel.as_bytes(),
        package_version(&headers)?.as_bytes(),
        package_version(&source)?.as_bytes(),
        KBUILD.as_bytes(),
        UNEXPORTED.as_bytes(),
        EXPORTED.as_bytes(),
    ]);
    let cache = Path::new(CACHE).join(format!("gpio-sim-{kernel}-{key}"));
    if !cache.join("gpio-sim.ko").is_file() {
        build(&kernel, &series, &cache)?;
    } else {
        println!("xtask: gpio-sim from the cache: {}", cache.display());
    }
    let read = |name: &str| {
        let path = cache.join(name);
        fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let modules = Modules {
        configfs: read("configfs.ko")?,
        gpio_sim: read("gpio-sim.ko")?,
        kernel,
    };
    // The image's kernel loads them only if they say they were built for it.
    let theirs = in_tree_vermagic(base, &modules.kernel)?;
    for (name, ko) in [
        ("configfs.ko", &modules.configfs),
        ("gpio-sim.ko", &modules.gpio_sim),
    ] {
        let ours = modinfo(ko, "vermagic").ok_or(format!("{name} has no vermagic"))?;
        if ours != theirs {
            return Err(format!(
                "{name} was built for '{ours}', the image's kernel modules say '{theirs}'"
            ));
        }
    }
    println!(
        "xtask: gpio-sim for {}: vermagic '{theirs}' as the image's own modules",
        modules.kernel
    );
    Ok(modules)
}

/// The image's kernel release, from its `/boot/vmlinuz-<release>`.
fn kernel_release(base: &Path) -> Result<String, String> {
    let listing = Command::new("tar")
        .args(["-tf"])
        .arg(base)
        .arg("./boot/")
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("./boot/vmlinuz-"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no /boot/vmlinuz-* in {}", base.display()))
}

fn package_version(package: &str) -> Result<String, String> {
    let out = crate::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if version.is_empty() {
        return Err(format!("{package} is not installed"));
    }
    Ok(version)
}

/// The `vermagic` of a module the image's kernel package shipped (the sound driver the
/// system test plays through).
fn in_tree_vermagic(base: &Path, kernel: &str) -> Result<String, String> {
    let member = format!("./usr/lib/modules/{kernel}/kernel/sound/pci/hda/snd-hda-intel.ko");
    let out = crate::output(Command::new("tar").arg("-xOf").arg(base).arg(&member))?;
    modinfo(&out.stdout, "vermagic").ok_or(format!("no vermagic in {member} of the image"))
}

/// A field of a module's `.modinfo` section (NUL-terminated `key=value` strings; `modinfo`
/// itself is not on this machine).
fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(needle.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

/// Extracts the sources from the source package's tarball, patches `irq_sim.c`, builds both
/// modules against the installed headers, strips their debug information and moves them
/// into `cache` (a new directory, renamed into place whole).
fn build(kernel: &str, series: &str, cache: &Path) -> Result<(), String> {
    let started = Instant::now();
    let work = target_dir().join("gpio-sim");
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let top = format!("linux-source-{series}");
    let tarball = PathBuf::from(format!("/usr/src/{top}.tar.xz"));
    run(
        "gpio-sim: its sources from linux-source",
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work)
            .arg("--wildcards")
            .arg(format!("{top}/fs/configfs/*.[ch]"))
            .arg(format!("{top}/drivers/gpio/gpio-sim.c"))
            .arg(format!("{top}/drivers/gpio/gpiolib.h"))
            .arg(format!("{top}/kernel/irq/irq_sim.c")),
    )?;
    let tree = work.join(&top);
    let src = work.join("build");
    fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let copy = |from: PathBuf, to: &str| {
        fs::copy(&from, src.join(to))
            .map(drop)
            .map_err(|e| format!("{}: {e}", from.display()))
    };
    let configfs = tree.join("fs/configfs");
    for entry in fs::read_dir(&configfs).map_err(|e| format!("{}: {e}", configfs.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let name = name.to_owned();
            copy(path, &name)?;
        }
    }
    copy(tree.join("drivers/gpio/gpio-sim.c"), "gpio-sim-main.c")?;
    copy(tree.join("drivers/gpio/gpiolib.h"), "gpiolib.h")?;
    let irq_sim = tree.join("kernel/irq/irq_sim.c");
    let text = fs::read_to_string(&irq_sim).map_err(|e| format!("{}: {e}", irq_sim.display()))?;
    if text.matches(UNEXPORTED).count() != 1 {
        return Err(format!(
            "{}: expected one `{UNEXPORTED}` to replace (the source changed; see gpio_sim.rs)",
            irq_sim.display()
        ));
    }
    fs::write(src.join("irq-sim.c"), text.replace(UNEXPORTED, EXPORTED))
        .map_err(|e| format!("{}: {e}", src.display()))?;
    fs::write(src.join("Kbuild"), KBUILD).map_err(|e| format!("{}: {e}", src.display()))?;
    let compiled = Instant::now();
    run(
        "gpio-sim: building configfs.ko and gpio-sim.ko",
        Command::new("make")
            .arg("-C")
            .arg(format!("/usr/src/linux-headers-{kernel}"))
            .arg(format!("M={}", src.display()))
            .arg("modules"),
    )?;
    let compile_s = compiled.elapsed().as_secs_f64();
    // Another worktree may be building the same modules: each writes its own directory.
    let partial = cache.with_extension(format!("partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    }
    fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    for name in ["configfs.ko", "gpio-sim.ko"] {
        run(
            &format!("gpio-sim: {name} without its debug information"),
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(partial.join(name))
                .arg(src.join(name)),
        )?;
    }
    if let Err(e) = fs::rename(&partial, cache) {
        // The other build finished first (a directory is not replaced by a rename).
        let _ = fs::remove_dir_all(&partial);
        if !cache.join("gpio-sim.ko").is_file() {
            return Err(format!("{}: {e}", cache.display()));
        }
    }
    fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    println!(
        "xtask: gpio-sim built in {:.1} s (compiling {compile_s:.1} s): {}",
        started.elapsed().as_secs_f64(),
        cache.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_reads_a_field_between_nuls() {
        let ko = b"\x7fELF\0junk\0license=GPL\0depends=configfs\0vermagic=6.1.0-57-amd64 SMP \
                   preempt mod_unload modversions \0name=gpio_sim\0";
        assert_eq!(modinfo(ko, "depends").as_deref(), Some("configfs"));
        assert_eq!(
            modinfo(ko, "vermagic").as_deref(),
            Some("6.1.0-57-amd64 SMP preempt mod_unload modversions")
        );
        assert_eq!(modinfo(ko, "author"), None);
    }
}
