//! The read-decide-write loop of the stores that many instances share
//! (Redis and DynamoDB), written once.
//!
//! A decision reads the user's state and the time, runs [`limiter::apply`]
//! on it in this process, and writes the result back only if the stored
//! state is still exactly what was read. A write that finds it changed lost
//! a race with another instance: the whole decision runs again on the new
//! state after a jittered backoff, at most [`ATTEMPTS`] times, and then the
//! store answers `Unavailable`. A decision that changes nothing writes
//! nothing. Within one instance a user's operations take turns (a lock per
//! user), so races happen only between instances.
//!
//! A store plugs in through [`Shared`]: how to read, how to write on
//! condition, and how to recognise its own write. That last part settles a
//! write whose answer was lost and that a client library sent again: the
//! repeat loses the race against the first, and the next read shows the
//! state the first one left. This module decides nothing and stores
//! nothing itself.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::StoreError;
use crate::limiter::{self, Op, Outcome, Reply, Timestamp, UserId, UserState};
use crate::metrics;

/// Read-decide-write rounds per operation before giving up with
/// `Unavailable`. Each lost round means another writer won, so this many
/// rounds are lost only under a storm of writes to one user.
pub(super) const ATTEMPTS: u32 = 8;
/// The backoff after the n-th lost round is uniform in
/// `[0, min(BACKOFF_CAP, BACKOFF_BASE * 2^(n-1))]`.
const BACKOFF_BASE: Duration = Duration::from_millis(4);
const BACKOFF_CAP: Duration = Duration::from_millis(200);

/// A store that many instances share and that can write on condition.
pub(super) trait Shared: Send + Sync + 'static {
    /// What a read saw of the stored state, for the write to compare with.
    type Seen: Send + Sync;
    /// What a write leaves behind, for a later read to recognise.
    type Mark: Send + Sync;

    /// Reads the user's state and the time to decide at.
    fn read(&self, user: &UserId) -> impl Future<Output = Result<Read<Self::Seen>, StoreError>> + Send;

    /// Stores `change.state` only if the user's state is still what `seen`
    /// describes.
    fn write(
        &self,
        user: &UserId,
        seen: &Self::Seen,
        change: Change<'_>,
    ) -> impl Future<Output = Result<(), Lost<Self::Mark>>> + Send;

    /// True when `seen` is the state that the write which left `mark` stored.
    fn landed(seen: &Self::Seen, mark: &Self::Mark) -> bool;

    /// The store's name, for the error when [`ATTEMPTS`] rounds were lost.
    fn name(&self) -> &'static str;
}

/// A user's state as read, with what the write will compare and the time.
pub(super) struct Read<S> {
    pub state: UserState,
    pub seen: S,
    pub now: Timestamp,
}

/// What a decision leaves to store.
pub(super) struct Change<'a> {
    /// The state after the rules ran.
    pub state: &'a UserState,
    pub op: &'a Op,
    pub outcome: &'a Outcome,
    pub now: Timestamp,
}

/// Why a conditional write did not happen.
pub(super) enum Lost<M> {
    /// The stored state was not the one read. The write may still have
    /// landed earlier (a repeat of it lost against itself): `Some` tells
    /// how to recognise it.
    Race(Option<M>),
    Failed(StoreError),
}

/// The loop, with the turns of this instance's users. A store holds one
/// and hands itself to [`Optimistic::decide`].
pub(super) struct Optimistic {
    turns: Turns,
}

impl Optimistic {
    pub(super) fn new() -> Self {
        Self { turns: Turns::new() }
    }

    /// Runs `op` for `user` on `store`: read, decide, write on condition,
    /// and again after a lost race.
    pub(super) async fn decide<B: Shared>(&self, store: &B, user: &UserId, op: Op) -> Result<Reply, StoreError> {
        let _turn = self.turns.take(user).await;
        let mut unsure: Option<(B::Mark, Reply)> = None;
        for round in 1..=ATTEMPTS {
            let read = store.read(user).await?;
            if let Some((mark, reply)) = unsure.take()
                && B::landed(&read.seen, &mark)
            {
                return Ok(reply);
            }
            let mut state = read.state;
            let outcome = limiter::apply(&mut state, op.clone(), read.now);
            if outcome.writes.is_empty() {
                return Ok(outcome.reply);
            }
            let change = Change { state: &state, op: &op, outcome: &outcome, now: read.now };
            match store.write(user, &read.seen, change).await {
                Ok(()) => {
                    metrics::decision("expired", outcome.expired as u64);
                    return Ok(outcome.reply);
                }
                Err(Lost::Race(mark)) => {
                    metrics::store_conflict();
                    unsure = mark.map(|m| (m, outcome.reply));
                    if round < ATTEMPTS {
                        tokio::time::sleep(backoff(round)).await;
                    }
                }
                Err(Lost::Failed(e)) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: {ATTEMPTS} conflicting writes in a row for user {user}; giving up",
            store.name()
        )))
    }
}

/// The n-th backoff (n from 1): full jitter over a doubling window.
fn backoff(n: u32) -> Duration {
    let window = BACKOFF_BASE.saturating_mul(1 << (n - 1).min(16)).min(BACKOFF_CAP);
    let unit = (RandomState::new().hash_one(n) >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(unit)
}

/// One turn at a time per user within this instance: a map from user to
/// a tokio mutex, whose entry goes when its last holder or waiter does.
struct Turns {
    // A std mutex around the map: it is held only to find or drop an entry,
    // never across an await.
    shards: Box<[Mutex<TurnMap>]>,
    hasher: RandomState,
}

type TurnMap = HashMap<UserId, Arc<tokio::sync::Mutex<()>>>;

struct Turn<'a> {
    turns: &'a Turns,
    user: &'a UserId,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turns {
    const SHARDS: usize = 64;

    fn new() -> Self {
        Self { shards: (0..Self::SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, TurnMap> {
        let i = (self.hasher.hash_one(user) as usize) % Self::SHARDS;
        // A panic while holding a shard cannot leave the map incoherent.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn take<'a>(&'a self, user: &'a UserId) -> Turn<'a> {
        let lock = self.shard(user).entry(user.clone()).or_default().clone();
        // Built before the wait, so that a cancelled wait still drops the entry.
        let mut turn = Turn { turns: self, user, lock: Some(lock.clone()), guard: None };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let Some(lock) = self.lock.take() else { return };
        let mut shard = self.turns.shard(self.user);
        // Clones are made only under the shard lock: two references (the
        // map's and ours) mean nobody else holds or awaits this one.
        if Arc::strong_count(&lock) == 2 {
            shard.remove(self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_inside_its_doubling_window() {
        for n in 1..=ATTEMPTS {
            let window = BACKOFF_BASE.saturating_mul(1 << (n - 1)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(n) <= window, "round {n}");
            }
        }
    }

    #[tokio::test]
    async fn a_user_s_operations_take_turns_and_leave_nothing_behind() {
        let turns = Turns::new();
        let (user, other) = (UserId::new("u").unwrap(), UserId::new("v").unwrap());
        let first = turns.take(&user).await;
        let mut second = Box::pin(turns.take(&user));
        tokio::select! {
            biased;
            _ = &mut second => panic!("a second operation of the user ran during the first"),
            () = tokio::task::yield_now() => {}
        }
        // Another user does not wait.
        drop(turns.take(&other).await);
        drop(first);
        drop(second.await);
        for u in [&user, &other] {
            assert!(turns.shard(u).get(u).is_none(), "the entry of {u} is gone once nobody holds or awaits it");
        }
    }
}
