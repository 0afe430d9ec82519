//! The rules themselves: [`apply`] is the one place where decisions are made.

use super::{
    Acquire, Decision, Denial, Grant, Label, Lease, Limit, LimitSource, OnLimit, Op, Outcome, Plans, Reply,
    RevokeReason, Rule, RuleHit, StreamId, Timestamp, Tombstone, UserState, Write,
};

/// Runs `op` against `state` at time `now`. `state` is updated in place and
/// the same changes are returned as `writes`, for stores that persist them.
pub fn apply(state: &mut UserState, op: Op, now: Timestamp) -> Outcome {
    // Changes start by dropping what has expired; count those leases.
    let changes = matches!(
        op,
        Op::Acquire(_) | Op::Release(_) | Op::ReleaseHeld { .. } | Op::RevokeAll { .. } | Op::Revoke { .. }
    );
    let expired = if changes { state.leases.iter().filter(|l| !l.is_live(now)).count() } else { 0 };
    let (reply, writes) = match op {
        Op::List { limit } => {
            let limit = state.override_at(now).map_or(limit, |o| o.limit);
            let mut tombstones: Vec<Tombstone> = state.tombstones.iter().filter(|t| t.is_live(now)).cloned().collect();
            tombstones.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            (Reply::Leases { limit, live: state.live(now), tombstones }, Vec::new())
        }
        Op::GetLimit { fallback, source } => {
            let reply = match state.override_at(now) {
                Some(o) => Reply::Limit { limit: o.limit, source: LimitSource::Override, expires_at: o.expires_at },
                None => Reply::Limit { limit: fallback, source, expires_at: None },
            };
            (reply, Vec::new())
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
        Op::ReleaseHeld { stream, holder } => {
            let mut writes = expire(state, now);
            if let Some(i) = lease_of(state, &stream)
                && state.leases[i].holder.as_ref() == Some(&holder)
            {
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
            (Reply::Revoked(victims), writes)
        }
        Op::Revoke { stream, ttl } => {
            let mut writes = expire(state, now);
            let victim = lease_of(state, &stream).map(|i| state.leases[i].clone());
            if let Some(lease) = &victim {
                revoke(state, lease, RevokeReason::Revoked, lease.expires_at.plus(ttl), &mut writes);
            }
            (Reply::Revoked(victim.into_iter().collect()), writes)
        }
        Op::SetOverride(set) => {
            state.limit_override = set;
            let reply = match set {
                Some(o) => Reply::Limit { limit: o.limit, source: LimitSource::Override, expires_at: o.expires_at },
                None => Reply::Done,
            };
            (reply, vec![Write::SetOverride(set)])
        }
    };
    Outcome { reply, writes, expired }
}

/// Removes every lease and tombstone that is no longer live, and an
/// override past its expiry, and returns the deletions. Stores call it
/// from their sweeper; [`apply`] calls it before every change.
pub fn expire(state: &mut UserState, now: Timestamp) -> Vec<Write> {
    let mut writes = Vec::new();
    if state.limit_override.is_some_and(|o| !o.counts_at(now)) {
        state.limit_override = None;
        writes.push(Write::SetOverride(None));
    }
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

/// What rules look at in a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Traits<'a> {
    device_class: Option<&'a Label>,
    content_kind: Option<&'a Label>,
    content_id: Option<&'a Label>,
}

impl<'a> Traits<'a> {
    fn of(lease: &'a Lease) -> Self {
        Self {
            device_class: lease.device_class.as_ref(),
            content_kind: lease.content_kind.as_ref(),
            content_id: lease.content_id.as_ref(),
        }
    }
}

impl Rule {
    fn matches(&self, t: Traits) -> bool {
        self.device_class.as_ref().is_none_or(|c| t.device_class == Some(c))
            && self.content_kind.as_ref().is_none_or(|k| t.content_kind == Some(k))
    }
}

/// A set of a user's streams under one limit, which a new stream must fit
/// in.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// The streams a rule matches; for a per-title rule, those that also
    /// play this title.
    Rule(&'a Rule, Option<&'a Label>),
    /// The streams that count toward the user's total: all but those an
    /// exempt rule matches.
    Total(&'a [Rule], Limit),
}

impl Scope<'_> {
    fn contains(self, t: Traits) -> bool {
        match self {
            Scope::Rule(rule, title) => rule.matches(t) && (!rule.per_content || t.content_id == title),
            Scope::Total(rules, _) => !exempt(rules, t),
        }
    }

    fn limit(self) -> Limit {
        match self {
            Scope::Rule(rule, _) => rule.limit,
            Scope::Total(_, limit) => limit,
        }
    }

    fn hit(self) -> Option<RuleHit> {
        match self {
            Scope::Rule(rule, _) => Some(RuleHit { name: rule.name.clone(), limit: rule.limit }),
            Scope::Total(..) => None,
        }
    }

    /// The leases of `live` in this scope, leaving out `skip`, in order.
    fn members<'l>(self, live: &'l [Lease], skip: &[&Lease]) -> Vec<&'l Lease> {
        self.iter(live, skip).collect()
    }

    fn iter<'l>(self, live: &'l [Lease], skip: &[&Lease]) -> impl Iterator<Item = &'l Lease> {
        live.iter().filter(move |l| self.contains(Traits::of(l)) && !skip.iter().any(|s| s.stream_id == l.stream_id))
    }

    /// Counts without collecting: every new stream asks this of the total.
    fn is_full(self, live: &[Lease], skip: &[&Lease]) -> bool {
        self.iter(live, skip).count() >= self.limit().get() as usize
    }
}

fn exempt(rules: &[Rule], t: Traits) -> bool {
    rules.iter().any(|r| r.exempt && r.matches(t))
}

/// The scopes a stream with traits `t` must fit in, in the order they are
/// checked: its rules in configured order, then the total unless the
/// stream is exempt from it. A per-title rule does not apply to a stream
/// without a title.
fn scopes<'a>(rules: &'a [Rule], total: Limit, t: Traits<'a>) -> Vec<Scope<'a>> {
    let mut scopes: Vec<Scope> = rules
        .iter()
        .filter(|r| r.matches(t) && (!r.per_content || t.content_id.is_some()))
        .map(|r| Scope::Rule(r, t.content_id.filter(|_| r.per_content)))
        .collect();
    if !exempt(rules, t) {
        scopes.push(Scope::Total(rules, total));
    }
    scopes
}

/// `state` holds only live leases and tombstones here.
fn acquire(state: &mut UserState, req: Acquire, now: Timestamp, writes: &mut Vec<Write>) -> Decision {
    if let Some(t) = state.tombstones.iter().find(|t| t.stream_id == req.stream_id) {
        return Decision::Gone(t.clone());
    }
    let mut req = req;
    if let Some(plans) = req.plans.take() {
        inherit(state, &mut req, &plans);
    }
    // `expire` ran: an override left in `state` counts.
    let limit = state.limit_override.map_or(req.limit, |o| o.limit);
    if let Some(i) = lease_of(state, &req.stream_id) {
        return renew(state, i, req, limit, now, writes);
    }
    if req.held {
        return Decision::NotHeld;
    }

    let live = state.live(now);
    let t = Traits {
        device_class: req.device_class.as_ref(),
        content_kind: req.content_kind.as_ref(),
        content_id: req.content_id.as_ref(),
    };
    let scopes = scopes(&req.rules, limit, t);
    // The leases that must go for this one to fit, or the scope it cannot
    // fit in.
    let verdict: Result<Vec<&Lease>, Scope> = if !req.evict.is_empty() {
        // Take-over: the named live streams go, but only if that frees a
        // seat in every scope.
        let named: Vec<&Lease> = live.iter().filter(|l| req.evict.contains(&l.stream_id)).collect();
        match scopes.iter().find(|s| s.is_full(&live, &named)) {
            Some(&full) => Err(full),
            None => Ok(named),
        }
    } else {
        match scopes.iter().find(|s| s.is_full(&live, &[])) {
            None => Ok(Vec::new()),
            Some(&full) if req.on_limit == OnLimit::Reject => Err(full),
            Some(_) => evict_oldest(&scopes, &live),
        }
    };

    let (would_deny, would_evict, victims) = match (verdict, req.enforce) {
        (Err(full), true) => {
            let live = full.members(&live, &[]).into_iter().cloned().collect();
            return Decision::Denied(Denial { limit, rule: full.hit(), live });
        }
        (Err(full), false) => (Some(full.hit()), Vec::new(), Vec::new()),
        (Ok(v), true) => (None, Vec::new(), v.into_iter().cloned().collect()),
        (Ok(v), false) => (None, v.into_iter().map(|l| l.stream_id.clone()).collect(), Vec::new()),
    };
    for v in &victims {
        let reason = RevokeReason::EvictedBy(req.stream_id.clone());
        revoke(state, v, reason, v.expires_at.plus(req.ttl), writes);
    }
    let lease = req.into_lease(now);
    // A state that lives in memory (the memory store) keeps its vectors:
    // grow them one at a time rather than to 4, since most users hold one
    // or two streams.
    state.leases.reserve_exact(1);
    state.leases.push(lease.clone());
    writes.push(Write::PutLease(lease.clone()));
    Decision::Granted(Grant {
        evicted: victims,
        would_deny: would_deny.is_some(),
        would_deny_rule: would_deny.flatten(),
        would_evict,
        ..grant(state, lease, limit)
    })
}

/// For a request that named no plan: the terms of the plan that the
/// stream's own lease holds, or else that the user's newest live lease
/// holds, if that plan is still configured. The plan sticks to the new or
/// renewed lease.
fn inherit(state: &UserState, req: &mut Acquire, plans: &Plans) {
    let own = state.leases.iter().find(|l| l.stream_id == req.stream_id);
    let newest = || state.leases.iter().max_by(|a, b| (a.started_at, &a.stream_id).cmp(&(b.started_at, &b.stream_id)));
    let Some(name) = own.or_else(newest).and_then(|l| l.plan.as_ref()) else { return };
    if let Some(terms) = plans.get(name) {
        req.limit = terms.limit;
        req.on_limit = terms.on_limit;
        req.rules = terms.rules.clone();
        req.plan = Some(name.clone());
    }
}

/// `evict_oldest` on a full account: in each full scope, in order, the
/// oldest stream not already chosen makes room. A scope over its limit
/// (after a limit was lowered) or with no seats at all evicts nobody, and
/// the new stream is refused.
fn evict_oldest<'l, 'a>(scopes: &[Scope<'a>], live: &'l [Lease]) -> Result<Vec<&'l Lease>, Scope<'a>> {
    let mut victims: Vec<&Lease> = Vec::new();
    for &scope in scopes {
        let members = scope.members(live, &victims);
        let seats = scope.limit().get() as usize;
        if members.len() < seats {
            continue;
        }
        if members.len() > seats || seats == 0 {
            return Err(scope);
        }
        victims.push(members[0]);
    }
    // Oldest first, as `live` is.
    victims.sort_by_key(|v| live.iter().position(|l| l.stream_id == v.stream_id));
    Ok(victims)
}

/// Renews the live lease at `i`. A live stream always renews, even when a
/// lowered limit leaves a scope over it: nobody is cut off by a limit
/// change. But a renewal that gives the stream a new device class,
/// content kind or title must fit in every scope that this moves it into.
fn renew(
    state: &mut UserState,
    i: usize,
    req: Acquire,
    limit: Limit,
    now: Timestamp,
    writes: &mut Vec<Write>,
) -> Decision {
    let old = &state.leases[i];
    let mut new = old.clone();
    new.expires_at = now.plus(req.ttl);
    let replaced = match (&req.holder, &old.holder) {
        (Some(asks), Some(held)) if asks != held => Some(held.clone()),
        _ => None,
    };
    if req.holder.is_some() {
        new.holder = req.holder.clone();
    }
    for (field, given) in [
        (&mut new.device_id, req.device_id),
        (&mut new.content_id, req.content_id),
        (&mut new.device_class, req.device_class),
        (&mut new.content_kind, req.content_kind),
        (&mut new.plan, req.plan),
    ] {
        if given.is_some() {
            *field = given;
        }
    }
    let mut blocked = None;
    if Traits::of(&new) != Traits::of(old) {
        let others: Vec<Lease> = state.live(now).into_iter().filter(|l| l.stream_id != old.stream_id).collect();
        for scope in scopes(&req.rules, limit, Traits::of(&new)) {
            if !scope.contains(Traits::of(old)) && scope.is_full(&others, &[]) {
                if req.enforce {
                    let live = scope.members(&others, &[]).into_iter().cloned().collect();
                    return Decision::Denied(Denial { limit, rule: scope.hit(), live });
                }
                blocked = Some(scope.hit());
                break;
            }
        }
    }
    state.leases[i] = new.clone();
    writes.push(Write::PutLease(new.clone()));
    Decision::Renewed(Grant {
        would_deny: blocked.is_some(),
        would_deny_rule: blocked.flatten(),
        replaced,
        ..grant(state, new, limit)
    })
}

/// Removes `lease` and leaves a tombstone in its place.
fn revoke(state: &mut UserState, lease: &Lease, reason: RevokeReason, until: Timestamp, writes: &mut Vec<Write>) {
    if let Some(i) = lease_of(state, &lease.stream_id) {
        state.leases.swap_remove(i);
    }
    let tombstone = Tombstone { stream_id: lease.stream_id.clone(), reason, until };
    writes.push(Write::DeleteLease(lease.stream_id.clone()));
    writes.push(Write::PutTombstone(tombstone.clone()));
    state.tombstones.reserve_exact(1);
    state.tombstones.push(tombstone);
}

fn grant(state: &UserState, lease: Lease, limit: Limit) -> Grant {
    // Only live leases remain in `state` at this point.
    let active_streams = u32::try_from(state.leases.len()).unwrap_or(u32::MAX);
    Grant {
        lease,
        active_streams,
        limit,
        evicted: Vec::new(),
        would_deny: false,
        would_deny_rule: None,
        would_evict: Vec::new(),
        replaced: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::limiter::{Holder, Override, Terms, Ttl};

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    fn req(s: &str, limit: u32) -> Acquire {
        Acquire::for_test(s, limit)
    }

    fn acq(s: &str, limit: u32) -> Op {
        Op::Acquire(req(s, limit))
    }

    fn holder(h: &str) -> Holder {
        Holder::new(h).unwrap()
    }

    /// An acquire of `s` by the socket `h`.
    fn held_by(s: &str, limit: u32, h: &str) -> Op {
        Op::Acquire(Acquire { holder: Some(holder(h)), ..req(s, limit) })
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
        apply(&mut s, Op::SetOverride(Limit::new(2).map(Override::permanent)), T0);
        let before = s.clone();
        let late = at(120_000);
        let o = apply(&mut s, Op::List { limit: Limit::new(3).unwrap() }, late);
        let expected = Reply::Leases { limit: Limit::new(2).unwrap(), live: vec![], tombstones: vec![] };
        assert_eq!(o, Outcome { reply: expected, writes: vec![], expired: 0 });
        let o = apply(&mut s, Op::GetLimit { fallback: Limit::new(3).unwrap(), source: LimitSource::Plan }, late);
        assert_eq!(
            o.reply,
            Reply::Limit { limit: Limit::new(2).unwrap(), source: LimitSource::Override, expires_at: None }
        );
        assert_eq!(s, before);
    }

    fn until(limit: u32, ms: i64) -> Op {
        Op::SetOverride(Some(Override { limit: Limit::new(limit).unwrap(), expires_at: Some(at(ms)) }))
    }

    #[test]
    fn an_override_counts_until_its_expiry_and_then_the_fallback_does() {
        let mut s = UserState::default();
        let o = apply(&mut s, until(1, 10_000), T0);
        let one = Limit::new(1).unwrap();
        assert_eq!(o.reply, Reply::Limit { limit: one, source: LimitSource::Override, expires_at: Some(at(10_000)) });
        let get = || Op::GetLimit { fallback: Limit::new(3).unwrap(), source: LimitSource::Plan };
        let o = apply(&mut s, get(), at(9_999));
        assert_eq!(o.reply, Reply::Limit { limit: one, source: LimitSource::Override, expires_at: Some(at(10_000)) });
        assert!(matches!(decision(apply(&mut s, acq("a", 3), at(1))), Decision::Granted(_)));
        assert!(matches!(decision(apply(&mut s, acq("b", 3), at(2))), Decision::Denied(_)));
        // At its expiry the plan's limit is back; reads say so and change nothing.
        let before = s.clone();
        let o = apply(&mut s, get(), at(10_000));
        let three = Limit::new(3).unwrap();
        assert_eq!(
            o,
            Outcome {
                reply: Reply::Limit { limit: three, source: LimitSource::Plan, expires_at: None },
                writes: vec![],
                expired: 0
            }
        );
        match apply(&mut s, Op::List { limit: three }, at(10_000)).reply {
            Reply::Leases { limit, live, .. } => assert_eq!((limit, ids(&live)), (three, vec!["a"])),
            r => panic!("{r:?}"),
        }
        assert_eq!(s, before);
        // The next change drops it, as it drops what has expired.
        let o = apply(&mut s, acq("b", 3), at(10_001));
        assert_eq!(o.writes[0], Write::SetOverride(None));
        assert!(matches!(decision(o), Decision::Granted(_)));
        assert_eq!(s.limit_override(), None);
    }

    #[test]
    fn an_override_that_ends_evicts_nobody_and_a_lower_one_cuts_off_nobody() {
        let mut s = UserState::default();
        apply(&mut s, until(3, 10_000), T0);
        for (i, stream) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(matches!(decision(apply(&mut s, acq(stream, 1), at(i as i64))), Decision::Granted(_)));
        }
        // Past it the default (1) applies: all three renew, a fourth waits.
        for stream in ["a", "b", "c"] {
            assert!(matches!(decision(apply(&mut s, acq(stream, 1), at(20_000))), Decision::Renewed(_)));
        }
        assert!(matches!(decision(apply(&mut s, acq("d", 1), at(20_001))), Decision::Denied(_)));
    }

    #[test]
    fn expiry_drops_an_override_past_its_end_only() {
        let mut s = UserState::default();
        apply(&mut s, until(2, 10_000), T0);
        assert_eq!(expire(&mut s, at(9_999)), vec![]);
        assert_eq!(expire(&mut s, at(10_000)), vec![Write::SetOverride(None)]);
        assert!(s.is_empty());
        apply(&mut s, Op::SetOverride(Limit::new(2).map(Override::permanent)), T0);
        assert_eq!(expire(&mut s, at(i64::MAX / 1000)), vec![]);
    }

    #[test]
    fn revoking_one_stream_leaves_a_tombstone_for_it_alone() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 3, "h1"), T0);
        apply(&mut s, acq("b", 3), at(1));
        let ttl = Ttl::from_secs(30).unwrap();
        let o = apply(&mut s, Op::Revoke { stream: sid("a"), ttl }, at(2));
        let Reply::Revoked(revoked) = o.reply else { panic!("{:?}", o.reply) };
        assert_eq!((ids(&revoked), revoked[0].holder.clone()), (vec!["a"], Some(holder("h1"))));
        let tomb = Tombstone { stream_id: sid("a"), reason: RevokeReason::Revoked, until: at(60_000 + 30_000) };
        assert_eq!(o.writes, vec![Write::DeleteLease(sid("a")), Write::PutTombstone(tomb.clone())]);
        assert_eq!(ids(&s.live(at(3))), ["b"]);
        assert_eq!(decision(apply(&mut s, acq("a", 3), at(4))), Decision::Gone(tomb.clone()));
        // A stream without a live lease: nothing is revoked, nothing written.
        for stream in ["a", "none"] {
            let o = apply(&mut s, Op::Revoke { stream: sid(stream), ttl }, at(5));
            assert_eq!((o.reply, o.writes), (Reply::Revoked(vec![]), vec![]), "{stream}");
        }
        // The listing shows the live tombstone.
        match apply(&mut s, Op::List { limit: Limit::new(3).unwrap() }, at(6)).reply {
            Reply::Leases { tombstones, .. } => assert_eq!(tombstones, vec![tomb]),
            r => panic!("{r:?}"),
        }
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
        apply(&mut s, Op::SetOverride(Limit::new(1).map(Override::permanent)), at(5));
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
        apply(&mut s, Op::SetOverride(Limit::new(4).map(Override::permanent)), at(8));
        assert!(matches!(decision(apply(&mut s, acq("d", 3), at(9))), Decision::Granted(_)));
        apply(&mut s, Op::SetOverride(None), at(10));
        assert!(matches!(decision(apply(&mut s, acq("e", 3), at(11))), Decision::Denied(_)));
    }

    #[test]
    fn revoke_all_leaves_tombstones_for_every_live_stream() {
        let mut s = full(3);
        let o = apply(&mut s, Op::RevokeAll { ttl: Ttl::from_secs(30).unwrap() }, at(10));
        let Reply::Revoked(revoked) = o.reply else { panic!("{:?}", o.reply) };
        assert_eq!(ids(&revoked), ["a", "b", "c"]);
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

    fn label(s: &str) -> Label {
        Label::new(s).unwrap()
    }

    fn rule(name: &str, limit: u32) -> Rule {
        Rule {
            name: label(name),
            device_class: None,
            content_kind: None,
            per_content: false,
            limit: Limit::new(limit).unwrap(),
            exempt: false,
        }
    }

    fn tv(limit: u32) -> Rule {
        Rule { device_class: Some(label("tv")), ..rule("tv", limit) }
    }

    fn hit(name: &str, limit: u32) -> Option<RuleHit> {
        Some(RuleHit { name: label(name), limit: Limit::new(limit).unwrap() })
    }

    #[test]
    fn a_rule_caps_its_scope_inside_the_total() {
        // "4 streams, but at most 2 on TVs".
        let rules = [tv(2)];
        let mut s = UserState::default();
        let go = |s: &mut UserState, stream: &str, class: &str, ms| {
            decision(apply(s, Op::Acquire(Acquire::on_test(stream, 4, &rules, Some(class), None, None)), at(ms)))
        };
        assert!(matches!(go(&mut s, "tv1", "tv", 0), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "tv2", "tv", 1), Decision::Granted(_)));
        match go(&mut s, "tv3", "tv", 2) {
            Decision::Denied(d) => {
                assert_eq!(d.rule, hit("tv", 2));
                assert_eq!(d.limit.get(), 4);
                assert_eq!(ids(&d.live), ["tv1", "tv2"]);
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(go(&mut s, "m1", "mobile", 3), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "m2", "mobile", 4), Decision::Granted(_)));
        match go(&mut s, "m3", "mobile", 5) {
            Decision::Denied(d) => {
                assert_eq!(d.rule, None);
                assert_eq!(ids(&d.live), ["tv1", "tv2", "m1", "m2"]);
            }
            d => panic!("{d:?}"),
        }
        // A stream with no device class is outside the TV rule.
        apply(&mut s, Op::Release(sid("m2")), at(6));
        assert!(matches!(decision(apply(&mut s, acq("x", 4), at(7))), Decision::Granted(_)));
    }

    #[test]
    fn a_per_title_rule_counts_each_title_apart_and_skips_untitled_streams() {
        let rules = [Rule { per_content: true, ..rule("one-per-title", 1) }];
        let mut s = UserState::default();
        let go = |s: &mut UserState, stream: &str, title: Option<&str>| {
            decision(apply(s, Op::Acquire(Acquire::on_test(stream, 4, &rules, None, None, title)), at(0)))
        };
        assert!(matches!(go(&mut s, "a", Some("film")), Decision::Granted(_)));
        match go(&mut s, "b", Some("film")) {
            Decision::Denied(d) => assert_eq!((d.rule, ids(&d.live)), (hit("one-per-title", 1), vec!["a"])),
            d => panic!("{d:?}"),
        }
        assert!(matches!(go(&mut s, "c", Some("show")), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "d", None), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "e", None), Decision::Granted(_)));
        // The total still holds: four live.
        assert!(matches!(go(&mut s, "f", Some("other")), Decision::Denied(Denial { rule: None, .. })));
    }

    #[test]
    fn exempt_streams_skip_the_total_but_keep_their_own_limit() {
        // "downloads don't count", up to 2 of them; total 1.
        let downloads = Rule { content_kind: Some(label("download")), exempt: true, ..rule("downloads", 2) };
        let rules = [downloads];
        let mut s = UserState::default();
        let go = |s: &mut UserState, stream: &str, kind: Option<&str>| {
            decision(apply(s, Op::Acquire(Acquire::on_test(stream, 1, &rules, None, kind, None)), at(0)))
        };
        assert!(matches!(go(&mut s, "watch", None), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "dl1", Some("download")), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "dl2", Some("download")), Decision::Granted(_)));
        match go(&mut s, "dl3", Some("download")) {
            Decision::Denied(d) => {
                assert_eq!((d.limit.get(), d.rule, ids(&d.live)), (1, hit("downloads", 2), vec!["dl1", "dl2"]))
            }
            d => panic!("{d:?}"),
        }
        // The total lists only the streams that count toward it.
        match go(&mut s, "watch2", Some("vod")) {
            Decision::Denied(d) => assert_eq!((d.rule, ids(&d.live)), (None, vec!["watch"])),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_zero_rule_forbids_its_scope() {
        let live = Rule { content_kind: Some(label("live")), ..rule("no-live", 0) };
        let mut s = UserState::default();
        let evicting =
            Acquire { on_limit: OnLimit::EvictOldest, ..Acquire::on_test("a", 3, &[live], None, Some("live"), None) };
        match decision(apply(&mut s, Op::Acquire(evicting), T0)) {
            Decision::Denied(d) => assert_eq!((d.rule, d.live), (hit("no-live", 0), vec![])),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn evict_oldest_evicts_within_the_full_scope() {
        let rules = [tv(2)];
        let mut s = UserState::default();
        for (i, (stream, class)) in [("m1", "mobile"), ("tv1", "tv"), ("tv2", "tv")].into_iter().enumerate() {
            apply(&mut s, Op::Acquire(Acquire::on_test(stream, 4, &rules, Some(class), None, None)), at(i as i64));
        }
        let op =
            Acquire { on_limit: OnLimit::EvictOldest, ..Acquire::on_test("tv3", 4, &rules, Some("tv"), None, None) };
        match decision(apply(&mut s, Op::Acquire(op), at(10))) {
            // m1 is older, but evicting it would not free a TV seat.
            Decision::Granted(g) => assert_eq!(ids(&g.evicted), ["tv1"]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn evict_oldest_frees_a_seat_in_every_full_scope() {
        // TV full (tv1, tv2) and the title full (m-film on a phone), total 4.
        let rules = [tv(2), Rule { per_content: true, ..rule("one-per-title", 1) }];
        let mut s = UserState::default();
        let start = [("tv1", "tv", "a"), ("m-film", "mobile", "film"), ("tv2", "tv", "b")];
        for (i, (stream, class, title)) in start.into_iter().enumerate() {
            apply(
                &mut s,
                Op::Acquire(Acquire::on_test(stream, 4, &rules, Some(class), None, Some(title))),
                at(i as i64),
            );
        }
        let op = Acquire {
            on_limit: OnLimit::EvictOldest,
            ..Acquire::on_test("new", 4, &rules, Some("tv"), None, Some("film"))
        };
        match decision(apply(&mut s, Op::Acquire(op), at(10))) {
            Decision::Granted(g) => assert_eq!(ids(&g.evicted), ["tv1", "m-film"]),
            d => panic!("{d:?}"),
        }
        assert_eq!(ids(&s.live(at(10))), ["tv2", "new"]);
    }

    #[test]
    fn take_over_must_free_a_seat_in_every_full_scope() {
        let rules = [tv(1)];
        let mut s = UserState::default();
        for (i, (stream, class)) in [("tv1", "tv"), ("m1", "mobile")].into_iter().enumerate() {
            apply(&mut s, Op::Acquire(Acquire::on_test(stream, 2, &rules, Some(class), None, None)), at(i as i64));
        }
        let take = |evict: &str| Acquire {
            evict: vec![sid(evict)],
            ..Acquire::on_test("tv2", 2, &rules, Some("tv"), None, None)
        };
        // Taking over the phone frees a seat in the total, not on the TV.
        let before = s.clone();
        match decision(apply(&mut s, Op::Acquire(take("m1")), at(5))) {
            Decision::Denied(d) => assert_eq!((d.rule, ids(&d.live)), (hit("tv", 1), vec!["tv1"])),
            d => panic!("{d:?}"),
        }
        assert_eq!(s, before);
        match decision(apply(&mut s, Op::Acquire(take("tv1")), at(6))) {
            Decision::Granted(g) => assert_eq!(ids(&g.evicted), ["tv1"]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn shadow_mode_names_the_rule_it_would_have_applied() {
        let rules = [tv(1)];
        let mut s = UserState::default();
        let shadow = |stream| Acquire { enforce: false, ..Acquire::on_test(stream, 4, &rules, Some("tv"), None, None) };
        apply(&mut s, Op::Acquire(shadow("tv1")), T0);
        match decision(apply(&mut s, Op::Acquire(shadow("tv2")), T0)) {
            Decision::Granted(g) => assert_eq!((g.would_deny, g.would_deny_rule), (true, hit("tv", 1))),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_renewal_cannot_move_a_stream_into_a_full_scope() {
        let rules = [tv(1), Rule { per_content: true, ..rule("one-per-title", 1) }];
        let mut s = UserState::default();
        let go = |s: &mut UserState, stream: &str, class: Option<&str>, title: Option<&str>, ms| {
            decision(apply(s, Op::Acquire(Acquire::on_test(stream, 4, &rules, class, None, title)), at(ms)))
        };
        assert!(matches!(go(&mut s, "tv1", Some("tv"), Some("a"), 0), Decision::Granted(_)));
        assert!(matches!(go(&mut s, "m1", Some("mobile"), Some("b"), 1), Decision::Granted(_)));
        // Switching the phone to the TV's title, or calling it a TV, is refused;
        // the lease stays as it was, unrenewed.
        let before = s.clone();
        match go(&mut s, "m1", None, Some("a"), 2) {
            Decision::Denied(d) => assert_eq!((d.rule, ids(&d.live)), (hit("one-per-title", 1), vec!["tv1"])),
            d => panic!("{d:?}"),
        }
        assert!(matches!(go(&mut s, "m1", Some("tv"), None, 3), Decision::Denied(Denial { .. })));
        assert_eq!(s, before);
        // The next episode of its own title is fine, and so is a plain renewal.
        match go(&mut s, "m1", None, Some("c"), 4) {
            Decision::Renewed(g) => assert_eq!(g.lease.content_id, Some(label("c"))),
            d => panic!("{d:?}"),
        }
        assert!(matches!(go(&mut s, "tv1", None, None, 5), Decision::Renewed(_)));
    }

    #[test]
    fn a_renewal_keeps_its_seat_in_a_scope_over_its_limit() {
        let mut s = UserState::default();
        for (i, stream) in ["tv1", "tv2"].into_iter().enumerate() {
            apply(&mut s, Op::Acquire(Acquire::on_test(stream, 4, &[tv(2)], Some("tv"), None, None)), at(i as i64));
        }
        // The rule was lowered to 1 since: both TVs keep renewing.
        let lowered = [tv(1)];
        for stream in ["tv1", "tv2"] {
            let op = Op::Acquire(Acquire::on_test(stream, 4, &lowered, Some("tv"), None, Some("x")));
            assert!(matches!(decision(apply(&mut s, op, at(10))), Decision::Renewed(_)));
        }
    }

    #[test]
    fn leases_keep_their_attributes_and_plan() {
        let mut s = UserState::default();
        let first = Acquire {
            plan: Some(label("premium")),
            ..Acquire::on_test("a", 4, &[], Some("tv"), Some("live"), Some("match"))
        };
        apply(&mut s, Op::Acquire(first), T0);
        match decision(apply(&mut s, acq("a", 4), at(1))) {
            Decision::Renewed(g) => {
                let l = g.lease;
                assert_eq!(l.device_class, Some(label("tv")));
                assert_eq!(l.content_kind, Some(label("live")));
                assert_eq!(l.content_id, Some(label("match")));
                assert_eq!(l.plan, Some(label("premium")));
            }
            d => panic!("{d:?}"),
        }
    }

    fn plans() -> Arc<Plans> {
        let premium = Terms { limit: Limit::new(4).unwrap(), on_limit: OnLimit::Reject, rules: Arc::from([tv(2)]) };
        Arc::new([(label("premium"), premium)].into_iter().collect())
    }

    #[test]
    fn a_request_without_a_plan_keeps_the_plan_of_the_lease_or_the_newest_one() {
        let mut s = UserState::default();
        let premium = Acquire { plan: Some(label("premium")), ..req("a", 4) };
        apply(&mut s, Op::Acquire(premium), T0);
        // A heartbeat without a plan is judged, and answered, as premium.
        let sticky = |stream: &str| Acquire { plans: Some(plans()), ..req(stream, 1) };
        match decision(apply(&mut s, Op::Acquire(sticky("a")), at(1))) {
            Decision::Renewed(g) => assert_eq!((g.limit.get(), g.lease.plan), (4, Some(label("premium")))),
            d => panic!("{d:?}"),
        }
        // So is a new stream: the default would allow 1.
        match decision(apply(&mut s, Op::Acquire(sticky("b")), at(2))) {
            Decision::Granted(g) => assert_eq!((g.limit.get(), g.lease.plan), (4, Some(label("premium")))),
            d => panic!("{d:?}"),
        }
        // Without the plans (a plan was named elsewhere), nothing is inherited.
        assert!(matches!(decision(apply(&mut s, acq("c", 1), at(3))), Decision::Denied(_)));
        // A plan no longer configured falls back to the default.
        let mut t = UserState::default();
        apply(&mut t, Op::Acquire(Acquire { plan: Some(label("gold")), ..req("a", 4) }), T0);
        assert!(matches!(decision(apply(&mut t, Op::Acquire(sticky("b")), at(1))), Decision::Denied(_)));
    }

    #[test]
    fn a_held_request_renews_but_never_starts_a_stream() {
        let mut s = UserState::default();
        let held = |stream: &str| Op::Acquire(Acquire { held: true, ..req(stream, 2) });
        assert_eq!(decision(apply(&mut s, held("a"), T0)), Decision::NotHeld);
        assert!(s.is_empty());
        apply(&mut s, acq("a", 2), T0);
        assert!(matches!(decision(apply(&mut s, held("a"), at(1))), Decision::Renewed(_)));
        // After expiry the seat is gone, and a held request says so.
        assert_eq!(decision(apply(&mut s, held("a"), at(61_001))), Decision::NotHeld);
    }

    #[test]
    fn a_new_lease_takes_the_holder_of_its_request() {
        let mut s = UserState::default();
        match decision(apply(&mut s, held_by("a", 2, "h1"), T0)) {
            Decision::Granted(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h1")), None)),
            d => panic!("{d:?}"),
        }
        match decision(apply(&mut s, acq("b", 2), T0)) {
            Decision::Granted(g) => assert_eq!(g.lease.holder, None),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_renewal_by_the_same_holder_replaces_nothing() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        match decision(apply(&mut s, held_by("a", 1, "h1"), at(1))) {
            Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h1")), None)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_renewal_by_another_holder_takes_the_lease_and_names_the_one_it_replaced() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        let o = apply(&mut s, held_by("a", 1, "h2"), at(1));
        let expected = Lease { holder: Some(holder("h2")), expires_at: at(60_001), ..s.leases[0].clone() };
        assert_eq!(o.writes, vec![Write::PutLease(expected)]);
        match decision(o) {
            Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h2")), Some(holder("h1")))),
            d => panic!("{d:?}"),
        }
        assert_eq!(s.leases[0].holder, Some(holder("h2")));
        // A socket renewing a lease that nobody held replaces nobody.
        apply(&mut s, acq("b", 2), at(2));
        match decision(apply(&mut s, held_by("b", 2, "h3"), at(3))) {
            Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h3")), None)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_renewal_without_a_holder_keeps_the_holder() {
        // An HTTP heartbeat for a stream whose socket holds it.
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        match decision(apply(&mut s, acq("a", 1), at(1))) {
            Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h1")), None)),
            d => panic!("{d:?}"),
        }
        assert_eq!(s.leases[0].holder, Some(holder("h1")));
    }

    #[test]
    fn a_refused_renewal_keeps_the_holder() {
        let rules = [tv(1)];
        let mut s = UserState::default();
        let on = |stream: &str, class: &str, h: &str| {
            let a = Acquire::on_test(stream, 4, &rules, Some(class), None, None);
            Op::Acquire(Acquire { holder: Some(holder(h)), ..a })
        };
        apply(&mut s, on("tv1", "tv", "h1"), T0);
        apply(&mut s, on("m1", "mobile", "h2"), at(1));
        let before = s.clone();
        assert!(matches!(decision(apply(&mut s, on("m1", "tv", "h3"), at(2))), Decision::Denied(_)));
        assert_eq!(s, before);
    }

    #[test]
    fn a_held_release_frees_the_seat_only_for_the_current_holder() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        apply(&mut s, held_by("a", 1, "h2"), at(1));
        // The replaced socket closes: nothing changes, nothing is written.
        let before = s.clone();
        let stale = Op::ReleaseHeld { stream: sid("a"), holder: holder("h1") };
        assert_eq!(apply(&mut s, stale, at(2)), Outcome { reply: Reply::Done, writes: vec![], expired: 0 });
        assert_eq!(s, before);
        // Nor for a stream that has no lease, or one nobody holds.
        apply(&mut s, acq("b", 2), at(3));
        let before = s.clone();
        for stream in ["b", "none"] {
            let o = apply(&mut s, Op::ReleaseHeld { stream: sid(stream), holder: holder("h2") }, at(4));
            assert_eq!((o.reply, o.writes), (Reply::Done, vec![]), "{stream}");
        }
        assert_eq!(s, before);
        // The current socket frees it, leaving no tombstone, once.
        let current = || Op::ReleaseHeld { stream: sid("a"), holder: holder("h2") };
        assert_eq!(apply(&mut s, current(), at(5)).writes, vec![Write::DeleteLease(sid("a"))]);
        assert_eq!(apply(&mut s, current(), at(6)).writes, vec![]);
        assert!(s.tombstones.is_empty());
        assert_eq!(ids(&s.live(at(6))), ["b"]);
    }

    #[test]
    fn a_held_release_still_drops_what_has_expired() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        let o = apply(&mut s, Op::ReleaseHeld { stream: sid("a"), holder: holder("h2") }, at(60_000));
        assert_eq!((o.writes, o.expired), (vec![Write::DeleteLease(sid("a"))], 1));
        assert!(s.is_empty());
    }

    #[test]
    fn a_plain_release_frees_the_seat_whoever_holds_it() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 1, "h1"), T0);
        assert_eq!(apply(&mut s, Op::Release(sid("a")), at(1)).writes, vec![Write::DeleteLease(sid("a"))]);
        assert!(s.is_empty());
    }

    #[test]
    fn evictions_and_revocations_report_the_holders() {
        let mut s = UserState::default();
        apply(&mut s, held_by("a", 2, "h1"), T0);
        apply(&mut s, acq("b", 2), at(1));
        let evicting = Op::Acquire(Acquire { on_limit: OnLimit::EvictOldest, ..req("c", 2) });
        match decision(apply(&mut s, evicting, at(2))) {
            Decision::Granted(g) => {
                assert_eq!(ids(&g.evicted), ["a"]);
                assert_eq!(g.evicted[0].holder, Some(holder("h1")));
            }
            d => panic!("{d:?}"),
        }
        apply(&mut s, held_by("b", 2, "h2"), at(3));
        let o = apply(&mut s, Op::RevokeAll { ttl: Ttl::from_secs(30).unwrap() }, at(4));
        let Reply::Revoked(revoked) = o.reply else { panic!("{:?}", o.reply) };
        let holders: Vec<_> = revoked.iter().map(|l| (l.stream_id.as_str(), l.holder.clone())).collect();
        assert_eq!(holders, [("b", Some(holder("h2"))), ("c", None)]);
        // A revoked stream's socket comes back to a tombstone, holder or not.
        assert!(matches!(decision(apply(&mut s, held_by("b", 2, "h2"), at(5))), Decision::Gone(_)));
    }
}
