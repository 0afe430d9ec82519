//! This instance's registry of socket-held leases: which socket owns
//! which lease, the losses it hears of (an eviction or a revocation here,
//! a notice from another instance, a newer socket taking the lease over),
//! each lease's turn that orders an acquire after a release, and the
//! open sockets that shutdown closes and waits for. It never calls the
//! store except to send notices, and decides nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedMutexGuard, oneshot, watch};

use crate::http::notice::{self, InstanceId, Loss, Notice};
use crate::limiter::{Grant, Holder, Lease, StreamId, UserId};
use crate::store::Store;

/// A lease as the registry names it.
pub(super) type Key = (UserId, StreamId);

/// This instance's socket-held leases, and its open sockets. Cheap to
/// clone; every clone is the same registry.
#[derive(Clone)]
pub(in crate::http) struct Sockets {
    shared: Arc<Shared>,
}

struct Shared {
    /// One slot per lease that a socket holds, or is acquiring or
    /// releasing. A sync mutex: nothing awaits while it is held.
    held: Mutex<HashMap<Key, Slot>>,
    next_id: AtomicU64,
    /// This instance, whose sockets' holder tokens name it.
    instance: InstanceId,
    /// Where notices to other instances go.
    store: Store,
    /// True once the server shuts down.
    closing: watch::Sender<bool>,
    /// Sockets accepted and not yet finished, releases included.
    running: watch::Sender<usize>,
}

/// One lease's entry in the registry.
struct Slot {
    /// The socket holding the lease, if one does.
    owner: Option<Owner>,
    /// A loss that came while a socket was acquiring the lease, before it
    /// could own it: that socket hears of it as soon as it registers.
    pending: Option<Loss>,
    /// Serializes this instance's acquire-and-register and release of the
    /// lease, so that a socket's release never lands after a newer
    /// socket's acquire of the same stream.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Turns taken or awaited; the slot goes once this is 0 and nobody
    /// owns the lease.
    turns: usize,
}

struct Owner {
    id: u64,
    tell: oneshot::Sender<Loss>,
}

impl Sockets {
    pub(in crate::http) fn new(instance: InstanceId, store: Store) -> Self {
        let shared = Shared {
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            instance,
            store,
            closing: watch::Sender::new(false),
            running: watch::Sender::new(0),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Tells the sockets that held the leases `grant` evicted that they
    /// lost them, and the one a newer socket's renewal took the lease from
    /// that it was replaced: here at once, elsewhere by a notice. Called
    /// with every grant and renewal; costs nothing without either.
    pub(in crate::http) fn granted(&self, user: &UserId, grant: &Grant) {
        if !grant.evicted.is_empty() {
            let loss = Loss::Evicted(grant.lease.stream_id.clone());
            self.tell(user, grant.evicted.iter().map(|lease| &lease.stream_id), &loss);
            self.notify(user, &grant.evicted, &loss);
        }
        if let Some(holder) = &grant.replaced {
            // Here, the newer socket's registration tells the older one.
            let stream = &grant.lease.stream_id;
            notice::send(&self.shared.store, &self.shared.instance, user, stream, holder, &Loss::Replaced);
        }
    }

    /// Tells the sockets that held `leases` that a revoke-all took them.
    pub(in crate::http) fn revoked(&self, user: &UserId, leases: &[Lease]) {
        if !leases.is_empty() {
            self.tell(user, leases.iter().map(|l| &l.stream_id), &Loss::Revoked);
            self.notify(user, leases, &Loss::Revoked);
        }
    }

    /// Sends a notice for each of `leases` that another instance's socket
    /// holds.
    fn notify(&self, user: &UserId, leases: &[Lease], loss: &Loss) {
        for lease in leases {
            if let Some(holder) = &lease.holder {
                notice::send(&self.shared.store, &self.shared.instance, user, &lease.stream_id, holder, loss);
            }
        }
    }

    /// Tells the socket a notice names of its loss, if that socket still
    /// holds the lease; false when it does not.
    pub(in crate::http) fn deliver(&self, notice: Notice) -> bool {
        let key = (notice.user, notice.stream);
        let mut held = self.lock();
        let Some(slot) = held.get_mut(&key) else { return false };
        if slot.owner.as_ref().is_none_or(|owner| owner.id != notice.socket) {
            return false;
        }
        let owner = slot.owner.take().expect("checked above");
        if slot.turns == 0 {
            held.remove(&key);
        }
        owner.tell.send(notice.loss).is_ok()
    }

    /// Tells every socket to close with 1001 and release its lease; a socket
    /// that opens from now on closes at once.
    pub(in crate::http) fn close_all(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Waits until every socket has finished, its release included.
    pub(in crate::http) async fn all_closed(&self) {
        let mut running = self.shared.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    fn tell<'a>(&self, user: &UserId, streams: impl Iterator<Item = &'a StreamId>, loss: &Loss) {
        let mut held = self.lock();
        if held.is_empty() {
            return;
        }
        for stream in streams {
            let key = (user.clone(), stream.clone());
            let Some(slot) = held.get_mut(&key) else { continue };
            match slot.owner.take() {
                Some(owner) => {
                    let _ = owner.tell.send(loss.clone());
                }
                // Someone holds the turn: perhaps a socket whose acquire
                // made this lease, and which is about to register. Any
                // acquire that starts later meets the tombstone instead.
                None if slot.turns > 0 => slot.pending = Some(loss.clone()),
                None => {}
            }
            if slot.turns == 0 {
                held.remove(&key);
            }
        }
    }

    /// Waits for this instance's turn at `key`'s lease.
    pub(super) async fn turn(&self, key: Key) -> Turn {
        let lock = {
            let mut held = self.lock();
            let slot = held.entry(key.clone()).or_insert_with(|| Slot {
                owner: None,
                pending: None,
                turn: Arc::new(tokio::sync::Mutex::new(())),
                turns: 0,
            });
            slot.turns += 1;
            slot.turn.clone()
        };
        // Counted before the wait, so that a cancelled wait uncounts itself.
        let mut turn = Turn { sockets: self.clone(), key, _guard: None };
        turn._guard = Some(lock.lock_owned().await);
        turn
    }

    /// A number for a new socket, and its holder token.
    pub(super) fn number(&self) -> (u64, Holder) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        (id, self.shared.instance.holder(id))
    }

    /// Makes socket `id`, which just acquired `turn`'s lease, its owner. An
    /// older socket that owned it is told that it was replaced; a loss
    /// that came during the acquire is told to the new owner at once.
    pub(super) fn register(&self, turn: &Turn, id: u64) -> oneshot::Receiver<Loss> {
        let (tell, told) = oneshot::channel();
        let mut held = self.lock();
        let slot = held.get_mut(&turn.key).expect("a turn keeps its slot");
        match slot.pending.take() {
            Some(loss) => {
                let _ = tell.send(loss);
            }
            None => {
                if let Some(older) = slot.owner.replace(Owner { id, tell }) {
                    let _ = older.tell.send(Loss::Replaced);
                }
            }
        }
        told
    }

    pub(super) fn owns(&self, key: &Key, id: u64) -> bool {
        self.lock().get(key).and_then(|slot| slot.owner.as_ref()).is_some_and(|owner| owner.id == id)
    }

    /// The socket `id` no longer holds `key`'s lease, if it still did.
    pub(super) fn leave(&self, key: &Key, id: u64) {
        let mut held = self.lock();
        if let Some(slot) = held.get_mut(key) {
            if slot.owner.as_ref().is_some_and(|owner| owner.id == id) {
                slot.owner = None;
            }
            if slot.owner.is_none() && slot.turns == 0 {
                held.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent at every step, so a panic elsewhere
        // leaves nothing half-done behind.
        self.shared.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns true once the server shuts down.
    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }

    pub(super) fn is_closing(&self) -> bool {
        *self.shared.closing.borrow()
    }

    /// Counts a socket as running until the returned value is dropped.
    pub(super) fn track(&self) -> Running {
        self.shared.running.send_modify(|n| *n += 1);
        Running(self.clone())
    }
}

/// A turn at one lease; the next waiter gets it on drop.
pub(super) struct Turn {
    sockets: Sockets,
    key: Key,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self.sockets.lock();
        if let Some(slot) = held.get_mut(&self.key) {
            slot.turns -= 1;
            if slot.turns == 0 && slot.owner.is_none() {
                held.remove(&self.key);
            }
        }
    }
}

/// A socket that shutdown waits for.
pub(super) struct Running(Sockets);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.shared.running.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Sockets;
    use crate::clock::SystemClock;
    use crate::http::notice::{InstanceId, Loss, Notice};
    use crate::limiter::{Acquire, StreamId, Timestamp, UserId};
    use crate::store::{Store, StoreConfig, StoreKind};

    async fn registry() -> Sockets {
        let config = StoreConfig::new(StoreKind::Memory, std::env::temp_dir());
        let store = Store::open(&config, Arc::new(SystemClock)).await.unwrap();
        Sockets::new(InstanceId::generate(), store)
    }

    #[tokio::test]
    async fn the_registry_tells_owners_and_acquirers_of_their_losses() {
        let sockets = registry().await;
        let key = (UserId::new("alice").unwrap(), StreamId::new("tv").unwrap());
        let lease = [Acquire::for_test("tv", 1).into_lease(Timestamp::from_millis(0))];
        let register = || async {
            let (id, _) = sockets.number();
            let turn = sockets.turn(key.clone()).await;
            (id, sockets.register(&turn, id))
        };
        let (first, mut first_lost) = register().await;
        assert!(sockets.owns(&key, first));
        // A newer socket for the stream replaces the older one.
        let (second, mut second_lost) = register().await;
        assert!(matches!(first_lost.try_recv(), Ok(Loss::Replaced)));
        assert!(!sockets.owns(&key, first) && sockets.owns(&key, second));
        // A revocation reaches the owner, which owns nothing after it.
        sockets.revoked(&key.0, &lease);
        assert!(matches!(second_lost.try_recv(), Ok(Loss::Revoked)));
        assert!(!sockets.owns(&key, second));
        // A loss during an acquire reaches the socket as it registers.
        let (third, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        sockets.revoked(&key.0, &lease);
        let mut third_lost = sockets.register(&turn, third);
        drop(turn);
        assert!(matches!(third_lost.try_recv(), Ok(Loss::Revoked)));
        assert!(!sockets.owns(&key, third));
        // Nothing is left behind.
        sockets.leave(&key, third);
        assert!(sockets.lock().is_empty());
    }

    /// A notice from another instance reaches the socket it names, and only
    /// while that socket holds the lease.
    #[tokio::test]
    async fn a_notice_reaches_only_the_socket_it_names() {
        let sockets = registry().await;
        let key = (UserId::new("alice").unwrap(), StreamId::new("tv").unwrap());
        let notice = |socket, loss| Notice { user: key.0.clone(), stream: key.1.clone(), socket, loss };
        let (older, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        let _older_lost = sockets.register(&turn, older);
        drop(turn);
        let (newer, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        let mut newer_lost = sockets.register(&turn, newer);
        drop(turn);
        // A notice for the replaced socket finds nobody.
        assert!(!sockets.deliver(notice(older, Loss::Revoked)));
        assert!(newer_lost.try_recv().is_err());
        let by = StreamId::new("phone").unwrap();
        assert!(sockets.deliver(notice(newer, Loss::Evicted(by.clone()))));
        assert!(matches!(newer_lost.try_recv(), Ok(Loss::Evicted(s)) if s == by));
        assert!(!sockets.owns(&key, newer));
        assert!(!sockets.deliver(notice(newer, Loss::Revoked)), "told once");
        assert!(sockets.lock().is_empty());
    }
}
