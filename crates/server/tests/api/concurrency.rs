//! 500 concurrent HTTP requests carrying the same valid code: exactly one is accepted, on
//! the SQLite store and on a real PostgreSQL.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Barrier;

use codereader_verifier::testing::TempPostgres;

use crate::common::{Conn, Server, hotp};

const REQUESTS: usize = 500;
const SEED: &[u8] = b"concurrency test seed 0001";

async fn same_code_once(server: &Server) {
    let c = server.client();
    let r = c.add_hotp(&server.admin_key, "C-1", SEED).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let code = hotp(SEED, 0, 6);
    let body = json!({"token": "C-1", "code": code});
    // Open every connection first, then release all requests at once.
    let mut conns = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        conns.push(Conn::open(server.addr).await.unwrap());
    }
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for mut conn in conns {
        let barrier = barrier.clone();
        let body = body.clone();
        let key = server.verify_key.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            conn.post("/v1/verify", &key, &body).await.unwrap()
        }));
    }
    let mut results = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        *results.entry(r.str("result").to_owned()).or_default() += 1;
    }
    assert_eq!(results.get("accepted"), Some(&1), "{results:?}");
    assert_eq!(
        results.get("replayed"),
        Some(&(REQUESTS - 1)),
        "{results:?}"
    );
    // The losers were replays, not failures: the token is not locked.
    let r = c.get("/v1/tokens/C-1", Some(&server.admin_key)).await;
    assert_eq!(
        (&r.body["failures"], &r.body["next"]),
        (&json!(0), &json!(1)),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_code_500_times_at_once_sqlite() {
    let server = Server::start(None);
    same_code_once(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_code_500_times_at_once_postgres() {
    let pg = TempPostgres::start().unwrap();
    let server = Server::start(Some(&pg.url()));
    same_code_once(&server).await;
}
