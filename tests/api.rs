//! API v1 end to end over real HTTP, against every store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Reply, STORES, Server};
use serde_json::{Value, json};
use streamcap::auth::Authenticator;
use streamcap::clock::ManualClock;
use streamcap::limiter::{Limit, Timestamp, Ttl};
use streamcap::policy::Policy;
use streamcap::policy::Protection;
use streamcap::store::StoreKind;

const U: &str = "/v1/users/alice/streams";

fn stream(s: &str) -> String {
    format!("{U}/{s}")
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|l| l["stream_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn acquire_renew_deny_list_release() {
    for kind in STORES {
        let s = Server::start(kind, 3, 60).await;

        let r = s.put(&stream("tv"), Some(json!({"device_id": "tv-1", "content_id": "movie-9"}))).await;
        assert_eq!(r.status, 201, "{kind:?} {r:?}");
        assert_eq!(r.header("location"), Some("/v1/users/alice/streams/tv"));
        let first = r.json();
        assert_eq!(first["user_id"], "alice");
        assert_eq!(first["stream_id"], "tv");
        assert_eq!(first["device_id"], "tv-1");
        assert_eq!(first["content_id"], "movie-9");
        assert_eq!(first["ttl_seconds"], 60);
        assert_eq!(first["active_streams"], 1);
        assert_eq!(first["limit"], 3);
        let started = first["started_at"].as_str().unwrap().to_owned();
        assert!(started.ends_with('Z') && started.contains('T'), "{started}");

        // An empty body is fine; optional fields are left out, not null.
        let r = s.put(&stream("phone"), None).await;
        assert_eq!(r.status, 201);
        assert!(r.json().get("device_id").is_none(), "{}", r.text);
        assert_eq!(r.json()["active_streams"], 2);
        assert_eq!(s.put(&stream("tablet"), Some(json!({}))).await.json()["active_streams"], 3);

        // Renewing keeps started_at and metadata, moves expires_at (times
        // have microseconds, and a round trip takes longer than one).
        let r = s.put(&stream("tv"), None).await;
        assert_eq!(r.status, 200, "{r:?}");
        let renewed = r.json();
        assert_eq!(renewed["started_at"], started.as_str());
        assert_eq!(renewed["device_id"], "tv-1");
        assert_eq!(renewed["active_streams"], 3);
        assert!(renewed["expires_at"].as_str().unwrap() > first["expires_at"].as_str().unwrap());

        // The fourth stream is refused with the live ones listed.
        let r = s.put(&stream("laptop"), Some(json!({"device_id": "mac"}))).await;
        let p = r.assert_problem(409, "stream-limit-reached");
        assert_eq!(p["limit"], 3);
        assert_eq!(ids(&p["active_streams"]), ["tv", "phone", "tablet"]);
        assert_eq!(p["active_streams"][0]["device_id"], "tv-1");
        assert!(p["active_streams"][1].get("device_id").is_none());
        assert!(p["active_streams"][0]["expires_at"].is_string());

        let list = s.get(U).await;
        assert_eq!(list.status, 200);
        let body = list.json();
        assert_eq!(body["user_id"], "alice");
        assert_eq!(body["limit"], 3);
        assert_eq!(ids(&body["active_streams"]), ["tv", "phone", "tablet"], "oldest first");

        // Release frees a seat; releasing twice is still 204.
        let r = s.delete(&stream("phone")).await;
        assert_eq!((r.status, r.text.as_str()), (204, ""));
        assert_eq!(s.delete(&stream("phone")).await.status, 204);
        assert_eq!(s.delete(&stream("never-existed")).await.status, 204);
        assert_eq!(s.put(&stream("laptop"), None).await.status, 201);
        assert_eq!(ids(&s.get(U).await.json()["active_streams"]), ["tv", "tablet", "laptop"]);

        // Other users are unaffected, and an unknown user has no streams.
        assert_eq!(s.put("/v1/users/bob/streams/tv", None).await.status, 201);
        let empty = s.get("/v1/users/carol/streams").await.json();
        assert_eq!(empty["active_streams"], json!([]));
    }
}

#[tokio::test]
async fn sixty_four_concurrent_puts_grant_exactly_the_limit() {
    for kind in STORES {
        for limit in [1, 3] {
            let s = Server::start(kind, limit, 60).await;
            let user = format!("/v1/users/racer-{limit}/streams");
            let mut set = tokio::task::JoinSet::new();
            for i in 0..64 {
                // A fresh client each: 64 separate connections, truly concurrent.
                let url = s.url(&format!("{user}/s{i}"));
                set.spawn(async move { reqwest::Client::new().put(url).send().await.unwrap().status().as_u16() });
            }
            let mut by_status = std::collections::BTreeMap::new();
            while let Some(status) = set.join_next().await {
                *by_status.entry(status.unwrap()).or_insert(0) += 1;
            }
            assert_eq!(by_status.get(&201).copied(), Some(limit), "{kind:?}: {by_status:?}");
            assert_eq!(by_status.get(&409).copied(), Some(64 - limit), "{kind:?}: {by_status:?}");
            let live = s.get(&user).await.json();
            assert_eq!(live["active_streams"].as_array().unwrap().len() as u32, limit);
        }
    }
}

/// A 1 s lease expires when its heartbeats stop. The memory and sqlite
/// stores run on a manual clock; Redis reads its own clock (TIME), so for
/// Redis this test waits out the second for real.
#[tokio::test]
async fn a_lease_expires_when_heartbeats_stop() {
    for kind in STORES {
        // Ahead of the real clock, as DynamoDB's TTL (which DynamoDB Local
        // applies within a second) must not find these leases expired.
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(4_102_444_800_000)));
        let policy = Policy::uniform(Limit::new(1).unwrap(), Ttl::from_secs(1).unwrap());
        let s = Server::with_clock(kind, policy, Authenticator::none(), Protection::unlimited(), clock.clone()).await;
        assert_eq!(s.put(&stream("a"), None).await.status, 201);
        assert_eq!(s.put(&stream("b"), None).await.status, 409);
        if kind == StoreKind::Redis {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        } else {
            clock.advance_ms(999);
            assert_eq!(s.put(&stream("b"), None).await.status, 409, "{kind:?}: still live 1 ms before expiry");
            clock.advance_ms(1);
        }
        assert_eq!(s.get(U).await.json()["active_streams"], json!([]), "{kind:?}");
        assert_eq!(s.put(&stream("b"), None).await.status, 201);
        // The expired stream comes back as a fresh acquire: 201 or 409, never 200.
        assert_eq!(s.put(&stream("a"), None).await.status, 409);
    }
}

#[tokio::test]
async fn bad_ids_are_400_and_change_nothing() {
    for kind in STORES {
        let s = Server::start(kind, 3, 60).await;
        let long = "x".repeat(129);
        for (path, field) in [
            (format!("/v1/users/{long}/streams/a"), "user_id"),
            (format!("/v1/users/alice/streams/{long}"), "stream_id"),
            ("/v1/users/al%20ice/streams/a".to_owned(), "user_id"),
            ("/v1/users/alice/streams/a%2Fb".to_owned(), "stream_id"),
            ("/v1/users/%C3%A9/streams/a".to_owned(), "user_id"),
            ("/v1/users/alice/streams/%FF".to_owned(), "path"),
        ] {
            for r in [s.put(&path, None).await, s.delete(&path).await] {
                let p = r.assert_problem(400, "invalid-request");
                assert!(p["detail"].as_str().unwrap().contains(field), "{path}: {p}");
            }
        }
        let r = s.get(&format!("/v1/users/{long}/streams")).await;
        r.assert_problem(400, "invalid-request");
        // The longest valid ids work.
        let max = "y".repeat(128);
        assert_eq!(s.put(&format!("/v1/users/{max}/streams/{max}"), None).await.status, 201);
        assert_eq!(s.get(U).await.json()["active_streams"], json!([]));
    }
}

#[tokio::test]
async fn bad_bodies_are_4xx_problems_and_change_nothing() {
    let s = Server::start(StoreKind::Sqlite, 3, 60).await;
    let url = s.url(&stream("a"));
    let send = |ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = s.client.put(url.clone()).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        async move { Reply::from(req.send().await.unwrap()).await }
    };
    const JSON: Option<&str> = Some("application/json");

    for (body, needle) in [
        (&b"{"[..], "invalid JSON"),
        (b"[1,2]", "invalid JSON"),
        (b"{\"device_id\": 5}", "invalid JSON"),
        (b"{\"devise_id\": \"tv\"}", "devise_id"),
        (b"\xff\xfe", "invalid JSON"),
    ] {
        let p = send(JSON, body.to_vec()).await.assert_problem(400, "invalid-request");
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }
    let too_long = json!({ "device_id": "é".repeat(129) }).to_string();
    let p = send(JSON, too_long.into_bytes()).await.assert_problem(400, "invalid-request");
    assert!(p["detail"].as_str().unwrap().contains("device_id"), "{p}");
    let p = send(JSON, json!({ "content_id": "c".repeat(129) }).to_string().into_bytes())
        .await
        .assert_problem(400, "invalid-request");
    assert!(p["detail"].as_str().unwrap().contains("content_id"), "{p}");

    send(Some("text/plain"), b"hello".to_vec()).await.assert_problem(415, "unsupported-media-type");
    send(None, b"{}".to_vec()).await.assert_problem(415, "unsupported-media-type");

    let big = json!({ "device_id": "x".repeat(17 * 1024) }).to_string().into_bytes();
    send(JSON, big).await.assert_problem(413, "payload-too-large");

    // None of that created a lease; a correct body still works afterwards.
    assert_eq!(s.get(U).await.json()["active_streams"], json!([]));
    assert_eq!(send(Some("application/json; charset=utf-8"), b"{\"device_id\":\"tv\"}".to_vec()).await.status, 201);
    // 128 characters (not bytes) is the limit for labels.
    let ok = json!({ "device_id": "é".repeat(128) }).to_string().into_bytes();
    assert_eq!(send(JSON, ok).await.status, 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let s = Server::start(StoreKind::Memory, 3, 60).await;
    s.get("/nope").await.assert_problem(404, "not-found");
    s.get("/v1/users/alice").await.assert_problem(404, "not-found");
    s.get("/v2/users/alice/streams").await.assert_problem(404, "not-found");

    let r = Reply::from(s.client.post(s.url(&stream("a"))).send().await.unwrap()).await;
    r.assert_problem(405, "method-not-allowed");
    let allow = r.header("allow").unwrap_or_default();
    assert!(allow.contains("PUT") && allow.contains("DELETE"), "Allow: {allow}");
    s.get(&stream("a")).await.assert_problem(405, "method-not-allowed");
    s.client.post(s.url(U)).send().await.map(|r| assert_eq!(r.status(), 405)).unwrap();
    s.client.post(s.url("/v1/users/alice/limit")).send().await.map(|r| assert_eq!(r.status(), 405)).unwrap();
    s.put("/livez", None).await.assert_problem(405, "method-not-allowed");
}

#[tokio::test]
async fn health_endpoints_follow_the_store() {
    for kind in STORES {
        let s = Server::start(kind, 3, 60).await;
        assert_eq!(s.get("/livez").await.status, 200);
        let ready = s.get("/readyz").await;
        assert_eq!(ready.status, 200);
        let clock = &ready.json()["clock"];
        let decides = if kind == StoreKind::Redis { "redis" } else { "instance" };
        assert_eq!(clock["decides"], decides, "{ready:?}");
        assert!(clock["source"].is_string() && clock["synchronized"].is_boolean(), "{ready:?}");
        assert!(clock["max_error_ms"].as_f64().is_some_and(|e| e >= 0.0), "{ready:?}");
        if kind == StoreKind::Sqlite {
            // A store that can no longer write answers 503, never a guess.
            s.store.close().await.unwrap();
            let r = s.get("/readyz").await;
            r.assert_problem(503, "store-unavailable");
            let r = s.put(&stream("a"), None).await;
            let p = r.assert_problem(503, "store-unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
            assert!(!p["detail"].as_str().unwrap().contains("sqlite"), "no internals leak: {p}");
            s.get(U).await.assert_problem(503, "store-unavailable");
            s.delete(&stream("a")).await.assert_problem(503, "store-unavailable");
            assert_eq!(s.get("/livez").await.status, 200, "the process still serves");
        }
    }
}
