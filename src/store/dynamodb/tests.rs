//! The dynamodb backend against a real DynamoDB Local: the conformance
//! suite, the differential test, races between instances that share no
//! lock, unreadable items, and the item size of a full account.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use tokio::task::JoinSet;

use super::harness::{self, DynamoLocal};
use super::item::Item;
use super::*;
use crate::clock::ManualClock;
use crate::limiter::{Acquire, Decision, Holder, Label, Limit, Override, Timestamp, Ttl, UserState, apply};
use crate::store::conformance;

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn aws() -> Aws {
    let env = |k: &str| harness::CLIENT_ENV.iter().find(|(name, _)| *name == k).unwrap().1.to_owned();
    Aws::Static {
        region: env("AWS_REGION"),
        access_key_id: env("AWS_ACCESS_KEY_ID"),
        secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
    }
}

/// A fresh table on `local`, with streamcap's key schema but without TTL:
/// these tests' clocks are years behind the real one, by which DynamoDB
/// Local's TTL would delete their items within a second.
async fn table(local: &DynamoLocal) -> String {
    let name = harness::table_name("unit");
    let client = client(Some(&local.endpoint()), &aws()).await.unwrap();
    let key = KeySchemaElement::builder().attribute_name(KEY).key_type(KeyType::Hash).build().unwrap();
    let def =
        AttributeDefinition::builder().attribute_name(KEY).attribute_type(ScalarAttributeType::S).build().unwrap();
    let create = client.create_table().table_name(&name).billing_mode(BillingMode::PayPerRequest);
    create.key_schema(key).attribute_definitions(def).send().await.unwrap();
    name
}

async fn backend(local: &DynamoLocal, table: &str, clock: &ManualClock) -> DynamoBackend {
    DynamoBackend::open(table, Some(&local.endpoint()), &aws(), Arc::new(clock.clone())).await.unwrap()
}

async fn store(local: &DynamoLocal, table: &str, clock: &ManualClock) -> Store {
    Store::for_test(Box::new(backend(local, table, clock).await))
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn acquire(s: &str, limit: u32) -> Acquire {
    Acquire::for_test(s, limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    conformance::suite(&store(local, &table, &clock).await, &clock).await;
}

/// One DynamoDB Local for every case, a fresh table per case.
#[test]
fn differential() {
    let local = DynamoLocal::shared();
    let started = Instant::now();
    conformance::differential(64, |clock| async move {
        let table = table(local).await;
        (store(local, &table, &clock).await, Box::new(()) as Box<dyn std::any::Any>)
    });
    eprintln!("differential: 64 cases in {:?}", started.elapsed());
}

/// Instances share nothing but the table. Without the per-instance turns,
/// 64 concurrent acquires from eight instances race each other's
/// conditional writes: exactly the limit is granted, and each lost race
/// is counted and decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_for_one_item_grant_exactly_the_limit() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let mut instances = Vec::new();
    for _ in 0..8 {
        instances.push(store(local, &table, &clock).await);
    }
    let conflicts_before = conflicts();
    let u = user("racer");
    let mut set = JoinSet::new();
    for i in 0..64 {
        let (store, u) = (instances[i % 8].clone(), u.clone());
        set.spawn(async move { store.acquire(&u, acquire(&format!("s{i}"), 5)).await });
    }
    let mut granted = 0;
    while let Some(d) = set.join_next().await {
        match d.unwrap().unwrap() {
            Decision::Granted(_) => granted += 1,
            Decision::Denied(d) => assert_eq!(d.live.len(), 5),
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(granted, 5);
    for s in &instances {
        assert_eq!(s.list(&u, Limit::new(5).unwrap()).await.unwrap().1.len(), 5);
    }
    eprintln!("8 instances, 64 acquires: {} conflicts retried", conflicts() - conflicts_before);
}

/// The conflict counter as `/metrics` shows it (other tests in this
/// process may add to it; only growth is read).
fn conflicts() -> u64 {
    let text = crate::metrics::render();
    let line = text.lines().find(|l| l.starts_with("streamcap_store_conflicts_total "));
    line.and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// What a write whose answer was lost relies on: a second write of the
/// same decision (as the SDK sends after a timed-out attempt that did
/// land) fails its condition instead of applying twice, and the item then
/// carries the first write's version and write id, by which `decide`
/// recognises it as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_write_conflicts_and_the_item_names_the_first() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let b = backend(local, &table, &clock).await;
    let u = user("lost-answer");
    // Our write lands, but we are told the condition failed.
    let mut state = UserState::default();
    let outcome = apply(&mut state, Op::Acquire(acquire("a", 1)), clock.now());
    let id = b.writes.next();
    assert!(b.put(&u, &state, None, &id).await.is_ok());
    assert!(matches!(b.put(&u, &state, None, &id).await, Err(Lost::Race(_))), "the retried write conflicts");
    let stored = b.get_item(&u).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.write_id.as_deref()), (1, Some(id.as_str())));
    let seen = Some((stored.version, stored.write_id));
    assert!(DynamoBackend::landed(&seen, &(1, id.clone())), "the loop recognises its write");
    assert!(!DynamoBackend::landed(&seen, &(1, b.writes.next())), "and only its own");
    // A fresh decision would say Renewed; the write id shows it was Granted.
    assert!(matches!(outcome.reply, Reply::Decision(Decision::Granted(_))));
}

/// Unreadable items answer Unavailable for their user only, name the
/// problem, and are never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_item_is_unavailable_for_its_user_only() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let b = backend(local, &table, &clock).await;
    let bad = |attrs: &[(&str, AttributeValue)]| {
        let mut item = Item::new();
        for (k, v) in attrs {
            item.insert((*k).into(), v.clone());
        }
        item
    };
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let cases = [
        ("no-version", bad(&[("user_id", s("no-version"))])),
        ("bad-lease", bad(&[("user_id", s("bad-lease")), ("version", n("1")), ("leases", s("oops"))])),
        ("future", bad(&[("user_id", s("future")), ("version", n("1")), ("format", n("2"))])),
        ("bad-holder", {
            let lease: Item =
                [("s".into(), n("1")), ("e".into(), n("99999999999999999")), ("h".into(), s("a b"))].into();
            let leases = AttributeValue::M([("a".into(), AttributeValue::M(lease))].into());
            bad(&[("user_id", s("bad-holder")), ("version", n("1")), ("leases", leases)])
        }),
    ];
    for (name, item) in cases {
        b.client.put_item().table_name(&table).set_item(Some(item.clone())).send().await.unwrap();
        let store = Store::for_test(Box::new(backend(local, &table, &clock).await));
        let err = store.acquire(&user(name), acquire("a", 1)).await.unwrap_err().to_string();
        assert!(err.contains("unreadable") && err.contains(name), "{err}");
        assert!(store.list(&user(name), Limit::new(1).unwrap()).await.is_err());
        let after = b.client.get_item().table_name(&table).key(KEY, s(name)).send().await.unwrap().item.unwrap();
        assert_eq!(after, item, "left as it was");
    }
    let store = Store::for_test(Box::new(b));
    assert!(matches!(store.acquire(&user("fine"), acquire("a", 1)).await.unwrap(), Decision::Granted(_)));
}

/// An item's size by DynamoDB's rules: attribute names plus values, where
/// a string is its UTF-8 bytes, a number about one byte per two
/// significant digits plus one, and a map 3 bytes plus 1 per element.
fn item_size(item: &Item) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => {
                let digits = n.trim_start_matches('-').trim_start_matches('0').replace('.', "");
                digits.trim_end_matches('0').len().div_ceil(2) + 1
            }
            AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + value(v)).sum::<usize>(),
            other => panic!("not in streamcap's items: {other:?}"),
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// Writes `state` for `user` through the backend's own encoding, then
/// writes the same item again asking for the consumed capacity: DynamoDB
/// bills one write unit per started KB of the item, so that measures it.
async fn write_and_measure(b: &DynamoBackend, table: &str, user: &UserId, state: &UserState) -> (usize, f64) {
    let item = item::encode(user, state, 1, &b.writes.next());
    let estimated = item_size(&item);
    let out = b
        .client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    let units = out.consumed_capacity.and_then(|c| c.capacity_units).expect("DynamoDB reports the write units");
    (estimated, units)
}

/// A UUID-length id, distinct per `kind` and `i`.
fn uuid(kind: char, i: usize) -> String {
    format!("{kind}{i:07x}-2c1f-4b7e-9a3d-5e8f01234567")
}

/// The largest account the rules allow: 1000 live leases with UUID-length
/// stream, device and content ids and a realistic device class, content
/// kind and plan, plus 1000 tombstones (a revocation, then 1000 new
/// streams). Built by the rules, written by the store, and then used
/// through the store: it stays well inside DynamoDB's 400 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_account_with_tombstones_fits_in_one_item() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let b = backend(local, &table, &clock).await;
    let u = user(&uuid('u', 0));
    let labelled = |i: usize| Acquire {
        device_id: Some(Label::new(&uuid('d', i)).unwrap()),
        content_id: Some(Label::new(&uuid('c', i)).unwrap()),
        device_class: Some(Label::new("smart-tv").unwrap()),
        content_kind: Some(Label::new("live").unwrap()),
        plan: Some(Label::new("premium").unwrap()),
        ..acquire(&uuid('s', i), 1000)
    };
    let mut state = UserState::default();
    for i in 0..1000 {
        apply(&mut state, Op::Acquire(labelled(i)), clock.now());
        clock.advance_ms(1);
    }
    let (leases_only, units) = write_and_measure(&b, &table, &u, &state).await;
    eprintln!("1000 leases: {leases_only} bytes by DynamoDB's rules, {units} write units");
    apply(&mut state, Op::RevokeAll { ttl: Ttl::from_secs(60).unwrap() }, clock.now());
    for i in 1000..2000 {
        apply(&mut state, Op::Acquire(labelled(i)), clock.now());
        clock.advance_ms(1);
    }
    assert_eq!((state.leases().len(), state.tombstones().len()), (1000, 1000));
    let (size, units) = write_and_measure(&b, &table, &u, &state).await;
    eprintln!("1000 leases and 1000 tombstones: {size} bytes by DynamoDB's rules, {units} write units");
    // DynamoDB rounds an item up to whole KB for billing; the estimate
    // must agree with what it billed.
    assert_eq!(units, size.div_ceil(1024) as f64, "estimate {size} bytes");
    // 60% of the limit: room for 600 more such tombstones (after a
    // second revocation) before a write of this user could be refused.
    assert!(size < 240 * 1024, "{size} bytes");

    // The store reads it, renews in it, refuses the 1001st and lists it.
    let store = Store::for_test(Box::new(b));
    clock.advance_ms(1);
    let renewed = store.acquire(&u, labelled(1999)).await.unwrap();
    assert!(matches!(renewed, Decision::Renewed(_)), "{renewed:?}");
    match store.acquire(&u, labelled(5000)).await.unwrap() {
        Decision::Denied(d) => assert_eq!(d.live.len(), 1000),
        d => panic!("{d:?}"),
    }
    assert!(matches!(store.acquire(&u, labelled(7)).await.unwrap(), Decision::Gone(_)));
    assert_eq!(store.list(&u, Limit::new(1000).unwrap()).await.unwrap().1.len(), 1000);
}

/// With ids and labels at their 128-character maximum, 1000 leases do not
/// fit in one item: DynamoDB refuses it, and only about half as many fit.
/// 1000 tombstones of such streams leave room for fewer still. The write
/// that would exceed 400 KB is refused by DynamoDB: the store answers
/// Unavailable, naming the cause, and grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_over_400_kb_is_refused_without_a_grant() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let b = backend(local, &table, &clock).await;
    let u = user(&"u".repeat(128));
    let max = |i: usize| {
        let id = |c: char| format!("{c}{i:04}{}", "x".repeat(123));
        let label = |c: char| Some(Label::new(&id(c)).unwrap());
        Acquire {
            device_id: label('d'),
            content_id: label('c'),
            device_class: label('k'),
            content_kind: label('n'),
            plan: label('p'),
            ..acquire(&id('s'), 1000)
        }
    };
    let mut state = UserState::default();
    let mut fit = None;
    for i in 0..1000 {
        let before = state.clone();
        apply(&mut state, Op::Acquire(max(i)), clock.now());
        if fit.is_none() && item_size(&item::encode(&u, &state, 1, "w")) > 400 * 1024 {
            fit = Some(before);
        }
    }
    let fit = fit.expect("1000 leases with 128-character labels exceed 400 KB");
    let size = item_size(&item::encode(&u, &state, 1, "w"));
    eprintln!("1000 leases with 128-character ids and labels: {size} bytes by DynamoDB's rules");
    match b.put(&u, &state, None, &b.writes.next()).await {
        Err(Lost::Failed(e)) => assert!(e.to_string().contains("400 KB"), "{e}"),
        Err(Lost::Race(_)) => panic!("no item to race with"),
        Ok(()) => panic!("DynamoDB took an item of {size} bytes"),
    }
    let (most, units) = write_and_measure(&b, &table, &u, &fit).await;
    assert_eq!(units, most.div_ceil(1024) as f64, "estimate {most} bytes");
    eprintln!("the most such leases one item holds: {}, {most} bytes, {units} write units", fit.leases().len());
    apply(&mut state, Op::RevokeAll { ttl: Ttl::from_secs(60).unwrap() }, clock.now());
    let (tombs, _) = write_and_measure(&b, &table, &u, &state).await;
    eprintln!("1000 tombstones of 128-character streams: {tombs} bytes");
    // New leases, in memory, up to a few KB short of the limit.
    let mut granted = 0;
    loop {
        let mut next = state.clone();
        apply(&mut next, Op::Acquire(max(1000 + granted)), clock.now());
        if item_size(&item::encode(&u, &next, 1, "w")) > 396 * 1024 {
            break;
        }
        (state, granted) = (next, granted + 1);
    }
    write_and_measure(&b, &table, &u, &state).await;
    let store = Store::for_test(Box::new(b));
    let refusal = loop {
        match store.acquire(&u, max(1000 + granted)).await {
            Ok(Decision::Granted(_)) => granted += 1,
            Ok(d) => panic!("{d:?}"),
            Err(e) => break e.to_string(),
        }
        assert!(granted < 1000, "these leases should not all fit");
    };
    eprintln!("beside those tombstones, lease {} was refused: {refusal}", granted + 1);
    assert!(refusal.contains("400 KB"), "{refusal}");
    let (_, live) = store.list(&u, Limit::new(1000).unwrap()).await.unwrap();
    assert_eq!(live.len(), granted, "the refused acquire granted nothing");
    // Freeing a seat shrinks the item, and the user is served again.
    store.release(&u, live[0].stream_id.clone()).await.unwrap();
    assert!(matches!(store.acquire(&u, max(1000 + granted)).await.unwrap(), Decision::Granted(_)));
}

/// An item written before leases had a device class, content kind, plan
/// and holder is served as it is, and the write of a renewal that names
/// them stores them under their short names, for the next reader to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_without_lease_attributes_is_read_and_gains_them() {
    let local = DynamoLocal::shared();
    let clock = ManualClock::new(T0);
    let table = table(local).await;
    let b = backend(local, &table, &clock).await;
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: i64| AttributeValue::N(v.to_string());
    let (start, end) = (T0.as_micros(), T0.plus(Ttl::from_secs(60).unwrap()).as_micros());
    let old_lease: Item = [("s".into(), n(start)), ("e".into(), n(end)), ("d".into(), s("living-room"))].into();
    let old: Item = [
        (KEY.into(), s("old")),
        ("version".into(), n(4)),
        ("write_id".into(), s("earlier-1")),
        ("leases".into(), AttributeValue::M([("tv".into(), AttributeValue::M(old_lease))].into())),
        ("override".into(), n(1)),
    ]
    .into();
    b.client.put_item().table_name(&table).set_item(Some(old)).send().await.unwrap();
    let first = store(local, &table, &clock).await;
    let u = user("old");
    let (limit, live) = first.list(&u, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!((limit.get(), live.len()), (1, 1));
    let l = &live[0];
    assert_eq!(
        (l.device_id.as_ref().map(Label::as_str), &l.device_class, &l.content_kind, &l.plan),
        (Some("living-room"), &None, &None, &None)
    );
    assert!(matches!(first.acquire(&u, acquire("phone", 3)).await.unwrap(), Decision::Denied(_)), "the override holds");

    clock.advance_ms(1_000);
    let label = |v: &str| Some(Label::new(v).unwrap());
    let renew = Acquire {
        device_class: label("tv"),
        content_kind: label("live"),
        plan: label("premium"),
        holder: Some(Holder::new("sock-1").unwrap()),
        ..acquire("tv", 3)
    };
    let renewed = match first.acquire(&u, renew).await.unwrap() {
        Decision::Renewed(g) => g.lease,
        d => panic!("{d:?}"),
    };
    let item = b.client.get_item().table_name(&table).key(KEY, s("old")).consistent_read(true).send().await.unwrap();
    let item = item.item.unwrap();
    let tv = item["leases"].as_m().unwrap()["tv"].as_m().unwrap();
    let mut fields: Vec<&str> = tv.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["ck", "d", "dc", "e", "h", "p", "s"]);
    assert_eq!((&tv["dc"], &tv["ck"], &tv["p"], &tv["d"]), (&s("tv"), &s("live"), &s("premium"), &s("living-room")));
    assert_eq!(tv["h"], s("sock-1"));
    assert_eq!(item["version"], n(5));
    // Another instance reads back the same lease.
    let other = store(local, &table, &clock).await;
    assert_eq!(other.list(&u, Limit::new(3).unwrap()).await.unwrap().1, vec![renewed]);
}

/// `create_table` turns TTL on for `expires_at`, and an item whose last
/// lease and tombstone have ended is deleted by DynamoDB (DynamoDB Local
/// does it within seconds, AWS within days). An override keeps its item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_deletes_idle_items_but_keeps_overrides() {
    let local = DynamoLocal::shared();
    let name = harness::table_name("ttl");
    let mut said = Vec::new();
    create_table(&name, Some(&local.endpoint()), &aws(), &mut |l| said.push(l.to_owned())).await.unwrap();
    assert_eq!(said.last().map(String::as_str), Some("enabled TTL on expires_at"), "{said:?}");
    // A clock ten minutes behind the real one: everything it writes with a
    // one-second TTL has long ended by the time DynamoDB looks.
    let real = crate::clock::SystemClock.now();
    let clock = ManualClock::new(Timestamp::from_micros(real.as_micros() - 600_000_000));
    let store = store(local, &name, &clock).await;
    let short = |s: &str| Acquire { ttl: Ttl::from_secs(1).unwrap(), ..acquire(s, 2) };
    store.acquire(&user("idle"), short("a")).await.unwrap();
    store.acquire(&user("kept"), short("a")).await.unwrap();
    store.set_override(&user("kept"), Limit::new(2).map(Override::permanent)).await.unwrap();
    let b = backend(local, &name, &clock).await;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while b.get_item(&user("idle")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "TTL did not delete the idle item within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let kept = b.get_item(&user("kept")).await.unwrap().expect("an item with an override has no TTL");
    assert_eq!(kept.state.limit_override(), Limit::new(2).map(Override::permanent));
}
