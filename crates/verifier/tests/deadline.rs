//! The PostgreSQL store under a server that hangs: each call ends at its deadline, a host
//! that does not answer is passed over, verifications waiting on one batch all answer
//! errors (never `accepted`), and store errors name the SQLSTATE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use codereader_verifier::store::Store;
use codereader_verifier::testing::TempPostgres;
use codereader_verifier::{
    AuditOutcome, Outcome, PgStore, Policy, StoreError, Subject, TokenId, VerifyError,
};

const DEADLINE: Duration = Duration::from_millis(700);

fn lookup(store: &dyn Store) -> Result<bool, StoreError> {
    let id = TokenId::new("NOPE-1").unwrap();
    store.reads(|r| r.token(&id)).map(|t| t.is_some())
}

/// A listener that never accepts: the kernel completes the TCP handshake, then nothing is
/// ever said, as with a frozen server.
fn black_hole() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

#[test]
fn a_host_that_never_answers_is_passed_over_within_the_deadline() {
    let pg = TempPostgres::start().unwrap();
    let hole = black_hole();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        hole.local_addr().unwrap().port(),
        pg.port()
    );
    let started = Instant::now();
    let store = PgStore::connect_with_deadline(&url, 2, DEADLINE).unwrap();
    let took = started.elapsed();
    assert!(
        took >= DEADLINE,
        "the black hole was not tried first: {took:?}"
    );
    assert!(took < DEADLINE * 4, "{took:?}");
    // The host that answered is tried first from now on: no call waits on the black hole.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(lookup(&store), Ok(false));
        assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    }
}

#[test]
fn a_frozen_server_fails_calls_at_the_deadline_and_is_used_again_once_it_thaws() {
    let pg = TempPostgres::start().unwrap();
    let store = PgStore::connect_with_deadline(&pg.url(), 2, DEADLINE).unwrap();
    assert_eq!(lookup(&store), Ok(false));

    let pids = server_pids(&pg);
    signal(&pids, "-STOP");
    let started = Instant::now();
    let frozen = lookup(&store);
    let took = started.elapsed();
    signal(&pids, "-CONT");
    match frozen {
        Err(StoreError::Database { reason, .. }) => {
            assert!(reason.contains("no answer within 700 ms"), "{reason}")
        }
        other => panic!("a frozen server answered {other:?}"),
    }
    assert!(took >= DEADLINE && took < DEADLINE * 3, "{took:?}");

    // Thawed: a new connection serves the next call.
    assert_eq!(lookup(&store), Ok(false));
}

#[test]
fn a_database_error_names_its_sqlstate_and_message() {
    let pg = TempPostgres::start().unwrap();
    let store = PgStore::connect_with_deadline(&pg.url(), 1, DEADLINE).unwrap();
    // Read-only, as a standby is: the next write fails with SQLSTATE 25006.
    Command::new("psql")
        .args([
            &pg.url(),
            "-c",
            "ALTER DATABASE postgres SET default_transaction_read_only = on",
        ])
        .output()
        .unwrap();
    let url = pg.url();
    let store_ro = PgStore::connect_with_deadline(&url, 1, DEADLINE).unwrap_err();
    drop(store);
    match store_ro {
        StoreError::Database { reason, .. } => {
            assert!(reason.starts_with("SQLSTATE 25006: "), "{reason}");
            assert!(reason.contains("read-only transaction"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// Verifications waiting for one batch when the server freezes (`pg_batch.rs`): every one
/// answers an error within a few deadlines, none `accepted`; once the server thaws, each
/// code is accepted at most once in all (a statement the frozen server had received may
/// still have committed, unseen, so the retry may find it used: replayed, never twice).
#[test]
fn verifications_batched_on_a_frozen_server_answer_errors_and_are_accepted_at_most_once() {
    const TOKENS: usize = 12;
    let pg = TempPostgres::start().unwrap();
    let store = PgStore::connect_with_deadline(&pg.url(), 2, DEADLINE).unwrap();
    let v = common::verifier(Box::new(store), Policy::default());
    let tokens: Vec<TokenId> = (0..TOKENS)
        .map(|i| {
            let t = common::enroll(
                &v,
                &format!("FROZEN-{i}"),
                40 + i as u8,
                common::totp_params(),
                0,
            );
            // A read leaves a copy of the row, so the verification below decides without the
            // database and its first statement is the batched acceptance.
            v.show(Subject::Token(&t)).unwrap().unwrap();
            t
        })
        .collect();
    let code = |i: usize| common::code(40 + i as u8, common::step(common::NOW));
    let verify_all = || -> Vec<Result<Outcome, VerifyError>> {
        let barrier = std::sync::Barrier::new(TOKENS);
        std::thread::scope(|scope| {
            let handles: Vec<_> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let (v, barrier) = (&v, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        v.verify(Subject::Token(t), &code(i), common::NOW, &common::caller())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };

    let pids = server_pids(&pg);
    signal(&pids, "-STOP");
    let started = Instant::now();
    let frozen = verify_all();
    let took = started.elapsed();
    signal(&pids, "-CONT");
    for result in &frozen {
        match result {
            Err(VerifyError::Store(StoreError::Database { .. })) => {}
            other => panic!("a verification on a frozen server answered {other:?}"),
        }
    }
    assert!(took < DEADLINE * 8, "{took:?}");

    // Thawed: each code once more, and each token's trail.
    let thawed = verify_all();
    for (i, (t, result)) in tokens.iter().zip(&thawed).enumerate() {
        match result {
            Ok(Outcome::Accepted(_)) | Ok(Outcome::Replayed) => {}
            other => panic!("token {i} after the thaw: {other:?}"),
        }
        let accepted = v
            .audit_trail(t, 100)
            .unwrap()
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Accepted)
            .count();
        assert!(accepted <= 1, "token {i}: {accepted} acceptances");
        let state = v.show(Subject::Token(t)).unwrap().unwrap().state;
        assert_eq!(state.next, common::step(common::NOW) + 1, "token {i}");
    }
}

/// Every process of the server: the postmaster and the backends it forked.
fn server_pids(pg: &TempPostgres) -> Vec<String> {
    let pid = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).unwrap();
    let postmaster = pid.lines().next().unwrap().trim().to_owned();
    let children = Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    pids.push(postmaster);
    pids
}

fn signal(pids: &[String], sig: &str) {
    let status = Command::new("kill").arg(sig).args(pids).status().unwrap();
    assert!(status.success(), "kill {sig}");
}
