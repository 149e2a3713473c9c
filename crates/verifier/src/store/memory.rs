//! An in-memory [`Store`] for unit tests and benchmarks of the rules; not for production
//! (nothing survives the process). One mutex makes every operation atomic, which is the
//! contract the SQL stores meet with conditional updates. It does no I/O, so submitted work
//! runs in place, on the caller's thread, and is "committed" when it returns.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use codereader_otp::UnixTime;

use super::{
    Advance, AuditEntry, AuditEvent, Claim, DeadLetter, Delivery, Event, EventKind, NewToken,
    Reads, Store, StoreError, TokenRecord, Tx, Work,
};
use crate::seal::SealedSeed;
use crate::token::{KeyId, TokenId, TokenState, UserId};

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<TokenId, TokenRecord>,
    users: HashMap<UserId, TokenId>,
    audit: Vec<AuditEvent>,
    /// The outbox: the sequence number of each audit line that is an event; event `i + 1`
    /// is entry `i`.
    events: Vec<u64>,
    /// Per destination: where delivery stands, who holds the lease, until when.
    deliveries: HashMap<String, (Delivery, String, u64)>,
    /// Events given up on, per destination.
    dead: Vec<(String, DeadLetter)>,
}

impl Inner {
    /// Appends an audit line, and its event if it is one (under the same lock, so both or
    /// neither are seen).
    fn log(&mut self, line: &AuditEvent) {
        self.audit.push(line.clone());
        if EventKind::of(line.action, &line.outcome).is_some() {
            self.events.push(self.audit.len() as u64);
        }
    }
}

/// Token state in a `HashMap` behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied update: every operation
        // below computes first and mutates last, so the poisoned data is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The operations, each under the store's lock.
struct View<'s>(&'s MemoryStore);

impl Reads for View<'_> {
    fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.0.lock().tokens.get(id).cloned())
    }

    fn token_of_user(&self, user: &UserId) -> Result<Option<TokenRecord>, StoreError> {
        let inner = self.0.lock();
        Ok(inner
            .users
            .get(user)
            .and_then(|id| inner.tokens.get(id))
            .cloned())
    }

    fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let inner = self.0.lock();
        let mut found: Vec<TokenRecord> = inner
            .tokens
            .values()
            .filter(|t| after.is_none_or(|a| &t.id > a))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.truncate(limit);
        Ok(found)
    }

    fn audit_trail(&self, token: &TokenId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let inner = self.0.lock();
        let mut found: Vec<AuditEvent> = inner
            .audit
            .iter()
            .rev()
            .filter(|e| e.token.as_ref() == Some(token))
            .take(limit)
            .cloned()
            .collect();
        found.reverse();
        Ok(found)
    }

    fn audit_page(
        &self,
        token: &TokenId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = self.0.lock();
        // Line i (0-based) has sequence number i + 1.
        let end = match before {
            None => inner.audit.len(),
            Some(b) => {
                let at = usize::try_from(b.saturating_sub(1)).unwrap_or(usize::MAX);
                // The cursor must be one of this token's lines, as in the SQL stores.
                match inner.audit.get(at) {
                    Some(e) if e.token.as_ref() == Some(token) => at,
                    _ => 0,
                }
            }
        };
        Ok(inner.audit[..end]
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| e.token.as_ref() == Some(token))
            .take(limit)
            .map(|(i, e)| AuditEntry {
                seq: i as u64 + 1,
                event: e.clone(),
            })
            .collect())
    }

    fn audit_since(
        &self,
        since: UnixTime,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = self.0.lock();
        let start = usize::try_from(after.unwrap_or(0))
            .unwrap_or(usize::MAX)
            .min(inner.audit.len());
        Ok(inner.audit[start..]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.at >= since)
            .take(limit)
            .map(|(i, e)| AuditEntry {
                seq: (start + i) as u64 + 1,
                event: e.clone(),
            })
            .collect())
    }

    fn seeds_not_under(
        &self,
        current: &KeyId,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Vec<(TokenId, SealedSeed)>, StoreError> {
        let inner = self.0.lock();
        let mut found: Vec<_> = inner
            .tokens
            .values()
            .filter(|t| &t.seed.key_id != current && after.is_none_or(|a| &t.id > a))
            .map(|t| (t.id.clone(), t.seed.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self.events(after, limit))
    }
}

impl View<'_> {
    fn events(&self, after: u64, limit: usize) -> Vec<Event> {
        let inner = self.0.lock();
        let from = usize::try_from(after).unwrap_or(usize::MAX);
        inner
            .events
            .iter()
            .enumerate()
            .skip(from)
            .take(limit)
            .filter_map(|(i, &seq)| {
                let line = inner
                    .audit
                    .get(usize::try_from(seq).ok()?.checked_sub(1)?)?;
                Event::new(
                    i as u64 + 1,
                    AuditEntry {
                        seq,
                        event: line.clone(),
                    },
                )
            })
            .collect()
    }
}

impl Tx for View<'_> {
    fn insert_tokens(&self, tokens: &[NewToken], audit: &AuditEvent) -> Result<(), StoreError> {
        let mut inner = self.0.lock();
        let mut seen = std::collections::HashSet::new();
        for t in tokens {
            if inner.tokens.contains_key(&t.id) || !seen.insert(&t.id) {
                return Err(StoreError::Duplicate {
                    token: t.id.clone(),
                });
            }
        }
        for t in tokens {
            inner.tokens.insert(
                t.id.clone(),
                TokenRecord {
                    id: t.id.clone(),
                    user: None,
                    params: t.params,
                    seed: t.seed.clone(),
                    state: TokenState::fresh(t.next),
                },
            );
        }
        inner.log(audit);
        Ok(())
    }

    fn advance(&self, advance: &Advance, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        if let Some(user) = &advance.bind {
            if inner.users.contains_key(user) {
                return Err(StoreError::UserTaken { user: user.clone() });
            }
        }
        let Some(t) = inner.tokens.get_mut(&advance.token) else {
            return Ok(false);
        };
        let s = &mut t.state;
        let blocked = s.locked_at.is_some() || s.failures >= advance.max_failures;
        if !s.enabled
            || (blocked && !advance.unlock)
            || s.next > advance.lowest
            || (advance.bind.is_some() && t.user.is_some())
        {
            return Ok(false);
        }
        s.next = advance.accepted.saturating_add(1);
        s.drift = advance.drift;
        s.failures = 0;
        s.last_failure_at = None;
        if advance.unlock {
            s.locked_at = None;
        }
        if let Some(user) = &advance.bind {
            t.user = Some(user.clone());
            inner.users.insert(user.clone(), advance.token.clone());
        }
        inner.log(audit);
        Ok(true)
    }

    fn record_failure(
        &self,
        token: &TokenId,
        now: UnixTime,
        max_failures: u32,
        audit: &AuditEvent,
        lock: (u32, &AuditEvent),
    ) -> Result<Option<u32>, StoreError> {
        let mut inner = self.0.lock();
        let Some(t) = inner.tokens.get_mut(token) else {
            return Ok(None);
        };
        let s = &mut t.state;
        if !s.enabled || s.locked_at.is_some() {
            return Ok(None);
        }
        s.failures = s.failures.saturating_add(1);
        s.last_failure_at = Some(now);
        if s.failures >= max_failures {
            s.locked_at = Some(now);
        }
        let failures = s.failures;
        inner.log(audit);
        if failures >= lock.0 {
            inner.log(lock.1);
        }
        Ok(Some(failures))
    }

    fn unlock(
        &self,
        token: &TokenId,
        locked_at: Option<UnixTime>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        let Some(t) = inner.tokens.get_mut(token) else {
            return Ok(false);
        };
        let s = &mut t.state;
        if locked_at.is_some() && s.locked_at != locked_at {
            return Ok(false);
        }
        s.locked_at = None;
        s.failures = 0;
        s.last_failure_at = None;
        inner.log(audit);
        Ok(true)
    }

    fn set_enabled(
        &self,
        token: &TokenId,
        enabled: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        let Some(t) = inner.tokens.get_mut(token) else {
            return Ok(false);
        };
        t.state.enabled = enabled;
        inner.log(audit);
        Ok(true)
    }

    fn delete_token(&self, token: &TokenId, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        let Some(t) = inner.tokens.remove(token) else {
            return Ok(false);
        };
        if let Some(user) = &t.user {
            inner.users.remove(user);
        }
        inner.log(audit);
        Ok(true)
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.0.lock().log(event);
        Ok(())
    }

    fn replace_seed(
        &self,
        token: &TokenId,
        old: &SealedSeed,
        new: &SealedSeed,
    ) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        match inner.tokens.get_mut(token) {
            Some(t) if &t.seed == old => {
                t.seed = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn claim_delivery(
        &self,
        destination: &str,
        holder: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        let mut inner = self.0.lock();
        let latest = inner.events.len() as u64;
        let (delivery, owner, until) = inner
            .deliveries
            .entry(destination.to_owned())
            .or_insert_with(|| {
                let start = Delivery {
                    after: latest,
                    ..Delivery::default()
                };
                (start, holder.to_owned(), 0)
            });
        let held = owner == holder || *until <= now_ms;
        if held {
            holder.clone_into(owner);
            *until = now_ms.saturating_add(lease_ms);
        }
        Ok(Claim {
            delivery: delivery.clone(),
            held,
        })
    }

    fn settle_delivery(
        &self,
        destination: &str,
        holder: &str,
        delivery: &Delivery,
        dead: Option<&DeadLetter>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.0.lock();
        match inner.deliveries.get_mut(destination) {
            Some((now, owner, _)) if owner == holder => {
                *now = delivery.clone();
                if let Some(dead) = dead {
                    inner.dead.push((destination.to_owned(), dead.clone()));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Store for MemoryStore {
    fn submit(&self, mut work: Box<dyn Work>) {
        work.run(&View(self));
        work.finish(Ok(()));
    }

    fn read(&self, reads: &mut dyn FnMut(&dyn Reads)) -> Result<(), StoreError> {
        reads(&View(self));
        Ok(())
    }

    fn run_here(&self, run: &mut dyn FnMut(&dyn Tx)) -> bool {
        run(&View(self));
        true
    }
}
