//! `serve --config FILE` through the real binary: the file's keys apply, a flag on the
//! command line wins, mistakes stop the start naming the key and line, and SIGHUP applies
//! what it can (the API-key file's path) and names what needs a restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{BIN, Server, run_cli};

/// Waits (up to 20 s) until a line of the server's log holds every part.
fn wait_line(server: &Server, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.stderr.lock().unwrap().clone();
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {parts:?} in the log: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A key with `scope` in the API-key file `file`.
fn key_in(state: &Path, file: &Path, scope: &str) -> String {
    let out = run_cli(
        state,
        &[
            "api-key",
            "create",
            "--scope",
            scope,
            "--api-keys",
            file.to_str().unwrap(),
        ],
    );
    out.split_whitespace().last().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_applies_and_the_command_line_wins() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("verifier.toml");
    // `listen` comes from the harness's command line; both keys below from the file.
    std::fs::write(
        &file,
        "# tiny bodies\nmax-body = 10\nunknown-as-rejected = true\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let body = json!({"token": "nobody", "code": "123456"});

    let from_file = Server::start_in(temp.path().join("a"), None, &["--config", config]);
    let r = from_file
        .client()
        .post("/v1/verify", &from_file.verify_key, body.clone())
        .await;
    assert_eq!(r.status, 413, "max-body = 10 from the file: {:?}", r.body);

    let overridden = Server::start_in(
        temp.path().join("b"),
        None,
        &["--config", config, "--max-body", "65536"],
    );
    let r = overridden
        .client()
        .post("/v1/verify", &overridden.verify_key, body)
        .await;
    // The flag's 64 KiB let the body in; the file's unknown-as-rejected answered.
    assert_eq!(
        (r.status, r.str("result")),
        (200, "rejected"),
        "{:?}",
        r.body
    );
}

/// Starts `serve --config` on `text` and returns its exit code and log.
fn refused_start(text: &str) -> (Option<i32>, String, String) {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("verifier.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .env("CODEREADER_STATE", temp.path().join("state"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), log, file.display().to_string())
}

#[test]
fn unknown_keys_and_bad_values_stop_the_start() {
    let (code, log, file) = refused_start("max-body = 100\nmax-bodies = 100\n");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "{file}:2: unknown key `max-bodies`; not a flag of `serve`"
        )),
        "{log}"
    );
    let (code, log, file) = refused_start("max-body = 100\n\nclient-window-s = \"a minute\"\n");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "{file}:3: bad value for `client-window-s`: invalid value 'a minute'"
        )),
        "{log}"
    );
    let (code, log, _) = refused_start("unknown-as-rejected = \"yes\"\n");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(":1: bad value for `unknown-as-rejected`: a switch"),
        "{log}"
    );
    // Nothing was served.
    assert!(!log.contains("listening"), "{log}");
    // A flag the file's flag requires is missing: clap says which, and that the file counts.
    let (code, log, file) = refused_start("tls-cert = \"/nonexistent/chain.pem\"\n");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--tls-key"), "{log}");
    assert!(
        log.contains(&format!("together with the settings in {file}")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_api_key_path_and_names_restart_keys() {
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state");
    let (first, second) = (temp.path().join("keys-1"), temp.path().join("keys-2"));
    let first_key = key_in(&state, &first, "admin");
    let second_key = key_in(&state, &second, "admin");
    let second_verify = key_in(&state, &second, "verify");
    let file = temp.path().join("verifier.toml");
    let write = |keys: &Path, max_body: u32| {
        let text = format!("api-keys = \"{}\"\nmax-body = {max_body}\n", keys.display());
        std::fs::write(&file, text).unwrap();
    };
    write(&first, 65536);
    let server = Server::start_in(state, None, &["--config", file.to_str().unwrap()]);
    let c = server.client();
    assert_eq!(c.get("/v1/tokens", Some(&first_key)).await.status, 200);
    assert_eq!(c.get("/v1/tokens", Some(&second_key)).await.status, 401);

    write(&second, 1000);
    server.signal("HUP");
    wait_line(&server, &["reloaded settings from", "applied `api-keys`"]);
    let restart = wait_line(&server, &["SIGHUP", "`max-body`", "restart"]);
    assert!(!restart.contains("api-keys"), "{restart}");
    wait_line(&server, &["reloaded 2 API key(s) from", "keys-2"]);
    assert_eq!(c.get("/v1/tokens", Some(&second_key)).await.status, 200);
    assert_eq!(c.get("/v1/tokens", Some(&first_key)).await.status, 401);
    // max-body kept its starting value: a 2000-byte body is still let in (a 1000-byte
    // limit would answer 413).
    let big = json!({"token": "nobody", "code": "123456", "client": "x".repeat(2000)});
    let r = c.post("/v1/verify", &second_verify, big).await;
    assert_ne!(r.status, 413, "{:?}", r.body);
    assert_ne!(r.status, 401, "{:?}", r.body);

    // A file that no longer parses keeps everything as it was.
    std::fs::write(&file, "api-keys = \n").unwrap();
    server.signal("HUP");
    wait_line(&server, &["keeping the old settings", "not TOML"]);
    assert_eq!(c.get("/v1/tokens", Some(&second_key)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_settings_file_starts_a_server() {
    // The Debian package's conffile, as shipped (the harness's `--listen` wins over its
    // 127.0.0.1:8080, as CODEREADER_VERIFIER_ARGS would).
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/verifier.toml");
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path().join("state"), None, &["--config", packaged]);
    let r = server.client().get("/healthz", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}
