//! Writes that replicas acknowledge (`--redis-replica-acks N`).
//!
//! With N ≥ 1, the compare-and-set and a `WAIT N` go out pipelined, in one
//! round trip, to the primary that owns the user: a decision that wrote is
//! answered only once N replicas have applied the write, and otherwise,
//! after [`WAIT_MS`], with `Unavailable` (503). The write itself stays, so
//! the client's retry finds its lease and renews it, and that renewal's
//! own acknowledgement covers the first write too, since a replica applies
//! a primary's writes in order.
//!
//! `WAIT` holds the connection it runs on until the replicas answer or the
//! time is up. So these writes never use the multiplexed connection that
//! every read shares: they go round a small pool of connections of their
//! own, each carrying the writes given to it one after another. In a
//! cluster each pool entry is a cluster connection, which sends a pipeline
//! to the primary of its first keyed command (the script's keys); `WAIT`
//! has no key and rides along to that same primary, where it counts the
//! replicas of the write just made.
//!
//! A pool connection never sends a command twice: it has no retries, and
//! after a broken connection or a redirect it answers `Unavailable` and
//! finds the new primary for the next write. A repeated script call would
//! write nothing, and the `WAIT` after it would not cover the first copy.
//! This module decides nothing: it only writes on condition and counts
//! acknowledgements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{Cmd, ServerErrorKind, Value};

use super::{Conn, tls, unavailable};
use crate::store::{RedisMode, StoreError};

/// How long a write waits for its replicas, in ms. Replicas on one
/// network apply a write within a millisecond or two, and the primary asks
/// them at once when a client waits; a replica that has not answered in a
/// second is stalled or cut off, and the caller had better hear 503 than
/// wait on.
pub(super) const WAIT_MS: u64 = 1000;

/// Connections in the pool. Each carries its writes one after another,
/// one replication round trip apiece, so this many acknowledged writes
/// are in flight at once per instance.
const POOL: usize = 8;

/// The pool, and the acknowledgements each write needs.
pub(super) struct Acks {
    replicas: u32,
    pool: Box<[Conn]>,
    next: AtomicUsize,
}

impl Acks {
    /// Opens the pool's connections to `urls`, as the shared connection
    /// was opened but without retries.
    pub(super) async fn connect(
        urls: &[String],
        mode: RedisMode,
        trust: &tls::Trust,
        replicas: u32,
    ) -> Result<Acks, redis::RedisError> {
        // Long enough for a write that queued behind another one's WAIT.
        let timeout = Duration::from_millis(2 * WAIT_MS + 2000);
        let mut pool = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            let conn = match mode {
                RedisMode::Standalone => {
                    // `connect` checked that there is exactly one URL.
                    let client = trust.client(&urls[0])?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(2)))
                        .set_response_timeout(Some(timeout))
                        .set_number_of_retries(2);
                    Conn::Standalone(ConnectionManager::new_with_config(client, config).await?)
                }
                RedisMode::Cluster => {
                    let builder = ClusterClientBuilder::new(urls.to_vec())
                        .connection_timeout(Duration::from_secs(2))
                        .response_timeout(timeout)
                        .retries(0);
                    Conn::Cluster(trust.cluster(builder).build()?.get_async_connection().await?)
                }
            };
            pool.push(conn);
        }
        tracing::info!(
            replicas,
            wait_ms = WAIT_MS,
            connections = POOL,
            "redis writes wait for replica acknowledgements"
        );
        Ok(Acks { replicas, pool: pool.into(), next: AtomicUsize::new(0) })
    }

    /// Runs the compare-and-set `cmd` and then `WAIT`, loading `script`
    /// first where Redis has not got it. True when it wrote and enough
    /// replicas acknowledged; false when the user's state had changed (no
    /// write, nothing to wait for).
    pub(super) async fn compare_and_set(&self, cmd: Cmd, script: &redis::Script) -> Result<bool, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).cmd("WAIT").arg(self.replicas).arg(WAIT_MS).ignore_errors();
        let mut conn = self.pool[i].clone();
        let mut replies = query(&mut conn, &pipe).await?;
        if matches!(&replies[0], Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript)) {
            // The script did not run: sending the pair again cannot write twice.
            match &mut conn {
                Conn::Standalone(c) => script.load_async(c).await,
                Conn::Cluster(c) => script.load_async(c).await,
            }
            .map_err(unavailable)?;
            replies = query(&mut conn, &pipe).await?;
        }
        let wrote = match &replies[0] {
            Value::Int(1) => true,
            Value::Int(0) => false,
            other => return Err(StoreError::Unavailable(format!("invalid reply from the write script: {other:?}"))),
        };
        let acked = match &replies[1] {
            Value::Int(n) => *n,
            other => return Err(StoreError::Unavailable(format!("invalid reply to WAIT: {other:?}"))),
        };
        if wrote && acked < i64::from(self.replicas) {
            return Err(StoreError::Unavailable(format!(
                "redis: the write was acknowledged by {acked} of the {} replicas required within {WAIT_MS} ms",
                self.replicas
            )));
        }
        Ok(wrote)
    }
}

/// Sends `pipe` and returns its two replies, errors included as values.
async fn query(conn: &mut Conn, pipe: &redis::Pipeline) -> Result<Vec<Value>, StoreError> {
    let sent: Result<Vec<Value>, _> = match conn {
        Conn::Standalone(c) => pipe.query_async(c).await,
        Conn::Cluster(c) => pipe.query_async(c).await,
    };
    let replies = sent.map_err(unavailable)?;
    if replies.len() != 2 {
        return Err(StoreError::Unavailable(format!("redis: {} replies to a write and a WAIT", replies.len())));
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::RedisBackend;
    use super::super::harness::{RedisCluster, RedisServer};
    use crate::clock::ManualClock;
    use crate::limiter::{Acquire, Decision, Limit, Timestamp, UserId};
    use crate::store::{RedisMode, Store, conformance};

    const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    /// A primary with one replica that has synced.
    fn primary_and_replica() -> (RedisServer, RedisServer) {
        let primary = RedisServer::start(&[]);
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !replica.cli(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(std::time::Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (primary, replica)
    }

    async fn open(urls: Vec<String>, mode: RedisMode, clock: &ManualClock) -> Store {
        let backend = RedisBackend::open_acked_with_clock(&urls, mode, 1, Arc::new(clock.clone())).await.unwrap();
        Store::for_test(Box::new(backend))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_standalone_with_a_replica_acknowledging() {
        let (primary, _replica) = primary_and_replica();
        let clock = ManualClock::new(T0);
        conformance::suite(&open(vec![primary.url()], RedisMode::Standalone, &clock).await, &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_cluster_with_replicas_acknowledging() {
        let cluster = RedisCluster::start(3, 1);
        let clock = ManualClock::new(T0);
        conformance::suite(&open(cluster.urls(), RedisMode::Cluster, &clock).await, &clock).await;
    }

    /// Eight instances race 64 acquires for one user, with every write
    /// waiting for the replica: exactly the limit is granted, after the
    /// script was flushed from the primary (each pool connection loads it
    /// on `NOSCRIPT`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_racing_with_acks_grant_exactly_the_limit() {
        let (primary, replica) = primary_and_replica();
        assert!(primary.cli(&["SCRIPT", "FLUSH"]).contains("OK"));
        let mut instances = Vec::new();
        for _ in 0..8 {
            let backend = RedisBackend::open_acked(&[primary.url()], RedisMode::Standalone, &Default::default(), 1)
                .await
                .unwrap();
            instances.push(Store::for_test(Box::new(backend)));
        }
        let u = UserId::new("racer").unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let (store, u) = (instances[i % 8].clone(), u.clone());
            set.spawn(async move { store.acquire(&u, Acquire::for_test(&format!("s{i}"), 5)).await });
        }
        let (mut granted, mut unavailable) = (0, 0);
        while let Some(d) = set.join_next().await {
            match d.unwrap() {
                Ok(Decision::Granted(_)) => granted += 1,
                Ok(Decision::Denied(d)) => assert_eq!(d.live.len(), 5),
                Ok(d) => panic!("{d:?}"),
                Err(_) => unavailable += 1,
            }
        }
        eprintln!("8 instances with acks, 64 acquires: {unavailable} answered Unavailable");
        assert_eq!(granted, 5);
        for s in &instances {
            assert_eq!(s.list(&u, Limit::new(5).unwrap()).await.unwrap().1.len(), 5);
        }
        // The last write was acknowledged: the replica holds what the
        // primary holds.
        let key = ["GET", "sc:{racer}:s"];
        let stored = primary.cli(&key);
        assert!(stored.len() > 20, "{stored:?}");
        assert_eq!(replica.cli(&key), stored);
    }
}
