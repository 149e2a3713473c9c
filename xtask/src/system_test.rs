//! `cargo xtask system-test`: the appliance booted in QEMU and used from outside, like a
//! person: its Intel HDA sound card recorded to a WAV on this machine (`-audiodev wav`), its
//! USB keypad (a `usb-kbd` on `qemu-xhci`) pressed with QMP `send-key` and pulled
//! out and plugged back with `device_del`/`device_add`, its GPIO button (a `gpio-sim` line,
//! `gpio_sim.rs`, pressed through its sysfs `pull` file: `system_test/gpio.rs`), its power
//! cut by killing QEMU. Every code it speaks is decoded from the recording (matched against
//! the voice's own clips, `xtask/src/hearing.rs`) and checked by a `codereader-verifier` on
//! this machine holding the same token. A code is believed only when its intro, its six
//! digits and its end chime were each heard surely (a digit's clip beating every other clip
//! by a margin), else the replay key asks again until one reading is sure or two agree: the
//! verifier, never the test, judges a code. It is the last step of `cargo xtask test`, so CI
//! boots the appliance on every run (TCG where KVM cannot boot it, as on these machines).
//!
//! The test image has, besides the shipped image's contents, a control agent on a
//! virtio-serial port (a shell loop: the test enrols tokens, reads `systemctl` and
//! `journalctl`, kills the service), the `gpio-sim` module with the unit that makes the
//! simulated chip, and the test's config. The checks, numbered as in
//! issue 23, are printed as they pass; the boot times and the power-cut count too.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hearing::{self, Clips, Heard};
use crate::image::{self, Arch};
use crate::target_dir;
use crate::{cargo, deb, deb_check, gpio_sim, packages, run};

mod arm64;
mod gpio;
mod machine;

use machine::Machine;

/// The test token's secret (160 bits, base32): RFC 4226's test secret.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const AGENT_PORT: &str = "org.codereader.agent";

/// How long one TCG boot may take before the test gives up (measured: about 30-40 s).
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// How long a spoken code may take, from the key to the end of the speech.
const SPEECH_DEADLINE: Duration = Duration::from_secs(45);
/// Silence in the recording after which an utterance may have ended.
const QUIET: Duration = Duration::from_millis(1300);
/// Silence in the recording after which the rest of an utterance is not waited for (the
/// guest stalled under TCG has left gaps of 4 s inside one).
const GIVE_UP: Duration = Duration::from_secs(12);
/// How many times the replay key is pressed for a code not heard surely.
const REPLAYS: usize = 5;
/// Replays asked for in this run (for its summary).
static REPLAYED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// How many times the power is cut (`--power-cuts N` for more).
const POWER_CUTS: usize = 3;

/// The test image's agent: runs each line it reads on the port with `bash -c`, answers with
/// the output, then `@@END <id> <exit status>`.
const AGENT: &str = r#"#!/bin/bash
# codereader system-test agent (test image only): one command per line on a virtio-serial
# port, answered with its output and an end marker.
port=/dev/virtio-ports/org.codereader.agent
while [ ! -e "$port" ]; do sleep 0.2; done
exec 3<>"$port"
echo "@@READY" >&3
while IFS= read -r line <&3; do
    id=${line%% *}
    command=${line#* }
    out=$(bash -c "$command" 2>&1 </dev/null)
    rc=$?
    printf '%s\n@@END %s %s\n' "$out" "$id" "$rc" >&3
done
"#;

const AGENT_UNIT: &str = "\
[Unit]
Description=codereader system-test agent (test image only)
DefaultDependencies=no
After=systemd-udevd.service
[Service]
ExecStart=/usr/local/sbin/codereader-agent
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
";

/// The test image's config: the shipped one (any keypad that appears is taken), with `gpio`
/// a GPIO button on the simulated chip (`gpio_sim.rs`, amd64 only), playing on QEMU's HDA
/// card directly.
/// Through ALSA's `default` (dmix) the emulated card stops receiving samples after the
/// service restarts: dmix's free-running stream and QEMU's HDA timing under TCG (seen here;
/// a real card is not affected).
fn test_config(gpio: bool) -> String {
    format!(
        "{}\n[audio]\ndevice = \"plughw:CARD=Intel,DEV=0\"\n{}",
        image::SHIPPED_CONFIG,
        if gpio {
            gpio_sim::config()
        } else {
            String::new()
        }
    )
}

pub(crate) fn system_test(args: &[String]) -> Result<(), String> {
    let mut arch = Arch::Amd64;
    let mut power_cuts = POWER_CUTS;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--arch" => arch = Arch::parse(rest.next().ok_or("--arch needs amd64 or arm64")?)?,
            "--power-cuts" => {
                power_cuts = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--power-cuts needs a number")?;
            }
            "--hear" => {
                let wav = rest.next().ok_or("--hear needs a WAV file")?;
                let voices = rest.next().map_or_else(hearing::last_voices, PathBuf::from);
                return hearing::hear_file(
                    Path::new(wav),
                    &voices,
                    &target_dir().join("debug/codereader-speak"),
                );
            }
            other => return Err(format!("system-test: unknown argument '{other}'")),
        }
    }
    let started = Instant::now();
    packages::ensure(packages::TEST)?;
    packages::ensure(packages::IMAGE)?;
    packages::ensure(packages::SYSTEM_TEST)?;
    packages::ensure_backports(packages::BACKPORTS)?;
    if arch == Arch::Arm64 {
        packages::ensure_backports(packages::BACKPORTS_ARM64)?;
    }
    let work = target_dir().join("system-test");
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;

    // The device's package (debug build, clips at speed step 0, as deb-check builds it) and
    // the host's verifier.
    run(
        "building codereader, codereader-speak and codereader-verifier (debug)",
        cargo().args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "codereader",
            "--package",
            "codereader-speech",
            "--package",
            "codereader-verifier-server",
            "--bin",
            "codereader",
            "--bin",
            "codereader-speak",
            "--bin",
            "codereader-verifier",
        ]),
    )?;
    let voices = work.join("voices");
    deb_check::render_step_zero(&voices)?;
    let deb = match arch {
        Arch::Amd64 => deb::build(&deb::Deb {
            binary: &target_dir().join("debug/codereader"),
            arch: arch.debian(),
            strip: "strip",
            voices: &voices,
            epoch: "1767225600",
            out_dir: &work,
        })?,
        // The release package a Pi gets (cross-built); its clips come from the same
        // renderer as the ones rendered above, which the test listens for.
        Arch::Arm64 => arm64::package()?,
    };
    // The GPIO button's kernel module, built for the image's kernel (amd64 only: the arm64
    // run checks steps 1, 6 and 2).
    let gpio = arch == Arch::Amd64;
    let config = test_config(gpio);
    let gpio_sim = if gpio {
        gpio_sim::modules(arch, &image::base(arch)?)?.extras()
    } else {
        Vec::new()
    };
    let mut extra = vec![
        (
            "/usr/local/sbin/codereader-agent",
            AGENT.as_bytes().to_vec(),
            0o755,
        ),
        (
            "/etc/systemd/system/codereader-agent.service",
            AGENT_UNIT.as_bytes().to_vec(),
            0o644,
        ),
    ];
    extra.extend(gpio_sim.iter().map(|(p, c, m)| (p.as_str(), c.clone(), *m)));
    let built = Instant::now();
    let image = image::build(&image::Spec {
        arch,
        deb: &deb,
        config: &config,
        extra: &extra,
        enable: if gpio {
            &["codereader-agent.service", gpio_sim::UNIT]
        } else {
            &["codereader-agent.service"]
        },
        name: &format!("codereader-test-{}", arch.debian()),
    })?;
    println!(
        "xtask: system-test: test image ready in {:.0} s ({} MiB)",
        built.elapsed().as_secs_f64(),
        fs::metadata(&image).map(|m| m.len() >> 20).unwrap_or(0)
    );
    // The image held by a link of this run's own: the cache keeps only the newest image of
    // a name, and another run building a different test image may prune this one while it
    // is the backing file of a booted disk (a copy where a link cannot be made).
    let base = work.join("image.raw");
    if fs::hard_link(&image, &base).is_err() {
        run(
            "copying the image",
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&image)
                .arg(&base),
        )?;
    }
    let disk = work.join("disk.qcow2");
    run(
        "a copy-on-write disk over the image",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&disk),
    )?;
    let chimes = work.join("chimes.wav");
    hearing::render_chimes(
        &target_dir().join("debug/codereader-speak"),
        &voices,
        &chimes,
    )?;
    let machine = Machine::new(arch, &base, disk, &work)?;
    let clips = Clips::load(&voices.join("en"), &chimes)?;
    let verifier = Verifier::start(&work)?;
    let prepared = started.elapsed();
    let result = match arch {
        Arch::Amd64 => checks(&work, &machine, &clips, &verifier, power_cuts),
        Arch::Arm64 => arm64::checks(&work, &machine, &clips, &verifier),
    };
    drop(verifier);
    result?;
    println!(
        "xtask: system-test passed in {:.0} s (building and the image {:.0} s, the checks \
         {:.0} s)",
        started.elapsed().as_secs_f64(),
        prepared.as_secs_f64(),
        (started.elapsed() - prepared).as_secs_f64()
    );
    Ok(())
}

fn checks(
    work: &Path,
    machine: &Machine,
    clips: &Clips,
    verifier: &Verifier,
    power_cuts: usize,
) -> Result<(), String> {
    // 1. Boot to the ready tone: KVM when it boots this kernel, else TCG.
    let mut vm = boot_any(work, machine)?;
    let mut report = vec![format!(
        "boot to the ready tone: {:.1} s ({})",
        vm.ready_after.as_secs_f64(),
        vm.accel
    )];
    vm.greeted_with_keypad(clips, "at boot")?;
    println!("xtask: system-test: 1. {}", report[0]);
    let active = vm.agent("systemctl is-active codereader")?;
    expect(active.trim() == "active", || {
        format!("codereader is {active}")
    })?;

    totp_checks(&mut vm, clips, verifier)?;

    // 7. The service active, no error in the journal, restarted when killed.
    let errors = vm.agent("journalctl -b -p err -o cat --no-pager")?;
    expect(errors.trim().is_empty(), || {
        format!("error lines in the journal:\n{errors}")
    })?;
    // HOTP from here on: every press gives a new code, each accepted exactly once.
    let hotp = format!("otpauth://hotp/System:hotp?secret={SECRET}&issuer=System&counter=0");
    verifier.add("SYS-H", &hotp)?;
    enrol(&mut vm, &hotp)?;
    let mut given = Given::default();
    let code = vm.hear_code("kp_5", clips)?.code;
    given.accept(verifier, &code)?;
    let mark = vm.wav.mark()?;
    vm.agent("systemctl kill --signal=SIGKILL codereader")?;
    vm.wait_for_ready_tone(mark)?;
    vm.greeted_with_keypad(clips, "restarted after SIGKILL")?;
    let restarts = vm.agent("systemctl show -P NRestarts codereader")?;
    expect(restarts.trim() != "0", || {
        "systemd did not restart it".to_owned()
    })?;
    let code = vm.hear_code("kp_5", clips)?.code;
    given.accept(verifier, &code)?;
    println!(
        "xtask: system-test: 7. active, no error lines, restarted after SIGKILL ({} restart), \
         speaks {code}",
        restarts.trim()
    );

    // 3. A GPIO button press speaks a code the same way.
    gpio::check_press(&mut vm, clips, verifier, &mut given)?;

    // 4. The keypad pulled out and plugged back in (same port): it works again without a
    // restart.
    let mark = vm.wav.mark()?;
    vm.qmp("{\"execute\":\"device_del\",\"arguments\":{\"id\":\"keypad\"}}")?;
    vm.wait_event("DEVICE_DELETED")?;
    let (told, _) = vm.listen(mark, clips, SPEECH_DEADLINE, false)?;
    expect(told.says("no_input"), || {
        format!(
            "unplugged, the device did not say so: heard {}",
            told.summary()
        )
    })?;
    gpio::check_press_unplugged(&mut vm, clips, verifier, &mut given)?;
    vm.qmp(
        "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"usb-kbd\",\"id\":\"keypad\",\
         \"bus\":\"xhci.0\",\"port\":\"1\"}}",
    )?;
    let heard = vm.press_until_heard("kp_5", clips)?;
    let code = vm.confirm(heard, clips)?.code;
    given.accept(verifier, &code)?;
    println!(
        "xtask: system-test: 4. keypad unplugged: \"No keypad is connected\"; plugged back: speaks {code}"
    );

    // 5. Power cuts while HOTP codes are given: QEMU killed at a different moment each
    // time; after each boot the device starts, no counter is given twice and the state
    // file system needed no repair.
    for cut in 0..power_cuts {
        let mark = vm.wav.mark()?;
        vm.press("kp_5")?;
        match cut % 3 {
            // Right after the key: the counter may be stored, nothing spoken.
            0 => {}
            // In the middle of the code.
            1 => vm.wait_for_sound(mark)?,
            // After a whole code.
            _ => {
                let heard = vm.listen_code(mark, clips)?;
                let code = vm.confirm(heard, clips)?.code;
                given.accept(verifier, &code)?;
            }
        }
        vm.power_cut();
        vm = Vm::boot(work, machine, vm.accel)?;
        vm.greeted_with_keypad(clips, "booted after a power cut")?;
        let failed = vm.agent("systemctl --failed --no-legend --plain")?;
        expect(failed.trim().is_empty(), || {
            format!("failed units after a power cut:\n{failed}")
        })?;
        let fsck = vm.agent("journalctl -b -o cat --no-pager -u 'systemd-fsck*'")?;
        expect(
            !fsck.contains("UNEXPECTED") && !fsck.contains("MANUALLY"),
            || format!("fsck after a power cut:\n{fsck}"),
        )?;
        let code = vm.hear_code("kp_5", clips)?.code;
        given.accept(verifier, &code)?;
        println!(
            "xtask: system-test: 5. power cut {} of {power_cuts}: booted in {:.1} s, speaks {code}",
            cut + 1,
            vm.ready_after.as_secs_f64()
        );
    }
    // Each code once: sent again, none is accepted a second time.
    let mut again = BTreeSet::new();
    for code in &given.codes {
        let result = verifier.verify("SYS-H", code)?;
        expect(result != "accepted", || {
            format!("HOTP code {code} was accepted a second time")
        })?;
        again.insert(result);
    }
    report.push(format!(
        "{power_cuts} power cuts, {} HOTP codes each accepted once (sent again: {})",
        given.codes.len(),
        again.into_iter().collect::<Vec<_>>().join(", ")
    ));
    report.push(format!(
        "{} replays asked for codes not heard surely",
        REPLAYED.load(std::sync::atomic::Ordering::Relaxed)
    ));

    // A clean shutdown, then the state file system checked from outside.
    vm.agent_nowait("systemctl poweroff")?;
    vm.wait_exit(Duration::from_secs(120))?;
    fsck_state(work, &machine.disk)?;
    for line in &report {
        println!("xtask: system-test: {line}");
    }
    Ok(())
}

/// What the TOTP checks heard: the code after the clock warning, the first code with the
/// clock synchronised, what replay said, and the second press's code.
struct TotpCodes {
    warned: String,
    code: String,
    replayed: String,
    again: String,
}

/// Checks 6 and 2 on a TOTP token (both architectures): the token enrolled on the device as
/// a helper would (the verifier holds it too); 6. before the clock is synchronised, the
/// warning, then the code (accepted); 2. synchronised, a press speaks the current code
/// (accepted), replay says it again (the verifier: replayed) or, once its time step has
/// passed, that it expired and the new one (accepted), and a second press in the same step
/// says the same code again. Each press comes early in a time step, so the device does not
/// first say that the code is about to change.
fn totp_checks(vm: &mut Vm, clips: &Clips, verifier: &Verifier) -> Result<TotpCodes, String> {
    let totp = format!("otpauth://totp/System:test?secret={SECRET}&issuer=System");
    verifier.add("SYS-T", &totp)?;
    enrol(vm, &totp)?;
    vm.greeted_with_keypad(clips, "restarted after enrolling")?;

    // 6. The clock not synchronised since boot: the warning, then the code.
    let flag = vm.agent("test -e /run/systemd/timesync/synchronized && echo synced || echo not")?;
    expect(flag.trim() == "not", || {
        format!("the guest says its clock was synchronised: {flag}")
    })?;
    wait_for_next_step();
    let Reading {
        code: warned,
        opening,
        ..
    } = vm.hear_code("kp_5", clips)?;
    expect(opening.as_deref() == Some("clock_unsynced"), || {
        format!("no clock warning before the code {warned}: heard {opening:?} first")
    })?;
    verifier.expect("SYS-T", &warned, "accepted")?;
    println!("xtask: system-test: 6. unsynchronised clock: warning, then {warned} (accepted)");

    // 2. Clock synchronised, in the next time step.
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
    let log = vm.agent("journalctl -u codereader -o cat --no-pager | grep 'speaking the code'")?;
    print!("{log}");
    println!(
        "xtask: system-test: 2. key press: {code} (accepted); replay {replayed}; second \
         press {again} ({second})"
    );
    Ok(TotpCodes {
        warned,
        code,
        replayed,
        again,
    })
}

fn expect(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(format!("system-test: {}", message()))
    }
}

/// Enrols `uri` on the device (replacing any token) and restarts the service, as a helper
/// would; returns when the restarted service has played its ready tone.
fn enrol(vm: &mut Vm, uri: &str) -> Result<(), String> {
    let mark = vm.wav.mark()?;
    vm.agent(&format!(
        "printf '%s' '{uri}' | runuser -u codereader -- env CODEREADER_STATE=/var/lib/codereader \
         codereader enroll --replace --uri - && systemctl restart codereader"
    ))?;
    vm.wait_for_ready_tone(mark)
}

/// Waits until the next 30 s time step has begun, on this machine's clock and the guest's
/// (which starts from the emulated RTC, whole seconds, and lags by up to a few seconds).
fn wait_for_next_step() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let next = (now / 30.0).floor() * 30.0 + 35.0;
    thread::sleep(Duration::from_secs_f64(next - now));
}

/// The codes given so far: each must be new and accepted.
#[derive(Default)]
struct Given {
    codes: BTreeSet<String>,
}

impl Given {
    fn accept(&mut self, verifier: &Verifier, code: &str) -> Result<(), String> {
        expect(self.codes.insert(code.to_owned()), || {
            format!("the device gave HOTP code {code} twice")
        })?;
        verifier.expect("SYS-H", code, "accepted")
    }
}

/// Checks the state partition of the final disk with `e2fsck -fn` (no changes).
fn fsck_state(work: &Path, disk: &Path) -> Result<(), String> {
    let raw = work.join("final.raw");
    run(
        "the disk after shutdown",
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
    )?;
    let table = Command::new("sfdisk")
        .args(["--dump"])
        .arg(&raw)
        .output()
        .map_err(|e| format!("sfdisk: {e}"))?;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    for (index, line) in table
        .lines()
        .filter(|l| l.contains("start="))
        .enumerate()
        .skip(1)
    {
        let field = |name: &str| -> Option<u64> {
            line.split(',')
                .find_map(|f| {
                    f.trim()
                        .split_once('=')
                        .filter(|(k, _)| k.trim_end().ends_with(name))
                })
                .and_then(|(_, v)| v.trim().parse().ok())
        };
        let (Some(start), Some(size)) = (field("start"), field("size")) else {
            return Err(format!("cannot read the partition table: {line}"));
        };
        let part = work.join(format!("part{}.img", index + 1));
        run(
            "extracting a partition",
            Command::new("dd")
                .arg(format!("if={}", raw.display()))
                .arg(format!("of={}", part.display()))
                .args(["bs=512", "status=none", "conv=sparse"])
                .arg(format!("skip={start}"))
                .arg(format!("count={size}")),
        )?;
        run(
            &format!("e2fsck -fn partition {}", index + 1),
            Command::new("e2fsck").args(["-f", "-n"]).arg(&part),
        )?;
        let _ = fs::remove_file(&part);
    }
    let _ = fs::remove_file(&raw);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The virtual machine.

struct Vm {
    child: Child,
    qmp: BufReader<UnixStream>,
    agent: BufReader<UnixStream>,
    next_id: u64,
    wav: Wav,
    accel: &'static str,
    ready_after: Duration,
    /// What the device said when its service last started.
    greeting: Vec<f32>,
    events: Vec<String>,
}

/// Boots with KVM when it works here, else with TCG (never skipped).
fn boot_any(work: &Path, machine: &Machine) -> Result<Vm, String> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        match Vm::boot_within(work, machine, "kvm", Duration::from_secs(60)) {
            Ok(vm) => return Ok(vm),
            Err(e) => println!("xtask: system-test: KVM did not boot the image ({e}); using TCG"),
        }
    }
    Vm::boot(work, machine, "tcg")
}

impl Vm {
    fn boot(work: &Path, machine: &Machine, accel: &'static str) -> Result<Vm, String> {
        Vm::boot_within(work, machine, accel, machine.boot_deadline(BOOT_DEADLINE))
    }

    fn boot_within(
        work: &Path,
        machine: &Machine,
        accel: &'static str,
        deadline: Duration,
    ) -> Result<Vm, String> {
        let n = fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let qmp_path = work.join(format!("qmp-{n}.sock"));
        let agent_path = work.join(format!("agent-{n}.sock"));
        let wav_path = work.join(format!("sound-{n}.wav"));
        let serial = work.join(format!("serial-{n}.log"));
        // The board, processor, firmware or kernel, and disk; the rest is the same for both.
        let mut command = machine.qemu(accel);
        command
            .args(["-accel", accel, "-m", "1024", "-smp", "1"])
            .args(["-display", "none", "-no-user-config", "-nodefaults"])
            .args(["-rtc", "base=utc"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                agent_path.display()
            ))
            .arg("-device")
            .arg(format!("virtserialport,chardev=agent,name={AGENT_PORT}"))
            .arg("-audiodev")
            .arg(format!(
                "wav,id=snd,path={},out.frequency=48000,out.channels=2,out.format=s16",
                wav_path.display()
            ))
            .args(["-device", "intel-hda", "-device", "hda-output,audiodev=snd"])
            .args(["-device", "qemu-xhci,id=xhci"])
            .args(["-device", "usb-kbd,id=keypad,bus=xhci.0,port=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let powered_on = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", machine.qemu_binary()))?;
        let connect = |path: &Path, child: &mut Child| -> Result<UnixStream, String> {
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(stream) = UnixStream::connect(path) {
                    return Ok(stream);
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    return Err(format!("QEMU exited ({status}): {err}"));
                }
                if Instant::now() > until {
                    return Err(format!("no socket {}", path.display()));
                }
                thread::sleep(Duration::from_millis(50));
            }
        };
        let qmp = connect(&qmp_path, &mut child)?;
        let agent = connect(&agent_path, &mut child)?;
        let mut vm = Vm {
            child,
            qmp: BufReader::new(qmp),
            agent: BufReader::new(agent),
            next_id: 0,
            wav: Wav::new(wav_path),
            accel,
            ready_after: Duration::ZERO,
            greeting: Vec::new(),
            events: Vec::new(),
        };
        let mut greeting = String::new();
        vm.qmp
            .read_line(&mut greeting)
            .map_err(|e| format!("QMP: {e}"))?;
        vm.qmp("{\"execute\":\"qmp_capabilities\"}")?;
        // KVM on these machines stops at once (an MSR QEMU cannot set, or an emulation
        // failure that pauses the guest): seen within seconds, so TCG takes over quickly.
        let boot = vm
            .running_for(Duration::from_secs(if accel == "kvm" { 8 } else { 0 }))
            .and_then(|()| vm.wait_for_ready_tone_within(deadline))
            .and_then(|()| vm.wait_agent(powered_on + deadline));
        if let Err(e) = boot {
            let log = fs::read_to_string(&serial).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            vm.power_cut();
            return Err(format!(
                "{e} ({accel}); last lines on the serial console:\n{}",
                tail.join("\n")
            ));
        }
        vm.ready_after = vm
            .wav
            .first_sound_at
            .map_or(Duration::ZERO, |t| t - powered_on);
        Ok(vm)
    }

    /// Checks for `time` that QEMU runs and its guest is not stopped by an error.
    fn running_for(&mut self, time: Duration) -> Result<(), String> {
        let until = Instant::now() + time;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("QEMU exited ({status}): {}", err.trim()));
            }
            let status = self.qmp("{\"execute\":\"query-status\"}")?;
            if !status.replace(' ', "").contains("\"running\":true") {
                return Err(format!("the guest stopped: {}", status.trim()));
            }
            thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    fn wait_agent(&mut self, until: Instant) -> Result<(), String> {
        let stream = self.agent.get_ref();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        loop {
            line.clear();
            match self.agent.read_line(&mut line) {
                Ok(0) => return Err("the agent's port closed".to_owned()),
                Ok(_) if line.trim() == "@@READY" => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("agent: {e}")),
            }
            if Instant::now() > until {
                return Err("the agent did not start".to_owned());
            }
        }
    }

    /// Runs `command` in the guest as root; its output, or an error with it when it failed.
    fn agent(&mut self, command: &str) -> Result<String, String> {
        println!(
            "xtask: system-test: guest# {}",
            command.replace(SECRET, "<secret>")
        );
        self.next_id += 1;
        let id = self.next_id;
        let line = format!("{id} {}\n", command.replace('\n', " "));
        self.agent
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("agent: {e}"))?;
        let until = Instant::now() + Duration::from_secs(60);
        let mut out = String::new();
        let mut buf = String::new();
        loop {
            buf.clear();
            match self.agent.read_line(&mut buf) {
                Ok(0) => return Err("the agent's port closed".to_owned()),
                Ok(_) => {
                    if let Some(rest) = buf.trim_end().strip_prefix("@@END ") {
                        let mut words = rest.split(' ');
                        if words.next() == Some(&id.to_string()) {
                            let rc = words.next().unwrap_or("?");
                            if rc == "0" {
                                return Ok(out);
                            }
                            return Err(format!("in the guest, `{command}` failed ({rc}):\n{out}"));
                        }
                    } else if buf.trim_end() != "@@READY" {
                        out.push_str(&buf);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("agent: {e}")),
            }
            if Instant::now() > until {
                return Err(format!("the agent did not answer `{command}`"));
            }
        }
    }

    /// Sends `command` without waiting for its answer (a power-off never answers).
    fn agent_nowait(&mut self, command: &str) -> Result<(), String> {
        self.next_id += 1;
        let line = format!("{} {command}\n", self.next_id);
        self.agent
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("agent: {e}"))
    }

    /// Sends one QMP command; its `return`, or its error.
    fn qmp(&mut self, command: &str) -> Result<String, String> {
        self.qmp
            .get_mut()
            .write_all(command.as_bytes())
            .map_err(|e| format!("QMP: {e}"))?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .qmp
                .read_line(&mut line)
                .map_err(|e| format!("QMP: {e}"))?;
            if n == 0 {
                return Err("QMP closed".to_owned());
            }
            if line.contains("\"event\"") {
                self.events.push(line.clone());
            } else if line.contains("\"return\"") {
                return Ok(line);
            } else if line.contains("\"error\"") {
                return Err(format!("QMP {command}: {line}"));
            }
        }
    }

    /// Waits for a QMP event named `name`.
    fn wait_event(&mut self, name: &str) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        let quoted = format!("\"{name}\"");
        if let Some(i) = self.events.iter().position(|e| e.contains(&quoted)) {
            self.events.remove(i);
            return Ok(());
        }
        self.qmp
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        let found = loop {
            line.clear();
            match self.qmp.read_line(&mut line) {
                Ok(0) => break Err("QMP closed".to_owned()),
                Ok(_) if line.contains(&quoted) => break Ok(()),
                Ok(_) => {}
                Err(_) if Instant::now() < until => {}
                Err(e) => break Err(format!("no {name} event: {e}")),
            }
        };
        self.qmp
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| e.to_string())?;
        found
    }

    /// Presses and releases a key on the USB keypad.
    /// Presses and releases a key: QMP `send-key`, which goes to the guest's keyboard (the
    /// USB keypad is the only one: the machine has no PS/2 controller, `i8042=off`).
    fn press(&mut self, key: &str) -> Result<(), String> {
        println!("xtask: system-test: key {key}");
        self.qmp(&format!(
            "{{\"execute\":\"send-key\",\"arguments\":{{\"keys\":[{{\"type\":\"qcode\",\
             \"data\":\"{key}\"}}]}}}}"
        ))
        .map(drop)
    }

    /// Presses `key` and hears the code it speaks, then makes sure of it (see
    /// [`Vm::confirm`]).
    fn hear_code(&mut self, key: &str, clips: &Clips) -> Result<Reading, String> {
        let mark = self.wav.mark()?;
        self.press(key)?;
        let first = self.listen_code(mark, clips)?;
        self.confirm(first, clips)
    }

    /// The code `first` said, when its intro, digits and end chime were heard surely (each
    /// digit's clip beat every other clip by [`hearing::MARGIN`]). Otherwise (the emulated card under TCG
    /// on a busy machine cuts or garbles a piece now and then) asks again with the replay
    /// key, as a person who missed a digit would, until one reading is sure or two readings
    /// of the digits agree. An unsure reading never goes to the verifier.
    fn confirm(&mut self, first: Heard, clips: &Clips) -> Result<Reading, String> {
        let mut heard = vec![first];
        let mut why = match heard[0].code() {
            Ok(code) => return Ok(Reading::new(code, heard)),
            Err(e) => e,
        };
        for _ in 0..REPLAYS {
            println!("xtask: system-test: not heard surely ({why}); replay");
            REPLAYED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mark = self.wav.mark()?;
            self.press("kp_0")?;
            let again = self.listen_code(mark, clips)?;
            let sure = again.code();
            let digits = again.digits();
            heard.push(again);
            match sure {
                Ok(code) => return Ok(Reading::new(code, heard)),
                Err(e) => why = e,
            }
            if let Ok(digits) = digits {
                let earlier = heard[..heard.len() - 1]
                    .iter()
                    .any(|h| h.digits().as_ref() == Ok(&digits));
                if earlier {
                    println!("xtask: system-test: two readings agree: {digits}");
                    return Ok(Reading::new(digits, heard));
                }
            }
        }
        let readings: Vec<String> = heard.iter().filter_map(|h| h.digits().ok()).collect();
        Err(format!(
            "system-test: no sure code after {REPLAYS} replays ({why}); readings {readings:?}"
        ))
    }

    /// Presses `key` every few seconds until the device answers (a keypad just plugged in
    /// is found within the device's 2 s scan); what it said.
    fn press_until_heard(&mut self, key: &str, clips: &Clips) -> Result<Heard, String> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let mark = self.wav.mark()?;
            self.press(key)?;
            match self.wav.sound_within(mark, Duration::from_secs(5)) {
                Ok(()) => return self.listen_code(mark, clips),
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Hears the code utterance that starts after `mark`, to its end chime; after "this
    /// code is about to change", the code that follows when the time step begins.
    fn listen_code(&mut self, mark: usize, clips: &Clips) -> Result<Heard, String> {
        let (heard, end) = self.listen(mark, clips, SPEECH_DEADLINE, true)?;
        if heard.code_changing() {
            return self
                .listen(end, clips, SPEECH_DEADLINE + Duration::from_secs(30), true)
                .map(|(heard, _)| heard);
        }
        Ok(heard)
    }

    /// Records from `mark` until the utterance that starts after it has ended (a code: its
    /// end chime or "about to change"; else silence in the recording), decodes it; the
    /// recording's position at its end.
    fn listen(
        &mut self,
        mark: usize,
        clips: &Clips,
        limit: Duration,
        code: bool,
    ) -> Result<(Heard, usize), String> {
        let rate = self.wav.rate;
        let (audio, end) = self.wav.utterance(mark, limit, |audio| {
            !code || clips.decode(audio, rate).ended()
        })?;
        let heard = clips.decode(&audio, rate);
        println!(
            "xtask: system-test: heard {:.1} s: {}",
            audio.len() as f64 / f64::from(rate),
            heard.phrases().join(" ")
        );
        Ok((heard, end))
    }

    fn wait_for_sound(&mut self, mark: usize) -> Result<(), String> {
        self.wav.sound_within(mark, SPEECH_DEADLINE)
    }

    /// Waits for the start-up chime (and whatever the device says with it) that follows
    /// `mark`.
    fn wait_for_ready_tone(&mut self, mark: usize) -> Result<(), String> {
        self.greeting = self.wav.utterance(mark, BOOT_DEADLINE, |_| true)?.0;
        Ok(())
    }

    fn wait_for_ready_tone_within(&mut self, deadline: Duration) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("QEMU exited ({status})"));
        }
        self.greeting = self.wav.utterance(0, deadline, |_| true)?.0;
        Ok(())
    }

    /// The last start-up greeting did not say "No keypad is connected": the keypad was
    /// found when the service started.
    fn greeted_with_keypad(&self, clips: &Clips, when: &str) -> Result<(), String> {
        let heard = clips.decode(&self.greeting, self.wav.rate);
        expect(!heard.says("no_input"), || {
            format!(
                "{when}, the device said no keypad is connected: {}",
                heard.summary()
            )
        })
    }

    /// Pulls the plug: QEMU killed, nothing flushed.
    fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            if Instant::now() > until {
                self.power_cut();
                return Err("the guest did not power off".to_owned());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
    }
}

/// A code the test believes, and what was heard on the way.
struct Reading {
    code: String,
    /// What the key said first (then each replay).
    heard: Vec<Heard>,
    /// The first sentence (e.g. "clock_unsynced", "replay_intro") of a reading of this
    /// code that heard it surely.
    opening: Option<String>,
}

impl Reading {
    fn new(code: String, heard: Vec<Heard>) -> Reading {
        let opening = heard
            .iter()
            .rev()
            .filter(|h| h.digits().as_ref() == Ok(&code))
            .find_map(|h| h.first_sentence().map(str::to_owned));
        Reading {
            code,
            heard,
            opening,
        }
    }

    /// What the key said first.
    fn first(&self) -> &Heard {
        &self.heard[0]
    }
}

// ---------------------------------------------------------------------------------------
// The recording.

/// QEMU's WAV of the guest's sound card, read as it grows (mono mix, f32). Positions in it
/// (marks) are sample indices: QEMU's audio timer writes silence too, in step with the
/// emulated clock, so the recording's own silence (not the wall clock, which a stalled
/// QEMU on a busy machine stretches) says when an utterance has ended.
struct Wav {
    path: PathBuf,
    rate: u32,
    channels: usize,
    offset: u64,
    samples: Vec<f32>,
    /// Each loud 10 ms frame: its first sample and when it was read.
    loud: Vec<(usize, Instant)>,
    first_sound_at: Option<Instant>,
}

/// A frame counts as sound above this RMS (about -50 dBFS).
const SOUND: f32 = 0.003;

impl Wav {
    fn new(path: PathBuf) -> Wav {
        Wav {
            path,
            rate: 48_000,
            channels: 2,
            offset: 0,
            samples: Vec::new(),
            loud: Vec::new(),
            first_sound_at: None,
        }
    }

    /// Reads what QEMU has appended since the last read.
    fn poll(&mut self) -> Result<(), String> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        use std::io::Seek;
        if self.offset == 0 {
            let mut header = [0u8; 44];
            if file.read_exact(&mut header).is_err() {
                return Ok(());
            }
            self.channels = usize::from(u16::from_le_bytes([header[22], header[23]]).max(1));
            self.rate = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
            self.offset = 44;
        }
        file.seek(std::io::SeekFrom::Start(self.offset))
            .map_err(|e| e.to_string())?;
        file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let frame = 2 * self.channels;
        let whole = bytes.len() / frame * frame;
        self.offset += whole as u64;
        let now = Instant::now();
        let before = self.samples.len();
        for chunk in bytes[..whole].chunks_exact(frame) {
            let mut sum = 0.0;
            for c in 0..self.channels {
                sum += f32::from(i16::from_le_bytes([chunk[2 * c], chunk[2 * c + 1]])) / 32768.0;
            }
            self.samples.push(sum / self.channels as f32);
        }
        let step = (self.rate / 100) as usize;
        let start = self.loud.last().map_or(before / step * step, |&(i, _)| {
            (i + step).max(before / step * step)
        });
        let mut i = start;
        while i + step <= self.samples.len() {
            let rms =
                (self.samples[i..i + step].iter().map(|x| x * x).sum::<f32>() / step as f32).sqrt();
            if rms > SOUND {
                self.loud.push((i, now));
                self.first_sound_at.get_or_insert(now);
            }
            i += step;
        }
        Ok(())
    }

    /// The current end of the recording: sound after it is what follows.
    fn mark(&mut self) -> Result<usize, String> {
        self.poll()?;
        Ok(self.samples.len())
    }

    fn sound_within(&mut self, mark: usize, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            self.poll()?;
            if self.loud.last().is_some_and(|&(i, _)| i >= mark) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("no sound within {} s", limit.as_secs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for sound after `mark`, then for [`QUIET`] of recorded silence after which
    /// `ended` says the utterance is whole (else for more, up to [`GIVE_UP`] of silence: the
    /// rest never came); returns the samples from the first loud frame on, and the
    /// recording's end then.
    fn utterance(
        &mut self,
        mark: usize,
        limit: Duration,
        mut ended: impl FnMut(&[f32]) -> bool,
    ) -> Result<(Vec<f32>, usize), String> {
        let until = Instant::now() + limit;
        let quiet = (QUIET.as_secs_f64() * f64::from(self.rate)) as usize;
        let give_up = (GIVE_UP.as_secs_f64() * f64::from(self.rate)) as usize;
        let step = (self.rate / 100) as usize;
        let mut judged = None;
        loop {
            self.poll()?;
            let first = self.loud.iter().find(|&&(i, _)| i >= mark).map(|&(i, _)| i);
            if let (Some(first), Some(&(last, _))) = (first, self.loud.last()) {
                let start = first.saturating_sub(self.rate as usize / 20).max(mark);
                let silent = self.samples.len().saturating_sub(last + step);
                if silent >= quiet && judged != Some(last) {
                    judged = Some(last);
                    if ended(&self.samples[start..]) {
                        return Ok((self.samples[start..].to_vec(), self.samples.len()));
                    }
                }
                if silent >= give_up || Instant::now() > until {
                    return Ok((self.samples[start..].to_vec(), self.samples.len()));
                }
            } else if Instant::now() > until {
                return Err(format!("no sound within {} s", limit.as_secs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The verifier on this machine.

struct Verifier {
    child: Child,
    state: PathBuf,
    address: String,
    key: String,
}

impl Verifier {
    fn bin() -> PathBuf {
        target_dir().join("debug/codereader-verifier")
    }

    fn start(work: &Path) -> Result<Verifier, String> {
        let state = work.join("verifier");
        fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let out = Command::new(Self::bin())
            .args(["api-key", "create", "--scope", "verify"])
            .env("CODEREADER_STATE", &state)
            .output()
            .map_err(|e| format!("codereader-verifier: {e}"))?;
        expect(out.status.success(), || {
            format!("api-key create: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let key = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(Self::bin())
            .args(["serve", "--listen", &address])
            .env("CODEREADER_STATE", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("codereader-verifier serve: {e}"))?;
        let verifier = Verifier {
            child,
            state,
            address,
            key,
        };
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&verifier.address).is_err() {
            if Instant::now() > until {
                return Err("the verifier did not listen".to_owned());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(verifier)
    }

    fn add(&self, serial: &str, uri: &str) -> Result<(), String> {
        let mut child = Command::new(Self::bin())
            .args(["token", "add", "--serial", serial, "--uri", "-"])
            .env("CODEREADER_STATE", &self.state)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("token add: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(uri.as_bytes()).map_err(|e| e.to_string())?;
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        expect(status.success(), || format!("token add {serial} failed"))
    }

    /// Sends `code` for `serial`; the verifier's `result` must be `want`.
    fn expect(&self, serial: &str, code: &str, want: &str) -> Result<(), String> {
        let result = self.verify(serial, code)?;
        expect(result == want, || {
            format!("the verifier, for {serial} code {code}, wanted {want}: {result}")
        })
    }

    /// Sends `code` for `serial`; the verifier's `result` (or its whole answer when it has
    /// none).
    fn verify(&self, serial: &str, code: &str) -> Result<String, String> {
        let body = format!("{{\"token\":\"{serial}\",\"code\":\"{code}\"}}");
        let mut stream = TcpStream::connect(&self.address).map_err(|e| e.to_string())?;
        write!(
            stream,
            "POST /v1/verify HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            self.key,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        Ok(response
            .split_once("\"result\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or(response.clone(), |(result, _)| result.to_owned()))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
