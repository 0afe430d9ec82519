//! WebSocket-held leases: a lease that lives exactly as long as a WebSocket
//! connection.
//!
//! The upgrade request goes through the edge like any request, and is
//! authenticated, admitted, validated and acquired by the very functions
//! the `PUT` uses; the `PUT`'s answer becomes the socket's first message
//! (`granted`, `refused`, `revoked` or `error`). While the socket is open,
//! the lease is renewed every ttl/3 as long as the client answers pings,
//! and closing the socket releases it. [`Sockets`] is this instance's
//! registry of socket-held leases: an acquire that evicts one of them, or a
//! revoke-all that revokes one, tells its socket at once, and a newer
//! socket for the same stream takes the lease over from an older one.
//!
//! Each socket's requests carry its holder token (`notice`), so that the
//! lease records which socket holds it. A socket never releases a lease it
//! no longer holds: not after an eviction or a revocation, and not after a
//! newer socket took it over, on this instance or any other, since its
//! release frees the lease only while its token is the lease's holder. A
//! loss decided on another instance reaches the socket as a notice.
//!
//! This module speaks the protocol: its subprotocols, close codes and
//! messages, which the API Gateway front (`gateway`) speaks too. `registry`
//! keeps which socket owns which lease; `connection` lives one socket's
//! life, from the upgrade to the close.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value};

use super::dto::{RevokedMessage, SocketMessage};
use super::problem::{ApiError, TYPE_BASE};

mod connection;
mod registry;

pub(super) use connection::open;
pub(super) use registry::Sockets;

/// The subprotocol streamcap speaks; the server chooses it whenever the
/// client offers it.
pub(super) const PROTOCOL: &str = "streamcap.v1";

/// A browser's credential: the subprotocol `streamcap.bearer.<token>`,
/// offered next to [`PROTOCOL`] and never chosen, so never echoed.
pub(super) const BEARER_PROTOCOL: &str = "streamcap.bearer.";

/// The close codes a socket ends with. A refusal closes with 4000 plus the
/// status the `PUT` would have answered.
mod close {
    /// The client ended the lease.
    pub(super) const NORMAL: u16 = 1000;
    /// The server is shutting down (or a browser left the page).
    pub(super) const GOING_AWAY: u16 = 1001;
    /// The client's close frame carried no code.
    pub(super) const NO_STATUS: u16 = 1005;
    /// No close frame: the connection dropped, or the server dropped a
    /// client that stopped answering. Never sent; recorded in metrics.
    pub(super) const ABNORMAL: u16 = 1006;
    /// `revoked`: the stream was evicted, revoked or replaced.
    pub(super) const REVOKED: u16 = 4410;
    /// A client's close code that is none of the above (for metrics).
    pub(super) const OTHER: u16 = 0;
}

/// The `Authorization` value a socket authenticates with: the header's, or
/// `Bearer <token>` from the one bearer subprotocol. Never both.
pub(super) fn credential(headers: &HeaderMap, bearers: Vec<String>) -> Result<Option<HeaderValue>, ApiError> {
    let header = headers.get(header::AUTHORIZATION);
    match (header, bearers.as_slice()) {
        (None, []) => Ok(None),
        (Some(value), []) => Ok(Some(value.clone())),
        // The token came in a header, so it is a valid header value.
        (None, [token]) => HeaderValue::try_from(format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| ApiError::Unauthorized("malformed bearer subprotocol".into())),
        (None, _) => Err(ApiError::BadRequest(format!("offer one {BEARER_PROTOCOL}<token> subprotocol, not several"))),
        (Some(_), _) => Err(ApiError::BadRequest(format!(
            "send the credential once: in the Authorization header or in a {BEARER_PROTOCOL}<token> subprotocol"
        ))),
    }
}

/// A refusal as the socket tells it: a message, then a close.
pub(super) struct Refusal {
    pub(super) message: String,
    code: u16,
    /// The close frame's reason: the problem's slug.
    reason: String,
}

/// The refusal that stands for a refusing answer of the `PUT`: 409 is
/// `refused`, 410 `revoked` and any other `error`, each closed with 4000
/// plus the status.
pub(super) async fn refusal(answer: Response) -> Refusal {
    let status = answer.status();
    let retry_after = answer.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut fields: Map<String, Value> = serde_json::from_str(&body_text(answer).await).unwrap_or_default();
    let code = 4000 + status.as_u16();
    let slug = match fields.remove("type") {
        Some(Value::String(uri)) => {
            let slug = uri.strip_prefix(TYPE_BASE).unwrap_or("").to_owned();
            fields.insert("problem_type".into(), Value::String(uri));
            slug
        }
        _ => String::new(),
    };
    if status == StatusCode::GONE {
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let revoked = RevokedMessage {
            reason: text(fields.remove("reason")).unwrap_or_else(|| "revoked".into()),
            by_stream_id: text(fields.remove("by_stream_id")),
        };
        return Refusal { message: message(&SocketMessage::Revoked(revoked)), code, reason: slug };
    }
    if let Some(seconds) = retry_after {
        fields.entry("retry_after_seconds").or_insert(Value::from(seconds));
    }
    let kind = if status == StatusCode::CONFLICT { "refused" } else { "error" };
    Refusal { message: tagged(kind, &Value::Object(fields).to_string()), code, reason: slug }
}

pub(super) async fn body_text(answer: Response) -> String {
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20).await.unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `{"type":"<kind>", ...}`: the JSON object `body` with `type` in front.
pub(super) fn tagged(kind: &str, body: &str) -> String {
    let rest = body.trim().strip_prefix('{').unwrap_or("}");
    let comma = if rest.trim_start().starts_with('}') { "" } else { "," };
    format!("{{\"type\":\"{kind}\"{comma}{rest}")
}

fn message(m: &SocketMessage<'_>) -> String {
    serde_json::to_string(m).expect("messages serialize")
}

#[cfg(test)]
mod tests {
    use super::tagged;

    #[test]
    fn tagged_puts_the_type_first() {
        assert_eq!(tagged("granted", r#"{"a":1}"#), r#"{"type":"granted","a":1}"#);
        assert_eq!(tagged("error", "{}"), r#"{"type":"error"}"#);
    }
}
