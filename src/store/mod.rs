//! Where leases live. Callers see one concrete handle, [`Store`]; each
//! backend implements the crate-private `Backend` trait in its own file.
//!
//! A backend's one job is to run [`limiter::apply`](crate::limiter::apply)
//! atomically per user and keep what it returns. Backends never make
//! decisions of their own and never read policy: limits, TTLs and the
//! on-limit behaviour arrive resolved inside each [`Op`]. The one policy
//! fact a store keeps is a user's override, as data; the rules decide what
//! it means.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::limiter::{
    Acquire, Decision, Holder, Lease, Limit, LimitSource, Op, Override, Reply, StreamId, Timestamp, Tombstone, Ttl,
    UserId,
};
use crate::metrics;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
mod memory;
#[cfg(any(feature = "redis", feature = "dynamodb"))]
mod optimistic;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub use redis::tls::read_ca_file as read_redis_ca_file;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(test)]
mod conformance;

/// Every backend streamcap knows of, whether or not this binary includes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Sqlite,
    Redis,
    Dynamodb,
}

impl StoreKind {
    pub const ALL: [StoreKind; 4] = [Self::Memory, Self::Sqlite, Self::Redis, Self::Dynamodb];

    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Redis => "redis",
            Self::Dynamodb => "dynamodb",
        }
    }
}

/// How to reach Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
}

impl RedisMode {
    pub const ALL: [RedisMode; 2] = [Self::Standalone, Self::Cluster];

    pub fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }
}

/// What [`Store::open`] needs. Built by `config`. Its `Debug` hides any
/// password in the Redis URLs.
#[derive(Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Directory for the sqlite file and its lock (sqlite only).
    pub data_dir: PathBuf,
    /// One URL, or a cluster's seed nodes (redis only).
    pub redis_urls: Vec<String>,
    pub redis_mode: RedisMode,
    /// What `rediss://` URLs trust (redis only).
    pub redis_tls: RedisTls,
    /// Replicas that must acknowledge each write before a decision is
    /// answered, 0 for none (redis only; `--redis-replica-acks`).
    pub redis_replica_acks: u32,
    /// The DynamoDB table (dynamodb only).
    pub dynamodb_table: String,
    /// An endpoint URL instead of the region's, such as DynamoDB Local
    /// (dynamodb only).
    pub dynamodb_endpoint: Option<String>,
    /// How often expired leases are removed in the background.
    pub sweep_interval: Duration,
    /// How long one operation may take before it answers "unavailable".
    pub op_timeout: Duration,
}

impl StoreConfig {
    /// `kind` with its data in `data_dir` and the default timing (a sweep
    /// a minute, 5 s per operation); no Redis URL, the default table.
    pub fn new(kind: StoreKind, data_dir: PathBuf) -> Self {
        Self {
            kind,
            data_dir,
            redis_urls: Vec::new(),
            redis_mode: RedisMode::Standalone,
            redis_tls: RedisTls::default(),
            redis_replica_acks: 0,
            dynamodb_table: "streamcap".into(),
            dynamodb_endpoint: None,
            sweep_interval: Duration::from_secs(60),
            op_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("data_dir", &self.data_dir)
            .field("redis_urls", &self.redis_urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("redis_mode", &self.redis_mode)
            .field("redis_tls", &self.redis_tls)
            .field("redis_replica_acks", &self.redis_replica_acks)
            .field("dynamodb_table", &self.dynamodb_table)
            .field("dynamodb_endpoint", &self.dynamodb_endpoint)
            .field("sweep_interval", &self.sweep_interval)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// What TLS connections to Redis (`rediss://` URLs) trust. The default
/// trusts the system's roots only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificates (DER) to trust besides the system's roots, and the
    /// file they came from (`--redis-ca-file`).
    pub ca: Option<(PathBuf, Vec<Vec<u8>>)>,
    /// Accept any certificate from any server (`--redis-tls-insecure`).
    pub insecure: bool,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca.as_ref().map(|(path, _)| path))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// What [`Store::listing`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The effective limit.
    pub limit: Limit,
    /// The live leases, oldest first.
    pub live: Vec<Lease>,
    /// The live tombstones, in stream id order.
    pub tombstones: Vec<Tombstone>,
}

/// A backend could not be opened. The message is meant for an operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// Why [`Store::open`] failed, as one line for an operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenFailure {
    /// The configuration names a store that cannot work as it is, such as
    /// a DynamoDB table that does not exist or has the wrong key schema.
    /// Trying again will not help; `serve` exits 2, as for a bad setting.
    #[error("{0}")]
    Misconfigured(String),
    /// The store could not be reached, read or locked.
    #[error(transparent)]
    Failed(#[from] OpenError),
}

/// The store could not answer. Never a denial: denials are [`Decision`]s.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is down, overloaded, shutting down or failed to persist.
    /// The request may be retried. The string is for logs, not for clients.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A cheap-to-clone handle to the configured backend.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Box<dyn Backend>,
    op_timeout: Duration,
    stop_sweeper: watch::Sender<bool>,
}

impl Store {
    /// Opens the configured backend and starts its background sweeper.
    /// Must be called inside a tokio runtime.
    pub async fn open(config: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Store, OpenFailure> {
        let backend: Box<dyn Backend> = match config.kind {
            StoreKind::Memory => Box::new(memory::MemoryBackend::new(clock)),
            #[cfg(feature = "sqlite")]
            StoreKind::Sqlite => Box::new(sqlite::SqliteBackend::open(&config.data_dir, clock)?),
            // Redis reads its own clock (TIME), so that every instance agrees.
            #[cfg(feature = "redis")]
            StoreKind::Redis => {
                let (urls, mode, acks) = (&config.redis_urls, config.redis_mode, config.redis_replica_acks);
                Box::new(redis::RedisBackend::open_acked(urls, mode, &config.redis_tls, acks).await?)
            }
            // Region and credentials come from the standard AWS chain.
            #[cfg(feature = "dynamodb")]
            StoreKind::Dynamodb => return dynamodb::open(config, &dynamodb::Aws::StandardChain, clock).await,
            #[allow(unreachable_patterns)]
            kind => {
                return Err(OpenFailure::Misconfigured(format!(
                    "store `{}` is not built into this binary (built with: {})",
                    kind.name(),
                    built_in().join(", ")
                )));
            }
        };
        Ok(Store::start(backend, config))
    }

    /// The handle around an open backend; spawns its sweeper unless the
    /// backend expires state by itself.
    fn start(backend: Box<dyn Backend>, config: &StoreConfig) -> Store {
        let (stop_sweeper, stop) = watch::channel(false);
        let sweeps = !backend.expires_by_itself();
        let store = Store { inner: Arc::new(Inner { backend, op_timeout: config.op_timeout, stop_sweeper }) };
        if sweeps {
            tokio::spawn(sweeper(store.clone(), config.sweep_interval, stop));
        }
        store
    }

    /// Acquires or renews `req.stream_id` for `user`, atomically.
    pub async fn acquire(&self, user: &UserId, req: Acquire) -> Result<Decision, StoreError> {
        match self.execute(user, Op::Acquire(req)).await? {
            Reply::Decision(d) => {
                match &d {
                    Decision::Granted(g) => {
                        metrics::decision("granted", 1);
                        metrics::decision("evicted", g.evicted.len() as u64);
                        metrics::shadow(g.would_deny, g.would_evict.len());
                    }
                    Decision::Renewed(_) => metrics::decision("renewed", 1),
                    Decision::Denied(_) => metrics::decision("denied", 1),
                    Decision::Gone(_) => metrics::decision("gone", 1),
                    Decision::NotHeld => metrics::decision("not_held", 1),
                }
                Ok(d)
            }
            other => Err(mismatch(&other)),
        }
    }

    /// Releases the stream's lease, leaving no tombstone. Succeeds whether
    /// or not it existed.
    pub async fn release(&self, user: &UserId, stream: StreamId) -> Result<(), StoreError> {
        match self.execute(user, Op::Release(stream)).await? {
            Reply::Done => {
                metrics::decision("released", 1);
                Ok(())
            }
            other => Err(mismatch(&other)),
        }
    }

    /// Releases the stream's lease only if `holder` still holds it.
    /// Succeeds whether or not it did.
    pub async fn release_held(&self, user: &UserId, stream: StreamId, holder: Holder) -> Result<(), StoreError> {
        match self.execute(user, Op::ReleaseHeld { stream, holder }).await? {
            Reply::Done => {
                metrics::decision("released", 1);
                Ok(())
            }
            other => Err(mismatch(&other)),
        }
    }

    /// Revokes every live lease of `user`; returns them, oldest first.
    /// Each leaves a tombstone until its expiry plus `ttl`.
    pub async fn revoke_all(&self, user: &UserId, ttl: Ttl) -> Result<Vec<Lease>, StoreError> {
        match self.execute(user, Op::RevokeAll { ttl }).await? {
            Reply::Revoked(leases) => {
                metrics::decision("revoked", leases.len() as u64);
                Ok(leases)
            }
            other => Err(mismatch(&other)),
        }
    }

    /// Revokes the stream's live lease, if it has one, and returns it. It
    /// leaves a tombstone until its expiry plus `ttl`.
    pub async fn revoke(&self, user: &UserId, stream: StreamId, ttl: Ttl) -> Result<Option<Lease>, StoreError> {
        match self.execute(user, Op::Revoke { stream, ttl }).await? {
            Reply::Revoked(mut leases) => {
                metrics::decision("revoked", leases.len() as u64);
                Ok(leases.pop())
            }
            other => Err(mismatch(&other)),
        }
    }

    /// The user's live leases, oldest first, and the effective limit
    /// (`limit` unless the user has an override that counts).
    pub async fn list(&self, user: &UserId, limit: Limit) -> Result<(Limit, Vec<Lease>), StoreError> {
        self.listing(user, limit).await.map(|l| (l.limit, l.live))
    }

    /// [`Store::list`], with the user's live tombstones.
    pub async fn listing(&self, user: &UserId, limit: Limit) -> Result<Listing, StoreError> {
        match self.execute(user, Op::List { limit }).await? {
            Reply::Leases { limit, live, tombstones } => Ok(Listing { limit, live, tombstones }),
            other => Err(mismatch(&other)),
        }
    }

    /// The effective limit: the user's override while it counts, else
    /// `fallback` from `source`; and when that override ends, if it does.
    pub async fn limit(
        &self,
        user: &UserId,
        fallback: Limit,
        source: LimitSource,
    ) -> Result<(Limit, LimitSource, Option<Timestamp>), StoreError> {
        match self.execute(user, Op::GetLimit { fallback, source }).await? {
            Reply::Limit { limit, source, expires_at } => Ok((limit, source, expires_at)),
            other => Err(mismatch(&other)),
        }
    }

    /// Sets (`Some`) or clears (`None`) the user's override. Evicts nobody.
    pub async fn set_override(&self, user: &UserId, set: Option<Override>) -> Result<(), StoreError> {
        match self.execute(user, Op::SetOverride(set)).await? {
            Reply::Limit { .. } | Reply::Done => Ok(()),
            other => Err(mismatch(&other)),
        }
    }

    /// True when a background sweeper removes expired state; false for
    /// backends whose state expires by itself (Redis, DynamoDB).
    pub fn sweeps(&self) -> bool {
        !self.inner.backend.expires_by_itself()
    }

    /// Whose clock judges expiry: `"instance"` (this process's) or
    /// `"redis"` (the server's, the same for every instance).
    pub fn clock_owner(&self) -> &'static str {
        self.inner.backend.clock_owner()
    }

    /// True when this store carries messages between the instances that
    /// share it ([`Store::publish`], [`Store::subscribe`]).
    pub fn carries_messages(&self) -> bool {
        self.inner.backend.carries_messages()
    }

    /// Sends `message` to the instance named `to`; answers how many
    /// subscribers received it (0: nobody listens, or this store carries
    /// no messages). Delivery is best effort: a message can be lost.
    pub async fn publish(&self, to: &str, message: Vec<u8>) -> Result<u64, StoreError> {
        self.timed(self.inner.backend.publish(to, message)).await
    }

    /// The messages that other instances publish to `me` from now on, for
    /// as long as the receiver lives; `None` when this store carries no
    /// messages. The subscription survives reconnections, but what is
    /// published while it is down is lost.
    pub async fn subscribe(&self, me: &str) -> Result<Option<Subscription>, StoreError> {
        self.timed(self.inner.backend.subscribe(me)).await
    }

    /// Answers when the backend can serve requests.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed(self.inner.backend.ping()).await
    }

    /// Stops the sweeper and flushes the backend. Later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.stop_sweeper.send_replace(true);
        self.inner.backend.close().await
    }

    async fn execute(&self, user: &UserId, op: Op) -> Result<Reply, StoreError> {
        let name = match &op {
            Op::Acquire(_) => "acquire",
            Op::Release(_) | Op::ReleaseHeld { .. } => "release",
            Op::RevokeAll { .. } => "revoke_all",
            Op::Revoke { .. } => "revoke",
            Op::List { .. } => "list",
            Op::GetLimit { .. } => "get_limit",
            Op::SetOverride(_) => "set_override",
        };
        let started = std::time::Instant::now();
        let result = self.timed(self.inner.backend.execute(user, op)).await;
        metrics::store_operation(name, result.is_ok(), started.elapsed());
        result
    }

    async fn timed<T>(&self, fut: BoxFuture<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.inner.op_timeout))),
        }
    }
}

#[cfg(test)]
impl Store {
    /// A store around `backend` with no sweeper, for backend tests.
    fn for_test(backend: Box<dyn Backend>) -> Store {
        let (stop_sweeper, _) = watch::channel(false);
        Store { inner: Arc::new(Inner { backend, op_timeout: Duration::from_secs(30), stop_sweeper }) }
    }
}

/// The backends compiled into this binary.
pub fn built_in() -> Vec<&'static str> {
    let mut v = vec!["memory"];
    if cfg!(feature = "sqlite") {
        v.push("sqlite");
    }
    if cfg!(feature = "redis") {
        v.push("redis");
    }
    if cfg!(feature = "dynamodb") {
        v.push("dynamodb");
    }
    v
}

fn mismatch(reply: &Reply) -> StoreError {
    // A backend answered an op with the wrong kind of reply: a bug, but one
    // that must not take the process down.
    tracing::error!(?reply, "backend returned a reply of the wrong kind");
    StoreError::Unavailable("backend returned a reply of the wrong kind".into())
}

async fn sweeper(store: Store, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store.timed(store.inner.backend.sweep()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::decision("expired", n);
                tracing::debug!(removed = n, "swept expired leases");
            }
            Err(e) => tracing::warn!(error = %e, "sweeping expired leases failed"),
        }
        match store.timed(store.inner.backend.live_leases()).await {
            Ok(Some(n)) => metrics::live_leases(n),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "counting live leases failed"),
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The messages [`Store::subscribe`] hands out, in the order they came.
pub type Subscription = mpsc::UnboundedReceiver<Vec<u8>>;

/// The contract every backend fulfils. Crate-private: callers use [`Store`].
trait Backend: Send + Sync + 'static {
    /// Runs `op` for `user` as one atomic step: load the user's state, read
    /// the clock, call `limiter::apply`, persist its writes, answer. When
    /// this returns `Ok`, the writes are durable as far as the backend
    /// promises durability.
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>>;

    /// Removes expired leases (and tombstones) of all users; returns how
    /// many leases went. No decision depends on it having run.
    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The number of live leases, when the backend can count them cheaply.
    fn live_leases(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// True when the backend drops expired state by itself, so that
    /// `sweep` has nothing to do.
    fn expires_by_itself(&self) -> bool {
        false
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// See [`Store::clock_owner`].
    fn clock_owner(&self) -> &'static str {
        "instance"
    }

    /// See [`Store::carries_messages`].
    fn carries_messages(&self) -> bool {
        false
    }

    /// See [`Store::publish`].
    fn publish<'a>(&'a self, _to: &'a str, _message: Vec<u8>) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// See [`Store::subscribe`].
    fn subscribe<'a>(&'a self, _me: &'a str) -> BoxFuture<'a, Result<Option<Subscription>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// Flushes and releases resources. Idempotent.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
