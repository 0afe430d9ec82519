//! WebSocket-held leases end to end, over real sockets, against every
//! store: the first message, refusals and their close codes, evictions and
//! revocations told at once, releases on close and on a dropped
//! connection, renewals, silent clients, shutdown, authentication, the
//! metrics, and two instances on one Redis.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::ws::{WAIT, Ws, close_code, expect, held_at, ids, next, open_with, socket, stop};
use common::{Bucket, Reply, STORES, Server};
use futures_util::SinkExt;
use serde_json::{Value, json};
use streamcap::auth::Authenticator;
use streamcap::clock::ManualClock;
use streamcap::limiter::{Limit, OnLimit, Timestamp, Ttl, UserId};
use streamcap::policy::{OnStoreError, Policy, Protection};
use streamcap::store::StoreKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, connect_async};

fn policy(limit: u32, ttl: u32) -> Policy {
    Policy::uniform(Limit::new(limit).unwrap(), Ttl::from_secs(ttl).unwrap())
}

fn socket_with(user: &str, stream: &str, query: &str) -> String {
    format!("/v1/users/{user}/streams/{stream}/socket?{query}")
}

async fn open(s: &Server, path: &str) -> Ws {
    open_with(&s.ws_url(path), &[]).await.0
}

/// A socket whose lease was granted, and its `granted` message.
async fn held(s: &Server, path: &str) -> (Ws, Value) {
    held_at(&s.ws_url(path)).await
}

async fn live(s: &Server, user: &str) -> Vec<String> {
    ids(&s.get(&format!("/v1/users/{user}/streams")).await.json()["active_streams"])
}

/// Waits until `check` holds, polling; panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_socket_is_granted_with_the_put_fields() {
    for kind in STORES {
        let s = Server::start(kind, 3, 60).await;
        let (mut ws, granted) = held(&s, &socket_with("alice", "tv", "device_id=tv-1&content_id=movie-9")).await;
        let put = s.put("/v1/users/alice/streams/phone", Some(json!({"device_id": "p", "content_id": "c"}))).await;
        assert_eq!(put.status, 201, "{kind:?}");
        // Exactly the fields of a 201, and the same values but the times.
        let mut fields: Vec<_> = granted.as_object().unwrap().keys().filter(|k| *k != "type").cloned().collect();
        let mut expected: Vec<_> = put.json().as_object().unwrap().keys().cloned().collect();
        fields.sort();
        expected.sort();
        assert_eq!(fields, expected, "{kind:?} {granted}");
        assert_eq!(granted["user_id"], "alice");
        assert_eq!(granted["stream_id"], "tv");
        assert_eq!(granted["device_id"], "tv-1");
        assert_eq!(granted["content_id"], "movie-9");
        assert_eq!(granted["ttl_seconds"], 60);
        assert_eq!(granted["active_streams"], 1);
        assert_eq!(granted["limit"], 3);
        assert_eq!(granted["enforced"], true);
        assert!(granted["expires_at"].as_str().unwrap() > granted["started_at"].as_str().unwrap());
        assert_eq!(live(&s, "alice").await, ["tv", "phone"]);

        // A socket for a stream that holds a live lease renews it: the
        // first message is `granted` with the lease's own start.
        let mut again = open(&s, &socket("alice", "phone")).await;
        let renewed = expect(&mut again, "granted").await;
        assert_eq!(renewed["started_at"], put.json()["started_at"], "{kind:?}");
        assert_eq!(renewed["device_id"], "p");
        assert_eq!(renewed["active_streams"], 2);

        // Text from the client is ignored.
        ws.send(Message::text("hello")).await.unwrap();
        stop(ws).await;
        stop(again).await;
        assert!(live(&s, "alice").await.is_empty(), "{kind:?}");
    }
}

#[tokio::test]
async fn the_socket_over_the_limit_is_refused_with_the_409_fields_and_4409() {
    for kind in STORES {
        let s = Server::start(kind, 3, 60).await;
        let mut held_open = Vec::new();
        for stream in ["tv", "phone", "tablet"] {
            held_open.push(held(&s, &socket("alice", stream)).await.0);
        }
        let mut ws = open(&s, &socket_with("alice", "laptop", "device_id=mac")).await;
        let refused = expect(&mut ws, "refused").await;
        assert_eq!(close_code(&mut ws).await, 4409, "{kind:?}");
        let put = s.put("/v1/users/alice/streams/laptop", None).await.assert_problem(409, "stream-limit-reached");
        assert_eq!(refused["problem_type"], put["type"]);
        for field in ["title", "status", "detail", "limit", "active_streams"] {
            assert_eq!(refused[field], put[field], "{kind:?} {field}");
        }
        assert_eq!(refused["status"], 409);
        assert_eq!(refused["limit"], 3);
        assert_eq!(ids(&refused["active_streams"]), ["tv", "phone", "tablet"]);
        assert_eq!(live(&s, "alice").await, ["tv", "phone", "tablet"], "{kind:?}: the refused socket holds nothing");
    }
}

#[tokio::test]
async fn evictions_and_revocations_reach_the_socket_at_once() {
    for kind in STORES {
        // A take-over PUT.
        let s = Server::start(kind, 2, 60).await;
        let (mut tv, _) = held(&s, &socket("alice", "tv")).await;
        assert_eq!(s.put("/v1/users/alice/streams/phone", None).await.status, 201);
        let r = s.put("/v1/users/alice/streams/laptop", Some(json!({"evict": ["tv"]}))).await;
        assert_eq!(r.status, 201, "{kind:?} {r:?}");
        let revoked = expect(&mut tv, "revoked").await;
        assert_eq!(revoked, json!({"type": "revoked", "reason": "evicted_by_new_stream", "by_stream_id": "laptop"}));
        assert_eq!(close_code(&mut tv).await, 4410, "{kind:?}");
        // The socket left its tombstone alone: the stream stays stopped,
        // and a socket for it is told so at once.
        s.put("/v1/users/alice/streams/tv", None).await.assert_problem(410, "stream-revoked");
        let mut again = open(&s, &socket("alice", "tv")).await;
        let gone = expect(&mut again, "revoked").await;
        assert_eq!(gone, json!({"type": "revoked", "reason": "evicted_by_new_stream", "by_stream_id": "laptop"}));
        assert_eq!(close_code(&mut again).await, 4410);

        // An evict-oldest acquire, from a socket.
        let oldest = Policy { on_limit: OnLimit::EvictOldest, ..policy(2, 60) };
        let s = Server::with_policy(kind, oldest).await;
        let (mut tv, _) = held(&s, &socket("bob", "tv")).await;
        assert_eq!(s.put("/v1/users/bob/streams/phone", None).await.status, 201);
        let (_laptop, granted) = held(&s, &socket("bob", "laptop")).await;
        assert_eq!(ids(&granted["evicted"]), ["tv"], "{kind:?} {granted}");
        let revoked = expect(&mut tv, "revoked").await;
        assert_eq!(revoked, json!({"type": "revoked", "reason": "evicted_by_new_stream", "by_stream_id": "laptop"}));
        assert_eq!(close_code(&mut tv).await, 4410);

        // A revoke-all.
        let (mut phone, _) = held(&s, &socket("carol", "phone")).await;
        assert_eq!(s.delete("/v1/users/carol/streams").await.json(), json!({"revoked": ["phone"]}));
        assert_eq!(
            expect(&mut phone, "revoked").await,
            json!({"type": "revoked", "reason": "revoked", "by_stream_id": null})
        );
        assert_eq!(close_code(&mut phone).await, 4410, "{kind:?}");
    }
}

#[tokio::test]
async fn a_newer_socket_for_the_same_stream_takes_the_lease_over() {
    for kind in STORES {
        let s = Server::start(kind, 2, 60).await;
        let (mut older, first) = held(&s, &socket("alice", "tv")).await;
        let (newer, second) = held(&s, &socket("alice", "tv")).await;
        assert_eq!(second["started_at"], first["started_at"], "{kind:?}: the newer socket renewed the lease");
        let replaced = expect(&mut older, "revoked").await;
        assert_eq!(replaced, json!({"type": "revoked", "reason": "replaced", "by_stream_id": "tv"}));
        assert_eq!(close_code(&mut older).await, 4410);
        // The older socket did not release the lease it lost.
        assert_eq!(live(&s, "alice").await, ["tv"], "{kind:?}");
        stop(newer).await;
        assert!(live(&s, "alice").await.is_empty(), "{kind:?}");
    }
}

#[tokio::test]
async fn closing_the_socket_frees_the_seat_at_once() {
    for kind in STORES {
        let s = Server::start(kind, 1, 60).await;
        let (ws, _) = held(&s, &socket("alice", "tv")).await;
        s.put("/v1/users/alice/streams/phone", None).await.assert_problem(409, "stream-limit-reached");
        stop(ws).await;
        // The close completed after the release, so the seat is free now.
        let r = s.put("/v1/users/alice/streams/phone", None).await;
        assert_eq!(r.status, 201, "{kind:?} {r:?}");
        // A release leaves no tombstone: the stream may start again.
        assert_eq!(s.delete("/v1/users/alice/streams/phone").await.status, 204);
        let (_ws, _) = held(&s, &socket("alice", "tv")).await;
    }
}

#[tokio::test]
async fn a_dropped_connection_frees_the_seat() {
    for kind in STORES {
        let s = Server::start(kind, 2, 60).await;
        let (reset, _) = held(&s, &socket("alice", "tv")).await;
        let (closed, _) = held(&s, &socket("alice", "phone")).await;
        // One connection is reset (RST), the other closed (FIN), neither
        // with a close frame.
        match reset.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp.set_zero_linger().unwrap(),
            _ => unreachable!("plain TCP"),
        }
        drop(reset);
        drop(closed);
        // Well before the 60 s leases could expire.
        eventually(WAIT, "both seats free", || async { live(&s, "alice").await.is_empty() }).await;
        assert_eq!(s.put("/v1/users/alice/streams/laptop", None).await.status, 201, "{kind:?}");
    }
}

#[tokio::test]
async fn the_server_renews_while_the_client_answers() {
    for kind in STORES {
        let s = Server::start(kind, 3, 3).await;
        let (mut ws, granted) = held(&s, &socket("alice", "tv")).await;
        // Reading answers the pings; a renewal comes every second.
        let renewed = expect(&mut ws, "renewed").await;
        assert_eq!(renewed.as_object().unwrap().len(), 3, "{renewed}");
        assert_eq!(renewed["active_streams"], 1);
        let expires = renewed["expires_at"].as_str().unwrap();
        assert!(expires > granted["expires_at"].as_str().unwrap(), "{kind:?}: {renewed} after {granted}");
        let listed = s.get("/v1/users/alice/streams").await.json();
        let listed = listed["active_streams"][0]["expires_at"].as_str().unwrap().to_owned();
        assert!(listed.as_str() >= expires, "{kind:?}: the store holds {listed}, the socket said {expires}");
        // Still held after several TTLs of renewals.
        for _ in 0..4 {
            expect(&mut ws, "renewed").await;
        }
        assert_eq!(live(&s, "alice").await, ["tv"], "{kind:?}");
    }
}

/// A WebSocket client written out by hand, so that it can stop answering
/// pings while still reading what the server sends.
struct RawClient {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

/// A frame from the server (never masked): its opcode and payload.
type Frame = (u8, Vec<u8>);

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

impl RawClient {
    async fn connect(s: &Server, path: &str) -> RawClient {
        let addr = s.base.trim_start_matches("http://");
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient { tcp, buffer: Vec::new() };
        loop {
            if let Some(end) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.buffer[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                client.buffer.drain(..end + 4);
                return client;
            }
            assert!(client.fill().await, "closed during the handshake");
        }
    }

    /// Reads more bytes; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(30), self.tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("the server neither sent nor closed for 30 s"),
        }
    }

    /// The next frame, or `None` when the connection ends.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buffer.len() >= 2 {
                let b = &self.buffer;
                let (len, head) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                    126 => (usize::MAX, 4),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && b.len() >= head + len {
                    let frame = (b[0] & 0x0f, b[head..head + len].to_vec());
                    self.buffer.drain(..head + len);
                    return Some(frame);
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Answers a ping, masked as a client must.
    async fn pong(&mut self, payload: &[u8]) {
        let mut frame = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload); // a zero mask leaves it as is
        self.tcp.write_all(&frame).await.unwrap();
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_is_dropped_and_its_lease_expires() {
    for kind in STORES {
        // On a manual clock, a lease that was not released stays live
        // until the test moves the clock; Redis reads its own clock. The
        // clock is far ahead of the real one, which DynamoDB's TTL reads:
        // the lease must not vanish while the test waits for the drop.
        let clock = ManualClock::new(Timestamp::from_millis(4_102_444_800_000));
        let s = Server::with_clock(
            kind,
            policy(3, 3),
            Authenticator::none(),
            Protection::unlimited(),
            Arc::new(clock.clone()),
        )
        .await;
        let mut raw = RawClient::connect(&s, &socket("alice", "tv")).await;
        // Answer pings until the first renewal.
        loop {
            let (op, payload) = raw.frame().await.expect("the socket stays open while answering");
            match op {
                PING => raw.pong(&payload).await,
                TEXT if String::from_utf8_lossy(&payload).contains("\"renewed\"") => break,
                TEXT => assert!(String::from_utf8_lossy(&payload).contains("\"granted\"")),
                other => panic!("{kind:?}: unexpected opcode {other}"),
            }
        }
        // Then stay silent, reading on until the server hangs up.
        let mut after = Vec::new();
        while let Some((op, _)) = raw.frame().await {
            after.push(op);
        }
        assert!(!after.contains(&CLOSE), "{kind:?}: a dropped client gets no close frame: {after:?}");
        assert!(after.iter().all(|op| *op == PING), "{kind:?}: only pings while silent: {after:?}");
        if kind == StoreKind::Redis {
            // Redis's own clock runs: the lease expires by itself.
            eventually(WAIT, "the lease expired", || async { live(&s, "alice").await.is_empty() }).await;
        } else {
            // Not released: the lease is live until its expiry...
            assert_eq!(live(&s, "alice").await, ["tv"], "{kind:?}");
            // ...and expires as any lease does.
            clock.advance_ms(3_001);
            assert!(live(&s, "alice").await.is_empty(), "{kind:?}");
        }
    }
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_after_releasing_its_lease() {
    for kind in STORES {
        let mut s = Server::start(kind, 3, 60).await;
        let (mut tv, _) = held(&s, &socket("alice", "tv")).await;
        let (mut phone, _) = held(&s, &socket("alice", "phone")).await;
        // Read while the server shuts down, as a player would.
        let readers = [
            tokio::spawn(async move { close_code(&mut tv).await }),
            tokio::spawn(async move { close_code(&mut phone).await }),
        ];
        s.shut_down().await;
        // serve returned: every lease is released already.
        let alice = UserId::new("alice").unwrap();
        let (_, leases) = s.store.list(&alice, Limit::new(3).unwrap()).await.unwrap();
        assert!(leases.is_empty(), "{kind:?}: {leases:?}");
        for reader in readers {
            assert_eq!(reader.await.unwrap(), 1001, "{kind:?}");
        }
    }
}

#[tokio::test]
async fn a_connect_is_refused_as_the_put_would_be() {
    // Bad input, as a PUT would get a 400.
    let s = Server::start(StoreKind::Memory, 3, 60).await;
    for (path, detail) in [
        ("/v1/users/alice/streams/tv%201/socket", "stream_id"),
        ("/v1/users/alice/streams/tv/socket?evict=a,b%20c", "evict"),
        ("/v1/users/alice/streams/tv/socket?evict=a,,b", "evict"),
        ("/v1/users/alice/streams/tv/socket?access_token=x", "access_token"),
        ("/v1/users/alice/streams/tv/socket?plan=gold", "plan"),
    ] {
        let mut ws = open(&s, path).await;
        let error = expect(&mut ws, "error").await;
        assert_eq!(error["status"], 400, "{path}: {error}");
        assert_eq!(error["problem_type"], "https://streamcap.dev/problems/invalid-request");
        assert!(error["detail"].as_str().unwrap().contains(detail), "{path}: {error}");
        assert_eq!(close_code(&mut ws).await, 4400, "{path}");
    }
    // A take-over from a socket, its list comma-separated.
    let (mut tv, _) = held(&s, &socket("alice", "tv")).await;
    let (_phone, _) = held(&s, &socket("alice", "phone")).await;
    let (_tablet, _) = held(&s, &socket("alice", "tablet")).await;
    let (_laptop, granted) = held(&s, &socket_with("alice", "laptop", "evict=tv,phone")).await;
    assert_eq!(ids(&granted["evicted"]), ["tv", "phone"]);
    assert_eq!(expect(&mut tv, "revoked").await["by_stream_id"], "laptop");

    // A store that does not answer (a closed SQLite store answers
    // nothing): 4503, with when to retry...
    let s = Server::start(StoreKind::Sqlite, 3, 60).await;
    s.store.close().await.unwrap();
    let mut ws = open(&s, &socket("alice", "tv")).await;
    let error = expect(&mut ws, "error").await;
    assert_eq!((error["status"].clone(), error["retry_after_seconds"].clone()), (json!(503), json!(1)), "{error}");
    assert_eq!(error["problem_type"], "https://streamcap.dev/problems/store-unavailable");
    assert_eq!(close_code(&mut ws).await, 4503);
    // ...or, failing open, a degraded grant, as the PUT's.
    let allow = Policy { on_store_error: OnStoreError::Allow, ..policy(3, 60) };
    let s = Server::with_policy(StoreKind::Sqlite, allow).await;
    s.store.close().await.unwrap();
    let (ws, granted) = held(&s, &socket("alice", "tv")).await;
    assert_eq!((granted["degraded"].clone(), granted["active_streams"].clone()), (json!(true), Value::Null));
    stop(ws).await;
}

const SECRET: &str = "a-websocket-test-secret-of-at-least-32-bytes";

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &key,
    )
    .unwrap()
}

/// Asserts that a socket gets an `error` of the problem `slug`, then `code`.
async fn error_then_close(s: &Server, path: &str, headers: &[(&str, &str)], code: u16, slug: &str) {
    let (m, closed) = refused_with(s, path, headers).await;
    assert_eq!(m["type"], "error", "{path} {m}");
    assert_eq!(m["problem_type"], format!("https://streamcap.dev/problems/{slug}"), "{path} {m}");
    assert_eq!((closed, m["status"].as_u64()), (code, Some(u64::from(code - 4000))), "{path} {m}");
}

/// The first message and the close code of a socket that must be refused.
async fn refused_with(s: &Server, path: &str, headers: &[(&str, &str)]) -> (Value, u16) {
    let (mut ws, _) = open_with(&s.ws_url(path), headers).await;
    let m = next(&mut ws).await;
    (m, close_code(&mut ws).await)
}

#[tokio::test]
async fn authentication_by_header_or_subprotocol() {
    let s = Server::with_everything(
        StoreKind::Memory,
        policy(3, 60),
        common::hs256_auth(SECRET, Vec::new()),
        Protection::unlimited(),
    )
    .await;
    let alice = token("alice");
    let bearer = format!("Bearer {alice}");

    // The Authorization header, as a non-browser client sends it.
    let (mut ws, res) = open_with(&s.ws_url(&socket("alice", "tv")), &[("authorization", &bearer)]).await;
    assert_eq!(expect(&mut ws, "granted").await["stream_id"], "tv");
    assert!(res.headers().get("sec-websocket-protocol").is_none());

    // The subprotocols, as a browser offers them: the answer is
    // streamcap.v1, and the token is never echoed.
    let offer = format!("streamcap.v1, streamcap.bearer.{alice}");
    let (mut ws, res) =
        open_with(&s.ws_url("/v1/me/streams/phone/socket"), &[("sec-websocket-protocol", &offer)]).await;
    let granted = expect(&mut ws, "granted").await;
    assert_eq!((granted["user_id"].as_str(), granted["stream_id"].as_str()), (Some("alice"), Some("phone")));
    assert_eq!(res.headers()["sec-websocket-protocol"], "streamcap.v1");
    for (name, value) in res.headers() {
        assert!(!value.as_bytes().windows(alice.len()).any(|w| w == alice.as_bytes()), "{name} echoes the token");
    }

    // Missing or bad credentials, someone else's streams, two credentials.
    let (me, alice_a, bob_a) = ("/v1/me/streams/a/socket", socket("alice", "a"), socket("bob", "a"));
    let forged = "streamcap.v1, streamcap.bearer.x.y.z";
    let (auth, protocol) = ("authorization", "sec-websocket-protocol");
    error_then_close(&s, &alice_a, &[], 4401, "unauthorized").await;
    error_then_close(&s, me, &[], 4401, "unauthorized").await;
    error_then_close(&s, &alice_a, &[(auth, "Bearer not.a.token")], 4401, "unauthorized").await;
    error_then_close(&s, &alice_a, &[(protocol, forged)], 4401, "unauthorized").await;
    error_then_close(&s, &bob_a, &[(auth, &bearer)], 4403, "forbidden").await;
    error_then_close(&s, &alice_a, &[(auth, &bearer), (protocol, &offer)], 4400, "invalid-request").await;

    // Subprotocols without streamcap.v1 are refused before the upgrade.
    let mut req = s.ws_url(&socket("alice", "a")).into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_str(&format!("streamcap.bearer.{alice}")).unwrap());
    match connect_async(req).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    // A plain GET is not an upgrade: 426, once it passes the checks that
    // come first (tests/order.rs): without a credential, 401.
    s.get(&socket("alice", "a")).await.assert_problem(401, "unauthorized");
    let r = s.client.get(s.url(&socket("alice", "a"))).bearer_auth(&alice).send().await.unwrap();
    let r = Reply::from(r).await;
    let p = r.assert_problem(426, "upgrade-required");
    assert!(p["detail"].as_str().unwrap().contains("WebSocket"), "{p}");
    assert_eq!(r.header("upgrade"), Some("websocket"));
    // Only the two granted sockets acquired anything.
    let list = s.client.get(s.url("/v1/me/streams")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(ids(&Reply::from(list).await.json()["active_streams"]), ["tv", "phone"]);
}

#[tokio::test]
async fn the_rate_limit_counts_the_connect_not_the_renewals() {
    let protection = Protection { user_rate: 1, user_burst: 1, ..Protection::unlimited() };
    let s = Server::with_everything(StoreKind::Memory, policy(3, 3), Authenticator::none(), protection).await;
    // Each connect takes a token: alice's sockets are granted until her
    // bucket is empty, and the next is refused with 4429.
    let mut bucket = Bucket::full(1);
    let (m, code) = loop {
        let mut ws = open(&s, &socket("alice", "tv")).await;
        let m = next(&mut ws).await;
        if m["type"] != "granted" {
            break (m, close_code(&mut ws).await);
        }
        bucket.granted();
        stop(ws).await;
    };
    bucket.refused();
    assert_eq!((m["type"].as_str(), code), (Some("error"), 4429), "{m}");
    assert_eq!(m["problem_type"], "https://streamcap.dev/problems/rate-limited");
    assert!(m["retry_after_seconds"].as_u64().unwrap() >= 1, "{m}");
    // Renewals take none. bob's socket takes his only token, which is
    // back a second later; the socket's first renewal comes a second
    // after its grant (a third of the 3 s TTL), so a PUT right after it
    // finds the token only if the renewal did not take it.
    let (mut ws, _) = held(&s, &socket("bob", "tv")).await;
    expect(&mut ws, "renewed").await;
    let r = s.put("/v1/users/bob/streams/phone", None).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test]
async fn two_instances_on_one_redis_tell_the_socket_at_once() {
    // 60 s leases renew every 20 s: what reaches the socket within WAIT
    // is B's notice to A, not a renewal.
    let a = Server::start(StoreKind::Redis, 1, 60).await;
    let b = Server::sharing_redis(&a, policy(1, 60)).await;

    // A take-over on B of the lease a socket holds on A.
    let (mut tv, _) = held(&a, &socket("alice", "tv")).await;
    let r = b.put("/v1/users/alice/streams/phone", Some(json!({"evict": ["tv"]}))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let revoked = expect(&mut tv, "revoked").await;
    assert_eq!(revoked, json!({"type": "revoked", "reason": "evicted_by_new_stream", "by_stream_id": "phone"}));
    assert_eq!(close_code(&mut tv).await, 4410);

    // A revoke-all on B.
    let (mut tv, _) = held(&a, &socket("bob", "tv")).await;
    assert_eq!(b.delete("/v1/users/bob/streams").await.json(), json!({"revoked": ["tv"]}));
    assert_eq!(expect(&mut tv, "revoked").await, json!({"type": "revoked", "reason": "revoked", "by_stream_id": null}));
    assert_eq!(close_code(&mut tv).await, 4410);

    // A socket's close on A frees the seat for B at once.
    let (ws, _) = held(&a, &socket("carol", "tv")).await;
    b.put("/v1/users/carol/streams/phone", None).await.assert_problem(409, "stream-limit-reached");
    stop(ws).await;
    assert_eq!(b.put("/v1/users/carol/streams/phone", None).await.status, 201);
}

#[tokio::test]
async fn the_edge_bounds_the_upgrade_request_but_not_the_socket() {
    // A socket outlives the request timeout: the upgrade request ended
    // with its 101.
    let quick = Protection { request_timeout: Duration::from_secs(1), ..Protection::unlimited() };
    let s = Server::with_everything(StoreKind::Memory, policy(3, 3), Authenticator::none(), quick).await;
    let (mut ws, _) = held(&s, &socket("alice", "tv")).await;
    for _ in 0..3 {
        expect(&mut ws, "renewed").await;
    }
    stop(ws).await;
    // The upgrade request is shed like any request.
    let full = Protection { max_concurrent_requests: 0, ..Protection::unlimited() };
    let s = Server::with_everything(StoreKind::Memory, policy(3, 3), Authenticator::none(), full).await;
    match connect_async(s.ws_url(&socket("alice", "tv"))).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected a 503, got {other:?}"),
    }
}

/// A runtime for the tests that drive the real binary.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn ws_base(p: &common::Process) -> String {
    p.base.replacen("http://", "ws://", 1)
}

#[test]
fn the_binary_releases_socket_leases_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir_arg(dir.path());
    let args = ["--store", "sqlite", "--data-dir", data.as_str()];
    let p = common::Process::start(&args);
    let rt = runtime();
    let url = format!("{}{}", ws_base(&p), socket("alice", "tv"));
    let mut ws = rt.block_on(async {
        let (mut ws, _) = open_with(&url, &[]).await;
        expect(&mut ws, "granted").await;
        ws
    });
    let list = |base: &str| {
        let url = format!("{base}/v1/users/alice/streams");
        rt.block_on(async { ids(&reqwest::get(url).await.unwrap().json::<Value>().await.unwrap()["active_streams"]) })
    };
    assert_eq!(list(&p.base), ["tv"]);
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    // The close frame came before the exit.
    assert_eq!(rt.block_on(close_code(&mut ws)), 1001);
    // The release reached the file before the store closed.
    let again = common::Process::start(&args);
    assert!(list(&again.base).is_empty());
}

#[test]
fn tokens_stay_out_of_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let p = common::Process::start_cmd(
        common::binary()
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--auth-mode", "jwt"])
            .args(["--jwt-secret-file", secret.to_str().unwrap()])
            .env("RUST_LOG", "trace"),
    );
    let (alice, bob) = (token("alice"), token("bob"));
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another");
        let claims = json!({"sub": "alice", "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
    };
    let rt = runtime();
    rt.block_on(async {
        let base = ws_base(&p);
        let tv = format!("{base}{}", socket("alice", "tv"));
        let header = format!("Bearer {alice}");
        let (mut ws, _) = open_with(&tv, &[("authorization", &header)]).await;
        expect(&mut ws, "granted").await;
        stop(ws).await;
        let offer = format!("streamcap.v1, streamcap.bearer.{bob}");
        let (mut ws, _) =
            open_with(&format!("{base}/v1/me/streams/phone/socket"), &[("sec-websocket-protocol", &offer)]).await;
        expect(&mut ws, "granted").await;
        stop(ws).await;
        let offer = format!("streamcap.v1, streamcap.bearer.{forged}");
        let (mut ws, _) = open_with(&tv, &[("sec-websocket-protocol", &offer)]).await;
        assert_eq!(expect(&mut ws, "error").await["status"], 401);
        // Refused before the upgrade, token and all.
        let mut req = tv.as_str().into_client_request().unwrap();
        let offer = HeaderValue::from_str(&format!("streamcap.bearer.{alice}")).unwrap();
        req.headers_mut().insert("sec-websocket-protocol", offer);
        assert!(connect_async(req).await.is_err());
    });
    let (status, log) = p.terminate();
    assert!(status.success(), "{log}");
    assert!(log.lines().all(|line| line.starts_with('{')), "JSON lines only:\n{log}");
    assert!(log.contains("/v1/me/streams/{stream_id}/socket"), "the socket requests were logged:\n{log}");
    for secret in [alice.as_str(), bob.as_str(), forged.as_str(), SECRET] {
        // Each token's signature alone would be enough to find it.
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token leaked into the log:\n{log}");
    }
}

/// The value of the metric line that starts with `series ` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn the_metrics_count_open_sockets_and_closes_by_code() {
    let p = common::Process::start(&["--store", "memory", "--default-limit", "1"]);
    let rt = runtime();
    let scrape = || rt.block_on(async { reqwest::get(p.url("/metrics")).await.unwrap().text().await.unwrap() });
    let wait_for = |what: &str, check: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = scrape();
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let base = ws_base(&p);
    let tv = rt.block_on(async {
        let (mut ws, _) = open_with(&format!("{base}{}", socket("alice", "tv")), &[]).await;
        expect(&mut ws, "granted").await;
        ws
    });
    wait_for("one socket open", &|m| metric(m, "streamcap_websockets_open") == 1.0);
    let code = rt.block_on(async {
        let (mut ws, _) = open_with(&format!("{base}{}", socket("alice", "phone")), &[]).await;
        expect(&mut ws, "refused").await;
        close_code(&mut ws).await
    });
    assert_eq!(code, 4409);
    let m = wait_for("the refusal counted", &|m| metric(m, "streamcap_websocket_closes_total{code=\"4409\"}") == 1.0);
    assert_eq!(metric(&m, "streamcap_websockets_open"), 1.0, "{m}");
    rt.block_on(stop(tv));
    let m = wait_for("the close counted", &|m| metric(m, "streamcap_websocket_closes_total{code=\"1000\"}") == 1.0);
    assert_eq!(metric(&m, "streamcap_websockets_open"), 0.0, "{m}");
    assert!(!m.contains("alice") && !m.contains("phone"), "no ids in labels:\n{m}");
}
