//! Model-based tests: random sequences of acquire, release, list and clock
//! advances run against [`apply`] and against a deliberately naive reference
//! model. Decisions must agree step by step, the `Write`s must replay to the
//! same state, and no step may leave more than `limit` live leases.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// The reference: a map from stream to (started_at, expires_at) in ms.
#[derive(Default)]
struct Model {
    leases: BTreeMap<String, (i64, i64)>,
}

#[derive(Debug, PartialEq)]
enum Expected {
    Granted { started: i64, expires: i64, active: u32 },
    Renewed { started: i64, expires: i64, active: u32 },
    Denied { live: Vec<String> },
    Released,
    Listed { live: Vec<String> },
}

impl Model {
    fn live(&self, now: i64) -> Vec<String> {
        let mut v: Vec<(&(i64, i64), &String)> =
            self.leases.iter().filter(|(_, t)| now < t.1).map(|(k, t)| (t, k)).collect();
        v.sort_by_key(|(t, k)| (t.0, (*k).clone()));
        v.into_iter().map(|(_, k)| k.clone()).collect()
    }

    fn acquire(&mut self, stream: &str, limit: u32, ttl_ms: i64, now: i64) -> Expected {
        let live = self.live(now);
        if live.iter().any(|s| s == stream) {
            let started = self.leases[stream].0;
            self.leases.insert(stream.to_owned(), (started, now + ttl_ms));
            return Expected::Renewed { started, expires: now + ttl_ms, active: live.len() as u32 };
        }
        if live.len() as u32 >= limit {
            return Expected::Denied { live };
        }
        self.leases.insert(stream.to_owned(), (now, now + ttl_ms));
        Expected::Granted { started: now, expires: now + ttl_ms, active: live.len() as u32 + 1 }
    }

    fn release(&mut self, stream: &str) -> Expected {
        self.leases.remove(stream);
        Expected::Released
    }
}

#[derive(Debug, Clone)]
enum Step {
    Acquire(u8),
    Release(u8),
    List,
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u8..8).prop_map(Step::Acquire),
        2 => (0u8..8).prop_map(Step::Release),
        1 => Just(Step::List),
        // Small and large jumps, so leases both survive and expire.
        2 => prop_oneof![0u32..2_000, 0u32..120_000].prop_map(Step::Advance),
    ]
}

fn observed(reply: Reply) -> Expected {
    let names = |v: &[Lease]| v.iter().map(|l| l.stream_id.to_string()).collect();
    match reply {
        Reply::Decision(Decision::Granted(g)) => Expected::Granted {
            started: g.lease.started_at.as_millis(),
            expires: g.lease.expires_at.as_millis(),
            active: g.active_streams,
        },
        Reply::Decision(Decision::Renewed(g)) => Expected::Renewed {
            started: g.lease.started_at.as_millis(),
            expires: g.lease.expires_at.as_millis(),
            active: g.active_streams,
        },
        Reply::Decision(Decision::Denied(d)) => Expected::Denied { live: names(&d.live) },
        Reply::Released => Expected::Released,
        Reply::Leases { live, .. } => Expected::Listed { live: names(&live) },
    }
}

/// Replays writes the way a store does: a map keyed by stream.
fn replay(persisted: &mut BTreeMap<StreamId, Lease>, writes: Vec<Write>) {
    for w in writes {
        match w {
            Write::Put(l) => {
                persisted.insert(l.stream_id.clone(), l);
            }
            Write::Delete(s) => {
                persisted.remove(&s);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rules_match_the_reference_model(
        limit in 0u32..5,
        ttl_secs in 1u32..90,
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let limit_v = Limit::new(limit).unwrap();
        let ttl = Ttl::from_secs(ttl_secs).unwrap();
        let mut now = 1_700_000_000_000i64;
        let mut state = UserState::default();
        let mut model = Model::default();
        let mut persisted = BTreeMap::new();

        for step in steps {
            let t = Timestamp::from_millis(now);
            let (op, expected) = match step {
                Step::Advance(ms) => { now += i64::from(ms); continue; }
                Step::Acquire(i) => {
                    let name = format!("s{i}");
                    let op = Op::Acquire(Acquire {
                        stream_id: StreamId::new(&name).unwrap(),
                        device_id: None, content_id: None, limit: limit_v, ttl,
                    });
                    (op, model.acquire(&name, limit, ttl.as_millis(), now))
                }
                Step::Release(i) => {
                    let name = format!("s{i}");
                    (Op::Release(StreamId::new(&name).unwrap()), model.release(&name))
                }
                Step::List => (Op::List { limit: limit_v }, Expected::Listed { live: model.live(now) }),
            };
            let outcome = apply(&mut state, op, t);
            replay(&mut persisted, outcome.writes);
            prop_assert_eq!(observed(outcome.reply), expected);

            // Invariant: never more than `limit` live leases.
            let live = state.live(t);
            prop_assert!(live.len() as u32 <= limit, "{} live > limit {}", live.len(), limit);
            // The writes describe exactly the state the rules left behind.
            let mut mine: Vec<Lease> = state.leases().to_vec();
            mine.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            let theirs: Vec<Lease> = persisted.values().cloned().collect();
            prop_assert_eq!(mine, theirs);
        }
    }
}
