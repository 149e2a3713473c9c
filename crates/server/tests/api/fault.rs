//! Crash safety: `kill -9` the server while verifications run, restart it on the same
//! store, and check that no code answered "accepted" before the kill is accepted after it,
//! and that no failure answered "rejected" before the kill was lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codereader_verifier::testing::TempPostgres;

use crate::common::{Conn, Server, hotp, wrong_hotp};

const GOOD_TOKENS: usize = 16;
const BAD_TOKENS: usize = 64;

fn seed(i: usize) -> Vec<u8> {
    format!("fault-test-seed-{i:08}").into_bytes()
}

async fn crash_during_load(mut server: Server) {
    let c = server.client();
    for i in 0..GOOD_TOKENS + BAD_TOKENS {
        let r = c
            .add_hotp(&server.admin_key, &format!("F-{i}"), &seed(i))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    // Answers received before the kill.
    let accepted = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    let rejected = Arc::new(Mutex::new(BTreeMap::<usize, u64>::new()));
    let mut tasks = Vec::new();
    for i in 0..GOOD_TOKENS {
        let (addr, key, accepted) = (server.addr, server.verify_key.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                return;
            };
            for counter in 0..10_000u64 {
                let code = hotp(&seed(i), counter, 6);
                match conn.verify(&key, &format!("F-{i}"), &code).await {
                    Ok(r) if r.str("result") == "accepted" => {
                        accepted.lock().unwrap().push((i, counter));
                    }
                    Ok(r) => panic!("token {i} counter {counter}: {:?}", r.body),
                    Err(_) => return, // the server died
                }
            }
        }));
    }
    for i in GOOD_TOKENS..GOOD_TOKENS + BAD_TOKENS {
        let (addr, key, rejected) = (server.addr, server.verify_key.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                return;
            };
            // Two wrong codes per token at most, paced, so the kill lands between them for some
            // tokens; a third would lock the token and hide later failures.
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(5 * (i as u64 % 40))).await;
                match conn
                    .verify(&key, &format!("F-{i}"), &wrong_hotp(&seed(i)))
                    .await
                {
                    Ok(r) if r.str("result") == "rejected" => {
                        *rejected.lock().unwrap().entry(i).or_default() += 1;
                    }
                    Ok(r) => panic!("token {i}: {:?}", r.body),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once the load is well under way (bounded: at most 10 s of load).
    let started = std::time::Instant::now();
    while accepted.lock().unwrap().len() < 60 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let rejected = rejected.lock().unwrap().clone();
    assert!(
        accepted.len() >= GOOD_TOKENS,
        "too little load before the kill: {}",
        accepted.len()
    );
    assert!(
        !rejected.is_empty(),
        "no failure was answered before the kill"
    );

    server.spawn();
    let mut conn = Conn::open(server.addr).await.unwrap();
    let mut last = BTreeMap::<usize, u64>::new();
    for &(i, counter) in &accepted {
        let entry = last.entry(i).or_default();
        *entry = (*entry).max(counter);
    }
    for (&i, &counter) in &last {
        // The stored state has moved past every counter answered "accepted"...
        let r = conn
            .get(&format!("/v1/tokens/F-{i}"), Some(&server.admin_key))
            .await
            .unwrap();
        let next = r.body["next"].as_u64().unwrap();
        assert!(
            next > counter,
            "token F-{i}: counter {counter} was accepted, next is {next}"
        );
        // ...and the last one is recognised as used, if it is the last one stored (a later
        // code may have been committed with its answer lost in the kill: then it is simply
        // not accepted, checked below).
        if next == counter + 1 {
            let code = hotp(&seed(i), counter, 6);
            let r = conn
                .verify(&server.verify_key, &format!("F-{i}"), &code)
                .await
                .unwrap();
            assert_eq!(
                r.str("result"),
                "replayed",
                "token F-{i} counter {counter}: {:?}",
                r.body
            );
        }
    }
    // No accepted code is accepted again (older HOTP codes count as failures and may lock the
    // token; what matters is that none is "accepted").
    for &(i, counter) in &accepted {
        let code = hotp(&seed(i), counter, 6);
        let r = conn
            .verify(&server.verify_key, &format!("F-{i}"), &code)
            .await
            .unwrap();
        assert_ne!(
            r.str("result"),
            "accepted",
            "token F-{i} counter {counter} was accepted before the kill and again after"
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for i in GOOD_TOKENS..GOOD_TOKENS + BAD_TOKENS {
        let r = conn
            .get(&format!("/v1/tokens/F-{i}"), Some(&server.admin_key))
            .await
            .unwrap();
        let failures = r.body["failures"].as_u64().unwrap();
        let answered = rejected.get(&i).copied().unwrap_or(0);
        // At least every answered failure; at most the two sent (one may have been committed
        // without its answer getting out).
        assert!(
            (answered..=2).contains(&failures),
            "token F-{i}: {answered} failures answered, {failures} stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_nothing_sqlite() {
    crash_during_load(Server::start(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_nothing_postgres() {
    let pg = TempPostgres::start().unwrap();
    crash_during_load(Server::start(Some(&pg.url()))).await;
}
