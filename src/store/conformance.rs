//! The conformance suite every backend must pass. New behaviour goes here
//! first. Each backend's tests call [`suite`] with a fresh store and a
//! [`ManualClock`] the store reads, and [`differential`] with a factory.

use std::collections::HashMap;
use std::future::Future;

use proptest::prelude::*;
use tokio::task::JoinSet;

use super::Store;
use crate::clock::{Clock, ManualClock};
use crate::limiter::{self, Acquire, Decision, Label, Limit, Op, StreamId, Timestamp, Ttl, UserId, UserState};

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn req(s: &str, limit: u32, ttl: u32) -> Acquire {
    Acquire {
        stream_id: stream(s),
        device_id: None,
        content_id: None,
        limit: Limit::new(limit).unwrap(),
        ttl: Ttl::from_secs(ttl).unwrap(),
    }
}

fn names(live: &[limiter::Lease]) -> Vec<&str> {
    live.iter().map(|l| l.stream_id.as_str()).collect()
}

/// Runs every behavioural check against `store`, which must be empty and
/// read `clock`.
pub(crate) async fn suite(store: &Store, clock: &ManualClock) {
    grants_up_to_the_limit(store, clock).await;
    renews_keep_start_and_metadata(store, clock).await;
    expiry_frees_seats(store, clock).await;
    release_is_idempotent(store).await;
    users_are_independent(store).await;
    sweep_removes_only_expired(store, clock).await;
    concurrent_acquires_grant_exactly_the_limit(store).await;
}

async fn grants_up_to_the_limit(store: &Store, clock: &ManualClock) {
    let u = user("limit-user");
    for (i, s) in ["a", "b", "c"].into_iter().enumerate() {
        match store.acquire(&u, req(s, 3, 60)).await.unwrap() {
            Decision::Granted(g) => assert_eq!(g.active_streams as usize, i + 1),
            d => panic!("{s}: {d:?}"),
        }
        clock.advance_ms(1);
    }
    match store.acquire(&u, req("d", 3, 60)).await.unwrap() {
        Decision::Denied(d) => {
            assert_eq!(names(&d.live), ["a", "b", "c"]);
            assert_eq!(d.limit.get(), 3);
        }
        d => panic!("{d:?}"),
    }
    let (limit, live) = store.list(&u, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!(limit.get(), 3);
    assert_eq!(names(&live), ["a", "b", "c"], "oldest first");
}

async fn renews_keep_start_and_metadata(store: &Store, clock: &ManualClock) {
    let u = user("renew-user");
    let mut first = req("s", 1, 30);
    first.device_id = Some(Label::new("tv").unwrap());
    let Decision::Granted(g) = store.acquire(&u, first).await.unwrap() else { panic!("not granted") };
    clock.advance_ms(10_000);
    let now = clock.now().as_millis();
    match store.acquire(&u, req("s", 1, 30)).await.unwrap() {
        Decision::Renewed(r) => {
            assert_eq!(r.lease.started_at, g.lease.started_at);
            assert_eq!(r.lease.expires_at.as_millis(), now + 30_000);
            assert_eq!(r.lease.device_id, Some(Label::new("tv").unwrap()), "renew without metadata keeps it");
        }
        d => panic!("{d:?}"),
    }
    let (_, live) = store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert_eq!(live[0].expires_at.as_millis(), now + 30_000, "the renewal was stored");
}

async fn expiry_frees_seats(store: &Store, clock: &ManualClock) {
    let u = user("expiry-user");
    assert!(matches!(store.acquire(&u, req("a", 1, 5)).await.unwrap(), Decision::Granted(_)));
    assert!(matches!(store.acquire(&u, req("b", 1, 5)).await.unwrap(), Decision::Denied(_)));
    clock.advance_ms(4_999);
    assert!(matches!(store.acquire(&u, req("b", 1, 5)).await.unwrap(), Decision::Denied(_)));
    clock.advance_ms(1);
    let (_, live) = store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert!(live.is_empty(), "a lease is dead at its expires_at");
    assert!(matches!(store.acquire(&u, req("b", 1, 5)).await.unwrap(), Decision::Granted(_)));
    // The expired stream comes back as a fresh lease, not a renewal.
    clock.advance_ms(5_000);
    match store.acquire(&u, req("a", 1, 5)).await.unwrap() {
        Decision::Granted(g) => assert_eq!(g.lease.started_at.as_millis(), clock.now().as_millis()),
        d => panic!("{d:?}"),
    }
}

async fn release_is_idempotent(store: &Store) {
    let u = user("release-user");
    assert!(matches!(store.acquire(&u, req("a", 1, 60)).await.unwrap(), Decision::Granted(_)));
    store.release(&u, stream("a")).await.unwrap();
    store.release(&u, stream("a")).await.unwrap();
    store.release(&u, stream("never")).await.unwrap();
    assert!(matches!(store.acquire(&u, req("b", 1, 60)).await.unwrap(), Decision::Granted(_)));
}

async fn users_are_independent(store: &Store) {
    for u in ["indep-1", "indep-2"] {
        assert!(matches!(store.acquire(&user(u), req("same", 1, 60)).await.unwrap(), Decision::Granted(_)));
    }
}

async fn sweep_removes_only_expired(store: &Store, clock: &ManualClock) {
    let u = user("sweep-user");
    store.acquire(&u, req("short", 2, 1)).await.unwrap();
    store.acquire(&u, req("long", 2, 600)).await.unwrap();
    clock.advance_ms(120_000);
    let removed = store.inner.backend.sweep().await.unwrap();
    // Other checks above left expired leases too; at least ours went.
    assert!(removed >= 1, "removed {removed}");
    assert_eq!(store.inner.backend.sweep().await.unwrap(), 0, "nothing left to sweep");
    let (_, live) = store.list(&u, Limit::new(2).unwrap()).await.unwrap();
    assert_eq!(names(&live), ["long"]);
}

async fn concurrent_acquires_grant_exactly_the_limit(store: &Store) {
    let u = user("concurrent-user");
    let mut set = JoinSet::new();
    for i in 0..64 {
        let (store, u) = (store.clone(), u.clone());
        set.spawn(async move { store.acquire(&u, req(&format!("s{i}"), 5, 60)).await.unwrap() });
    }
    let mut granted = 0;
    while let Some(d) = set.join_next().await {
        match d.unwrap() {
            Decision::Granted(_) => granted += 1,
            Decision::Denied(d) => assert_eq!(d.live.len(), 5),
            Decision::Renewed(_) => panic!("distinct streams cannot renew"),
        }
    }
    assert_eq!(granted, 5);
    let (_, live) = store.list(&u, Limit::new(5).unwrap()).await.unwrap();
    assert_eq!(live.len(), 5);
}

/// One step of a differential run.
#[derive(Clone, Debug)]
enum Step {
    Acquire { user: u8, stream: u8, limit: u32, ttl: u32, device: bool },
    Release { user: u8, stream: u8 },
    List { user: u8, limit: u32 },
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..3, 0u8..6, 0u32..4, 1u32..20, any::<bool>())
            .prop_map(|(user, stream, limit, ttl, device)| Step::Acquire { user, stream, limit, ttl, device }),
        2 => (0u8..3, 0u8..6).prop_map(|(user, stream)| Step::Release { user, stream }),
        1 => (0u8..3, 0u32..4).prop_map(|(user, limit)| Step::List { user, limit }),
        2 => (0u32..15_000).prop_map(Step::Advance),
    ]
}

/// Feeds random operation sequences to a fresh store from `open` and to the
/// rules applied directly; every reply must be identical.
pub(crate) fn differential<F, Fut>(cases: u32, open: F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = (Store, Box<dyn std::any::Any>)>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&prop::collection::vec(step(), 1..60), |steps| {
            rt.block_on(async {
                let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
                let (store, _guard) = open(clock.clone()).await;
                let mut model: HashMap<UserId, UserState> = HashMap::new();
                for s in steps {
                    let (u, op) = match s {
                        Step::Advance(ms) => {
                            clock.advance_ms(i64::from(ms));
                            continue;
                        }
                        Step::Acquire { user: u, stream: s, limit, ttl, device } => {
                            let mut r = req(&format!("s{s}"), limit, ttl);
                            r.device_id = device.then(|| Label::new(&format!("d{s}")).unwrap());
                            (u, Op::Acquire(r))
                        }
                        Step::Release { user: u, stream: s } => (u, Op::Release(stream(&format!("s{s}")))),
                        Step::List { user: u, limit } => (u, Op::List { limit: Limit::new(limit).unwrap() }),
                    };
                    let u = user(&format!("u{u}"));
                    let expected = limiter::apply(model.entry(u.clone()).or_default(), op.clone(), clock.now());
                    let got = store.execute(&u, op).await.unwrap();
                    prop_assert_eq!(got, expected.reply);
                }
                let _ = store.close().await;
                Ok(())
            })
        })
        .unwrap();
}
