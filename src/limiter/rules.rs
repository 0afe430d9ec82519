//! The rules themselves: [`apply`] is the one place where decisions are made.

use super::{
    Acquire, Decision, Denial, Grant, Lease, Limit, LimitSource, OnLimit, Op, Outcome, Reply, RevokeReason, StreamId,
    Timestamp, Tombstone, UserState, Write,
};

/// Runs `op` against `state` at time `now`. `state` is updated in place and
/// the same changes are returned as `writes`, for stores that persist them.
pub fn apply(state: &mut UserState, op: Op, now: Timestamp) -> Outcome {
    // Changes start by dropping what has expired; count those leases.
    let changes = matches!(op, Op::Acquire(_) | Op::Release(_) | Op::RevokeAll { .. });
    let expired = if changes { state.leases.iter().filter(|l| !l.is_live(now)).count() } else { 0 };
    let (reply, writes) = match op {
        Op::List { limit } => {
            let limit = state.limit_override.unwrap_or(limit);
            (Reply::Leases { limit, live: state.live(now) }, Vec::new())
        }
        Op::GetLimit { fallback, source } => {
            let (limit, source) = match state.limit_override {
                Some(o) => (o, LimitSource::Override),
                None => (fallback, source),
            };
            (Reply::Limit { limit, source }, Vec::new())
        }
        Op::Acquire(req) => {
            let mut writes = expire(state, now);
            (Reply::Decision(acquire(state, req, now, &mut writes)), writes)
        }
        Op::Release(stream) => {
            let mut writes = expire(state, now);
            if let Some(i) = lease_of(state, &stream) {
                state.leases.swap_remove(i);
                writes.push(Write::DeleteLease(stream));
            }
            (Reply::Done, writes)
        }
        Op::RevokeAll { ttl } => {
            let mut writes = expire(state, now);
            let victims = state.live(now);
            for lease in &victims {
                revoke(state, lease, RevokeReason::Revoked, lease.expires_at.plus(ttl), &mut writes);
            }
            (Reply::Revoked(victims.into_iter().map(|l| l.stream_id).collect()), writes)
        }
        Op::SetOverride(limit) => {
            state.limit_override = limit;
            let reply = match limit {
                Some(limit) => Reply::Limit { limit, source: LimitSource::Override },
                None => Reply::Done,
            };
            (reply, vec![Write::SetOverride(limit)])
        }
    };
    Outcome { reply, writes, expired }
}

/// Removes every lease and tombstone that is no longer live and returns
/// the deletions. Stores call it from their sweeper; [`apply`] calls it
/// before every change.
pub fn expire(state: &mut UserState, now: Timestamp) -> Vec<Write> {
    let mut writes = Vec::new();
    state.leases.retain(|l| {
        let live = l.is_live(now);
        if !live {
            writes.push(Write::DeleteLease(l.stream_id.clone()));
        }
        live
    });
    state.tombstones.retain(|t| {
        let live = t.is_live(now);
        if !live {
            writes.push(Write::DeleteTombstone(t.stream_id.clone()));
        }
        live
    });
    writes
}

fn lease_of(state: &UserState, stream: &StreamId) -> Option<usize> {
    state.leases.iter().position(|l| &l.stream_id == stream)
}

/// `state` holds only live leases and tombstones here.
fn acquire(state: &mut UserState, req: Acquire, now: Timestamp, writes: &mut Vec<Write>) -> Decision {
    if let Some(t) = state.tombstones.iter().find(|t| t.stream_id == req.stream_id) {
        return Decision::Gone(t.clone());
    }
    let limit = state.limit_override.unwrap_or(req.limit);
    let expires_at = now.plus(req.ttl);
    if let Some(i) = lease_of(state, &req.stream_id) {
        // A live stream always renews, even when a lowered limit now
        // leaves the account over it: nobody is cut off by a limit change.
        let lease = &mut state.leases[i];
        lease.expires_at = expires_at;
        if req.device_id.is_some() {
            lease.device_id = req.device_id;
        }
        if req.content_id.is_some() {
            lease.content_id = req.content_id;
        }
        let lease = lease.clone();
        writes.push(Write::PutLease(lease.clone()));
        return Decision::Renewed(grant(state, lease, limit));
    }

    let live = state.live(now);
    let seats = limit.get() as usize;
    // Which leases must go for this one to fit, or None if it cannot fit.
    let victims: Option<Vec<Lease>> = if !req.evict.is_empty() {
        // Take-over: the named live streams go, but only if that frees a seat.
        let named: Vec<Lease> = live.iter().filter(|l| req.evict.contains(&l.stream_id)).cloned().collect();
        (live.len() - named.len() < seats).then_some(named)
    } else if live.len() < seats {
        Some(Vec::new())
    } else if req.on_limit == OnLimit::EvictOldest && live.len() == seats && seats > 0 {
        // Exactly full: the oldest makes room. Over the limit (after an
        // override was lowered), nobody is evicted and new streams wait.
        Some(live[..1].to_vec())
    } else {
        None
    };

    let (would_deny, would_evict, victims) = match (victims, req.enforce) {
        (None, true) => return Decision::Denied(Denial { limit, live }),
        (None, false) => (true, Vec::new(), Vec::new()),
        (Some(v), true) => (false, Vec::new(), v),
        (Some(v), false) => (false, v.into_iter().map(|l| l.stream_id).collect(), Vec::new()),
    };
    for v in &victims {
        let reason = RevokeReason::EvictedBy(req.stream_id.clone());
        revoke(state, v, reason, v.expires_at.plus(req.ttl), writes);
    }
    let lease = Lease {
        stream_id: req.stream_id,
        device_id: req.device_id,
        content_id: req.content_id,
        started_at: now,
        expires_at,
    };
    state.leases.push(lease.clone());
    writes.push(Write::PutLease(lease.clone()));
    Decision::Granted(Grant { evicted: victims, would_deny, would_evict, ..grant(state, lease, limit) })
}

/// Removes `lease` and leaves a tombstone in its place.
fn revoke(state: &mut UserState, lease: &Lease, reason: RevokeReason, until: Timestamp, writes: &mut Vec<Write>) {
    if let Some(i) = lease_of(state, &lease.stream_id) {
        state.leases.swap_remove(i);
    }
    let tombstone = Tombstone { stream_id: lease.stream_id.clone(), reason, until };
    writes.push(Write::DeleteLease(lease.stream_id.clone()));
    writes.push(Write::PutTombstone(tombstone.clone()));
    state.tombstones.push(tombstone);
}

fn grant(state: &UserState, lease: Lease, limit: Limit) -> Grant {
    // Only live leases remain in `state` at this point.
    let active_streams = u32::try_from(state.leases.len()).unwrap_or(u32::MAX);
    Grant { lease, active_streams, limit, evicted: Vec::new(), would_deny: false, would_evict: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Ttl;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    fn req(s: &str, limit: u32) -> Acquire {
        Acquire::for_test(s, limit)
    }

    fn acq(s: &str, limit: u32) -> Op {
        Op::Acquire(req(s, limit))
    }

    fn decision(o: Outcome) -> Decision {
        match o.reply {
            Reply::Decision(d) => d,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(T0.as_millis() + ms)
    }

    fn ids(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.stream_id.as_str()).collect()
    }

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// A user with streams a, b, c started 1 ms apart, under `limit`.
    fn full(limit: u32) -> UserState {
        let mut s = UserState::default();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(matches!(decision(apply(&mut s, acq(name, limit), at(i as i64))), Decision::Granted(_)));
        }
        s
    }

    #[test]
    fn grants_up_to_the_limit_then_denies_with_the_live_leases() {
        let mut s = full(3);
        assert_eq!(s.leases.len(), 3);
        match decision(apply(&mut s, acq("d", 3), at(10))) {
            Decision::Denied(d) => assert_eq!(ids(&d.live), ["a", "b", "c"]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn renew_keeps_started_at_and_moves_expiry() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        match decision(apply(&mut s, acq("a", 1), at(30_000))) {
            Decision::Renewed(g) => {
                assert_eq!(g.lease.started_at, T0);
                assert_eq!(g.lease.expires_at, at(90_000));
                assert_eq!(g.active_streams, 1);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_expired_lease_frees_its_seat_and_is_reacquired_fresh() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        let o = apply(&mut s, acq("b", 1), at(60_000));
        assert!(o.writes.contains(&Write::DeleteLease(sid("a"))));
        assert_eq!(o.expired, 1);
        assert!(matches!(decision(o), Decision::Granted(_)));
        match decision(apply(&mut s, acq("b", 1), at(120_000))) {
            Decision::Granted(g) => assert_eq!(g.lease.started_at, at(120_000)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn release_is_idempotent_frees_the_seat_and_leaves_no_tombstone() {
        let mut s = UserState::default();
        apply(&mut s, acq("a", 1), T0);
        assert_eq!(apply(&mut s, Op::Release(sid("a")), T0).writes, vec![Write::DeleteLease(sid("a"))]);
        assert_eq!(apply(&mut s, Op::Release(sid("a")), T0).writes, vec![]);
        assert!(matches!(decision(apply(&mut s, acq("a", 1), T0)), Decision::Granted(_)));
    }

    #[test]
    fn a_zero_limit_denies_everything_even_evict_oldest() {
        let mut s = UserState::default();
        assert!(matches!(decision(apply(&mut s, acq("a", 0), T0)), Decision::Denied(_)));
        let evicting = Op::Acquire(Acquire { on_limit: OnLimit::EvictOldest, ..req("a", 0) });
        assert!(matches!(decision(apply(&mut s, evicting, T0)), Decision::Denied(_)));
        assert!(s.is_empty());
    }

    #[test]
    fn reads_change_nothing() {
        let mut s = full(3);
        apply(&mut s, Op::SetOverride(Limit::new(2)), T0);
        let before = s.clone();
        let late = at(120_000);
        let o = apply(&mut s, Op::List { limit: Limit::new(3).unwrap() }, late);
        let expected = Reply::Leases { limit: Limit::new(2).unwrap(), live: vec![] };
        assert_eq!(o, Outcome { reply: expected, writes: vec![], expired: 0 });
        let o = apply(&mut s, Op::GetLimit { fallback: Limit::new(3).unwrap(), source: LimitSource::Plan }, late);
        assert_eq!(o.reply, Reply::Limit { limit: Limit::new(2).unwrap(), source: LimitSource::Override });
        assert_eq!(s, before);
    }

    #[test]
    fn evict_oldest_replaces_the_oldest_and_leaves_a_tombstone() {
        let mut s = full(3);
        let op = Op::Acquire(Acquire { on_limit: OnLimit::EvictOldest, ..req("d", 3) });
        match decision(apply(&mut s, op, at(10))) {
            Decision::Granted(g) => {
                assert_eq!(ids(&g.evicted), ["a"]);
                assert_eq!(g.active_streams, 3);
            }
            d => panic!("{d:?}"),
        }
        // `a` must stop: its heartbeat gets Gone until its old expiry + ttl.
        let gone = Tombstone { stream_id: sid("a"), reason: RevokeReason::EvictedBy(sid("d")), until: at(120_000) };
        assert_eq!(decision(apply(&mut s, acq("a", 3), at(119_999))), Decision::Gone(gone));
        assert!(matches!(decision(apply(&mut s, acq("a", 9), at(120_000))), Decision::Granted(_)));
    }

    #[test]
    fn take_over_revokes_the_named_streams_only_if_that_frees_a_seat() {
        let mut s = full(3);
        let take =
            |evict: &[&str]| Op::Acquire(Acquire { evict: evict.iter().map(|e| sid(e)).collect(), ..req("d", 3) });
        // Unknown, duplicate and foreign ids free nothing: 409, nothing changes.
        let before = s.clone();
        let o = apply(&mut s, take(&["x", "y"]), at(10));
        assert!(matches!(decision(o.clone()), Decision::Denied(_)));
        assert_eq!((s.clone(), o.writes), (before, vec![]));

        match decision(apply(&mut s, take(&["b", "b", "zz"]), at(10))) {
            Decision::Granted(g) => assert_eq!(ids(&g.evicted), ["b"]),
            d => panic!("{d:?}"),
        }
        assert!(matches!(decision(apply(&mut s, acq("b", 3), at(11))), Decision::Gone(_)));
        assert_eq!(ids(&s.live(at(11))), ["a", "c", "d"]);
    }

    #[test]
    fn lowering_the_override_evicts_nobody_and_refuses_new_streams() {
        let mut s = full(3);
        apply(&mut s, Op::SetOverride(Limit::new(1)), at(5));
        assert_eq!(s.live(at(5)).len(), 3);
        // Even evict_oldest refuses: evicting one would still not make room.
        let op = Op::Acquire(Acquire { on_limit: OnLimit::EvictOldest, ..req("d", 3) });
        match decision(apply(&mut s, op, at(6))) {
            Decision::Denied(d) => assert_eq!(d.limit.get(), 1),
            d => panic!("{d:?}"),
        }
        // Existing streams keep renewing.
        assert!(matches!(decision(apply(&mut s, acq("b", 3), at(7))), Decision::Renewed(_)));
        // Raising it lets new streams in again.
        apply(&mut s, Op::SetOverride(Limit::new(4)), at(8));
        assert!(matches!(decision(apply(&mut s, acq("d", 3), at(9))), Decision::Granted(_)));
        apply(&mut s, Op::SetOverride(None), at(10));
        assert!(matches!(decision(apply(&mut s, acq("e", 3), at(11))), Decision::Denied(_)));
    }

    #[test]
    fn revoke_all_leaves_tombstones_for_every_live_stream() {
        let mut s = full(3);
        let o = apply(&mut s, Op::RevokeAll { ttl: Ttl::from_secs(30).unwrap() }, at(10));
        assert_eq!(o.reply, Reply::Revoked(vec![sid("a"), sid("b"), sid("c")]));
        assert!(s.live(at(10)).is_empty());
        match decision(apply(&mut s, acq("c", 3), at(20))) {
            Decision::Gone(t) => {
                assert_eq!(t.reason, RevokeReason::Revoked);
                assert_eq!(t.until, at(2 + 60_000 + 30_000));
            }
            d => panic!("{d:?}"),
        }
        // New streams are welcome.
        assert!(matches!(decision(apply(&mut s, acq("new", 3), at(20))), Decision::Granted(_)));
    }

    #[test]
    fn shadow_mode_never_denies_or_evicts_but_says_what_it_would_do() {
        let mut s = full(3);
        let shadow = |s: &str, on_limit| Op::Acquire(Acquire { enforce: false, on_limit, ..req(s, 3) });
        match decision(apply(&mut s, shadow("d", OnLimit::Reject), at(10))) {
            Decision::Granted(g) => {
                assert!(g.would_deny);
                assert_eq!(g.active_streams, 4);
                assert!(g.evicted.is_empty());
            }
            d => panic!("{d:?}"),
        }
        apply(&mut s, Op::Release(sid("d")), at(11));
        match decision(apply(&mut s, shadow("e", OnLimit::EvictOldest), at(12))) {
            Decision::Granted(g) => {
                assert!(!g.would_deny);
                assert_eq!(g.would_evict, vec![sid("a")]);
                assert!(g.evicted.is_empty());
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(s.live(at(12)).len(), 4);
        assert!(s.tombstones.is_empty());
    }
}
