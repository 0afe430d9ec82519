//! Model-based tests: random sequences of acquire (with every policy,
//! random device classes, content kinds and titles under a random rule
//! set, and random holders), release, held release, revoke-all, revoke of
//! one stream, override changes (for good or until a time), reads and
//! clock advances run against [`apply`] and against a
//! deliberately naive reference model built on plain maps. Replies must
//! agree step by step, the `Write`s must replay to the same state, a held
//! release that frees nothing writes nothing but expiry, and no enforced
//! grant may leave any scope over its limit.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// A stream's device class, content kind and title, each 0 when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Traits {
    class: u8,
    kind: u8,
    title: u8,
}

/// A rule of the model: `class` and `kind` 0 match anything.
#[derive(Clone, Debug)]
struct MRule {
    class: u8,
    kind: u8,
    per_title: bool,
    limit: u32,
    exempt: bool,
}

impl MRule {
    fn matches(&self, t: Traits) -> bool {
        (self.class == 0 || self.class == t.class) && (self.kind == 0 || self.kind == t.kind)
    }
}

/// A plan of the model: its limit, its rules and whether it evicts the
/// oldest.
type MPlan = (u32, Vec<MRule>, bool);

/// The reference. Times are ms; every map is keyed by stream name.
#[derive(Default)]
struct Model {
    /// The default rules, and plans 1 and 2.
    default_rules: Vec<MRule>,
    plans: Vec<MPlan>,
    /// The rules and the limit (before an override) that apply to the
    /// request at hand.
    rules: Vec<MRule>,
    base: u32,
    /// stream -> (started_at, expires_at, traits, plan or 0, holder or 0)
    leases: BTreeMap<String, (i64, i64, Traits, u8, u8)>,
    /// stream -> (evicted by, or None when revoked; until)
    tombs: BTreeMap<String, (Option<String>, i64)>,
    /// The override and when it ends (ms), if it does.
    limit_override: Option<(u32, Option<i64>)>,
    /// The time of the step at hand (ms).
    now: i64,
}

/// A rule by its index in the set that applies, or `None` for the total.
type Hit = Option<usize>;

/// The rule that refused, by index and limit, or `None` for the total.
type Named = Option<(usize, u32)>;

/// A lease as a reply shows it: its stream and its holder (0 for none).
type Held = (String, u8);

#[derive(Debug, PartialEq)]
enum Seen {
    Granted {
        started: i64,
        expires: i64,
        active: u32,
        limit: u32,
        evicted: Vec<Held>,
        would: (Option<Named>, Vec<String>),
        plan: u8,
        holder: u8,
    },
    Renewed {
        started: i64,
        expires: i64,
        active: u32,
        limit: u32,
        traits: Traits,
        would: Option<Named>,
        plan: u8,
        holder: u8,
        replaced: u8,
    },
    NotHeld,
    Denied {
        limit: u32,
        rule: Named,
        live: Vec<Held>,
    },
    Gone {
        by: Option<String>,
        until: i64,
    },
    Done,
    Revoked(Vec<Held>),
    Listed {
        limit: u32,
        live: Vec<Held>,
        /// Live tombstones: stream and until (ms), by stream.
        tombs: Vec<(String, i64)>,
    },
    Limit {
        limit: u32,
        overridden: bool,
        until: Option<i64>,
    },
}

struct Req {
    stream: String,
    traits: Traits,
    /// A named plan (1 or 2), or 0.
    plan: u8,
    /// With no plan named, the plans are passed for the lease's own or the
    /// newest lease's plan to apply.
    sticky: bool,
    held: bool,
    /// The socket that asks, or 0.
    holder: u8,
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

    /// `streams` with their holders.
    fn held(&self, streams: Vec<String>) -> Vec<Held> {
        streams.into_iter().map(|s| (s.clone(), self.leases[&s].4)).collect()
    }

    /// The override, if it counts now.
    fn counting(&self) -> Option<(u32, Option<i64>)> {
        self.limit_override.filter(|(_, until)| until.is_none_or(|u| self.now < u))
    }

    fn effective(&self, limit: u32) -> u32 {
        self.counting().map_or(limit, |(l, _)| l)
    }

    fn live_tombs(&self, now: i64) -> Vec<(String, i64)> {
        self.tombs.iter().filter(|(_, t)| now < t.1).map(|(k, t)| (k.clone(), t.1)).collect()
    }

    fn kill(&mut self, stream: &str, by: Option<String>, ttl: i64) {
        let (_, expires, _, _, _) = self.leases.remove(stream).unwrap();
        self.tombs.insert(stream.to_owned(), (by, expires + ttl));
    }

    fn exempt(&self, t: Traits) -> bool {
        self.rules.iter().any(|r| r.exempt && r.matches(t))
    }

    /// Whether a stream with traits `t` is in the scope `(rule, title)`.
    fn within(&self, scope: (Hit, u8), t: Traits) -> bool {
        match scope {
            (Some(i), title) => self.rules[i].matches(t) && (!self.rules[i].per_title || t.title == title),
            (None, _) => !self.exempt(t),
        }
    }

    /// The scopes of a stream with traits `t`, in checking order.
    fn scopes(&self, t: Traits) -> Vec<(Hit, u8)> {
        let mut v = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.matches(t) && !(r.per_title && t.title == 0) {
                v.push((Some(i), t.title));
            }
        }
        if !self.exempt(t) {
            v.push((None, 0));
        }
        v
    }

    fn named(&self, rule: Hit) -> Named {
        rule.map(|i| (i, self.rules[i].limit))
    }

    fn cap(&self, scope: (Hit, u8), total: u32) -> u32 {
        scope.0.map_or(total, |i| self.rules[i].limit)
    }

    /// The live streams of `scope` other than `but`, oldest first.
    fn members(&self, scope: (Hit, u8), live: &[String], but: &[String]) -> Vec<String> {
        live.iter().filter(|s| !but.contains(s) && self.within(scope, self.leases[*s].2)).cloned().collect()
    }

    fn acquire(&mut self, r: &Req, now: i64) -> Seen {
        if let Some((by, until)) = self.tombs.get(&r.stream).filter(|t| now < t.1) {
            return Seen::Gone { by: by.clone(), until: *until };
        }
        let live = self.live(now);
        let mut plan = r.plan;
        if plan == 0 && r.sticky {
            let source = if live.contains(&r.stream) { Some(&r.stream) } else { live.last() };
            plan = source.map_or(0, |s| self.leases[s].3);
        }
        let (base, rules, evict_oldest) = if plan == 0 {
            (r.limit, self.default_rules.clone(), r.evict_oldest)
        } else {
            self.plans[plan as usize - 1].clone()
        };
        (self.rules, self.base) = (rules, base);
        let limit = self.effective(base);
        if live.contains(&r.stream) {
            let (started, _, old, old_plan, old_holder) = self.leases[&r.stream];
            let plan = if plan == 0 { old_plan } else { plan };
            let new = Traits {
                class: if r.traits.class == 0 { old.class } else { r.traits.class },
                kind: if r.traits.kind == 0 { old.kind } else { r.traits.kind },
                title: if r.traits.title == 0 { old.title } else { r.traits.title },
            };
            let mut would = None;
            if new != old {
                let me = std::slice::from_ref(&r.stream);
                for scope in self.scopes(new) {
                    let others = self.members(scope, &live, me);
                    if !self.within(scope, old) && others.len() as u32 >= self.cap(scope, limit) {
                        if r.enforce {
                            return Seen::Denied { limit, rule: self.named(scope.0), live: self.held(others) };
                        }
                        would = Some(self.named(scope.0));
                        break;
                    }
                }
            }
            let holder = if r.holder == 0 { old_holder } else { r.holder };
            let replaced = if r.holder != 0 && old_holder != 0 && r.holder != old_holder { old_holder } else { 0 };
            self.leases.insert(r.stream.clone(), (started, now + r.ttl, new, plan, holder));
            let active = live.len() as u32;
            let expires = now + r.ttl;
            return Seen::Renewed { started, expires, active, limit, traits: new, would, plan, holder, replaced };
        }
        if r.held {
            return Seen::NotHeld;
        }
        let scopes = self.scopes(r.traits);
        let full = |m: &Model, but: &[String]| {
            scopes.iter().copied().find(|&s| m.members(s, &live, but).len() as u32 >= m.cap(s, limit))
        };
        let victims: Result<Vec<String>, (Hit, u8)> = if !r.evict.is_empty() {
            let named: Vec<String> = live.iter().filter(|s| r.evict.contains(s)).cloned().collect();
            match full(self, &named) {
                Some(s) => Err(s),
                None => Ok(named),
            }
        } else if full(self, &[]).is_none() {
            Ok(vec![])
        } else if evict_oldest {
            let mut v: Vec<String> = Vec::new();
            let mut blocked = None;
            for &s in &scopes {
                let m = self.members(s, &live, &v);
                let cap = self.cap(s, limit) as usize;
                if m.len() == cap && cap > 0 {
                    v.push(m[0].clone());
                } else if m.len() >= cap {
                    blocked = Some(s);
                    break;
                }
            }
            match blocked {
                Some(s) => Err(s),
                None => Ok(live.iter().filter(|s| v.contains(s)).cloned().collect()),
            }
        } else {
            Err(full(self, &[]).unwrap())
        };
        let (evicted, would) = match victims {
            Err(s) if r.enforce => {
                let live = self.held(self.members(s, &live, &[]));
                return Seen::Denied { limit, rule: self.named(s.0), live };
            }
            Err(s) => (vec![], (Some(self.named(s.0)), vec![])),
            Ok(v) if r.enforce => (v, (None, vec![])),
            Ok(v) => (vec![], (None, v)),
        };
        let evicted = self.held(evicted);
        for (v, _) in &evicted {
            self.kill(v, Some(r.stream.clone()), r.ttl);
        }
        self.leases.insert(r.stream.clone(), (now, now + r.ttl, r.traits, plan, r.holder));
        let active = self.live(now).len() as u32;
        Seen::Granted { started: now, expires: now + r.ttl, active, limit, evicted, would, plan, holder: r.holder }
    }

    /// Frees `stream` if `holder` holds its live lease; says whether it did.
    fn release_held(&mut self, stream: &str, holder: u8, now: i64) -> bool {
        let held = self.leases.get(stream).is_some_and(|l| now < l.1 && l.4 == holder);
        if held {
            self.leases.remove(stream);
        }
        held
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// `plan`: 0 names none, 1 names none but passes the plans (sticky),
    /// 2 and 3 name plan 1 and 2. `holder`: 0 is none (an HTTP request),
    /// else the socket `h{holder}`.
    Acquire {
        stream: u8,
        traits: Traits,
        plan: u8,
        held: bool,
        holder: u8,
        evict_oldest: bool,
        evict: Vec<u8>,
        enforce: bool,
    },
    Release(u8),
    /// The socket `h{holder}` (1..) releases the stream.
    ReleaseHeld(u8, u8),
    RevokeAll,
    Revoke(u8),
    /// A limit, and when it ends: this many ms from now, if it does.
    SetOverride(Option<(u32, Option<u32>)>),
    List,
    GetLimit,
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => ((0u8..8, traits(), 0u8..4, prop::bool::weighted(0.15)), any::<bool>(),
              prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(0u8..10, 1..3)], prop::bool::weighted(0.85),
              holder())
            .prop_map(|((stream, traits, plan, held), evict_oldest, evict, enforce, holder)| {
                Step::Acquire { stream, traits, plan, held, holder, evict_oldest, evict, enforce }
            }),
        2 => (0u8..8).prop_map(Step::Release),
        2 => (0u8..8, 1u8..4).prop_map(|(stream, holder)| Step::ReleaseHeld(stream, holder)),
        1 => Just(Step::RevokeAll),
        1 => (0u8..8).prop_map(Step::Revoke),
        1 => prop::option::of((0u32..5, prop::option::of(1u32..100_000))).prop_map(Step::SetOverride),
        1 => Just(Step::List),
        1 => Just(Step::GetLimit),
        // Small and large jumps, so leases and tombstones both survive and expire.
        3 => prop_oneof![0u32..2_000, 0u32..150_000].prop_map(Step::Advance),
    ]
}

/// No holder half the time (HTTP), else one of three sockets, so that
/// renewals by the same socket, by another one and by none all happen.
fn holder() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 1 => 1u8..4]
}

fn holder_of(n: u8) -> Option<Holder> {
    (n > 0).then(|| Holder::new(&format!("h{n}")).unwrap())
}

fn holder_number(h: &Option<Holder>) -> u8 {
    h.as_ref().map_or(0, |h| h.as_str().strip_prefix('h').unwrap().parse().unwrap())
}

/// Two device classes, two content kinds and two titles, each often absent.
fn traits() -> impl Strategy<Value = Traits> {
    (0u8..3, 0u8..3, 0u8..3).prop_map(|(class, kind, title)| Traits { class, kind, title })
}

/// Up to four rules with small limits, so that they bind often.
fn rules() -> impl Strategy<Value = Vec<MRule>> {
    let rule = (0u8..3, 0u8..3, prop::bool::weighted(0.3), 0u32..3, prop::bool::weighted(0.2))
        .prop_map(|(class, kind, per_title, limit, exempt)| MRule { class, kind, per_title, limit, exempt });
    prop_oneof![1 => Just(vec![]), 3 => prop::collection::vec(rule, 1..5)]
}

fn label_of(prefix: &str, n: u8) -> Option<Label> {
    (n > 0).then(|| Label::new(&format!("{prefix}{n}")).unwrap())
}

fn number(prefix: &str, l: &Option<Label>) -> u8 {
    l.as_ref().map_or(0, |l| l.as_str().strip_prefix(prefix).unwrap().parse().unwrap())
}

fn plan_of(l: &Lease) -> u8 {
    number("plan", &l.plan)
}

fn traits_of(l: &Lease) -> Traits {
    Traits {
        class: number("class", &l.device_class),
        kind: number("kind", &l.content_kind),
        title: number("title", &l.content_id),
    }
}

/// The set of [`Rule`]s the model's rules stand for; rule `i` is named `r{i}`.
fn real_rules(rules: &[MRule]) -> Arc<[Rule]> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            name: Label::new(&format!("r{i}")).unwrap(),
            device_class: label_of("class", r.class),
            content_kind: label_of("kind", r.kind),
            per_content: r.per_title,
            limit: Limit::new(r.limit).unwrap(),
            exempt: r.exempt,
        })
        .collect()
}

fn hit(rule: Option<RuleHit>) -> Named {
    rule.map(|h| (h.name.as_str().strip_prefix('r').unwrap().parse().unwrap(), h.limit.get()))
}

fn held(v: &[Lease]) -> Vec<Held> {
    v.iter().map(|l| (l.stream_id.to_string(), holder_number(&l.holder))).collect()
}

fn seen(reply: Reply) -> Seen {
    match reply {
        Reply::Decision(Decision::Granted(g)) => {
            assert!(g.would_deny || g.would_deny_rule.is_none());
            assert_eq!(g.replaced, None, "a new lease replaces no holder");
            Seen::Granted {
                started: g.lease.started_at.as_millis(),
                expires: g.lease.expires_at.as_millis(),
                active: g.active_streams,
                limit: g.limit.get(),
                evicted: held(&g.evicted),
                would: (
                    g.would_deny.then(|| hit(g.would_deny_rule)),
                    g.would_evict.iter().map(ToString::to_string).collect(),
                ),
                plan: plan_of(&g.lease),
                holder: holder_number(&g.lease.holder),
            }
        }
        Reply::Decision(Decision::Renewed(g)) => {
            assert!(g.evicted.is_empty() && g.would_evict.is_empty());
            Seen::Renewed {
                started: g.lease.started_at.as_millis(),
                expires: g.lease.expires_at.as_millis(),
                active: g.active_streams,
                limit: g.limit.get(),
                traits: traits_of(&g.lease),
                would: g.would_deny.then(|| hit(g.would_deny_rule)),
                plan: plan_of(&g.lease),
                holder: holder_number(&g.lease.holder),
                replaced: holder_number(&g.replaced),
            }
        }
        Reply::Decision(Decision::Denied(d)) => {
            Seen::Denied { limit: d.limit.get(), rule: hit(d.rule), live: held(&d.live) }
        }
        Reply::Decision(Decision::NotHeld) => Seen::NotHeld,
        Reply::Decision(Decision::Gone(t)) => Seen::Gone {
            by: match t.reason {
                RevokeReason::EvictedBy(s) => Some(s.to_string()),
                RevokeReason::Revoked => None,
            },
            until: t.until.as_millis(),
        },
        Reply::Done => Seen::Done,
        Reply::Revoked(v) => Seen::Revoked(held(&v)),
        Reply::Leases { limit, live, tombstones } => Seen::Listed {
            limit: limit.get(),
            live: held(&live),
            tombs: tombstones.iter().map(|t| (t.stream_id.to_string(), t.until.as_millis())).collect(),
        },
        Reply::Limit { limit, source, expires_at } => Seen::Limit {
            limit: limit.get(),
            overridden: source == LimitSource::Override,
            until: expires_at.map(Timestamp::as_millis),
        },
    }
}

/// What a store holds after replaying writes.
#[derive(Default, Debug, PartialEq)]
struct Persisted {
    leases: BTreeMap<StreamId, Lease>,
    tombs: BTreeMap<StreamId, Tombstone>,
    limit_override: Option<Override>,
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
        model_rules in rules(),
        model_plans in prop::collection::vec((0u32..5, rules(), any::<bool>()), 2),
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let limit_v = Limit::new(limit).unwrap();
        let ttl = Ttl::from_secs(ttl_secs).unwrap();
        let rules = real_rules(&model_rules);
        let terms = |(limit, rules, evict_oldest): &MPlan| Terms {
            limit: Limit::new(*limit).unwrap(),
            on_limit: if *evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject },
            rules: real_rules(rules),
        };
        let plans: Arc<Plans> =
            Arc::new(model_plans.iter().enumerate().map(|(i, p)| (label_of("plan", i as u8 + 1).unwrap(), terms(p))).collect());
        let mut now = 1_700_000_000_000i64;
        let mut state = UserState::default();
        let mut model = Model { default_rules: model_rules, plans: model_plans.clone(), ..Model::default() };
        let mut persisted = Persisted::default();

        for step in steps {
            let step_copy = step.clone();
            let t = Timestamp::from_millis(now);
            model.now = now;
            // What expiry alone would write now: all that a held release
            // that frees nothing may write.
            let expiry = expire(&mut state.clone(), t);
            let mut frees_nothing = false;
            let (op, expected) = match step {
                Step::Advance(ms) => { now += i64::from(ms); continue; }
                Step::Acquire { stream, traits, plan, held, holder, evict_oldest, evict, enforce } => {
                    let named = plan.saturating_sub(1);
                    let r = Req {
                        stream: sid(stream), traits, plan: named, sticky: plan == 1, held, holder, limit,
                        ttl: ttl.as_millis(), evict_oldest, evict: evict.iter().map(|&i| sid(i)).collect(), enforce,
                    };
                    let on_limit = if evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject };
                    let resolved = match named {
                        0 => Terms { limit: limit_v, on_limit, rules: rules.clone() },
                        p => terms(&model_plans[p as usize - 1]),
                    };
                    let op = Op::Acquire(Acquire {
                        stream_id: StreamId::new(&r.stream).unwrap(),
                        device_id: None,
                        content_id: label_of("title", traits.title),
                        device_class: label_of("class", traits.class),
                        content_kind: label_of("kind", traits.kind),
                        plan: label_of("plan", named),
                        limit: resolved.limit, rules: resolved.rules, ttl,
                        on_limit: resolved.on_limit,
                        evict: r.evict.iter().map(|s| StreamId::new(s).unwrap()).collect(),
                        enforce,
                        plans: r.sticky.then(|| plans.clone()),
                        held,
                        holder: holder_of(holder),
                    });
                    (op, model.acquire(&r, now))
                }
                Step::Release(i) => {
                    model.leases.remove(&sid(i));
                    (Op::Release(StreamId::new(&sid(i)).unwrap()), Seen::Done)
                }
                Step::ReleaseHeld(i, h) => {
                    frees_nothing = !model.release_held(&sid(i), h, now);
                    let op = Op::ReleaseHeld { stream: StreamId::new(&sid(i)).unwrap(), holder: holder_of(h).unwrap() };
                    (op, Seen::Done)
                }
                Step::RevokeAll => {
                    let live = model.held(model.live(now));
                    for (s, _) in &live {
                        model.kill(s, None, ttl.as_millis());
                    }
                    (Op::RevokeAll { ttl }, Seen::Revoked(live))
                }
                Step::Revoke(i) => {
                    let live = model.live(now).contains(&sid(i));
                    let revoked = if live { model.held(vec![sid(i)]) } else { vec![] };
                    if live {
                        model.kill(&sid(i), None, ttl.as_millis());
                    }
                    (Op::Revoke { stream: StreamId::new(&sid(i)).unwrap(), ttl }, Seen::Revoked(revoked))
                }
                Step::SetOverride(o) => {
                    let o = o.map(|(l, ahead)| (l, ahead.map(|ms| now + i64::from(ms))));
                    model.limit_override = o;
                    let expected = match o {
                        Some((l, until)) => Seen::Limit { limit: l, overridden: true, until },
                        None => Seen::Done,
                    };
                    let set = o.map(|(l, until)| Override {
                        limit: Limit::new(l).unwrap(),
                        expires_at: until.map(Timestamp::from_millis),
                    });
                    (Op::SetOverride(set), expected)
                }
                Step::List => (
                    Op::List { limit: limit_v },
                    Seen::Listed {
                        limit: model.effective(limit),
                        live: model.held(model.live(now)),
                        tombs: model.live_tombs(now),
                    },
                ),
                Step::GetLimit => (
                    Op::GetLimit { fallback: limit_v, source: LimitSource::Plan },
                    Seen::Limit {
                        limit: model.effective(limit),
                        overridden: model.counting().is_some(),
                        until: model.counting().and_then(|(_, until)| until),
                    },
                ),
            };
            let outcome = apply(&mut state, op, t);
            if frees_nothing {
                prop_assert_eq!(&outcome.writes, &expiry, "a stale or foreign held release writes nothing more");
            }
            persisted.replay(outcome.writes);
            let got = seen(outcome.reply);

            // Invariant: an enforced grant never leaves a scope of the new
            // stream over its limit.
            if let (Seen::Granted { would: (None, would_evict), .. }, Step::Acquire { stream, .. }) = (&got, &step_copy)
                && would_evict.is_empty()
            {
                let live = model.live(now);
                for scope in model.scopes(model.leases[&sid(*stream)].2) {
                    let n = model.members(scope, &live, &[]).len() as u32;
                    let cap = model.cap(scope, model.effective(model.base));
                    prop_assert!(n <= cap, "{n} live in scope {scope:?} > {cap}");
                }
            }
            prop_assert!(state.live(t).len() as u32 == model.live(now).len() as u32);
            prop_assert_eq!(got, expected);
            // The writes describe exactly the state the rules left behind.
            prop_assert_eq!(Persisted::of(&state), std::mem::take(&mut persisted));
            persisted = Persisted::of(&state);
        }
    }

    /// With enforcement on and no override, the invariant holds at every
    /// instant: no rule's scope and not the total is ever over its limit.
    #[test]
    fn never_over_any_limit(
        limit in 0u32..4,
        model_rules in rules(),
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let ttl = Ttl::from_secs(30).unwrap();
        let rules = real_rules(&model_rules);
        let mut state = UserState::default();
        let mut now = 0i64;
        for step in steps {
            let op = match step {
                Step::Advance(ms) => { now += i64::from(ms); continue; }
                Step::Acquire { stream, traits, holder, evict_oldest, evict, .. } => Op::Acquire(Acquire {
                    stream_id: StreamId::new(&sid(stream)).unwrap(),
                    device_id: None,
                    content_id: label_of("title", traits.title),
                    device_class: label_of("class", traits.class),
                    content_kind: label_of("kind", traits.kind),
                    plan: None,
                    limit: Limit::new(limit).unwrap(), rules: rules.clone(), ttl,
                    on_limit: if evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject },
                    evict: evict.iter().map(|&i| StreamId::new(&sid(i)).unwrap()).collect(),
                    enforce: true,
                    plans: None,
                    held: false,
                    holder: holder_of(holder),
                }),
                Step::Release(i) => Op::Release(StreamId::new(&sid(i)).unwrap()),
                Step::ReleaseHeld(i, h) => {
                    Op::ReleaseHeld { stream: StreamId::new(&sid(i)).unwrap(), holder: holder_of(h).unwrap() }
                }
                Step::RevokeAll => Op::RevokeAll { ttl },
                Step::Revoke(i) => Op::Revoke { stream: StreamId::new(&sid(i)).unwrap(), ttl },
                _ => continue,
            };
            let t = Timestamp::from_millis(now);
            apply(&mut state, op, t);
            let live: Vec<Traits> = state.live(t).iter().map(traits_of).collect();
            let exempt = |x: &Traits| model_rules.iter().any(|r| r.exempt && r.matches(*x));
            prop_assert!(live.iter().filter(|x| !exempt(x)).count() as u32 <= limit);
            for r in &model_rules {
                for title in 0u8..3 {
                    let n = live.iter().filter(|x| r.matches(**x) && (!r.per_title || x.title == title)).count();
                    if r.per_title && title == 0 {
                        continue;
                    }
                    prop_assert!(n as u32 <= r.limit, "{n} live under {r:?} (title {title})");
                }
            }
        }
    }
}
