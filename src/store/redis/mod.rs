//! The shared backend for many stateless instances: Redis, standalone or
//! Cluster.
//!
//! Every operation is one call of one Lua script (`decide.lua`, sent with
//! EVALSHA and loaded again wherever a node answers NOSCRIPT), so each
//! decision is atomic in Redis. All of a user's state lives under one hash
//! tag, `sc:{user}:…`, so it sits in one cluster slot. The script reads the
//! time with TIME: app servers with skewed clocks still decide alike.
//!
//! The script is a port of `limiter::apply`, not a second source of truth:
//! the conformance suite and a differential property test hold it to the
//! Rust rules. Its arguments are positional strings and its reply one
//! MessagePack string, which `reply` reads straight into limiter types; the
//! script's header documents both.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisWrite, ServerErrorKind, ToRedisArgs, Value};

use super::{Backend, BoxFuture, OpenError, OpenFailure, RedisMode, RedisTls, StoreError, redact_url};
use crate::clock::Clock;
use crate::limiter::{Label, OnLimit, Op, Reply, UserId};

#[cfg(test)]
pub(crate) mod harness;
mod reply;
pub(crate) mod tls;

const SCRIPT: &str = include_str!("decide.lua");

pub(super) struct RedisBackend {
    conn: Conn,
    script: redis::Script,
    /// Tests inject time; production leaves this `None` and the script
    /// reads Redis's own clock.
    test_clock: Option<Arc<dyn Clock>>,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisBackend {
    /// Connects to `urls` (one URL, or the seed nodes of a cluster), over
    /// TLS for `rediss://` URLs. Every decision reads Redis's own clock.
    pub(super) async fn open(urls: &[String], mode: RedisMode, tls: &RedisTls) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, tls, None).await
    }

    /// Like `open`, but the script is handed this clock's time instead of
    /// reading TIME: only tests can build such a backend.
    #[cfg(test)]
    pub(super) async fn open_with_clock(
        urls: &[String],
        mode: RedisMode,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, &RedisTls::default(), Some(clock)).await
    }

    /// A server certificate that is not trusted is a misconfiguration
    /// (exit 2): trying again will not help.
    async fn connect(
        urls: &[String],
        mode: RedisMode,
        tls: &RedisTls,
        test_clock: Option<Arc<dyn Clock>>,
    ) -> Result<Self, OpenFailure> {
        let shown = urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",");
        let fail = |e: redis::RedisError| {
            let at = format!("cannot connect to redis ({}) at {shown}", mode.name());
            let text = e.to_string().replace('\n', " ");
            match tls::untrusted_certificate(&e) {
                Some(hint) => OpenFailure::Misconfigured(format!("{at}: TLS handshake failed: {text}; {hint}")),
                None => OpenFailure::Failed(OpenError(format!("{at}: {text}"))),
            }
        };
        let trust = tls::Trust::new(urls, tls);
        let conn = match mode {
            RedisMode::Standalone => {
                let [url] = urls else {
                    return Err(OpenError(format!("standalone redis takes one URL, got {}", urls.len())).into());
                };
                let client = trust.client(url).map_err(fail)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                Conn::Standalone(ConnectionManager::new_with_config(client, config).await.map_err(fail)?)
            }
            RedisMode::Cluster => {
                let builder = ClusterClientBuilder::new(urls.to_vec())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3);
                let client = trust.cluster(builder).build().map_err(fail)?;
                Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
            }
        };
        Ok(Self { conn, script: redis::Script::new(SCRIPT), test_clock })
    }

    /// The EVALSHA of `op` for `user`, built in one buffer.
    fn command(&self, user: &UserId, op: &Op) -> Cmd {
        let mut cmd = Cmd::with_capacity(16, 192);
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(2).arg(UserKey(user, b's')).arg(UserKey(user, b'o'));
        let now = self.test_clock.as_ref().map(|c| c.now().as_micros());
        match op {
            Op::Acquire(a) => {
                cmd.arg("acquire").arg(Now(now)).arg(a.stream_id.as_str()).arg(a.limit.get());
                cmd.arg(a.ttl.as_micros()).arg(on_limit_name(a.on_limit)).arg(if a.enforce { "1" } else { "0" });
                cmd.arg(LabelArg(a.device_id.as_ref())).arg(LabelArg(a.content_id.as_ref()));
                for s in &a.evict {
                    cmd.arg(s.as_str());
                }
            }
            Op::Release(s) => {
                cmd.arg("release").arg(Now(now)).arg(s.as_str());
            }
            Op::RevokeAll { ttl } => {
                cmd.arg("revoke_all").arg(Now(now)).arg(ttl.as_micros());
            }
            Op::List { limit } => {
                cmd.arg("list").arg(Now(now)).arg(limit.get());
            }
            Op::GetLimit { .. } => {
                cmd.arg("get_limit").arg(Now(now));
            }
            Op::SetOverride(limit) => {
                cmd.arg("set_override").arg(Now(now));
                match limit {
                    Some(l) => cmd.arg(l.get()),
                    None => cmd.arg(""),
                };
            }
        }
        cmd
    }

    async fn call(&self, cmd: &Cmd) -> Result<Vec<u8>, StoreError> {
        match self.conn.clone() {
            Conn::Standalone(mut c) => self.eval(cmd, &mut c).await,
            Conn::Cluster(mut c) => self.eval(cmd, &mut c).await,
        }
    }

    /// Runs `cmd`, loading the script first wherever Redis has not got it
    /// (after a restart or SCRIPT FLUSH; on every node, in a cluster).
    async fn eval(&self, cmd: &Cmd, conn: &mut impl ConnectionLike) -> Result<Vec<u8>, StoreError> {
        let fail = |e: redis::RedisError| StoreError::Unavailable(format!("redis: {e}"));
        let reply = match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await.map_err(fail)?;
                cmd.query_async(conn).await
            }
            other => other,
        };
        match reply.map_err(fail)? {
            Value::BulkString(bytes) => Ok(bytes),
            other => Err(StoreError::Unavailable(format!("invalid script reply: {other:?}"))),
        }
    }
}

/// The key `sc:{<user>}:<kind>` (`s` for the state, `o` for the override),
/// written straight into the command's buffer.
struct UserKey<'a>(&'a UserId, u8);

impl ToRedisArgs for UserKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = w.write_all(b"sc:{").and_then(|()| w.write_all(self.0.as_str().as_bytes()));
        let _ = w.write_all(&[b'}', b':', self.1]);
    }
}

/// The injected time, or "" for the script to read TIME.
struct Now(Option<i64>);

impl ToRedisArgs for Now {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        match self.0 {
            Some(us) => us.write_redis_args(out),
            None => out.write_arg(b""),
        }
    }
}

/// A label as the script takes it: "" when absent, "=" and the text when
/// present, so that an empty label stays a label.
struct LabelArg<'a>(Option<&'a Label>);

impl ToRedisArgs for LabelArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        if let Some(l) = self.0 {
            let _ = w.write_all(b"=").and_then(|()| w.write_all(l.as_str().as_bytes()));
        }
    }
}

fn on_limit_name(o: OnLimit) -> &'static str {
    match o {
        OnLimit::Reject => "reject",
        OnLimit::EvictOldest => "evict_oldest",
    }
}

impl Backend for RedisBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(async move {
            let cmd = self.command(user, &op);
            reply::decode(op, &self.call(&cmd).await?)
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// Keys expire by themselves (PX in the script).
    fn expires_by_itself(&self) -> bool {
        true
    }

    fn clock_owner(&self) -> &'static str {
        if self.test_clock.is_some() { "instance" } else { "redis" }
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let fail = |e: redis::RedisError| StoreError::Unavailable(format!("redis: {e}"));
            match self.conn.clone() {
                Conn::Standalone(mut c) => {
                    redis::cmd("PING").query_async::<String>(&mut c).await.map_err(fail)?;
                }
                // Ready when this instance can reach the cluster. A shard that
                // is failing over answers 503 for its users only; turning
                // every instance unready for it would take all users down.
                Conn::Cluster(mut c) => {
                    redis::cmd("PING").query_async::<String>(&mut c).await.map_err(fail)?;
                }
            }
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Nothing is buffered here: every answer was already written by Redis.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::harness::{RedisCluster, RedisServer};
    use super::*;
    use crate::clock::ManualClock;
    use crate::limiter::{
        Acquire, Decision, Grant, Lease, Limit, LimitSource, RevokeReason, StreamId, Timestamp, Tombstone, Ttl,
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
                0 => (None, None),
                1 => (label(""), label(&format!("c{i}"))),
                2 => (label(&long), None),
                _ => (label(&format!("d{i}")), label(&long[..64])),
            };
            Op::Acquire(Acquire { device_id: labels.0, content_id: labels.1, ..acquire(&s, 1000) })
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
             for b = 5, 4 + 5 * v[2], 5 do last = math.max(last, v[b + 3]) end
             for b = 5 + 5 * v[2], #v - 1, 3 do last = math.max(last, v[b + 2]) end
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

    /// State written by the previous version of the script (format 1: a
    /// hash of JSON values, exactly as in its docs) is read, answered from
    /// and replaced on the next write; the override is kept as it was.
    #[tokio::test]
    async fn format_1_state_is_read_then_replaced() {
        let redis = RedisServer::start(&[]);
        let clock = ManualClock::new(Timestamp::from_micros(1_795_502_190_000_000));
        let store = open(vec![redis.url()], RedisMode::Standalone, &clock).await;
        let cli = |args: &[&str]| harness::cli(redis.port, args).trim().to_owned();
        let hset = |key: &str, field: &str, json: &str| assert_eq!(cli(&["HSET", key, field, json]), "1");
        let alice = "sc:{alice}:s";
        hset(alice, "l:laptop-1", r#"{"e":"1795502242255934","s":"1795502182255934"}"#);
        hset(alice, "t:phone-1", r#"{"u":"1795502302246065","b":"laptop-1"}"#);
        hset(alice, "l:tv-1", r#"{"e":"1795502242235866","d":"living-room-tv","s":"1795502182235866","c":"movie-42"}"#);
        hset(alice, "t:box-1", r#"{"u":"1795502302246065"}"#);
        hset(alice, "l:gone-by", r#"{"e":"1795502189999999","s":"1795502129999999"}"#);
        cli(&["PEXPIRE", alice, "120966"]);
        cli(&["SET", "sc:{alice}:o", "5"]);

        let five = Limit::new(5).unwrap();
        let tv = Lease {
            stream_id: stream("tv-1"),
            device_id: label("living-room-tv"),
            content_id: label("movie-42"),
            device_class: None,
            content_kind: None,
            plan: None,
            started_at: Timestamp::from_micros(1_795_502_182_235_866),
            expires_at: Timestamp::from_micros(1_795_502_242_235_866),
        };
        let laptop = Lease {
            stream_id: stream("laptop-1"),
            device_id: None,
            content_id: None,
            device_class: None,
            content_kind: None,
            plan: None,
            started_at: Timestamp::from_micros(1_795_502_182_255_934),
            expires_at: Timestamp::from_micros(1_795_502_242_255_934),
        };
        let u = user("alice");
        // Reads leave the hash as it is.
        assert_eq!(store.list(&u, Limit::new(3).unwrap()).await.unwrap(), (five, vec![tv.clone(), laptop.clone()]));
        assert_eq!(
            store.limit(&u, Limit::new(3).unwrap(), LimitSource::Plan).await.unwrap(),
            (five, LimitSource::Override)
        );
        assert_eq!(cli(&["TYPE", alice]), "hash");
        // A write answers from the hash and replaces it.
        let renewed = Lease { expires_at: clock.now().plus(Ttl::from_secs(60).unwrap()), ..tv.clone() };
        let expected = Grant {
            lease: renewed.clone(),
            active_streams: 2,
            limit: five,
            evicted: vec![],
            would_deny: false,
            would_deny_rule: None,
            would_evict: vec![],
        };
        assert_eq!(store.acquire(&u, acquire("tv-1", 3)).await.unwrap(), Decision::Renewed(expected));
        assert_eq!(cli(&["TYPE", alice]), "string");
        let until = Timestamp::from_micros(1_795_502_302_246_065);
        let evicted =
            Tombstone { stream_id: stream("phone-1"), reason: RevokeReason::EvictedBy(stream("laptop-1")), until };
        assert_eq!(store.acquire(&u, acquire("phone-1", 3)).await.unwrap(), Decision::Gone(evicted));
        let revoked = Tombstone { stream_id: stream("box-1"), reason: RevokeReason::Revoked, until };
        assert_eq!(store.acquire(&u, acquire("box-1", 3)).await.unwrap(), Decision::Gone(revoked));
        assert_eq!(store.list(&u, Limit::new(3).unwrap()).await.unwrap(), (five, vec![renewed, laptop]));
        assert_eq!((cli(&["GET", "sc:{alice}:o"]), cli(&["PTTL", "sc:{alice}:o"])), ("5".into(), "-1".into()));

        // Release and revoke-all read the hash through their own path. A
        // hash left with nothing is deleted: it has no deadline to keep.
        hset("sc:{bob}:s", "l:x", r#"{"e":"1795502242255934","s":"1795502182255934","d":"tv"}"#);
        store.release(&user("bob"), stream("x")).await.unwrap();
        assert_eq!(cli(&["EXISTS", "sc:{bob}:s"]), "0");
        hset("sc:{carol}:s", "l:y", r#"{"e":"1795502242255934","s":"1795502182255935"}"#);
        hset("sc:{carol}:s", "l:x", r#"{"e":"1795502242255934","s":"1795502182255935"}"#);
        let carol = user("carol");
        assert_eq!(
            store.revoke_all(&carol, Ttl::from_secs(60).unwrap()).await.unwrap(),
            vec![stream("x"), stream("y")]
        );
        assert!(matches!(store.acquire(&carol, acquire("y", 3)).await.unwrap(), Decision::Gone(_)));
    }
}
