//! `cargo xtask system-test --arch arm64`: the Raspberry Pi image booted on QEMU's `virt`
//! board (TCG: an emulated processor, minutes per boot) and checked as issue 23's steps 1
//! and 2 (with 6, which the first press after boot shows anyway): boot to the ready tone,
//! key presses that speak codes the host's verifier accepts, a second press and replay.
//! The hardware-facing checks (hot-plug, GPIO, power cuts) run on the amd64 image, whose
//! boots are fast enough for every CI run; the program and its units are the same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::machine::Machine;
use super::{Clips, TotpCodes, Verifier, Vm, expect, totp_checks};
use crate::image::{self, Arch};

/// The package a Pi gets: the release build, cross-compiled.
pub(super) fn package() -> Result<PathBuf, String> {
    image::release_deb(Arch::Arm64)
}

pub(super) fn checks(
    work: &Path,
    machine: &Machine,
    clips: &Clips,
    verifier: &Verifier,
) -> Result<(), String> {
    // 1. Boot to the ready tone (no KVM for another instruction set).
    let mut vm = Vm::boot(work, machine, "tcg")?;
    let booted = format!(
        "boot to the ready tone: {:.1} s (tcg, cortex-a72 on virt)",
        vm.ready_after.as_secs_f64()
    );
    println!("xtask: system-test: 1. {booted}");
    let active = vm.agent("systemctl is-active codereader")?;
    expect(active.trim() == "active", || {
        format!("codereader is {active}")
    })?;
    let kernel = vm.agent("uname -rm; cat /proc/asound/cards")?;
    print!("{kernel}");

    vm.greeted_with_keypad(clips, "at boot")?;

    let TotpCodes {
        warned,
        code,
        replayed,
        again,
    } = totp_checks(&mut vm, clips, verifier)?;
    let errors = vm.agent("journalctl -b -p err -o cat --no-pager")?;
    if !errors.trim().is_empty() {
        println!("xtask: system-test: note: error lines in the journal:\n{errors}");
    }

    vm.agent_nowait("systemctl poweroff")?;
    vm.wait_exit(Duration::from_secs(300))?;
    println!("xtask: system-test: arm64: {booted}; codes {warned}, {code}, {replayed}, {again}");
    Ok(())
}
