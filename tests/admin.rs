//! The support console's API over real HTTP, against every store:
//! overrides with an expiry, stopping one stream, listings with sockets
//! and tombstones, and the audit of admin changes in the real binary's
//! log and metrics.

mod common;

use std::time::Duration;

use common::ws::{close_code, expect, held_at, socket};
use common::{Process, Reply, STORES, Server};
use serde_json::{Value, json};
use streamcap::clock::{Clock, SystemClock};
use streamcap::http::dto::rfc3339;
use streamcap::limiter::{Limit, OnLimit, Timestamp, Ttl};
use streamcap::policy::{Plan, Policy};
use streamcap::store::StoreKind;

/// default 2; standard = 3.
fn policy() -> Policy {
    let mut p = Policy::uniform(Limit::new(2).unwrap(), Ttl::from_secs(60).unwrap());
    p.plans.insert("standard".into(), Plan { limit: Limit::new(3).unwrap(), on_limit: OnLimit::Reject });
    p
}

fn s(user: &str, stream: &str) -> String {
    format!("/v1/users/{user}/streams/{stream}")
}

/// `ms` from now, as RFC 3339.
fn ahead(ms: i64) -> (Timestamp, String) {
    let at = Timestamp::from_micros(SystemClock.now().as_micros() + ms * 1000);
    (at, rfc3339(at))
}

async fn set_limit(srv: &Server, user: &str, body: Value) -> Reply {
    let r = srv.client.put(srv.url(&format!("/v1/users/{user}/limit"))).json(&body).send().await.unwrap();
    Reply::from(r).await
}

async fn post(srv: &Server, path: &str) -> Reply {
    Reply::from(srv.client.post(srv.url(path)).send().await.unwrap()).await
}

#[tokio::test]
async fn an_override_expiry_must_be_a_future_rfc3339_time_within_366_days() {
    let srv = Server::with_policy(StoreKind::Memory, policy()).await;
    let (_, past) = ahead(-1_000);
    let (_, too_far) = ahead(367 * 86_400 * 1000);
    for (expires_at, says) in [
        (json!(past), "not in the future"),
        (json!(too_far), "more than 366 days ahead"),
        (json!("next tuesday"), "not an RFC 3339 time"),
        (json!("2026-12-24"), "not an RFC 3339 time"),
        (json!(1_798_000_000), "must be a string"),
        (json!({"at": "2026-12-24T00:00:00Z"}), "must be a string"),
    ] {
        let body = json!({"limit": 4, "expires_at": expires_at});
        let p = set_limit(&srv, "u", body).await.assert_problem(400, "invalid-request");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.starts_with("expires_at") && detail.contains(says), "{expires_at}: {detail}");
    }
    // Nothing was set by any of them.
    assert_eq!(srv.get("/v1/users/u/limit").await.json(), json!({"user_id": "u", "limit": 2, "source": "default"}));
    // null is the same as leaving it out: an override for good.
    let r = set_limit(&srv, "n", json!({"limit": 4, "expires_at": null})).await;
    assert_eq!((r.status, r.json()), (200, json!({"user_id": "n", "limit": 4, "source": "override"})));
    // 366 days ahead is fine, and answered in microseconds, UTC.
    let (at, within) = ahead(366 * 86_400 * 1000 - 60_000);
    let r = set_limit(&srv, "u", json!({"limit": 4, "expires_at": within})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"user_id": "u", "limit": 4, "source": "override", "expires_at": rfc3339(at)}));
}

#[tokio::test]
async fn an_override_counts_until_its_expiry_then_the_plan_or_default_does_and_nobody_is_evicted() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy()).await;
        let (at, until) = ahead(2_000);
        let r = set_limit(&srv, "o", json!({"limit": 1, "expires_at": until})).await;
        let expected = json!({"user_id": "o", "limit": 1, "source": "override", "expires_at": rfc3339(at)});
        assert_eq!((r.status, r.json()), (200, expected.clone()), "{kind:?}");
        assert_eq!(srv.get("/v1/users/o/limit").await.json(), expected, "{kind:?}");
        assert_eq!(srv.get("/v1/users/o/limit?plan=standard").await.json(), expected, "{kind:?}");
        assert_eq!(srv.put(&s("o", "a"), None).await.status, 201, "{kind:?}");
        srv.put(&s("o", "b"), None).await.assert_problem(409, "stream-limit-reached");

        // Past it, the plan's limit or the default applies; a is still live.
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        let r = srv.get("/v1/users/o/limit").await.json();
        assert_eq!(r, json!({"user_id": "o", "limit": 2, "source": "default"}), "{kind:?}");
        let r = srv.get("/v1/users/o/limit?plan=standard").await.json();
        assert_eq!(r, json!({"user_id": "o", "limit": 3, "source": "plan"}), "{kind:?}");
        let list = srv.get("/v1/users/o/streams").await.json();
        assert_eq!((list["limit"].clone(), list["active_streams"][0]["stream_id"].clone()), (json!(2), json!("a")));
        assert_eq!(srv.put(&s("o", "b"), None).await.status, 201, "{kind:?}");
        srv.put(&s("o", "c"), None).await.assert_problem(409, "stream-limit-reached");

        // An override for good has no expires_at, and replaces one that ends.
        let (_, until) = ahead(60_000);
        assert_eq!(set_limit(&srv, "o", json!({"limit": 5, "expires_at": until})).await.status, 200);
        let r = set_limit(&srv, "o", json!({"limit": 5})).await.json();
        assert_eq!(r, json!({"user_id": "o", "limit": 5, "source": "override"}), "{kind:?}");
        assert_eq!(srv.get("/v1/users/o/limit").await.json(), r, "{kind:?}");
    }
}

#[tokio::test]
async fn stopping_one_stream_revokes_it_alone_and_the_listing_shows_its_tombstone() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy()).await;
        let body = json!({"device_id": "living-room", "device_class": "tv", "content_id": "film-1",
                          "content_kind": "vod", "plan": "standard"});
        assert_eq!(srv.put(&s("u", "tv"), Some(body)).await.status, 201, "{kind:?}");
        assert_eq!(srv.put(&s("u", "phone"), None).await.status, 201, "{kind:?}");

        let r = post(&srv, "/v1/users/u/streams/phone/revoke").await;
        assert_eq!((r.status, r.json()), (200, json!({"revoked": ["phone"]})), "{kind:?}");
        let r = post(&srv, "/v1/users/u/streams/phone/revoke").await;
        assert_eq!((r.status, r.json()), (200, json!({"revoked": []})), "{kind:?}");
        let r = post(&srv, "/v1/users/u/streams/never/revoke").await;
        assert_eq!((r.status, r.json()), (200, json!({"revoked": []})), "{kind:?}");
        srv.put(&s("u", "phone"), None).await.assert_problem(410, "stream-revoked");
        post(&srv, "/v1/users/u/streams/not%20an%20id/revoke").await.assert_problem(400, "invalid-request");

        let list = srv.get("/v1/users/u/streams").await.json();
        let tv = &list["active_streams"][0];
        assert_eq!(list["active_streams"].as_array().unwrap().len(), 1, "{kind:?} {list}");
        for (field, value) in [
            ("stream_id", "tv"),
            ("device_id", "living-room"),
            ("device_class", "tv"),
            ("content_id", "film-1"),
            ("content_kind", "vod"),
            ("plan", "standard"),
        ] {
            assert_eq!(tv[field], value, "{kind:?} {field}: {list}");
        }
        assert_eq!(tv["socket"], false, "{kind:?} {list}");
        // Granted just now with a 60 s TTL: renewed_at is expires_at - 60 s.
        let time = |v: &Value| streamcap::http::dto::parse_rfc3339(v.as_str().unwrap()).unwrap().as_micros();
        assert_eq!(time(&tv["expires_at"]) - time(&tv["renewed_at"]), 60_000_000, "{kind:?} {list}");
        assert_eq!(tv["started_at"], tv["renewed_at"], "{kind:?} {list}");
        let tombs = list["tombstones"].as_array().unwrap();
        assert_eq!(tombs.len(), 1, "{kind:?} {list}");
        assert_eq!(tombs[0]["stream_id"], "phone");
        // The mark lasts one TTL past the lease's former expiry.
        assert!(time(&tombs[0]["expires_at"]) > time(&tv["expires_at"]), "{kind:?} {list}");
        assert_eq!(tombs[0].as_object().unwrap().len(), 2, "no invented fields: {list}");
    }
}

#[tokio::test]
async fn stopping_a_socket_held_stream_tells_its_socket_here_and_on_another_instance() {
    let a = Server::with_policy(StoreKind::Redis, policy()).await;
    let b = Server::sharing_redis(&a, policy()).await;
    let (mut here, _) = held_at(&a.ws_url(&socket("w", "tv"))).await;
    let (mut there, _) = held_at(&a.ws_url(&socket("w", "laptop"))).await;
    let list = a.get("/v1/users/w/streams").await.json();
    let held: Vec<_> = list["active_streams"].as_array().unwrap().iter().map(|l| l["socket"].clone()).collect();
    assert_eq!(held, [true, true], "{list}");
    assert!(!list.to_string().contains("holder"), "{list}");

    let r = post(&a, "/v1/users/w/streams/tv/revoke").await;
    assert_eq!(r.json(), json!({"revoked": ["tv"]}));
    assert_eq!(
        expect(&mut here, "revoked").await,
        json!({"type": "revoked", "reason": "revoked", "by_stream_id": null})
    );
    assert_eq!(close_code(&mut here).await, 4410);

    // Stopped through the other instance, which holds no socket of it.
    let asked = std::time::Instant::now();
    let r = post(&b, "/v1/users/w/streams/laptop/revoke").await;
    assert_eq!(r.json(), json!({"revoked": ["laptop"]}));
    let m = expect(&mut there, "revoked").await;
    eprintln!("a stream stopped on B reached its socket on A {:?} after the POST was sent", asked.elapsed());
    assert_eq!(m, json!({"type": "revoked", "reason": "revoked", "by_stream_id": null}));
    assert_eq!(close_code(&mut there).await, 4410);
}

const ADMIN_KEY: &str = "sk-admin-console-0123456789";
const SERVICE_KEY: &str = "sk-service-backend-0123456789";

/// The real binary with an admin key named `support-desk` and a service
/// key: every admin change writes one audit line and counts once; a
/// refused attempt writes none.
#[test]
fn admin_changes_are_audited_in_the_log_and_counted() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let digest = |k: &str| Sha256::digest(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let config = dir.path().join("streamcap.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"memory\"\n\
             [[auth.api_keys]]\nname = \"support-desk\"\nsha256 = \"{}\"\nscope = \"admin\"\n\
             [[auth.api_keys]]\nname = \"backend\"\nsha256 = \"{}\"\nscope = \"service\"\n",
            digest(ADMIN_KEY),
            digest(SERVICE_KEY)
        ),
    )
    .unwrap();
    let p = Process::start(&["--config", config.to_str().unwrap()]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_, until) = ahead(3_600_000);
    rt.block_on(async {
        let c = reqwest::Client::new();
        let send = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
            let mut r = c.request(method, p.url(path)).bearer_auth(key);
            if let Some(b) = body {
                r = r.json(&b);
            }
            async move { r.send().await.unwrap().status().as_u16() }
        };
        use reqwest::Method;
        assert_eq!(send(Method::PUT, &s("ann", "tv"), SERVICE_KEY, None).await, 201);
        assert_eq!(send(Method::PUT, &s("ann", "phone"), SERVICE_KEY, None).await, 201);
        let set = Some(json!({"limit": 4, "expires_at": until}));
        assert_eq!(send(Method::PUT, "/v1/users/ann/limit", ADMIN_KEY, set.clone()).await, 200);
        // A service key may not: refused, and not audited.
        assert_eq!(send(Method::PUT, "/v1/users/ann/limit", SERVICE_KEY, set).await, 403);
        assert_eq!(send(Method::DELETE, "/v1/users/ann/limit", ADMIN_KEY, None).await, 204);
        assert_eq!(send(Method::POST, "/v1/users/ann/streams/tv/revoke", ADMIN_KEY, None).await, 200);
        assert_eq!(send(Method::POST, "/v1/users/ann/streams/tv/revoke", SERVICE_KEY, None).await, 403);
        assert_eq!(send(Method::DELETE, "/v1/users/ann/streams", ADMIN_KEY, None).await, 200);
    });
    let metrics = rt.block_on(async { reqwest::get(p.url("/metrics")).await.unwrap().text().await.unwrap() });
    let (_, log) = p.terminate();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("streamcap::audit")).collect();
    for line in &audit {
        eprintln!("{line}");
    }
    assert_eq!(audit.len(), 4, "one line per admin change:\n{log}");
    for (line, action, detail) in [
        (audit[0], "set_override", format!("limit=4 expires_at={until}")),
        (audit[1], "clear_override", String::new()),
        (audit[2], "revoke_stream", "stream=tv revoked=1".to_owned()),
        (audit[3], "revoke_all", "revoked=1".to_owned()),
    ] {
        for needle in [
            "INFO".to_owned(),
            "actor=\"support-desk\"".to_owned(),
            "actor_kind=\"api_key\"".to_owned(),
            "user=ann".to_owned(),
            format!("action=\"{action}\""),
            "outcome=\"ok\"".to_owned(),
            format!("detail=\"{detail}\""),
        ] {
            assert!(line.contains(&needle), "{needle} not in {line}");
        }
        assert!(!line.contains(ADMIN_KEY) && !line.contains(SERVICE_KEY), "{line}");
    }
    for action in ["set_override", "clear_override", "revoke_stream", "revoke_all"] {
        let series = format!("streamcap_admin_actions_total{{action=\"{action}\",outcome=\"ok\"}} 1");
        assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
    }
    let admin: Vec<&str> = metrics.lines().filter(|l| l.starts_with("streamcap_admin_actions_total{")).collect();
    assert_eq!(admin.len(), 4, "{admin:?}");
    assert!(admin.iter().all(|l| !l.contains("ann") && !l.contains("support-desk")), "{admin:?}");
}

/// A player lists its own streams with the same shape, and a token with the
/// admin scope is an admin whose `sub` an audit line would name: it may
/// stop a stream, which a plain player token may not.
#[tokio::test]
async fn a_player_s_own_listing_has_the_same_shape_and_only_admins_stop_streams() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    const SECRET: &str = "an-hs256-test-secret-of-at-least-32-bytes!";
    let auth = common::hs256_auth(SECRET, Vec::new());
    let protection = streamcap::policy::Protection::unlimited();
    let srv = Server::with_everything(StoreKind::Memory, policy(), auth, protection).await;
    let exp = SystemClock.now().as_millis() / 1000 + 300;
    let token =
        |claims: Value| encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let player = token(json!({"sub": "pia", "exp": exp}));
    let support = token(json!({"sub": "support-7", "exp": exp, "scope": "streams:admin"}));
    let call = |method: reqwest::Method, path: &str, bearer: &str| {
        let r = srv.client.request(method, srv.url(path)).bearer_auth(bearer);
        async move { Reply::from(r.send().await.unwrap()).await }
    };
    use reqwest::Method;
    assert_eq!(call(Method::PUT, "/v1/me/streams/tv", &player).await.status, 201);
    assert_eq!(call(Method::PUT, "/v1/me/streams/phone", &player).await.status, 201);
    call(Method::POST, "/v1/users/pia/streams/phone/revoke", &player).await.assert_problem(403, "forbidden");
    let r = call(Method::POST, "/v1/users/pia/streams/phone/revoke", &support).await;
    assert_eq!((r.status, r.json()), (200, json!({"revoked": ["phone"]})));
    let mine = call(Method::GET, "/v1/me/streams", &player).await.json();
    assert_eq!(mine["active_streams"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(
        (mine["active_streams"][0]["stream_id"].clone(), mine["active_streams"][0]["socket"].clone()),
        (json!("tv"), json!(false))
    );
    assert_eq!(mine["tombstones"][0]["stream_id"], "phone", "{mine}");
    let theirs = call(Method::GET, "/v1/users/pia/streams", &support).await.json();
    assert_eq!(mine, theirs);
}
