//! The key-encryption key inside a PKCS#11 module, through the real binary and a real
//! SoftHSM2 token that `softhsm2-util` makes in a temporary directory: `serve --kek
//! pkcs11:...`, rotation file -> module -> file while a server runs and across restarts,
//! seeds the old key file no longer opens, a wrong PIN refused clearly, and a module that
//! goes away and comes back under a running server.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process and the servers inherit this process's
//! environment, so each test runs its body again in a child process that has it set
//! (`SoftHsm::run_test_in_child`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use codereader_verifier::softhsm::{CHILD_ENV, SoftHsm};
use common::{BIN, Server, hotp};

const SEED: &[u8] = b"12345678901234567890";
const PIN: &str = "hsm-user-pin-2718";
const TOKEN: &str = "codereader";

/// In the parent: a fresh SoftHSM token store with token `codereader` and a PIN file, then
/// this test again in a child. In the child: the store's directory.
fn child_or_run(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return Some(PathBuf::from(dir));
    }
    let hsm = SoftHsm::new().unwrap();
    hsm.init_token(TOKEN, PIN).unwrap();
    std::fs::write(hsm.dir().join("pin"), format!("{PIN}\n")).unwrap();
    let (passed, output) = hsm.run_test_in_child(name).unwrap();
    assert!(passed, "the child failed:\n{output}");
    None
}

/// `--pkcs11-module M --pkcs11-pin-file P` for the token store in `hsm_dir`.
fn module_args(hsm_dir: &Path) -> Vec<String> {
    vec![
        "--pkcs11-module".into(),
        SoftHsm::module().unwrap().display().to_string(),
        "--pkcs11-pin-file".into(),
        hsm_dir.join("pin").display().to_string(),
    ]
}

/// Runs the binary; returns whether it succeeded, stdout and stderr.
fn cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CODEREADER_STATE", state)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `token ...` command with the module options; panics on failure.
fn token_cli(state: &Path, hsm_dir: &Path, args: &[&str]) -> String {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.extend(module_args(hsm_dir));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (ok, out, err) = cli(state, &all);
    assert!(ok, "{args:?} failed: {err}");
    out
}

fn wait_line(server: &Server, parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.stderr.lock().unwrap().clone();
        if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return;
        }
        assert!(Instant::now() < deadline, "no {parts:?} in the log: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_file_to_module_and_back_while_serving() {
    let Some(hsm_dir) = child_or_run("rotation_file_to_module_and_back_while_serving") else {
        return;
    };
    let module = module_args(&hsm_dir);
    let module: Vec<&str> = module.iter().map(String::as_str).collect();
    let mut server = Server::start_with(None, &module);
    let dir = server.dir.clone();
    let c = server.client();
    let (verify, admin) = (server.verify_key.clone(), server.admin_key.clone());
    assert_eq!(c.add_hotp(&admin, "HSM-1", SEED).await.status, 201);
    let mut counter = 0;
    macro_rules! accepted {
        ($client:expr, $serial:expr) => {{
            let r = $client
                .verify(&verify, $serial, &hotp(SEED, counter, 6))
                .await;
            assert_eq!(r.str("result"), "accepted", "{} {:?}", r.status, r.body);
            #[allow(unused_assignments)]
            {
                counter += 1;
            }
        }};
    }
    accepted!(c, "HSM-1");
    let kek = dir.join("kek");
    let file_key_copy = dir.join("kek-before-the-module");
    std::fs::copy(&kek, &file_key_copy).unwrap();

    // File -> module: the key is created in the token, the keyring file names it, every
    // seed is re-sealed inside the module. The running server follows by itself.
    let uri = format!("pkcs11:token={TOKEN};object=codereader-kek");
    let out = token_cli(&dir, &hsm_dir, &["token", "rotate-kek", "--new-kek", &uri]);
    assert!(out.contains("re-encrypted 1 seed(s) under hsm-"), "{out}");
    let hsm_id = out
        .split_whitespace()
        .find(|w| w.starts_with("hsm-"))
        .unwrap();
    let hsm_id = hsm_id.trim_end_matches(',').to_owned();
    accepted!(c, "HSM-1");
    wait_line(&server, &["re-read the keyring", &hsm_id]);
    // New seeds are sealed in the module too.
    assert_eq!(c.add_hotp(&admin, "HSM-2", SEED).await.status, 201);
    let shown = token_cli(&dir, &hsm_dir, &["token", "show", "HSM-2"]);
    assert!(shown.contains(&format!("key        {hsm_id}")), "{shown}");

    // Once the old key is pruned, no key material is left on disk.
    token_cli(&dir, &hsm_dir, &["token", "prune-kek"]);
    let lines = key_lines(&kek);
    assert_eq!(lines, vec![format!("current {hsm_id} {uri}")]);

    // The sealed seeds no longer open with the file key they were under before.
    let copy = file_key_copy.display().to_string();
    let (ok, out, _) = cli(&dir, &["token", "rotate-kek", "--kek-file", &copy]);
    assert!(!ok);
    assert!(
        out.contains("cannot open the seed of HSM-1") && out.contains(&hsm_id),
        "{out}"
    );

    // Restart with the same command line: the module key opens the seeds.
    assert_eq!(server.terminate().code(), Some(0));
    server.spawn();
    let c = server.client();
    accepted!(c, "HSM-1");
    accepted!(c, "HSM-2");

    // Module key -> another module key, in the order for several servers: stage (every
    // server learns to open it), SIGHUP, then use.
    let uri2 = format!("pkcs11:token={TOKEN};object=codereader-kek-2");
    let out = token_cli(
        &dir,
        &hsm_dir,
        &["token", "rotate-kek", "--stage", "--new-kek", &uri2],
    );
    let staged = out.split_whitespace().nth(2).unwrap().to_owned();
    assert!(staged.starts_with("hsm-") && staged != hsm_id, "{out}");
    server.signal("HUP");
    wait_line(&server, &["reloaded the keyring", "also opens", &staged]);
    let out = token_cli(&dir, &hsm_dir, &["token", "rotate-kek", "--use", &staged]);
    assert!(
        out.contains(&format!("re-encrypted 2 seed(s) under {staged}")),
        "{out}"
    );
    server.signal("HUP");
    wait_line(
        &server,
        &[&format!("reloaded the keyring: current {staged}")],
    );
    accepted!(c, "HSM-1");

    // Module -> file: a new file key becomes current, the seeds leave the module. The
    // server meets the new key in a seed and re-reads its keyring: the first such re-read
    // since the restart above (every key since came with a SIGHUP), so its once-a-second
    // limit on these re-reads cannot hold it back.
    let out = token_cli(&dir, &hsm_dir, &["token", "rotate-kek"]);
    assert!(out.contains("re-encrypted 2 seed(s) under kek-"), "{out}");
    accepted!(c, "HSM-2");
    token_cli(&dir, &hsm_dir, &["token", "prune-kek"]);
    let lines = key_lines(&kek);
    assert!(
        lines.len() == 1 && lines[0].starts_with("current ") && !lines[0].contains("pkcs11:"),
        "{lines:?}"
    );
    // A restart without any module option works: nothing needs the module any more.
    assert_eq!(server.terminate().code(), Some(0));
    let (ok, out, err) = cli(&dir, &["token", "list"]);
    assert!(
        ok && out.contains("HSM-1") && out.contains("HSM-2"),
        "{err}"
    );
    server.spawn();
    accepted!(server.client(), "HSM-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_key_in_the_module_and_refuse_a_wrong_pin() {
    let Some(hsm_dir) = child_or_run("serve_with_the_key_in_the_module_and_refuse_a_wrong_pin")
    else {
        return;
    };
    let uri = format!("pkcs11:token={TOKEN};object=serving-kek");
    let mut args = vec!["--kek".to_owned(), uri.clone()];
    args.extend(module_args(&hsm_dir));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_with(None, &args);
    let dir = server.dir.clone();
    let c = server.client();
    let (verify, admin) = (server.verify_key.clone(), server.admin_key.clone());
    assert_eq!(c.add_hotp(&admin, "SRV-1", SEED).await.status, 201);
    let r = c.verify(&verify, "SRV-1", &hotp(SEED, 0, 6)).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    assert!(!dir.join("kek").exists(), "no key file is made");
    let health = c.get("/healthz", None).await;
    assert_eq!((health.status, health.str("status")), (200, "ok"));
    assert_eq!(server.terminate().code(), Some(0));

    // A wrong PIN: refused at start, named, the PIN never echoed.
    std::fs::write(hsm_dir.join("wrong-pin"), "not-the-pin-31415\n").unwrap();
    let wrong = hsm_dir.join("wrong-pin").display().to_string();
    let module = SoftHsm::module().unwrap().display().to_string();
    let base = ["token", "list", "--kek", &uri, "--pkcs11-module", &module];
    let (ok, _, err) = cli(&dir, &[&base[..], &["--pkcs11-pin-file", &wrong]].concat());
    assert!(!ok);
    assert!(
        err.contains("PKCS#11 token \"codereader\": wrong PIN"),
        "{err}"
    );
    assert!(!err.contains("31415") && !err.contains(PIN), "{err}");
    // No such token, no module, no PIN: each named.
    let pin = hsm_dir.join("pin").display().to_string();
    let (ok, _, err) = cli(
        &dir,
        &[
            "token",
            "list",
            "--kek",
            "pkcs11:token=absent;object=k",
            "--pkcs11-module",
            &module,
            "--pkcs11-pin-file",
            &pin,
        ],
    );
    assert!(!ok && err.contains("no token labelled \"absent\""), "{err}");
    let (ok, _, err) = cli(
        &dir,
        &[
            "token",
            "list",
            "--kek",
            &uri,
            "--pkcs11-module",
            "/nonexistent/pkcs11.so",
            "--pkcs11-pin-file",
            &pin,
        ],
    );
    assert!(
        !ok && err.contains("/nonexistent/pkcs11.so: no such file"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &dir,
        &["token", "list", "--kek", &uri, "--pkcs11-module", &module],
    );
    assert!(!ok && err.contains("PKCS#11 PIN: none given"), "{err}");
    // A PIN on the command line is refused.
    let (ok, _, err) = cli(
        &dir,
        &[
            "token",
            "list",
            "--kek",
            &format!("{uri}?pin-value=1234"),
            "--pkcs11-module",
            &module,
        ],
    );
    assert!(
        !ok && err.contains("pin-value") && !err.contains("1234"),
        "{err}"
    );
    // Rotation needs the keyring file.
    let (ok, _, err) = cli(
        &dir,
        &[
            &["token", "rotate-kek", "--kek", &uri][..],
            &["--pkcs11-module", &module, "--pkcs11-pin-file", &pin],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("--kek names no file"), "{err}");

    // The right PIN again: the seeds open after a restart.
    server.spawn();
    let r = server
        .client()
        .verify(&verify, "SRV-1", &hotp(SEED, 1, 6))
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    let metrics = server.client().metrics().await;
    assert_eq!(metric(&metrics, "codereader_key_unavailable_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_lost_and_back_without_a_restart() {
    let Some(hsm_dir) = child_or_run("module_lost_and_back_without_a_restart") else {
        return;
    };
    let live_pin = hsm_dir.join("pin-live");
    std::fs::copy(hsm_dir.join("pin"), &live_pin).unwrap();
    let uri = format!("pkcs11:token={TOKEN};object=failing-kek");
    let module = SoftHsm::module().unwrap().display().to_string();
    let live = live_pin.display().to_string();
    let server = Server::start_with(
        None,
        &[
            "--kek",
            &uri,
            "--pkcs11-module",
            &module,
            "--pkcs11-pin-file",
            &live,
        ],
    );
    let c = server.client();
    let (verify, admin) = (server.verify_key.clone(), server.admin_key.clone());
    assert_eq!(c.add_hotp(&admin, "FAIL-1", SEED).await.status, 201);
    let r = c.verify(&verify, "FAIL-1", &hotp(SEED, 0, 6)).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);

    // The token goes away (its directory is moved off) and the PIN file is spoiled.
    let tokens = hsm_dir.join("tokens");
    let away = hsm_dir.join("tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::write(&live_pin, "wrong-pin-000\n").unwrap();
    // Every request is refused with 503, none with 500, and nothing is decided.
    let code = hotp(SEED, 1, 6);
    let replies = futures_join(&c, &verify, "FAIL-1", &code, 20).await;
    for r in &replies {
        assert_eq!(
            (r.status, r.str("error")),
            (503, "store_unavailable"),
            "{:?}",
            r.body
        );
    }
    let metrics = c.metrics().await;
    assert!(
        metric(&metrics, "codereader_key_unavailable_total") >= 20,
        "{metrics}"
    );
    let health = c.get("/healthz", None).await;
    assert_eq!(health.status, 503, "{:?}", health.body);
    wait_line(&server, &["lost its module", "reconnecting"]);

    // The token is back but the PIN file is wrong: still 503, and the log says why.
    std::fs::rename(&away, &tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.verify(&verify, "FAIL-1", &code).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        let log = server.stderr.lock().unwrap().clone();
        if log.contains("cannot reconnect: PKCS#11 token \"codereader\": wrong PIN") {
            assert!(!log.contains("wrong-pin-000"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The PIN file is fixed: the server reconnects by itself, and the code that was refused
    // meanwhile is still good.
    std::fs::copy(hsm_dir.join("pin"), &live_pin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.verify(&verify, "FAIL-1", &code).await;
        if r.status == 200 {
            assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
            break;
        }
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_line(&server, &["reconnected"]);
    let health = c.get("/healthz", None).await;
    assert_eq!((health.status, health.str("status")), (200, "ok"));
}

/// `n` verifications of the same code at once.
async fn futures_join(
    c: &common::Client,
    key: &str,
    serial: &str,
    code: &str,
    n: usize,
) -> Vec<common::Reply> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, key, serial, code) = (*c, key.to_owned(), serial.to_owned(), code.to_owned());
        tasks.push(tokio::spawn(
            async move { c.verify(&key, &serial, &code).await },
        ));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}
