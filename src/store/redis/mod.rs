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
//! Rust rules.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use serde::Deserialize;
use serde_json::json;

use super::{Backend, BoxFuture, OpenError, RedisMode, StoreError, redact_url};
use crate::clock::Clock;
use crate::limiter::{
    Decision, Denial, Grant, Label, Lease, Limit, LimitSource, OnLimit, Op, Reply, RevokeReason, StreamId, Timestamp,
    Tombstone, UserId,
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

    async fn run(&self, user: &UserId, op: &'static str, args: serde_json::Value) -> Result<Wire, StoreError> {
        let now = self.test_clock.as_ref().map(|c| c.now().as_micros().to_string()).unwrap_or_default();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("sc:{{{user}}}:s"))
            .key(format!("sc:{{{user}}}:o"))
            .arg(op)
            .arg(now)
            .arg(args.to_string());
        let raw: String = match self.conn.clone() {
            Conn::Standalone(mut c) => invoke(&invocation, &mut c).await?,
            Conn::Cluster(mut c) => invoke(&invocation, &mut c).await?,
        };
        let meta: Meta = serde_json::from_str(&raw).unwrap_or_default();
        metrics::decision("expired", meta.expired);
        serde_json::from_str(&raw).map_err(|e| StoreError::Unavailable(format!("unreadable script reply: {e}")))
    }
}

async fn invoke(
    invocation: &redis::ScriptInvocation<'_>,
    conn: &mut impl ConnectionLike,
) -> Result<String, StoreError> {
    invocation.invoke_async(conn).await.map_err(|e| StoreError::Unavailable(format!("redis: {e}")))
}

fn on_limit_name(o: OnLimit) -> &'static str {
    match o {
        OnLimit::Reject => "reject",
        OnLimit::EvictOldest => "evict_oldest",
    }
}

fn source_name(s: LimitSource) -> &'static str {
    match s {
        LimitSource::Override => "override",
        LimitSource::Plan => "plan",
        LimitSource::Default => "default",
    }
}

/// What every reply carries besides its kind.
#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    expired: u64,
}

/// The script's replies.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Granted {
        lease: WireLease,
        active: u32,
        limit: u32,
        #[serde(default)]
        evicted: Vec<WireLease>,
        would_deny: bool,
        #[serde(default)]
        would_evict: Vec<String>,
    },
    Renewed {
        lease: WireLease,
        active: u32,
        limit: u32,
    },
    Denied {
        limit: u32,
        #[serde(default)]
        live: Vec<WireLease>,
    },
    Gone {
        stream_id: String,
        by: Option<String>,
        until: String,
    },
    Done,
    Revoked {
        #[serde(default)]
        streams: Vec<String>,
    },
    Leases {
        limit: u32,
        #[serde(default)]
        live: Vec<WireLease>,
    },
    Limit {
        limit: u32,
        source: String,
    },
}

#[derive(Deserialize)]
struct WireLease {
    stream_id: String,
    device_id: Option<String>,
    content_id: Option<String>,
    started_at: String,
    expires_at: String,
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("invalid script reply: {what}"))
}

fn stream(s: &str) -> Result<StreamId, StoreError> {
    StreamId::new(s).map_err(|e| bad(format!("stream id {s:?} {e}")))
}

fn time(s: &str) -> Result<Timestamp, StoreError> {
    s.parse().map(Timestamp::from_micros).map_err(|e| bad(format!("time {s:?}: {e}")))
}

fn limit(n: u32) -> Result<Limit, StoreError> {
    Limit::new(n).ok_or_else(|| bad(format!("limit {n}")))
}

fn label(s: Option<String>) -> Result<Option<Label>, StoreError> {
    s.map(|s| Label::new(&s).map_err(|e| bad(format!("label {e}")))).transpose()
}

impl WireLease {
    fn lease(self) -> Result<Lease, StoreError> {
        Ok(Lease {
            stream_id: stream(&self.stream_id)?,
            device_id: label(self.device_id)?,
            content_id: label(self.content_id)?,
            started_at: time(&self.started_at)?,
            expires_at: time(&self.expires_at)?,
        })
    }
}

fn leases(v: Vec<WireLease>) -> Result<Vec<Lease>, StoreError> {
    v.into_iter().map(WireLease::lease).collect()
}

impl Wire {
    fn reply(self) -> Result<Reply, StoreError> {
        Ok(match self {
            Wire::Granted { lease, active, limit: l, evicted, would_deny, would_evict } => {
                Reply::Decision(Decision::Granted(Grant {
                    lease: lease.lease()?,
                    active_streams: active,
                    limit: limit(l)?,
                    evicted: leases(evicted)?,
                    would_deny,
                    would_evict: would_evict.iter().map(|s| stream(s)).collect::<Result<_, _>>()?,
                }))
            }
            Wire::Renewed { lease, active, limit: l } => Reply::Decision(Decision::Renewed(Grant {
                lease: lease.lease()?,
                active_streams: active,
                limit: limit(l)?,
                evicted: Vec::new(),
                would_deny: false,
                would_evict: Vec::new(),
            })),
            Wire::Denied { limit: l, live } => {
                Reply::Decision(Decision::Denied(Denial { limit: limit(l)?, live: leases(live)? }))
            }
            Wire::Gone { stream_id, by, until } => Reply::Decision(Decision::Gone(Tombstone {
                stream_id: stream(&stream_id)?,
                reason: match by {
                    Some(by) => RevokeReason::EvictedBy(stream(&by)?),
                    None => RevokeReason::Revoked,
                },
                until: time(&until)?,
            })),
            Wire::Done => Reply::Done,
            Wire::Revoked { streams } => Reply::Revoked(streams.iter().map(|s| stream(s)).collect::<Result<_, _>>()?),
            Wire::Leases { limit: l, live } => Reply::Leases { limit: limit(l)?, live: leases(live)? },
            Wire::Limit { limit: l, source } => Reply::Limit {
                limit: limit(l)?,
                source: match source.as_str() {
                    "override" => LimitSource::Override,
                    "plan" => LimitSource::Plan,
                    "default" => LimitSource::Default,
                    other => return Err(bad(format!("limit source {other:?}"))),
                },
            },
        })
    }
}

impl Backend for RedisBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        let (name, args) = match op {
            Op::Acquire(a) => (
                "acquire",
                json!({
                    "stream": a.stream_id.as_str(),
                    "device": a.device_id.as_ref().map(Label::as_str),
                    "content": a.content_id.as_ref().map(Label::as_str),
                    "limit": a.limit.get(),
                    "ttl": a.ttl.as_micros().to_string(),
                    "on_limit": on_limit_name(a.on_limit),
                    "evict": a.evict.iter().map(StreamId::as_str).collect::<Vec<_>>(),
                    "enforce": a.enforce,
                }),
            ),
            Op::Release(s) => ("release", json!({ "stream": s.as_str() })),
            Op::RevokeAll { ttl } => ("revoke_all", json!({ "ttl": ttl.as_micros().to_string() })),
            Op::List { limit } => ("list", json!({ "limit": limit.get() })),
            Op::GetLimit { fallback, source } => {
                ("get_limit", json!({ "limit": fallback.get(), "source": source_name(source) }))
            }
            Op::SetOverride(l) => ("set_override", json!({ "limit": l.map(Limit::get) })),
        };
        Box::pin(async move { self.run(user, name, strip_nulls(args)).await?.reply() })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// Keys expire by themselves (PEXPIRE in the script).
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

/// cjson turns JSON `null` into a truthy sentinel; leave such keys out.
fn strip_nulls(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
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
