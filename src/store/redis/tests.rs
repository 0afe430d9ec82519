//! The Redis store against real redis-server processes: the conformance
//! suite and the differential test against the rules (standalone and
//! Cluster), what is stored and how long it lives, the formats that
//! earlier releases wrote, and instances of the previous release deciding
//! beside this one on the same keys (and refusing the users whose streams
//! a socket holds, whose state they cannot read).

use super::harness::{RedisCluster, RedisServer};
use super::*;
use crate::clock::ManualClock;
use crate::limiter::{
    Acquire, Decision, Holder, Label, Lease, Limit, LimitSource, OnLimit, Override, StreamId, Timestamp, Ttl,
};
use crate::store::memory::MemoryBackend;
use crate::store::{Store, conformance};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

async fn open(urls: Vec<String>, mode: RedisMode, clock: &ManualClock) -> Store {
    let backend = RedisBackend::open_with_clock(&urls, mode, Arc::new(clock.clone())).await.unwrap();
    Store::for_test(Box::new(backend))
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn label(s: &str) -> Option<Label> {
    Some(Label::new(s).unwrap())
}

fn acquire(s: &str, limit: u32) -> Acquire {
    Acquire::for_test(s, limit)
}

fn holder(h: &str) -> Holder {
    Holder::new(h).unwrap()
}

/// The values stored under `key`, numbers in decimal and false as "false".
fn dump(redis: &RedisServer, key: &str) -> Vec<String> {
    let script = "local v = { cmsgpack.unpack(redis.call('GET', KEYS[1])) } \
         for i, x in ipairs(v) do \
           if type(x) == 'number' then v[i] = string.format('%d', x) \
           elseif x == false then v[i] = 'false' end \
         end return v";
    redis.cli(&["EVAL", script, "1", key]).lines().map(str::to_owned).collect()
}

/// The stored bytes of `key`, if it exists.
async fn raw(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_standalone() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    conformance::suite(&open(vec![redis.url()], RedisMode::Standalone, &clock).await, &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let clock = ManualClock::new(T0);
    conformance::suite(&open(cluster.urls(), RedisMode::Cluster, &clock).await, &clock).await;
}

#[test]
fn differential_standalone() {
    let redis = RedisServer::start(&[]);
    conformance::differential(64, |clock| {
        redis.flushall();
        let url = redis.url();
        async move { (open(vec![url], RedisMode::Standalone, &clock).await, Box::new(()) as Box<dyn std::any::Any>) }
    });
}

#[test]
fn differential_cluster() {
    let cluster = RedisCluster::start(3, 0);
    conformance::differential(24, |clock| {
        cluster.flushall();
        let urls = cluster.urls();
        async move { (open(urls, RedisMode::Cluster, &clock).await, Box::new(()) as Box<dyn std::any::Any>) }
    });
}

/// Each user's keys share one slot, and an idle user's state expires.
#[tokio::test]
async fn keys_share_a_slot_and_expire_when_idle() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let user = user("idle");
    store.acquire(&user, Acquire { ttl: Ttl::from_secs(1).unwrap(), ..acquire("s", 1) }).await.unwrap();
    let keys = harness::cli(redis.port, &["KEYS", "*"]);
    assert_eq!(keys.trim(), "sc:{idle}:s");
    let pttl: i64 = harness::cli(redis.port, &["PTTL", "sc:{idle}:s"]).trim().parse().unwrap();
    // One second after the lease ends, and at most one TTL more.
    assert!((1..=3_000).contains(&pttl), "expiry follows the lease: {pttl} ms");
    // A release keeps the empty record, with the same expiry.
    store.release(&user, stream("s")).await.unwrap();
    let after: i64 = harness::cli(redis.port, &["PTTL", "sc:{idle}:s"]).trim().parse().unwrap();
    assert!((1..=pttl).contains(&after), "the release kept the expiry: {after} ms");
}

/// A Redis store and the rules (a memory store) on one clock.
struct Pair {
    redis: Store,
    rules: Store,
}

impl Pair {
    async fn new(redis: &RedisServer, clock: &ManualClock) -> Pair {
        let rules = Store::for_test(Box::new(MemoryBackend::new(Arc::new(clock.clone()))));
        Pair { redis: open(vec![redis.url()], RedisMode::Standalone, clock).await, rules }
    }

    /// Runs `op` on both and requires the same reply.
    async fn run(&self, u: &str, op: Op) -> Reply {
        let expected = self.rules.execute(&user(u), op.clone()).await.unwrap();
        let got = self.redis.execute(&user(u), op.clone()).await.unwrap();
        assert_eq!(got, expected, "{op:?}");
        got
    }
}

/// A thousand leases with labels up to 300 bytes, then a thousand
/// tombstones besides them: the script reads and writes such states in
/// pieces that fit Lua's stack, and nothing changes in the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_accounts_match_the_rules() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let pair = Pair::new(&redis, &clock).await;
    let long = "é".repeat(128); // 256 bytes
    let grant = |s: String, i: usize| {
        let labels = match i % 4 {
            0 => (None, None, None),
            1 => (label(""), label(&format!("c{i}")), label("tv")),
            2 => (label(&long), None, None),
            _ => (label(&format!("d{i}")), label(&long[..64]), label(&long)),
        };
        let (device_id, content_id, device_class) = labels;
        let plan = if i.is_multiple_of(3) { label("premium") } else { None };
        Op::Acquire(Acquire { device_id, content_id, device_class, plan, ..acquire(&s, 1000) })
    };
    for i in 0..1000 {
        pair.run("big", grant(format!("a{i}"), i)).await;
        if i % 100 == 0 {
            clock.advance_ms(1);
        }
    }
    pair.run("big", grant("full".into(), 0)).await;
    pair.run("big", Op::List { limit: Limit::new(1000).unwrap() }).await;
    let Reply::Revoked(revoked) = pair.run("big", Op::RevokeAll { ttl: Ttl::from_secs(120).unwrap() }).await else {
        panic!("not revoked")
    };
    assert_eq!(revoked.len(), 1000);
    for i in 0..1000 {
        pair.run("big", grant(format!("b{i}"), i)).await;
    }
    pair.run("big", grant("a7".into(), 7)).await; // gone
    let evict = Op::Acquire(Acquire { on_limit: OnLimit::EvictOldest, ..acquire("newest", 1000) });
    pair.run("big", evict).await;
    let take_over = Acquire { evict: (0..20).map(|i| stream(&format!("b{i}"))).collect(), ..acquire("t", 1000) };
    pair.run("big", Op::Acquire(take_over)).await;
    for i in (0..1000).step_by(7) {
        pair.run("big", Op::Release(stream(&format!("b{i}")))).await;
    }
    clock.advance_ms(61_000);
    pair.run("big", grant("late".into(), 1)).await;
    pair.run("big", Op::List { limit: Limit::new(1000).unwrap() }).await;
}

/// Times stay exact up to 2^53 µs, where Lua's numbers end, and labels
/// keep the difference between empty and absent.
#[tokio::test]
async fn times_near_2_pow_53_and_empty_labels_match_the_rules() {
    let redis = RedisServer::start(&[]);
    let day = Ttl::from_secs(86_400).unwrap();
    let clock = ManualClock::new(Timestamp::from_micros((1 << 53) - 3 * day.as_micros() - 12_345));
    let pair = Pair::new(&redis, &clock).await;
    let op = |s: &str, device: Option<Label>, content: Option<Label>| {
        let on_limit = OnLimit::EvictOldest;
        Op::Acquire(Acquire { device_id: device, content_id: content, ttl: day, on_limit, ..acquire(s, 2) })
    };
    pair.run("u", op("a", label(""), None)).await;
    clock.advance_ms(1);
    pair.run("u", op("b", None, label(""))).await;
    clock.advance_ms(1);
    pair.run("u", op("a", None, label("x"))).await; // renewed: keeps the empty device
    pair.run("u", op("c", label("d"), label(""))).await; // evicts a
    match pair.run("u", op("a", None, None)).await {
        // a's expiry (renewed 2 ms in) plus a day: 10345 µs and a day short of 2^53.
        Reply::Decision(Decision::Gone(t)) => assert_eq!(t.until.as_micros(), (1 << 53) - day.as_micros() - 10_345),
        other => panic!("{other:?}"),
    }
    pair.run("u", Op::List { limit: Limit::new(2).unwrap() }).await;
    pair.run("u", Op::RevokeAll { ttl: day }).await;
    pair.run("u", op("c", None, None)).await;
}

/// The key's expiry moves only when a write needs it to, so check that
/// it never cuts a lease or tombstone short: after every step of a long
/// pseudo-random run (checked against the rules as it goes), the key
/// lives at least until the last end stored in it.
#[tokio::test]
async fn the_key_outlives_what_it_holds() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let pair = Pair::new(&redis, &clock).await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let last_end = redis::Script::new(
        "local v = { cmsgpack.unpack(redis.call('GET', KEYS[1])) }
         local last = 0
         for b = 5, 4 + 8 * v[2], 8 do last = math.max(last, v[b + 3]) end
         for b = 5 + 8 * v[2], #v - 1, 3 do last = math.max(last, v[b + 2]) end
         return { string.format('%d', last), redis.call('PTTL', KEYS[1]) }",
    );
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut writes = 0;
    for _ in 0..3000 {
        let u = format!("u{}", next(3));
        let s = format!("s{}", next(5));
        let op = match next(10) {
            0..=5 => Op::Acquire(Acquire {
                ttl: Ttl::from_secs(1 + next(20) as u32).unwrap(),
                on_limit: if next(2) == 0 { OnLimit::Reject } else { OnLimit::EvictOldest },
                ..acquire(&s, next(4) as u32)
            }),
            6 => Op::Release(stream(&s)),
            7 => Op::RevokeAll { ttl: Ttl::from_secs(1 + next(20) as u32).unwrap() },
            _ => {
                clock.advance_ms(next(8_000) as i64);
                continue;
            }
        };
        pair.run(&u, op).await;
        let key = format!("sc:{{{u}}}:s");
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        if exists {
            let (last, pttl): (String, i64) = last_end.key(&key).invoke_async(&mut conn).await.unwrap();
            let last: i64 = last.parse().unwrap();
            let left = last - clock.now().as_micros();
            assert!(pttl * 1000 >= left, "{key} expires in {pttl} ms but holds state for {left} µs more");
            writes += 1;
        }
    }
    assert!(writes > 1000, "the run must mostly hit stored states: {writes}");
}

/// State that an earlier release wrote (format 2: five values per lease,
/// with no device class, content kind or plan) is read and answered from,
/// left alone by reads, and rewritten as format 3 by the next write,
/// losing nothing.
#[tokio::test]
async fn format_2_state_is_read_then_upgraded() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(Timestamp::from_micros(1_796_002_820_000_000));
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let cli = |args: &[&str]| harness::cli(redis.port, args).trim().to_owned();
    // The format-2 state of docs/redis.md's example, written with
    // Redis's own MessagePack, with the expiry its deadline gives.
    let seed = "redis.call('SET', KEYS[1], cmsgpack.pack(2, 2, 1, 1796002997739002, 5, \
         'tv-1', 1796002816733200, 1796002876733200, 'living-room-tv', 'movie-42', \
         'laptop-1', 1796002816744002, 1796002876744002, false, false, \
         'phone-1', 1796002936738575, 'laptop-1'), 'PX', 177739)";
    cli(&["EVAL", seed, "1", "sc:{alice}:s"]);
    cli(&["SET", "sc:{alice}:o", "5"]);
    let dump = |key: &str| dump(&redis, key);
    let before = dump("sc:{alice}:s");
    assert_eq!(before[..5], ["2", "2", "1", "1796002997739002", "5"], "{before:?}");

    let five = Limit::new(5).unwrap();
    let tv = Lease {
        stream_id: stream("tv-1"),
        device_id: label("living-room-tv"),
        content_id: label("movie-42"),
        device_class: None,
        content_kind: None,
        plan: None,
        holder: None,
        started_at: Timestamp::from_micros(1_796_002_816_733_200),
        expires_at: Timestamp::from_micros(1_796_002_876_733_200),
    };
    let laptop = Lease {
        stream_id: stream("laptop-1"),
        device_id: None,
        content_id: None,
        started_at: Timestamp::from_micros(1_796_002_816_744_002),
        expires_at: Timestamp::from_micros(1_796_002_876_744_002),
        ..tv.clone()
    };
    let u = user("alice");
    // Reads answer from it and leave it as it is.
    assert_eq!(store.list(&u, Limit::new(3).unwrap()).await.unwrap(), (five, vec![tv.clone(), laptop.clone()]));
    assert!(matches!(store.acquire(&u, acquire("phone-1", 3)).await.unwrap(), Decision::Gone(_)));
    assert_eq!(dump("sc:{alice}:s"), before);
    // The next write, here the override's, stores format 3: each lease
    // gains three absent values, and the override key moves with the copy.
    let pttl: i64 = cli(&["PTTL", "sc:{alice}:s"]).parse().unwrap();
    store.set_override(&u, Limit::new(6).map(Override::permanent)).await.unwrap();
    let six = Limit::new(6).unwrap();
    let upgraded = dump("sc:{alice}:s");
    assert_eq!(upgraded[..5], ["3", "2", "1", "1796002997739002", "6"]);
    assert_eq!(
        upgraded[5..13],
        ["tv-1", "1796002816733200", "1796002876733200", "living-room-tv", "movie-42", "false", "false", "false"]
    );
    assert_eq!(cli(&["GET", "sc:{alice}:o"]), "6");

    // A renewal that names a device class and a plan keeps them on the
    // lease; nothing else changes, and the key keeps its expiry.
    let renewal = Acquire { device_class: label("tv"), plan: label("premium"), ..acquire("tv-1", 3) };
    let renewed = Lease {
        device_class: label("tv"),
        plan: label("premium"),
        expires_at: clock.now().plus(Ttl::from_secs(60).unwrap()),
        ..tv.clone()
    };
    match store.acquire(&u, renewal).await.unwrap() {
        Decision::Renewed(g) => assert_eq!((g.lease, g.active_streams, g.limit), (renewed.clone(), 2, six)),
        d => panic!("{d:?}"),
    }
    let after = dump("sc:{alice}:s");
    let expected = [
        "3",
        "2",
        "1",
        "1796002997739002",
        "6",
        "tv-1",
        "1796002816733200",
        "1796002880000000",
        "living-room-tv",
        "movie-42",
        "tv",
        "false",
        "premium",
        "laptop-1",
        "1796002816744002",
        "1796002876744002",
        "false",
        "false",
        "false",
        "false",
        "false",
        "phone-1",
        "1796002936738575",
        "laptop-1",
    ];
    assert_eq!(after, expected);
    let kept: i64 = cli(&["PTTL", "sc:{alice}:s"]).parse().unwrap();
    assert!((1..=pttl).contains(&kept), "the upgrade kept the expiry: {kept} ms, was {pttl} ms");
    assert_eq!(store.list(&u, Limit::new(3).unwrap()).await.unwrap(), (six, vec![renewed, laptop]));

    // A release reads format 2 through its own path.
    let seed_bob = "redis.call('SET', KEYS[1], cmsgpack.pack(2, 2, 0, 1796002997739002, false, \
         'x', 1796002816733200, 1796002876733200, 'd', false, \
         'y', 1796002816733201, 1796002876733201, false, 'c'), 'PX', 177739)";
    cli(&["EVAL", seed_bob, "1", "sc:{bob}:s"]);
    store.release(&user("bob"), stream("x")).await.unwrap();
    let bob = dump("sc:{bob}:s");
    assert_eq!(bob[..5], ["3", "1", "0", "1796002997739002", "false"]);
    assert_eq!(bob[5..], ["y", "1796002816733201", "1796002876733201", "false", "c", "false", "false", "false"]);
}

/// A format-1 hash (what releases before format 2 wrote) is no longer
/// read: its user gets `Unavailable` for every operation, and the key is
/// left exactly as it is, to expire at the deadline its writer set.
#[tokio::test]
async fn a_format_1_hash_is_refused_and_left_alone() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let key = "sc:{alice}:s";
    redis.cli(&["HSET", key, "l:tv-1", r#"{"e":"1700000060000000","s":"1700000000000000"}"#]);
    redis.cli(&["PEXPIRE", key, "120000"]);
    let u = user("alice");
    assert!(store.acquire(&u, acquire("tv-1", 3)).await.is_err());
    assert!(store.acquire(&u, acquire("phone-1", 3)).await.is_err());
    assert!(store.release(&u, stream("tv-1")).await.is_err());
    assert!(store.list(&u, Limit::new(3).unwrap()).await.is_err());
    assert!(store.set_override(&u, Limit::new(5).map(Override::permanent)).await.is_err());
    assert_eq!(redis.cli(&["TYPE", key]).trim(), "hash");
    assert_eq!(redis.cli(&["HLEN", key]).trim(), "1");
    assert_eq!(redis.cli(&["EXISTS", "sc:{alice}:o"]).trim(), "0");
}

/// The command counts of `INFO commandstats`, by command.
fn commands(redis: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    let info = redis.cli(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// A decision reads in one round trip and writes at most once; one that
/// changes nothing, such as a denial or a read, writes nothing.
#[tokio::test]
async fn a_decision_reads_once_and_writes_only_a_change() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let u = user("alice");
    store.acquire(&u, acquire("a", 1)).await.unwrap();
    let before = commands(&redis);
    let delta = |name: &str| commands(&redis).get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert!(matches!(store.acquire(&u, acquire("b", 1)).await.unwrap(), Decision::Denied(_)));
    store.list(&u, Limit::new(1).unwrap()).await.unwrap();
    assert_eq!((delta("get"), delta("evalsha"), delta("set")), (2, 0, 0), "two reads, no write");
    assert!(matches!(store.acquire(&u, acquire("a", 1)).await.unwrap(), Decision::Renewed(_)));
    assert_eq!((delta("get"), delta("evalsha"), delta("set")), (4, 1, 1), "a renewal reads and writes once");
}

/// A write whose answer was lost and that was sent again (as the cluster
/// client does after a broken connection) loses against itself; the next
/// read shows the state it stored, and the loop recognises it as its own.
#[tokio::test]
async fn a_repeated_write_loses_and_is_recognised_as_its_own() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let b =
        RedisBackend::open_with_clock(&[redis.url()], RedisMode::Standalone, Arc::new(clock.clone())).await.unwrap();
    let u = user("lost-answer");
    let op = Op::Acquire(acquire("a", 1));
    let read = b.read(&u).await.unwrap();
    let mut state = read.state;
    let outcome = crate::limiter::apply(&mut state, op.clone(), read.now);
    let change = || Change { state: &state, op: &op, outcome: &outcome, now: read.now };
    assert!(b.write(&u, &read.seen, change()).await.is_ok());
    let Err(Lost::Race(Some(mark))) = b.write(&u, &read.seen, change()).await else {
        panic!("the repeated write must lose, naming what it stored");
    };
    let again = b.read(&u).await.unwrap();
    assert!(RedisBackend::landed(&again.seen, &mark), "the loop recognises its write");
    clock.advance_ms(1);
    let renewed = Store::for_test(Box::new(b)).acquire(&u, acquire("a", 1)).await.unwrap();
    assert!(matches!(renewed, Decision::Renewed(_)), "a fresh decision is a renewal: {renewed:?}");
}

/// Eight instances that share nothing but Redis race 64 acquires for one
/// user: exactly the limit is granted, and every lost race is counted and
/// decided again.
async fn instances_race(urls: Vec<String>, mode: RedisMode) {
    let mut instances = Vec::new();
    for _ in 0..8 {
        let backend = RedisBackend::open(&urls, mode, &RedisTls::default()).await.unwrap();
        instances.push(Store::for_test(Box::new(backend)));
    }
    let conflicts = || {
        let text = crate::metrics::render();
        let line = text.lines().find(|l| l.starts_with("streamcap_store_conflicts_total ")).map(str::to_owned);
        line.and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    let (before, mut unavailable) = (conflicts(), 0);
    for round in 0..4 {
        let u = user(&format!("racer-{round}"));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let (store, u) = (instances[i % 8].clone(), u.clone());
            set.spawn(async move { store.acquire(&u, acquire(&format!("s{i}"), 5)).await });
        }
        let mut granted = 0;
        while let Some(d) = set.join_next().await {
            match d.unwrap() {
                Ok(Decision::Granted(_)) => granted += 1,
                Ok(Decision::Denied(d)) => assert_eq!(d.live.len(), 5),
                Ok(d) => panic!("{d:?}"),
                Err(_) => unavailable += 1,
            }
        }
        assert_eq!(granted, 5, "round {round}");
        for s in &instances {
            assert_eq!(s.list(&u, Limit::new(5).unwrap()).await.unwrap().1.len(), 5);
        }
    }
    eprintln!(
        "{} redis, 8 instances, 4 x 64 acquires: {} lost races decided again, {unavailable} answered Unavailable",
        mode.name(),
        conflicts() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_for_one_user_grant_exactly_the_limit_standalone() {
    let redis = RedisServer::start(&[]);
    instances_race(vec![redis.url()], RedisMode::Standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_for_one_user_grant_exactly_the_limit_cluster() {
    let cluster = RedisCluster::start(3, 0);
    instances_race(cluster.urls(), RedisMode::Cluster).await;
}

/// An instance of the previous release, as Redis sees it: that release
/// decided every operation with one EVALSHA of its Lua script, which
/// tests/fixtures keeps unchanged.
struct PreviousRelease {
    script: redis::Script,
    conn: Conn,
}

impl PreviousRelease {
    async fn connect(urls: &[String], mode: RedisMode) -> PreviousRelease {
        let backend = RedisBackend::open(urls, mode, &RedisTls::default()).await.unwrap();
        let script = redis::Script::new(include_str!("../../../tests/fixtures/previous-release/decide.lua"));
        PreviousRelease { script, conn: backend.conn }
    }

    /// Runs `op` as that release would, at `now` (Redis's TIME when
    /// `None`), and answers the kind of its reply ("granted", "denied"…),
    /// or the error it answered with. That release had no holders: its
    /// requests carry none, and it never sends a held release (its
    /// sockets released plainly).
    async fn run(&self, u: &UserId, op: &Op, now: Option<Timestamp>) -> Result<String, String> {
        let mut inv = self.script.prepare_invoke();
        inv.key(UserKey(u, b's')).key(UserKey(u, b'o'));
        let now = now.map_or(String::new(), |t| t.as_micros().to_string());
        let label = |l: &Option<Label>| l.as_ref().map_or(String::new(), |l| format!("={}", l.as_str()));
        match op {
            Op::Acquire(a) => {
                assert!(a.rules.is_empty() && a.plans.is_none(), "this harness sends no rules");
                assert!(a.holder.is_none(), "the previous release knew no holders");
                let on_limit = if a.on_limit == OnLimit::Reject { "reject" } else { "evict_oldest" };
                inv.arg("acquire").arg(now).arg(a.stream_id.as_str()).arg(a.limit.get()).arg(a.ttl.as_micros());
                inv.arg(on_limit).arg(if a.enforce { "1" } else { "0" });
                for l in [&a.device_id, &a.content_id, &a.device_class, &a.content_kind, &a.plan] {
                    inv.arg(label(l));
                }
                inv.arg("").arg("").arg(if a.held { "1" } else { "0" });
                for s in &a.evict {
                    inv.arg(s.as_str());
                }
            }
            Op::Release(s) => {
                inv.arg("release").arg(now).arg(s.as_str());
            }
            Op::ReleaseHeld { .. } => panic!("the previous release had no held release: {op:?}"),
            Op::Revoke { .. } => panic!("the previous release could not revoke one stream: {op:?}"),
            Op::RevokeAll { ttl } => {
                inv.arg("revoke_all").arg(now).arg(ttl.as_micros());
            }
            Op::List { limit } => {
                inv.arg("list").arg(now).arg(limit.get());
            }
            Op::GetLimit { .. } => {
                inv.arg("get_limit").arg(now);
            }
            Op::SetOverride(l) => {
                inv.arg("set_override").arg(now).arg(l.map_or(String::new(), |o| o.limit.get().to_string()));
            }
        }
        let reply: Vec<u8> = match self.conn.clone() {
            Conn::Standalone(mut c) => inv.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
        .map_err(|e| e.to_string())?;
        // The reply is a MessagePack sequence whose first value, a short
        // string, names its kind.
        let n = usize::from(reply[0] & 0x1f);
        assert_eq!(reply[0] & 0xe0, 0xa0, "{reply:?}");
        Ok(String::from_utf8(reply[1..1 + n].to_vec()).unwrap())
    }
}

/// The kind of reply the previous release gives where the rules give `r`.
fn kind(r: &Reply) -> &'static str {
    match r {
        Reply::Decision(Decision::Granted(_)) => "granted",
        Reply::Decision(Decision::Renewed(_)) => "renewed",
        Reply::Decision(Decision::Denied(_)) => "denied",
        Reply::Decision(Decision::Gone(_)) => "gone",
        Reply::Decision(Decision::NotHeld) => "not_held",
        Reply::Done => "done",
        Reply::Revoked(_) => "revoked",
        Reply::Leases { .. } => "leases",
        Reply::Limit { .. } => "limit",
    }
}

/// During a rolling upgrade both releases decide on the same keys. A long
/// pseudo-random run hands each operation to one of them at random and
/// checks it against the rules: this store's whole reply, the previous
/// release's kind of reply. So each reads exactly what the other wrote
/// (leases with every label, tombstones, overrides, key expiry), and
/// neither grants what the rules refuse. Sockets of this release hold
/// some streams of two of the users: while one of their leases has a
/// holder, the previous release refuses every operation on that user
/// but `get_limit` (which reads only the override) and changes nothing,
/// and once none has, it decides for that user again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_and_this_one_decide_alike_on_shared_keys() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let pair = Pair::new(&redis, &clock).await;
    let previous = PreviousRelease::connect(&[redis.url()], RedisMode::Standalone).await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut by_previous, mut by_this, mut refused) = (0, 0, 0);
    for _ in 0..3000 {
        let n = next(4);
        let u = format!("u{n}");
        let s = format!("s{}", next(6));
        // Users u2 and u3 have sockets h1 and h2 as well as HTTP clients.
        let sockets = n >= 2;
        let by = |n: u64| (sockets && n < 2).then(|| holder(&format!("h{}", n + 1)));
        let pick = |n: u64, names: &[&str]| (n < names.len() as u64).then(|| Label::new(names[n as usize]).unwrap());
        let op = match next(16) {
            0..=7 => Op::Acquire(Acquire {
                device_id: pick(next(3), &["tv", ""]),
                content_id: pick(next(3), &["movie", "show"]),
                device_class: pick(next(3), &["tv", "phone"]),
                content_kind: pick(next(3), &["vod", "live"]),
                plan: pick(next(3), &["basic", "premium"]),
                ttl: Ttl::from_secs(1 + next(30) as u32).unwrap(),
                on_limit: if next(3) == 0 { OnLimit::EvictOldest } else { OnLimit::Reject },
                evict: if next(8) == 0 { vec![stream(&format!("s{}", next(6)))] } else { vec![] },
                enforce: next(10) != 0,
                held: next(10) == 0,
                holder: by(next(3)),
                ..acquire(&s, next(4) as u32)
            }),
            8 if sockets && next(2) == 0 => Op::ReleaseHeld { stream: stream(&s), holder: by(next(2)).unwrap() },
            8 => Op::Release(stream(&s)),
            9 => Op::RevokeAll { ttl: Ttl::from_secs(1 + next(30) as u32).unwrap() },
            10 => Op::List { limit: Limit::new(next(4) as u32).unwrap() },
            11 => Op::GetLimit { fallback: Limit::new(3).unwrap(), source: LimitSource::Default },
            12 => {
                Op::SetOverride(if next(2) == 0 { None } else { Limit::new(next(5) as u32).map(Override::permanent) })
            }
            _ => {
                clock.advance_ms(next(12_000) as i64);
                continue;
            }
        };
        let mut op = op;
        let to_previous = !matches!(op, Op::ReleaseHeld { .. }) && next(2) == 0;
        if to_previous {
            // The previous release's own requests carry no holder.
            if let Op::Acquire(a) = &mut op {
                a.holder = None;
            }
            let key = format!("sc:{{{u}}}:s");
            let before = raw(&mut conn, &key).await;
            let held = before.as_ref().is_some_and(|b| b[0] == 4);
            if held && !matches!(op, Op::GetLimit { .. }) {
                let err = previous.run(&user(&u), &op, Some(clock.now())).await.expect_err("format 4 is refused");
                assert!(err.contains("unreadable"), "{err}");
                assert_eq!(raw(&mut conn, &key).await, before, "a refusal changes nothing");
                refused += 1;
                continue;
            }
            let expected = pair.rules.execute(&user(&u), op.clone()).await.unwrap();
            let got = previous.run(&user(&u), &op, Some(clock.now())).await.unwrap();
            assert_eq!(got, kind(&expected), "{op:?}");
            by_previous += 1;
        } else {
            pair.run(&u, op).await;
            by_this += 1;
        }
    }
    eprintln!("{by_previous} operations by the previous release, {refused} refused by it, {by_this} by this one");
    assert!(refused > 50 && by_previous > 500, "both cases happen often: {refused} refused, {by_previous} decided");
}

/// An override that ends is kept where the previous releases refuse it
/// rather than read it as one for good: the override key becomes a hash,
/// on which their `GET` fails (WRONGTYPE), expiring a second after the
/// override ends, and a state key that holds a copy of it is format 5.
/// The previous release refuses every operation on such a user that reads
/// the override (a `set_override` replaces the key) and changes nothing; once the
/// override is for good again, it decides for that user as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_refuses_an_override_that_ends_and_never_misreads_it() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let previous = PreviousRelease::connect(&[redis.url()], RedisMode::Standalone).await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let until = T0.plus(Ttl::from_secs(30).unwrap());
    let ending = Override { limit: Limit::new(1).unwrap(), expires_at: Some(until) };
    let (idle, busy) = (user("idle"), user("busy"));
    store.set_override(&idle, Some(ending)).await.unwrap();
    store.acquire(&busy, acquire("tv", 3)).await.unwrap();
    store.set_override(&busy, Some(ending)).await.unwrap();

    let got: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET").arg("sc:{idle}:o").query_async(&mut conn).await;
    assert!(got.unwrap_err().to_string().contains("WRONGTYPE"), "GET fails on the override of an idle user");
    let fields: Vec<String> =
        redis::cmd("HMGET").arg("sc:{idle}:o").arg("limit").arg("until").query_async(&mut conn).await.unwrap();
    assert_eq!(fields, ["1".to_owned(), until.as_micros().to_string()]);
    let pttl: i64 = redis::cmd("PTTL").arg("sc:{idle}:o").query_async(&mut conn).await.unwrap();
    assert!((30_000..=31_000).contains(&pttl), "the key expires a second after the override: {pttl} ms");
    let state = dump(&redis, "sc:{busy}:s");
    assert_eq!((state[0].as_str(), state[4].as_str(), state[5].clone()), ("5", "1", until.as_micros().to_string()));

    let three = Limit::new(3).unwrap();
    let ops = [
        Op::GetLimit { fallback: three, source: LimitSource::Default },
        Op::List { limit: three },
        Op::Acquire(acquire("phone", 3)),
        Op::Release(stream("tv")),
        Op::RevokeAll { ttl: Ttl::from_secs(10).unwrap() },
    ];
    let before = (raw(&mut conn, "sc:{busy}:s").await, raw(&mut conn, "sc:{idle}:s").await);
    for u in [&idle, &busy] {
        for op in &ops {
            match previous.run(u, op, Some(clock.now())).await {
                Err(err) => assert!(err.contains("WRONGTYPE") || err.contains("unreadable"), "{u} {op:?}: {err}"),
                // With no state, a release or a revoke-all has nothing to
                // do and reads no override.
                Ok(reply) => assert!(
                    *u == idle && matches!(op, Op::Release(_) | Op::RevokeAll { .. }),
                    "{u} {op:?} answered {reply}"
                ),
            }
        }
    }
    assert_eq!((raw(&mut conn, "sc:{busy}:s").await, raw(&mut conn, "sc:{idle}:s").await), before, "nothing changed");

    // For good again: both releases read it alike.
    for u in [&idle, &busy] {
        store.set_override(u, Some(Override::permanent(Limit::new(2).unwrap()))).await.unwrap();
        let op = Op::GetLimit { fallback: three, source: LimitSource::Default };
        assert_eq!(previous.run(u, &op, Some(clock.now())).await.unwrap(), "limit", "{u}");
        let op = Op::Acquire(acquire("phone", 3));
        let expected = store.inner.backend.execute(u, op.clone()).await.unwrap();
        store.release(u, stream("phone")).await.unwrap();
        assert_eq!(previous.run(u, &op, Some(clock.now())).await.unwrap(), kind(&expected), "{u}");
    }
    assert_eq!(dump(&redis, "sc:{busy}:s")[0], "3");
}

/// A user none of whose leases a socket holds is written in format 3,
/// exactly as before holders existed; one with a held lease in format 4,
/// with a ninth value per lease (false where no socket holds it). Both
/// read back, here and in another instance, and the user returns to
/// format 3 when its last held lease goes.
#[tokio::test]
async fn only_a_user_with_a_held_lease_is_written_in_format_4() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    let (start, end) = (T0.as_micros().to_string(), T0.plus(Ttl::from_secs(60).unwrap()).as_micros().to_string());
    let f = "false";
    let (alice, bob) = (user("alice"), user("bob"));

    store.acquire(&alice, Acquire { device_id: label("living-room"), ..acquire("tv", 3) }).await.unwrap();
    let plain = dump(&redis, "sc:{alice}:s");
    assert_eq!([&plain[..3], &plain[4..]].concat(), ["3", "1", "0", f, "tv", &start, &end, "living-room", f, f, f, f]);

    store.acquire(&bob, Acquire { holder: Some(holder("sock-1")), ..acquire("tv", 3) }).await.unwrap();
    let held = dump(&redis, "sc:{bob}:s");
    assert_eq!([&held[..3], &held[4..]].concat(), ["4", "1", "0", f, "tv", &start, &end, f, f, f, f, f, "sock-1"]);
    clock.advance_ms(1);
    store.acquire(&bob, acquire("phone", 3)).await.unwrap();
    let (start2, end2) = ((T0.as_micros() + 1000).to_string(), (T0.as_micros() + 60_001_000).to_string());
    let both = dump(&redis, "sc:{bob}:s");
    assert_eq!(
        [&both[..3], &both[4..]].concat(),
        ["4", "2", "0", f, "tv", &start, &end, f, f, f, f, f, "sock-1", "phone", &start2, &end2, f, f, f, f, f, f]
    );

    // Both read back, here and in another instance.
    let other = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
    for s in [&store, &other] {
        let live = s.list(&bob, Limit::new(3).unwrap()).await.unwrap().1;
        let holders: Vec<_> = live.iter().map(|l| (l.stream_id.as_str(), l.holder.clone())).collect();
        assert_eq!(holders, [("tv", Some(holder("sock-1"))), ("phone", None)]);
        let live = s.list(&alice, Limit::new(3).unwrap()).await.unwrap().1;
        assert_eq!((live.len(), &live[0].device_id, &live[0].holder), (1, &label("living-room"), &None));
    }
    // An HTTP heartbeat keeps the holder; the socket's release frees the
    // seat, and with it the user's last held lease: format 3 again.
    clock.advance_ms(1);
    store.acquire(&bob, acquire("tv", 3)).await.unwrap();
    assert_eq!(dump(&redis, "sc:{bob}:s")[..1], ["4"]);
    store.release_held(&bob, stream("tv"), holder("sock-1")).await.unwrap();
    let back = dump(&redis, "sc:{bob}:s");
    assert_eq!([&back[..3], &back[4..]].concat(), ["3", "1", "0", f, "phone", &start2, &end2, f, f, f, f, f]);
}

/// The previous release's script never grants on a state it cannot read:
/// a user whose stream a socket holds (format 4) gets an error for every
/// operation that reads the state, and the key is left byte for byte;
/// users in format 3 are decided as always. Once the held lease is gone,
/// the previous release decides for that user again.
#[tokio::test]
async fn the_previous_release_refuses_a_user_whose_stream_a_socket_holds() {
    let redis = RedisServer::start(&[]);
    let clock = ManualClock::new(T0);
    let pair = Pair::new(&redis, &clock).await;
    let previous = PreviousRelease::connect(&[redis.url()], RedisMode::Standalone).await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let now = Some(clock.now());
    pair.run("held", Op::Acquire(Acquire { holder: Some(holder("sock-1")), ..acquire("tv", 1) })).await;
    pair.run("plain", Op::Acquire(acquire("tv", 1))).await;
    let before = raw(&mut conn, "sc:{held}:s").await.unwrap();
    assert_eq!(before[0], 4);

    let ops = [
        // At a limit of 5 it would grant, had it read the state as empty.
        Op::Acquire(acquire("phone", 5)),
        Op::Acquire(acquire("tv", 1)),
        Op::Release(stream("tv")),
        Op::RevokeAll { ttl: Ttl::from_secs(30).unwrap() },
        Op::List { limit: Limit::new(1).unwrap() },
        Op::SetOverride(Limit::new(4).map(Override::permanent)),
    ];
    for op in &ops {
        let err = previous.run(&user("held"), op, now).await.expect_err("refused");
        assert!(err.contains("unreadable sc:{held}:s"), "{op:?}: {err}");
    }
    assert_eq!(raw(&mut conn, "sc:{held}:s").await.unwrap(), before, "left byte for byte");
    assert_eq!(redis.cli(&["EXISTS", "sc:{held}:o"]).trim(), "0", "no override was written");
    let get_limit = Op::GetLimit { fallback: Limit::new(1).unwrap(), source: LimitSource::Default };
    assert_eq!(previous.run(&user("held"), &get_limit, now).await.unwrap(), "limit", "the override alone is read");

    // The same operations on a user in format 3 are decided as the rules do.
    for op in ops {
        let expected = pair.rules.execute(&user("plain"), op.clone()).await.unwrap();
        assert_eq!(previous.run(&user("plain"), &op, now).await.unwrap(), kind(&expected), "{op:?}");
    }
    // The socket's release leaves format 3, which the previous release reads.
    pair.run("held", Op::ReleaseHeld { stream: stream("tv"), holder: holder("sock-1") }).await;
    assert_eq!(previous.run(&user("held"), &Op::Acquire(acquire("phone", 1)), now).await.unwrap(), "granted");
}

/// Instances of both releases race for one user's seats on Redis's own
/// clock: never more grants than the limit, on standalone and on a cluster.
async fn both_releases_race(urls: Vec<String>, mode: RedisMode) {
    let previous = Arc::new(PreviousRelease::connect(&urls, mode).await);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::open(&urls, mode, &RedisTls::default()).await.unwrap();
        instances.push(Store::for_test(Box::new(backend)));
    }
    let mut unavailable = 0;
    for round in 0..6 {
        let u = user(&format!("upgrade-{round}"));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let (u, req) = (u.clone(), acquire(&format!("s{i}"), 3));
            if i % 2 == 0 {
                let previous = previous.clone();
                set.spawn(async move { Ok(previous.run(&u, &Op::Acquire(req), None).await.unwrap()) });
            } else {
                let store = instances[i % 4 / 2].clone();
                set.spawn(async move { store.acquire(&u, req).await.map(|d| kind(&Reply::Decision(d)).to_owned()) });
            }
        }
        let mut granted = 0;
        while let Some(answer) = set.join_next().await {
            match answer.unwrap().as_deref() {
                Ok("granted") => granted += 1,
                Ok("denied") => {}
                Ok(other) => panic!("{other}"),
                Err(_) => unavailable += 1,
            }
        }
        assert_eq!(granted, 3, "round {round}");
        let live = instances[0].list(&u, Limit::new(3).unwrap()).await.unwrap().1;
        assert_eq!(live.len(), 3, "round {round}");
    }
    eprintln!("{}: both releases, 6 x 64 acquires, {unavailable} answered Unavailable", mode.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_releases_racing_grant_exactly_the_limit_standalone() {
    let redis = RedisServer::start(&[]);
    both_releases_race(vec![redis.url()], RedisMode::Standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_releases_racing_grant_exactly_the_limit_cluster() {
    let cluster = RedisCluster::start(3, 0);
    both_releases_race(cluster.urls(), RedisMode::Cluster).await;
}
