//! The computer QEMU emulates for each image: an amd64 PC (q35) that starts the image's
//! systemd-boot from UEFI firmware, or an arm64 `virt` board that loads the kernel, initrd
//! and command line a Raspberry Pi's firmware would load from the image's firmware
//! partition (QEMU has no Pi 4 board whose sound and USB a test can drive; `virt` has
//! PCIe, so the same Intel HDA card, xHCI keypad and virtio-serial agent work on both).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::image::Arch;

/// The machine one test boots, again after each power cut.
pub(super) struct Machine {
    arch: Arch,
    /// The copy-on-write disk over the cached image.
    pub(super) disk: PathBuf,
    /// arm64: what the Pi's firmware would load, taken out of the image.
    pi_boot: Option<PiBoot>,
}

/// The kernel, initrd and command line that `config.txt` and `cmdline.txt` on the image's
/// firmware partition name (raspi-firmware's hooks wrote them there).
struct PiBoot {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

impl Machine {
    /// `image` is the cached raw image (read for its firmware partition), `disk` the
    /// copy-on-write disk over it that the guest writes.
    pub(super) fn new(
        arch: Arch,
        image: &Path,
        disk: PathBuf,
        work: &Path,
    ) -> Result<Machine, String> {
        let pi_boot = match arch {
            Arch::Amd64 => None,
            Arch::Arm64 => Some(PiBoot::extract(image, &work.join("firmware"))?),
        };
        Ok(Machine {
            arch,
            disk,
            pi_boot,
        })
    }

    /// How long a boot may take: an emulated arm64 processor is about three times slower
    /// than an emulated amd64 one under TCG (measured here: see PACKAGING.md).
    pub(super) fn boot_deadline(&self, amd64: Duration) -> Duration {
        match self.arch {
            Arch::Amd64 => amd64,
            Arch::Arm64 => amd64 * 3,
        }
    }

    pub(super) fn qemu_binary(&self) -> &'static str {
        match self.arch {
            Arch::Amd64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// QEMU with the board, processor, firmware or kernel, and the disk.
    pub(super) fn qemu(&self, accel: &str) -> Command {
        let mut command = Command::new(self.qemu_binary());
        match &self.pi_boot {
            None => {
                // No PS/2 controller: the USB keypad is the only keyboard.
                command
                    .args(["-machine", "q35,i8042=off"])
                    .args(["-cpu", if accel == "tcg" { "max" } else { "host" }])
                    .args(["-bios", "/usr/share/ovmf/OVMF.fd"]);
            }
            Some(pi) => {
                // The Pi 4's processor; the board's PL011 UART is the serial console (the
                // Pi's own console= options name UARTs the board does not have).
                command
                    .args(["-machine", "virt", "-cpu", "cortex-a72"])
                    .arg("-kernel")
                    .arg(&pi.kernel)
                    .arg("-initrd")
                    .arg(&pi.initrd)
                    .arg("-append")
                    .arg(format!("{} console=ttyAMA0", pi.cmdline));
            }
        }
        command.arg("-drive").arg(format!(
            "file={},format=qcow2,if=virtio",
            self.disk.display()
        ));
        command
    }
}

impl PiBoot {
    /// Copies the files `config.txt` names out of the image's first (FAT) partition with
    /// mtools, as the Pi's firmware reads them: `kernel=`, `initramfs`, and `cmdline.txt`.
    fn extract(image: &Path, dir: &Path) -> Result<PiBoot, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let table = Command::new("sfdisk")
            .arg("--dump")
            .arg(image)
            .output()
            .map_err(|e| format!("sfdisk: {e}"))?;
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        let start: u64 = table
            .lines()
            .find(|l| l.contains("start="))
            .and_then(|l| {
                l.split(',')
                    .find_map(|f| f.split_once("start=").map(|(_, v)| v.trim().to_owned()))
            })
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no first partition in {}", image.display()))?;
        let fat = format!("{}@@{}", image.display(), start * 512);
        let copy = |name: &str| -> Result<PathBuf, String> {
            let dest = dir.join(name);
            crate::run(
                &format!("{name} from the image's firmware partition"),
                Command::new("mcopy")
                    .args(["-n", "-o", "-i"])
                    .arg(&fat)
                    .arg(format!("::/{name}"))
                    .arg(&dest),
            )?;
            Ok(dest)
        };
        let config =
            fs::read_to_string(copy("config.txt")?).map_err(|e| format!("config.txt: {e}"))?;
        let (kernel, initrd) = boot_files(&config)?;
        let cmdline =
            fs::read_to_string(copy("cmdline.txt")?).map_err(|e| format!("cmdline.txt: {e}"))?;
        Ok(PiBoot {
            kernel: copy(&kernel)?,
            initrd: copy(&initrd)?,
            cmdline: cmdline.trim().to_owned(),
        })
    }
}

/// The kernel (`kernel=NAME`) and initrd (`initramfs NAME [followkernel]`) a `config.txt`
/// names.
fn boot_files(config: &str) -> Result<(String, String), String> {
    let mut kernel = None;
    let mut initrd = None;
    for line in config.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("kernel=") {
            kernel = Some(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initrd = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    match (kernel, initrd) {
        (Some(k), Some(i)) => Ok((k, i)),
        _ => Err(format!(
            "config.txt names no kernel= and initramfs:\n{config}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::boot_files;

    /// What raspi-firmware's hook wrote to the image built here (comments shortened).
    const WRITTEN: &str = "# Do not modify this file!\n\n\
        # Switch the CPU from ARMv7 into ARMv8 (aarch64) mode\narm_64bit=1\n\n\
        enable_uart=1\nupstream_kernel=1\n\nkernel=vmlinuz-6.1.0-57-arm64\n\
        # For details on the initramfs directive, see\n\
        initramfs initrd.img-6.1.0-57-arm64\n\n\
        # Inserted by /etc/default/raspi-firmware-custom\ndtparam=audio=on\n";

    #[test]
    fn names_the_kernel_and_initrd_the_firmware_loads() {
        assert_eq!(
            boot_files(WRITTEN),
            Ok((
                "vmlinuz-6.1.0-57-arm64".to_owned(),
                "initrd.img-6.1.0-57-arm64".to_owned()
            ))
        );
        assert_eq!(
            boot_files("kernel=k\ninitramfs i followkernel\n"),
            Ok(("k".to_owned(), "i".to_owned()))
        );
    }

    #[test]
    fn a_config_without_kernel_or_initrd_is_refused() {
        for config in ["", "arm_64bit=1\nkernel=k\n", "initramfs i\n"] {
            let refused = boot_files(config);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("names no kernel= and initramfs")),
                "{config:?}: {refused:?}"
            );
        }
    }
}
