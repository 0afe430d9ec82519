//! The time and concurrency limits at the edge, over real sockets, made
//! deterministic by pausing a real redis-server with CLIENT PAUSE (the
//! timeout) or by a request whose body the test holds back (the
//! concurrency limit). Each test waits for the condition it needs (Redis
//! paused, the slot taken), never for a fixed time. The edge's own unit
//! tests cover the same limits on paused time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;
use common::redis::cli;
use streamcap::auth::Authenticator;
use streamcap::limiter::{Limit, Ttl};
use streamcap::policy::Policy;
use streamcap::policy::Protection;
use streamcap::store::StoreKind;

async fn stalled_server(protection: Protection) -> Server {
    let policy = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
    Server::with_everything(StoreKind::Redis, policy, Authenticator::none(), protection).await
}

/// Holds every command to the store for `ms` milliseconds, and returns
/// once the pause has begun: Redis answers CLIENT PAUSE only after it has
/// started to hold other clients' commands, so no guess about how long a
/// busy machine takes to answer is involved. The pause far outlasts the
/// request timeout of the test, so that a slow start of the request
/// cannot let it through.
fn pause(s: &Server, ms: &str) -> u16 {
    let port = s.redis.as_ref().unwrap().port;
    assert_eq!(cli(port, &["CLIENT", "PAUSE", ms, "ALL"]).trim(), "OK");
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_a_408_problem() {
    let s = stalled_server(Protection { request_timeout: Duration::from_secs(1), ..Protection::unlimited() }).await;
    let port = pause(&s, "5000");
    let r = s.put("/v1/users/u/streams/a", None).await;
    r.assert_problem(408, "request-timeout");
    // A PING is held too, and answered once the pause is over.
    assert_eq!(tokio::task::spawn_blocking(move || cli(port, &["PING"])).await.unwrap().trim(), "PONG");
    assert_eq!(s.put("/v1/users/u/streams/a", None).await.status, 201, "served again once the store answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_503() {
    let policy = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
    let protection = Protection { max_concurrent_requests: 1, ..Protection::unlimited() };
    let s = Server::with_everything(StoreKind::Memory, policy, Authenticator::none(), protection).await;
    // The first request holds the only slot for as long as the test keeps
    // its body unfinished: its headers are in, two bytes of body are owed.
    // It asks for a 100 Continue, which the server sends once the handler
    // starts reading the body: past the edge, holding the slot.
    let addr = s.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut first = TcpStream::connect(&addr).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first
        .write_all(
            b"PUT /v1/users/u/streams/a HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
              content-length: 2\r\nexpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let interim = read_head(&mut first);
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "the PUT should be taken in: {interim}");
    // Now every other request is shed.
    s.get("/livez").await.assert_problem(503, "overloaded");
    // The body arrives; the admitted request completes, and the slot is free.
    first.write_all(b"{}").unwrap();
    let head = read_head(&mut first);
    assert!(head.starts_with("HTTP/1.1 201"), "the admitted request completes: {head}");
    assert_eq!(s.get("/livez").await.status, 200);
    // The shed request is counted apart from the store's 503s.
    let metrics = s.get("/metrics").await.text;
    let shed = metrics.lines().find_map(|l| l.strip_prefix("streamcap_requests_shed_total ")?.parse::<f64>().ok());
    assert!(shed.is_some_and(|n| n >= 1.0), "no shed request counted:\n{metrics}");
}

/// Reads one response head (up to its blank line) from `c`.
fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("an answer before the read timeout");
        assert!(n > 0, "the connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}
