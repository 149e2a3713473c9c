//! `cargo xtask system-test`: the appliance booted in QEMU and used from outside, like a
//! person: its Intel HDA sound card recorded to a WAV on this machine (`-audiodev wav`), its
//! USB keypad (a `usb-kbd` on `qemu-xhci`) pressed with QMP `send-key` and pulled
//! out and plugged back with `device_del`/`device_add`, its power cut by killing QEMU. Every
//! code it speaks is decoded from the recording (matched against the voice's own clips) and
//! checked by a `codereader-verifier` on this machine holding the same token.
//!
//! The test image has, besides the shipped image's contents, a control agent on a
//! virtio-serial port (a shell loop: the test enrols tokens, reads `systemctl` and
//! `journalctl`, kills the service) and the test's config. The checks, numbered as in
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

use crate::demo::target_dir;
use crate::image::{self, Arch};
use crate::{cargo, deb, deb_check, packages, run};

mod arm64;
mod machine;

use machine::Machine;

/// The test token's secret (160 bits, base32): RFC 4226's test secret.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const AGENT_PORT: &str = "org.codereader.agent";

/// How long one TCG boot may take before the test gives up (measured: about 30-40 s).
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// How long a spoken code may take, from the key to the end of the speech.
const SPEECH_DEADLINE: Duration = Duration::from_secs(45);
/// Silence (wall clock) that ends an utterance.
const QUIET: Duration = Duration::from_millis(1300);
/// How many times the power is cut.
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

/// The test image's config: the shipped one (any keypad that appears is taken), playing on
/// QEMU's HDA card directly. Through ALSA's `default` (dmix) the emulated card stops
/// receiving samples after the service restarts: dmix's free-running stream and QEMU's
/// HDA timing under TCG (seen here; a real card is not affected).
fn test_config() -> String {
    format!(
        "{}\n[audio]\ndevice = \"plughw:CARD=Intel,DEV=0\"\n",
        image::SHIPPED_CONFIG
    )
}

pub(crate) fn system_test(args: &[String]) -> Result<(), String> {
    let mut arch = Arch::Amd64;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--arch" => arch = Arch::parse(rest.next().ok_or("--arch needs amd64 or arm64")?)?,
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
    let config = test_config();
    let extra = vec![
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
    let built = Instant::now();
    let image = image::build(&image::Spec {
        arch,
        deb: &deb,
        config: &config,
        extra: &extra,
        enable: &["codereader-agent.service"],
        name: &format!("codereader-test-{}", arch.debian()),
    })?;
    println!(
        "xtask: system-test: test image ready in {:.0} s ({} MiB)",
        built.elapsed().as_secs_f64(),
        fs::metadata(&image).map(|m| m.len() >> 20).unwrap_or(0)
    );
    let disk = work.join("disk.qcow2");
    run(
        "a copy-on-write disk over the cached image",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(&disk),
    )?;
    let machine = Machine::new(arch, &image, disk, &work)?;
    let clips = Clips::load(&voices.join("en"))?;
    let verifier = Verifier::start(&work)?;
    let result = match arch {
        Arch::Amd64 => checks(&work, &machine, &clips, &verifier),
        Arch::Arm64 => arm64::checks(&work, &machine, &clips, &verifier),
    };
    drop(verifier);
    result?;
    println!(
        "xtask: system-test passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn checks(
    work: &Path,
    machine: &Machine,
    clips: &Clips,
    verifier: &Verifier,
) -> Result<(), String> {
    // 1. Boot to the ready tone: KVM when it boots this kernel, else TCG.
    let mut vm = boot_any(work, machine)?;
    let mut report = vec![format!(
        "boot to the ready tone: {:.1} s ({})",
        vm.ready_after.as_secs_f64(),
        vm.accel
    )];
    println!("xtask: system-test: 1. {}", report[0]);
    let active = vm.agent("systemctl is-active codereader")?;
    expect(active.trim() == "active", || {
        format!("codereader is {active}")
    })?;

    // The TOTP token, enrolled on the device as a helper would; the verifier holds it too.
    let totp = format!("otpauth://totp/System:test?secret={SECRET}&issuer=System");
    verifier.add("SYS-T", &totp)?;
    enrol(&mut vm, &totp)?;

    // 6. The clock not synchronised since boot: the warning, then the code.
    let flag = vm.agent("test -e /run/systemd/timesync/synchronized && echo synced || echo not")?;
    expect(flag.trim() == "not", || {
        format!("the guest says its clock was synchronised: {flag}")
    })?;
    let (heard, code) = vm.hear_code("kp_5", clips)?;
    expect(
        heard.phrases.first().map(String::as_str) == Some("clock_unsynced"),
        || format!("no clock warning before the code: heard {heard:?}"),
    )?;
    verifier.expect("SYS-T", &code, "accepted")?;
    println!("xtask: system-test: 6. unsynchronised clock: warning, then {code} (accepted)");

    // 2. Clock synchronised: a key press speaks the current code; a second press in the
    // same time step says the same code (the verifier refuses it again); replay says it.
    vm.agent("mkdir -p /run/systemd/timesync && touch /run/systemd/timesync/synchronized")?;
    wait_for_next_step();
    let (heard, code) = vm.hear_code("kp_5", clips)?;
    expect(
        heard.phrases.first().map(String::as_str) == Some("intro"),
        || format!("not 'Your code is' first: heard {heard:?}"),
    )?;
    verifier.expect("SYS-T", &code, "accepted")?;
    // Replay says the same code ("Again. Your code is"; the verifier: replayed), or, once
    // its time step has passed, says so and gives the new code (accepted). A second press
    // in the same step says the same code again.
    let (replay, replayed) = vm.hear_code("kp_0", clips)?;
    let mut last = replayed.clone();
    match replay.phrases.first().map(String::as_str) {
        Some("replay_intro") => {
            expect(replayed == code, || {
                format!("replay said {replayed}, the last code was {code}")
            })?;
            verifier.expect("SYS-T", &replayed, "replayed")?;
        }
        Some("expired_intro") => verifier.expect("SYS-T", &replayed, "accepted")?,
        _ => {
            return Err(format!(
                "replay said neither 'Again' nor 'expired': {replay:?}"
            ));
        }
    }
    let (_, again) = vm.hear_code("kp_5", clips)?;
    let second = if again == last {
        "replayed"
    } else {
        "accepted"
    };
    verifier.expect("SYS-T", &again, second)?;
    last = again;
    let log = vm.agent("journalctl -u codereader -o cat --no-pager | grep 'speaking the code'")?;
    print!("{log}");
    println!(
        "xtask: system-test: 2. key press: {code} (accepted); replay {replayed}; second \
         press {last} ({second})"
    );

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
    let code = vm.hear_code("kp_5", clips)?.1;
    given.accept(verifier, &code)?;
    vm.agent("systemctl kill --signal=SIGKILL codereader")?;
    vm.wait_for_ready_tone(Instant::now())?;
    let restarts = vm.agent("systemctl show -P NRestarts codereader")?;
    expect(restarts.trim() != "0", || {
        "systemd did not restart it".to_owned()
    })?;
    let code = vm.hear_code("kp_5", clips)?.1;
    given.accept(verifier, &code)?;
    println!(
        "xtask: system-test: 7. active, no error lines, restarted after SIGKILL ({} restart), \
         speaks {code}",
        restarts.trim()
    );

    // 4. The keypad pulled out and plugged back in (same port): it works again without a
    // restart.
    let mark = vm.wav.mark()?;
    vm.qmp("{\"execute\":\"device_del\",\"arguments\":{\"id\":\"keypad\"}}")?;
    vm.wait_event("DEVICE_DELETED")?;
    let told = vm.listen(mark, clips)?;
    expect(told.phrases.iter().any(|p| p == "no_input"), || {
        format!("unplugged, the device did not say so: heard {told:?}")
    })?;
    vm.qmp(
        "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"usb-kbd\",\"id\":\"keypad\",\
         \"bus\":\"xhci.0\",\"port\":\"1\"}}",
    )?;
    let heard = vm.press_until_heard("kp_5", clips)?;
    let code = match heard.code() {
        Ok(code) => code,
        Err(_) => vm.hear_code("kp_0", clips)?.1,
    };
    given.accept(verifier, &code)?;
    println!(
        "xtask: system-test: 4. keypad unplugged: \"No keypad is connected\"; plugged back: speaks {code}"
    );

    // 5. Power cuts while HOTP codes are given: QEMU killed at a different moment each
    // time; after each boot the device starts, no counter is given twice and the state
    // file system needed no repair.
    for cut in 0..POWER_CUTS {
        vm.press("kp_5")?;
        match cut % 3 {
            // Right after the key: the counter may be stored, nothing spoken.
            0 => {}
            // In the middle of the code.
            1 => vm.wait_for_sound(Instant::now())?,
            // After a whole code.
            _ => {
                let heard = vm.listen(Instant::now(), clips)?;
                let code = match heard.code() {
                    Ok(code) => code,
                    Err(_) => vm.hear_code("kp_0", clips)?.1,
                };
                given.accept(verifier, &code)?;
            }
        }
        vm.power_cut();
        vm = Vm::boot(work, machine, vm.accel)?;
        let failed = vm.agent("systemctl --failed --no-legend --plain")?;
        expect(failed.trim().is_empty(), || {
            format!("failed units after a power cut:\n{failed}")
        })?;
        let fsck = vm.agent("journalctl -b -o cat --no-pager -u 'systemd-fsck*'")?;
        expect(
            !fsck.contains("UNEXPECTED") && !fsck.contains("MANUALLY"),
            || format!("fsck after a power cut:\n{fsck}"),
        )?;
        let code = vm.hear_code("kp_5", clips)?.1;
        given.accept(verifier, &code)?;
        println!(
            "xtask: system-test: 5. power cut {} of {POWER_CUTS}: booted in {:.1} s, speaks {code}",
            cut + 1,
            vm.ready_after.as_secs_f64()
        );
    }
    report.push(format!(
        "{POWER_CUTS} power cuts, {} HOTP codes each accepted once",
        given.codes.len()
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
    vm.agent(&format!(
        "printf '%s' '{uri}' | runuser -u codereader -- env CODEREADER_STATE=/var/lib/codereader \
         codereader enroll --replace --uri - && systemctl restart codereader"
    ))?;
    vm.wait_for_ready_tone(Instant::now())
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
            .and_then(|()| vm.wait_for_ready_tone_within(powered_on, deadline))
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

    /// Presses `key` and hears the code it speaks. When the recording lost part of it (the
    /// emulated card plays silence while the guest is late, which is often under TCG on a
    /// busy machine), asks again with the replay key, as a person who missed a digit would:
    /// replay says the same code. Returns what the first press said and the code.
    fn hear_code(&mut self, key: &str, clips: &Clips) -> Result<(Heard, String), String> {
        let first = self.press_and_listen(key, clips)?;
        if let Ok(code) = first.code() {
            return Ok((first, code));
        }
        for _ in 0..4 {
            println!("xtask: system-test: part of the code was lost; replay");
            if let Ok(code) = self.press_and_listen("kp_0", clips)?.code() {
                return Ok((first, code));
            }
        }
        first.code().map(|code| (first, code))
    }

    fn press_and_listen(&mut self, key: &str, clips: &Clips) -> Result<Heard, String> {
        let mark = self.wav.mark()?;
        self.press(key)?;
        self.listen(mark, clips)
    }

    /// Presses `key` every few seconds until the device answers (a keypad just plugged in
    /// is found within the device's 2 s scan).
    fn press_until_heard(&mut self, key: &str, clips: &Clips) -> Result<Heard, String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let mark = self.wav.mark()?;
            self.press(key)?;
            match self.wav.sound_within(mark, Duration::from_secs(3)) {
                Ok(()) => return self.listen(mark, clips),
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Records from `mark` until the utterance that starts after it has ended, and decodes
    /// it.
    fn listen(&mut self, mark: Instant, clips: &Clips) -> Result<Heard, String> {
        let audio = self.wav.utterance(mark, SPEECH_DEADLINE)?;
        let heard = clips.decode(&audio);
        println!(
            "xtask: system-test: heard {:.1} s: {}",
            audio.len() as f64 / 48_000.0,
            heard.phrases.join(" ")
        );
        Ok(heard)
    }

    fn wait_for_sound(&mut self, mark: Instant) -> Result<(), String> {
        self.wav.sound_within(mark, SPEECH_DEADLINE)
    }

    fn wait_for_ready_tone(&mut self, mark: Instant) -> Result<(), String> {
        self.wav.utterance(mark, BOOT_DEADLINE).map(|_| ())
    }

    fn wait_for_ready_tone_within(
        &mut self,
        mark: Instant,
        deadline: Duration,
    ) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("QEMU exited ({status})"));
        }
        self.wav.utterance(mark, deadline).map(|_| ())
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

// ---------------------------------------------------------------------------------------
// The recording.

/// QEMU's WAV of the guest's sound card, read as it grows (mono mix, f32).
struct Wav {
    path: PathBuf,
    rate: u32,
    channels: usize,
    offset: u64,
    samples: Vec<f32>,
    /// Arrival time of each 10 ms frame that was loud.
    loud: Vec<(usize, Instant)>,
    first_sound_at: Option<Instant>,
    /// Wall-clock time at which each sample index arrived (one entry per read).
    arrivals: Vec<(usize, Instant)>,
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
            arrivals: Vec::new(),
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
        if self.samples.len() > before {
            self.arrivals.push((self.samples.len(), now));
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

    /// The moment from which later sound counts (the current end of the recording).
    fn mark(&mut self) -> Result<Instant, String> {
        self.poll()?;
        Ok(Instant::now())
    }

    fn sound_within(&mut self, mark: Instant, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            self.poll()?;
            if self.loud.iter().any(|&(_, t)| t >= mark) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("no sound within {} s", limit.as_secs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for sound that arrives after `mark`, then for [`QUIET`] without sound; returns
    /// the samples from the first loud frame on.
    fn utterance(&mut self, mark: Instant, limit: Duration) -> Result<Vec<f32>, String> {
        let until = Instant::now() + limit;
        loop {
            self.poll()?;
            let after: Vec<&(usize, Instant)> =
                self.loud.iter().filter(|&&(_, t)| t >= mark).collect();
            if let (Some(first), Some(last)) = (after.first(), after.last()) {
                if last.1.elapsed() >= QUIET {
                    let start = first.0.saturating_sub(self.rate as usize / 20);
                    return Ok(self.samples[start..].to_vec());
                }
            }
            if Instant::now() > until {
                return Err(format!(
                    "no sound (or no end of it) within {} s",
                    limit.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hearing: the voice's own clips matched against what the card played.

/// The rate the matching runs at.
const MATCH_RATE: u32 = 8_000;
/// How much of a clip is matched (0.8 s): digits whole, sentences by their start.
const PREFIX: usize = MATCH_RATE as usize * 4 / 5;

struct Clips {
    /// (name, samples at [`MATCH_RATE`]): digits "0".."9" and the prompts the test hears.
    refs: Vec<(String, Vec<f32>)>,
}

/// What one utterance was heard to say: the prompts and digits, in order.
#[derive(Debug)]
struct Heard {
    phrases: Vec<String>,
}

impl Heard {
    /// The six digits it said.
    fn code(&self) -> Result<String, String> {
        let digits: String = self
            .phrases
            .iter()
            .filter(|p| p.len() == 1 && p.chars().all(|c| c.is_ascii_digit()))
            .map(String::as_str)
            .collect();
        expect(digits.len() == 6, || {
            format!("heard no six-digit code: {:?}", self.phrases)
        })?;
        Ok(digits)
    }
}

impl Clips {
    fn load(pack: &Path) -> Result<Clips, String> {
        let toml = fs::read_to_string(pack.join("voice.toml"))
            .map_err(|e| format!("{}: {e}", pack.display()))?;
        let _ = toml;
        let clips = pack.join("clips");
        // The pack's default voice: the first directory that has the digits.
        let mut dirs: Vec<PathBuf> = fs::read_dir(&clips)
            .map_err(|e| format!("{}: {e}", clips.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        dirs.sort();
        let dir = dirs
            .into_iter()
            .find(|d| d.ends_with("flite-slt"))
            .ok_or_else(|| format!("no flite-slt clips in {}", clips.display()))?;
        let mut refs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix("@0.wav") else {
                continue;
            };
            let label = if let Some(d) = stem.strip_prefix("digit-") {
                d.to_owned()
            } else {
                stem.to_owned()
            };
            let wanted = label.len() == 1
                || [
                    "intro",
                    "replay_intro",
                    "clock_unsynced",
                    "expired_intro",
                    "no_input",
                ]
                .contains(&label.as_str());
            if wanted {
                let (rate, samples) = read_wav(&path)?;
                let mut clip = trim(&resample(&samples, rate, MATCH_RATE));
                // A sentence is known by its first 0.8 s: a gap the emulated card inserts
                // later in it (the guest late for a period) does not hide it.
                clip.truncate(PREFIX);
                refs.push((label, clip));
            }
        }
        expect(
            refs.iter().filter(|(l, _)| l.len() == 1).count() == 10,
            || {
                format!(
                    "not ten digit clips in {}: {:?}",
                    dir.display(),
                    refs.iter().map(|r| &r.0).collect::<Vec<_>>()
                )
            },
        )?;
        Ok(Clips { refs })
    }

    /// Splits the utterance at silences and names each part by the clips it starts with:
    /// the clip that correlates best at the start of the part is taken, then the rest of
    /// the part is read the same way (an earcon and a word, or two words, with a short pause
    /// between them make one part).
    fn decode(&self, audio_48k: &[f32]) -> Heard {
        let audio = resample(audio_48k, 48_000, MATCH_RATE);
        // Parts apart by 120 ms of silence; when that does not give six digits (two words
        // closer than that made one part), by 60 ms.
        let wide = self.decode_parts(&audio, 12);
        if wide.code().is_ok() {
            return wide;
        }
        let narrow = self.decode_parts(&audio, 6);
        if narrow.code().is_ok() { narrow } else { wide }
    }

    fn decode_parts(&self, audio: &[f32], gap_frames: usize) -> Heard {
        let mut phrases = Vec::new();
        let min = (MATCH_RATE / 10) as usize;
        for (start, end) in spans(audio, gap_frames) {
            let mut at = start;
            // Where a word ended (or the part began), a word of the voice follows at once;
            // after a stretch that matched nothing, only a close match counts (a short
            // digit can resemble a piece of a longer word).
            let mut aligned = true;
            while end.saturating_sub(at) >= min {
                let part = &audio[at..end];
                let mut best: Option<(&str, f64, usize, bool)> = None;
                for (label, clip) in &self.refs {
                    let (r, lag) = match_at_start(part, clip);
                    if best.is_none_or(|b| r > b.1) {
                        let used = (lag + clip.len() as isize).max(1) as usize;
                        best = Some((label, r, used, clip.len() >= PREFIX));
                    }
                }
                let threshold = if aligned { 0.5 } else { 0.75 };
                match best {
                    Some((label, r, used, sentence)) if r > threshold => {
                        phrases.push(label.to_owned());
                        at += used;
                        aligned = true;
                        if sentence {
                            // The rest of a sentence is not read for more words.
                            at = end;
                        }
                    }
                    // Not a word of the voice here (an earcon just before a word): on by
                    // 20 ms.
                    _ => {
                        at += (MATCH_RATE / 50) as usize;
                        aligned = false;
                    }
                }
            }
        }
        Heard { phrases }
    }
}

/// Stretches of sound separated by at least `gap_frames` × 10 ms below -40 dB of the loudest 10 ms frame.
fn spans(audio: &[f32], gap_frames: usize) -> Vec<(usize, usize)> {
    let step = (MATCH_RATE / 100) as usize;
    let rms: Vec<f32> = audio
        .chunks(step)
        .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let loudest = rms.iter().copied().fold(0.0, f32::max);
    let threshold = loudest * 0.01;
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for (i, &r) in rms.iter().enumerate() {
        if r > threshold {
            current = match current {
                Some((s, e)) if i - e <= gap_frames => Some((s, i)),
                Some(done) => {
                    out.push(done);
                    Some((i, i))
                }
                None => Some((i, i)),
            };
        }
    }
    out.extend(current);
    out.into_iter()
        .map(|(s, e)| (s * step, ((e + 1) * step).min(audio.len())))
        .collect()
}

/// The best normalised cross-correlation of `clip` with the start of `part` (shifted by up
/// to ±40 ms), and that shift in samples. The clip's whole energy is the measure, so a clip
/// longer than the part scores low.
fn match_at_start(part: &[f32], clip: &[f32]) -> (f64, isize) {
    let lag_max = (MATCH_RATE / 25) as isize;
    let mut best = (0.0_f64, 0_isize);
    let clip_energy: f64 = clip.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    for lag in (-lag_max..=lag_max).step_by(2) {
        let (mut dot, mut energy) = (0.0_f64, 0.0_f64);
        for (i, &c) in clip.iter().enumerate() {
            let j = i as isize + lag;
            if j < 0 || j as usize >= part.len() {
                continue;
            }
            let p = f64::from(part[j as usize]);
            dot += p * f64::from(c);
            energy += p * p;
        }
        let r = dot / (energy.sqrt() * clip_energy.sqrt()).max(f64::EPSILON);
        if r > best.0 {
            best = (r, lag);
        }
    }
    best
}

fn trim(samples: &[f32]) -> Vec<f32> {
    let loudest = samples.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
    let quiet = loudest * 0.02;
    let start = samples.iter().position(|x| x.abs() > quiet).unwrap_or(0);
    let end = samples
        .iter()
        .rposition(|x| x.abs() > quiet)
        .map_or(samples.len(), |e| e + 1);
    samples[start..end].to_vec()
}

/// Box-filtered linear resampling (enough for matching).
fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let n = (samples.len() as f64 / ratio) as usize;
    let width = ratio.max(1.0) as usize;
    (0..n)
        .map(|i| {
            let centre = (i as f64 * ratio) as usize;
            let lo = centre.saturating_sub(width / 2);
            let hi = (centre + width / 2 + 1).min(samples.len());
            samples[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect()
}

/// A 16-bit PCM WAV file: (rate, mono samples).
fn read_wav(path: &Path) -> Result<(u32, Vec<f32>), String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = || format!("{}: not a 16-bit PCM WAV", path.display());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad());
    }
    let (mut rate, mut channels, mut at) = (0u32, 1usize, 12usize);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            channels = usize::from(u16::from_le_bytes([body[2], body[3]]).max(1));
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            if u16::from_le_bytes([body[14], body[15]]) != 16 {
                return Err(bad());
            }
        } else if id == b"data" {
            let samples = body
                .chunks_exact(2 * channels)
                .map(|f| f32::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0)
                .collect();
            return Ok((rate, samples));
        }
        at += 8 + len + (len & 1);
    }
    Err(bad())
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
        expect(response.contains(&format!("\"result\":\"{want}\"")), || {
            format!("the verifier, for {serial} code {code}, wanted {want}: {response}")
        })
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
