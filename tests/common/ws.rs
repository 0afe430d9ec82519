//! A WebSocket client for the socket routes: open, read the next message
//! (answering pings), expect a close, stop as a player does.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen at once. Far
/// longer than it takes, and far shorter than the renewal period of 60 s
/// leases, so that a message that arrives proves the server told the
/// socket rather than a renewal.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn socket(user: &str, stream: &str) -> String {
    format!("/v1/users/{user}/streams/{stream}/socket")
}

/// Opens a WebSocket with extra request headers; panics unless upgraded.
pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> (Ws, tungstenite::handshake::client::Response) {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        req.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
    }
    connect_async(req).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The next text message as JSON. Reading also answers the server's pings.
pub async fn next(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("no message within {WAIT:?}"),
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(text.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The next message, which must be of type `kind`.
pub async fn expect(ws: &mut Ws, kind: &str) -> Value {
    let m = next(ws).await;
    assert_eq!(m["type"], kind, "{m}");
    m
}

/// The code of the server's close frame, which must come next.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => return u16::from(frame.code),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A socket at `url` whose lease was granted, and its `granted` message.
pub async fn held_at(url: &str) -> (Ws, Value) {
    let (mut ws, _) = open_with(url, &[]).await;
    let granted = expect(&mut ws, "granted").await;
    (ws, granted)
}

/// Closes from the client side with 1000 and waits for the server's
/// answer, as a player that stops does.
pub async fn stop(mut ws: Ws) {
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() })).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
}

/// The stream ids of a list of leases.
pub fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|l| l["stream_id"].as_str().unwrap().to_owned()).collect()
}
