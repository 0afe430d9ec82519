//! Metrics, request ids and log formats, over real HTTP.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Process, Reply, Server, binary};
use streamcap::auth::Authenticator;
use streamcap::clock::ManualClock;
use streamcap::limiter::{Limit, Timestamp, Ttl};
use streamcap::policy::{Policy, Protection};
use streamcap::store::StoreKind;

/// The value of one sample line (`name{labels} value`), or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_decisions_and_time_routes_without_ids() {
    let s = Server::start(StoreKind::Sqlite, 1, 60).await;
    let before = s.get("/metrics").await.text;
    let user = "/v1/users/user-4711-private/streams";
    assert_eq!(s.put(&format!("{user}/a"), None).await.status, 201);
    assert_eq!(s.put(&format!("{user}/a"), None).await.status, 200);
    assert_eq!(s.put(&format!("{user}/b"), None).await.status, 409);
    assert_eq!(s.delete(&format!("{user}/a")).await.status, 204);

    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"), "{r:?}");
    let after = r.text;
    for (outcome, at_least) in [("granted", 1.0), ("renewed", 1.0), ("denied", 1.0), ("released", 1.0)] {
        let series = format!("streamcap_decisions_total{{outcome=\"{outcome}\"}}");
        let delta = sample(&after, &series) - sample(&before, &series);
        assert!(delta >= at_least, "{series} grew by {delta}:\n{after}");
    }
    let route = "route=\"/v1/users/{user_id}/streams/{stream_id}\"";
    assert!(
        after.lines().any(|l| l.starts_with("streamcap_http_request_duration_seconds_bucket") && l.contains(route)),
        "no latency histogram for the acquire route:\n{after}"
    );
    assert!(after.contains("streamcap_sqlite_commits_total"), "{after}");
    assert!(!after.contains("user-4711-private"), "a user id leaked into a label");
    for line in after.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("streamcap_"), "unprefixed metric: {line}");
    }
}

#[tokio::test]
async fn the_live_lease_gauge_follows_the_sweeper() {
    // On a manual clock the leases expire when the test moves it. The
    // gauge is one per process, and every test server's sweeper sets it;
    // no other test in this binary holds more than one lease at a time.
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let policy = Policy::uniform(Limit::new(5).unwrap(), Ttl::from_secs(60).unwrap());
    let s = Server::with_clock(
        StoreKind::Memory,
        policy,
        Authenticator::none(),
        Protection::unlimited(),
        Arc::new(clock.clone()),
    )
    .await;
    let stream = |st: &str| format!("/v1/users/gauge-user/streams/{st}");
    for st in ["a", "b", "c", "d"] {
        assert_eq!(s.put(&stream(st), None).await.status, 201);
    }
    let gauge = |text: &str| sample(text, "streamcap_live_leases");
    metrics_until(&s, "the gauge reads 4", |text| gauge(text) == 4.0).await;
    // c and d are renewed half a TTL later; then a and b expire, and a
    // sweep removes them without any request for their user.
    clock.advance_ms(30_000);
    for st in ["c", "d"] {
        assert_eq!(s.put(&stream(st), None).await.status, 200);
    }
    let expired = |text: &str| sample(text, "streamcap_decisions_total{outcome=\"expired\"}");
    let before = expired(&s.get("/metrics").await.text);
    clock.advance_ms(30_001);
    metrics_until(&s, "the sweep removes a and b and the gauge reads 2", |text| {
        expired(text) - before == 2.0 && gauge(text) == 2.0
    })
    .await;
}

/// Waits until `/metrics` satisfies `check`; the test server sweeps every
/// second.
async fn metrics_until(s: &Server, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = s.get("/metrics").await.text;
        if check(&text) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = Server::start(StoreKind::Memory, 3, 60).await;
    let given = Reply::from(
        s.client.get(s.url("/v1/users/u/streams")).header("x-request-id", "trace-abc-123").send().await.unwrap(),
    )
    .await;
    assert_eq!(given.header("x-request-id"), Some("trace-abc-123"));
    for r in [s.get("/livez").await, s.get("/nope").await, s.put("/v1/users/bad%20id/streams/x", None).await] {
        let id = r.header("x-request-id").unwrap_or_else(|| panic!("no request id: {r:?}"));
        assert_eq!(id.len(), 36, "a generated UUID: {id}");
    }
    let a = s.get("/livez").await.header("x-request-id").unwrap().to_owned();
    let b = s.get("/livez").await.header("x-request-id").unwrap().to_owned();
    assert_ne!(a, b);
}

#[test]
fn metrics_listen_moves_metrics_off_the_api_port_and_json_logs_parse() {
    let p = Process::start_cmd(binary().args([
        "serve",
        "--store",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The metrics address is in the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics_addr = loop {
        let log = p.log();
        let found = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
            (v["fields"]["message"] == "serving /metrics").then(|| v["fields"]["addr"].as_str().unwrap().to_owned())
        });
        if let Some(a) = found {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (api, metrics) = rt.block_on(async {
        let c = reqwest::Client::new();
        c.put(p.url("/v1/users/u/streams/a")).header("x-request-id", "req-json-1").send().await.unwrap();
        let api = c.get(p.url("/metrics")).send().await.unwrap().status().as_u16();
        let metrics = c.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap().text().await.unwrap();
        (api, metrics)
    });
    assert_eq!(api, 404, "/metrics is not on the API port when --metrics-listen is set");
    assert!(metrics.contains("streamcap_decisions_total"), "{metrics}");
    let (status, log) = p.terminate();
    assert!(status.success());
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
