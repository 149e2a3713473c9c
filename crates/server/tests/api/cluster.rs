//! Several `serve` processes on one PostgreSQL, as a deployment behind a load balancer runs
//! them: a code sent to all three at once is accepted exactly once, and a lock set through
//! one server is seen by the others (and lifted through another).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Barrier;

use codereader_verifier::testing::TempPostgres;

use crate::common::{Conn, Server, hotp};

const SEED: &[u8] = b"three servers, one database";
/// Requests per server in the race.
const EACH: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_postgres() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.url();
    // The same keyring on every server, each with its own API keys.
    let servers = Server::start_three(&url, &[]);
    let r = servers[0]
        .client()
        .add_hotp(&servers[0].admin_key, "CL-1", SEED)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // The same code to all three at once, many times each.
    let body = json!({"token": "CL-1", "code": hotp(SEED, 0, 6)});
    let mut conns = Vec::new();
    for server in &servers {
        for _ in 0..EACH {
            let conn = Conn::open(server.addr).await.unwrap();
            conns.push((conn, server.verify_key.clone(), server.addr));
        }
    }
    let barrier = Arc::new(Barrier::new(conns.len()));
    let mut tasks = Vec::new();
    for (mut conn, key, addr) in conns {
        let (barrier, body) = (barrier.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (addr, conn.post("/v1/verify", &key, &body).await.unwrap())
        }));
    }
    let mut accepted = Vec::new();
    let mut replayed = 0;
    for task in tasks {
        let (addr, r) = task.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        match r.str("result") {
            "accepted" => accepted.push(addr),
            "replayed" => replayed += 1,
            other => panic!("{other}: {:?}", r.body),
        }
    }
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(replayed, 3 * EACH - 1);

    // Three wrong codes through the second server lock the token for all of them.
    let wrong = ["000000", "111111", "222222"];
    assert!(
        wrong
            .iter()
            .all(|w| (1..30).all(|c| hotp(SEED, c, 6) != *w))
    );
    let b = servers[1].client();
    for w in wrong {
        let r = b.verify(&servers[1].verify_key, "CL-1", w).await;
        assert_eq!(r.str("result"), "rejected", "{:?}", r.body);
    }
    let next = hotp(SEED, 1, 6);
    for server in [&servers[0], &servers[2]] {
        let c = server.client();
        let r = c.verify(&server.verify_key, "CL-1", &next).await;
        assert_eq!(r.str("result"), "locked", "{:?}", r.body);
        let r = c.get("/v1/tokens/CL-1", Some(&server.admin_key)).await;
        assert_eq!(r.body["locked"], true, "{:?}", r.body);
    }
    // Unlocked through the third, the first accepts the next code.
    let c = servers[2].client();
    let r = c
        .post("/v1/tokens/CL-1/unlock", &servers[2].admin_key, json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = servers[0]
        .client()
        .verify(&servers[0].verify_key, "CL-1", &next)
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
}

/// The database goes away (a primary lost, before failover completes) and comes back: the
/// server answers 503 meanwhile, recovers by itself, and the code that could not be checked
/// during the outage is accepted once afterwards (nothing was used while the store was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_then_recovery() {
    let pg = TempPostgres::start().unwrap();
    let server = Server::start(Some(&pg.url()));
    let c = server.client();
    assert_eq!(
        c.add_hotp(&server.admin_key, "OUT-1", SEED).await.status,
        201
    );
    let code = hotp(SEED, 0, 6);

    pg.stop().unwrap();
    let r = c.verify(&server.verify_key, "OUT-1", &code).await;
    assert_eq!(
        (r.status, r.str("error")),
        (503, "store_unavailable"),
        "{:?}",
        r.body
    );
    assert_eq!(c.get("/healthz", None).await.status, 503);

    pg.restart().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = c.verify(&server.verify_key, "OUT-1", &code).await;
        if r.status != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
    let r = c.verify(&server.verify_key, "OUT-1", &code).await;
    assert_eq!(r.str("result"), "replayed", "{:?}", r.body);
    assert_eq!(c.get("/healthz", None).await.status, 200);
}

/// The per-client failure budget is one for the whole fleet on PostgreSQL: 20 failures
/// spread over three servers spend it, and then every server answers 429 (each in-memory
/// budget would have allowed 20 per server, 60 in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_failure_budget_per_client() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.url();
    // 20 per 10 minutes: no unit comes back while the test runs (one every 30 s).
    let budget = [
        "--client-failures",
        "20",
        "--client-window-s",
        "600",
        "--max-failures",
        "1000",
    ];
    let servers = Server::start_three(&url, &budget);
    let r = servers[0]
        .client()
        .add_hotp(&servers[0].admin_key, "BUD-1", SEED)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Codes that are certainly wrong for this token, one per failure.
    let good: Vec<String> = (0..1030).map(|c| hotp(SEED, c, 6)).collect();
    let wrong: Vec<String> = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .filter(|w| !good.contains(w))
        .take(23)
        .collect();
    let attacker = "203.0.113.7";
    for (i, w) in wrong[..20].iter().enumerate() {
        let s = &servers[i % 3];
        let r = s
            .client()
            .verify_from(&s.verify_key, "BUD-1", w, attacker)
            .await;
        assert_eq!(
            (r.status, r.str("result")),
            (200, "rejected"),
            "{i}: {:?}",
            r.body
        );
    }
    for (s, w) in servers.iter().zip(&wrong[20..]) {
        let r = s
            .client()
            .verify_from(&s.verify_key, "BUD-1", w, attacker)
            .await;
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert_eq!(r.str("error"), "rate_limited", "{:?}", r.body);
        assert!(r.retry_after.is_some());
    }
    // Even the right code is not checked for that client now; another client is untouched.
    let s = &servers[1];
    let r = s
        .client()
        .verify_from(&s.verify_key, "BUD-1", &good[0], attacker)
        .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let r = s
        .client()
        .verify_from(&s.verify_key, "BUD-1", &good[0], "198.51.100.1")
        .await;
    assert_eq!(r.str("result"), "accepted", "{:?}", r.body);
}
