//! The PostgreSQL test harness cleans up after itself, even after a run that was killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use codereader_verifier::testing::TempPostgres;

const CHILD_ENV: &str = "CODEREADER_HARNESS_CHILD";

/// One test, two roles (see `concurrency.rs`): the child starts a server and exits without
/// dropping it, like a killed test run; the parent then starts its own server, which must stop
/// and remove the orphan.
#[test]
fn orphaned_servers_are_swept_and_dropped_ones_removed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let pg = TempPostgres::start().unwrap();
        println!("ORPHAN {}", pg.dir().display());
        // Leave without running Drop, as a SIGKILL would.
        std::process::exit(0);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphaned_servers_are_swept_and_dropped_ones_removed",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let orphan = stdout
        .lines()
        .find_map(|l| l.split_once("ORPHAN ").map(|(_, d)| d.trim().to_owned()))
        .unwrap_or_else(|| panic!("child printed no directory: {stdout}"));
    let orphan = std::path::PathBuf::from(orphan);
    assert!(orphan.join("data/postmaster.pid").exists());

    let pg = TempPostgres::start().unwrap();
    assert!(!orphan.exists(), "the orphan was not removed");
    let needle = orphan.display().to_string();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(
        running.is_empty(),
        "the orphan server still runs: {running:?}"
    );

    let mine = pg.dir().to_path_buf();
    let url = pg.url();
    postgres::Client::connect(&url, postgres::NoTls).unwrap();
    drop(pg);
    assert!(!mine.exists());
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
}
