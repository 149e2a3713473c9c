//! The PostgreSQL store under a server that hangs: each call ends at its deadline, a host
//! that does not answer is passed over, and store errors name the SQLSTATE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use codereader_verifier::store::Store;
use codereader_verifier::testing::TempPostgres;
use codereader_verifier::{PgStore, StoreError, TokenId};

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

    // Every process of the server: the postmaster and the backends it forked.
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
    let signal = |sig: &str| {
        let status = Command::new("kill").arg(sig).args(&pids).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };

    signal("-STOP");
    let started = Instant::now();
    let frozen = lookup(&store);
    let took = started.elapsed();
    signal("-CONT");
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
