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
//! Rust rules. Its arguments are positional strings and its reply a flat
//! array, read here straight into limiter types; the script's header
//! documents both.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisWrite, ServerErrorKind, ToRedisArgs, Value};

use super::{Backend, BoxFuture, OpenError, RedisMode, StoreError, redact_url};
use crate::clock::Clock;
use crate::limiter::{
    Acquire, Decision, Denial, Grant, Label, Lease, Limit, LimitSource, OnLimit, Op, Reply, RevokeReason, StreamId,
    Timestamp, Tombstone, UserId,
};
use crate::metrics;

#[cfg(test)]
pub(crate) mod harness;

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
    /// Connects to `urls` (one URL, or the seed nodes of a cluster). Every
    /// decision reads Redis's own clock.
    pub(super) async fn open(urls: &[String], mode: RedisMode) -> Result<Self, OpenError> {
        Self::connect(urls, mode, None).await
    }

    /// Like `open`, but the script is handed this clock's time instead of
    /// reading TIME: only tests can build such a backend.
    #[cfg(test)]
    pub(super) async fn open_with_clock(
        urls: &[String],
        mode: RedisMode,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        Self::connect(urls, mode, Some(clock)).await
    }

    async fn connect(urls: &[String], mode: RedisMode, test_clock: Option<Arc<dyn Clock>>) -> Result<Self, OpenError> {
        let shown = urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",");
        let fail =
            |e: redis::RedisError| OpenError(format!("cannot connect to redis ({}) at {shown}: {e}", mode.name()));
        let conn = match mode {
            RedisMode::Standalone => {
                let [url] = urls else {
                    return Err(OpenError(format!("standalone redis takes one URL, got {}", urls.len())));
                };
                let client = redis::Client::open(url.as_str()).map_err(fail)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                Conn::Standalone(ConnectionManager::new_with_config(client, config).await.map_err(fail)?)
            }
            RedisMode::Cluster => {
                let client = ClusterClientBuilder::new(urls.to_vec())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3)
                    .build()
                    .map_err(fail)?;
                Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
            }
        };
        Ok(Self { conn, script: redis::Script::new(SCRIPT), test_clock })
    }

    /// The EVALSHA of `op` for `user`, built in one buffer.
    fn command(&self, user: &UserId, op: &Op) -> Cmd {
        let mut cmd = Cmd::with_capacity(16, 192);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(2)
            .arg(UserKey(user, b"}:s"))
            .arg(UserKey(user, b"}:o"));
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

    async fn call(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        match self.conn.clone() {
            Conn::Standalone(mut c) => self.eval(cmd, &mut c).await,
            Conn::Cluster(mut c) => self.eval(cmd, &mut c).await,
        }
    }

    /// Runs `cmd`, loading the script first wherever Redis has not got it
    /// (after a restart or SCRIPT FLUSH; on every node, in a cluster).
    async fn eval(&self, cmd: &Cmd, conn: &mut impl ConnectionLike) -> Result<Value, StoreError> {
        let fail = |e: redis::RedisError| StoreError::Unavailable(format!("redis: {e}"));
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await.map_err(fail)?;
                cmd.query_async(conn).await.map_err(fail)
            }
            other => other.map_err(fail),
        }
    }
}

/// `sc:{<user>}:s` or `sc:{<user>}:o`, written straight into the command.
struct UserKey<'a>(&'a UserId, &'static [u8]);

impl ToRedisArgs for UserKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = w.write_all(b"sc:{").and_then(|()| w.write_all(self.0.as_str().as_bytes())).and_then(|()| w.write_all(self.1));
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

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("invalid script reply: {what}"))
}

/// The script's reply, a flat array, read front to back.
struct Fields(std::vec::IntoIter<Value>);

impl Fields {
    fn new(v: Value) -> Result<Self, StoreError> {
        match v {
            Value::Array(items) => Ok(Self(items.into_iter())),
            other => Err(bad(format!("expected an array, got {other:?}"))),
        }
    }

    fn next(&mut self) -> Result<Value, StoreError> {
        self.0.next().ok_or_else(|| bad("too few elements"))
    }

    fn left(&self) -> usize {
        self.0.len()
    }

    fn bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.next()? {
            Value::BulkString(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            other => Err(bad(format!("expected a string, got {other:?}"))),
        }
    }

    fn text(&mut self) -> Result<Option<String>, StoreError> {
        self.bytes()?.map(|b| String::from_utf8(b).map_err(|e| bad(format!("not UTF-8: {e}")))).transpose()
    }

    fn kind(&mut self) -> Result<Vec<u8>, StoreError> {
        self.bytes()?.ok_or_else(|| bad("no kind"))
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        match self.next()? {
            Value::Int(n) => Ok(n),
            other => Err(bad(format!("expected an integer, got {other:?}"))),
        }
    }

    fn count(&mut self) -> Result<u32, StoreError> {
        let n = self.int()?;
        u32::try_from(n).map_err(|_| bad(format!("count {n}")))
    }

    fn limit(&mut self) -> Result<Limit, StoreError> {
        let n = self.int()?;
        u32::try_from(n).ok().and_then(Limit::new).ok_or_else(|| bad(format!("limit {n}")))
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        self.int().map(Timestamp::from_micros)
    }

    fn stream(&mut self) -> Result<StreamId, StoreError> {
        let s = self.text()?.ok_or_else(|| bad("no stream id"))?;
        StreamId::new(&s).map_err(|e| bad(format!("stream id {s:?} {e}")))
    }

    /// A label, reusing `known`'s allocation when it is the same text.
    fn label(&mut self, known: Option<&Label>) -> Result<Option<Label>, StoreError> {
        let Some(s) = self.text()? else { return Ok(None) };
        if let Some(k) = known.filter(|k| k.as_str() == s) {
            return Ok(Some(k.clone()));
        }
        Label::new(&s).map(Some).map_err(|e| bad(format!("label {e}")))
    }

    fn lease(&mut self) -> Result<Lease, StoreError> {
        Ok(Lease {
            stream_id: self.stream()?,
            started_at: self.time()?,
            expires_at: self.time()?,
            device_id: self.label(None)?,
            content_id: self.label(None)?,
        })
    }

    /// Leases up to the end of the reply.
    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        if self.left() % 5 != 0 {
            return Err(bad("a partial lease"));
        }
        (0..self.left() / 5).map(|_| self.lease()).collect()
    }

    /// Stream ids up to the end of the reply.
    fn streams(&mut self) -> Result<Vec<StreamId>, StoreError> {
        (0..self.left()).map(|_| self.stream()).collect()
    }

    /// The leases that `expired` counts, for the metric.
    fn expired(&mut self) -> Result<(), StoreError> {
        metrics::decision("expired", u64::try_from(self.int()?).unwrap_or(0));
        Ok(())
    }
}

/// Reads the script's reply to `op`.
fn decode(op: Op, reply: Value) -> Result<Reply, StoreError> {
    let mut f = Fields::new(reply)?;
    let kind = f.kind()?;
    let reply = match (op, kind.as_slice()) {
        (Op::Acquire(req), _) => Reply::Decision(decision(req, &kind, &mut f)?),
        (Op::Release(_), b"done") => {
            f.expired()?;
            Reply::Done
        }
        (Op::RevokeAll { .. }, b"revoked") => {
            f.expired()?;
            Reply::Revoked(f.streams()?)
        }
        (Op::List { .. }, b"leases") => Reply::Leases { limit: f.limit()?, live: f.leases()? },
        (Op::GetLimit { fallback, source }, b"limit") => match f.left() {
            0 => Reply::Limit { limit: fallback, source },
            _ => Reply::Limit { limit: f.limit()?, source: LimitSource::Override },
        },
        (Op::SetOverride(Some(_)), b"limit") => Reply::Limit { limit: f.limit()?, source: LimitSource::Override },
        (Op::SetOverride(None), b"done") => Reply::Done,
        (_, kind) => return Err(bad(format!("unexpected kind {:?}", String::from_utf8_lossy(kind)))),
    };
    if f.left() > 0 {
        return Err(bad("too many elements"));
    }
    Ok(reply)
}

fn decision(req: Acquire, kind: &[u8], f: &mut Fields) -> Result<Decision, StoreError> {
    f.expired()?;
    Ok(match kind {
        b"granted" => {
            let active_streams = f.count()?;
            let limit = f.limit()?;
            let lease = Lease {
                started_at: f.time()?,
                expires_at: f.time()?,
                stream_id: req.stream_id,
                device_id: req.device_id,
                content_id: req.content_id,
            };
            let would_deny = f.int()? != 0;
            let evicted = (0..f.count()?).map(|_| f.lease()).collect::<Result<_, _>>()?;
            Decision::Granted(Grant { lease, active_streams, limit, evicted, would_deny, would_evict: f.streams()? })
        }
        b"renewed" => {
            let active_streams = f.count()?;
            let limit = f.limit()?;
            let lease = Lease {
                started_at: f.time()?,
                expires_at: f.time()?,
                device_id: f.label(req.device_id.as_ref())?,
                content_id: f.label(req.content_id.as_ref())?,
                stream_id: req.stream_id,
            };
            Decision::Renewed(Grant {
                lease,
                active_streams,
                limit,
                evicted: Vec::new(),
                would_deny: false,
                would_evict: Vec::new(),
            })
        }
        b"denied" => Decision::Denied(Denial { limit: f.limit()?, live: f.leases()? }),
        b"gone" => {
            let until = f.time()?;
            let reason = match f.text()? {
                Some(by) => RevokeReason::EvictedBy(StreamId::new(&by).map_err(|e| bad(format!("stream id {e}")))?),
                None => RevokeReason::Revoked,
            };
            Decision::Gone(Tombstone { stream_id: req.stream_id, reason, until })
        }
        other => return Err(bad(format!("unexpected kind {:?}", String::from_utf8_lossy(other)))),
    })
}

impl Backend for RedisBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(async move {
            let cmd = self.command(user, &op);
            decode(op, self.call(&cmd).await?)
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// Keys expire by themselves (PX in the script).
    fn expires_by_itself(&self) -> bool {
        true
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
    use crate::store::{Store, conformance};

    const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    async fn open(urls: Vec<String>, mode: RedisMode, clock: &ManualClock) -> Store {
        let backend = RedisBackend::open_with_clock(&urls, mode, Arc::new(clock.clone())).await.unwrap();
        Store::for_test(Box::new(backend))
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
        let user = UserId::new("idle").unwrap();
        let req = crate::limiter::Acquire {
            stream_id: StreamId::new("s").unwrap(),
            device_id: None,
            content_id: None,
            limit: Limit::new(1).unwrap(),
            ttl: crate::limiter::Ttl::from_secs(1).unwrap(),
            on_limit: OnLimit::Reject,
            evict: Vec::new(),
            enforce: true,
        };
        store.acquire(&user, req).await.unwrap();
        let keys = harness::cli(redis.port, &["KEYS", "*"]);
        assert_eq!(keys.trim(), "sc:{idle}:s");
        let pttl: i64 = harness::cli(redis.port, &["PTTL", "sc:{idle}:s"]).trim().parse().unwrap();
        assert!((1..=2_000).contains(&pttl), "expiry follows the lease: {pttl} ms");
        store.release(&user, StreamId::new("s").unwrap()).await.unwrap();
        assert_eq!(harness::cli(redis.port, &["EXISTS", "sc:{idle}:s"]).trim(), "0", "nothing left, nothing kept");
    }
}
