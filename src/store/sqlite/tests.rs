//! The sqlite backend's own tests; the behaviour shared by every backend
//! is in the conformance suite and the differential test, run from here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::schema::MIGRATIONS;
use super::writer::SWEEP_BATCH;
use super::*;
use crate::clock::ManualClock;
use crate::limiter::{
    Acquire, Decision, Holder, Label, Lease, Limit, LimitSource, OnLimit, Override, RevokeReason, StreamId, Timestamp,
    Tombstone, Ttl, UserState,
};
use crate::store::memory::MemoryBackend;
use crate::store::{Store, conformance};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn open(dir: &Path, clock: &ManualClock) -> Store {
    Store::for_test(Box::new(reopen(dir, clock).unwrap()))
}

/// Opens the data dir that an earlier backend of this test held. Other
/// tests in this process start child processes, and a child forked while
/// the earlier backend was open holds a copy of its lock file's descriptor
/// (and so the lock) until it execs. Waiting out that window, bounded,
/// keeps such a reopen from failing for a reason the test is not about.
fn reopen(dir: &Path, clock: &ManualClock) -> Result<SqliteBackend, OpenError> {
    reopen_with(dir, clock, Limits::default())
}

/// [`reopen`], with the WAL sizes that trigger checkpoints.
fn reopen_with(dir: &Path, clock: &ManualClock, limits: Limits) -> Result<SqliteBackend, OpenError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SqliteBackend::open_with(dir, Arc::new(clock.clone()), limits) {
            Err(e) if e.0.contains("in use by another") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn req(stream: &str) -> Acquire {
    Acquire {
        stream_id: StreamId::new(stream).unwrap(),
        device_id: Some(Label::new("tv").unwrap()),
        content_id: None,
        device_class: None,
        content_kind: None,
        plan: None,
        rules: Default::default(),
        limit: Limit::new(3).unwrap(),
        ttl: Ttl::from_secs(60).unwrap(),
        on_limit: OnLimit::Reject,
        evict: Vec::new(),
        enforce: true,
        plans: None,
        held: false,
        holder: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    conformance::suite(&open(dir.path(), &clock), &clock).await;
}

#[test]
fn differential_against_the_memory_store() {
    conformance::differential(64, |clock| async move {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &clock);
        (store, Box::new(dir) as Box<dyn std::any::Any>)
    });
}

#[tokio::test]
async fn leases_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let user = UserId::new("u").unwrap();
    let store = open(dir.path(), &clock);
    store.acquire(&user, req("a")).await.unwrap();
    store.acquire(&user, req("b")).await.unwrap();
    store.release(&user, StreamId::new("b").unwrap()).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path(), &clock);
    let (_, live) = store.list(&user, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].stream_id.as_str(), "a");
    assert_eq!(live[0].device_id, Some(Label::new("tv").unwrap()));
    assert_eq!(live[0].started_at, T0);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let _first = SqliteBackend::open(dir.path(), Arc::new(clock.clone())).unwrap();
    let err = SqliteBackend::open(dir.path(), Arc::new(clock)).err().expect("second open must fail");
    assert!(err.0.contains("in use by another streamcap process"), "{err}");
}

#[tokio::test]
async fn closed_store_answers_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    store.close().await.unwrap();
    store.close().await.unwrap();
    let user = UserId::new("u").unwrap();
    assert!(matches!(store.acquire(&user, req("a")).await, Err(StoreError::Unavailable(_))));
    assert!(store.ping().await.is_err());
}

#[tokio::test]
async fn an_older_schema_is_migrated_in_place_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO leases VALUES ('u', 'old', NULL, NULL, ?1, ?2)",
            // Schema 1 kept milliseconds.
            params![T0.as_millis(), T0.plus(Ttl::from_secs(60).unwrap()).as_millis()],
        )
        .unwrap();
    }
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let user = UserId::new("u").unwrap();
    let (_, live) = store.list(&user, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!(live[0].stream_id.as_str(), "old");
    assert_eq!(live[0].started_at, T0, "times were converted to µs");
    store.set_override(&user, Limit::new(2).map(Override::permanent)).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len());
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(indexes.is_empty(), "the expiry indexes are gone: {indexes:?}");
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = reopen(dir.path(), &clock).err().expect("newer schema must be refused");
    assert!(err.0.contains("newer than this binary"), "{err}");
}

/// A database written by the previous schema (3), with leases, both kinds
/// of tombstone and an override, opens, migrates in place and keeps every
/// row; its leases have no device class, content kind or plan until a
/// renewal gives them one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_3_database_migrates_in_place_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = (T0.as_micros(), T0.plus(Ttl::from_secs(60).unwrap()).as_micros());
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        for migration in &MIGRATIONS[..3] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        // Schema 3's own columns, in its own order.
        let mut lease = conn.prepare("INSERT INTO leases VALUES (?1, ?2, ?3, ?4, ?5, ?6)").unwrap();
        lease.execute(params!["u", "tv", "living-room", "movie-42", start, end]).unwrap();
        lease.execute(params!["u", "phone", None::<String>, None::<String>, start + 1, end + 1]).unwrap();
        lease.execute(params!["v", "a", "laptop", None::<String>, start, end]).unwrap();
        let mut tomb = conn.prepare("INSERT INTO tombstones VALUES (?1, ?2, ?3, ?4)").unwrap();
        tomb.execute(params!["u", "old", "tv", end]).unwrap();
        tomb.execute(params!["w", "gone", None::<String>, end]).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('u', 2)", []).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('x', 0)", []).unwrap();
    }
    let label = |s: &str| Some(Label::new(s).unwrap());
    let old = |s: &str, device, content, at: i64| Lease {
        stream_id: StreamId::new(s).unwrap(),
        device_id: device,
        content_id: content,
        device_class: None,
        content_kind: None,
        plan: None,
        holder: None,
        started_at: Timestamp::from_micros(start + at),
        expires_at: Timestamp::from_micros(end + at),
    };
    let tomb = |s: &str, reason| Tombstone {
        stream_id: StreamId::new(s).unwrap(),
        reason,
        until: Timestamp::from_micros(end),
    };
    let expected: Snapshot = [
        (
            "u",
            canonical(
                vec![old("tv", label("living-room"), label("movie-42"), 0), old("phone", None, None, 1)],
                vec![tomb("old", RevokeReason::EvictedBy(StreamId::new("tv").unwrap()))],
                Limit::new(2).map(Override::permanent),
            ),
        ),
        ("v", canonical(vec![old("a", label("laptop"), None, 0)], Vec::new(), None)),
        ("w", canonical(Vec::new(), vec![tomb("gone", RevokeReason::Revoked)], None)),
        ("x", canonical(Vec::new(), Vec::new(), Limit::new(0).map(Override::permanent))),
    ]
    .into_iter()
    .map(|(u, s)| (u.to_owned(), s))
    .collect();

    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, expected, "loaded");
    assert_eq!(on_disk(dir.path()), expected, "migrated without touching a row");
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len());

    // The migrated rows answer as before: the override, the tombstones.
    let (u, w) = (UserId::new("u").unwrap(), UserId::new("w").unwrap());
    assert!(matches!(store.acquire(&u, req("laptop")).await.unwrap(), Decision::Denied(_)), "override of 2");
    assert!(matches!(store.acquire(&u, req("old")).await.unwrap(), Decision::Gone(_)));
    assert!(matches!(store.acquire(&w, req("gone")).await.unwrap(), Decision::Gone(_)));
    // A renewal gives an old lease its attributes, and they are written.
    let renew = Acquire { device_class: label("tv"), content_kind: label("live"), plan: label("premium"), ..req("tv") };
    let renewed = match store.acquire(&u, renew).await.unwrap() {
        Decision::Renewed(g) => g.lease,
        d => panic!("{d:?}"),
    };
    assert_eq!(
        (renewed.device_class.clone(), renewed.content_kind.clone(), renewed.plan.clone()),
        (label("tv"), label("live"), label("premium"))
    );
    assert_eq!(renewed.device_id, label("tv"), "req() names device tv");
    store.close().await.unwrap();
    drop(store);

    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
    let (_, live) = store.list(&u, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!(live.iter().find(|l| l.stream_id.as_str() == "tv"), Some(&renewed));
}

/// A database written by the previous schema (4), with leases carrying
/// every attribute, both kinds of tombstone and an override, opens,
/// migrates in place and keeps every row; its leases have no holder until
/// a socket renews one, and the holder is written and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_4_database_migrates_in_place_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = (T0.as_micros(), T0.plus(Ttl::from_secs(60).unwrap()).as_micros());
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        for migration in &MIGRATIONS[..4] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        // Schema 4's own columns, in its own order.
        let mut lease = conn.prepare("INSERT INTO leases VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)").unwrap();
        lease.execute(params!["u", "tv", "living-room", "movie-42", start, end, "tv", "live", "premium"]).unwrap();
        let none = None::<String>;
        lease.execute(params!["u", "phone", none, none, start + 1, end + 1, "mobile", none, none]).unwrap();
        lease.execute(params!["v", "a", "laptop", none, start, end, none, "vod", "basic"]).unwrap();
        let mut tomb = conn.prepare("INSERT INTO tombstones VALUES (?1, ?2, ?3, ?4)").unwrap();
        tomb.execute(params!["u", "old", "tv", end]).unwrap();
        tomb.execute(params!["w", "gone", none, end]).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('u', 2)", []).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('x', 0)", []).unwrap();
    }
    let label = |s: &str| Some(Label::new(s).unwrap());
    let lease = |s: &str, labels: [Option<Label>; 5], at: i64| {
        let [device_id, content_id, device_class, content_kind, plan] = labels;
        Lease {
            stream_id: StreamId::new(s).unwrap(),
            device_id,
            content_id,
            device_class,
            content_kind,
            plan,
            holder: None,
            started_at: Timestamp::from_micros(start + at),
            expires_at: Timestamp::from_micros(end + at),
        }
    };
    let tomb = |s: &str, reason| Tombstone {
        stream_id: StreamId::new(s).unwrap(),
        reason,
        until: Timestamp::from_micros(end),
    };
    let tv = lease("tv", [label("living-room"), label("movie-42"), label("tv"), label("live"), label("premium")], 0);
    let expected: Snapshot = [
        (
            "u",
            canonical(
                vec![tv.clone(), lease("phone", [None, None, label("mobile"), None, None], 1)],
                vec![tomb("old", RevokeReason::EvictedBy(StreamId::new("tv").unwrap()))],
                Limit::new(2).map(Override::permanent),
            ),
        ),
        (
            "v",
            canonical(vec![lease("a", [label("laptop"), None, None, label("vod"), label("basic")], 0)], vec![], None),
        ),
        ("w", canonical(Vec::new(), vec![tomb("gone", RevokeReason::Revoked)], None)),
        ("x", canonical(Vec::new(), Vec::new(), Limit::new(0).map(Override::permanent))),
    ]
    .into_iter()
    .map(|(u, s)| (u.to_owned(), s))
    .collect();

    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, expected, "loaded");
    assert_eq!(on_disk(dir.path()), expected, "migrated without touching a row");
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len());
    let holders: i64 =
        conn.query_row("SELECT count(*) FROM leases WHERE holder IS NOT NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(holders, 0);

    // The migrated rows answer as before: the override, the tombstones.
    let (u, w) = (UserId::new("u").unwrap(), UserId::new("w").unwrap());
    assert!(matches!(store.acquire(&u, req("laptop")).await.unwrap(), Decision::Denied(_)), "override of 2");
    assert!(matches!(store.acquire(&u, req("old")).await.unwrap(), Decision::Gone(_)));
    assert!(matches!(store.acquire(&w, req("gone")).await.unwrap(), Decision::Gone(_)));
    // A socket's renewal gives the lease a holder, keeping everything else.
    let sock = Some(Holder::new("sock-1").unwrap());
    let renew = Acquire { device_id: None, holder: sock.clone(), ..req("tv") };
    let renewed = match store.acquire(&u, renew).await.unwrap() {
        Decision::Renewed(g) => {
            assert_eq!(g.replaced, None);
            g.lease
        }
        d => panic!("{d:?}"),
    };
    assert_eq!(renewed, Lease { holder: sock, expires_at: T0.plus(Ttl::from_secs(60).unwrap()), ..tv });
    store.close().await.unwrap();
    drop(store);

    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
    let (_, live) = store.list(&u, Limit::new(3).unwrap()).await.unwrap();
    assert_eq!(live.iter().find(|l| l.stream_id.as_str() == "tv"), Some(&renewed));
}

/// A database of the previous schema (5) migrates in place: its overrides
/// keep their limits and last for good. An override with an expiry is then
/// written with it, read back at open, ends at that time, and is dropped
/// from the file by the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_5_database_migrates_and_overrides_gain_an_expiry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        for migration in &MIGRATIONS[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('u', 2)", []).unwrap();
        conn.execute("INSERT INTO overrides VALUES ('v', 0)", []).unwrap();
    }
    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    let expected: Snapshot = [("u", 2), ("v", 0)]
        .into_iter()
        .map(|(u, n)| (u.to_owned(), canonical(vec![], vec![], Limit::new(n).map(Override::permanent))))
        .collect();
    assert_eq!(in_memory(&jobs).await, expected, "loaded");
    assert_eq!(on_disk(dir.path()), expected, "migrated without touching a row");

    let (u, three) = (UserId::new("u").unwrap(), Limit::new(3).unwrap());
    let until = T0.plus(Ttl::from_secs(30).unwrap());
    let ending = Override { limit: Limit::new(5).unwrap(), expires_at: Some(until) };
    store.set_override(&u, Some(ending)).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
    assert_eq!(
        store.limit(&u, three, LimitSource::Default).await.unwrap(),
        (Limit::new(5).unwrap(), LimitSource::Override, Some(until))
    );
    clock.advance_ms(30_000);
    assert_eq!(store.limit(&u, three, LimitSource::Default).await.unwrap(), (three, LimitSource::Default, None));
    store.inner.backend.sweep().await.unwrap();
    let left = on_disk(dir.path());
    assert_eq!(left.keys().collect::<Vec<_>>(), ["v"], "the sweeper dropped the ended override");
}

/// Every attribute of a lease is written with it and read back at open:
/// after a restart, the lease comes back identical in a listing, a
/// renewal, a denial and an eviction. A renewal that names new attributes
/// replaces them on disk; one that names none keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_attributes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let u = UserId::new("u").unwrap();
    let label = |s: &str| Some(Label::new(s).unwrap());
    let sock = |h: &str| Some(Holder::new(h).unwrap());
    let tv = Acquire {
        device_class: label("tv"),
        content_kind: label("live"),
        content_id: label("final"),
        plan: label("premium"),
        holder: sock("sock-1"),
        ..req("tv")
    };
    let (store, jobs, _) = opened(dir.path(), &clock);
    let granted = match store.acquire(&u, tv).await.unwrap() {
        Decision::Granted(g) => g.lease,
        d => panic!("{d:?}"),
    };
    assert_eq!(
        (granted.device_class.clone(), granted.content_kind.clone(), granted.plan.clone(), granted.holder.clone()),
        (label("tv"), label("live"), label("premium"), sock("sock-1"))
    );
    // Moves to another class and kind, names no plan and no holder: the
    // plan and the holder stay.
    clock.advance_ms(1_000);
    let moved = Acquire { device_class: label("mobile"), content_kind: label("vod"), ..req("tv") };
    let moved = match store.acquire(&u, moved).await.unwrap() {
        Decision::Renewed(g) => g.lease,
        d => panic!("{d:?}"),
    };
    assert_eq!(
        (moved.device_class.clone(), moved.content_kind.clone(), moved.content_id.clone(), moved.plan.clone()),
        (label("mobile"), label("vod"), label("final"), label("premium"))
    );
    assert_eq!(moved.holder, sock("sock-1"));
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
    // No clean close: the commit is what counts.
    drop(store);

    let (store, jobs, _) = opened(dir.path(), &clock);
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
    let one = Limit::new(1).unwrap();
    assert_eq!(store.list(&u, one).await.unwrap().1, vec![moved.clone()], "listed");
    let limited = |s: &str| Acquire { limit: one, ..req(s) };
    match store.acquire(&u, limited("phone")).await.unwrap() {
        Decision::Denied(d) => assert_eq!(d.live, vec![moved.clone()], "a refusal lists it"),
        d => panic!("{d:?}"),
    }
    // A renewal naming a plan and another socket replaces both, and the
    // restart keeps that too.
    clock.advance_ms(1_000);
    let basic = Acquire { plan: label("basic"), holder: sock("sock-2"), ..limited("tv") };
    let basic = match store.acquire(&u, basic).await.unwrap() {
        Decision::Renewed(g) => {
            assert_eq!(g.replaced, sock("sock-1"));
            g.lease
        }
        d => panic!("{d:?}"),
    };
    assert_eq!(
        basic,
        Lease {
            plan: label("basic"),
            holder: sock("sock-2"),
            expires_at: clock.now().plus(Ttl::from_secs(60).unwrap()),
            ..moved
        }
    );
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path(), &clock);
    clock.advance_ms(1_000);
    match store.acquire(&u, Acquire { on_limit: OnLimit::EvictOldest, ..limited("phone") }).await.unwrap() {
        Decision::Granted(g) => assert_eq!(g.evicted, vec![basic], "an eviction reports it"),
        d => panic!("{d:?}"),
    }
}

/// Jobs that queue up while the writer is busy share one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let backend = SqliteBackend::open(dir.path(), Arc::new(clock.clone())).unwrap();
    let (jobs, stats) = (backend.jobs.clone(), backend.stats.clone());
    let held = Held::new(&jobs).await;
    let store = Store::for_test(Box::new(backend));

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let store = store.clone();
        calls.spawn(async move {
            let user = UserId::new(&format!("user{i}")).unwrap();
            store.acquire(&user, req("s")).await.unwrap()
        });
    }
    held.queued(&jobs, 50).await;
    assert_eq!(stats.commits.load(Ordering::SeqCst), 0);
    held.release();
    while let Some(d) = calls.join_next().await {
        assert!(matches!(d.unwrap(), Decision::Granted(_)));
    }
    // One commit for the held batch, one for all 50 queued requests.
    assert_eq!(stats.commits.load(Ordering::SeqCst), 2);
    assert_eq!(stats.jobs.load(Ordering::SeqCst), 50);
}

/// The writer blocked inside a batch, so that the jobs sent meanwhile
/// queue up and then run as one batch.
struct Held(std::sync::mpsc::Sender<()>);

impl Held {
    async fn new(jobs: &mpsc::Sender<Job>) -> Held {
        let (release, until) = std::sync::mpsc::channel();
        let (holding, held) = std::sync::mpsc::channel();
        jobs.send(Job::Hold { holding, until }).await.unwrap();
        tokio::task::spawn_blocking(move || held.recv()).await.unwrap().unwrap();
        Held(release)
    }

    /// Waits until `n` jobs wait for the writer.
    async fn queued(&self, jobs: &mpsc::Sender<Job>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while jobs.max_capacity() - jobs.capacity() < n {
            assert!(Instant::now() < deadline, "jobs never queued up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn release(self) {
        drop(self.0);
    }
}

/// Every user's leases, tombstones and override, in a canonical order.
type Snapshot = BTreeMap<String, UserState>;

fn canonical(leases: Vec<Lease>, tombstones: Vec<Tombstone>, limit: Option<Override>) -> UserState {
    let mut leases = leases;
    leases.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    let mut tombstones = tombstones;
    tombstones.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    UserState::new(leases, tombstones, limit)
}

/// What the writer holds in memory.
async fn in_memory(jobs: &mpsc::Sender<Job>) -> Snapshot {
    let (reply, rx) = oneshot::channel();
    jobs.send(Job::Snapshot { reply }).await.unwrap();
    let all = rx.await.unwrap();
    all.into_iter()
        .map(|(u, s)| {
            let state = canonical(s.leases().to_vec(), s.tombstones().to_vec(), s.limit_override());
            (u.as_str().to_owned(), state)
        })
        .collect()
}

/// What the file holds, read with plain SQL on a connection of its own.
fn on_disk(dir: &Path) -> Snapshot {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    type Rows = (Vec<Lease>, Vec<Tombstone>, Option<Override>);
    let mut users: BTreeMap<String, Rows> = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT user_id, stream_id, device_id, content_id, started_at, expires_at, device_class, content_kind, plan,
                    holder
             FROM leases",
        )
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let label = |i| r.get::<_, Option<String>>(i).unwrap().map(|l| Label::new(&l).unwrap());
        users.entry(r.get(0).unwrap()).or_default().0.push(Lease {
            stream_id: StreamId::new(&r.get::<_, String>(1).unwrap()).unwrap(),
            device_id: label(2),
            content_id: label(3),
            device_class: label(6),
            content_kind: label(7),
            plan: label(8),
            holder: r.get::<_, Option<String>>(9).unwrap().map(|h| Holder::new(&h).unwrap()),
            started_at: Timestamp::from_micros(r.get(4).unwrap()),
            expires_at: Timestamp::from_micros(r.get(5).unwrap()),
        });
    }
    let mut stmt = conn.prepare("SELECT user_id, stream_id, evicted_by, until FROM tombstones").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        users.entry(r.get(0).unwrap()).or_default().1.push(Tombstone {
            stream_id: StreamId::new(&r.get::<_, String>(1).unwrap()).unwrap(),
            reason: match r.get::<_, Option<String>>(2).unwrap() {
                Some(by) => RevokeReason::EvictedBy(StreamId::new(&by).unwrap()),
                None => RevokeReason::Revoked,
            },
            until: Timestamp::from_micros(r.get(3).unwrap()),
        });
    }
    let mut stmt = conn.prepare("SELECT user_id, stream_limit, expires_at FROM overrides").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let expires_at = r.get::<_, Option<i64>>(2).unwrap().map(Timestamp::from_micros);
        users.entry(r.get(0).unwrap()).or_default().2 =
            Limit::new(r.get(1).unwrap()).map(|limit| Override { limit, expires_at });
    }
    users.into_iter().map(|(u, (l, t, o))| (u, canonical(l, t, o))).collect()
}

/// A deterministic mix of every operation over a few users, with clock
/// advances, so that leases (some held by sockets), tombstones of both
/// kinds and overrides pile up and expire.
struct Workload {
    seed: u64,
}

impl Workload {
    fn next(&mut self, n: u64) -> u64 {
        // 64-bit LCG (Knuth's MMIX constants); the high bits are the good ones.
        self.seed = self.seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.seed >> 33) % n
    }

    /// The next operation, or `None` after moving the clock.
    fn op(&mut self, clock: &ManualClock) -> Option<(UserId, Op)> {
        let user = UserId::new(&format!("u{}", self.next(6))).unwrap();
        let stream = |w: &mut Self| StreamId::new(&format!("s{}", w.next(8))).unwrap();
        let limit = |w: &mut Self| Limit::new(w.next(4) as u32).unwrap();
        let op = match self.next(20) {
            0..=8 => {
                let mut a = req(stream(self).as_str());
                a.limit = limit(self);
                a.ttl = Ttl::from_secs(1 + self.next(90) as u32).unwrap();
                a.device_id = [None, Some(Label::new("tv").unwrap())][self.next(2) as usize].clone();
                a.content_id = [None, Some(Label::new("é title").unwrap())][self.next(2) as usize].clone();
                let pick = |w: &mut Self, labels: [&str; 2]| {
                    let i = w.next(3) as usize;
                    (i > 0).then(|| Label::new(labels[i - 1]).unwrap())
                };
                a.device_class = pick(self, ["tv", "mobile"]);
                a.content_kind = pick(self, ["live", "download"]);
                a.plan = pick(self, ["basic", "premium"]);
                a.holder = pick(self, ["sock-1", "sock-2"]).map(|h| Holder::new(h.as_str()).unwrap());
                a.on_limit = [OnLimit::Reject, OnLimit::EvictOldest][self.next(2) as usize];
                if self.next(5) == 0 {
                    a.evict = vec![stream(self), stream(self)];
                }
                a.enforce = self.next(8) != 0;
                Op::Acquire(a)
            }
            9 => Op::Release(stream(self)),
            10 => {
                let holder = Holder::new(["sock-1", "sock-2"][self.next(2) as usize]).unwrap();
                Op::ReleaseHeld { stream: stream(self), holder }
            }
            11 => Op::RevokeAll { ttl: Ttl::from_secs(1 + self.next(60) as u32).unwrap() },
            12 => {
                let limit = limit(self);
                let ends = Timestamp::from_micros(clock.now().as_micros() + 1_000 * (1 + self.next(60_000) as i64));
                let expires_at = [None, Some(ends)][self.next(2) as usize];
                Op::SetOverride([None, Some(Override { limit, expires_at })][self.next(2) as usize])
            }
            19 => Op::Revoke { stream: stream(self), ttl: Ttl::from_secs(1 + self.next(60) as u32).unwrap() },
            13 => Op::List { limit: limit(self) },
            14 => Op::GetLimit { fallback: limit(self), source: LimitSource::Plan },
            _ => {
                clock.advance_ms(self.next(30_000) as i64);
                return None;
            }
        };
        Some((user, op))
    }
}

fn opened(dir: &Path, clock: &ManualClock) -> (Store, mpsc::Sender<Job>, Arc<Stats>) {
    opened_with(dir, clock, Limits::default())
}

fn opened_with(dir: &Path, clock: &ManualClock, limits: Limits) -> (Store, mpsc::Sender<Job>, Arc<Stats>) {
    let backend = reopen_with(dir, clock, limits).unwrap();
    let (jobs, stats) = (backend.jobs.clone(), backend.stats.clone());
    (Store::for_test(Box::new(backend)), jobs, stats)
}

/// The writer's memory always equals the file, and reopening the file
/// brings back exactly that state: the same leases, tombstones and
/// overrides, and afterwards the same answers as a store that never
/// restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_loads_exactly_what_memory_held() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let reference = Store::for_test(Box::new(MemoryBackend::new(Arc::new(clock.clone()))));
    let mut workload = Workload { seed: 7 };
    let mut saw = (false, false, false, false);
    for round in 0..6 {
        let (store, jobs, _) = opened(dir.path(), &clock);
        if round > 0 {
            assert_eq!(in_memory(&jobs).await, on_disk(dir.path()), "round {round}: loaded state");
        }
        for i in 0..300 {
            let Some((user, op)) = workload.op(&clock) else { continue };
            let expected = reference.execute(&user, op.clone()).await.unwrap();
            let got = store.execute(&user, op).await.unwrap();
            assert_eq!(got, expected, "round {round}, step {i}");
        }
        let memory = in_memory(&jobs).await;
        assert_eq!(memory, on_disk(dir.path()), "round {round}: memory and disk");
        for state in memory.values() {
            saw.0 |= state.tombstones().iter().any(|t| matches!(t.reason, RevokeReason::EvictedBy(_)));
            saw.1 |= state.tombstones().iter().any(|t| t.reason == RevokeReason::Revoked);
            saw.2 |= state.limit_override().is_some();
            saw.3 |= state.leases().iter().any(|l| l.holder.is_some());
        }
        // Half the rounds end without a clean close.
        if round % 2 == 0 {
            store.close().await.unwrap();
        }
        // Dropping the store lets go of the data dir.
        drop(store);
    }
    assert_eq!(saw, (true, true, true, true), "the workload left evictions, revocations, overrides and holders behind");
}

/// If a statement fails, the whole batch fails: every job in it answers
/// `Unavailable`, and neither the file nor the memory keeps any of its
/// changes, even those of jobs that ran before the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_fails_its_batch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    let (u, v) = (UserId::new("u").unwrap(), UserId::new("v").unwrap());
    store.acquire(&u, req("a")).await.unwrap();
    store.acquire(&u, req("b")).await.unwrap();
    let before = in_memory(&jobs).await;

    // Another connection makes any insert of stream "boom" fail.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER boom BEFORE INSERT ON leases WHEN NEW.stream_id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();

    let held = Held::new(&jobs).await;
    let mut calls = tokio::task::JoinSet::new();
    for (user, stream) in [(&u, "c"), (&v, "boom"), (&v, "d")] {
        let (store, user) = (store.clone(), user.clone());
        calls.spawn(async move { store.acquire(&user, req(stream)).await });
        held.queued(&jobs, calls.len()).await;
    }
    let (list_store, list_user) = (store.clone(), u.clone());
    let list = tokio::spawn(async move { list_store.list(&list_user, Limit::new(3).unwrap()).await });
    held.queued(&jobs, 4).await;
    held.release();
    while let Some(r) = calls.join_next().await {
        assert!(matches!(r.unwrap(), Err(StoreError::Unavailable(_))), "every acquire of the batch failed");
    }
    assert!(matches!(list.await.unwrap(), Err(StoreError::Unavailable(_))), "so did the read");

    assert_eq!(in_memory(&jobs).await, before, "memory kept nothing of the batch");
    assert_eq!(on_disk(dir.path()), before, "nor did the file");
    conn.execute_batch("DROP TRIGGER boom").unwrap();
    match store.acquire(&u, req("c")).await.unwrap() {
        Decision::Granted(g) => assert_eq!(g.active_streams, 3),
        d => panic!("{d:?}"),
    }
    assert!(matches!(store.acquire(&v, req("boom")).await.unwrap(), Decision::Granted(_)));
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
}

/// A commit that fails (a full disk, say) fails its batch the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_its_batch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    let u = UserId::new("u").unwrap();
    store.acquire(&u, req("a")).await.unwrap();
    store.set_override(&u, Limit::new(2).map(Override::permanent)).await.unwrap();
    let before = in_memory(&jobs).await;

    let held = Held::new(&jobs).await;
    jobs.send(Job::FailNextCommit).await.unwrap();
    let (s1, u1) = (store.clone(), u.clone());
    let renew = tokio::spawn(async move { s1.acquire(&u1, req("a")).await });
    held.queued(&jobs, 2).await;
    let (s2, u2) = (store.clone(), u.clone());
    let revoke = tokio::spawn(async move { s2.revoke_all(&u2, Ttl::from_secs(60).unwrap()).await });
    held.queued(&jobs, 3).await;
    let (s3, u3) = (store.clone(), u.clone());
    let clear = tokio::spawn(async move { s3.set_override(&u3, None).await });
    held.queued(&jobs, 4).await;
    clock.advance_ms(10_000);
    held.release();
    assert!(matches!(renew.await.unwrap(), Err(StoreError::Unavailable(_))));
    assert!(matches!(revoke.await.unwrap(), Err(StoreError::Unavailable(_))));
    assert!(matches!(clear.await.unwrap(), Err(StoreError::Unavailable(_))));

    assert_eq!(in_memory(&jobs).await, before, "memory kept nothing of the batch");
    assert_eq!(on_disk(dir.path()), before, "nor did the file");
    // The store goes on: the lease is still there and the override holds.
    match store.acquire(&u, req("a")).await.unwrap() {
        Decision::Renewed(g) => assert_eq!((g.lease.started_at, g.limit.get()), (T0, 2)),
        d => panic!("{d:?}"),
    }
}

/// Sweeping deletes every expired row from the file and the memory, in
/// steps of at most `SWEEP_BATCH` rows, and the live count follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeping_takes_bounded_steps_and_leaves_nothing_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (users, expired_tombstones) = (SWEEP_BATCH as i64, 700);
    {
        // Three leases per user, two of them expired, and tombstones,
        // some of them expired; written directly, and loaded at open.
        std::fs::create_dir_all(dir.path()).unwrap();
        let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        schema::prepare(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        let us = T0.as_micros();
        for u in 0..users {
            for (s, expires) in [("a", us - 1), ("b", us), ("c", us + 1)] {
                tx.execute(
                    "INSERT INTO leases (user_id, stream_id, started_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![format!("u{u}"), s, us - 10, expires],
                )
                .unwrap();
            }
        }
        for t in 0..1000 {
            let until = if t < expired_tombstones { us } else { us + 1 };
            tx.execute("INSERT INTO tombstones VALUES (?1, 'x', NULL, ?2)", params![format!("u{t}"), until]).unwrap();
        }
        tx.commit().unwrap();
    }
    let clock = ManualClock::new(T0);
    let (store, jobs, stats) = opened(dir.path(), &clock);
    assert_eq!(store.inner.backend.live_leases().await.unwrap(), Some(3 * users as u64), "held, not yet swept");

    let before = stats.jobs.load(Ordering::SeqCst);
    let removed = store.inner.backend.sweep().await.unwrap();
    assert_eq!(removed, 2 * users as u64);
    let steps = stats.jobs.load(Ordering::SeqCst) - before;
    let rows = 2 * users as u64 + expired_tombstones as u64;
    assert!(steps >= rows.div_ceil(SWEEP_BATCH as u64), "{steps} steps for {rows} rows");

    assert_eq!(store.inner.backend.sweep().await.unwrap(), 0, "nothing left to sweep");
    assert_eq!(store.inner.backend.live_leases().await.unwrap(), Some(users as u64));
    let memory = in_memory(&jobs).await;
    assert_eq!(memory, on_disk(dir.path()));
    assert_eq!(memory.len(), users as usize);
    assert!(memory.values().all(|s| s.leases().len() == 1 && s.tombstones().len() <= 1));
    assert_eq!(memory.values().map(|s| s.tombstones().len()).sum::<usize>(), 1000 - expired_tombstones);

    // Once everything has expired, users with nothing left are dropped.
    clock.advance_ms(1);
    store.inner.backend.sweep().await.unwrap();
    assert!(in_memory(&jobs).await.is_empty());
    assert!(on_disk(dir.path()).is_empty());
    assert_eq!(store.inner.backend.live_leases().await.unwrap(), Some(0));
}

/// A row that does not hold valid values makes its user answer
/// `Unavailable`, as it always has; it does not stop the store or touch
/// anyone else, and it stays in the file for an operator to fix.
#[tokio::test]
async fn a_corrupt_row_makes_only_its_user_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        schema::prepare(&conn).unwrap();
        let until = T0.as_micros() + 60_000_000;
        let long = "x".repeat(129);
        conn.execute_batch(&format!(
            "INSERT INTO leases (user_id, stream_id, started_at, expires_at) VALUES ('bad', 'ok', 0, {until});
             INSERT INTO leases (user_id, stream_id, started_at, expires_at) VALUES ('bad', 'not ok', 0, {until});
             INSERT INTO leases (user_id, stream_id, started_at, expires_at) VALUES ('good', 'a', 0, {until});
             INSERT INTO leases (user_id, stream_id, started_at, expires_at, device_class)
                VALUES ('classless', 'a', 0, {until}, X'07');
             INSERT INTO leases (user_id, stream_id, started_at, expires_at, plan)
                VALUES ('planless', 'a', 0, {until}, '{long}');
             INSERT INTO leases (user_id, stream_id, started_at, expires_at, holder)
                VALUES ('unheld', 'a', 0, {until}, 'not a token');
             INSERT INTO overrides (user_id, stream_limit) VALUES ('good', 1);
             INSERT INTO overrides (user_id, stream_limit) VALUES ('worse', 5000);
             INSERT INTO overrides VALUES ('late', 2, 'soon');
             INSERT INTO tombstones VALUES ('not a user', 'a', NULL, {until});"
        ))
        .unwrap();
    }
    let clock = ManualClock::new(T0);
    let (store, jobs, _) = opened(dir.path(), &clock);
    for (name, why) in [
        ("bad", "stream_id"),
        ("worse", "stream_limit 5000"),
        ("late", "expires_at is not an integer"),
        ("classless", "device_class is not text"),
        ("planless", "plan"),
        ("unheld", "holder \"not a token\""),
    ] {
        let user = UserId::new(name).unwrap();
        match store.list(&user, Limit::new(3).unwrap()).await {
            Err(StoreError::Unavailable(e)) => {
                assert!(e.contains(&format!("corrupt row for user {name}: {why}")), "{e}")
            }
            r => panic!("{name}: {r:?}"),
        }
        assert!(store.acquire(&user, req("x")).await.is_err());
    }
    let good = UserId::new("good").unwrap();
    assert!(matches!(store.acquire(&good, req("b")).await.unwrap(), Decision::Denied(_)), "limit 1 from the override");
    assert_eq!(store.inner.backend.sweep().await.unwrap(), 0);
    assert_eq!(in_memory(&jobs).await.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(on_disk_rows(dir.path()), 10, "nothing was deleted");
}

fn on_disk_rows(dir: &Path) -> i64 {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row(
        "SELECT (SELECT count(*) FROM leases) + (SELECT count(*) FROM tombstones) + (SELECT count(*) FROM overrides)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// WAL sizes that a test crosses with a few hundred writes.
const SMALL: Limits = Limits { every: 8, finish_at: 32, force_at: 64 };

/// The size of the WAL file, in pages (frames: a page and its header).
fn wal_pages(dir: &Path) -> u64 {
    let len = std::fs::metadata(dir.join(format!("{DB_FILE}-wal"))).map_or(0, |m| m.len());
    len.saturating_sub(32).div_ceil(4096 + 24)
}

/// The size of the database file itself, without its WAL.
fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(DB_FILE)).unwrap().len()
}

/// Pauses the checkpointer until resumed: a thread of its own holds the
/// lock that the checkpointer takes for each run.
struct Paused(std::sync::mpsc::Sender<()>);

impl Paused {
    fn new(stats: &Arc<Stats>) -> Paused {
        let (resume, until) = std::sync::mpsc::channel::<()>();
        let (holding, held) = std::sync::mpsc::channel();
        let stats = stats.clone();
        std::thread::spawn(move || {
            let _paused = stats.checkpointer_paused.lock().unwrap();
            holding.send(()).unwrap();
            let _ = until.recv();
        });
        held.recv().unwrap();
        Paused(resume)
    }

    fn resume(self) {
        drop(self.0);
    }
}

/// Eight acquires at once, each for a new user, spread over the key space
/// so that a commit touches several pages. Returns the users.
async fn write_round(store: &Store, next: &mut u64) -> Vec<UserId> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        // Multiplying by an odd constant scatters consecutive numbers.
        let user = UserId::new(&format!("w{:08x}", next.wrapping_mul(0x9E37_79B1) as u32)).unwrap();
        *next += 1;
        let store = store.clone();
        calls.spawn(async move {
            let decision = store.acquire(&user, req("s")).await.unwrap();
            assert!(matches!(decision, Decision::Granted(_)), "{decision:?}");
            user
        });
    }
    calls.join_all().await
}

/// The writer never checkpoints inside a commit: with the checkpointer
/// paused, the WAL grows past the 1000 pages at which SQLite would
/// checkpoint by itself, and no page reaches the database file. Once the
/// checkpointer runs again, it copies pages into the file while the writer
/// keeps committing, and the writer still runs no checkpoint of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_run_on_the_checkpointer_never_in_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let only_the_checkpointer = Limits { every: 8, finish_at: u32::MAX, force_at: u32::MAX };
    let (store, jobs, stats) = opened_with(dir.path(), &clock, only_the_checkpointer);
    let (file, mut next) = (file_len(dir.path()), 0);

    let paused = Paused::new(&stats);
    while wal_pages(dir.path()) <= 1000 {
        write_round(&store, &mut next).await;
    }
    assert_eq!(file_len(dir.path()), file, "no page reached the file");
    assert_eq!(stats.checkpoints.load(Ordering::SeqCst), 0);
    paused.resume();

    let mut rounds = 0;
    while file_len(dir.path()) == file || stats.checkpoints.load(Ordering::SeqCst) == 0 {
        write_round(&store, &mut next).await;
        rounds += 1;
        assert!(rounds < 10_000, "the checkpointer never copied a page");
    }
    assert_eq!(stats.writer_checkpoints.load(Ordering::SeqCst), 0, "the writer never checkpointed");
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
}

/// If the checkpointer falls behind (here it is paused), the writer
/// checkpoints itself once the WAL reaches `force_at` pages, and the WAL
/// starts over: under sustained writes, the file never grows past
/// `force_at` pages and one batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_bounds_the_wal_when_the_checkpointer_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, jobs, stats) = opened_with(dir.path(), &clock, SMALL);
    let paused = Paused::new(&stats);
    let (mut next, mut longest) = (0, 0);
    for _ in 0..300 {
        write_round(&store, &mut next).await;
        longest = longest.max(wal_pages(dir.path()));
    }
    assert!(longest <= 2 * u64::from(SMALL.force_at), "the WAL reached {longest} pages");
    assert!(stats.wal_restarts.load(Ordering::SeqCst) >= 3, "the WAL started over again and again");
    assert!(stats.writer_checkpoints.load(Ordering::SeqCst) >= 3);
    assert_eq!(stats.checkpoints.load(Ordering::SeqCst), 0, "the checkpointer was paused throughout");
    paused.resume();
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
}

/// Under sustained writes, with the checkpointer at work, the WAL starts
/// over again and again and stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_writes_the_wal_starts_over_and_stays_short() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, jobs, stats) = opened_with(dir.path(), &clock, SMALL);
    let (mut next, mut longest) = (0, 0);
    for _ in 0..300 {
        write_round(&store, &mut next).await;
        longest = longest.max(wal_pages(dir.path()));
    }
    // A commit or two more than with the writer alone: the writer's
    // checkpoint waits for the checkpointer's run to end.
    assert!(longest <= 4 * u64::from(SMALL.force_at), "the WAL reached {longest} pages");
    assert!(stats.wal_restarts.load(Ordering::SeqCst) >= 3, "the WAL started over again and again");
    assert!(stats.checkpoints.load(Ordering::SeqCst) >= 1);
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
}

/// An online backup works while the writer commits. A reader's snapshot
/// stays as it was, and the writer does not wait for it; while it reads,
/// nothing can be checkpointed past it and the WAL grows. `VACUUM INTO`
/// copies everything acknowledged before it began into a sound file. Once
/// the readers are done, the WAL starts over and is cut back to its usual
/// size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_works_and_holds_the_wal_only_while_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, jobs, stats) = opened_with(dir.path(), &clock, SMALL);
    let leases = |conn: &Connection| conn.query_row("SELECT count(*) FROM leases", [], |r| r.get::<_, u64>(0)).unwrap();
    let mut next = 0;
    for _ in 0..20 {
        write_round(&store, &mut next).await;
    }

    let reader = Connection::open(dir.path().join(DB_FILE)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(leases(&reader), 160);
    for _ in 0..100 {
        write_round(&store, &mut next).await;
    }
    assert_eq!(leases(&reader), 160, "the reader's snapshot did not move");
    let held = wal_pages(dir.path());
    assert!(held > 2 * u64::from(SMALL.force_at), "the WAL grew while the reader held it: {held} pages");
    reader.execute_batch("COMMIT").unwrap();

    let acknowledged = next;
    let writes = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                write_round(&store, &mut next).await;
            }
            next
        })
    };
    let copy = dir.path().join("backup.db");
    let backup = Connection::open(dir.path().join(DB_FILE)).unwrap();
    tokio::task::block_in_place(|| backup.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])).unwrap();
    let mut next = writes.await.unwrap();
    let copy = Connection::open(&copy).unwrap();
    let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let copied = leases(&copy);
    assert!((acknowledged..=next).contains(&copied), "{copied} leases, {acknowledged} acknowledged before");

    let restarts = stats.wal_restarts.load(Ordering::SeqCst);
    let mut rounds = 0;
    while stats.wal_restarts.load(Ordering::SeqCst) == restarts {
        write_round(&store, &mut next).await;
        rounds += 1;
        assert!(rounds < 1_000, "the WAL never started over once the readers were done");
    }
    let pages = wal_pages(dir.path());
    assert!(pages <= 2 * u64::from(SMALL.force_at), "the WAL is back to its usual size: {pages} pages, {held} before");
    assert_eq!(in_memory(&jobs).await, on_disk(dir.path()));
}

/// Closing stops the checkpointer and closes its connection before the
/// writer's. The writer's is then the last one open, and closing it
/// checkpoints the WAL and removes it, leaving the database file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stops_the_checkpointer_and_leaves_only_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (store, _, stats) = opened_with(dir.path(), &clock, SMALL);
    let mut next = 0;
    while stats.checkpoints.load(Ordering::SeqCst) == 0 {
        write_round(&store, &mut next).await;
        assert!(next < 80_000, "the checkpointer never ran");
    }
    store.close().await.unwrap();
    for file in ["-wal", "-shm"] {
        let path = dir.path().join(format!("{DB_FILE}{file}"));
        assert!(!path.exists(), "{} is left", path.display());
    }
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let leases: u64 = conn.query_row("SELECT count(*) FROM leases", [], |r| r.get(0)).unwrap();
    assert_eq!(leases, next);
}

/// Set in the child process of [`a_crash_loses_nothing_acknowledged`]:
/// the data dir it writes to.
const CRASH_CHILD: &str = "STREAMCAP_TEST_SQLITE_CRASH_CHILD";

/// A crash loses nothing that was acknowledged, wherever in the WAL's
/// cycle it comes. A child process (this test again) writes with small WAL
/// limits, so that the checkpointer, the writer's own checkpoints and
/// restarts of the WAL are all at work, and prints each acknowledgement.
/// It is killed (SIGKILL) while it writes; every grant and release it
/// printed is in the file when it is opened again.
#[test]
fn a_crash_loses_nothing_acknowledged() {
    use std::io::BufRead as _;
    use std::os::unix::process::ExitStatusExt as _;

    if let Some(dir) = std::env::var_os(CRASH_CHILD) {
        return crash_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    // A test's name leaves out the crate's.
    let name = concat!(module_path!(), "::a_crash_loses_nothing_acknowledged").split_once("::").unwrap().1;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CRASH_CHILD, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut held, mut released, mut killed) = (std::collections::BTreeSet::new(), Vec::new(), false);
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match line.split_once(' ') {
            Some(("granted", user)) => drop(held.insert(user.to_owned())),
            // From here on, the user may or may not hold the lease.
            Some(("releasing", user)) => drop(held.remove(user)),
            Some(("released", user)) => released.push(user.to_owned()),
            _ if line == "ready" && !killed => {
                child.kill().unwrap();
                killed = true;
            }
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    assert!(killed && status.signal().is_some(), "the child was killed while it wrote: {status:?}");
    assert!(!held.is_empty() && !released.is_empty(), "{} held, {} released", held.len(), released.len());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let clock = ManualClock::new(T0);
        let (_store, jobs, _) = opened(dir.path(), &clock);
        let memory = in_memory(&jobs).await;
        for user in &held {
            assert!(memory.get(user).is_some_and(|s| s.leases().len() == 1), "the grant to {user} was lost");
        }
        for user in &released {
            assert!(memory.get(user).is_none_or(|s| s.leases().is_empty()), "the release by {user} was lost");
        }
        assert_eq!(memory, on_disk(dir.path()));
    });
}

/// The child of [`a_crash_loses_nothing_acknowledged`]: writes until it is
/// killed, printing every acknowledgement, and `ready` once the WAL has
/// started over twice.
fn crash_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let clock = ManualClock::new(T0);
        let (store, _, stats) = opened_with(dir, &clock, SMALL);
        let (mut next, mut granted, mut ready) = (0, Vec::new(), false);
        // Killed long before the end.
        for round in 0..10_000 {
            let releasing = (round % 2 == 1).then(|| granted.swap_remove(round % granted.len()));
            let release = releasing.map(|user: UserId| {
                println!("releasing {user}");
                let store = store.clone();
                tokio::spawn(async move {
                    store.release(&user, StreamId::new("s").unwrap()).await.unwrap();
                    println!("released {user}");
                })
            });
            for user in write_round(&store, &mut next).await {
                println!("granted {user}");
                granted.push(user);
            }
            if let Some(release) = release {
                release.await.unwrap();
            }
            let restarts = stats.wal_restarts.load(Ordering::SeqCst);
            if !ready && restarts >= 2 && stats.checkpoints.load(Ordering::SeqCst) >= 1 {
                println!("ready");
                ready = true;
            }
        }
    });
    std::process::abort();
}
