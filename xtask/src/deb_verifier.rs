//! The Debian package of the verifier service (`codereader-verifier`), built like the
//! device's (`deb.rs`: `dpkg-deb`, no debhelper), and its check in `cargo xtask deb-check`.
//!
//! ```text
//! usr/bin/codereader-verifier                          the program, stripped
//! etc/codereader-verifier/verifier.toml                conffile: `serve --config` settings
//!                                                      (root:codereader-verifier 0640)
//! lib/systemd/system/codereader-verifier.service       hardened unit, reads the conffile
//! usr/share/doc/codereader-verifier/                   copyright, changelog.gz, README.md
//! DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}
//! ```
//!
//! The maintainer scripts live in `crates/server/packaging/debian/`: `postinst` creates the
//! system user `codereader-verifier` and its state directory `/var/lib/codereader-verifier`
//! (0700), and lets the user read the settings through `dpkg-statoverride`; `postrm purge`
//! removes the state (store, key-encryption key, API keys), the overrides and the user.
//!
//! The check (root, CI): build, `dpkg-deb --info/--contents`, `lintian --fail-on error`,
//! `dpkg -i` (no systemd runs in CI: the scripts must not need it), then the installed
//! program started the way the unit starts it (as the service user, with the packaged
//! settings and `CODEREADER_STATE`, `--listen 127.0.0.1:0` as an override on the command
//! line), `/healthz` and one `/v1/verify` over loopback, SIGTERM; `dpkg -r` keeps the
//! conffile, `dpkg --purge` leaves no user, group, state or settings behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::deb::{Control, changelog, install, install_debian_files, seal};
use crate::{cargo, dpkg, ensure, ok, output, run};
use crate::{root, target_dir};

/// The package, its user and group, its directories.
const NAME: &str = "codereader-verifier";
const STATE: &str = "/var/lib/codereader-verifier";
const CONFIG_DIR: &str = "/etc/codereader-verifier";
const CONFIG: &str = "/etc/codereader-verifier/verifier.toml";

/// Runtime dependencies: the libraries `readelf -d` lists as NEEDED (libc, libm, libgcc_s:
/// rustls/ring, SQLite and the PostgreSQL client are linked in), and `passwd` for useradd.
const DEPENDS: &str = "libc6 (>= 2.34), libgcc-s1 (>= 4.2), passwd";

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// How `dpkg-deb` compresses: xz for a release; gzip -1 for `deb-check`, which installs
/// the package once and throws it away (xz takes 10 s of a debug build's 18 MB, gzip 0.2 s).
#[derive(Clone, Copy)]
pub(crate) enum Compression {
    Release,
    Quick,
}

/// Builds `codereader-verifier_<version>_<arch>.deb` in `out_dir` from `binary`; returns its
/// path.
pub(crate) fn build(
    binary: &Path,
    arch: &str,
    strip: &str,
    epoch: &str,
    out_dir: &Path,
    compression: Compression,
) -> Result<PathBuf, String> {
    let version = crate::VERSION.to_owned();
    let stage = out_dir.join(format!("deb-{NAME}-{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(io(&stage))?;
    }
    let server = root().join("crates/server");
    let packaging = server.join("packaging");
    let doc = stage.join(format!("usr/share/doc/{NAME}"));
    let program = stage.join(format!("usr/bin/{NAME}"));
    install(binary, &program, 0o755)?;
    run(
        "stripping the verifier",
        Command::new(strip).arg("--strip-unneeded").arg(&program),
    )?;
    for (from, to, mode) in [
        (
            packaging.join(format!("{NAME}.service")),
            stage.join(format!("lib/systemd/system/{NAME}.service")),
            0o644,
        ),
        (
            packaging.join("verifier.toml"),
            stage.join(CONFIG.trim_start_matches('/')),
            0o644,
        ),
        (server.join("README.md"), doc.join("README.md"), 0o644),
    ] {
        install(&from, &to, mode)?;
    }
    install_debian_files(&packaging, &stage, &doc)?;
    changelog(&doc, NAME, &version, epoch)?;

    let file = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    seal(
        &stage,
        &Control {
            package: NAME,
            version: &version,
            arch,
            depends: DEPENDS,
            section: "net",
            description: "verifier service for codereader one-time-code tokens\n \
                          An HTTP service that checks the one-time codes (TOTP and HOTP) of the\n \
                          tokens enrolled in it, once each, with lockout and per-client failure\n \
                          budgets, and the operators' commands to enrol, import (PSKC), audit and\n \
                          rotate keys. It runs as a hardened system service on SQLite or on a shared\n \
                          PostgreSQL, with its settings in /etc/codereader-verifier/verifier.toml.\n",
            conffiles: &[CONFIG],
        },
        match compression {
            Compression::Release => &["-Zxz"],
            Compression::Quick => &["-Zgzip", "-z1"],
        },
        &file,
        epoch,
    )?;
    Ok(file)
}

/// `deb-check`'s part for the verifier (root; the device's part has checked that).
pub(crate) fn check() -> Result<(), String> {
    dpkg::refuse_if_installed(NAME, "its tokens")?;
    run(
        "building codereader-verifier (debug)",
        cargo().args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "codereader-verifier-server",
            "--bin",
            NAME,
        ]),
    )?;
    let work = target_dir().join("deb-check-verifier");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io(&work))?;
    }
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let started = Instant::now();
    let file = build(
        &target_dir().join(format!("debug/{NAME}")),
        crate::deb::debian_arch(std::env::consts::ARCH)?,
        "strip",
        "1767225600",
        &work,
        Compression::Quick,
    )?;
    dpkg::inspect(&file, &EXPECTED)?;
    dpkg::purge_after(install_and_serve(&file), NAME, &[CONFIG_DIR, STATE])?;
    ensure(!dpkg::getent("group", NAME), || {
        "purge left the group".to_owned()
    })?;
    let overrides = output(Command::new("dpkg-statoverride").arg("--list"))?;
    ensure(
        !String::from_utf8_lossy(&overrides.stdout).contains(CONFIG_DIR),
        || "purge left a dpkg-statoverride".to_owned(),
    )?;
    println!(
        "xtask: deb-check of the verifier passed in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        file.display()
    );
    Ok(())
}

/// What the verifier's package must hold.
const EXPECTED: dpkg::Expected<'static> = dpkg::Expected {
    package: NAME,
    info: &[
        "Package: codereader-verifier",
        "Depends: libc6",
        "passwd",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ],
    conffile: CONFIG,
    files: &[
        ("./usr/bin/codereader-verifier", "-rwxr-xr-x root/root"),
        (
            "./etc/codereader-verifier/verifier.toml",
            "-rw-r--r-- root/root",
        ),
        (
            "./lib/systemd/system/codereader-verifier.service",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/doc/codereader-verifier/copyright",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/doc/codereader-verifier/changelog.gz",
            "-rw-r--r-- root/root",
        ),
    ],
};

/// `stat -c '%a %U %G'` of `path`.
fn owner_and_mode(path: &str) -> Result<String, String> {
    ok(
        &format!("stat {path}"),
        &output(Command::new("stat").args(["-c", "%a %U %G", path]))?,
    )
    .map(|s| s.trim().to_owned())
}

/// The installed program as the service user, with nothing of this environment but what the
/// unit sets (`setpriv` execs it: signals reach the program itself).
fn as_service(args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            NAME,
            "--regid",
            NAME,
            "--init-groups",
            "--",
            "/usr/bin/codereader-verifier",
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CODEREADER_STATE", STATE)
        .current_dir("/");
    command
}

/// Installs the package, checks what `postinst` did, serves with the packaged settings,
/// then removes the package (keeping the conffile).
fn install_and_serve(file: &Path) -> Result<(), String> {
    dpkg::install(file)?;
    ensure(dpkg::getent("passwd", NAME), || format!("no user {NAME}"))?;
    for (path, want) in [
        (STATE, format!("700 {NAME} {NAME}")),
        (CONFIG_DIR, format!("750 root {NAME}")),
        (CONFIG, format!("640 root {NAME}")),
    ] {
        let have = owner_and_mode(path)?;
        ensure(have == want, || {
            format!("{path} is `{have}`, expected `{want}`")
        })?;
    }
    let created = ok(
        "api-key create (as the service user)",
        &output(&mut as_service(&["api-key", "create", "--scope", "verify"]))?,
    )?;
    let key = created
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    serve_and_ask(&key)?;
    dpkg::remove(NAME, "/usr/bin/codereader-verifier", CONFIG)
}

/// `serve --config` the packaged settings (the port from the command line, as
/// CODEREADER_VERIFIER_ARGS would give it), asks `/healthz` and `/v1/verify` over loopback,
/// then stops it with SIGTERM.
fn serve_and_ask(key: &str) -> Result<(), String> {
    let mut child = as_service(&["serve", "--config", CONFIG, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the installed verifier: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("codereader-verifier: listening on http://") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let asked = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => ask(&addr, key),
        Err(_) => Err("the installed verifier did not start listening in 30 s".to_owned()),
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the installed verifier ignored SIGTERM for 30 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    asked.map_err(|e| format!("{e}\n{log}"))?;
    ensure(status.success() && log.contains("stopped"), || {
        format!("the installed verifier did not stop cleanly ({status}):\n{log}")
    })
}

/// One HTTP/1.1 exchange on loopback; the status line and the body.
fn http(addr: &str, request: &str) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(answer)
}

/// `/healthz` answers 200; a verification of an unknown token with the key created as the
/// service user answers 200 "unknown" (the store in the state directory works).
fn ask(addr: &str, key: &str) -> Result<(), String> {
    let health = http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )?;
    ensure(health.starts_with("HTTP/1.1 200"), || {
        format!("GET /healthz: {health}")
    })?;
    let body = r#"{"token":"deb-check","code":"123456"}"#;
    let verify = http(
        addr,
        &format!(
            "POST /v1/verify HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )?;
    ensure(
        verify.starts_with("HTTP/1.1 200") && verify.contains(r#""result":"unknown""#),
        || format!("POST /v1/verify: {verify}"),
    )?;
    println!("xtask: the installed verifier answered /healthz and /v1/verify on {addr}");
    Ok(())
}
