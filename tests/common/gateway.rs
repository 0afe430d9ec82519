//! A small API Gateway WebSocket API, written for the tests: AWS's SAM CLI
//! has no WebSocket support. It is not AWS's code, and models only what
//! streamcap relies on.
//!
//! - `GET /{stage}` takes real WebSocket clients. A connect invokes the
//!   `$connect` route's REQUEST authorizer, then `$connect` with the
//!   authorizer's context, and upgrades only on a 200, with the
//!   subprotocol `$connect` answered; any other status refuses the
//!   upgrade with that status (an authorizer's `Deny` is a 403, its
//!   `Unauthorized` error a 401).
//! - Each text message invokes `$default`, one at a time per connection,
//!   and a close (or a dropped connection) invokes `$disconnect`, unless
//!   [`WebSocketApi::lose_disconnects`] says to lose them, as AWS, which
//!   delivers `$disconnect` best-effort, may.
//! - The events carry the documented fields: `requestContext.routeKey`,
//!   `eventType`, `connectionId`, `domainName`, `stage`, `apiId`,
//!   `requestId`, `requestTimeEpoch`, `connectedAt`, `identity.sourceIp`
//!   and `authorizer`; the connect's `headers` (with
//!   `Sec-WebSocket-Protocol`) and `queryStringParameters`; a message's
//!   `body` and `isBase64Encoded`.
//! - `POST /{stage}/@connections/{id}` sends its body to the connection,
//!   and `DELETE` closes it (then `$disconnect` is invoked, as AWS does);
//!   both answer 410 `GoneException` for a connection that is not open.
//!   Any SigV4 signature is accepted.
//!
//! It counts what AWS bills: invocations by route, messages each way, and
//! connection time.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// Invokes the function with an event: its answer, or its error's body.
pub type Invoke = Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<Value, Value>> + Send>> + Send + Sync>;

pub const API_ID: &str = "wsapi123";
pub const STAGE: &str = "prod";
const SOURCE_IP: &str = "192.0.2.9";

/// What AWS would bill, counted.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Invocations by route: `authorizer`, `$connect`, `$default`, `$disconnect`.
    pub invocations: HashMap<String, u64>,
    /// Messages from clients.
    pub messages_in: u64,
    /// Messages to clients (`@connections` posts).
    pub messages_out: u64,
    /// Connection time of the connections that closed.
    pub connected: Duration,
}

pub struct WebSocketApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    invoke: Invoke,
    addr: SocketAddr,
    open: Mutex<HashMap<String, mpsc::UnboundedSender<Out>>>,
    counts: Mutex<Counts>,
    lose_disconnects: AtomicBool,
    ids: AtomicU64,
}

enum Out {
    Text(String),
    Close,
}

impl WebSocketApi {
    pub async fn start(invoke: Invoke) -> WebSocketApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            invoke,
            addr,
            open: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            lose_disconnects: AtomicBool::new(false),
            ids: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/{stage}", get(connect))
            .route("/{stage}/@connections/{id}", post(post_to).delete(delete))
            .with_state(shared.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        WebSocketApi { addr, shared, server }
    }

    /// The `wss://` URL's stand-in: where clients connect.
    pub fn url(&self) -> String {
        format!("ws://{}/{STAGE}", self.addr)
    }

    /// The `@connections` endpoint, as `STREAMCAP_WEBSOCKET_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}/{STAGE}", self.addr)
    }

    /// From now on, closes invoke no `$disconnect`.
    pub fn lose_disconnects(&self, lose: bool) {
        self.shared.lose_disconnects.store(lose, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().unwrap().clone()
    }
}

impl Drop for WebSocketApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    async fn invoke(&self, route: &str, event: Value) -> Result<Value, Value> {
        *self.counts.lock().unwrap().invocations.entry(route.to_owned()).or_default() += 1;
        (self.invoke)(event).await
    }

    /// The `requestContext` of an event of `connection`.
    fn context(&self, route: &str, event_type: &str, connection: &str, connected_at: u64) -> Value {
        let now = now_ms();
        json!({
            "routeKey": route,
            "eventType": event_type,
            "connectionId": connection,
            "domainName": self.addr.to_string(),
            "stage": STAGE,
            "apiId": API_ID,
            "requestId": format!("req-{now}-{}", self.ids.fetch_add(1, Ordering::Relaxed)),
            "extendedRequestId": format!("ext-{now}"),
            "requestTime": "07/Dec/2026:12:00:00 +0000",
            "requestTimeEpoch": now,
            "connectedAt": connected_at,
            "messageDirection": "IN",
            "identity": { "sourceIp": SOURCE_IP, "userAgent": "streamcap-test" },
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A connect: the authorizer, then `$connect`, then the upgrade.
async fn connect(
    State(shared): State<Arc<Shared>>,
    Path(stage): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if stage != STAGE {
        return StatusCode::FORBIDDEN.into_response();
    }
    let n = shared.ids.fetch_add(1, Ordering::Relaxed);
    // Connection ids look like AWS's: base64, with `=` at the end.
    let connection = format!("Zk9v{n:08}cGxhe=");
    let connected_at = now_ms();
    let mut header_fields = Map::new();
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            header_fields.insert(canonical(name.as_str()), Value::from(value));
        }
    }
    let query_fields = if query.is_empty() { Value::Null } else { json!(query) };
    let context = shared.context("$connect", "CONNECT", &connection, connected_at);
    let authorizer_event = json!({
        "type": "REQUEST",
        "methodArn": format!("arn:aws:execute-api:us-east-1:123456789012:{API_ID}/{STAGE}/$connect"),
        "headers": header_fields,
        "queryStringParameters": query_fields,
        "stageVariables": {},
        "requestContext": context,
    });
    let authorizer = match shared.invoke("authorizer", authorizer_event).await {
        Ok(policy) => policy,
        Err(e) if e["errorMessage"] == "Unauthorized" => return StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let allowed = authorizer["policyDocument"]["Statement"]
        .as_array()
        .is_some_and(|s| s.iter().all(|s| s["Effect"] == "Allow") && !s.is_empty());
    if !allowed {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut granted = authorizer["context"].as_object().cloned().unwrap_or_default();
    granted.insert("principalId".into(), authorizer["principalId"].clone());
    let granted = Value::Object(granted);
    let mut context = shared.context("$connect", "CONNECT", &connection, connected_at);
    context["authorizer"] = granted.clone();
    let event = json!({
        "headers": header_fields,
        "multiValueHeaders": header_fields.iter().map(|(k, v)| (k.clone(), json!([v]))).collect::<Map<_, _>>(),
        "queryStringParameters": query_fields,
        "requestContext": context,
        "isBase64Encoded": false,
    });
    let answer = match shared.invoke("$connect", event).await {
        Ok(answer) => answer,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let status = answer["statusCode"].as_u64().unwrap_or(200) as u16;
    if status != 200 {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, answer["body"].as_str().unwrap_or("").to_owned()).into_response();
    }
    let protocol = answer["headers"]["Sec-WebSocket-Protocol"].as_str().map(str::to_owned);
    let upgrade = match protocol {
        Some(p) => upgrade.protocols([p]),
        None => upgrade,
    };
    upgrade.on_upgrade(move |ws| run(shared, ws, connection, connected_at, granted))
}

/// `Sec-WebSocket-Protocol` for `sec-websocket-protocol`: API Gateway
/// passes header names as the client wrote them.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
        .replace("Websocket", "WebSocket")
}

/// An open connection: messages in become `$default` invocations, posts
/// go out, and the end is a `$disconnect`.
async fn run(shared: Arc<Shared>, mut ws: WebSocket, connection: String, connected_at: u64, authorizer: Value) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.open.lock().unwrap().insert(connection.clone(), tx);
    let opened = Instant::now();
    let (status, reason) = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break (1006, "Going away");
                    }
                }
                Some(Out::Close) | None => {
                    let frame = CloseFrame { code: 1000, reason: "".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    break (1000, "Connection deleted");
                }
            },
            read = ws.recv() => match read {
                Some(Ok(Message::Text(text))) => {
                    shared.counts.lock().unwrap().messages_in += 1;
                    let mut context = shared.context("$default", "MESSAGE", &connection, connected_at);
                    context["authorizer"] = authorizer.clone();
                    context["messageId"] = json!(format!("msg-{}", shared.ids.fetch_add(1, Ordering::Relaxed)));
                    let event = json!({ "requestContext": context, "body": text.as_str(), "isBase64Encoded": false });
                    let _ = shared.invoke("$default", event).await;
                }
                Some(Ok(Message::Binary(bytes))) => {
                    shared.counts.lock().unwrap().messages_in += 1;
                    use base64::Engine;
                    let mut context = shared.context("$default", "MESSAGE", &connection, connected_at);
                    context["authorizer"] = authorizer.clone();
                    let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    let event = json!({ "requestContext": context, "body": body, "isBase64Encoded": true });
                    let _ = shared.invoke("$default", event).await;
                }
                Some(Ok(Message::Close(_))) => break (1000, "Client closed"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break (1006, "Going away"),
            },
        }
    };
    shared.open.lock().unwrap().remove(&connection);
    shared.counts.lock().unwrap().connected += opened.elapsed();
    if shared.lose_disconnects.load(Ordering::Relaxed) {
        return;
    }
    let mut context = shared.context("$disconnect", "DISCONNECT", &connection, connected_at);
    context["authorizer"] = authorizer;
    context["disconnectStatusCode"] = json!(status);
    context["disconnectReason"] = json!(reason);
    let event =
        json!({ "headers": { "Host": shared.addr.to_string() }, "requestContext": context, "isBase64Encoded": false });
    let _ = shared.invoke("$disconnect", event).await;
}

/// `POST @connections/{id}`: 200, or 410 `GoneException`.
async fn post_to(State(shared): State<Arc<Shared>>, Path((_, id)): Path<(String, String)>, body: Bytes) -> Response {
    let sent = shared
        .open
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|tx| tx.send(Out::Text(String::from_utf8_lossy(&body).into_owned())).is_ok());
    if !sent {
        return gone();
    }
    shared.counts.lock().unwrap().messages_out += 1;
    StatusCode::OK.into_response()
}

/// `DELETE @connections/{id}`: 204, or 410 `GoneException`.
async fn delete(State(shared): State<Arc<Shared>>, Path((_, id)): Path<(String, String)>) -> Response {
    match shared.open.lock().unwrap().get(&id).is_some_and(|tx| tx.send(Out::Close).is_ok()) {
        true => StatusCode::NO_CONTENT.into_response(),
        false => gone(),
    }
}

fn gone() -> Response {
    (
        StatusCode::GONE,
        [("x-amzn-errortype", "GoneException"), ("content-type", "application/json")],
        r#"{"message":null}"#,
    )
        .into_response()
}
