//! Pages of other origins (`--cors-allowed-origins`).
//!
//! - Over plain HTTP, against the real binary: preflights of each `/v1`
//!   route answer with exactly its methods and the request headers a
//!   player sends; a listed `Origin` is echoed (with `Vary: Origin`) and
//!   the headers a player reads are exposed, on successes and on problems
//!   alike; an unlisted one gets no CORS header; nothing allows
//!   credentials; without the flag, no CORS header at all. A WebSocket
//!   upgrade from an unlisted origin is a 403 before the upgrade, while
//!   one from a listed origin, or without `Origin`, opens.
//! - In a real browser: tests/cors/browser_test.py drives headless
//!   Chromium through selenium. A page of a listed origin holds leases with
//!   the JS client in heartbeat and WebSocket modes; a page of an unlisted
//!   origin is refused in both.
//!
//! Chromium, chromedriver and selenium must be installed; ./scripts/test
//! installs them. When one is missing, the browser test fails and says how
//! to install it.

mod common;

use common::ws::open_with;
use common::{Process, Reply, browser};
use reqwest::Method;

const PLAYER: &str = "https://player.example.com";
const OTHER: &str = "http://localhost:3000";

fn server() -> Process {
    Process::start(&["--store", "memory", "--cors-allowed-origins", &format!("{PLAYER}, {OTHER}")])
}

async fn send(server: &Process, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.request(method, server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// A preflight from `origin` for `method` on `path`.
async fn preflight(server: &Process, path: &str, origin: &str, method: &str) -> Reply {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", "authorization,content-type,if-match,x-request-id"),
    ];
    send(server, Method::OPTIONS, path, &headers).await
}

/// A header's comma-separated values, lowercase and sorted.
fn list(reply: &Reply, name: &str) -> Vec<String> {
    let mut values: Vec<String> = reply
        .headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    values.sort();
    values
}

#[tokio::test]
async fn preflights_allow_exactly_each_routes_methods_for_listed_origins() {
    let s = server();
    let routes = [
        ("/v1/users/alice/streams/tv", &["delete", "put"][..]),
        ("/v1/users/alice/streams", &["delete", "get"]),
        ("/v1/users/alice/limit", &["delete", "get", "put"]),
        ("/v1/me/streams/tv", &["delete", "put"]),
        ("/v1/me/streams", &["get"]),
        ("/v1/users/alice/streams/tv/socket", &["get"]),
        ("/v1/me/streams/tv/socket", &["get"]),
    ];
    for (path, methods) in routes {
        for origin in [PLAYER, OTHER] {
            let r = preflight(&s, path, origin, "PUT").await;
            assert!(r.status < 300, "{path}: {r:?}");
            assert_eq!(r.header("access-control-allow-origin"), Some(origin), "{path}: {r:?}");
            assert_eq!(list(&r, "access-control-allow-methods"), methods, "{path}");
            let headers = list(&r, "access-control-allow-headers");
            assert_eq!(headers, ["authorization", "content-type", "if-match", "x-request-id"], "{path}");
            assert!(list(&r, "vary").contains(&"origin".to_owned()), "{path}: {r:?}");
            assert_eq!(r.header("access-control-allow-credentials"), None, "{path}: no cookies");
            assert!(r.header("access-control-max-age").is_some(), "{path}: {r:?}");
        }
        // An unlisted origin learns nothing it could use: no allowed
        // origin, so the browser refuses the request. Never a 5xx.
        for origin in ["https://evil.example", "https://player.example.com.evil.example", "null"] {
            let r = preflight(&s, path, origin, "PUT").await;
            assert!(r.status < 500, "{path} {origin}: {r:?}");
            assert_eq!(r.header("access-control-allow-origin"), None, "{path} {origin}: {r:?}");
        }
    }
    // Routes outside /v1 get no CORS: browsers have no business there.
    let r = preflight(&s, "/readyz", PLAYER, "GET").await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
}

#[tokio::test]
async fn answers_to_a_listed_origin_echo_it_and_expose_what_a_player_reads() {
    let s = server();
    let from = |origin| [("origin", origin), ("x-request-id", "cors-1")];
    let r = send(&s, Method::PUT, "/v1/users/alice/streams/tv", &from(PLAYER)).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(PLAYER));
    assert!(list(&r, "vary").contains(&"origin".to_owned()), "{r:?}");
    let exposed = list(&r, "access-control-expose-headers");
    assert_eq!(exposed, ["location", "retry-after", "www-authenticate", "x-request-id"], "{r:?}");
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // A problem carries them too, so that the page can read why.
    let r = send(&s, Method::PUT, "/v1/users/alice/streams/bad%20id", &from(OTHER)).await;
    r.assert_problem(400, "invalid-request");
    assert_eq!(r.header("access-control-allow-origin"), Some(OTHER));
    // An unlisted origin gets the answer without an allowed origin: the
    // browser hides all of it from the page.
    let r = send(&s, Method::GET, "/v1/users/alice/streams", &from("https://evil.example")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
}

#[tokio::test]
async fn without_the_flag_nothing_changes() {
    let s = Process::start(&["--store", "memory"]);
    let r = preflight(&s, "/v1/users/alice/streams/tv", PLAYER, "PUT").await;
    r.assert_problem(405, "method-not-allowed");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = send(&s, Method::PUT, "/v1/users/alice/streams/tv", &[("origin", PLAYER)]).await;
    assert_eq!(r.status, 201);
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("access-control-")), "{r:?}");
    // And any socket opens, whatever its origin.
    let url = s.url("/v1/users/alice/streams/ws/socket").replacen("http", "ws", 1);
    let (ws, res) = open_with(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(res.status(), 101);
    drop(ws);
}

#[tokio::test]
async fn a_socket_from_an_unlisted_origin_is_a_403_before_the_upgrade() {
    let s = server();
    let ws_url = |stream: &str| s.url(&format!("/v1/users/alice/streams/{stream}/socket")).replacen("http", "ws", 1);
    for (origin, stream) in [(Some(PLAYER), "a"), (Some(OTHER), "b"), (None, "c")] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let (ws, res) = open_with(&ws_url(stream), &headers).await;
        assert_eq!(res.status(), 101, "{origin:?}");
        drop(ws);
    }
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", "streamcap.v1"),
    ];
    for origin in ["https://evil.example", "http://localhost:3001", "null"] {
        let mut headers = upgrade.to_vec();
        headers.push(("origin", origin));
        let r = send(&s, Method::GET, "/v1/users/alice/streams/d/socket", &headers).await;
        let body = r.assert_problem(403, "forbidden");
        assert!(body["detail"].as_str().unwrap().contains(origin), "{body}");
        // Even before a bad credential or request is looked at.
        headers.push(("authorization", "Bearer nonsense"));
        let r = send(&s, Method::GET, "/v1/me/streams/bad%20id/socket?device_id=", &headers).await;
        r.assert_problem(403, "forbidden");
    }
    let list = send(&s, Method::GET, "/v1/users/alice/streams", &[]).await.json();
    assert_eq!(list["active_streams"].as_array().unwrap().len(), 0, "the refused sockets hold nothing: {list}");
}

#[test]
fn a_page_of_another_origin_in_headless_chromium() {
    let mut cmd = browser::script("tests/cors/browser_test.py");
    cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_streamcap")).arg("--root").arg(env!("CARGO_MANIFEST_DIR"));
    let stdout = browser::run(&mut cmd);
    // Both modes, from both origins.
    assert_eq!(stdout.lines().filter(|l| l.contains("granted, renewed and released")).count(), 2, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("refused from")).count(), 2, "{stdout}");
}
