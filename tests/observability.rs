//! Metrics, request ids and log formats, over real HTTP.

mod common;

use common::{Process, Reply, Server, binary};
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
    let s = Server::start(StoreKind::Memory, 3, 60).await;
    for st in ["a", "b"] {
        s.put(&format!("/v1/users/gauge-user/streams/{st}"), None).await;
    }
    // The test server sweeps every second; wait for one sweep, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = s.get("/metrics").await.text;
        if sample(&text, "streamcap_live_leases") >= 2.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gauge never reported the leases:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
