//! The conformance suite every backend must pass. New behaviour goes here
//! first. Each backend's tests call [`suite`] with a fresh store and a
//! [`ManualClock`] the store reads, and [`differential`] with a factory.

use std::future::Future;
use std::sync::Arc;

use proptest::prelude::*;
use tokio::task::JoinSet;

use super::Store;
use super::memory::MemoryBackend;
use crate::clock::{Clock, ManualClock};
use crate::limiter::{
    self, Acquire, Decision, Holder, Label, Limit, LimitSource, OnLimit, Op, Override, Plans, RevokeReason, Rule,
    StreamId, Terms, Timestamp, Ttl, UserId,
};

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn req(s: &str, limit: u32, ttl: u32) -> Acquire {
    Acquire { ttl: Ttl::from_secs(ttl).unwrap(), ..Acquire::for_test(s, limit) }
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
    evict_oldest_leaves_a_tombstone(store, clock).await;
    take_over_is_all_or_nothing(store).await;
    revoke_all_and_tombstone_expiry(store, clock).await;
    overrides_are_kept_and_win(store).await;
    overrides_with_an_expiry_end_by_themselves(store, clock).await;
    revoking_one_stream_leaves_its_tombstone(store, clock).await;
    shadow_mode_changes_no_one_else(store).await;
    concurrent_evictions_keep_the_limit(store).await;
    leases_keep_every_attribute(store, clock).await;
    rules_apply_in_scope(store).await;
    concurrent_acquires_fill_each_scope_exactly(store).await;
    plans_stick_to_leases(store).await;
    holders_are_kept_and_only_the_current_one_releases(store, clock).await;
    evictions_and_revocations_report_holders(store, clock).await;
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
    assert!(removed >= 1 || store.inner.backend.expires_by_itself(), "removed {removed}");
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
            d @ (Decision::Renewed(_) | Decision::Gone(_) | Decision::NotHeld) => panic!("distinct new streams: {d:?}"),
        }
    }
    assert_eq!(granted, 5);
    let (_, live) = store.list(&u, Limit::new(5).unwrap()).await.unwrap();
    assert_eq!(live.len(), 5);
}

async fn evict_oldest_leaves_a_tombstone(store: &Store, clock: &ManualClock) {
    let u = user("evict-user");
    for s in ["a", "b"] {
        store.acquire(&u, req(s, 2, 60)).await.unwrap();
        clock.advance_ms(1);
    }
    let evicting = Acquire { on_limit: OnLimit::EvictOldest, ..req("c", 2, 60) };
    match store.acquire(&u, evicting).await.unwrap() {
        Decision::Granted(g) => assert_eq!(names(&g.evicted), ["a"]),
        d => panic!("{d:?}"),
    }
    match store.acquire(&u, req("a", 2, 60)).await.unwrap() {
        Decision::Gone(t) => assert_eq!(t.reason, RevokeReason::EvictedBy(stream("c"))),
        d => panic!("the evicted stream must learn it was stopped: {d:?}"),
    }
    let (_, live) = store.list(&u, Limit::new(2).unwrap()).await.unwrap();
    assert_eq!(names(&live), ["b", "c"]);
}

async fn take_over_is_all_or_nothing(store: &Store) {
    let u = user("takeover-user");
    for s in ["a", "b"] {
        store.acquire(&u, req(s, 2, 60)).await.unwrap();
    }
    let take = |evict: &[&str]| Acquire { evict: evict.iter().map(|s| stream(s)).collect(), ..req("c", 2, 60) };
    assert!(matches!(store.acquire(&u, take(&["nope"])).await.unwrap(), Decision::Denied(_)));
    let (_, live) = store.list(&u, Limit::new(2).unwrap()).await.unwrap();
    assert_eq!(names(&live), ["a", "b"], "a failed take-over changes nothing");
    match store.acquire(&u, take(&["b", "nope"])).await.unwrap() {
        Decision::Granted(g) => assert_eq!(names(&g.evicted), ["b"]),
        d => panic!("{d:?}"),
    }
    assert!(matches!(store.acquire(&u, req("b", 2, 60)).await.unwrap(), Decision::Gone(_)));
}

async fn revoke_all_and_tombstone_expiry(store: &Store, clock: &ManualClock) {
    let u = user("revoke-user");
    for s in ["a", "b"] {
        store.acquire(&u, req(s, 5, 10)).await.unwrap();
    }
    let revoked = store.revoke_all(&u, Ttl::from_secs(10).unwrap()).await.unwrap();
    assert_eq!(names(&revoked), ["a", "b"]);
    assert!(store.revoke_all(&u, Ttl::from_secs(10).unwrap()).await.unwrap().is_empty());
    // Released streams leave no tombstone; revoked ones do, for expiry + ttl.
    store.acquire(&u, req("c", 5, 10)).await.unwrap();
    store.release(&u, stream("c")).await.unwrap();
    assert!(matches!(store.acquire(&u, req("c", 5, 10)).await.unwrap(), Decision::Renewed(_) | Decision::Granted(_)));
    clock.advance_ms(19_999);
    assert!(matches!(store.acquire(&u, req("a", 5, 10)).await.unwrap(), Decision::Gone(_)));
    clock.advance_ms(1);
    assert!(matches!(store.acquire(&u, req("a", 5, 10)).await.unwrap(), Decision::Granted(_)));
}

async fn overrides_are_kept_and_win(store: &Store) {
    let u = user("override-user");
    let three = Limit::new(3).unwrap();
    assert_eq!(store.limit(&u, three, LimitSource::Plan).await.unwrap(), (three, LimitSource::Plan, None));
    store.set_override(&u, Limit::new(1).map(Override::permanent)).await.unwrap();
    assert_eq!(
        store.limit(&u, three, LimitSource::Default).await.unwrap(),
        (Limit::new(1).unwrap(), LimitSource::Override, None)
    );
    assert!(matches!(store.acquire(&u, req("a", 3, 60)).await.unwrap(), Decision::Granted(_)));
    match store.acquire(&u, req("b", 3, 60)).await.unwrap() {
        Decision::Denied(d) => assert_eq!(d.limit.get(), 1),
        d => panic!("{d:?}"),
    }
    store.set_override(&u, Limit::new(0).map(Override::permanent)).await.unwrap();
    let (limit, live) = store.list(&u, three).await.unwrap();
    assert_eq!((limit.get(), live.len()), (0, 1), "lowering evicts nobody");
    store.set_override(&u, None).await.unwrap();
    assert_eq!(store.limit(&u, three, LimitSource::Default).await.unwrap(), (three, LimitSource::Default, None));
    // An override alone, with no lease, is still kept.
    let idle = user("override-idle");
    store.set_override(&idle, Limit::new(7).map(Override::permanent)).await.unwrap();
    assert_eq!(store.limit(&idle, three, LimitSource::Default).await.unwrap().0.get(), 7);
}

/// An override with an expiry is kept with it, counts until then, and
/// afterwards the fallback does, evicting nobody; with or without leases.
async fn overrides_with_an_expiry_end_by_themselves(store: &Store, clock: &ManualClock) {
    let three = Limit::new(3).unwrap();
    let ends = |limit: u32, ms: i64| Override {
        limit: Limit::new(limit).unwrap(),
        expires_at: Some(Timestamp::from_micros(clock.now().as_micros() + ms * 1000)),
    };
    let u = user("override-until");
    let five = ends(5, 20_000);
    store.set_override(&u, Some(five)).await.unwrap();
    assert_eq!(
        store.limit(&u, three, LimitSource::Plan).await.unwrap(),
        (Limit::new(5).unwrap(), LimitSource::Override, five.expires_at)
    );
    for s in ["a", "b", "c", "d"] {
        assert!(matches!(store.acquire(&u, req(s, 3, 60)).await.unwrap(), Decision::Granted(_)), "{s}");
    }
    clock.advance_ms(19_999);
    assert_eq!(store.list(&u, three).await.unwrap().0.get(), 5);
    clock.advance_ms(1);
    assert_eq!(store.limit(&u, three, LimitSource::Plan).await.unwrap(), (three, LimitSource::Plan, None));
    let (limit, live) = store.list(&u, three).await.unwrap();
    assert_eq!((limit, live.len()), (three, 4), "the end of an override evicts nobody");
    assert!(matches!(store.acquire(&u, req("e", 3, 60)).await.unwrap(), Decision::Denied(_)));
    assert!(matches!(store.acquire(&u, req("a", 3, 60)).await.unwrap(), Decision::Renewed(_)));
    // A user with nothing but an override that ends.
    let idle = user("override-until-idle");
    let one = ends(1, 5_000);
    store.set_override(&idle, Some(one)).await.unwrap();
    assert_eq!(
        store.limit(&idle, three, LimitSource::Default).await.unwrap(),
        (Limit::new(1).unwrap(), LimitSource::Override, one.expires_at)
    );
    clock.advance_ms(5_000);
    assert_eq!(store.limit(&idle, three, LimitSource::Default).await.unwrap(), (three, LimitSource::Default, None));
    // Setting one for good after one that ends replaces it.
    store.set_override(&idle, Some(ends(2, 1_000))).await.unwrap();
    store.set_override(&idle, Limit::new(4).map(Override::permanent)).await.unwrap();
    clock.advance_ms(2_000);
    assert_eq!(
        store.limit(&idle, three, LimitSource::Default).await.unwrap(),
        (Limit::new(4).unwrap(), LimitSource::Override, None)
    );
    store.set_override(&idle, None).await.unwrap();
}

/// Revoking one stream revokes its live lease alone, leaves a tombstone
/// that the listing shows and a renewal meets, and revokes nothing for a
/// stream without a live lease.
async fn revoking_one_stream_leaves_its_tombstone(store: &Store, clock: &ManualClock) {
    let u = user("revoke-one");
    let ttl = Ttl::from_secs(10).unwrap();
    store.acquire(&u, Acquire { holder: Some(holder("h1")), ..req("a", 5, 10) }).await.unwrap();
    store.acquire(&u, req("b", 5, 10)).await.unwrap();
    let revoked = store.revoke(&u, stream("a"), ttl).await.unwrap().expect("a was live");
    assert_eq!((revoked.stream_id.as_str(), revoked.holder), ("a", Some(holder("h1"))));
    assert_eq!(store.revoke(&u, stream("a"), ttl).await.unwrap(), None);
    assert_eq!(store.revoke(&u, stream("none"), ttl).await.unwrap(), None);
    let listing = store.listing(&u, Limit::new(5).unwrap()).await.unwrap();
    assert_eq!(names(&listing.live), ["b"]);
    let until = revoked.expires_at.plus(ttl);
    assert_eq!(listing.tombstones.iter().map(|t| (t.stream_id.as_str(), t.until)).collect::<Vec<_>>(), [("a", until)]);
    assert!(matches!(store.acquire(&u, req("a", 5, 10)).await.unwrap(), Decision::Gone(_)));
    clock.advance_ms(until.as_millis() - clock.now().as_millis());
    assert!(store.listing(&u, Limit::new(5).unwrap()).await.unwrap().tombstones.is_empty());
    assert!(matches!(store.acquire(&u, req("a", 5, 10)).await.unwrap(), Decision::Granted(_)));
}

async fn shadow_mode_changes_no_one_else(store: &Store) {
    let u = user("shadow-user");
    store.acquire(&u, req("a", 1, 60)).await.unwrap();
    let shadow = |s: &str, on_limit| Acquire { enforce: false, on_limit, ..req(s, 1, 60) };
    match store.acquire(&u, shadow("b", OnLimit::Reject)).await.unwrap() {
        Decision::Granted(g) => assert!(g.would_deny && g.active_streams == 2),
        d => panic!("{d:?}"),
    }
    store.release(&u, stream("b")).await.unwrap();
    match store.acquire(&u, shadow("c", OnLimit::EvictOldest)).await.unwrap() {
        Decision::Granted(g) => assert_eq!((g.evicted.len(), g.would_evict.clone()), (0, vec![stream("a")])),
        d => panic!("{d:?}"),
    }
    let (_, live) = store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert_eq!(names(&live), ["a", "c"]);
}

async fn concurrent_evictions_keep_the_limit(store: &Store) {
    let u = user("concurrent-evict-user");
    let mut set = JoinSet::new();
    for i in 0..64 {
        let (store, u) = (store.clone(), u.clone());
        set.spawn(async move {
            let mut r = Acquire { on_limit: OnLimit::EvictOldest, ..req(&format!("s{i}"), 3, 60) };
            if i % 2 == 1 {
                // Odd requests take over the stream two before them.
                r.evict = vec![stream(&format!("s{}", i - 1))];
            }
            store.acquire(&u, r).await.unwrap()
        });
    }
    let (mut granted, mut evicted) = (0, 0);
    while let Some(d) = set.join_next().await {
        if let Decision::Granted(g) = d.unwrap() {
            granted += 1;
            evicted += g.evicted.len();
        }
    }
    let (_, live) = store.list(&u, Limit::new(3).unwrap()).await.unwrap();
    assert!(live.len() <= 3, "{} live", live.len());
    // Every grant is accounted for: each is either still live or was evicted.
    assert_eq!(granted, live.len() + evicted);
}

fn label(s: &str) -> Label {
    Label::new(s).unwrap()
}

fn rule(name: &str, class: Option<&str>, kind: Option<&str>, per_content: bool, limit: u32, exempt: bool) -> Rule {
    Rule {
        name: label(name),
        device_class: class.map(label),
        content_kind: kind.map(label),
        per_content,
        limit: Limit::new(limit).unwrap(),
        exempt,
    }
}

async fn leases_keep_every_attribute(store: &Store, clock: &ManualClock) {
    let u = user("attributes-user");
    let full = Acquire {
        device_id: Some(label("living-room")),
        plan: Some(label("premium")),
        ..Acquire::on_test("tv", 1, &[], Some("tv"), Some("live"), Some("final"))
    };
    let Decision::Granted(g) = store.acquire(&u, full).await.unwrap() else { panic!("not granted") };
    let expected = |l: &limiter::Lease| {
        let text = |v: &Option<Label>| v.as_ref().map(|v| v.as_str().to_owned());
        (text(&l.device_id), text(&l.device_class), text(&l.content_kind), text(&l.content_id), text(&l.plan))
    };
    let want = (
        Some("living-room".to_owned()),
        Some("tv".to_owned()),
        Some("live".to_owned()),
        Some("final".to_owned()),
        Some("premium".to_owned()),
    );
    assert_eq!(expected(&g.lease), want);
    clock.advance_ms(1);
    let (_, live) = store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert_eq!(expected(&live[0]), want, "listed");
    match store.acquire(&u, req("tv", 1, 60)).await.unwrap() {
        Decision::Renewed(r) => assert_eq!(expected(&r.lease), want, "a bare renewal keeps them"),
        d => panic!("{d:?}"),
    }
    match store.acquire(&u, req("phone", 1, 60)).await.unwrap() {
        Decision::Denied(d) => assert_eq!(expected(&d.live[0]), want, "a refusal lists them"),
        d => panic!("{d:?}"),
    }
    let evicting = Acquire { on_limit: OnLimit::EvictOldest, ..req("phone", 1, 60) };
    match store.acquire(&u, evicting).await.unwrap() {
        Decision::Granted(g) => assert_eq!(expected(&g.evicted[0]), want, "an eviction reports them"),
        d => panic!("{d:?}"),
    }
}

async fn rules_apply_in_scope(store: &Store) {
    let u = user("rules-user");
    let tv = [rule("tv", Some("tv"), None, false, 1, false), rule("one-per-title", None, None, true, 1, false)];
    let go = |s: &str, class: &str, title: &str| Acquire::on_test(s, 3, &tv, Some(class), None, Some(title));
    assert!(matches!(store.acquire(&u, go("tv1", "tv", "a")).await.unwrap(), Decision::Granted(_)));
    match store.acquire(&u, go("tv2", "tv", "b")).await.unwrap() {
        Decision::Denied(d) => {
            assert_eq!(d.rule.map(|r| (r.name.as_str().to_owned(), r.limit.get())), Some(("tv".to_owned(), 1)));
            assert_eq!(names(&d.live), ["tv1"]);
        }
        d => panic!("{d:?}"),
    }
    assert!(matches!(store.acquire(&u, go("m1", "mobile", "b")).await.unwrap(), Decision::Granted(_)));
    // The phone may not switch to the TV's title: refused, and left as it was.
    match store.acquire(&u, go("m1", "mobile", "a")).await.unwrap() {
        Decision::Denied(d) => assert_eq!(d.rule.unwrap().name.as_str(), "one-per-title"),
        d => panic!("{d:?}"),
    }
    let (_, live) = store.list(&u, Limit::new(3).unwrap()).await.unwrap();
    let m1 = live.iter().find(|l| l.stream_id.as_str() == "m1").unwrap();
    assert_eq!(m1.content_id, Some(label("b")));
    // evict_oldest makes room inside the full scope only.
    let evicting = Acquire { on_limit: OnLimit::EvictOldest, ..go("tv3", "tv", "c") };
    match store.acquire(&u, evicting).await.unwrap() {
        Decision::Granted(g) => assert_eq!(names(&g.evicted), ["tv1"]),
        d => panic!("{d:?}"),
    }
    // Downloads don't count toward the total of 1.
    let v = user("downloads-user");
    let dl = [rule("downloads", None, Some("download"), false, 2, true)];
    let go = |s: &str, kind: Option<&str>| Acquire::on_test(s, 1, &dl, None, kind, None);
    assert!(matches!(store.acquire(&v, go("watch", None)).await.unwrap(), Decision::Granted(_)));
    assert!(matches!(store.acquire(&v, go("dl1", Some("download"))).await.unwrap(), Decision::Granted(_)));
    assert!(matches!(store.acquire(&v, go("dl2", Some("download"))).await.unwrap(), Decision::Granted(_)));
    assert!(matches!(store.acquire(&v, go("dl3", Some("download"))).await.unwrap(), Decision::Denied(_)));
    match store.acquire(&v, go("watch2", None)).await.unwrap() {
        Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (None, vec!["watch"])),
        d => panic!("{d:?}"),
    }
}

/// 62 TV and 2 other acquires at once under "4 streams, at most 2 on TVs"
/// must end with exactly 2 of each: the TV rule caps TVs at 2, and the
/// total refuses nobody until 4 are live, which needs both others in.
async fn concurrent_acquires_fill_each_scope_exactly(store: &Store) {
    let u = user("concurrent-rules-user");
    let rules = [rule("tv", Some("tv"), None, false, 2, false)];
    let mut set = JoinSet::new();
    for i in 0..64 {
        let (store, u, rules) = (store.clone(), u.clone(), rules.clone());
        set.spawn(async move {
            let class = if i % 32 == 7 { "phone" } else { "tv" };
            let d = store
                .acquire(&u, Acquire::on_test(&format!("s{i}"), 4, &rules, Some(class), None, None))
                .await
                .unwrap();
            (class, d)
        });
    }
    let (mut tv, mut other) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            ("tv", Decision::Granted(_)) => tv += 1,
            (_, Decision::Granted(_)) => other += 1,
            ("tv", Decision::Denied(d)) => assert_eq!(d.rule.unwrap().name.as_str(), "tv"),
            (class, d) => panic!("{class}: {d:?}"),
        }
    }
    assert_eq!((tv, other), (2, 2));
    let (_, live) = store.list(&u, Limit::new(4).unwrap()).await.unwrap();
    assert_eq!(live.len(), 4);
}

async fn plans_stick_to_leases(store: &Store) {
    let u = user("sticky-user");
    let held = |s: &str| Acquire { held: true, ..req(s, 1, 60) };
    assert_eq!(store.acquire(&u, held("a")).await.unwrap(), Decision::NotHeld);
    let (_, live) = store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert!(live.is_empty(), "a held request starts nothing");
    let premium = Acquire { plan: Some(label("premium")), ..req("a", 3, 60) };
    assert!(matches!(store.acquire(&u, premium).await.unwrap(), Decision::Granted(_)));
    // Without a plan, the default (1) would refuse b; premium's 3 admit it.
    let plain = |s: &str| Acquire { plans: Some(plans()), ..req(s, 1, 60) };
    match store.acquire(&u, plain("b")).await.unwrap() {
        Decision::Granted(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, Some(label("premium")))),
        d => panic!("{d:?}"),
    }
    match store.acquire(&u, Acquire { held: true, ..plain("a") }).await.unwrap() {
        Decision::Renewed(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, Some(label("premium")))),
        d => panic!("{d:?}"),
    }
}

fn holder(h: &str) -> Holder {
    Holder::new(h).unwrap()
}

/// An acquire of `s` by the socket `h`.
fn by(s: &str, h: &str) -> Acquire {
    Acquire { holder: Some(holder(h)), ..req(s, 2, 60) }
}

/// A lease's holder is stored with it. A renewal by the same socket or by
/// HTTP (no holder) keeps it; one by another socket takes the lease and
/// names the socket it replaced. The replaced socket's release then frees
/// nothing; the current socket's, or a plain release, frees the seat.
async fn holders_are_kept_and_only_the_current_one_releases(store: &Store, clock: &ManualClock) {
    let u = user("holder-user");
    let two = Limit::new(2).unwrap();
    let holders =
        |live: &[limiter::Lease]| live.iter().map(|l| (l.stream_id.to_string(), l.holder.clone())).collect::<Vec<_>>();
    match store.acquire(&u, by("tv", "h1")).await.unwrap() {
        Decision::Granted(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h1")), None)),
        d => panic!("{d:?}"),
    }
    clock.advance_ms(1);
    store.acquire(&u, req("phone", 2, 60)).await.unwrap();
    let listed = store.list(&u, two).await.unwrap().1;
    assert_eq!(holders(&listed), [("tv".into(), Some(holder("h1"))), ("phone".into(), None)], "stored");
    for (ask, why) in [(by("tv", "h1"), "the same socket"), (req("tv", 2, 60), "an HTTP heartbeat")] {
        clock.advance_ms(1);
        match store.acquire(&u, ask).await.unwrap() {
            Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h1")), None), "{why}"),
            d => panic!("{why}: {d:?}"),
        }
    }
    clock.advance_ms(1);
    match store.acquire(&u, by("tv", "h2")).await.unwrap() {
        Decision::Renewed(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h2")), Some(holder("h1")))),
        d => panic!("{d:?}"),
    }
    // The replaced socket closes: the newer one keeps its seat.
    store.release_held(&u, stream("tv"), holder("h1")).await.unwrap();
    let after = store.list(&u, two).await.unwrap().1;
    assert_eq!(holders(&after), [("tv".into(), Some(holder("h2"))), ("phone".into(), None)], "a stale release");
    assert_eq!(after[0].expires_at, clock.now().plus(Ttl::from_secs(60).unwrap()), "untouched");
    // A socket never frees a lease that nobody held, or a stream without one.
    store.release_held(&u, stream("phone"), holder("h2")).await.unwrap();
    store.release_held(&u, stream("none"), holder("h2")).await.unwrap();
    assert_eq!(names(&store.list(&u, two).await.unwrap().1), ["tv", "phone"]);
    // The current socket frees its seat, leaving no tombstone.
    store.release_held(&u, stream("tv"), holder("h2")).await.unwrap();
    store.release_held(&u, stream("tv"), holder("h2")).await.unwrap();
    assert_eq!(names(&store.list(&u, two).await.unwrap().1), ["phone"]);
    match store.acquire(&u, by("tv", "h3")).await.unwrap() {
        Decision::Granted(g) => assert_eq!((g.lease.holder, g.replaced), (Some(holder("h3")), None)),
        d => panic!("{d:?}"),
    }
    // A plain release frees it whoever holds it.
    store.release(&u, stream("tv")).await.unwrap();
    assert_eq!(names(&store.list(&u, two).await.unwrap().1), ["phone"]);
}

/// The leases an eviction or a revoke-all takes come with their holders,
/// so that the sockets that held them can be told.
async fn evictions_and_revocations_report_holders(store: &Store, clock: &ManualClock) {
    let u = user("holder-revoke-user");
    store.acquire(&u, by("a", "h1")).await.unwrap();
    clock.advance_ms(1);
    store.acquire(&u, req("b", 2, 60)).await.unwrap();
    clock.advance_ms(1);
    let evicting = Acquire { on_limit: OnLimit::EvictOldest, ..by("c", "h3") };
    match store.acquire(&u, evicting).await.unwrap() {
        Decision::Granted(g) => {
            assert_eq!(names(&g.evicted), ["a"]);
            assert_eq!(g.evicted[0].holder, Some(holder("h1")));
        }
        d => panic!("{d:?}"),
    }
    let revoked = store.revoke_all(&u, Ttl::from_secs(10).unwrap()).await.unwrap();
    let holders: Vec<_> = revoked.iter().map(|l| (l.stream_id.as_str(), l.holder.clone())).collect();
    assert_eq!(holders, [("b", None), ("c", Some(holder("h3")))]);
    assert!(matches!(store.acquire(&u, by("c", "h3")).await.unwrap(), Decision::Gone(_)));
}

/// One step of a differential run.
#[derive(Clone, Debug)]
enum Step {
    Acquire {
        user: u8,
        stream: u8,
        limit: u32,
        ttl: u32,
        device: bool,
        /// Indexes into [`CLASSES`], [`KINDS`], [`TITLES`], [`PLANS`] and
        /// [`rule_set`].
        traits: (u8, u8, u8, u8, u8),
        /// With no plan named, pass [`plans`] (the plan sticks); and
        /// whether the caller says it holds the stream.
        sticky: bool,
        held: bool,
        /// The socket `h{holder}` asks, or nobody (0).
        holder: u8,
        evict_oldest: bool,
        evict: Vec<u8>,
        enforce: bool,
    },
    Release {
        user: u8,
        stream: u8,
    },
    ReleaseHeld {
        user: u8,
        stream: u8,
        holder: u8,
    },
    RevokeAll {
        user: u8,
        ttl: u32,
    },
    List {
        user: u8,
        limit: u32,
    },
    GetLimit {
        user: u8,
        limit: u32,
    },
    Revoke {
        user: u8,
        stream: u8,
        ttl: u32,
    },
    /// `until`: the override ends this many ms after the step, if it does.
    SetOverride {
        user: u8,
        limit: Option<u32>,
        until: Option<u32>,
    },
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    let acquire = (
        (0u8..3, 0u8..6, 0u32..4, 1u32..20, any::<bool>()),
        (
            any::<bool>(),
            prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(0u8..7, 1..3)],
            prop::bool::weighted(0.85),
        ),
    )
        .prop_map(|((user, stream, limit, ttl, device), (evict_oldest, evict, enforce))| Step::Acquire {
            user,
            stream,
            limit,
            ttl,
            device,
            traits: (0, 0, 0, 0, 0),
            sticky: false,
            held: false,
            holder: 0,
            evict_oldest,
            evict,
            enforce,
        });
    let traits = (0u8..3, 0u8..3, 0u8..3, 0u8..4, prop_oneof![1 => Just(0u8), 3 => 1u8..5]);
    let acquire = (acquire, traits, any::<bool>(), prop::bool::weighted(0.15), prop_oneof![Just(0u8), 1u8..3])
        .prop_map(|(mut step, t, s, h, by)| {
            if let Step::Acquire { traits, sticky, held, holder, .. } = &mut step {
                (*traits, *sticky, *held, *holder) = (t, s, h, by);
            }
            step
        });
    prop_oneof![
        8 => acquire,
        2 => (0u8..3, 0u8..6).prop_map(|(user, stream)| Step::Release { user, stream }),
        2 => (0u8..3, 0u8..6, 1u8..3).prop_map(|(user, stream, holder)| Step::ReleaseHeld { user, stream, holder }),
        1 => (0u8..3, 1u32..20).prop_map(|(user, ttl)| Step::RevokeAll { user, ttl }),
        1 => (0u8..3, 0u32..4).prop_map(|(user, limit)| Step::List { user, limit }),
        1 => (0u8..3, 0u32..4).prop_map(|(user, limit)| Step::GetLimit { user, limit }),
        1 => (0u8..3, 0u8..6, 1u32..20).prop_map(|(user, stream, ttl)| Step::Revoke { user, stream, ttl }),
        1 => (0u8..3, prop::option::of(0u32..4), prop::option::of(1u32..40_000))
            .prop_map(|(user, limit, until)| Step::SetOverride { user, limit, until }),
        3 => (0u32..25_000).prop_map(Step::Advance),
    ]
}

const CLASSES: [Option<&str>; 3] = [None, Some("tv"), Some("mobile")];
const KINDS: [Option<&str>; 3] = [None, Some("live"), Some("download")];
const TITLES: [Option<&str>; 3] = [None, Some("c0"), Some("c1")];
/// "gold" is not among [`plans`]: a lease of a plan no longer configured.
const PLANS: [Option<&str>; 4] = [None, Some("basic"), Some("premium"), Some("gold")];

/// The configured plans a plan-less request passes.
fn plans() -> Arc<Plans> {
    let terms = |limit, on_limit, rules| Terms { limit: Limit::new(limit).unwrap(), on_limit, rules };
    Arc::new(
        [
            (label("basic"), terms(1, OnLimit::Reject, rule_set(1).into())),
            (label("premium"), terms(3, OnLimit::EvictOldest, rule_set(4).into())),
        ]
        .into_iter()
        .collect(),
    )
}

/// Small rule sets whose limits bind often: none, a device class, a title,
/// an exempt kind, and all of them with a forbidden pair.
fn rule_set(n: u8) -> Vec<Rule> {
    let tv = rule("tv", Some("tv"), None, false, 1, false);
    let title = rule("one-per-title", None, None, true, 1, false);
    let downloads = rule("downloads", None, Some("download"), false, 1, true);
    match n {
        0 => vec![],
        1 => vec![tv],
        2 => vec![title],
        3 => vec![downloads],
        _ => vec![
            rule("mobile-live", Some("mobile"), Some("live"), false, 0, false),
            tv,
            title,
            rule("live-titles", None, Some("live"), true, 1, false),
            downloads,
        ],
    }
}

/// The operation of `step` at `now`.
fn op_of(step: Step, now: Timestamp) -> Option<(u8, Op)> {
    let lim = |n: u32| Limit::new(n).unwrap();
    Some(match step {
        Step::Advance(_) => return None,
        Step::Acquire {
            user,
            stream: s,
            limit,
            ttl,
            device,
            traits: (c, k, t, p, rules),
            sticky,
            held,
            holder: h,
            evict_oldest,
            evict,
            enforce,
        } => {
            let mut r = req(&format!("s{s}"), limit, ttl);
            r.device_id = device.then(|| Label::new(&format!("d{s}")).unwrap());
            r.device_class = CLASSES[c as usize].map(label);
            r.content_kind = KINDS[k as usize].map(label);
            r.content_id = TITLES[t as usize].map(label);
            r.plan = PLANS[p as usize].map(label);
            r.rules = rule_set(rules).into();
            r.on_limit = if evict_oldest { OnLimit::EvictOldest } else { OnLimit::Reject };
            r.evict = evict.iter().map(|e| stream(&format!("s{e}"))).collect();
            r.enforce = enforce;
            r.plans = (sticky && r.plan.is_none()).then(plans);
            r.held = held;
            r.holder = (h > 0).then(|| holder(&format!("h{h}")));
            (user, Op::Acquire(r))
        }
        Step::Release { user, stream: s } => (user, Op::Release(stream(&format!("s{s}")))),
        Step::ReleaseHeld { user, stream: s, holder: h } => {
            (user, Op::ReleaseHeld { stream: stream(&format!("s{s}")), holder: holder(&format!("h{h}")) })
        }
        Step::RevokeAll { user, ttl } => (user, Op::RevokeAll { ttl: Ttl::from_secs(ttl).unwrap() }),
        Step::List { user, limit } => (user, Op::List { limit: lim(limit) }),
        Step::GetLimit { user, limit } => (user, Op::GetLimit { fallback: lim(limit), source: LimitSource::Plan }),
        Step::Revoke { user, stream: s, ttl } => {
            (user, Op::Revoke { stream: stream(&format!("s{s}")), ttl: Ttl::from_secs(ttl).unwrap() })
        }
        Step::SetOverride { user, limit, until } => {
            let expires_at = until.map(|ms| Timestamp::from_micros(now.as_micros() + i64::from(ms) * 1000));
            (user, Op::SetOverride(limit.map(|l| Override { limit: lim(l), expires_at })))
        }
    })
}

/// Feeds random operation sequences to a fresh store from `open` and to
/// the memory store (the rules under a lock), on one shared clock; every
/// reply must be identical.
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
                let reference = Store::for_test(Box::new(MemoryBackend::new(Arc::new(clock.clone()))));
                for s in steps {
                    if let Step::Advance(ms) = s {
                        clock.advance_ms(i64::from(ms));
                        continue;
                    }
                    let Some((u, op)) = op_of(s, clock.now()) else { continue };
                    let u = user(&format!("u{u}"));
                    let expected = reference.execute(&u, op.clone()).await.unwrap();
                    let got = store.execute(&u, op).await.unwrap();
                    prop_assert_eq!(got, expected);
                }
                let _ = store.close().await;
                Ok(())
            })
        })
        .unwrap();
}
