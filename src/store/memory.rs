//! The in-process backend: a sharded map from user to [`UserState`].
//! Fast and atomic per user, but nothing survives a restart. Meant for tests,
//! benchmarks and deployments that accept losing leases on restart.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Backend, BoxFuture, StoreError};
use crate::clock::Clock;
use crate::limiter::{self, Op, Reply, UserId, UserState, Write};
use crate::metrics;

const SHARDS: usize = 64;

pub(super) struct MemoryBackend {
    // A std mutex, not tokio's: nothing awaits while a shard is locked, and
    // the critical section is a few hundred nanoseconds of pure rules.
    shards: Box<[Mutex<HashMap<UserId, UserState>>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl MemoryBackend {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { shards, hasher: RandomState::new(), clock }
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, UserState>> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        lock(&self.shards[i])
    }
}

/// A poisoned shard only means a panic happened while it was held; the
/// rules mutate state only after all checks, so the map is still coherent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for MemoryBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        let reply = {
            let mut shard = self.shard(user);
            // Read the clock under the lock, so per-user time never runs backwards.
            let now = self.clock.now();
            match shard.get_mut(user) {
                Some(state) => {
                    let outcome = limiter::apply(state, op, now);
                    if state.is_empty() {
                        shard.remove(user);
                    }
                    outcome
                }
                None => {
                    let mut state = UserState::default();
                    let outcome = limiter::apply(&mut state, op, now);
                    if !state.is_empty() {
                        shard.insert(user.clone(), state);
                    }
                    outcome
                }
            }
        };
        metrics::decision("expired", reply.expired as u64);
        let reply = reply.reply;
        Box::pin(async move { Ok(reply) })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut removed = 0u64;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let now = self.clock.now();
            shard.retain(|_, state| {
                let gone = limiter::expire(state, now);
                removed += gone.iter().filter(|w| matches!(w, Write::DeleteLease(_))).count() as u64;
                !state.is_empty()
            });
        }
        Box::pin(async move { Ok(removed) })
    }

    fn live_leases(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let now = self.clock.now();
        let n = self
            .shards
            .iter()
            .map(|shard| {
                lock(shard).values().map(|s| s.leases().iter().filter(|l| l.is_live(now)).count() as u64).sum::<u64>()
            })
            .sum();
        Box::pin(async move { Ok(Some(n)) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::limiter::Timestamp;
    use crate::store::{Store, conformance};

    fn open(clock: ManualClock) -> Store {
        Store::for_test(Box::new(MemoryBackend::new(Arc::new(clock))))
    }

    #[tokio::test]
    async fn conformance() {
        let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        conformance::suite(&open(clock.clone()), &clock).await;
    }

    // No differential test here: the memory store *is* the reference that
    // the other stores' differential tests compare against.
}
