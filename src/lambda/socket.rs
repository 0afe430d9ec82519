//! Leases held by API Gateway WebSocket connections: the events of a
//! WebSocket API, turned into the steps of `http::gateway`.
//!
//! - The `$connect` route's **authorizer** (a REQUEST authorizer that is
//!   this same function) authenticates and validates the connect, and
//!   allows it with the connection's ticket in its context, or with the
//!   status of the refusal, which `$connect` then answers.
//! - **`$connect`** answers 200 with the chosen subprotocol, or the
//!   refusal's status, which refuses the upgrade. It sends nothing: AWS
//!   advises against posting to a connection that is not yet open.
//! - **`$default`** takes the client's messages: `start` acquires and is
//!   answered `granted` (or `refused`, `revoked` or `error` and a close);
//!   `renew` renews and is answered `renewed` (or `revoked`, `refused` or
//!   `error` and a close).
//! - **`$disconnect`** releases the lease, but only while this connection
//!   holds it: its holder token is `apigw~<connection id in hex>`, so a
//!   connection that took the stream over, and a `revoked` one, are safe
//!   from an old connection's late `$disconnect`.
//!
//! Every answer is posted through the `@connections` API (`push`).

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::push::{Pusher, holder_of};
use crate::http::AppState;
use crate::http::gateway::{self, Reply, Ticket};
use crate::limiter::Holder;

/// The authorizer's context key that holds the connection's ticket.
const TICKET: &str = "streamcap";
/// The authorizer's context key that holds the status a refused connect
/// is answered with.
const REFUSAL: &str = "refusal";

/// What the WebSocket events need: the state of the router, whose
/// policy's `lease_ttl` is the TTL of connection-held leases, and the
/// pusher.
pub struct Gateway {
    pub state: AppState,
    pub pusher: Pusher,
}

/// Which kind of event an invocation carries.
pub enum Kind {
    /// A REQUEST authorizer's event (`type` and `methodArn`).
    Authorizer,
    /// A WebSocket API's event (`requestContext.eventType`).
    WebSocket,
    /// Anything else: an HTTP API event, for the router.
    Http,
}

/// Tells the events apart by the fields only their kind carries.
pub fn kind(event: &Value) -> Kind {
    if event["type"] == "REQUEST" && event["methodArn"].is_string() {
        return Kind::Authorizer;
    }
    match event["requestContext"]["eventType"].as_str() {
        Some("CONNECT" | "MESSAGE" | "DISCONNECT") => Kind::WebSocket,
        _ => Kind::Http,
    }
}

/// The fields of a WebSocket or authorizer event that streamcap reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(default)]
    method_arn: Option<String>,
    #[serde(default)]
    headers: Option<HashMap<String, String>>,
    #[serde(default)]
    query_string_parameters: Option<HashMap<String, String>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
    request_context: Context,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Context {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(default)]
    identity: Option<Identity>,
    /// The authorizer's context and `principalId`, flat.
    #[serde(default)]
    authorizer: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    #[serde(default)]
    source_ip: Option<String>,
}

impl Gateway {
    /// Answers an authorizer or WebSocket event; the posts it queued are
    /// sent before the answer is returned.
    pub async fn handle(&self, event: Value) -> Result<Value, String> {
        let event: Event = serde_json::from_value(event).map_err(|e| format!("not a WebSocket event: {e}"))?;
        let answer = match event.method_arn.clone() {
            Some(arn) => Ok(self.authorize(&event, &arn)),
            None => self.route(&event).await,
        };
        self.pusher.flush().await;
        answer
    }

    /// The authorizer: allows every connect, with its ticket or its
    /// refusal in the context, so that `$connect` can answer a refusal
    /// with the status the `PUT` would have.
    fn authorize(&self, event: &Event, arn: &str) -> Value {
        let headers = header_map(event.headers.as_ref());
        let source =
            event.request_context.identity.as_ref().and_then(|i| i.source_ip.as_deref()?.parse::<IpAddr>().ok());
        let query = event.query_string_parameters.clone().unwrap_or_default();
        let (principal, context) = match gateway::admit(&self.state, &headers, source, &query) {
            Ok(ticket) => {
                let text = serde_json::to_string(&ticket).expect("a ticket serializes");
                (ticket.user.clone(), json!({ TICKET: text }))
            }
            Err(refusal) => {
                let status = refusal.as_u16();
                tracing::debug!(status, "a WebSocket connect is refused");
                ("refused".to_owned(), json!({ REFUSAL: status }))
            }
        };
        json!({
            "principalId": principal,
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [{ "Action": "execute-api:Invoke", "Effect": "Allow", "Resource": arn }],
            },
            "context": context,
        })
    }

    async fn route(&self, event: &Event) -> Result<Value, String> {
        let context = &event.request_context;
        let connection = context.connection_id.as_deref().ok_or("a WebSocket event without a connectionId")?;
        let holder = holder_of(connection).ok_or("a connectionId too long for a holder token")?;
        let authorizer = context.authorizer.as_ref();
        let ticket = authorizer
            .and_then(|a| a.get(TICKET)?.as_str())
            .map(|t| serde_json::from_str::<Ticket>(t).map_err(|e| format!("the connection's ticket: {e}")))
            .transpose()?;
        match context.event_type.as_deref() {
            Some("CONNECT") => Ok(self.connect(event, authorizer, ticket.is_some()).await),
            Some("MESSAGE") => {
                let reply = match ticket {
                    Some(ticket) => self.message(event, &ticket, holder).await,
                    None => no_ticket(),
                };
                self.pusher.post(connection, reply.message, reply.close);
                Ok(json!({ "statusCode": 200 }))
            }
            Some("DISCONNECT") => {
                if let Some(ticket) = ticket
                    && let Err(status) = gateway::release(&self.state, &ticket, holder).await
                {
                    tracing::warn!(
                        status = status.as_u16(),
                        "releasing a connection's lease failed; it expires on its own"
                    );
                }
                Ok(json!({ "statusCode": 200 }))
            }
            other => Err(format!("an unknown WebSocket event type {other:?}")),
        }
    }

    /// `$connect`: 200 with the chosen subprotocol, or the refusal.
    async fn connect(&self, event: &Event, authorizer: Option<&Map<String, Value>>, admitted: bool) -> Value {
        if let Some(status) = authorizer.and_then(|a| a.get(REFUSAL)) {
            let status = status.as_u64().or_else(|| status.as_str()?.parse().ok()).unwrap_or(403);
            return json!({ "statusCode": status });
        }
        if !admitted {
            tracing::error!("{NO_TICKET}");
            return json!({ "statusCode": 500, "body": NO_TICKET });
        }
        let offered = event.headers.as_ref().and_then(|h| find(h, header::SEC_WEBSOCKET_PROTOCOL.as_str()));
        match gateway::chosen_protocol(offered) {
            Ok(Some(protocol)) => json!({ "statusCode": 200, "headers": { "Sec-WebSocket-Protocol": protocol } }),
            Ok(None) => json!({ "statusCode": 200 }),
            Err(refusal) => json!({ "statusCode": refusal.as_u16() }),
        }
    }

    /// A client message on `$default`.
    async fn message(&self, event: &Event, ticket: &Ticket, holder: Holder) -> Reply {
        let text = match (&event.body, event.is_base64_encoded) {
            (Some(body), false) => body.clone(),
            (Some(_), true) => return gateway::bad_message("send text messages, not binary ones".into()).await,
            (None, _) => String::new(),
        };
        let kind = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
        match kind.as_deref() {
            Some("start") => gateway::start(&self.state, ticket, holder).await,
            Some("renew") => gateway::renew(&self.state, ticket, holder).await,
            _ => {
                gateway::bad_message(
                    "a message is a JSON object whose type is \"start\" (once, first) or \"renew\"".into(),
                )
                .await
            }
        }
    }
}

/// Why an event without the authorizer's ticket is refused.
const NO_TICKET: &str = "the connection has no streamcap ticket: the $connect route needs the streamcap \
                         authorizer (see deploy/aws/template.yaml)";

/// The `error` that answers a message without a ticket.
fn no_ticket() -> Reply {
    tracing::error!("{NO_TICKET}");
    Reply { message: json!({ "type": "error", "status": 500, "detail": NO_TICKET }).to_string(), close: true }
}

/// A header of an event, whatever the case of its name.
fn find<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn header_map(headers: Option<&HashMap<String, String>>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.into_iter().flatten() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_told_apart() {
        assert!(matches!(kind(&json!({ "type": "REQUEST", "methodArn": "arn" })), Kind::Authorizer));
        assert!(matches!(kind(&json!({ "requestContext": { "eventType": "MESSAGE" } })), Kind::WebSocket));
        assert!(matches!(kind(&json!({ "version": "2.0", "requestContext": { "http": {} } })), Kind::Http));
    }
}
