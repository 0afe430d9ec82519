//! The time and concurrency limits at the edge, made deterministic by
//! stalling a real redis-server with DEBUG SLEEP.

mod common;

use std::time::Duration;

use common::redis::cli;
use common::{Reply, Server};
use streamcap::auth::Authenticator;
use streamcap::http::protect::Protection;
use streamcap::limiter::{Limit, Ttl};
use streamcap::policy::Policy;
use streamcap::store::StoreKind;

async fn stalled_server(protection: Protection) -> Server {
    let policy = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
    Server::with_everything(StoreKind::Redis, policy, Authenticator::none(), protection).await
}

/// Blocks the store for `secs` seconds, from another thread.
fn stall(s: &Server, secs: &'static str) -> std::thread::JoinHandle<String> {
    let port = s.redis.as_ref().unwrap().port;
    let t = std::thread::spawn(move || cli(port, &["DEBUG", "SLEEP", secs]));
    std::thread::sleep(Duration::from_millis(200)); // let the sleep begin
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_a_408_problem() {
    let s = stalled_server(Protection { request_timeout: Duration::from_secs(1), ..Protection::unlimited() }).await;
    let sleeper = stall(&s, "3");
    let r = s.put("/v1/users/u/streams/a", None).await;
    r.assert_problem(408, "request-timeout");
    sleeper.join().unwrap();
    assert_eq!(s.put("/v1/users/u/streams/a", None).await.status, 201, "served again once the store answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_503() {
    let s = stalled_server(Protection { max_concurrent_requests: 1, ..Protection::unlimited() }).await;
    let sleeper = stall(&s, "2");
    let first = {
        let url = s.url("/v1/users/u/streams/a");
        tokio::spawn(async move { reqwest::Client::new().put(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the first request now holds the only slot
    let r = Reply::from(s.client.get(s.url("/livez")).send().await.unwrap()).await;
    r.assert_problem(503, "overloaded");
    sleeper.join().unwrap();
    assert_eq!(first.await.unwrap(), 201, "the admitted request completes");
    assert_eq!(s.get("/livez").await.status, 200);
}
