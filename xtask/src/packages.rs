//! The Debian packages each task needs, and installing the missing ones.
//!
//! As root, missing packages are installed with `apt-get`; otherwise the exact
//! `sudo apt-get install ...` line is printed and the task stops, so nothing is left
//! half-installed behind the user's back.

use std::process::{Command, Stdio};

/// What `cargo xtask demo` needs.
pub(crate) const DEMO: &[&str] = &[];

/// What `cargo xtask test` (and so CI) needs.
pub(crate) const TEST: &[&str] = &[
    // otp: the independent implementation the cross-check runs.
    "oathtool",
    // verifier: the store tests start a real PostgreSQL (initdb into a temp dir).
    "postgresql",
    // server: the end-to-end tests send SIGTERM/SIGHUP to the server with kill(1).
    "procps",
];

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
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "missing Debian packages; install them with:\n  sudo apt-get install -y {list}"
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
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = apt(&args)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get install {list} failed ({status})"))
    }
}
