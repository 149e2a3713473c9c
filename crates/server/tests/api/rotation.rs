//! Key-encryption key rotation while `serve` runs: the server follows the keyring file by
//! itself or on SIGHUP, a server whose keyring is behind says so (metric, one log line per
//! token, `/healthz` 503), and a restart with the same command line keeps working.

use std::time::{Duration, Instant};

use crate::common::{Server, hotp, run_cli};

const SEED: &[u8] = b"12345678901234567890";

/// Waits until the server's stderr has `times` lines that contain all of `parts`.
fn wait_line(server: &Server, parts: &[&str], times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.stderr.lock().unwrap().clone();
        let lines = log
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count();
        if lines >= times {
            return;
        }
        assert!(Instant::now() < deadline, "no {parts:?} in the log: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seal_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("codereader_seal_errors_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_serving_and_after_restart() {
    let mut server = Server::start(None);
    let dir = server.dir.clone();
    let c = server.client();
    let (verify, admin) = (server.verify_key.clone(), server.admin_key.clone());
    assert_eq!(c.add_hotp(&admin, "ROT-1", SEED).await.status, 201);
    let counter = std::cell::Cell::new(0);
    let check = async |expect: &str| {
        let r = c
            .verify(&verify, "ROT-1", &hotp(SEED, counter.get(), 6))
            .await;
        assert_eq!(r.str("result"), expect, "{} {:?}", r.status, r.body);
        counter.set(counter.get() + 1);
    };
    check("accepted").await;

    // One step: a new current key in the file `serve` was started with, every seed
    // re-sealed. No signal: the server re-reads the file when it meets the new key.
    let out = run_cli(&dir, &["token", "rotate-kek"]);
    assert!(out.contains("re-encrypted 1 seed(s)"), "{out}");
    check("accepted").await;
    wait_line(&server, &["re-read the keyring"], 1);

    // Several servers: stage, reload, use, reload. SIGHUP reloads the keyring.
    let out = run_cli(&dir, &["token", "rotate-kek", "--stage"]);
    let staged = out.split_whitespace().nth(2).unwrap().to_owned();
    assert!(staged.starts_with("kek-"), "{out}");
    server.signal("HUP");
    wait_line(&server, &["reloaded the keyring", "also opens", &staged], 1);
    let out = run_cli(&dir, &["token", "rotate-kek", "--use", &staged]);
    assert!(out.contains(&format!("under {staged}")), "{out}");
    server.signal("HUP");
    wait_line(
        &server,
        &[&format!("reloaded the keyring: current {staged}")],
        1,
    );
    check("accepted").await;
    let health = c.get("/healthz", None).await;
    assert_eq!((health.status, health.str("status")), (200, "ok"));

    // A server whose keyring is behind: the seeds are re-sealed with a copy of the keyring
    // the server does not read. Every verification fails loudly, not silently: 500, counted,
    // logged once for the token, and /healthz says degraded with 503.
    let kek = dir.join("kek");
    let elsewhere = dir.join("kek-elsewhere");
    std::fs::copy(&kek, &elsewhere).unwrap();
    let elsewhere = elsewhere.display().to_string();
    run_cli(&dir, &["token", "rotate-kek", "--kek-file", &elsewhere]);
    let before = seal_errors(&c.metrics().await);
    for _ in 0..3 {
        let r = c
            .verify(&verify, "ROT-1", &hotp(SEED, counter.get(), 6))
            .await;
        assert_eq!(r.status, 500, "{:?}", r.body);
        assert!(
            r.str("message").contains("not in the keyring"),
            "{:?}",
            r.body
        );
    }
    assert_eq!(seal_errors(&c.metrics().await), before + 3);
    let health = c.get("/healthz", None).await;
    assert_eq!((health.status, health.str("status")), (503, "degraded"));
    assert_eq!(health.body["seal_errors"]["missing_key"], 3);
    wait_line(
        &server,
        &["ROT-1 is sealed under key", "SIGHUP reloads it"],
        1,
    );
    let log = server.stderr.lock().unwrap().clone();
    assert_eq!(log.matches("ROT-1 is sealed under key").count(), 1, "{log}");

    // The operator copies the keyring over and sends SIGHUP: healthy again, the code that
    // failed is still good (nothing was used or counted).
    std::fs::copy(&elsewhere, &kek).unwrap();
    server.signal("HUP");
    wait_line(&server, &["reloaded the keyring"], 3);
    let health = c.get("/healthz", None).await;
    assert_eq!((health.status, health.str("status")), (200, "ok"));
    check("accepted").await;

    // Restart with the very same command line.
    assert_eq!(server.terminate().code(), Some(0));
    server.spawn();
    let c = server.client();
    let r = c
        .verify(&verify, "ROT-1", &hotp(SEED, counter.get(), 6))
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    counter.set(counter.get() + 1);

    // After the rotation, the older keys can go; a restart still works with one key.
    let out = run_cli(&dir, &["token", "prune-kek"]);
    assert!(out.contains("removed 3 key(s)"), "{out}");
    let text = std::fs::read_to_string(&kek).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{text}"
    );
    assert_eq!(server.terminate().code(), Some(0));
    server.spawn();
    let r = server
        .client()
        .verify(&verify, "ROT-1", &hotp(SEED, counter.get(), 6))
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
}
