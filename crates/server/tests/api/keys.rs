//! API keys over their life: created with an expiry, listed without secrets, revoked and
//! expired keys refused by a running server after SIGHUP.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{BIN, Client, Server, run_cli};

/// Polls until a verification with `key` answers `status` (the server reloads its keys on
/// SIGHUP asynchronously); returns the last reply's message.
async fn wait_status(c: &Client, key: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.verify(key, "NOBODY", "123456").await;
        if r.status == status {
            return r.str("message").to_owned();
        }
        assert!(Instant::now() < deadline, "still {} {:?}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_revoked_and_expire() {
    let server = Server::start(None);
    let dir = &server.dir;
    let c = server.client();
    let out = run_cli(
        dir,
        &[
            "api-key",
            "create",
            "--scope",
            "verify",
            "--name",
            "backend-2",
            "--expires",
            "2999-01-01",
        ],
    );
    let second = out.split_whitespace().last().unwrap().to_owned();
    let out = run_cli(
        dir,
        &[
            "api-key",
            "create",
            "--scope",
            "verify",
            "--name",
            "short",
            "--expires",
            "2999-01-01",
        ],
    );
    let short = out.split_whitespace().last().unwrap().to_owned();
    server.signal("HUP");
    wait_status(&c, &second, 200).await;
    wait_status(&c, &short, 200).await;

    // The list names every key with its scope and dates, and never shows a key or a hash.
    let list = run_cli(dir, &["api-key", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[2].starts_with("backend-2\tverify\tcreated 20")
            && lines[2].ends_with("expires 2999-01-01T00:00:00Z"),
        "{list}"
    );
    assert!(lines[0].contains("\texpires never"), "{list}");
    let file = std::fs::read_to_string(dir.join("api-keys")).unwrap();
    for key in [&second, &short, &server.verify_key, &server.admin_key] {
        assert!(
            !list.contains(key.as_str()) && !list.contains(&key[4..]),
            "{list}"
        );
    }
    for line in file.lines().filter(|l| !l.starts_with('#')) {
        let hash = line.split_whitespace().nth(2).unwrap();
        assert!(!list.contains(hash), "{list}");
    }

    // Revoked: refused after SIGHUP; the other keys keep working.
    let out = run_cli(dir, &["api-key", "revoke", "--name", "backend-2"]);
    assert!(out.contains("revoked API key 'backend-2'"), "{out}");
    server.signal("HUP");
    assert_eq!(wait_status(&c, &second, 401).await, "unknown API key");
    assert_eq!(
        c.verify(&server.verify_key, "NOBODY", "123456")
            .await
            .status,
        200
    );
    assert!(!run_cli(dir, &["api-key", "list"]).contains("backend-2"));

    // Expired: the file says so (as it will once the date passes); refused with its reason.
    let file = std::fs::read_to_string(dir.join("api-keys")).unwrap();
    let aged = file.replace("expires=32472144000", "expires=1000");
    assert_ne!(aged, file);
    std::fs::write(dir.join("api-keys"), aged).unwrap();
    server.signal("HUP");
    assert_eq!(
        wait_status(&c, &short, 401).await,
        "the API key has expired"
    );
    assert!(run_cli(dir, &["api-key", "list"]).contains("short\tverify\tcreated"));
    assert!(run_cli(dir, &["api-key", "list"]).contains("\texpired"));

    // Mistakes fail cleanly.
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("CODEREADER_STATE", dir)
            .output()
            .unwrap()
    };
    let out = run(&["api-key", "revoke", "--name", "backend-2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key named 'backend-2'"));
    let out = run(&[
        "api-key",
        "create",
        "--scope",
        "verify",
        "--expires",
        "2000-01-01",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the future"));
}
