//! Exactly once under contention: 64 simultaneous verifications of the same valid code give
//! exactly one acceptance, across threads with separate connections, across processes
//! (SQLite), and against a real PostgreSQL; and 64 simultaneous wrong codes lose no failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use codereader_otp::Code;
use codereader_verifier::testing::TempPostgres;
use codereader_verifier::{
    AuditAction, AuditOutcome, Outcome, OwnedSubject, Policy, Store, Subject, TokenId, open_store,
};
use common::*;

const ATTEMPTS: usize = 64;

/// Runs `ATTEMPTS` verifications of `code` at once, each thread with its own store (its own
/// connection), and returns the outcome labels.
fn race(open: &(dyn Fn() -> Box<dyn Store> + Sync), token: &TokenId, code: Code) -> Vec<String> {
    let barrier = Barrier::new(ATTEMPTS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ATTEMPTS)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let v = verifier(open(), Policy::default().with_max_failures(1000));
                    barrier.wait();
                    v.verify(Subject::Token(token), &code, NOW, &caller())
                        .unwrap()
                        .label()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn count(labels: &[String], label: &str) -> usize {
    labels.iter().filter(|l| *l == label).count()
}

/// The shared checks for one store address.
fn exactly_once(address: &str) {
    let open = || open_store(address).unwrap();
    let v = verifier(open(), Policy::default().with_max_failures(1000));
    let token = enroll(&v, "RACE", 1, totp_params(), 0);
    let labels = race(&open, &token, code(1, step(NOW)));
    assert_eq!(count(&labels, "accepted"), 1, "{labels:?}");
    assert_eq!(count(&labels, "replayed"), ATTEMPTS - 1, "{labels:?}");

    // Wrong codes at once: every one is counted (no lost increments).
    let wrong = enroll(&v, "WRONG", 2, totp_params(), 0);
    let labels = race(&open, &wrong, wrong_code(2, step(NOW)));
    assert_eq!(count(&labels, "rejected"), ATTEMPTS, "{labels:?}");
    let state = v.show(Subject::Token(&wrong)).unwrap().unwrap().state;
    assert_eq!(state.failures, ATTEMPTS as u32);

    // With the default lock at 3, exactly 3 failures are counted and the rest see the lock.
    let strict = verifier(open(), Policy::default());
    let locked = enroll(&strict, "LOCK", 3, totp_params(), 0);
    let barrier = Barrier::new(ATTEMPTS);
    let bad = wrong_code(3, step(NOW));
    let labels: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ATTEMPTS)
            .map(|_| {
                let (barrier, locked) = (&barrier, &locked);
                scope.spawn(move || {
                    let v = verifier(open(), Policy::default());
                    barrier.wait();
                    v.verify(Subject::Token(locked), &bad, NOW, &caller())
                        .unwrap()
                        .label()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The third failure is the one that locks ("rejected-locked": no attempts left).
    assert_eq!(count(&labels, "rejected"), 2, "{labels:?}");
    assert_eq!(count(&labels, "rejected-locked"), 1, "{labels:?}");
    assert_eq!(count(&labels, "locked"), ATTEMPTS - 3, "{labels:?}");
    assert_eq!(
        strict
            .show(Subject::Token(&locked))
            .unwrap()
            .unwrap()
            .state
            .failures,
        3
    );
}

/// 64 threads sharing one verifier (one connection pool, and for SQLite one writer that
/// commits racing writes together in one transaction): still exactly one acceptance.
fn exactly_once_shared(address: &str) {
    let v = Arc::new(verifier(open_store(address).unwrap(), Policy::default()));
    let token = enroll(&v, "SHARED", 4, totp_params(), 0);
    let barrier = Barrier::new(ATTEMPTS);
    let c = code(4, step(NOW));
    let labels: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..ATTEMPTS)
            .map(|_| {
                let (v, barrier, token) = (&v, &barrier, &token);
                scope.spawn(move || {
                    barrier.wait();
                    v.verify(Subject::Token(token), &c, NOW, &caller())
                        .unwrap()
                        .label()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(count(&labels, "accepted"), 1, "{labels:?}");
    assert_eq!(count(&labels, "replayed"), ATTEMPTS - 1, "{labels:?}");
    // Every attempt is in the audit trail: one acceptance, the rest replays.
    let trail = v.audit_trail(&token, 1000).unwrap();
    let accepted = trail
        .iter()
        .filter(|e| e.outcome == AuditOutcome::Accepted)
        .count();
    let replayed = trail
        .iter()
        .filter(|e| e.outcome == AuditOutcome::Replayed)
        .count();
    assert_eq!((accepted, replayed), (1, ATTEMPTS - 1));
}

/// Half the callers submit their verification as one unit of work ([`Verifier::verify_then`],
/// what the HTTP server does: on SQLite it runs on the writer thread) and half call
/// [`Verifier::verify`]; the same code still wins exactly once, and wrong codes lock at
/// exactly 3.
fn exactly_once_submitted(address: &str) {
    let v = Arc::new(verifier(open_store(address).unwrap(), Policy::default()));
    let run = |token: &TokenId, c: Code| -> Vec<String> {
        let barrier = Barrier::new(ATTEMPTS);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..ATTEMPTS)
                .map(|i| {
                    let (v, barrier) = (&v, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let outcome = if i % 2 == 0 {
                            let (tx, rx) = std::sync::mpsc::channel();
                            v.verify_then(
                                OwnedSubject::Token(token.clone()),
                                c,
                                NOW,
                                caller(),
                                move |r| tx.send(r).unwrap(),
                            );
                            rx.recv().unwrap()
                        } else {
                            v.verify(Subject::Token(token), &c, NOW, &caller())
                        };
                        outcome.unwrap().label().to_owned()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let token = enroll(&v, "SUBMIT", 5, totp_params(), 0);
    let labels = run(&token, code(5, step(NOW)));
    assert_eq!(count(&labels, "accepted"), 1, "{labels:?}");
    assert_eq!(count(&labels, "replayed"), ATTEMPTS - 1, "{labels:?}");
    let locked = enroll(&v, "SUBMIT-LOCK", 6, totp_params(), 0);
    let labels = run(&locked, wrong_code(6, step(NOW)));
    assert_eq!(count(&labels, "rejected"), 2, "{labels:?}");
    assert_eq!(count(&labels, "rejected-locked"), 1, "{labels:?}");
    assert_eq!(count(&labels, "locked"), ATTEMPTS - 3, "{labels:?}");
    let trail = v.audit_trail(&token, 1000).unwrap();
    assert_eq!(
        trail
            .iter()
            .filter(|e| e.action == AuditAction::Verify)
            .count(),
        ATTEMPTS,
        "every attempt is audited once"
    );
}

#[test]
fn sqlite_submitted_and_direct_calls_mixed() {
    let dir = tempfile::tempdir().unwrap();
    exactly_once_submitted(&format!(
        "sqlite:{}",
        dir.path().join("submitted.db").display()
    ));
}

#[test]
fn postgres_submitted_and_direct_calls_mixed() {
    let pg = TempPostgres::start().unwrap();
    exactly_once_submitted(&pg.create_database("submitted").unwrap());
}

#[test]
fn sqlite_threads_sharing_one_store() {
    let dir = tempfile::tempdir().unwrap();
    exactly_once_shared(&format!(
        "sqlite:{}",
        dir.path().join("shared.db").display()
    ));
}

#[test]
fn postgres_threads_sharing_one_store() {
    let pg = TempPostgres::start().unwrap();
    exactly_once_shared(&pg.create_database("shared").unwrap());
}

#[test]
fn sqlite_threads_with_separate_connections() {
    let dir = tempfile::tempdir().unwrap();
    exactly_once(&format!("sqlite:{}", dir.path().join("race.db").display()));
}

#[test]
fn postgres_threads_with_separate_connections() {
    let pg = TempPostgres::start().unwrap();
    exactly_once(&pg.create_database("race").unwrap());
}

/// Set in the environment of the child processes of [`sqlite_separate_processes`].
const CHILD_ENV: &str = "CODEREADER_RACE_DIR";
const PROCESSES: usize = 16;

/// One test, two roles. Run normally it is the parent: it enrolls a token, starts
/// `PROCESSES` copies of this test binary running only this test, each racing
/// `ATTEMPTS / PROCESSES` threads on the same database file at one signal, and counts their
/// outcomes. Run with [`CHILD_ENV`] set, it is one of those children.
#[test]
fn sqlite_separate_processes() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.db");
    let address = format!("sqlite:{}", db.display());
    let v = verifier(open_store(&address).unwrap(), Policy::default());
    let token = enroll(&v, "RACE", 1, totp_params(), 0);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|n| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "sqlite_separate_processes",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env("CODEREADER_RACE_CHILD", n.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Start them together once all are ready (each leaves a file when it is).
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready_count(dir.path()) < PROCESSES {
        assert!(Instant::now() < deadline, "children did not get ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let mut labels = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        labels.extend(
            stdout
                .lines()
                // The harness may have printed "test ... " on the same line first.
                .filter_map(|l| l.split_once("OUTCOME ").map(|(_, o)| o.trim().to_owned())),
        );
    }
    assert_eq!(labels.len(), ATTEMPTS, "{labels:?}");
    assert_eq!(count(&labels, "accepted"), 1, "{labels:?}");
    assert_eq!(count(&labels, "replayed"), ATTEMPTS - 1, "{labels:?}");
    assert_eq!(
        v.verify(Subject::Token(&token), &code(1, step(NOW)), NOW, &caller())
            .unwrap(),
        Outcome::Replayed
    );
}

fn ready_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ready-"))
        })
        .count()
}

fn child(dir: &Path) {
    let n = std::env::var("CODEREADER_RACE_CHILD").unwrap();
    let address = format!("sqlite:{}", dir.join("race.db").display());
    let token = id("RACE");
    let per_process = ATTEMPTS / PROCESSES;
    let verifiers: Vec<_> = (0..per_process)
        .map(|_| Arc::new(verifier(open_store(&address).unwrap(), Policy::default())))
        .collect();
    std::fs::write(dir.join(format!("ready-{n}")), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("go").exists() {
        assert!(Instant::now() < deadline, "no go signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    let c = code(1, step(NOW));
    let handles: Vec<_> = verifiers
        .into_iter()
        .map(|v| {
            let token = token.clone();
            std::thread::spawn(move || {
                v.verify(Subject::Token(&token), &c, NOW, &caller())
                    .unwrap()
                    .label()
                    .to_owned()
            })
        })
        .collect();
    for h in handles {
        println!("OUTCOME {}", h.join().unwrap());
    }
}

/// Two servers on one PostgreSQL database, each deciding on its own copies of the rows it
/// last saw (one round trip per accepted verification): whatever the other changed since —
/// the counter, failures and the lock, the enabled flag, the seed itself — is found by the
/// one statement that would have accepted, and the verification is decided again on a fresh
/// read. Nothing is accepted twice or while locked or disabled, and every verification
/// leaves exactly one audit line.
#[test]
fn postgres_servers_deciding_on_stale_copies() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("copies").unwrap();
    let a = verifier(open_store(&url).unwrap(), Policy::default());
    let b = verifier(open_store(&url).unwrap(), Policy::default());
    let t = enroll(&a, "T", 1, hotp_params(), 0);
    let verify = |v: &codereader_verifier::Verifier, c: Code| {
        v.verify(Subject::Token(&t), &c, NOW, &caller())
            .unwrap()
            .label()
            .to_owned()
    };
    let mut verifies = 0;
    let mut check = |v: &codereader_verifier::Verifier, c: Code, want: &str| {
        verifies += 1;
        assert_eq!(verify(v, c), want, "verification {verifies}");
    };

    check(&a, code(1, 0), "accepted"); // a's copy: next 1
    check(&b, code(1, 1), "accepted"); // the row: next 2
    check(&a, code(1, 1), "replayed"); // a's copy still says 1 is fresh
    check(&a, code(1, 2), "accepted");
    check(&a, code(1, 3), "accepted"); // now from a's confirmed copy

    // b locks the token; a's copy says unlocked with no failures.
    for _ in 0..2 {
        check(&b, wrong_code(1, 4), "rejected");
    }
    check(&b, wrong_code(1, 4), "rejected-locked");
    check(&a, code(1, 4), "locked");
    b.unlock(&t, NOW, &caller()).unwrap();
    check(&a, code(1, 4), "accepted");

    // b disables it; a's copy says enabled.
    check(&a, code(1, 5), "accepted");
    b.set_enabled(&t, false, NOW, &caller()).unwrap();
    check(&a, code(1, 6), "disabled");
    b.set_enabled(&t, true, NOW, &caller()).unwrap();
    check(&a, code(1, 6), "accepted");
    check(&a, code(1, 7), "accepted");

    // b deletes it and enrolls another token under the same serial: a's copy holds the old
    // seed and counter, and its next code must not open the new token.
    b.delete(&t, NOW, &caller()).unwrap();
    enroll(&b, "T", 9, hotp_params(), 0);
    check(&a, code(1, 8), "rejected");
    check(&a, code(9, 0), "accepted");

    let lines = a.audit_trail(&t, 1000).unwrap();
    let verify_lines = lines
        .iter()
        .filter(|l| l.action == AuditAction::Verify)
        .count();
    assert_eq!(verify_lines, verifies, "{lines:?}");
    let accepted = lines
        .iter()
        .filter(|l| l.action == AuditAction::Verify && l.outcome == AuditOutcome::Accepted)
        .count();
    assert_eq!(accepted, 9, "{lines:?}");
}

/// Verifications of many tokens at once on PostgreSQL travel to the database together,
/// several in one statement (`pg_batch.rs`): every code is still accepted once and replayed
/// after, every attempt has its audit line, and activations that bind one user to two
/// tokens at once give that user exactly one of them.
#[test]
fn postgres_many_tokens_at_once() {
    const TOKENS: usize = 32;
    const ROUNDS: u64 = 6;
    let pg = TempPostgres::start().unwrap();
    let url = pg.create_database("many").unwrap();
    let v = Arc::new(verifier(open_store(&url).unwrap(), Policy::default()));
    let byte = |i: usize| 20 + i as u8;
    let tokens: Vec<TokenId> = (0..TOKENS)
        .map(|i| enroll(&v, &format!("MANY-{i}"), byte(i), totp_params(), 0))
        .collect();
    let barrier = Barrier::new(TOKENS);
    let labels: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let (v, barrier) = (&v, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut labels = Vec::new();
                    for round in 0..ROUNDS {
                        let now = codereader_otp::UnixTime(NOW.0 + 30 * round);
                        let c = code(byte(i), step(now));
                        // The code, then the same code again: a replay.
                        for _ in 0..2 {
                            let (tx, rx) = std::sync::mpsc::channel();
                            v.verify_then(
                                OwnedSubject::Token(token.clone()),
                                c,
                                now,
                                caller(),
                                move |r| tx.send(r).unwrap(),
                            );
                            labels.push(rx.recv().unwrap().unwrap().label().to_owned());
                        }
                    }
                    labels
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected: Vec<String> = (0..ROUNDS)
        .flat_map(|_| ["accepted".to_owned(), "replayed".to_owned()])
        .collect();
    for (token, got) in tokens.iter().zip(&labels) {
        assert_eq!(got, &expected, "{token}");
        let trail = v.audit_trail(token, 1000).unwrap();
        let verifies: Vec<_> = trail
            .iter()
            .filter(|e| e.action == AuditAction::Verify)
            .collect();
        let accepted = verifies
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Accepted)
            .count();
        assert_eq!(
            (verifies.len(), accepted),
            (2 * ROUNDS as usize, ROUNDS as usize)
        );
    }
    // Several acceptances committed in one transaction: their audit lines share an xmin.
    let psql = |sql: &str| -> String {
        let out = Command::new(pg.bin().join("psql"))
            .args([url.as_str(), "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (lines, transactions): (usize, usize) = {
        let row = psql(
            "SELECT count(*), count(DISTINCT xmin::TEXT) FROM audit
              WHERE action = 'verify' AND outcome = 'accepted'",
        );
        let (a, b) = row.split_once('|').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert_eq!(lines, TOKENS * ROUNDS as usize);
    assert!(
        transactions < lines,
        "no two acceptances shared a statement: {transactions}"
    );

    // Pairs of unbound tokens, each pair activated for one user at the same moment: one
    // activation of each pair binds, the other finds the user has a token.
    let pairs: Vec<(TokenId, TokenId, codereader_verifier::UserId)> = (0..8)
        .map(|p| {
            let a = enroll(&v, &format!("BIND-{p}-A"), byte(2 * p), totp_params(), 0);
            let b = enroll(
                &v,
                &format!("BIND-{p}-B"),
                byte(2 * p + 1),
                totp_params(),
                0,
            );
            (
                a,
                b,
                codereader_verifier::UserId::new(format!("user-{p}")).unwrap(),
            )
        })
        .collect();
    let barrier = Barrier::new(pairs.len() * 2);
    let bound: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .iter()
            .enumerate()
            .flat_map(|(p, (a, b, user))| [(2 * p, a, user), (2 * p + 1, b, user)])
            .map(|(i, token, user)| {
                let (v, barrier) = (&v, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    match v.activate(token, user, &code(byte(i), step(NOW)), NOW, &caller()) {
                        Ok(codereader_verifier::Activation::Activated(_)) => true,
                        Ok(codereader_verifier::Activation::UserHasToken) => false,
                        other => panic!("{token}: {other:?}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, pair) in bound.chunks(2).enumerate() {
        assert_eq!(pair.iter().filter(|b| **b).count(), 1, "pair {p}: {pair:?}");
    }
}

/// A pool of one connection, and racing verifications of one token among others: the rows
/// of one token wait for later batches, so a worker that led a batch may wait again for its
/// own, and must not keep the only connection meanwhile (the invariant is checked
/// deterministically by `pg_batch`'s unit test `a_worker_that_waits_again_holds_no_connection`;
/// here, on a real server). Every verification answers, and each code is accepted once.
#[test]
fn postgres_one_connection_and_racing_rows_of_one_token() {
    const RACERS: usize = 24;
    let pg = TempPostgres::start().unwrap();
    let store = codereader_verifier::PgStore::connect_with(&pg.url(), 1).unwrap();
    let v = Arc::new(verifier(Box::new(store), Policy::default()));
    let same = enroll(&v, "ONE-CONN", 60, totp_params(), 0);
    let others: Vec<TokenId> = (0..4)
        .map(|i| enroll(&v, &format!("ONE-CONN-{i}"), 61 + i as u8, totp_params(), 0))
        .collect();
    for t in others.iter().chain([&same]) {
        // Copies of the rows: the verifications' first statements are their acceptances.
        v.show(Subject::Token(t)).unwrap().unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..RACERS {
        let (v, tx) = (Arc::clone(&v), tx.clone());
        // The first four verify the other tokens, the rest all race on `same`.
        let (token, c) = match others.get(i) {
            Some(t) => (t.clone(), code(61 + i as u8, step(NOW))),
            None => (same.clone(), code(60, step(NOW))),
        };
        v.verify_then(OwnedSubject::Token(token), c, NOW, caller(), move |r| {
            tx.send(r.map(|o| o.label().to_owned())).unwrap();
        });
    }
    drop(tx);
    let labels: Vec<String> = (0..RACERS)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("a verification never answered")
                .unwrap()
        })
        .collect();
    assert_eq!(count(&labels, "accepted"), 5, "{labels:?}");
    assert_eq!(count(&labels, "replayed"), RACERS - 5, "{labels:?}");
}
