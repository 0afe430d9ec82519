//! Many instances, one truth for players, with the real binary and real
//! redis-server processes, standalone and a 3+3 Cluster: a loss decided on
//! one instance reaches the socket held on another at once, a replaced
//! socket never frees its successor's seat, and each instance names
//! itself.

mod common;

use std::time::{Duration, Instant};

use common::Process;
use common::redis::{RedisCluster, RedisServer};
use common::ws::{Ws, close_code, expect, held_at, ids, socket, stop};
use serde_json::{Value, json};

/// 60 s leases renew every 20 s, so a loss told within this much time was
/// pushed, not learnt at a renewal.
const PUSHED: Duration = Duration::from_secs(10);

fn standalone(redis: &RedisServer) -> Vec<String> {
    vec!["--store".into(), "redis".into(), "--redis-url".into(), redis.url()]
}

fn cluster(cluster: &RedisCluster) -> Vec<String> {
    let urls = cluster.urls().join(",");
    vec!["--store".into(), "redis".into(), "--redis-mode".into(), "cluster".into(), "--redis-url".into(), urls]
}

/// An instance with 60 s leases, a limit of 1 and no rate limits.
fn start(store: &[String]) -> Process {
    let mut args: Vec<&str> = store.iter().map(String::as_str).collect();
    args.extend([
        "--lease-ttl",
        "60",
        "--default-limit",
        "1",
        "--user-rate-limit",
        "0",
        "--credential-rate-limit",
        "0",
    ]);
    Process::start(&args)
}

fn ws_url(p: &Process, path: &str) -> String {
    format!("{}{path}", p.base.replacen("http://", "ws://", 1))
}

async fn put(p: &Process, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().put(format!("{}{path}", p.base)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(p: &Process, path: &str) -> Value {
    reqwest::get(format!("{}{path}", p.base)).await.unwrap().json().await.unwrap()
}

async fn live(p: &Process, user: &str) -> Vec<String> {
    ids(&get(p, &format!("/v1/users/{user}/streams")).await["active_streams"])
}

async fn metric(p: &Process, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", p.base)).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits, up to `PUSHED`, for the socket's `revoked`; returns it and how
/// long it took.
async fn revoked_within(ws: &mut Ws, since: Instant) -> (Value, Duration) {
    let m = tokio::time::timeout(PUSHED, expect(ws, "revoked")).await.expect("no revoked within the push bound");
    (m, since.elapsed())
}

/// Twenty take-overs on B of a lease a socket holds on A: each socket is
/// told, each within `PUSHED`; the latencies are printed, not asserted
/// below a second.
async fn take_overs_reach_the_other_instance(a: &Process, b: &Process, what: &str) {
    let mut latencies = Vec::new();
    for i in 0..20 {
        let user = format!("{what}-u{i}");
        let (mut tv, _) = held_at(&ws_url(a, &socket(&user, "tv"))).await;
        let asked = Instant::now();
        let (status, _) = put(b, &format!("/v1/users/{user}/streams/phone"), json!({"evict": ["tv"]})).await;
        assert_eq!(status, 201, "take-over {i}");
        let (revoked, took) = revoked_within(&mut tv, asked).await;
        assert_eq!(revoked, json!({"type": "revoked", "reason": "evicted_by_new_stream", "by_stream_id": "phone"}));
        assert_eq!(close_code(&mut tv).await, 4410);
        latencies.push(took);
    }
    latencies.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{what}: 20 take-overs on B reached the socket on A in {:.1} ms (median), {:.1} ms (max); all: {:?}",
        ms(&latencies[10]),
        ms(&latencies[19]),
        latencies.iter().map(|d| format!("{:.1}", ms(d))).collect::<Vec<_>>()
    );
}

/// A newer socket for the same stream on B replaces the one on A: the
/// older one is told, and its close leaves the newer one's seat alone.
async fn a_replaced_socket_keeps_its_hands_off(a: &Process, b: &Process, what: &str) {
    let user = format!("{what}-replaced");
    let (mut older, _) = held_at(&ws_url(a, &socket(&user, "tv"))).await;
    let asked = Instant::now();
    let (newer, granted) = held_at(&ws_url(b, &socket(&user, "tv"))).await;
    assert_eq!(granted["stream_id"], "tv");
    let (revoked, _) = revoked_within(&mut older, asked).await;
    assert_eq!(revoked, json!({"type": "revoked", "reason": "replaced", "by_stream_id": "tv"}));
    assert_eq!(close_code(&mut older).await, 4410);
    drop(older);
    // The older socket is gone; the seat is still the newer one's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live(a, &user).await, ["tv"]);
    let (status, _) = put(a, &format!("/v1/users/{user}/streams/phone"), json!({})).await;
    assert_eq!(status, 409, "the seat is taken");
    stop(newer).await;
    assert!(live(a, &user).await.is_empty(), "the newer socket's close frees it");
}

/// A revoke-all on B reaches the socket on A.
async fn a_revoke_all_reaches_the_other_instance(a: &Process, b: &Process, what: &str) {
    let user = format!("{what}-revoked");
    let (mut tv, _) = held_at(&ws_url(a, &socket(&user, "tv"))).await;
    let asked = Instant::now();
    let r = reqwest::Client::new().delete(format!("{}/v1/users/{user}/streams", b.base)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"revoked": ["tv"]}));
    let (revoked, _) = revoked_within(&mut tv, asked).await;
    assert_eq!(revoked, json!({"type": "revoked", "reason": "revoked", "by_stream_id": null}));
    assert_eq!(close_code(&mut tv).await, 4410);
}

/// Each instance names itself in its start line and in `/readyz`, and the
/// two names differ.
async fn instances_name_themselves(a: &Process, b: &Process) -> [String; 2] {
    let mut names = Vec::new();
    for p in [a, b] {
        let ready = get(p, "/readyz").await;
        let name = ready["instance"].as_str().unwrap().to_owned();
        assert!(p.log().contains(&format!("instance={name}")), "the start line names {name}: {}", p.log());
        names.push(name);
    }
    assert_ne!(names[0], names[1]);
    [names.remove(0), names.remove(0)]
}

async fn everything(a: &Process, b: &Process, what: &str) {
    instances_name_themselves(a, b).await;
    let (sent, received) = ("streamcap_pushes_total{event=\"sent\"}", "streamcap_pushes_total{event=\"received\"}");
    let before = (metric(b, sent).await, metric(a, received).await);
    take_overs_reach_the_other_instance(a, b, what).await;
    a_replaced_socket_keeps_its_hands_off(a, b, what).await;
    a_revoke_all_reaches_the_other_instance(a, b, what).await;
    // 20 take-overs, one replacement and one revocation, each one notice.
    assert_eq!(metric(b, sent).await - before.0, 22.0);
    assert_eq!(metric(a, received).await - before.1, 22.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_reach_sockets_across_instances_on_standalone_redis() {
    let redis = RedisServer::start(&[]);
    let store = standalone(&redis);
    let (a, b) = (start(&store), start(&store));
    everything(&a, &b, "standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_reach_sockets_across_instances_on_a_cluster() {
    let redis = RedisCluster::start(3, 1);
    let store = cluster(&redis);
    let (a, b) = (start(&store), start(&store));
    everything(&a, &b, "cluster").await;
}

/// Redis restarts under two instances: each reconnects and listens again
/// by itself, and a take-over on B reaches a socket on A as before. An
/// instance that is gone (killed with its socket's lease still in Redis)
/// makes a notice to it count as dropped, and the take-over is answered
/// as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_survive_a_redis_restart_and_a_dead_instance_drops_them() {
    let mut redis = RedisServer::start(&[]);
    let port = redis.port;
    let store = standalone(&redis);
    let (a, b) = (start(&store), start(&store));
    let [name_a, _] = instances_name_themselves(&a, &b).await;
    let channel = format!("sc:push:{{{name_a}}}");
    redis.kill9();
    let redis = RedisServer::start_on(port, &[]);
    // Both serve again, and A listens again: PUBSUB NUMSUB counts it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in [&a, &b] {
        while reqwest::get(format!("{}/readyz", p.base)).await.unwrap().status() != 200 {
            assert!(Instant::now() < deadline, "no recovery: {}", p.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while redis.cli(&["PUBSUB", "NUMSUB", &channel]).lines().nth(1) != Some("1") {
        assert!(Instant::now() < deadline, "A did not subscribe again: {}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    take_overs_reach_the_other_instance(&a, &b, "after-restart").await;

    // A dies with a socket's lease in Redis; B's take-over tells nobody.
    let (_tv, _) = held_at(&ws_url(&a, &socket("gone", "tv"))).await;
    a.kill9();
    let dropped = "streamcap_pushes_total{event=\"dropped\"}";
    let before = metric(&b, dropped).await;
    let (status, _) = put(&b, "/v1/users/gone/streams/phone", json!({"evict": ["tv"]})).await;
    assert_eq!(status, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&b, dropped).await < before + 1.0 {
        assert!(Instant::now() < deadline, "the notice to a dead instance was not counted as dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
