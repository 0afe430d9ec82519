//! Messages between the instances that share a Redis, over its pub/sub.
//!
//! Each instance listens on one channel, `sc:push:{<instance>}`. On a
//! cluster the channel is sharded (`SPUBLISH`, `SSUBSCRIBE`, Redis 7): its
//! messages travel only within the shard that owns the channel's slot, not
//! across the whole cluster as plain `PUBLISH` does; a standalone Redis,
//! and a cluster of Redis 6, which has no sharded channels, use `PUBLISH`
//! and `SUBSCRIBE`. Publishing goes through the store's own
//! connection. Listening takes a connection of its own, in RESP3, which
//! the client library subscribes again after every reconnection. Pub/sub
//! delivers at most once: a message published while the listener is
//! disconnected, or while the shard fails over, is lost.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use std::sync::atomic::Ordering;

use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Conn, RedisBackend, unavailable};
use crate::store::{RedisMode, StoreError, Subscription};

/// The channel of the instance `id`. The braces make the id the hash tag,
/// so a cluster keeps the channel on the shard that owns that slot.
fn channel(id: &str) -> String {
    format!("sc:push:{{{id}}}")
}

impl RedisBackend {
    /// Publishes `message` on the channel of the instance `to`; answers how
    /// many subscribers got it.
    pub(super) async fn publish_to(&self, to: &str, message: Vec<u8>) -> Result<u64, StoreError> {
        let sent = match self.conn.clone() {
            Conn::Standalone(mut c) => redis::cmd("PUBLISH").arg(channel(to)).arg(message).query_async(&mut c).await,
            Conn::Cluster(mut c) => {
                let publish = if self.unsharded.load(Ordering::Relaxed) { "PUBLISH" } else { "SPUBLISH" };
                redis::cmd(publish).arg(channel(to)).arg(message).query_async(&mut c).await
            }
        };
        sent.map_err(unavailable)
    }

    /// Subscribes to the channel of the instance `me` on a connection of its
    /// own, and hands over each message's payload.
    pub(super) async fn subscribe_to(&self, me: &str) -> Result<Subscription, StoreError> {
        let (pushes, mut incoming) = mpsc::unbounded_channel::<PushInfo>();
        let fail = |e: redis::RedisError| StoreError::Unavailable(format!("redis: cannot subscribe: {e}"));
        // Either connection stays open as long as the task below holds it.
        let keep: Box<dyn Send> = match self.mode {
            RedisMode::Standalone => {
                let client = self.trust.resp3_client(&self.urls[0]).map_err(fail)?;
                let config = ConnectionManagerConfig::new().set_push_sender(pushes).set_automatic_resubscription();
                let mut conn = ConnectionManager::new_with_config(client, config).await.map_err(fail)?;
                conn.subscribe(channel(me)).await.map_err(fail)?;
                Box::new(conn)
            }
            RedisMode::Cluster => {
                let builder = ClusterClientBuilder::new(self.urls.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(pushes);
                let client = self.trust.cluster(builder).build().map_err(fail)?;
                let mut conn = client.get_async_connection().await.map_err(fail)?;
                if let Err(e) = conn.ssubscribe(channel(me)).await {
                    // Redis 6 knows no sharded channels: it broadcasts.
                    if !e.to_string().contains("unknown command") {
                        return Err(fail(e));
                    }
                    self.unsharded.store(true, Ordering::Relaxed);
                    conn.subscribe(channel(me)).await.map_err(fail)?;
                }
                Box::new(conn)
            }
        };
        let (messages, subscription) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _connection = keep;
            while let Some(push) = incoming.recv().await {
                if let Some(payload) = payload(push)
                    && messages.send(payload).is_err()
                {
                    // Nobody listens any more: drop the connection.
                    return;
                }
            }
        });
        Ok(subscription)
    }
}

/// The payload of a pushed message; `None` for the other pushes
/// (subscription confirmations, disconnections).
fn payload(push: PushInfo) -> Option<Vec<u8>> {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return None;
    }
    match push.data.into_iter().nth(1)? {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}
