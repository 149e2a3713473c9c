//! `cargo xtask system-test --arch arm64`: the Raspberry Pi image booted on QEMU's `virt`
//! board (TCG: an emulated processor, minutes per boot) and checked as issue 23's steps 1
//! and 2 (with 6, which the first press after boot shows anyway): boot to the ready tone,
//! key presses that speak codes the host's verifier accepts, a second press and replay.
//! The hardware-facing checks (hot-plug, GPIO, power cuts) run on the amd64 image, whose
//! boots are fast enough for every CI run; the program and its units are the same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::machine::Machine;
use super::{Clips, Reading, SECRET, Verifier, Vm, enrol, expect, wait_for_next_step};
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

    let totp = format!("otpauth://totp/System:test?secret={SECRET}&issuer=System");
    verifier.add("SYS-T", &totp)?;
    enrol(&mut vm, &totp)?;
    vm.greeted_with_keypad(clips, "restarted after enrolling")?;

    // 6. Nothing synchronised the clock since boot: the warning, then the code. Pressed
    // early in a time step, so the device does not first say the code is about to change.
    wait_for_next_step();
    let Reading {
        code: first,
        opening,
        ..
    } = vm.hear_code("kp_5", clips)?;
    expect(opening.as_deref() == Some("clock_unsynced"), || {
        format!("no clock warning before the code {first}: heard {opening:?} first")
    })?;
    verifier.expect("SYS-T", &first, "accepted")?;
    println!("xtask: system-test: 6. unsynchronised clock: warning, then {first} (accepted)");

    // 2. The clock synchronised, in the next time step: a press speaks the new code
    // (accepted); replay says it again (the verifier: replayed) or, once its step has
    // passed, that it expired and the new one (accepted); a second press in the same step
    // says the same code again.
    vm.agent("mkdir -p /run/systemd/timesync && touch /run/systemd/timesync/synchronized")?;
    wait_for_next_step();
    let pressed = vm.hear_code("kp_5", clips)?;
    let (heard, code) = (pressed.first(), pressed.code.clone());
    // (A sentence garbled by the emulated card is unsure: then only the code is checked.)
    expect(heard.first_sentence().is_none_or(|s| s == "intro"), || {
        format!("not 'Your code is' first: heard {}", heard.summary())
    })?;
    verifier.expect("SYS-T", &code, "accepted")?;
    let replay = vm.hear_code("kp_0", clips)?;
    let replayed = replay.code.clone();
    match replay.opening.as_deref() {
        Some("replay_intro") => {
            expect(replayed == code, || {
                format!("replay said {replayed}, the last code was {code}")
            })?;
            verifier.expect("SYS-T", &replayed, "replayed")?;
        }
        Some("expired_intro") => verifier.expect("SYS-T", &replayed, "accepted")?,
        _ => {
            return Err(format!(
                "replay said neither 'Again' nor 'expired': {}",
                replay.first().summary()
            ));
        }
    }
    let again = vm.hear_code("kp_5", clips)?.code;
    let second = if again == replayed {
        "replayed"
    } else {
        "accepted"
    };
    verifier.expect("SYS-T", &again, second)?;
    println!(
        "xtask: system-test: 2. key press: {code} (accepted); replay {replayed}; second \
         press {again} ({second})"
    );
    let errors = vm.agent("journalctl -b -p err -o cat --no-pager")?;
    if !errors.trim().is_empty() {
        println!("xtask: system-test: note: error lines in the journal:\n{errors}");
    }

    vm.agent_nowait("systemctl poweroff")?;
    vm.wait_exit(Duration::from_secs(300))?;
    println!("xtask: system-test: arm64: {booted}; codes {first}, {code}, {replayed}, {again}");
    Ok(())
}
