//! Seeds that did not open: counted (for `/metrics`), logged once per token (a token
//! verified a thousand times a minute must not flood the log), and reported by `/healthz`
//! as long as the keyring they were met under is the one in use.
//!
//! A seed under a key this server lacks means its keyring is behind a rotation: `/healthz`
//! answers 503 so a load balancer sends users to servers that can open the seeds, until a
//! reload (SIGHUP, or the automatic one) changes the keyring. A seed that does not open
//! under a key the server has is a bad row, not a bad server: `/healthz` says `degraded`
//! with 200, because taking every server out of service for one token would lock everyone
//! out.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// Most distinct tokens remembered as logged; past it the set starts again (the log then
/// repeats a token at most once per this many others).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
struct Since {
    /// The keyring generation these counts belong to.
    generation: u64,
    missing_key: u64,
    unopenable: u64,
    logged: HashSet<String>,
}

/// Seal errors since the keyring last changed.
#[derive(Debug, Default)]
pub struct SealWatch {
    since: Mutex<Since>,
}

/// What `/healthz` reports about seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealHealth {
    /// Seeds under a key the keyring lacks, since it last changed.
    pub missing_key: u64,
    /// Seeds that did not open under a key the keyring has, since it last changed.
    pub unopenable: u64,
}

impl SealWatch {
    /// Records a seal error of token `serial` met under keyring `generation`; returns whether
    /// it should be logged (the first time for this token and keyring).
    pub fn record(&self, generation: u64, serial: &str, missing_key: bool) -> bool {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.generation != generation {
            *since = Since {
                generation,
                ..Since::default()
            };
        }
        if missing_key {
            since.missing_key += 1;
        } else {
            since.unopenable += 1;
        }
        if since.logged.len() >= MAX_REMEMBERED {
            since.logged.clear();
        }
        since.logged.insert(serial.to_owned())
    }

    /// The errors met under keyring `generation` (none if the keyring changed since).
    pub fn health(&self, generation: u64) -> SealHealth {
        let since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.generation != generation {
            return SealHealth {
                missing_key: 0,
                unopenable: 0,
            };
        }
        SealHealth {
            missing_key: since.missing_key,
            unopenable: since.unopenable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_token_and_forgets_on_a_new_keyring() {
        let watch = SealWatch::default();
        assert!(watch.record(0, "A", true));
        assert!(!watch.record(0, "A", true));
        assert!(watch.record(0, "B", false));
        assert_eq!(
            watch.health(0),
            SealHealth {
                missing_key: 2,
                unopenable: 1
            }
        );
        assert_eq!(watch.health(1).missing_key, 0);
        assert!(watch.record(1, "A", true));
        assert_eq!(watch.health(1).missing_key, 1);
    }
}
