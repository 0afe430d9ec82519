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
