//! Model-based tests: random sequences of acquire (with every policy),
//! release, revoke-all, override changes, reads and clock advances run
//! against [`apply`] and against a deliberately naive reference model built
//! on plain maps. Replies must agree step by step, the `Write`s must replay
//! to the same state, and no enforced grant may leave more than the
//! effective limit live.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// The reference. Times are ms; every map is keyed by stream name.
#[derive(Default)]
struct Model {
    /// stream -> (started_at, expires_at)
    leases: BTreeMap<String, (i64, i64)>,
    /// stream -> (evicted by, or None when revoked; until)
    tombs: BTreeMap<String, (Option<String>, i64)>,
    limit_override: Option<u32>,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Granted { started: i64, expires: i64, active: u32, limit: u32, evicted: Vec<String>, would: (bool, Vec<String>) },
    Renewed { started: i64, expires: i64, active: u32, limit: u32 },
    Denied { limit: u32, live: Vec<String> },
    Gone { by: Option<String>, until: i64 },
    Done,
    Revoked(Vec<String>),
    Listed { limit: u32, live: Vec<String> },
    Limit { limit: u32, overridden: bool },
}

struct Req {
    stream: String,
    limit: u32,
    ttl: i64,
    evict_oldest: bool,
    evict: Vec<String>,
    enforce: bool,
}

impl Model {
    fn live(&self, now: i64) -> Vec<String> {
        let mut v: Vec<(i64, String)> =
            self.leases.iter().filter(|(_, t)| now < t.1).map(|(k, t)| (t.0, k.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    fn effective(&self, limit: u32) -> u32 {
        self.limit_override.unwrap_or(limit)
    }

    fn kill(&mut self, stream: &str, by: Option<String>, ttl: i64) {
        let (_, expires) = self.leases.remove(stream).unwrap();
        self.tombs.insert(stream.to_owned(), (by, expires + ttl));
    }

    fn acquire(&mut self, r: &Req, now: i64) -> Seen {
        if let Some((by, until)) = self.tombs.get(&r.stream).filter(|t| now < t.1) {
            return Seen::Gone { by: by.clone(), until: *until };
        }
        let limit = self.effective(r.limit);
        let live = self.live(now);
        if live.contains(&r.stream) {
            let started = self.leases[&r.stream].0;
            self.leases.insert(r.stream.clone(), (started, now + r.ttl));
            return Seen::Renewed { started, expires: now + r.ttl, active: live.len() as u32, limit };
        }
        let n = live.len() as u32;
        let victims = if !r.evict.is_empty() {
            let named: Vec<String> = live.iter().filter(|s| r.evict.contains(s)).cloned().collect();
            (n - (named.len() as u32) < limit).then_some(named)
        } else if n < limit {
            Some(vec![])
        } else if r.evict_oldest && n == limit && limit > 0 {
            Some(vec![live[0].clone()])
        } else {
            None
        };
        let (evicted, would) = match victims {
            None if r.enforce => return Seen::Denied { limit, live },
            None => (vec![], (true, vec![])),
            Some(v) if r.enforce => (v, (false, vec![])),
            Some(v) => (vec![], (false, v)),
        };
        for v in &evicted {
            self.kill(v, Some(r.stream.clone()), r.ttl);
        }
        self.leases.insert(r.stream.clone(), (now, now + r.ttl));
        let active = self.live(now).len() as u32;
        Seen::Granted { started: now, expires: now + r.ttl, active, limit, evicted, would }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Acquire { stream: u8, evict_oldest: bool, evict: Vec<u8>, enforce: bool },
    Release(u8),
    RevokeAll,
    SetOverride(Option<u32>),
    List,
    GetLimit,
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..8, any::<bool>(), prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(0u8..10, 1..3)],
              prop::bool::weighted(0.85))
            .prop_map(|(stream, evict_oldest, evict, enforce)| Step::Acquire { stream, evict_oldest, evict, enforce }),
        2 => (0u8..8).prop_map(Step::Release),
        1 => Just(Step::RevokeAll),
        1 => prop::option::of(0u32..5).prop_map(Step::SetOverride),
        1 => Just(Step::List),
        1 => Just(Step::GetLimit),
        // Small and large jumps, so leases and tombstones both survive and expire.
        3 => prop_oneof![0u32..2_000, 0u32..150_000].prop_map(Step::Advance),
    ]
}

fn names(v: &[Lease]) -> Vec<String> {
    v.iter().map(|l| l.stream_id.to_string()).collect()
}

fn seen(reply: Reply) -> Seen {
    match reply {
        Reply::Decision(Decision::Granted(g)) => Seen::Granted {
            started: g.lease.started_at.as_millis(),
            expires: g.lease.expires_at.as_millis(),
            active: g.active_streams,
            limit: g.limit.get(),
            evicted: names(&g.evicted),
            would: (g.would_deny, g.would_evict.iter().map(ToString::to_string).collect()),
        },
        Reply::Decision(Decision::Renewed(g)) => {
            assert!(g.evicted.is_empty() && !g.would_deny && g.would_evict.is_empty());
            Seen::Renewed {
                started: g.lease.started_at.as_millis(),
                expires: g.lease.expires_at.as_millis(),
                active: g.active_streams,
                limit: g.limit.get(),
            }
        }
        Reply::Decision(Decision::Denied(d)) => Seen::Denied { limit: d.limit.get(), live: names(&d.live) },
        Reply::Decision(Decision::Gone(t)) => Seen::Gone {
            by: match t.reason {
                RevokeReason::EvictedBy(s) => Some(s.to_string()),
                RevokeReason::Revoked => None,
            },
            until: t.until.as_millis(),
        },
        Reply::Done => Seen::Done,
        Reply::Revoked(v) => Seen::Revoked(v.iter().map(ToString::to_string).collect()),
        Reply::Leases { limit, live } => Seen::Listed { limit: limit.get(), live: names(&live) },
        Reply::Limit { limit, source } => {
            Seen::Limit { limit: limit.get(), overridden: source == LimitSource::Override }
        }
    }
}

/// What a store holds after replaying writes.
#[derive(Default, Debug, PartialEq)]
struct Persisted {
    leases: BTreeMap<StreamId, Lease>,
    tombs: BTreeMap<StreamId, Tombstone>,
    limit_override: Option<Limit>,
}

impl Persisted {
    fn replay(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::PutLease(l) => {
                    self.leases.insert(l.stream_id.clone(), l);
                }
                Write::DeleteLease(s) => {
                    self.leases.remove(&s);
                }
                Write::PutTombstone(t) => {
                    self.tombs.insert(t.stream_id.clone(), t);
                }
                Write::DeleteTombstone(s) => {
                    self.tombs.remove(&s);
                }
                Write::SetOverride(o) => self.limit_override = o,
            }
        }
    }

    fn of(state: &UserState) -> Self {
        Self {
            leases: state.leases().iter().map(|l| (l.stream_id.clone(), l.clone())).collect(),
            tombs: state.tombstones().iter().map(|t| (t.stream_id.clone(), t.clone())).collect(),
            limit_override: state.limit_override(),
        }
    }
}

fn sid(i: u8) -> String {
    format!("s{i}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn rules_match_the_reference_model(
        limit in 0u32..5,
        ttl_secs in 1u32..90,
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let limit_v = Limit::new(limit).unwrap();
        let ttl = Ttl::from_secs(ttl_secs).unwrap();
        let mut now = 1_700_000_000_000i64;
        let mut state = UserState::default();
        let mut model = Model::default();
        let mut persisted = Persisted::default();

        for step in steps {
            let t = Timestamp::from_millis(now);
            let (op, expected) = match step {
                Step::Advance(ms) => { now += i64::from(ms); continue; }
                Step::Acquire { stream, evict_oldest, evict, enforce } => {
                    let r = Req {
                        stream: sid(stream), limit, ttl: ttl.as_millis(), evict_oldest,
                        evict: evict.iter().map(|&i| sid(i)).collect(), enforce,
                    };
                    let op = Op::Acquire(Acquire {
                        stream_id: StreamId::new(&r.stream).unwrap(),
                        device_id: None, content_id: None, device_class: None, content_kind: None, plan: None,
                        limit: limit_v, rules: Default::default(), ttl,
                        on_limit: if evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject },
                        evict: r.evict.iter().map(|s| StreamId::new(s).unwrap()).collect(),
                        enforce,
                    });
                    (op, model.acquire(&r, now))
                }
                Step::Release(i) => {
                    model.leases.remove(&sid(i));
                    (Op::Release(StreamId::new(&sid(i)).unwrap()), Seen::Done)
                }
                Step::RevokeAll => {
                    let live = model.live(now);
                    for s in &live {
                        model.kill(s, None, ttl.as_millis());
                    }
                    (Op::RevokeAll { ttl }, Seen::Revoked(live))
                }
                Step::SetOverride(o) => {
                    model.limit_override = o;
                    let expected = match o {
                        Some(l) => Seen::Limit { limit: l, overridden: true },
                        None => Seen::Done,
                    };
                    (Op::SetOverride(o.map(|l| Limit::new(l).unwrap())), expected)
                }
                Step::List => (
                    Op::List { limit: limit_v },
                    Seen::Listed { limit: model.effective(limit), live: model.live(now) },
                ),
                Step::GetLimit => (
                    Op::GetLimit { fallback: limit_v, source: LimitSource::Plan },
                    Seen::Limit { limit: model.effective(limit), overridden: model.limit_override.is_some() },
                ),
            };
            let outcome = apply(&mut state, op, t);
            persisted.replay(outcome.writes);
            let got = seen(outcome.reply);

            // Invariant: an enforced grant never leaves more than the limit live.
            if let Seen::Granted { active, limit, would: (false, ref would_evict), .. } = got
                && would_evict.is_empty()
            {
                prop_assert!(active <= limit, "{active} live > limit {limit}");
            }
            prop_assert!(state.live(t).len() as u32 == model.live(now).len() as u32);
            prop_assert_eq!(got, expected);
            // The writes describe exactly the state the rules left behind.
            prop_assert_eq!(Persisted::of(&state), std::mem::take(&mut persisted));
            persisted = Persisted::of(&state);
        }
    }

    /// With enforcement on and no override, the plain invariant holds at
    /// every instant: never more than `limit` live leases.
    #[test]
    fn never_more_than_limit_live(
        limit in 0u32..4,
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let ttl = Ttl::from_secs(30).unwrap();
        let mut state = UserState::default();
        let mut now = 0i64;
        for step in steps {
            let op = match step {
                Step::Advance(ms) => { now += i64::from(ms); continue; }
                Step::Acquire { stream, evict_oldest, evict, .. } => Op::Acquire(Acquire {
                    stream_id: StreamId::new(&sid(stream)).unwrap(),
                    device_id: None, content_id: None, device_class: None, content_kind: None, plan: None,
                    limit: Limit::new(limit).unwrap(), rules: Default::default(), ttl,
                    on_limit: if evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject },
                    evict: evict.iter().map(|&i| StreamId::new(&sid(i)).unwrap()).collect(),
                    enforce: true,
                }),
                Step::Release(i) => Op::Release(StreamId::new(&sid(i)).unwrap()),
                Step::RevokeAll => Op::RevokeAll { ttl },
                _ => continue,
            };
            let t = Timestamp::from_millis(now);
            apply(&mut state, op, t);
            prop_assert!(state.live(t).len() as u32 <= limit);
        }
    }
}
