//! Checks 3 and the GPIO part of 4: the device's GPIO button, a `gpio-sim` line in the test
//! image (`xtask/src/gpio_sim.rs`), pressed from outside by pulling the line low through its
//! sysfs `pull` attribute, as a button to ground does (the config says `active_low`, so the
//! device asked the kernel for the pull-up bias and waits for the line to fall).

use super::{Clips, Given, Heard, Verifier, Vm, expect};
use crate::gpio_sim;

/// How many presses a code may take to be heard whole (each HOTP press gives a new code;
/// one the recording lost part of is never sent to the verifier).
const TRIES: usize = 3;

/// Check 3. Before the first press, the device holds the line (its log says so; the chip is its
/// group's, as the package's udev rule says; the kernel applied the pull-up it asked for);
/// then a press speaks a new HOTP code, which the verifier accepts.
pub(super) fn check_press(
    vm: &mut Vm,
    clips: &Clips,
    verifier: &Verifier,
    given: &mut Given,
) -> Result<(), String> {
    let chip = format!("/dev/{}", gpio_sim::CHIP);
    let held = vm.agent(&format!(
        "journalctl -b -u codereader -o cat --no-pager | grep -c 'GPIO button {chip} line {}'; \
         stat -c '%U:%G %a' {chip}; cat {}",
        gpio_sim::LINE,
        gpio_sim::pull_path()
    ))?;
    let lines: Vec<&str> = held.lines().map(str::trim).collect();
    expect(
        lines.len() == 3 && lines[0] != "0" && lines[2] == "pull-up",
        || {
            format!(
                "the device does not hold {chip} line {}: {held}",
                gpio_sim::LINE
            )
        },
    )?;
    let code = hear_code(vm, clips)?;
    given.accept(verifier, &code)?;
    println!(
        "xtask: system-test: 3. GPIO button ({chip} {}, line {} pulled down): speaks {code} \
         (accepted)",
        lines[1],
        gpio_sim::LINE
    );
    Ok(())
}

/// Check 4, its GPIO part: with the USB keypad unplugged, the button still speaks a code (accepted).
pub(super) fn check_press_unplugged(
    vm: &mut Vm,
    clips: &Clips,
    verifier: &Verifier,
    given: &mut Given,
) -> Result<(), String> {
    let code = hear_code(vm, clips)?;
    given.accept(verifier, &code)?;
    println!("xtask: system-test: 4. keypad unplugged: the GPIO button speaks {code} (accepted)");
    Ok(())
}

/// Presses the button until a whole code is heard; returns it.
fn hear_code(vm: &mut Vm, clips: &Clips) -> Result<String, String> {
    let mut heard = press_and_listen(vm, clips)?;
    for _ in 1..TRIES {
        if heard.code().is_ok() {
            break;
        }
        println!("xtask: system-test: part of the code was lost; the button again");
        heard = press_and_listen(vm, clips)?;
    }
    heard.code()
}

/// One press: the line pulled low and held until the device answers (longer than its
/// debounce period, however late the guest is), then let go; what it said.
fn press_and_listen(vm: &mut Vm, clips: &Clips) -> Result<Heard, String> {
    let pull = gpio_sim::pull_path();
    let mark = vm.wav.mark()?;
    println!("xtask: system-test: GPIO button down");
    vm.agent(&format!("echo pull-down > {pull}"))?;
    let answered = vm.wait_for_sound(mark);
    vm.agent(&format!("echo pull-up > {pull}"))?;
    answered?;
    vm.listen_code(mark, clips)
}
