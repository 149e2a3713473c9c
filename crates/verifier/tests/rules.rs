//! Every rule of the verifier, run against each store: memory, SQLite, and a real PostgreSQL.
//!
//! A rule is a function of a factory that makes a verifier with a fresh, empty store and a
//! given policy; every rule runs on all three stores (one test each, see
//! `rules_on_every_store!`), so the SQL stores are held to the exact behaviour of the
//! reference in-memory one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use codereader_otp::pskc::PreSharedKey;
use codereader_otp::{Code, Counter, KeyPolicy, KeyUri, TimeStep, UnixTime};
use codereader_verifier::testing::TempPostgres;
use codereader_verifier::{
    Activation, AuditAction as A, AuditOutcome as O, DeadLetter, Delivery, EventKind, FailureDelay,
    Kek, KeyId, Keyring, Matched, MemoryStore, NoticeAction, Outcome, Policy, SqliteStore, Subject,
    UserId, Verifier, open_store,
};
use common::*;

type Factory<'a> = &'a dyn Fn(Policy) -> Verifier;

fn accepted(o: &Outcome) -> (Matched, i64) {
    match o {
        Outcome::Accepted(a) => (a.matched(), a.drift()),
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn verify(v: &Verifier, token: &codereader_verifier::TokenId, c: &Code, now: UnixTime) -> Outcome {
    v.verify(Subject::Token(token), c, now, &caller()).unwrap()
}

fn failures(v: &Verifier, token: &codereader_verifier::TokenId) -> u32 {
    v.show(Subject::Token(token))
        .unwrap()
        .unwrap()
        .state
        .failures
}

fn totp_window_edges(make: Factory<'_>) {
    let v = make(Policy::default());
    let s = step(NOW);
    for (name, offset, want) in [
        ("minus2", -2i64, None),
        ("minus1", -1, Some(-1)),
        ("zero", 0, Some(0)),
        ("plus1", 1, Some(1)),
        ("plus2", 2, None),
    ] {
        let t = enroll(&v, name, 1, totp_params(), 0);
        let value = s.checked_add_signed(offset).unwrap();
        let outcome = verify(&v, &t, &code(1, value), NOW);
        match want {
            Some(drift) => {
                assert_eq!(
                    accepted(&outcome),
                    (Matched::Step(TimeStep(value)), drift),
                    "{name}"
                );
            }
            None => assert_eq!(outcome, Outcome::Rejected { attempts_left: 2 }, "{name}"),
        }
    }
    // A wider window is the operator's choice.
    let wide = make(Policy::default().with_totp_window(2));
    let t = enroll(&wide, "wide", 1, totp_params(), 0);
    assert_eq!(accepted(&verify(&wide, &t, &code(1, s + 2), NOW)).1, 2);
}

fn totp_replay_of_same_and_earlier_step(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "T", 1, totp_params(), 0);
    let s = step(NOW);
    accepted(&verify(&v, &t, &code(1, s), NOW));
    assert_eq!(verify(&v, &t, &code(1, s), NOW), Outcome::Replayed);
    // An earlier step, still inside the window, is never accepted after a later one.
    assert_eq!(verify(&v, &t, &code(1, s - 1), NOW), Outcome::Replayed);
    // Even 29 s later, when the same step is still current.
    assert_eq!(
        verify(&v, &t, &code(1, s), UnixTime(NOW.0 + 19)),
        Outcome::Replayed
    );
    // Replays are refused but are not counted as guesses.
    assert_eq!(failures(&v, &t), 0);
    // The next step is fine.
    accepted(&verify(&v, &t, &code(1, s + 1), UnixTime(NOW.0 + 30)));
}

fn totp_drift_followed_across_many_logins(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "T", 1, totp_params(), 0);
    // The token's clock gains one step every three logins, 60 logins over a year; with a ±1
    // window only drift centring keeps it working.
    let mut now = NOW;
    for login in 0..60u64 {
        let ahead = login / 3;
        let value = step(now) + ahead;
        let (matched, drift) = accepted(&verify(&v, &t, &code(1, value), now));
        assert_eq!(matched, Matched::Step(TimeStep(value)), "login {login}");
        assert_eq!(drift, ahead as i64, "login {login}");
        now = UnixTime(now.0 + 6 * 86_400 + 7);
    }
    assert_eq!(v.show(Subject::Token(&t)).unwrap().unwrap().state.drift, 19);
    // The window is centred on the drift: a code from the server's own current step is now
    // far outside it.
    assert_eq!(
        verify(&v, &t, &code(1, step(now)), now),
        Outcome::Rejected { attempts_left: 2 }
    );
}

fn hotp_look_ahead_edges(make: Factory<'_>) {
    let v = make(Policy::default());
    let a = enroll(&v, "A", 2, hotp_params(), 100);
    let b = enroll(&v, "B", 2, hotp_params(), 100);
    // Ten past the expected counter is the edge of the window.
    assert_eq!(
        accepted(&verify(&v, &a, &code(2, 110), NOW)),
        (Matched::Counter(Counter(110)), 10)
    );
    assert_eq!(
        verify(&v, &b, &code(2, 111), NOW),
        Outcome::Rejected { attempts_left: 2 }
    );
    // The counter moved past 110: 110 is a replay, 109 is gone, 111 is next.
    assert_eq!(verify(&v, &a, &code(2, 110), NOW), Outcome::Replayed);
    assert_eq!(
        verify(&v, &a, &code(2, 105), NOW),
        Outcome::Rejected { attempts_left: 2 }
    );
    assert_eq!(
        accepted(&verify(&v, &a, &code(2, 111), NOW)),
        (Matched::Counter(Counter(111)), 0)
    );
    assert_eq!(v.show(Subject::Token(&a)).unwrap().unwrap().state.next, 112);
    // The expected counter itself, on the other token.
    assert_eq!(accepted(&verify(&v, &b, &code(2, 100), NOW)).1, 0);
}

fn lockout_and_admin_unlock(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "T", 3, totp_params(), 0);
    let s = step(NOW);
    let wrong = wrong_code(3, s);
    // Success resets the count.
    assert_eq!(
        verify(&v, &t, &wrong, NOW),
        Outcome::Rejected { attempts_left: 2 }
    );
    assert_eq!(
        verify(&v, &t, &wrong, NOW),
        Outcome::Rejected { attempts_left: 1 }
    );
    accepted(&verify(&v, &t, &code(3, s), NOW));
    assert_eq!(failures(&v, &t), 0);
    let later = UnixTime(NOW.0 + 30);
    for left in [2, 1, 0] {
        assert_eq!(
            verify(&v, &t, &wrong, later),
            Outcome::Rejected {
                attempts_left: left
            }
        );
    }
    // Locked: even the right code is refused, and not counted.
    assert_eq!(
        verify(&v, &t, &code(3, s + 1), later),
        Outcome::Locked { until: None }
    );
    let state = v.show(Subject::Token(&t)).unwrap().unwrap().state;
    assert_eq!((state.failures, state.locked_at), (3, Some(later)));
    let trail = v.audit_trail(&t, 3).unwrap();
    let tail: Vec<(A, O)> = trail
        .iter()
        .map(|e| (e.action, e.outcome.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            (A::Verify, O::Rejected),
            (A::Lock, O::Ok),
            (A::Verify, O::Locked)
        ]
    );
    // Without auto-unlock it stays locked a day later.
    let day = UnixTime(later.0 + 86_400);
    assert_eq!(
        verify(&v, &t, &code(3, step(day)), day),
        Outcome::Locked { until: None }
    );
    v.unlock(&t, day, &caller()).unwrap();
    accepted(&verify(&v, &t, &code(3, step(day)), day));
    assert!(matches!(
        v.unlock(&id("nope"), day, &caller()),
        Err(codereader_verifier::VerifyError::UnknownToken { .. })
    ));
}

fn automatic_unlock(make: Factory<'_>) {
    let v = make(Policy::default().with_auto_unlock_after(Some(300)));
    let t = enroll(&v, "T", 4, totp_params(), 0);
    let wrong = wrong_code(4, step(NOW));
    for _ in 0..3 {
        verify(&v, &t, &wrong, NOW);
    }
    let until = UnixTime(NOW.0 + 300);
    let almost = UnixTime(NOW.0 + 299);
    assert_eq!(
        verify(&v, &t, &code(4, step(almost)), almost),
        Outcome::Locked { until: Some(until) }
    );
    accepted(&verify(&v, &t, &code(4, step(until)), until));
    assert_eq!(failures(&v, &t), 0);
}

fn growing_delay(make: Factory<'_>) {
    let delay = FailureDelay {
        base_seconds: 2,
        max_seconds: 60,
    };
    let v = make(
        Policy::default()
            .with_failure_delay(Some(delay))
            .with_max_failures(10),
    );
    let t = enroll(&v, "T", 5, totp_params(), 0);
    let wrong = wrong_code(5, step(NOW));
    assert_eq!(
        verify(&v, &t, &wrong, NOW),
        Outcome::Rejected { attempts_left: 9 }
    );
    let at = |s: u64| UnixTime(NOW.0 + s);
    // After one failure, 2 s; after two, 4 s more. Too-early tries are not counted.
    assert_eq!(
        verify(&v, &t, &code(5, step(NOW)), at(1)),
        Outcome::TooSoon { retry_at: at(2) }
    );
    assert_eq!(
        verify(&v, &t, &wrong, at(2)),
        Outcome::Rejected { attempts_left: 8 }
    );
    assert_eq!(
        verify(&v, &t, &wrong, at(5)),
        Outcome::TooSoon { retry_at: at(6) }
    );
    assert_eq!(failures(&v, &t), 2);
    accepted(&verify(&v, &t, &code(5, step(at(6))), at(6)));
}

/// A temporary lock: after 3 failures, 60 s; then one attempt, and each further failure
/// locks it for twice as long (capped); a right code clears it. Nothing touches `locked_at`.
fn temporary_doubling_lock(make: Factory<'_>) {
    let lock = FailureDelay {
        base_seconds: 60,
        max_seconds: 200,
    };
    let v = make(Policy::default().with_temporary_lock(Some(lock)));
    let t = enroll(&v, "T", 11, hotp_params(), 0);
    let at = |s: u64| UnixTime(NOW.0 + s);
    let wrong = wrong_code(11, 0);
    for left in [2, 1, 0] {
        assert_eq!(
            verify(&v, &t, &wrong, NOW),
            Outcome::Rejected {
                attempts_left: left
            }
        );
    }
    // Locked 60 s: even the right code is refused and not counted.
    assert_eq!(
        verify(&v, &t, &code(11, 0), at(59)),
        Outcome::Locked {
            until: Some(at(60))
        }
    );
    assert_eq!(failures(&v, &t), 3);
    // One more failure after it: locked twice as long, then four times, capped at 200 s.
    assert_eq!(
        verify(&v, &t, &wrong, at(60)),
        Outcome::Rejected { attempts_left: 0 }
    );
    assert_eq!(
        verify(&v, &t, &wrong, at(179)),
        Outcome::Locked {
            until: Some(at(180))
        }
    );
    verify(&v, &t, &wrong, at(180));
    assert_eq!(
        verify(&v, &t, &wrong, at(181)),
        Outcome::Locked {
            until: Some(at(380))
        }
    );
    verify(&v, &t, &wrong, at(380));
    assert_eq!(
        verify(&v, &t, &wrong, at(381)),
        Outcome::Locked {
            until: Some(at(580))
        }
    );
    assert_eq!(failures(&v, &t), 6);
    assert_eq!(
        v.show(Subject::Token(&t)).unwrap().unwrap().state.locked_at,
        None
    );
    // The right code after the lock clears everything.
    accepted(&verify(&v, &t, &code(11, 0), at(580)));
    assert_eq!(failures(&v, &t), 0);
    assert_eq!(
        verify(&v, &t, &wrong, at(581)),
        Outcome::Rejected { attempts_left: 2 }
    );
    // The default stays the permanent lock.
    let p = make(Policy::default());
    let u = enroll(&p, "U", 12, hotp_params(), 0);
    for _ in 0..3 {
        verify(&p, &u, &wrong_code(12, 0), NOW);
    }
    assert_eq!(
        verify(&p, &u, &code(12, 0), UnixTime(NOW.0 + 1_000_000)),
        Outcome::Locked { until: None }
    );
}

/// Unknown serials and users can answer like a wrong code; the trail still tells them apart.
fn unknown_answered_as_rejected(make: Factory<'_>) {
    let v = make(Policy::default().with_unknown_as_rejected(true));
    let t = enroll(&v, "T", 13, hotp_params(), 0);
    let wrong = wrong_code(13, 0);
    let known = verify(&v, &t, &wrong, NOW);
    let unknown = verify(&v, &id("missing"), &wrong, NOW);
    assert_eq!(known, unknown);
    assert_eq!(unknown, Outcome::Rejected { attempts_left: 2 });
    let nobody = UserId::new("nobody").unwrap();
    assert_eq!(
        v.verify(Subject::User(&nobody), &code(13, 0), NOW, &caller())
            .unwrap(),
        Outcome::Rejected { attempts_left: 2 }
    );
    let trail = v.audit_trail(&id("missing"), 10).unwrap();
    assert_eq!(trail.last().unwrap().outcome, O::UnknownToken);
}

fn resync_totp_and_hotp(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "T", 6, totp_params(), 0);
    let s = step(NOW);
    // The token's clock is 100 steps (50 min) fast: normal verification fails.
    assert!(matches!(
        verify(&v, &t, &code(6, s + 100), NOW),
        Outcome::Rejected { .. }
    ));
    // Two codes that are not consecutive do not resync.
    assert!(matches!(
        v.resync(&t, &code(6, s + 100), &code(6, s + 102), NOW, &caller())
            .unwrap(),
        Outcome::Rejected { .. }
    ));
    let o = v
        .resync(&t, &code(6, s + 100), &code(6, s + 101), NOW, &caller())
        .unwrap();
    assert_eq!(accepted(&o), (Matched::Step(TimeStep(s + 101)), 101));
    assert_eq!(failures(&v, &t), 0);
    // The pair counts as one use: both codes are spent.
    assert_eq!(verify(&v, &t, &code(6, s + 101), NOW), Outcome::Replayed);
    assert_eq!(verify(&v, &t, &code(6, s + 100), NOW), Outcome::Replayed);
    // From now on the window follows the token's clock.
    let later = UnixTime(NOW.0 + 60);
    assert_eq!(accepted(&verify(&v, &t, &code(6, s + 102), later)).1, 100);

    let h = enroll(&v, "H", 7, hotp_params(), 0);
    assert!(matches!(
        verify(&v, &h, &code(7, 50), NOW),
        Outcome::Rejected { .. }
    ));
    let o = v
        .resync(&h, &code(7, 50), &code(7, 51), NOW, &caller())
        .unwrap();
    assert_eq!(accepted(&o).0, Matched::Counter(Counter(51)));
    assert_eq!(v.show(Subject::Token(&h)).unwrap().unwrap().state.next, 52);
    // Beyond the resync range (100 ahead) nothing is found.
    assert!(matches!(
        v.resync(&h, &code(7, 200), &code(7, 201), NOW, &caller())
            .unwrap(),
        Outcome::Rejected { .. }
    ));
    // A resync also lifts a lock.
    for _ in 0..3 {
        verify(&v, &h, &wrong_code(7, 60), NOW);
    }
    assert!(matches!(
        verify(&v, &h, &code(7, 52), NOW),
        Outcome::Locked { .. }
    ));
    accepted(
        &v.resync(&h, &code(7, 60), &code(7, 61), NOW, &caller())
            .unwrap(),
    );
    accepted(&verify(&v, &h, &code(7, 62), NOW));
}

fn unknown_disabled_deleted(make: Factory<'_>) {
    let v = make(Policy::default());
    let s = step(NOW);
    assert_eq!(
        verify(&v, &id("missing"), &code(1, s), NOW),
        Outcome::UnknownToken
    );
    let nobody = UserId::new("nobody").unwrap();
    assert_eq!(
        v.verify(Subject::User(&nobody), &code(1, s), NOW, &caller())
            .unwrap(),
        Outcome::UnknownToken
    );
    let t = enroll(&v, "T", 8, totp_params(), 0);
    v.set_enabled(&t, false, NOW, &caller()).unwrap();
    assert_eq!(verify(&v, &t, &code(8, s), NOW), Outcome::Disabled);
    assert_eq!(failures(&v, &t), 0);
    v.set_enabled(&t, true, NOW, &caller()).unwrap();
    accepted(&verify(&v, &t, &code(8, s), NOW));
    v.delete(&t, NOW, &caller()).unwrap();
    assert_eq!(verify(&v, &t, &code(8, s + 1), NOW), Outcome::UnknownToken);
    assert!(v.delete(&t, NOW, &caller()).is_err());
    // Enrolling the same serial twice is refused and changes nothing.
    let u = enroll(&v, "U", 9, totp_params(), 0);
    let again = v.enroll(
        &[codereader_verifier::Enrollment {
            id: u.clone(),
            params: totp_params(),
            secret: secret(10),
            counter: Counter(0),
        }],
        NOW,
        &caller(),
    );
    assert!(matches!(
        again,
        Err(codereader_verifier::VerifyError::Store(
            codereader_verifier::StoreError::Duplicate { .. }
        ))
    ));
    accepted(&verify(&v, &u, &code(9, s), NOW));
    // A clock before the token's T0 is an error, not a rejection (nothing is counted).
    let future = enroll(
        &v,
        "F",
        9,
        codereader_verifier::TokenParams {
            kind: codereader_verifier::TokenKind::Totp {
                period: codereader_otp::Period::DEFAULT,
                t0: UnixTime(NOW.0 + 1),
            },
            ..totp_params()
        },
        0,
    );
    assert!(matches!(
        v.verify(Subject::Token(&future), &code(9, 0), NOW, &caller()),
        Err(codereader_verifier::VerifyError::Time(_))
    ));
    assert_eq!(failures(&v, &future), 0);
    // A batch is all or nothing: a new serial beside an existing one goes in neither.
    let batch = [
        codereader_verifier::Enrollment {
            id: id("NEW"),
            params: totp_params(),
            secret: secret(10),
            counter: Counter(0),
        },
        codereader_verifier::Enrollment {
            id: u.clone(),
            params: totp_params(),
            secret: secret(10),
            counter: Counter(0),
        },
    ];
    assert_eq!(
        v.enroll(&batch, NOW, &caller()).unwrap_err(),
        codereader_verifier::VerifyError::Store(codereader_verifier::StoreError::Duplicate {
            token: u.clone()
        })
    );
    assert!(v.show(Subject::Token(&id("NEW"))).unwrap().is_none());
    assert_eq!(v.enroll(&batch[..1], NOW, &caller()).map(|_| ()), Ok(()));
}

/// A serial's trail covers its whole life: attempts before it existed, its enrolment, its
/// deletion, attempts after, and a new enrolment under the same serial.
fn audit_trail_outlives_the_token(make: Factory<'_>) {
    let v = make(Policy::default());
    let z = id("Z");
    let s = step(NOW);
    assert_eq!(verify(&v, &z, &code(20, s), NOW), Outcome::UnknownToken);
    enroll(&v, "Z", 20, totp_params(), 0);
    accepted(&verify(&v, &z, &code(20, s), NOW));
    v.delete(&z, NOW, &caller()).unwrap();
    assert_eq!(verify(&v, &z, &code(20, s + 1), NOW), Outcome::UnknownToken);
    // Another serial's lines in between belong to it alone.
    let other = enroll(&v, "Y", 21, totp_params(), 0);
    accepted(&verify(&v, &other, &code(21, s), NOW));
    enroll(&v, "Z", 22, totp_params(), 0);
    accepted(&verify(&v, &z, &code(22, s), NOW));
    let trail = v.audit_trail(&z, 100).unwrap();
    let got: Vec<(A, O)> = trail
        .iter()
        .map(|e| (e.action, e.outcome.clone()))
        .collect();
    let enrolled = O::Enrolled { count: 1 };
    assert_eq!(
        got,
        [
            (A::Verify, O::UnknownToken),
            (A::Enroll, enrolled.clone()),
            (A::Verify, O::Accepted),
            (A::Delete, O::Ok),
            (A::Verify, O::UnknownToken),
            (A::Enroll, enrolled),
            (A::Verify, O::Accepted),
        ]
    );
    assert!(trail.iter().all(|e| e.token.as_ref() == Some(&z)));
    assert_eq!(v.audit_trail(&z, 3).unwrap(), trail[4..].to_vec());
    assert!(v.audit_trail(&z, 0).unwrap().is_empty());
    assert_eq!(v.audit_trail(&other, 100).unwrap().len(), 2);
    assert!(v.audit_trail(&id("never"), 100).unwrap().is_empty());
}

/// Paging one token's trail newest first by cursor, and exporting every line since a time
/// oldest first, resuming after the last line seen: no line missed, none twice.
fn audit_pages_and_export(make: Factory<'_>) {
    let v = make(Policy::default());
    let s = step(NOW);
    let a = enroll(&v, "A", 30, totp_params(), 0);
    let b = enroll(&v, "B", 31, totp_params(), 0);
    for i in 0..5 {
        let later = UnixTime(NOW.0 + 30 * i);
        accepted(&verify(&v, &a, &code(30, s + i), later));
        accepted(&verify(&v, &b, &code(31, s + i), later));
    }
    let whole = v.audit_page(&a, None, 100).unwrap();
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert!(whole.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(whole.last().unwrap().event.action, A::Enroll);
    assert!(whole.iter().all(|e| e.event.token.as_ref() == Some(&a)));
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = v.audit_page(&a, before, 4).unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        paged.extend(page);
    }
    assert_eq!(paged, whole);
    // A cursor from another token's trail gives nothing of this one.
    let of_b = v.audit_page(&b, None, 1).unwrap();
    assert!(v.audit_page(&a, Some(of_b[0].seq), 10).unwrap().is_empty());
    assert!(v.audit_page(&id("never"), None, 10).unwrap().is_empty());

    // Export: every line at or after a time, across tokens, oldest first, in pages.
    let since = UnixTime(NOW.0 + 60);
    let mut exported = Vec::new();
    let mut after = None;
    loop {
        let page = v.audit_since(since, after, 3).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        exported.extend(page);
    }
    assert_eq!(exported.len(), 6, "{exported:?}");
    assert!(exported.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(exported.iter().all(|e| e.event.at >= since));
}

fn activation_binds_a_user(make: Factory<'_>) {
    let v = make(Policy::default());
    let s = step(NOW);
    let t = enroll(&v, "T", 11, totp_params(), 0);
    let other = enroll(&v, "O", 12, totp_params(), 0);
    let alice = UserId::new("alice").unwrap();
    assert_eq!(
        v.verify(Subject::User(&alice), &code(11, s), NOW, &caller())
            .unwrap(),
        Outcome::UnknownToken
    );
    assert_eq!(
        v.activate(&t, &alice, &wrong_code(11, s), NOW, &caller())
            .unwrap(),
        Activation::Refused(Outcome::Rejected { attempts_left: 2 })
    );
    assert!(matches!(
        v.activate(&t, &alice, &code(11, s), NOW, &caller())
            .unwrap(),
        Activation::Activated(_)
    ));
    let info = v.show(Subject::User(&alice)).unwrap().unwrap();
    assert_eq!(
        (info.id.clone(), info.user.clone()),
        (t.clone(), Some(alice.clone()))
    );
    assert_eq!(info.state.failures, 0);
    // The activation code is used up; the next step verifies by user.
    assert_eq!(
        v.verify(Subject::User(&alice), &code(11, s), NOW, &caller())
            .unwrap(),
        Outcome::Replayed
    );
    let later = UnixTime(NOW.0 + 30);
    accepted(
        &v.verify(Subject::User(&alice), &code(11, s + 1), later, &caller())
            .unwrap(),
    );
    let bob = UserId::new("bob").unwrap();
    assert_eq!(
        v.activate(&t, &bob, &code(11, s + 2), UnixTime(NOW.0 + 60), &caller())
            .unwrap(),
        Activation::AlreadyBound
    );
    assert_eq!(
        v.activate(&other, &alice, &code(12, s), NOW, &caller())
            .unwrap(),
        Activation::UserHasToken
    );
    // Neither refusal used the codes.
    accepted(&verify(&v, &other, &code(12, s), NOW));
}

fn audit_trail_without_codes(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "T", 13, totp_params(), 0);
    let s = step(NOW);
    let right = code(13, s);
    let wrong = wrong_code(13, s);
    let desk = codereader_verifier::Caller::new("helpdesk").unwrap();
    v.verify(Subject::Token(&t), &wrong, NOW, &desk).unwrap();
    v.verify(Subject::Token(&t), &right, NOW, &desk).unwrap();
    v.verify(Subject::Token(&t), &right, NOW, &desk).unwrap();
    v.set_enabled(&t, false, NOW, &caller()).unwrap();
    v.verify(Subject::Token(&t), &right, NOW, &desk).unwrap();
    let trail = v.audit_trail(&t, 100).unwrap();
    // As the trail is stored and shown: text.
    let got: Vec<(&str, String, &str)> = trail
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.to_string(), e.caller.as_str()))
        .collect();
    let want = [
        ("enroll", "1 token(s)", "test"),
        ("verify", "rejected", "helpdesk"),
        ("verify", "accepted", "helpdesk"),
        ("verify", "replayed", "helpdesk"),
        ("disable", "ok", "test"),
        ("verify", "disabled", "helpdesk"),
    ]
    .map(|(a, o, c)| (a, o.to_owned(), c));
    assert_eq!(got, want);
    assert!(
        trail
            .iter()
            .all(|e| e.at == NOW && e.token.as_ref() == Some(&t))
    );
    // No text field of the trail carries either code (times are numbers, checked above).
    for e in &trail {
        let outcome = e.outcome.to_string();
        for field in [e.action.as_str(), &outcome, e.caller.as_str(), t.as_str()] {
            assert!(!field.contains(right.as_str()) && !field.contains(wrong.as_str()));
        }
    }
    assert_eq!(v.audit_trail(&t, 2).unwrap(), trail[4..].to_vec());
}

fn rotation_reseals_every_seed(make: Factory<'_>) {
    let v = make(Policy::default());
    let s = step(NOW);
    let tokens: Vec<_> = (0..7u8)
        .map(|i| enroll(&v, &format!("R{i}"), 20 + i, totp_params(), 0))
        .collect();
    let k2 = Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32]);
    let both = Keyring::new(k2).with_older(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]));
    let v = Verifier::new(v.into_store(), both, Policy::default());
    let report = v.rotate(NOW, &caller()).unwrap();
    assert_eq!((report.resealed, report.failed.len()), (7, 0));
    assert_eq!(v.rotate(NOW, &caller()).unwrap().resealed, 0);
    // Only the new key is needed now.
    let only_new = Keyring::new(Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32]));
    let v = Verifier::new(v.into_store(), only_new, Policy::default());
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(
            v.show(Subject::Token(t)).unwrap().unwrap().key_id.as_str(),
            "k2"
        );
        accepted(&verify(&v, t, &code(20 + i as u8, s), NOW));
    }
    // A seed under a key the keyring lacks is a typed error, not a panic or a rejection.
    let stranger = Verifier::new(
        v.into_store(),
        Keyring::new(Kek::from_bytes(KeyId::new("k3").unwrap(), [3; 32])),
        Policy::default(),
    );
    assert!(matches!(
        stranger.verify(Subject::Token(&tokens[0]), &code(20, s + 1), NOW, &caller()),
        Err(codereader_verifier::VerifyError::Seal(
            codereader_verifier::SealError::UnknownKey { .. }
        ))
    ));
}

fn import_pskc_and_otpauth(make: Factory<'_>) {
    let v = make(Policy::default());
    let figure6 = include_str!("../../otp/tests/data/pskc/rfc6030-figure6.xml");
    let psk = PreSharedKey::from_hex("12345678901234567890123456789012").unwrap();
    let report = v
        .import_pskc(
            figure6.as_bytes(),
            Some(&psk),
            KeyPolicy::Rfc4226,
            NOW,
            &caller(),
        )
        .unwrap();
    assert_eq!(report.imported, [id("987654321")]);
    assert!(report.refused.is_empty());
    // RFC 4226 appendix D, 8 digits: counter 0 gives 84755224.
    let t = id("987654321");
    assert_eq!(
        accepted(&verify(&v, &t, &Code::parse("84755224").unwrap(), NOW)),
        (Matched::Counter(Counter(0)), 0)
    );
    assert!(v.show(Subject::Token(&t)).unwrap().unwrap().user.is_none());

    // The same token again, plus the broken-key table: only the new good key goes in.
    let broken = include_str!("../../otp/tests/data/pskc/broken-keys.xml");
    let report = v
        .import_pskc(broken.as_bytes(), None, KeyPolicy::Rfc4226, NOW, &caller())
        .unwrap();
    assert_eq!(report.imported, [id("GOOD-1"), id("GOOD-2")]);
    let refused: Vec<usize> = report.refused.iter().map(|p| p.index).collect();
    assert_eq!(refused, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]);
    assert_eq!(report.refused[0].name.as_deref(), Some("NO-ID"));
    assert_eq!(report.refused[0].reason, "the key has no Id attribute");
    let again = v
        .import_pskc(broken.as_bytes(), None, KeyPolicy::Rfc4226, NOW, &caller())
        .unwrap();
    assert!(again.imported.is_empty());
    assert!(
        again
            .refused
            .iter()
            .any(|p| p.index == 1 && p.reason == "token GOOD-1 already exists")
    );
    // A document that is not PSKC at all is one error.
    assert!(matches!(
        v.import_pskc(b"<x/>", None, KeyPolicy::Rfc4226, NOW, &caller()),
        Err(codereader_verifier::VerifyError::Pskc(_))
    ));

    let uri: KeyUri = "otpauth://hotp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=5"
        .parse()
        .unwrap();
    let h = id("URI-1");
    v.enroll(
        &[codereader_verifier::Enrollment::from_uri(h.clone(), &uri)],
        NOW,
        &caller(),
    )
    .unwrap();
    // RFC 4226 appendix D, counter 5: 254676; counters before 5 are not valid.
    assert_eq!(
        verify(&v, &h, &Code::parse("359152").unwrap(), NOW),
        Outcome::Rejected { attempts_left: 2 }
    );
    assert_eq!(
        accepted(&verify(&v, &h, &Code::parse("254676").unwrap(), NOW)),
        (Matched::Counter(Counter(5)), 0)
    );
}

/// Every change people act on leaves one event, in commit order, with its token and why;
/// verifications that change nothing leave none; the SQL trigger that writes events agrees
/// with [`EventKind::of`] on every action and outcome; a delivery lease has one holder.
fn events_of_changes_and_their_delivery(make: Factory<'_>) {
    let v = make(Policy::default());
    let t = enroll(&v, "E", 1, totp_params(), 0);
    let s = step(NOW);
    let wrong = wrong_code(1, s);
    for _ in 0..4 {
        verify(&v, &t, &wrong, NOW);
    }
    v.unlock(&t, NOW, &caller()).unwrap();
    accepted(&verify(&v, &t, &code(1, s), NOW));
    assert_eq!(verify(&v, &t, &code(1, s), NOW), Outcome::Replayed);
    v.set_enabled(&t, false, NOW, &caller()).unwrap();
    v.record_event(NoticeAction::ApiKeyRevoked, "ops\nkey", NOW, &caller())
        .unwrap();
    v.rotate(NOW, &caller()).unwrap();
    let events = v.events_after(0, 100).unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.token().map(|t| t.as_str()), e.why()))
        .collect();
    assert_eq!(
        seen,
        [
            ("token.enrolled", Some("E"), None),
            ("token.locked", Some("E"), Some("failures")),
            ("token.unlocked", Some("E"), Some("admin")),
            ("token.disabled", Some("E"), None),
            ("apikey.revoked", None, None),
            ("kek.rotated", None, None),
        ]
    );
    assert_eq!(events[0].count(), Some(1));
    assert_eq!(
        events[4].audit.event.outcome,
        O::Named {
            name: "opskey".into()
        }
    );
    for pair in events.windows(2) {
        assert!(pair[0].id < pair[1].id && pair[0].audit.seq < pair[1].audit.seq);
    }
    let rest = v.events_after(events[1].id, 100).unwrap();
    assert_eq!(rest, events[2..]);

    // Every action with every kind of outcome, written as a bare line: an event exactly
    // when the library's mapping says so.
    let outcomes = [
        O::Accepted,
        O::Rejected,
        O::Ok,
        O::Temporary,
        O::Locked,
        O::Enrolled { count: 2 },
        O::Named { name: "n".into() },
    ];
    let last = events.last().unwrap().id;
    let mut expected = Vec::new();
    for action in A::ALL {
        for outcome in &outcomes {
            let line = codereader_verifier::AuditEvent {
                token: Some(t.clone()),
                user: None,
                action,
                outcome: outcome.clone(),
                at: NOW,
                caller: caller(),
            };
            if let Some(kind) = EventKind::of(action, outcome) {
                expected.push((kind, action, outcome.clone()));
            }
            v.store()
                .write(move |tx| tx.append_audit(&line))
                .unwrap()
                .unwrap();
        }
    }
    let got: Vec<_> = v
        .events_after(last, 1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.audit.event.action, e.audit.event.outcome))
        .collect();
    assert_eq!(got, expected);

    // A lease has one holder until it runs out; only the holder moves the cursor.
    let latest = v.events_after(0, 1000).unwrap().last().unwrap().id;
    let first = v.claim_delivery("hook", "a", 1_000, 500).unwrap();
    assert!(first.held);
    assert_eq!(
        first.delivery.after, latest,
        "a new destination starts at the latest"
    );
    assert!(!v.claim_delivery("hook", "b", 1_400, 500).unwrap().held);
    assert!(v.claim_delivery("hook", "a", 1_400, 500).unwrap().held);
    assert!(v.claim_delivery("hook", "b", 1_900, 500).unwrap().held);
    let moved = Delivery {
        after: latest - 1,
        attempts: 2,
        failing_since: Some(1_800),
        retry_at: 2_500,
        dead: 1,
    };
    let dead = DeadLetter {
        event: latest,
        at: 1_950,
        reason: "HTTP 500".into(),
    };
    assert!(
        !v.settle_delivery("hook", "a", moved.clone(), Some(dead.clone()))
            .unwrap()
    );
    assert!(
        v.settle_delivery("hook", "b", moved.clone(), Some(dead))
            .unwrap()
    );
    let now = v.claim_delivery("hook", "b", 2_000, 500).unwrap();
    assert_eq!((now.held, now.delivery), (true, moved));
}

/// A verifier on a fresh in-memory store.
fn on_memory(policy: Policy) -> Verifier {
    verifier(Box::new(MemoryStore::new()), policy)
}

/// A verifier on a fresh SQLite database in a directory that lives as long as the test.
fn on_sqlite(dir: &tempfile::TempDir, policy: Policy) -> Verifier {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = dir
        .path()
        .join(format!("{}.db", N.fetch_add(1, Ordering::Relaxed)));
    verifier(Box::new(SqliteStore::open(path).unwrap()), policy)
}

/// One PostgreSQL for the tests of this file that run at the same time: started by the
/// first that needs it and stopped when the last of them drops it (a `static` holding the
/// server itself would never be dropped, leaving the server running after the tests).
/// Each verifier gets a database of its own in it.
fn shared_postgres() -> Arc<TempPostgres> {
    static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pg) = shared.upgrade() {
        return pg;
    }
    let pg = Arc::new(TempPostgres::start().unwrap());
    *shared = Arc::downgrade(&pg);
    pg
}

/// A verifier on a fresh database in `pg`.
fn on_postgres(pg: &TempPostgres, policy: Policy) -> Verifier {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("rules{}", N.fetch_add(1, Ordering::Relaxed));
    let url = pg.create_database(&name).unwrap();
    verifier(open_store(&url).unwrap(), policy)
}

/// One `#[test]` per rule and store, so that one rule failing on one store hides no other:
/// `memory::lockout_and_admin_unlock`, `postgres::resync_totp_and_hotp` and so on. The key
/// cache (on by default) must change nothing a caller can see, so every rule runs again
/// with it off.
macro_rules! rules_on_every_store {
    ($($rule:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $rule() { super::$rule(&super::on_memory) })*
        }
        mod memory_without_key_cache {
            $(#[test] fn $rule() {
                super::$rule(&|policy| super::on_memory(policy).with_key_cache(0))
            })*
        }
        mod sqlite {
            $(#[test] fn $rule() {
                let dir = tempfile::tempdir().unwrap();
                super::$rule(&|policy| super::on_sqlite(&dir, policy))
            })*
        }
        mod sqlite_without_key_cache {
            $(#[test] fn $rule() {
                let dir = tempfile::tempdir().unwrap();
                super::$rule(&|policy| super::on_sqlite(&dir, policy).with_key_cache(0))
            })*
        }
        mod postgres {
            $(#[test] fn $rule() {
                let pg = super::shared_postgres();
                super::$rule(&|policy| super::on_postgres(&pg, policy))
            })*
        }
    };
}

rules_on_every_store!(
    totp_window_edges,
    totp_replay_of_same_and_earlier_step,
    totp_drift_followed_across_many_logins,
    hotp_look_ahead_edges,
    lockout_and_admin_unlock,
    automatic_unlock,
    growing_delay,
    resync_totp_and_hotp,
    unknown_disabled_deleted,
    activation_binds_a_user,
    audit_trail_without_codes,
    audit_trail_outlives_the_token,
    audit_pages_and_export,
    rotation_reseals_every_seed,
    import_pskc_and_otpauth,
    temporary_doubling_lock,
    unknown_answered_as_rejected,
    events_of_changes_and_their_delivery,
);

/// A cached key is used only for the very seal it came from: a token deleted and enrolled
/// again under the same serial with another seed, a re-sealed seed, and a seal tampered with
/// in the store all behave exactly as without the cache.
#[test]
fn key_cache_follows_the_stored_seal() {
    let v = verifier(Box::new(MemoryStore::new()), Policy::default()).with_key_cache(4);
    let s = step(NOW);
    let t = enroll(&v, "T", 1, totp_params(), 0);
    accepted(&verify(&v, &t, &code(1, s), NOW));
    v.delete(&t, NOW, &caller()).unwrap();
    let t = enroll(&v, "T", 2, totp_params(), 0);
    // The old seed's next code is wrong now; the new seed's is right.
    assert!(matches!(
        verify(&v, &t, &code(1, s + 1), UnixTime(NOW.0 + 30)),
        Outcome::Rejected { .. }
    ));
    accepted(&verify(&v, &t, &code(2, s + 1), UnixTime(NOW.0 + 30)));
    // Rotation re-seals: the cached entry no longer matches, the new seal opens.
    let rotated = Verifier::new(
        v.into_store(),
        Keyring::new(Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32]))
            .with_older(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32])),
        Policy::default(),
    )
    .with_key_cache(4);
    accepted(&verify(&rotated, &t, &code(2, s + 2), UnixTime(NOW.0 + 60)));
    rotated.rotate(UnixTime(NOW.0 + 60), &caller()).unwrap();
    accepted(&verify(&rotated, &t, &code(2, s + 3), UnixTime(NOW.0 + 90)));
    // A seal changed in the store (here: swapped for another token's) is opened, and fails
    // like it does without a cache, although a key for this token is cached.
    let other = enroll(&rotated, "O", 3, totp_params(), 0);
    let mine = stored_seed(&rotated, &t);
    let theirs = stored_seed(&rotated, &other);
    assert!(replace_seed(&rotated, &t, &mine, &theirs));
    assert!(matches!(
        rotated.verify(
            Subject::Token(&t),
            &code(2, s + 4),
            UnixTime(NOW.0 + 120),
            &caller()
        ),
        Err(codereader_verifier::VerifyError::Seal(_))
    ));
}

/// A key taken out of the keyring (replaced without it) takes the cached keys of its seeds
/// along: a token verified a moment before does not go on verifying through the cache.
#[test]
fn a_replaced_keyring_empties_the_key_cache() {
    let v = verifier(Box::new(MemoryStore::new()), Policy::default());
    let s = step(NOW);
    let t = enroll(&v, "T", 1, totp_params(), 0);
    accepted(&verify(&v, &t, &code(1, s), NOW));
    v.replace_keyring(Keyring::new(Kek::from_bytes(
        KeyId::new("k9").unwrap(),
        [9; 32],
    )));
    let later = UnixTime(NOW.0 + 30);
    assert!(matches!(
        v.verify(Subject::Token(&t), &code(1, s + 1), later, &caller()),
        Err(codereader_verifier::VerifyError::Seal(_))
    ));
}

#[test]
fn sqlite_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let address = format!("sqlite:{}", path.display());
    let v = verifier(open_store(&address).unwrap(), Policy::default());
    let t = enroll(&v, "T", 1, totp_params(), 0);
    accepted(&verify(&v, &t, &code(1, step(NOW)), NOW));
    drop(v);
    let v = verifier(open_store(&address).unwrap(), Policy::default());
    assert_eq!(verify(&v, &t, &code(1, step(NOW)), NOW), Outcome::Replayed);
}

/// A verifier that meets a seed sealed under a key it has not loaded asks its key source once,
/// uses the newer keyring from then on, and still reports a key nobody has as an error.
#[test]
fn key_source_follows_a_rotation_done_elsewhere() {
    use codereader_verifier::{KeySource, SealError, VerifyError};
    use std::sync::Arc;

    struct Source {
        calls: Arc<AtomicUsize>,
        with_k2: bool,
    }
    impl KeySource for Source {
        fn reload(&self) -> Option<Keyring> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let k1 = Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32]);
            Some(if self.with_k2 {
                Keyring::new(Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32])).with_older(k1)
            } else {
                Keyring::new(k1)
            })
        }
    }
    let s = step(NOW);
    // Another process rotated the store to k2.
    let store = {
        let v = verifier(Box::new(MemoryStore::new()), Policy::default());
        enroll(&v, "T", 5, totp_params(), 0);
        let rotated = Verifier::new(
            v.into_store(),
            Keyring::new(Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32]))
                .with_older(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32])),
            Policy::default(),
        );
        rotated.rotate(NOW, &caller()).unwrap();
        rotated.into_store()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let v = verifier(store, Policy::default()).with_key_source(Box::new(Source {
        calls: calls.clone(),
        with_k2: true,
    }));
    let t = id("T");
    accepted(&verify(&v, &t, &code(5, s), NOW));
    accepted(&verify(&v, &t, &code(5, s + 1), UnixTime(NOW.0 + 30)));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(v.keyring_generation(), 1);
    assert_eq!(v.keyring().current_id().as_str(), "k2");

    // A source that has no newer key: the error says which key is missing.
    let store = v.into_store();
    let calls = Arc::new(AtomicUsize::new(0));
    let v = verifier(store, Policy::default()).with_key_source(Box::new(Source {
        calls: calls.clone(),
        with_k2: false,
    }));
    let err = v
        .verify(
            Subject::Token(&t),
            &code(5, s + 2),
            UnixTime(NOW.0 + 60),
            &caller(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Seal(SealError::UnknownKey { key, .. }) if key.as_str() == "k2"),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

/// The codes a key-cache entry remembers from its token's last window ([`Verifier`]'s key
/// cache, on by default) never let a code through twice, nor outlive the seal they came
/// from: HOTP codes accepted in turn and replayed, a jump ahead, the token deleted and
/// enrolled again with another seed, a rotation, and a keyring reloaded without the key.
fn remembered_codes_follow_the_token(make: Factory<'_>) {
    let v = make(Policy::default());
    let h = enroll(&v, "H", 1, hotp_params(), 0);
    for counter in 0..30 {
        assert_eq!(
            accepted(&verify(&v, &h, &code(1, counter), NOW)).0,
            Matched::Counter(Counter(counter))
        );
        assert_eq!(verify(&v, &h, &code(1, counter), NOW), Outcome::Replayed);
    }
    // A jump to the window's edge, then everything it skipped is gone.
    assert_eq!(accepted(&verify(&v, &h, &code(1, 40), NOW)).1, 10);
    assert_eq!(verify(&v, &h, &code(1, 40), NOW), Outcome::Replayed);
    assert!(matches!(
        verify(&v, &h, &code(1, 35), NOW),
        Outcome::Rejected { .. }
    ));
    // Racing callers with the next code: exactly one is accepted.
    let next = code(1, 41);
    let answers: Vec<Outcome> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| verify(&v, &h, &next, NOW)))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let wins = answers
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    assert_eq!(wins, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|o| matches!(o, Outcome::Accepted(_) | Outcome::Replayed))
    );
    // Enrolled again with another seed: the old seed's next code is wrong now.
    v.delete(&h, NOW, &caller()).unwrap();
    let h = enroll(&v, "H", 2, hotp_params(), 42);
    assert!(matches!(
        verify(&v, &h, &code(1, 42), NOW),
        Outcome::Rejected { .. }
    ));
    accepted(&verify(&v, &h, &code(2, 43), NOW));
    // A rotation re-seals every seed: codes go on being checked against the token's.
    let rotated = Verifier::new(
        v.into_store(),
        Keyring::new(Kek::from_bytes(KeyId::new("k2").unwrap(), [2; 32]))
            .with_older(Kek::from_bytes(KeyId::new("k1").unwrap(), [1; 32])),
        Policy::default(),
    );
    accepted(&verify(&rotated, &h, &code(2, 44), NOW));
    rotated.rotate(NOW, &caller()).unwrap();
    assert_eq!(verify(&rotated, &h, &code(2, 44), NOW), Outcome::Replayed);
    accepted(&verify(&rotated, &h, &code(2, 45), NOW));
    // The keyring replaced without the seed's key: no remembered code verifies any more.
    rotated.replace_keyring(Keyring::new(Kek::from_bytes(
        KeyId::new("k9").unwrap(),
        [9; 32],
    )));
    assert!(matches!(
        rotated.verify(Subject::Token(&h), &code(2, 46), NOW, &caller()),
        Err(codereader_verifier::VerifyError::Seal(_))
    ));
}

#[test]
fn remembered_codes_follow_the_token_in_memory() {
    remembered_codes_follow_the_token(&on_memory);
}

#[test]
fn remembered_codes_follow_the_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    remembered_codes_follow_the_token(&|policy| on_sqlite(&dir, policy));
}
