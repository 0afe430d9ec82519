//! Posting to API Gateway WebSocket connections through the `@connections`
//! management API: each reply to a client message, and each `revoked`
//! that a decision owes a connection whose lease it evicted, revoked or
//! replaced (`http::push_to_gateway` hands those over).
//!
//! Posts are queued while an invocation runs and sent by [`Pusher::flush`]
//! before it answers: Lambda freezes an instance between invocations, so
//! nothing may be left running in the background. A `revoked` is followed
//! by `DeleteConnection`. A connection that is gone already (410
//! `GoneException`) has nothing left to tell, which is no error; any other
//! failure is logged, and the connection learns at its next renewal.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::timeout::TimeoutConfig;
use aws_sdk_apigatewaymanagement::primitives::Blob;

use crate::http::GATEWAY;
use crate::limiter::Holder;

/// The environment variable that holds the `@connections` endpoint, as the
/// template sets it: `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`.
pub const ENDPOINT: &str = "STREAMCAP_WEBSOCKET_ENDPOINT";

/// The longest one management API call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One message for one connection.
struct Post {
    connection: String,
    message: String,
    /// Delete the connection once the message is posted.
    close: bool,
}

/// The queue of posts of the running invocation, and the client that
/// sends them.
pub struct Pusher {
    /// `None` without an endpoint: nothing can be posted.
    client: Option<Client>,
    queue: Mutex<Vec<Post>>,
}

impl Pusher {
    /// A pusher for the endpoint in [`ENDPOINT`], with the region and
    /// credentials of the function (SigV4 signing by the SDK).
    pub async fn from_env() -> Pusher {
        let Some(endpoint) = std::env::var(ENDPOINT).ok().filter(|e| !e.is_empty()) else {
            return Pusher { client: None, queue: Mutex::new(Vec::new()) };
        };
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(&shared)
            .endpoint_url(endpoint)
            .timeout_config(TimeoutConfig::builder().operation_timeout(CALL_TIMEOUT).build())
            .build();
        Pusher { client: Some(Client::from_conf(config)), queue: Mutex::new(Vec::new()) }
    }

    /// Whether posts can be sent at all.
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    /// Queues `message` for `connection`, and its deletion after it when
    /// `close`.
    pub fn post(&self, connection: &str, message: String, close: bool) {
        let post = Post { connection: connection.to_owned(), message, close };
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(post);
    }

    /// Queues the `revoked` message of a lease that `holder`'s connection
    /// lost, and the connection's deletion.
    pub fn lost(&self, holder: &Holder, message: String) {
        if let Some(connection) = connection_of(holder) {
            self.post(&connection, message, true);
        }
    }

    /// Sends every queued post, in order.
    pub async fn flush(&self) {
        let posts = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        if posts.is_empty() {
            return;
        }
        let Some(client) = &self.client else {
            tracing::warn!(posts = posts.len(), "{ENDPOINT} is not set: messages to WebSocket connections are dropped");
            return;
        };
        for post in posts {
            let sent = client
                .post_to_connection()
                .connection_id(&post.connection)
                .data(Blob::new(post.message.into_bytes()))
                .send()
                .await;
            match sent {
                Ok(_) => {}
                Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => {
                    tracing::debug!(connection = %post.connection, "the connection is gone");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(connection = %post.connection, error = %e, "posting to a WebSocket connection failed");
                }
            }
            if post.close {
                let deleted = client.delete_connection().connection_id(&post.connection).send().await;
                if let Err(e) = deleted
                    && !e.as_service_error().is_some_and(|e| e.is_gone_exception())
                {
                    tracing::warn!(connection = %post.connection, error = %e, "deleting a WebSocket connection failed");
                }
            }
        }
    }
}

/// The holder token of a connection. Connection ids are base64-like, so
/// they are carried in hex, which the id alphabet holds.
pub fn holder_of(connection: &str) -> Option<Holder> {
    let hex: String = connection.bytes().map(|b| format!("{b:02x}")).collect();
    Holder::new(&format!("{GATEWAY}~{hex}")).ok()
}

/// The connection of a holder token that [`holder_of`] made.
pub fn connection_of(holder: &Holder) -> Option<String> {
    let hex = holder.as_str().strip_prefix(GATEWAY)?.strip_prefix('~')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect::<Option<_>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_id_round_trips_through_its_holder_token() {
        for id in ["L0SM9cOFvHcCIhw=", "GXLKJeHLIAMCL-A=", "a/b+c"] {
            let holder = holder_of(id).unwrap();
            assert!(holder.as_str().starts_with("apigw~"), "{holder:?}");
            assert_eq!(connection_of(&holder).as_deref(), Some(id));
        }
        assert_eq!(connection_of(&Holder::new("web-1~3").unwrap()), None);
        assert_eq!(connection_of(&Holder::new("apigw~abc").unwrap()), None);
    }
}
