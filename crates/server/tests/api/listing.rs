//! Tokens over HTTP and the small CLI fixes: `GET /v1/tokens` paged by serial, `replayed`
//! naming its token, `token import --allow-short-secret`, no dangling colon after
//! "imported 0 token(s)", and `token add` showing the account its URI names.

use std::process::Command;

use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Secret};
use serde_json::Value;

use crate::common::{BIN, Server, base32, hotp, run_cli};

const SEED: &[u8] = b"12345678901234567890";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_listing_replays_and_cli_fixes() {
    let server = Server::start(None);
    let c = server.client();
    let (verify, admin) = (&server.verify_key, &server.admin_key);
    for serial in ["T-3", "T-1", "SN 6", "T-2", "T-5", "T-4"] {
        assert_eq!(c.add_hotp(admin, serial, SEED).await.status, 201);
    }

    // Pages of two, following `next` (percent-encoded as `after`): every token once, in
    // serial order.
    let mut seen = Vec::new();
    let mut path = "/v1/tokens?limit=2".to_owned();
    loop {
        let r = c.get(&path, Some(admin)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let tokens = r.body["tokens"].as_array().unwrap();
        assert!(tokens.len() <= 2);
        seen.extend(
            tokens
                .iter()
                .map(|t| t["serial"].as_str().unwrap().to_owned()),
        );
        assert!(
            tokens
                .iter()
                .all(|t| t.get("secret").is_none() && t["kind"] == "hotp")
        );
        match r.body["next"].as_str() {
            Some(next) => path = format!("/v1/tokens?limit=2&after={}", next.replace(' ', "%20")),
            None => break,
        }
    }
    assert_eq!(seen, ["SN 6", "T-1", "T-2", "T-3", "T-4", "T-5"]);
    let all = c.get("/v1/tokens", Some(admin)).await;
    assert_eq!(all.body["tokens"].as_array().unwrap().len(), 6);
    assert!(all.body["next"].is_null());
    let r = c.get("/v1/tokens", Some(verify)).await;
    assert_eq!((r.status, r.str("error")), (403, "forbidden"));
    let r = c.get("/v1/tokens?limit=0", Some(admin)).await;
    assert_eq!((r.status, r.str("error")), (400, "invalid_request"));

    // A replay names its token, by serial and by user.
    let code = hotp(SEED, 0, 6);
    assert_eq!(
        c.verify(verify, "T-1", &code).await.str("result"),
        "accepted"
    );
    let r = c.verify(verify, "T-1", &code).await;
    assert_eq!(
        (r.str("result"), r.str("token")),
        ("replayed", "T-1"),
        "{:?}",
        r.body
    );
    let r = c.activate(admin, "T-2", "bob", &code).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    let r = c.verify_user(verify, "bob", &code).await;
    assert_eq!(
        (r.str("result"), r.str("token")),
        ("replayed", "T-2"),
        "{:?}",
        r.body
    );

    // RFC 6030's figure 2 has a 32-bit secret: refused, with the way to accept it, and no
    // dangling colon; accepted with --allow-short-secret, and its codes verify.
    let figure2 = format!(
        "{}/../otp/tests/data/pskc/rfc6030-figure2.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(BIN)
        .args(["token", "import", "--pskc", &figure2])
        .env("CODEREADER_STATE", &server.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("imported 0 token(s)\n"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-short-secret"), "{stderr}");
    let out = run_cli(
        &server.dir,
        &[
            "token",
            "import",
            "--pskc",
            &figure2,
            "--allow-short-secret",
        ],
    );
    assert!(out.contains("imported 1 token(s): 12345678"), "{out}");
    let short = Secret::new(b"1234".to_vec(), KeyPolicy::AllowLegacyShort).unwrap();
    let code = Hotp::new(&short, Algorithm::Sha1, Digits::SIX).code(Counter(0));
    let r = c.verify(verify, "12345678", code.as_str()).await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);

    // `token add` of Bank:alice says whose account the URI names (binding is activation's).
    let uri = format!(
        "otpauth://totp/Bank:alice?secret={}&issuer=Bank",
        base32(SEED)
    );
    let out = run_cli(
        &server.dir,
        &["token", "add", "--serial", "ADD-1", "--uri", &uri],
    );
    assert!(out.contains("account    alice at Bank"), "{out}");
    let r = c.get("/v1/tokens/ADD-1", Some(admin)).await;
    assert_eq!(r.body["user"], Value::Null);
}
