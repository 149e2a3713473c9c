//! The offline commands: `token add|import|list|show|unlock|disable|rotate-kek` and
//! `api-key create`, then a server on the same state proving the store and keys work.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{BIN, Server, base32, hotp, run_cli};

const SEED: &[u8] = b"12345678901234567890";

/// Runs the binary with `stdin`; returns its whole output, success or not.
fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("CODEREADER_STATE", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_then_serve_after_kek_rotation() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("state");
    let secret = base32(SEED);
    let uri = format!("otpauth://hotp/Bank:dave?secret={secret}&counter=0");

    // The URI comes from stdin, so the secret is not in the process list. The state
    // directory and the KEK are created on first use, and the command says where.
    let out = run(
        &dir,
        &["token", "add", "--serial", "CLI-1", "--uri", "-"],
        &uri,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kek = dir.join("kek");
    assert!(
        text(&out.stderr).contains(&kek.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kek).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!text(&out.stdout).contains(&secret) && !text(&out.stderr).contains(&secret));

    // The same serial again: refused, with a clear message and a failing exit status.
    let out = run(
        &dir,
        &["token", "add", "--serial", "CLI-1", "--uri", "-"],
        &uri,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    // A bad URI: refused, nothing stored.
    let out = run(
        &dir,
        &["token", "add", "--serial", "CLI-2", "--uri", "-"],
        "otpauth://hotp/x?secret=!!",
    );
    assert!(!out.status.success());

    let fig3 = format!(
        "{}/tests/data/rfc6030-figure3.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run_cli(&dir, &["token", "import", "--pskc", &fig3]);
    assert!(out.contains("imported 1 token(s): 987654321"), "{out}");

    let list = run_cli(&dir, &["token", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("987654321\thotp\t-\tunassigned"),
        "{list}"
    );
    assert!(lines[1].starts_with("CLI-1\thotp\t-\tunassigned"), "{list}");

    let show = run_cli(&dir, &["token", "show", "CLI-1"]);
    assert!(show.contains("serial     CLI-1"), "{show}");
    let key_line = |show: &str| {
        show.lines()
            .find(|l| l.starts_with("key "))
            .unwrap()
            .to_owned()
    };
    let old_key = key_line(&show);
    assert!(!show.contains(&secret));

    // Rotate to a new KEK (created on the spot): every seed is re-sealed under it.
    let kek2 = dir.join("kek2");
    let out = run_cli(
        &dir,
        &[
            "token",
            "rotate-kek",
            "--new-kek-file",
            &kek2.display().to_string(),
        ],
    );
    assert!(out.contains("re-encrypted 2 seed(s)"), "{out}");
    let show = run_cli(
        &dir,
        &[
            "token",
            "show",
            "CLI-1",
            "--kek-file",
            &kek2.display().to_string(),
        ],
    );
    assert_ne!(key_line(&show), old_key, "{show}");

    // A server with only the new key opens the re-sealed seeds.
    let mut server = Server::start_in(
        dir.clone(),
        None,
        &["--kek-file", &kek2.display().to_string()],
    );
    let c = server.client();
    let r = c
        .verify(&server.verify_key, "CLI-1", &hotp(SEED, 0, 6))
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    assert_eq!(server.terminate().code(), Some(0));

    // Offline disable and unlock; unknown serials fail cleanly.
    let kek2 = kek2.display().to_string();
    let out = run_cli(&dir, &["token", "disable", "CLI-1", "--kek-file", &kek2]);
    assert!(out.contains("disabled CLI-1"), "{out}");
    let show = run_cli(&dir, &["token", "show", "CLI-1", "--kek-file", &kek2]);
    assert!(show.contains("status     disabled"), "{show}");
    let out = run_cli(&dir, &["token", "unlock", "987654321", "--kek-file", &kek2]);
    assert!(out.contains("unlocked 987654321"), "{out}");
    let out = run(&dir, &["token", "unlock", "nope", "--kek-file", &kek2], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no token nope"),
        "{}",
        text(&out.stderr)
    );

    // A key-encryption key readable by others is refused, naming the file; so is an
    // unknown database scheme. Nothing starts half-configured.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = dir.join("kek-loose");
        std::fs::copy(dir.join("kek2"), &loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = loose.display().to_string();
        let out = run(&dir, &["token", "list", "--kek-file", &loose], "");
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(&loose), "{}", text(&out.stderr));
    }
    let out = run(&dir, &["token", "list", "--db", "mysql://x/y"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown database"),
        "{}",
        text(&out.stderr)
    );

    // api-key create: the key is the last word, and only its hash is in the file.
    let out = run_cli(
        &dir,
        &["api-key", "create", "--scope", "admin", "--name", "ops"],
    );
    let key = out.split_whitespace().last().unwrap();
    assert!(key.starts_with("crv_") && key.len() == 68, "{out}");
    let file = std::fs::read_to_string(dir.join("api-keys")).unwrap();
    assert!(file.contains("admin ops ") && !file.contains(key), "{file}");
    let out = run(&dir, &["api-key", "create", "--scope", "root"], "");
    assert!(!out.status.success());
}
