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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisWrite, ServerErrorKind, ToRedisArgs, Value};

use super::{Backend, BoxFuture, OpenError, OpenFailure, RedisMode, RedisTls, StoreError, redact_url};
use crate::clock::Clock;
use crate::limiter::{Label, OnLimit, Op, Plans, Reply, Rule, UserId};

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
    plans: PlansCache,
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
        Ok(Self { conn, script: redis::Script::new(SCRIPT), test_clock, plans: PlansCache::default() })
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
                let plain = a.device_class.is_none()
                    && a.content_kind.is_none()
                    && a.plan.is_none()
                    && a.rules.is_empty()
                    && a.plans.is_none()
                    && !a.held
                    && a.evict.is_empty();
                if plain {
                    // The script reads the arguments it is not given as
                    // absent; each one costs Redis a little to parse.
                    return cmd;
                }
                cmd.arg(LabelArg(a.device_class.as_ref())).arg(LabelArg(a.content_kind.as_ref()));
                cmd.arg(LabelArg(a.plan.as_ref())).arg(RulesArg(&a.rules));
                match &a.plans {
                    Some(plans) => cmd.arg(&*self.plans.encoded(plans)),
                    None => cmd.arg(""),
                };
                cmd.arg(if a.held { "1" } else { "0" });
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

/// The rules as the script takes them: "" when there are none, else one
/// MessagePack sequence of six values per rule (name, device class,
/// content kind, per_content, limit, exempt; false for an absent scope).
struct RulesArg<'a>(&'a [Rule]);

impl ToRedisArgs for RulesArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut buf = Vec::new();
        encode_rules(&mut buf, self.0);
        out.write_arg(&buf);
    }
}

fn encode_rules(buf: &mut Vec<u8>, rules: &[Rule]) {
    for rule in rules {
        msgpack_str(buf, Some(&rule.name));
        msgpack_str(buf, rule.device_class.as_ref());
        msgpack_str(buf, rule.content_kind.as_ref());
        buf.push(msgpack_bool(rule.per_content));
        msgpack_limit(buf, rule.limit.get());
        buf.push(msgpack_bool(rule.exempt));
    }
}

/// The configured plans as the script takes them: one MessagePack
/// sequence of four values per plan (name, limit, on_limit, and its rules
/// as one string in [`RulesArg`]'s encoding), in name order.
fn encode_plans(plans: &Plans) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut rules = Vec::new();
    for (name, terms) in plans {
        msgpack_str(&mut buf, Some(name));
        msgpack_limit(&mut buf, terms.limit.get());
        msgpack_bytes(&mut buf, on_limit_name(terms.on_limit).as_bytes());
        rules.clear();
        encode_rules(&mut rules, &terms.rules);
        msgpack_bytes(&mut buf, &rules);
    }
    buf
}

/// The encoded plans of the last `Arc<Plans>` a request carried. The HTTP
/// layer hands every request the same `Arc` for the life of the process,
/// so the table is encoded once, not per request; another `Arc` (after a
/// reload, or in tests) replaces it. Holding the `Arc` keeps its address
/// from being reused by another table.
#[derive(Default)]
struct PlansCache(Mutex<Option<EncodedPlans>>);

/// A table of plans and its encoding.
type EncodedPlans = (Arc<Plans>, Arc<[u8]>);

impl PlansCache {
    fn encoded(&self, plans: &Arc<Plans>) -> Arc<[u8]> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((p, bytes)) if Arc::ptr_eq(p, plans) => bytes.clone(),
            _ => {
                let bytes: Arc<[u8]> = encode_plans(plans).into();
                *last = Some((plans.clone(), bytes.clone()));
                bytes
            }
        }
    }
}

/// A label as a MessagePack string, or false for `None`.
fn msgpack_str(buf: &mut Vec<u8>, label: Option<&Label>) {
    match label {
        Some(l) => msgpack_bytes(buf, l.as_str().as_bytes()),
        None => buf.push(msgpack_bool(false)),
    }
}

/// Bytes as a MessagePack string (which Lua reads as a string, whatever
/// the bytes).
fn msgpack_bytes(buf: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    match n {
        0..=31 => buf.push(0xa0 | n as u8),
        32..=255 => buf.extend_from_slice(&[0xd9, n as u8]),
        256..=65_535 => buf.extend_from_slice(&[0xda, (n >> 8) as u8, n as u8]),
        _ => {
            buf.push(0xdb);
            buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    buf.extend_from_slice(s);
}

/// A limit, at most 1000: a positive fixint or a uint 16.
fn msgpack_limit(buf: &mut Vec<u8>, n: u32) {
    match n {
        0..=127 => buf.push(n as u8),
        n => buf.extend_from_slice(&[0xcd, (n >> 8) as u8, n as u8]),
    }
}

fn msgpack_bool(b: bool) -> u8 {
    if b { 0xc3 } else { 0xc2 }
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
        Acquire, Decision, Denial, Grant, Lease, Limit, LimitSource, RevokeReason, StreamId, Terms, Timestamp,
        Tombstone, Ttl,
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

    /// State written by the previous version of the script (format 2: five
    /// values per lease, with no device class, content kind or plan, as in
    /// its docs) is read and answered from, left alone by reads, and
    /// rewritten as format 3 by the next write, losing nothing.
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
        // The stored values, numbers in decimal and false as "false".
        let dump = |key: &str| {
            let script = "local v = { cmsgpack.unpack(redis.call('GET', KEYS[1])) } \
                 for i, x in ipairs(v) do \
                   if type(x) == 'number' then v[i] = string.format('%d', x) \
                   elseif x == false then v[i] = 'false' end \
                 end return v";
            cli(&["EVAL", script, "1", key]).lines().map(str::to_owned).collect::<Vec<_>>()
        };
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
        // The override's copy is set in place, still in format 2.
        store.set_override(&u, Some(Limit::new(6).unwrap())).await.unwrap();
        let six = Limit::new(6).unwrap();
        assert_eq!(dump("sc:{alice}:s")[..5], ["2", "2", "1", "1796002997739002", "6"]);

        // A renewal that names a device class and a plan writes format 3:
        // every lease gains the three values, nothing else changes, and
        // the key keeps its expiry.
        let pttl: i64 = cli(&["PTTL", "sc:{alice}:s"]).parse().unwrap();
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

    fn rule(name: &str, limit: u32) -> Rule {
        Rule {
            name: Label::new(name).unwrap(),
            device_class: None,
            content_kind: None,
            per_content: false,
            limit: Limit::new(limit).unwrap(),
            exempt: false,
        }
    }

    fn tv_rule(limit: u32) -> Rule {
        Rule { device_class: label("tv"), ..rule("tv", limit) }
    }

    fn per_title(limit: u32) -> Rule {
        Rule { per_content: true, ..rule("one-per-title", limit) }
    }

    fn decision(reply: Reply) -> Decision {
        match reply {
            Reply::Decision(d) => d,
            other => panic!("not a decision: {other:?}"),
        }
    }

    fn names(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.stream_id.as_str()).collect()
    }

    fn hit(name: &str, limit: u32) -> Option<crate::limiter::RuleHit> {
        Some(crate::limiter::RuleHit { name: Label::new(name).unwrap(), limit: Limit::new(limit).unwrap() })
    }

    /// The issue's examples and each corner of the rules, on Redis and on
    /// the rules side by side (`Pair::run` requires equal answers); the
    /// assertions say what those answers are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rules_match_the_reference() {
        let redis = RedisServer::start(&[]);
        let clock = ManualClock::new(T0);
        let p = Pair::new(&redis, &clock).await;
        let go = |a: Acquire| Op::Acquire(a);

        // "4 streams, but at most 2 on TVs".
        let tv = [tv_rule(2)];
        for s in ["tv1", "tv2"] {
            assert!(matches!(
                decision(p.run("tv", go(Acquire::on_test(s, 4, &tv, Some("tv"), None, None))).await),
                Decision::Granted(_)
            ));
            clock.advance_ms(1);
        }
        match decision(p.run("tv", go(Acquire::on_test("tv3", 4, &tv, Some("tv"), None, None))).await) {
            Decision::Denied(d) => {
                assert_eq!((d.limit.get(), d.rule, names(&d.live)), (4, hit("tv", 2), vec!["tv1", "tv2"]))
            }
            d => panic!("{d:?}"),
        }
        for s in ["m1", "m2"] {
            p.run("tv", go(Acquire::on_test(s, 4, &tv, Some("mobile"), None, None))).await;
            clock.advance_ms(1);
        }
        match decision(p.run("tv", go(Acquire::on_test("m3", 4, &tv, Some("mobile"), None, None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (None, vec!["tv1", "tv2", "m1", "m2"])),
            d => panic!("{d:?}"),
        }
        p.run("tv", Op::Release(stream("m2"))).await;
        assert!(matches!(
            decision(p.run("tv", go(Acquire::on_test("x", 4, &tv, None, None, None))).await),
            Decision::Granted(_)
        ));
        p.run("tv", Op::List { limit: Limit::new(4).unwrap() }).await;

        // "the same title on at most 1 screen"; untitled streams are outside.
        let titles = [per_title(1)];
        p.run("title", go(Acquire::on_test("a", 4, &titles, None, None, Some("film")))).await;
        match decision(p.run("title", go(Acquire::on_test("b", 4, &titles, None, None, Some("film")))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit("one-per-title", 1), vec!["a"])),
            d => panic!("{d:?}"),
        }
        for (s, title) in [("c", Some("show")), ("d", None), ("e", None)] {
            assert!(matches!(
                decision(p.run("title", go(Acquire::on_test(s, 4, &titles, None, None, title))).await),
                Decision::Granted(_)
            ));
        }
        p.run("title", go(Acquire::on_test("f", 4, &titles, None, None, Some("other")))).await;

        // "downloads don't count", two of them at most; a total of 1.
        let downloads = [Rule { content_kind: label("download"), exempt: true, ..rule("downloads", 2) }];
        for (s, kind) in [("watch", None), ("dl1", Some("download")), ("dl2", Some("download"))] {
            assert!(matches!(
                decision(p.run("dl", go(Acquire::on_test(s, 1, &downloads, None, kind, None))).await),
                Decision::Granted(_)
            ));
        }
        match decision(p.run("dl", go(Acquire::on_test("dl3", 1, &downloads, None, Some("download"), None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit("downloads", 2), vec!["dl1", "dl2"])),
            d => panic!("{d:?}"),
        }
        match decision(p.run("dl", go(Acquire::on_test("watch2", 1, &downloads, None, Some("vod"), None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (None, vec!["watch"])),
            d => panic!("{d:?}"),
        }
        // A download can become a counted stream only if the total has room.
        match decision(p.run("dl", go(Acquire::on_test("dl1", 1, &downloads, None, Some("vod"), None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (None, vec!["watch"])),
            d => panic!("{d:?}"),
        }

        // "1 live event at a time", and a rule of 0 that nothing can satisfy.
        let live = [
            Rule { content_kind: label("live"), ..rule("live", 1) },
            Rule { device_class: label("car"), ..rule("no-car", 0) },
        ];
        let evicting = |a: Acquire| go(Acquire { on_limit: OnLimit::EvictOldest, ..a });
        p.run("live", go(Acquire::on_test("l1", 3, &live, None, Some("live"), None))).await;
        clock.advance_ms(1);
        match decision(p.run("live", evicting(Acquire::on_test("l2", 3, &live, None, Some("live"), None))).await) {
            Decision::Granted(g) => assert_eq!(names(&g.evicted), ["l1"]),
            d => panic!("{d:?}"),
        }
        match decision(p.run("live", evicting(Acquire::on_test("c1", 3, &live, Some("car"), None, None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, d.live), (hit("no-car", 0), vec![])),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decision(p.run("live", go(Acquire::on_test("l1", 3, &live, None, Some("live"), None))).await),
            Decision::Gone(_)
        ));

        // evict_oldest frees a seat in every full scope, and reports the
        // victims oldest first: the title's before the TVs'.
        let both = [tv_rule(2), per_title(1)];
        for (s, class, title) in [("m-film", "mobile", "film"), ("tv1", "tv", "a"), ("tv2", "tv", "b")] {
            p.run("evict", go(Acquire::on_test(s, 4, &both, Some(class), None, Some(title)))).await;
            clock.advance_ms(1);
        }
        match decision(
            p.run("evict", evicting(Acquire::on_test("new", 4, &both, Some("tv"), None, Some("film")))).await,
        ) {
            Decision::Granted(g) => assert_eq!(names(&g.evicted), ["m-film", "tv1"]),
            d => panic!("{d:?}"),
        }
        p.run("evict", Op::List { limit: Limit::new(4).unwrap() }).await;

        // Take-over must free a seat in every full scope; shadow mode says
        // which rule would refuse, or whom it would evict.
        let one_tv = [tv_rule(1)];
        for (s, class) in [("tv1", "tv"), ("m1", "mobile")] {
            p.run("take", go(Acquire::on_test(s, 2, &one_tv, Some(class), None, None))).await;
            clock.advance_ms(1);
        }
        let take = |evict: &str, enforce| {
            go(Acquire {
                evict: vec![stream(evict)],
                enforce,
                ..Acquire::on_test("tv2", 2, &one_tv, Some("tv"), None, None)
            })
        };
        match decision(p.run("take", take("m1", true)).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit("tv", 1), vec!["tv1"])),
            d => panic!("{d:?}"),
        }
        match decision(p.run("take", take("m1", false)).await) {
            Decision::Granted(g) => assert_eq!((g.would_deny, g.would_deny_rule), (true, hit("tv", 1))),
            d => panic!("{d:?}"),
        }
        p.run("take", Op::Release(stream("tv2"))).await;
        match decision(p.run("take", take("tv1", false)).await) {
            Decision::Granted(g) => assert_eq!((g.would_deny, g.would_evict), (false, vec![stream("tv1")])),
            d => panic!("{d:?}"),
        }
        p.run("take", Op::Release(stream("tv2"))).await;
        match decision(p.run("take", take("tv1", true)).await) {
            Decision::Granted(g) => assert_eq!(names(&g.evicted), ["tv1"]),
            d => panic!("{d:?}"),
        }
        let shadow_evict = go(Acquire {
            enforce: false,
            on_limit: OnLimit::EvictOldest,
            ..Acquire::on_test("tv3", 2, &one_tv, Some("tv"), None, None)
        });
        match decision(p.run("take", shadow_evict).await) {
            // The TV seat is the one to free; the total then has room.
            Decision::Granted(g) => assert_eq!((g.would_deny, g.would_evict), (false, vec![stream("tv2")])),
            d => panic!("{d:?}"),
        }

        // A renewal cannot move a stream into a full scope: refused, the
        // lease untouched; in shadow mode renewed with the rule named.
        let moves = [tv_rule(1), per_title(1)];
        p.run("move", go(Acquire::on_test("tv1", 4, &moves, Some("tv"), None, Some("a")))).await;
        clock.advance_ms(1);
        p.run("move", go(Acquire::on_test("m1", 4, &moves, Some("mobile"), None, Some("b")))).await;
        clock.advance_ms(1);
        match decision(p.run("move", go(Acquire::on_test("m1", 4, &moves, None, None, Some("a")))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit("one-per-title", 1), vec!["tv1"])),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decision(p.run("move", go(Acquire::on_test("m1", 4, &moves, Some("tv"), None, None))).await),
            Decision::Denied(_)
        ));
        p.run("move", Op::List { limit: Limit::new(4).unwrap() }).await;
        let shadow = go(Acquire { enforce: false, ..Acquire::on_test("m1", 4, &moves, Some("tv"), Some("vod"), None) });
        match decision(p.run("move", shadow).await) {
            Decision::Renewed(g) => {
                assert_eq!((g.would_deny, g.would_deny_rule), (true, hit("tv", 1)));
                assert_eq!((g.lease.device_class, g.lease.content_kind), (label("tv"), label("vod")));
            }
            d => panic!("{d:?}"),
        }
        // A rule lowered below its live streams: they keep renewing.
        let lowered = [Rule { limit: Limit::new(0).unwrap(), ..tv_rule(1) }];
        assert!(matches!(
            decision(p.run("move", go(Acquire::on_test("tv1", 4, &lowered, None, None, None))).await),
            Decision::Renewed(_)
        ));
        p.run("move", Op::List { limit: Limit::new(4).unwrap() }).await;

        // Attributes and the plan stay on the lease; a renewal naming a
        // plan replaces it, one naming none keeps it.
        let first = Acquire {
            plan: label("premium"),
            device_id: label("dev"),
            ..Acquire::on_test("a", 4, &[], Some("tv"), Some("live"), Some("match"))
        };
        p.run("attrs", go(first)).await;
        p.run("attrs", go(acquire("a", 4))).await;
        match decision(p.run("attrs", go(Acquire { plan: label("basic"), ..acquire("a", 4) })).await) {
            Decision::Renewed(g) => assert_eq!((g.lease.plan, g.lease.content_kind), (label("basic"), label("live"))),
            d => panic!("{d:?}"),
        }
        p.run("attrs", Op::List { limit: Limit::new(4).unwrap() }).await;

        // Long names and scopes take MessagePack's longer string forms.
        let (name, class) = ("n".repeat(64), "é".repeat(128));
        let long = [Rule { device_class: label(&class), ..rule(&name, 1) }];
        p.run("long", go(Acquire::on_test("a", 4, &long, Some(&class), None, None))).await;
        match decision(p.run("long", go(Acquire::on_test("b", 4, &long, Some(&class), None, None))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit(&name, 1), vec!["a"])),
            d => panic!("{d:?}"),
        }

        // An override changes the total, never a rule.
        p.run("over", Op::SetOverride(Limit::new(1))).await;
        p.run("over", go(Acquire::on_test("tv1", 4, &tv, Some("tv"), None, None))).await;
        match decision(p.run("over", go(Acquire::on_test("m1", 4, &tv, Some("mobile"), None, None))).await) {
            Decision::Denied(d) => assert_eq!((d.limit.get(), d.rule), (1, None)),
            d => panic!("{d:?}"),
        }
    }

    fn terms(limit: u32, on_limit: OnLimit, rules: &[Rule]) -> Terms {
        Terms { limit: Limit::new(limit).unwrap(), on_limit, rules: Arc::from(rules) }
    }

    /// Sticky plans and held requests, on Redis and on the rules side by
    /// side: which lease's plan a plan-less request takes, what it then
    /// decides with (the plan's limit, on_limit and rules; an override
    /// still wins), and that a held request renews but never starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sticky_plans_and_held_requests_match_the_reference() {
        let redis = RedisServer::start(&[]);
        let clock = ManualClock::new(T0);
        let p = Pair::new(&redis, &clock).await;
        let go = |a: Acquire| Op::Acquire(a);
        let table = Arc::new(Plans::from([
            (Label::new("basic").unwrap(), terms(1, OnLimit::Reject, &[])),
            (Label::new("family").unwrap(), terms(2, OnLimit::EvictOldest, &[])),
            (Label::new("premium").unwrap(), terms(3, OnLimit::Reject, &[tv_rule(1)])),
        ]));
        // A plan-less request under the default: 2 streams, no rules.
        let plain = |a: Acquire| Acquire { plans: Some(table.clone()), ..a };
        let named = |a: Acquire, plan: &str| Acquire { plan: label(plan), ..a };
        let held = |a: Acquire| Acquire { held: true, ..a };
        let list = || Op::List { limit: Limit::new(2).unwrap() };

        // Held, with nothing live: nothing starts, nothing is stored.
        assert_eq!(decision(p.run("h", go(held(plain(acquire("a", 2))))).await), Decision::NotHeld);
        assert_eq!(harness::cli(redis.port, &["EXISTS", "sc:{h}:s"]).trim(), "0");
        p.run("h", go(acquire("a", 2))).await;
        clock.advance_ms(1);
        assert!(matches!(decision(p.run("h", go(held(acquire("a", 2)))).await), Decision::Renewed(_)));
        // A held renewal that moves into a full scope is refused as a renewal.
        let tv = [tv_rule(1)];
        p.run("h", go(Acquire::on_test("t", 2, &tv, Some("tv"), None, None))).await;
        match decision(p.run("h", go(held(Acquire::on_test("a", 2, &tv, Some("tv"), None, None)))).await) {
            Decision::Denied(d) => assert_eq!((d.rule, names(&d.live)), (hit("tv", 1), vec!["t"])),
            d => panic!("{d:?}"),
        }
        // Evicted: gone comes first. Expired: not held, and the expiry is
        // cleaned up as by any change.
        p.run("h", go(Acquire { evict: vec![stream("a")], ..acquire("b", 2) })).await;
        assert!(matches!(decision(p.run("h", go(held(acquire("a", 2)))).await), Decision::Gone(_)));
        clock.advance_ms(61_000);
        assert_eq!(decision(p.run("h", go(held(plain(acquire("t", 2))))).await), Decision::NotHeld);
        p.run("h", list()).await;

        // The newest live lease's plan: premium admits a third stream, and
        // its TV rule (not the request's, which has none) refuses a second TV.
        p.run("s", go(named(Acquire::on_test("tv1", 2, &[], Some("tv"), None, None), "premium"))).await;
        clock.advance_ms(1);
        match decision(p.run("s", go(plain(acquire("m1", 2)))).await) {
            Decision::Granted(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, label("premium"))),
            d => panic!("{d:?}"),
        }
        clock.advance_ms(1);
        assert!(matches!(decision(p.run("s", go(plain(acquire("m2", 2)))).await), Decision::Granted(_)));
        match decision(p.run("s", go(plain(Acquire::on_test("tv2", 2, &[], Some("tv"), None, None)))).await) {
            Decision::Denied(d) => {
                assert_eq!((d.limit.get(), d.rule, names(&d.live)), (3, hit("tv", 1), vec!["tv1"]))
            }
            d => panic!("{d:?}"),
        }
        // Shadow mode names the inherited plan's rule.
        let shadow = Acquire { enforce: false, ..plain(Acquire::on_test("tv2", 2, &[], Some("tv"), None, None)) };
        match decision(p.run("s", go(shadow)).await) {
            Decision::Granted(g) => assert_eq!((g.would_deny_rule, g.lease.plan), (hit("tv", 1), label("premium"))),
            d => panic!("{d:?}"),
        }
        p.run("s", Op::Release(stream("tv2"))).await;
        // An override wins over the inherited limit.
        p.run("s", Op::SetOverride(Limit::new(1))).await;
        match decision(p.run("s", go(plain(acquire("m1", 2)))).await) {
            Decision::Renewed(g) => assert_eq!((g.limit.get(), g.lease.plan), (1, label("premium"))),
            d => panic!("{d:?}"),
        }
        p.run("s", Op::SetOverride(None)).await;
        p.run("s", list()).await;
        // The family plan evicts the oldest where the request says reject.
        p.run("f", go(named(acquire("f1", 2), "family"))).await;
        clock.advance_ms(1);
        p.run("f", go(plain(acquire("f2", 1)))).await;
        clock.advance_ms(1);
        match decision(p.run("f", go(plain(acquire("f3", 1)))).await) {
            Decision::Granted(g) => assert_eq!((names(&g.evicted), g.lease.plan), (vec!["f1"], label("family"))),
            d => panic!("{d:?}"),
        }

        // Only the stream's own lease counts for a renewal, even one without
        // a plan; and only the newest lease for a new stream.
        p.run("o", go(named(acquire("old", 3), "premium"))).await;
        clock.advance_ms(1);
        p.run("o", go(acquire("mid", 3))).await;
        clock.advance_ms(1);
        p.run("o", go(named(acquire("new", 3), "premium"))).await;
        match decision(p.run("o", go(plain(acquire("mid", 2)))).await) {
            Decision::Renewed(g) => assert_eq!((g.limit.get(), g.lease.plan), (2, None)),
            d => panic!("{d:?}"),
        }
        match decision(p.run("o", go(plain(acquire("old", 2)))).await) {
            Decision::Renewed(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, label("premium"))),
            d => panic!("{d:?}"),
        }
        match decision(p.run("o", go(plain(acquire("fourth", 2)))).await) {
            Decision::Denied(d) => assert_eq!((d.limit.get(), names(&d.live)), (3, vec!["old", "mid", "new"])),
            d => panic!("{d:?}"),
        }
        p.run("o", Op::Release(stream("new"))).await;
        match decision(p.run("o", go(plain(acquire("third", 3)))).await) {
            // The newest is now mid, without a plan: the default's 3.
            Decision::Granted(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, None)),
            d => panic!("{d:?}"),
        }
        match decision(p.run("o", go(plain(acquire("fourth", 3)))).await) {
            Decision::Denied(d) => assert_eq!((d.limit.get(), names(&d.live)), (3, vec!["old", "mid", "third"])),
            d => panic!("{d:?}"),
        }

        // Leases started in the same µs: the newest is the greater stream id.
        p.run("tie", go(named(acquire("b", 4), "premium"))).await;
        p.run("tie", go(named(acquire("a", 4), "basic"))).await;
        match decision(p.run("tie", go(plain(acquire("c", 2)))).await) {
            Decision::Granted(g) => assert_eq!((g.limit.get(), g.lease.plan), (3, label("premium"))),
            d => panic!("{d:?}"),
        }

        // A plan no longer configured, and a table without it: the default.
        p.run("gold", go(named(acquire("a", 4), "gold"))).await;
        match decision(p.run("gold", go(plain(acquire("b", 1)))).await) {
            Decision::Denied(d) => assert_eq!(d.limit.get(), 1),
            d => panic!("{d:?}"),
        }
        let empty = Acquire { plans: Some(Arc::new(Plans::new())), ..acquire("b", 1) };
        assert!(matches!(decision(p.run("gold", go(empty)).await), Decision::Denied(_)));
        // A request that names a plan carries no table and inherits nothing.
        p.run("named", go(named(acquire("a", 4), "premium"))).await;
        match decision(p.run("named", go(named(acquire("b", 1), "basic"))).await) {
            Decision::Denied(d) => assert_eq!(d.limit.get(), 1),
            d => panic!("{d:?}"),
        }
    }

    /// The plans are encoded once per table, not per request: the same
    /// `Arc` gets the same bytes back; another table is encoded anew.
    #[test]
    fn the_plans_table_is_encoded_once_per_arc() {
        let cache = PlansCache::default();
        let one = Arc::new(Plans::from([(Label::new("basic").unwrap(), terms(1, OnLimit::Reject, &[]))]));
        let first = cache.encoded(&one);
        assert!(Arc::ptr_eq(&first, &cache.encoded(&one.clone())));
        // name, limit, on_limit, rules ("": none).
        assert_eq!(&*first, b"\xa5basic\x01\xa6reject\xa0");
        let rules = [Rule { limit: Limit::new(1000).unwrap(), ..tv_rule(1) }];
        let two = Arc::new(Plans::from([(Label::new("premium").unwrap(), terms(300, OnLimit::EvictOldest, &rules))]));
        let second = cache.encoded(&two);
        let mut expected = b"\xa7premium\xcd\x01\x2c\xacevict_oldest\xac".to_vec();
        expected.extend_from_slice(b"\xa2tv\xa2tv\xc2\xc2\xcd\x03\xe8\xc2");
        assert_eq!(&*second, &expected[..]);
        assert!(Arc::ptr_eq(&second, &cache.encoded(&two)));
        // The same content in another Arc is encoded again, to equal bytes.
        let again = cache.encoded(&Arc::new((*one).clone()));
        assert!(!Arc::ptr_eq(&again, &first));
        assert_eq!(again, first);
    }

    /// A long pseudo-random run with rules and lease attributes, checked
    /// step by step against the rules: random rule sets (scoped, per title,
    /// exempt, zero), classes, kinds, titles and plans, plan-less requests
    /// that take a lease's plan, held requests, renewals that change them,
    /// reject and evict_oldest, take-overs, shadow mode, overrides,
    /// releases, revocations and time passing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_runs_with_rules_match_the_reference() {
        let redis = RedisServer::start(&[]);
        let clock = ManualClock::new(T0);
        let p = Pair::new(&redis, &clock).await;
        let sets: [Vec<Rule>; 6] = [
            vec![],
            vec![tv_rule(2)],
            vec![tv_rule(1), per_title(1)],
            vec![Rule { content_kind: label("dl"), exempt: true, ..rule("downloads", 2) }, per_title(2)],
            vec![
                Rule { content_kind: label("live"), ..rule("live", 1) },
                Rule { device_class: label("tv"), content_kind: label("dl"), ..rule("tv-dl", 0) },
                Rule { device_class: label("tv"), exempt: true, ..rule("tv-free", 3) },
            ],
            vec![Rule { device_class: label("tv"), per_content: true, ..rule("tv-title", 1) }, tv_rule(2)],
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let pick = |i: u64, of: &[&str]| of.get(i as usize).and_then(|s| label(s));
        // "gold" is a plan no longer configured.
        let table = Arc::new(Plans::from([
            (Label::new("basic").unwrap(), terms(1, OnLimit::Reject, &sets[2])),
            (Label::new("premium").unwrap(), terms(3, OnLimit::EvictOldest, &sets[4])),
        ]));
        let (mut granted, mut denied_by_rule, mut not_held) = (0, 0, 0);
        for _ in 0..4000 {
            let u = format!("u{}", next(4));
            let s = format!("s{}", next(6));
            let op = match next(14) {
                0..=8 => {
                    let mut a = acquire(&s, next(5) as u32);
                    a.rules = Arc::from(sets[next(sets.len() as u64) as usize].clone());
                    a.device_class = pick(next(4), &["tv", "mobile", ""]);
                    a.content_kind = pick(next(4), &["live", "dl", "vod"]);
                    a.content_id = pick(next(5), &["t1", "t2", "t3"]);
                    a.plan = pick(next(5), &["basic", "premium", "gold"]);
                    if a.plan.is_none() && next(3) != 0 {
                        a.plans = Some(table.clone());
                    }
                    a.held = next(6) == 0;
                    a.device_id = pick(next(3), &["d1", "d2"]);
                    a.ttl = Ttl::from_secs(1 + next(20) as u32).unwrap();
                    a.on_limit = if next(2) == 0 { OnLimit::Reject } else { OnLimit::EvictOldest };
                    a.enforce = next(5) != 0;
                    if next(6) == 0 {
                        a.evict = (0..1 + next(2)).map(|_| stream(&format!("s{}", next(6)))).collect();
                    }
                    Op::Acquire(a)
                }
                9 => Op::Release(stream(&s)),
                10 => Op::RevokeAll { ttl: Ttl::from_secs(1 + next(20) as u32).unwrap() },
                11 => Op::List { limit: Limit::new(next(5) as u32).unwrap() },
                12 => Op::SetOverride(if next(3) == 0 { None } else { Limit::new(next(5) as u32) }),
                _ => {
                    clock.advance_ms(next(6_000) as i64);
                    continue;
                }
            };
            match p.run(&u, op).await {
                Reply::Decision(Decision::Granted(_)) => granted += 1,
                Reply::Decision(Decision::Denied(Denial { rule: Some(_), .. })) => denied_by_rule += 1,
                Reply::Decision(Decision::NotHeld) => not_held += 1,
                _ => {}
            }
        }
        // The run must reach these outcomes often, or it proves little.
        assert!(
            granted > 300 && denied_by_rule > 40 && not_held > 40,
            "granted {granted}, denied by a rule {denied_by_rule}, not held {not_held}"
        );
    }
}
