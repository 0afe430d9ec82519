//! The decision rules of streamcap, written once.
//!
//! This module owns the vocabulary (users, streams, leases, limits, time) and
//! the rules that turn one user's leases plus a request into a [`Decision`].
//! Everything here is a pure function of `(state, op, now)`: no I/O, no
//! clock, no locks, no HTTP, no serde. Stores make the rules atomic; they
//! never re-implement them.

mod ids;
#[cfg(test)]
mod model_tests;

pub use ids::{InvalidId, Label, MAX_ID_LEN, StreamId, UserId};

/// Milliseconds since the Unix epoch, UTC. All rule arithmetic uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + ttl`, saturating instead of overflowing.
    pub fn plus(self, ttl: Ttl) -> Self {
        Self(self.0.saturating_add(ttl.as_millis()))
    }
}

/// How many live leases one user may hold: 0 to [`Limit::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Limit(u32);

impl Limit {
    pub const MAX: u32 = 1000;

    pub fn new(n: u32) -> Option<Self> {
        (n <= Self::MAX).then_some(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How long a lease lives without a heartbeat: 1 s to 24 h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u32);

impl Ttl {
    pub const MAX_SECONDS: u32 = 86_400;

    pub fn from_secs(secs: u32) -> Option<Self> {
        (1..=Self::MAX_SECONDS).contains(&secs).then_some(Self(secs))
    }

    pub fn as_secs(self) -> u32 {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        i64::from(self.0) * 1000
    }
}

/// One playback stream's seat. It is live while `now < expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub stream_id: StreamId,
    pub device_id: Option<Label>,
    pub content_id: Option<Label>,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Lease {
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }
}

/// Everything the rules know about one user. Stores load it, hand it to
/// [`apply`] and persist the returned [`Write`]s, all inside one atomic step.
/// It may hold expired leases; the rules ignore and remove them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    leases: Vec<Lease>,
}

impl UserState {
    pub fn from_leases(leases: Vec<Lease>) -> Self {
        Self { leases }
    }

    /// All stored leases, live or not, in no particular order.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// True when nothing about this user needs to be kept.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The live leases, oldest first (ties broken by stream id).
    pub fn live(&self, now: Timestamp) -> Vec<Lease> {
        let mut live: Vec<Lease> = self.leases.iter().filter(|l| l.is_live(now)).cloned().collect();
        live.sort_by(|a, b| (a.started_at, &a.stream_id).cmp(&(b.started_at, &b.stream_id)));
        live
    }

    fn live_count(&self, now: Timestamp) -> usize {
        self.leases.iter().filter(|l| l.is_live(now)).count()
    }

    fn position(&self, stream: &StreamId) -> Option<usize> {
        self.leases.iter().position(|l| &l.stream_id == stream)
    }
}

/// A request to hold a seat for `stream_id`, with the limit and TTL already
/// resolved by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire {
    pub stream_id: StreamId,
    pub device_id: Option<Label>,
    pub content_id: Option<Label>,
    pub limit: Limit,
    pub ttl: Ttl,
}

/// One operation on one user. Every store executes exactly these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Acquire a new lease, or renew the stream's live one.
    Acquire(Acquire),
    /// Drop the stream's lease, if any. Idempotent.
    Release(StreamId),
    /// Read the live leases. Changes nothing.
    List { limit: Limit },
}

/// What an [`Op`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Decision(Decision),
    Released,
    Leases { limit: Limit, live: Vec<Lease> },
}

/// The answer to an acquire. A denial is a value, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new lease was created.
    Granted(Grant),
    /// The stream already held a live lease; its expiry moved to now + ttl.
    Renewed(Grant),
    /// The user holds `limit` live leases and this stream is not one of them.
    Denied(Denial),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lease: Lease,
    /// Live leases after this request, this one included.
    pub active_streams: u32,
    pub limit: Limit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub limit: Limit,
    /// The user's live leases, oldest first.
    pub live: Vec<Lease>,
}

/// A change a store must persist so that its copy of [`UserState`] matches
/// the one [`apply`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the lease of `lease.stream_id`.
    Put(Lease),
    /// Remove the lease of this stream.
    Delete(StreamId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    pub writes: Vec<Write>,
}

/// Runs `op` against `state` at time `now`: the one place where decisions
/// are made. `state` is updated in place and the same changes are returned
/// as `writes`, for stores that persist them.
pub fn apply(state: &mut UserState, op: Op, now: Timestamp) -> Outcome {
    match op {
        Op::Acquire(req) => {
            let mut writes = expire(state, now);
            let reply = Reply::Decision(acquire(state, req, now, &mut writes));
            Outcome { reply, writes }
        }
        Op::Release(stream) => {
            let mut writes = expire(state, now);
            if let Some(i) = state.position(&stream) {
                state.leases.swap_remove(i);
                writes.push(Write::Delete(stream));
            }
            Outcome { reply: Reply::Released, writes }
        }
        Op::List { limit } => Outcome { reply: Reply::Leases { limit, live: state.live(now) }, writes: Vec::new() },
    }
}

/// Removes every lease that is no longer live and returns the deletions.
/// Stores call it from their sweeper; [`apply`] calls it before deciding.
pub fn expire(state: &mut UserState, now: Timestamp) -> Vec<Write> {
    let mut writes = Vec::new();
    state.leases.retain(|l| {
        let live = l.is_live(now);
        if !live {
            writes.push(Write::Delete(l.stream_id.clone()));
        }
        live
    });
    writes
}

/// `state` holds only live leases here.
fn acquire(state: &mut UserState, req: Acquire, now: Timestamp, writes: &mut Vec<Write>) -> Decision {
    let expires_at = now.plus(req.ttl);
    if let Some(i) = state.position(&req.stream_id) {
        let lease = &mut state.leases[i];
        lease.expires_at = expires_at;
        if req.device_id.is_some() {
            lease.device_id = req.device_id;
        }
        if req.content_id.is_some() {
            lease.content_id = req.content_id;
        }
        let lease = lease.clone();
        writes.push(Write::Put(lease.clone()));
        return Decision::Renewed(Grant { lease, active_streams: count(state.live_count(now)), limit: req.limit });
    }
    if state.live_count(now) >= req.limit.get() as usize {
        return Decision::Denied(Denial { limit: req.limit, live: state.live(now) });
    }
    let lease = Lease {
        stream_id: req.stream_id,
        device_id: req.device_id,
        content_id: req.content_id,
        started_at: now,
        expires_at,
    };
    state.leases.push(lease.clone());
    writes.push(Write::Put(lease.clone()));
    Decision::Granted(Grant { lease, active_streams: count(state.live_count(now)), limit: req.limit })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    fn acq(s: &str, limit: u32) -> Op {
        Op::Acquire(Acquire {
            stream_id: sid(s),
            device_id: None,
            content_id: None,
            limit: Limit::new(limit).unwrap(),
            ttl: Ttl::from_secs(60).unwrap(),
        })
    }

    fn decision(o: Outcome) -> Decision {
        match o.reply {
            Reply::Decision(d) => d,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    #[test]
    fn grants_up_to_the_limit_then_denies_with_the_live_leases() {
        let mut s = UserState::default();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let now = Timestamp::from_millis(T0.as_millis() + i as i64);
            match decision(apply(&mut s, acq(name, 3), now)) {
                Decision::Granted(g) => assert_eq!(g.active_streams, i as u32 + 1),
                d => panic!("{d:?}"),
            }
        }
        match decision(apply(&mut s, acq("d", 3), T0)) {
            Decision::Denied(d) => {
                let ids: Vec<_> = d.live.iter().map(|l| l.stream_id.as_str()).collect();
                assert_eq!(ids, ["a", "b", "c"]);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn renew_keeps_started_at_and_moves_expiry() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        let later = Timestamp::from_millis(T0.as_millis() + 30_000);
        match decision(apply(&mut s, acq("a", 1), later)) {
            Decision::Renewed(g) => {
                assert_eq!(g.lease.started_at, T0);
                assert_eq!(g.lease.expires_at, Timestamp::from_millis(later.as_millis() + 60_000));
                assert_eq!(g.active_streams, 1);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_expired_lease_frees_its_seat_and_is_reacquired_fresh() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        let at_expiry = T0.plus(Ttl::from_secs(60).unwrap());
        let o = apply(&mut s, acq("b", 1), at_expiry);
        assert!(o.writes.contains(&Write::Delete(sid("a"))));
        assert!(matches!(decision(o), Decision::Granted(_)));
        let later = Timestamp::from_millis(at_expiry.as_millis() + 60_000);
        match decision(apply(&mut s, acq("b", 1), later)) {
            Decision::Granted(g) => assert_eq!(g.lease.started_at, later),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn release_is_idempotent_and_frees_the_seat() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        assert_eq!(apply(&mut s, Op::Release(sid("a")), T0).writes, vec![Write::Delete(sid("a"))]);
        assert_eq!(apply(&mut s, Op::Release(sid("a")), T0).writes, vec![]);
        assert!(matches!(decision(apply(&mut s, acq("b", 1), T0)), Decision::Granted(_)));
    }

    #[test]
    fn a_zero_limit_denies_everything() {
        let mut s = UserState::default();
        assert!(matches!(decision(apply(&mut s, acq("a", 0), T0)), Decision::Denied(_)));
        assert!(s.is_empty());
    }

    #[test]
    fn list_changes_nothing() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 2), T0);
        let before = s.clone();
        let late = T0.plus(Ttl::from_secs(61).unwrap());
        let o = apply(&mut s, Op::List { limit: Limit::new(2).unwrap() }, late);
        assert_eq!(o.writes, vec![]);
        assert_eq!(s, before);
        assert_eq!(o.reply, Reply::Leases { limit: Limit::new(2).unwrap(), live: vec![] });
    }
}
