//! Failures budgeted per client (RFC 4226 §7.3, NIST SP 800-63B §5.2.2): whoever tries codes
//! for many tokens from one place is slowed down before any token is locked on their
//! account.
//!
//! The client is what the backend says it is (the end user's address as the backend saw
//! it). Each has a budget of `failures` per `window_seconds`, spent by failed attempts and
//! refilled evenly over the window (a generic cell rate algorithm: one number per client).
//! An attempt takes a unit before it is made and gives it back if it did not fail, so
//! concurrent attempts cannot overdraw the budget. Budgets live in this process's memory,
//! unless the store keeps them ([`crate::store::Store::shares_client_budgets`]: PostgreSQL,
//! so that servers behind a load balancer share one budget per client): then an attempt
//! reads the client's row before it is made, and a failed one spends a unit with one
//! statement. Concurrent attempts of one client may then overdraw by as many as are in
//! flight at once, against N times the budget for N servers otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use codereader_otp::UnixTime;

use crate::outcome::Outcome;
use crate::token::ClientId;

/// How many failed attempts a client may make in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientBudget {
    /// Failures allowed in a burst, and per window (at least 1).
    pub failures: u32,
    /// The window in seconds (at least 1).
    pub window_seconds: u64,
}

impl Default for ClientBudget {
    /// 20 failures per minute.
    fn default() -> Self {
        ClientBudget {
            failures: 20,
            window_seconds: 60,
        }
    }
}

/// Clients tracked at most; past that, a new client is not tracked (its attempts still
/// meet the per-token delay and lock) until old budgets have refilled.
const MAX_CLIENTS: usize = 100_000;

/// The budgets of every client that has failed lately.
#[derive(Debug)]
pub(crate) struct Budgets {
    budget: ClientBudget,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per client, the millisecond at which its budget is whole again (the theoretical
    /// arrival time); a client absent or in the past has its whole budget.
    full_at: HashMap<ClientId, u64>,
    /// When the map was last cleared of whole budgets.
    pruned_at: u64,
}

impl Budgets {
    pub(crate) fn new(budget: ClientBudget) -> Arc<Self> {
        Arc::new(Budgets {
            budget: ClientBudget {
                failures: budget.failures.max(1),
                window_seconds: budget.window_seconds.max(1),
            },
            state: Mutex::new(State::default()),
        })
    }

    fn window_ms(&self) -> u64 {
        self.budget.window_seconds.saturating_mul(1000)
    }

    /// The budget one attempt costs, in milliseconds of refill.
    pub(crate) fn unit_ms(&self) -> u64 {
        (self.window_ms() / u64::from(self.budget.failures)).max(1)
    }

    /// Whether a budget whole again at `full_at` (milliseconds; `None`: whole) has a unit
    /// left at `now_ms`; if not, the Unix second from which it has one.
    pub(crate) fn check(&self, full_at: Option<u64>, now_ms: u64) -> Result<u64, UnixTime> {
        let full_at = full_at.unwrap_or(0).max(now_ms);
        let after = full_at.saturating_add(self.unit_ms());
        if after - now_ms > self.window_ms() {
            // Whole seconds, rounded up: the client may try again then.
            let ready_ms = after - self.window_ms();
            return Err(UnixTime(ready_ms.div_ceil(1000)));
        }
        Ok(after)
    }

    /// Takes one attempt from `client`'s budget, or says when it may try again.
    fn take(&self, client: &ClientId, now: UnixTime) -> Result<(), UnixTime> {
        let now_ms = now.0.saturating_mul(1000);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let after = self.check(state.full_at.get(client).copied(), now_ms)?;
        if !state.full_at.contains_key(client) && state.full_at.len() >= MAX_CLIENTS {
            if state.pruned_at == now_ms {
                return Ok(());
            }
            state.pruned_at = now_ms;
            state.full_at.retain(|_, at| *at > now_ms);
            if state.full_at.len() >= MAX_CLIENTS {
                return Ok(());
            }
        }
        state.full_at.insert(client.clone(), after);
        Ok(())
    }

    /// Gives back the unit an attempt took.
    fn give_back(&self, client: &ClientId, now: UnixTime) {
        let now_ms = now.0.saturating_mul(1000);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = state.full_at.get_mut(client) {
            *at = at.saturating_sub(self.unit_ms());
            if *at <= now_ms {
                state.full_at.remove(client);
            }
        }
    }
}

/// One attempt taken from a client's budget ([`crate::Verifier::admit`]). Settle it with
/// the attempt's outcome: one that is not a failure gives the unit back.
#[derive(Debug)]
#[must_use = "settle the admission with the attempt's outcome"]
pub struct Admission {
    taken: Option<(Arc<Budgets>, ClientId, UnixTime)>,
}

impl Admission {
    /// An admission that took nothing (no budget, or no client named).
    pub(crate) fn free() -> Self {
        Admission { taken: None }
    }

    /// Takes one attempt from `client`'s budget in `budgets`.
    pub(crate) fn take(
        budgets: &Arc<Budgets>,
        client: &ClientId,
        now: UnixTime,
    ) -> Result<Self, Outcome> {
        budgets
            .take(client, now)
            .map_err(|retry_at| Outcome::RateLimited { retry_at })?;
        Ok(Admission {
            taken: Some((budgets.clone(), client.clone(), now)),
        })
    }

    /// Records how the attempt went: unless it failed ([`Outcome::is_failure`]), its unit
    /// goes back to the client. An attempt that ended in an error is not a failure of the
    /// client's either: call this with `None`.
    pub fn settle(self, outcome: Option<&Outcome>) {
        if let Some((budgets, client, now)) = self.taken {
            if !outcome.is_some_and(Outcome::is_failure) {
                budgets.give_back(&client, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ClientId {
        ClientId::new(name).unwrap()
    }

    #[test]
    fn a_burst_of_the_budget_then_one_per_share_of_the_window() {
        let budgets = Budgets::new(ClientBudget {
            failures: 20,
            window_seconds: 60,
        });
        let a = client("192.0.2.1");
        let t = UnixTime(1_000_000);
        for _ in 0..20 {
            budgets.take(&a, t).unwrap();
        }
        // Spent: the next unit is whole again 3 s later.
        assert_eq!(budgets.take(&a, t), Err(UnixTime(t.0 + 3)));
        assert_eq!(budgets.take(&a, UnixTime(t.0 + 2)), Err(UnixTime(t.0 + 3)));
        budgets.take(&a, UnixTime(t.0 + 3)).unwrap();
        assert!(budgets.take(&a, UnixTime(t.0 + 3)).is_err());
        // Another client is untouched.
        budgets.take(&client("192.0.2.2"), t).unwrap();
        // A whole window later, the whole budget is back.
        for _ in 0..20 {
            budgets.take(&a, UnixTime(t.0 + 63)).unwrap();
        }
    }

    #[test]
    fn attempts_that_did_not_fail_give_their_unit_back() {
        let budgets = Budgets::new(ClientBudget {
            failures: 2,
            window_seconds: 60,
        });
        let a = client("a");
        let t = UnixTime(5_000);
        for _ in 0..10 {
            Admission::take(&budgets, &a, t)
                .unwrap()
                .settle(Some(&Outcome::Replayed));
            Admission::take(&budgets, &a, t).unwrap().settle(None);
        }
        for _ in 0..2 {
            Admission::take(&budgets, &a, t)
                .unwrap()
                .settle(Some(&Outcome::UnknownToken));
        }
        assert_eq!(
            Admission::take(&budgets, &a, t).unwrap_err(),
            Outcome::RateLimited {
                retry_at: UnixTime(t.0 + 30)
            }
        );
    }
}
