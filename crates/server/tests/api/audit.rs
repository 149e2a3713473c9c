//! Reading the audit trail: `GET /v1/tokens/{serial}/audit` (admin scope, newest first,
//! paged by cursor) and `token audit` (one token, or every line since a time as JSON lines
//! for a SIEM). Never a code or a secret.

use serde_json::Value;

use crate::common::{Server, base32, hotp, run_cli};

const SEED: &[u8] = b"12345678901234567890";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_over_http_and_cli() {
    let server = Server::start(None);
    let c = server.client();
    let (verify, admin) = (&server.verify_key, &server.admin_key);
    assert_eq!(c.add_hotp(admin, "AUD-1", SEED).await.status, 201);
    let good = hotp(SEED, 0, 6);
    let wrong = if good == "000000" { "111111" } else { "000000" };
    assert_eq!(
        c.verify(verify, "AUD-1", &good).await.str("result"),
        "accepted"
    );
    assert_eq!(
        c.verify(verify, "AUD-1", wrong).await.str("result"),
        "rejected"
    );
    assert_eq!(
        c.verify(verify, "AUD-1", &good).await.str("result"),
        "replayed"
    );

    let r = c.get("/v1/tokens/AUD-1/audit", Some(admin)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let entries = r.body["entries"].as_array().unwrap();
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("verify", "replayed"),
            ("verify", "rejected"),
            ("verify", "accepted"),
            ("enroll", "1 token(s)")
        ]
    );
    assert!(r.body["next"].is_null());
    for e in entries {
        assert!(e["at"].as_u64().unwrap() > 1_700_000_000);
        assert!(e["caller"].as_str().unwrap().starts_with("api:key-"), "{e}");
        assert_eq!(e["token"], "AUD-1");
    }
    let text = r.body.to_string();
    for secret in [good.as_str(), wrong, &base32(SEED)] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    // Pages of two, following `next`: the same lines, none twice.
    let first = c.get("/v1/tokens/AUD-1/audit?limit=2", Some(admin)).await;
    assert_eq!(first.body["entries"].as_array().unwrap().len(), 2);
    let next = first.str("next").to_owned();
    assert!(!next.is_empty(), "{:?}", first.body);
    let second = c
        .get(
            &format!("/v1/tokens/AUD-1/audit?limit=2&before={next}"),
            Some(admin),
        )
        .await;
    let mut paged: Vec<Value> = first.body["entries"].as_array().unwrap().clone();
    paged.extend(second.body["entries"].as_array().unwrap().iter().cloned());
    assert_eq!(&paged, entries);
    assert!(second.body["next"].is_null(), "{:?}", second.body);

    // Scopes, bad queries, unknown serials.
    let r = c.get("/v1/tokens/AUD-1/audit", Some(verify)).await;
    assert_eq!((r.status, r.str("error")), (403, "forbidden"));
    assert_eq!(c.get("/v1/tokens/AUD-1/audit", None).await.status, 401);
    for query in ["limit=0", "limit=5000", "before=abc", "code=123456"] {
        let r = c
            .get(&format!("/v1/tokens/AUD-1/audit?{query}"), Some(admin))
            .await;
        assert_eq!(
            (r.status, r.str("error")),
            (400, "invalid_request"),
            "{query}"
        );
        assert!(!r.body.to_string().contains("123456"));
    }
    let r = c.get("/v1/tokens/NOPE/audit", Some(admin)).await;
    assert_eq!((r.status, r.str("error")), (404, "unknown_token"));

    // The CLI: one token's latest lines, then every line since a time as JSON lines.
    let out = run_cli(
        &server.dir,
        &["token", "audit", "--serial", "AUD-1", "--limit", "3"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("\tAUD-1\tverify\treplayed\tapi:key-"),
        "{out}"
    );
    assert!(lines[2].contains("\tverify\taccepted\t"), "{out}");
    let out = run_cli(
        &server.dir,
        &["token", "audit", "--all", "--since", "2020-01-01", "--json"],
    );
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{out}");
    assert_eq!(events[0]["action"], "enroll");
    assert_eq!(events[3]["outcome"], "replayed");
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    assert!(!out.contains(&good) && !out.contains(&base32(SEED)));
    let out = run_cli(
        &server.dir,
        &["token", "audit", "--all", "--since", "2999-01-01", "--json"],
    );
    assert!(out.is_empty(), "{out}");
}
