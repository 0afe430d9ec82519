//! Leases held by API Gateway WebSocket connections, as streamcap-lambda
//! serves them: the HTTP side of each step, so that a connection is
//! authenticated, validated and acquired by the very functions the `PUT`
//! and `serve`'s sockets use, and answered with the same messages.
//!
//! API Gateway keeps the connection; the function sees one event per
//! step and remembers nothing between them. [`admit`] runs once, in the
//! `$connect` route's authorizer, and turns the connect's credential and
//! query into a [`Ticket`]: the user, the stream and the validated acquire
//! fields, with the plan that applies already settled. API Gateway hands
//! the ticket back with every later event of the connection, and
//! [`start`], [`renew`] and [`release`] act on it with the connection's
//! holder token, for the TTL of the state's policy (streamcap-lambda gives
//! these steps a state whose `lease_ttl` is `socket_lease_ttl`). The
//! caller was admitted for exactly this ticket, so they act with a
//! service's rights, and the user's rate limit still applies.
//! Nothing here decides: every answer is the store's, through the rules.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::access::{Whose, authenticate};
use super::acquire::{acquire_request, acquired};
use super::dto::{RenewedMessage, SocketMessage, SocketQuery};
use super::problem::ApiError;
use super::socket::{self, BEARER_PROTOCOL, PROTOCOL};
use super::source::Source;
use crate::auth::{Caller, KeyScope};
use crate::limiter::{Acquire, Holder, StreamId, UserId};

/// A connection's admitted request: what its `$connect` asked for, once
/// authenticated and validated. It travels as JSON in the authorizer's
/// context, which API Gateway keeps and no client can see or change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub user: String,
    pub stream: String,
    /// The plan that applies, settled at the connect (a token's claim, or
    /// a service's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_kind: Option<String>,
    /// The take-over list, as the query gave it: for the first acquire only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evict: Option<String>,
}

/// What a client message is answered with.
#[derive(Debug, PartialEq)]
pub struct Reply {
    /// The message to post to the connection.
    pub message: String,
    /// Close the connection after it: the connection holds no lease.
    pub close: bool,
}

/// The subprotocol a `$connect` answers with: `streamcap.v1` when offered.
/// A 400 when subprotocols are offered without it, as on `serve`.
pub fn chosen_protocol(offered: Option<&str>) -> Result<Option<&'static str>, StatusCode> {
    let (protocols, _) = protocols(offered).map_err(|e| e.into_response().status())?;
    Ok(protocols.then_some(PROTOCOL))
}

/// Whether [`PROTOCOL`] was offered, and the bearer tokens offered.
fn protocols(offered: Option<&str>) -> Result<(bool, Vec<String>), ApiError> {
    let (mut any, mut speaks, mut bearers) = (false, false, Vec::new());
    for protocol in offered.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        if protocol == PROTOCOL {
            speaks = true;
        } else if let Some(token) = protocol.strip_prefix(BEARER_PROTOCOL) {
            bearers.push(token.to_owned());
        }
    }
    if any && !speaks {
        return Err(ApiError::BadRequest(format!(
            "the offered subprotocols do not include {PROTOCOL}; offer {PROTOCOL} \
             (with {BEARER_PROTOCOL}<token> to authenticate from a browser), or no subprotocol"
        )));
    }
    Ok((speaks, bearers))
}

/// Authenticates and validates a `$connect`, in the order of `serve`'s
/// socket routes: the credential (the `Authorization` header or one bearer
/// subprotocol), then the target (`stream`, and `user` unless the token's
/// own), then the acquire fields of the query, then the plan. The query
/// is the socket routes' ([`SocketQuery`]) plus `user` and `stream`. A
/// refusal is the status of the problem the `PUT` would answer (the
/// upgrade's refusal carries no more).
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    source: Option<IpAddr>,
    query: &HashMap<String, String>,
) -> Result<Ticket, StatusCode> {
    admitted(state, headers, source, query).map_err(|e| e.into_response().status())
}

fn admitted(
    state: &AppState,
    headers: &HeaderMap,
    source: Option<IpAddr>,
    query: &HashMap<String, String>,
) -> Result<Ticket, ApiError> {
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
    let (_, bearers) = protocols(offered)?;
    let credential = socket::credential(headers, bearers)?;
    let caller = authenticate(state, Source(source), credential.as_ref()).map_err(|e| match (e, &credential) {
        (ApiError::Unauthorized(_), None) => ApiError::Unauthorized(format!(
            "this socket needs a credential: an Authorization: Bearer header, or the subprotocols \
             {PROTOCOL}, {BEARER_PROTOCOL}<token>"
        )),
        (e, _) => e,
    })?;
    let mut rest = query.clone();
    let stream = rest.remove("stream").ok_or_else(|| {
        ApiError::BadRequest("the query names no stream: connect with ?stream=<stream id>[&user=<user id>]".into())
    })?;
    let stream = StreamId::new(&stream).map_err(|e| ApiError::BadRequest(format!("stream id {e}")))?;
    let whose = match rest.remove("user") {
        Some(user) => Whose::User(UserId::new(&user).map_err(|e| ApiError::BadRequest(format!("user id {e}")))?),
        None => Whose::Mine,
    };
    let fields = serde_json::to_value(&rest).expect("a map serializes");
    let query: SocketQuery = serde_json::from_value(fields).map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let ticket = Ticket {
        user: String::new(),
        stream: stream.as_str().to_owned(),
        plan: None,
        device_id: query.device_id.clone(),
        content_id: query.content_id.clone(),
        device_class: query.device_class.clone(),
        content_kind: query.content_kind.clone(),
        evict: query.evict.clone(),
    };
    let (user, req) = acquire_request(state, &caller, whose, stream, query.into_body())?;
    Ok(Ticket { user: user.as_str().to_owned(), plan: req.plan.map(|p| p.as_str().to_owned()), ..ticket })
}

/// The first acquire of a connection (its `start` message): `granted`, or
/// `refused`, `revoked` or `error` and a close.
pub async fn start(state: &AppState, ticket: &Ticket, holder: Holder) -> Reply {
    let (user, req) = match request(state, ticket, holder, true) {
        Ok(admitted) => admitted,
        Err(e) => return refused(e.into_response()).await,
    };
    let answer = acquired(state, user, req).await.unwrap_or_else(IntoResponse::into_response);
    if !answer.status().is_success() {
        return refused(answer).await;
    }
    Reply { message: socket::tagged("granted", &socket::body_text(answer).await), close: false }
}

/// A renewal (a `renew` message): `renewed`; an `error` without a close
/// when the store cannot answer (the client tries again); or `refused`,
/// `revoked` or `error` and a close.
pub async fn renew(state: &AppState, ticket: &Ticket, holder: Holder) -> Reply {
    let (user, req) = match request(state, ticket, holder, false) {
        Ok(admitted) => admitted,
        Err(e) => return refused(e.into_response()).await,
    };
    let answer = acquired(state, user, req).await.unwrap_or_else(IntoResponse::into_response);
    let status = answer.status();
    if status.is_success() {
        let lease: Value = serde_json::from_str(&socket::body_text(answer).await).unwrap_or_default();
        let renewed = RenewedMessage {
            expires_at: lease["expires_at"].as_str().unwrap_or_default().to_owned(),
            active_streams: lease["active_streams"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        };
        let message = serde_json::to_string(&SocketMessage::Renewed(renewed)).expect("messages serialize");
        return Reply { message, close: false };
    }
    let retry = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
    let Reply { message, close } = refused(answer).await;
    Reply { message, close: close && !retry }
}

/// Releases the connection's lease, if it still holds it (`$disconnect`);
/// the error is the status a `DELETE` would have answered.
pub async fn release(state: &AppState, ticket: &Ticket, holder: Holder) -> Result<(), StatusCode> {
    let (user, stream) = target(ticket).map_err(|e| e.into_response().status())?;
    state.store.release_held(&user, stream, holder).await.map_err(|e| ApiError::from(e).into_response().status())
}

/// The refusal message for a problem answer, as `serve`'s sockets word it.
pub async fn refused(answer: Response) -> Reply {
    Reply { message: socket::refusal(answer).await.message, close: true }
}

/// The `error` message for a message the connection should not have sent.
pub async fn bad_message(detail: String) -> Reply {
    let Reply { message, .. } = refused(ApiError::BadRequest(detail).into_response()).await;
    Reply { message, close: false }
}

fn target(ticket: &Ticket) -> Result<(UserId, StreamId), ApiError> {
    let bad = |e| ApiError::BadRequest(format!("the connection's ticket: {e}"));
    Ok((UserId::new(&ticket.user).map_err(bad)?, StreamId::new(&ticket.stream).map_err(bad)?))
}

/// The acquire a ticket stands for, held by `holder`. Only the first takes
/// over the streams the connect named.
fn request(state: &AppState, ticket: &Ticket, holder: Holder, first: bool) -> Result<(UserId, Acquire), ApiError> {
    let (user, stream) = target(ticket)?;
    let query = SocketQuery {
        device_id: ticket.device_id.clone(),
        content_id: ticket.content_id.clone(),
        device_class: ticket.device_class.clone(),
        content_kind: ticket.content_kind.clone(),
        plan: ticket.plan.clone(),
        evict: if first { ticket.evict.clone() } else { None },
    };
    // Admitted at the connect for this very user, stream and plan.
    let admitted = Caller::Service { name: "websocket-connection".into(), scope: KeyScope::Service };
    let (user, req) = acquire_request(state, &admitted, Whose::User(user), stream, query.into_body())?;
    Ok((user, Acquire { holder: Some(holder), ..req }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_chosen_when_offered_and_required_among_others() {
        assert_eq!(chosen_protocol(None).unwrap(), None);
        assert_eq!(chosen_protocol(Some("streamcap.v1, streamcap.bearer.abc")).unwrap(), Some(PROTOCOL));
        assert_eq!(chosen_protocol(Some("chat")).unwrap_err(), StatusCode::BAD_REQUEST);
        assert_eq!(protocols(Some("streamcap.v1,streamcap.bearer.t1")).unwrap(), (true, vec!["t1".to_owned()]));
    }
}
