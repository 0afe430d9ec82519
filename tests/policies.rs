//! Policies end to end over real HTTP, against every store: plans,
//! per-user overrides, evict-oldest, take-over, revocation and shadow mode.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Reply, STORES, Server};
use serde_json::{Value, json};
use streamcap::limiter::{Limit, OnLimit, Ttl};
use streamcap::policy::{Plan, Policy};
use streamcap::store::StoreKind;

/// default 3; basic = 1 (evict_oldest), standard = 2, premium = 4.
fn policy(on_limit: OnLimit, enforce: bool) -> Policy {
    let mut p = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
    p.on_limit = on_limit;
    p.enforce = enforce;
    let plan = |n, on_limit| Plan { limit: Limit::new(n).unwrap(), on_limit };
    p.plans.insert("basic".into(), plan(1, OnLimit::EvictOldest));
    p.plans.insert("standard".into(), plan(2, on_limit));
    p.plans.insert("premium".into(), plan(4, on_limit));
    p
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|l| l["stream_id"].as_str().unwrap().to_owned())
        .collect()
}

fn s(user: &str, stream: &str) -> String {
    format!("/v1/users/{user}/streams/{stream}")
}

async fn live(srv: &Server, user: &str) -> Vec<String> {
    ids(&srv.get(&format!("/v1/users/{user}/streams")).await.json()["active_streams"])
}

#[tokio::test]
async fn plans_choose_the_limit_and_unknown_plans_are_400() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::Reject, true)).await;
        let premium = json!({"plan": "premium"});
        for i in 0..4 {
            let r = srv.put(&s("p", &format!("s{i}")), Some(premium.clone())).await;
            assert_eq!(r.status, 201, "{kind:?} {r:?}");
            assert_eq!(r.json()["limit"], 4);
        }
        srv.put(&s("p", "s4"), Some(premium)).await.assert_problem(409, "stream-limit-reached");
        // Without a plan the default applies.
        assert_eq!(srv.put(&s("d", "a"), None).await.json()["limit"], 3);

        let p = srv.put(&s("p", "x"), Some(json!({"plan": "gold"}))).await.assert_problem(400, "invalid-request");
        assert!(p["detail"].as_str().unwrap().contains("gold"), "{p}");
        srv.get("/v1/users/p/limit?plan=gold").await.assert_problem(400, "invalid-request");
        srv.get("/v1/users/p/streams?plan=gold").await.assert_problem(400, "invalid-request");
        assert_eq!(live(&srv, "p").await.len(), 4, "the 400s changed nothing");

        let r = srv.get("/v1/users/p/limit?plan=standard").await.json();
        assert_eq!(r, json!({"user_id": "p", "limit": 2, "source": "plan"}));
        let r = srv.get("/v1/users/p/limit").await.json();
        assert_eq!(r, json!({"user_id": "p", "limit": 3, "source": "default"}));
        assert_eq!(srv.get("/v1/users/p/streams?plan=premium").await.json()["limit"], 4);
    }
}

#[tokio::test]
async fn overrides_win_and_evict_nobody() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::EvictOldest, true)).await;
        for st in ["a", "b", "c"] {
            assert_eq!(srv.put(&s("o", st), None).await.status, 201);
        }
        let r = srv.client.put(srv.url("/v1/users/o/limit")).json(&json!({"limit": 1})).send().await.unwrap();
        let r = Reply::from(r).await;
        assert_eq!((r.status, r.json()), (200, json!({"user_id": "o", "limit": 1, "source": "override"})));
        // The override beats the plan too.
        let got = srv.get("/v1/users/o/limit?plan=premium").await.json();
        assert_eq!(got, json!({"user_id": "o", "limit": 1, "source": "override"}));

        // Lowering evicts nobody; new streams wait, even under evict_oldest.
        assert_eq!(live(&srv, "o").await, ["a", "b", "c"]);
        let p =
            srv.put(&s("o", "d"), Some(json!({"plan": "premium"}))).await.assert_problem(409, "stream-limit-reached");
        assert_eq!(p["limit"], 1);
        assert_eq!(srv.put(&s("o", "b"), None).await.status, 200, "live streams keep renewing");
        for st in ["a", "b"] {
            assert_eq!(srv.delete(&s("o", st)).await.status, 204);
        }
        assert_eq!(srv.put(&s("o", "d"), None).await.status, 201, "exactly full: evict_oldest makes room");
        assert_eq!(live(&srv, "o").await, ["d"]);

        let r = srv.delete("/v1/users/o/limit").await;
        assert_eq!((r.status, r.text.as_str()), (204, ""));
        assert_eq!(srv.delete("/v1/users/o/limit").await.status, 204, "idempotent");
        assert_eq!(srv.get("/v1/users/o/limit").await.json()["source"], "default");

        // Bad override bodies are 400 and change nothing.
        let url = srv.url("/v1/users/o/limit");
        for body in [json!({"limit": 1001}), json!({"limit": -1}), json!({"limit": "5"}), json!({}), json!({"lmit": 2})]
        {
            let r = Reply::from(srv.client.put(&url).json(&body).send().await.unwrap()).await;
            r.assert_problem(400, "invalid-request");
        }
        srv.put("/v1/users/o/limit", None).await.assert_problem(400, "invalid-request");
        assert_eq!(srv.get("/v1/users/o/limit").await.json()["source"], "default");
        // 0 is a valid override: the account may start nothing new.
        let r = Reply::from(srv.client.put(&url).json(&json!({"limit": 0})).send().await.unwrap()).await;
        assert_eq!(r.status, 200);
        srv.put(&s("o", "e"), None).await.assert_problem(409, "stream-limit-reached");
    }
}

#[tokio::test]
async fn evict_oldest_grants_and_the_evicted_player_gets_410() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::Reject, true)).await;
        let basic = json!({"plan": "basic", "device_id": "tv"});
        assert_eq!(srv.put(&s("e", "old"), Some(basic.clone())).await.status, 201);
        let r = srv.put(&s("e", "new"), Some(json!({"plan": "basic"}))).await;
        assert_eq!(r.status, 201, "{r:?}");
        let body = r.json();
        assert_eq!(ids(&body["evicted"]), ["old"]);
        assert_eq!(body["evicted"][0]["device_id"], "tv");
        assert_eq!(body["active_streams"], 1);

        // The old player's next heartbeat learns it was stopped, and by whom.
        let p = srv.put(&s("e", "old"), Some(basic)).await.assert_problem(410, "stream-revoked");
        assert_eq!(p["reason"], "evicted_by_new_stream");
        assert_eq!(p["by_stream_id"], "new");
        assert_eq!(live(&srv, "e").await, ["new"]);
        // A release of a stream that has no lease changes nothing, tombstone included.
        assert_eq!(srv.delete(&s("e", "old")).await.status, 204);
        srv.put(&s("e", "old"), None).await.assert_problem(410, "stream-revoked");
        // Without evictions there is no `evicted` field.
        assert!(srv.put(&s("e2", "x"), None).await.json().get("evicted").is_none());
    }
}

#[tokio::test]
async fn take_over_is_atomic_and_all_or_nothing() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::Reject, true)).await;
        for st in ["a", "b", "c"] {
            srv.put(&s("t", st), None).await;
        }
        srv.put(&s("other", "z"), None).await;

        // Unknown, foreign and non-live ids free nothing: 409, nothing changes.
        let r = srv.put(&s("t", "d"), Some(json!({"evict": ["nope", "z"]}))).await;
        let p = r.assert_problem(409, "stream-limit-reached");
        assert_eq!(ids(&p["active_streams"]), ["a", "b", "c"]);
        assert_eq!(live(&srv, "t").await, ["a", "b", "c"]);
        assert_eq!(live(&srv, "other").await, ["z"], "another user's stream is never touched");

        let r = srv.put(&s("t", "d"), Some(json!({"evict": ["b", "nope"], "device_id": "phone"}))).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(ids(&r.json()["evicted"]), ["b"]);
        assert_eq!(live(&srv, "t").await, ["a", "c", "d"]);
        let p = srv.put(&s("t", "b"), None).await.assert_problem(410, "stream-revoked");
        assert_eq!(p["by_stream_id"], "d");

        let p = srv
            .put(&s("t", "e"), Some(json!({"evict": ["ok", "bad id"]})))
            .await
            .assert_problem(400, "invalid-request");
        assert!(p["detail"].as_str().unwrap().contains("evict"), "{p}");
        srv.put(&s("t", "e"), Some(json!({"evict": "a"}))).await.assert_problem(400, "invalid-request");
        assert_eq!(live(&srv, "t").await, ["a", "c", "d"]);
    }
}

#[tokio::test]
async fn revoke_all_leaves_tombstones_but_release_does_not() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::Reject, true)).await;
        for st in ["a", "b"] {
            srv.put(&s("r", st), None).await;
        }
        srv.put(&s("r", "released"), None).await;
        assert_eq!(srv.delete(&s("r", "released")).await.status, 204);
        assert_eq!(srv.put(&s("r", "released"), None).await.status, 201, "a released stream may start again");

        let r = srv.delete("/v1/users/r/streams").await;
        assert_eq!((r.status, r.json()), (200, json!({"revoked": ["a", "b", "released"]})));
        assert_eq!(srv.delete("/v1/users/r/streams").await.json(), json!({"revoked": []}));
        assert!(live(&srv, "r").await.is_empty());
        for st in ["a", "b", "released"] {
            let p = srv.put(&s("r", st), None).await.assert_problem(410, "stream-revoked");
            assert_eq!(p["reason"], "revoked");
            assert!(p.get("by_stream_id").is_none(), "{p}");
        }
        assert_eq!(srv.put(&s("r", "fresh"), None).await.status, 201, "new streams are welcome");
    }
}

#[tokio::test]
async fn shadow_mode_never_denies_or_evicts_and_says_so() {
    for kind in STORES {
        let srv = Server::with_policy(kind, policy(OnLimit::Reject, false)).await;
        for (i, st) in ["a", "b", "c"].into_iter().enumerate() {
            let b = srv.put(&s("sh", st), None).await.json();
            assert_eq!((b["enforced"].clone(), b["would_deny"].clone()), (json!(false), json!(false)));
            assert_eq!(b["active_streams"], i + 1);
        }
        let r = srv.put(&s("sh", "d"), None).await;
        assert_eq!(r.status, 201);
        let b = r.json();
        assert_eq!((b["would_deny"].clone(), b["active_streams"].clone()), (json!(true), json!(4)));
        // Renewals are not denials.
        assert_eq!(srv.put(&s("sh", "d"), None).await.json()["would_deny"], false);

        // evict_oldest (the basic plan) would evict, but does not.
        srv.put(&s("shb", "one"), Some(json!({"plan": "basic"}))).await;
        let b = srv.put(&s("shb", "two"), Some(json!({"plan": "basic"}))).await.json();
        assert!(b.get("evicted").is_none(), "{b}");
        assert_eq!(b["would_evict"], json!(["one"]));
        assert_eq!(live(&srv, "shb").await, ["one", "two"]);
        assert_eq!(srv.put(&s("shb", "one"), None).await.status, 200, "no tombstone in shadow mode");
    }
    // With enforcement on, bodies say so and carry no would_* fields.
    let srv = Server::with_policy(StoreKind::Memory, policy(OnLimit::Reject, true)).await;
    let b = srv.put(&s("en", "a"), None).await.json();
    assert_eq!(b["enforced"], true);
    assert!(b.get("would_deny").is_none() && b.get("would_evict").is_none(), "{b}");
}

/// 64 concurrent requests for one user, half taking over a named stream and
/// half relying on evict_oldest: the user never ends above the limit, and
/// every 201 is accounted for as either still live or reported evicted.
#[tokio::test]
async fn concurrent_take_overs_and_evictions_keep_the_limit() {
    for kind in STORES {
        for on_limit in [OnLimit::EvictOldest, OnLimit::Reject] {
            let srv = Server::with_policy(kind, policy(on_limit, true)).await;
            let user = "crowd";
            let mut set = tokio::task::JoinSet::new();
            for i in 0..64 {
                let url = srv.url(&s(user, &format!("s{i}")));
                let body = if i % 2 == 0 {
                    json!({})
                } else {
                    json!({"evict": [format!("s{}", i - 1), format!("s{}", i - 3)]})
                };
                set.spawn(async move {
                    let r = reqwest::Client::new().put(url).json(&body).send().await.unwrap();
                    (i, Reply::from(r).await)
                });
            }
            let mut granted = BTreeSet::new();
            let mut evicted = BTreeSet::new();
            let mut statuses = BTreeMap::new();
            while let Some(r) = set.join_next().await {
                let (i, r) = r.unwrap();
                if on_limit == OnLimit::EvictOldest && i % 2 == 0 {
                    assert_eq!(r.status, 201, "evict_oldest never refuses a plain acquire here: {r:?}");
                }
                *statuses.entry(r.status).or_insert(0) += 1;
                match r.status {
                    201 => {
                        let b = r.json();
                        granted.insert(b["stream_id"].as_str().unwrap().to_owned());
                        assert!(b["active_streams"].as_u64().unwrap() <= 3, "{b}");
                        for e in ids(b.get("evicted").unwrap_or(&json!([]))) {
                            assert!(evicted.insert(e.clone()), "{e} evicted twice");
                        }
                    }
                    409 => {
                        r.assert_problem(409, "stream-limit-reached");
                    }
                    other => panic!("unexpected {other}: {r:?}"),
                }
            }
            let now_live: BTreeSet<String> = live(&srv, user).await.into_iter().collect();
            assert!(now_live.len() <= 3, "{kind:?} {on_limit:?}: {now_live:?}");
            assert!(evicted.is_subset(&granted), "only granted streams can be evicted");
            let accounted: BTreeSet<String> = now_live.union(&evicted).cloned().collect();
            assert_eq!(accounted, granted, "{kind:?} {on_limit:?} {statuses:?}");
            assert!(now_live.is_disjoint(&evicted));
        }
    }
}

const HS_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes";
const SERVICE_KEY: &str = "sticky-backend-key";

/// A player token for `user`, with a plan claim when `plan` is given.
fn token(user: &str, plan: Option<&str>) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let mut claims = json!({"sub": user, "exp": exp});
    if let Some(p) = plan {
        claims["plan"] = json!(p);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

/// JWTs for players and one service API key, which may name plans.
async fn sticky_server(kind: StoreKind) -> Server {
    use sha2::{Digest, Sha256};
    use streamcap::auth::{ApiKey, KeyScope};
    let key = ApiKey { name: "backend".into(), sha256: Sha256::digest(SERVICE_KEY).into(), scope: KeyScope::Service };
    let auth = common::hs256_auth(HS_SECRET, vec![key]);
    let protection = streamcap::policy::Protection::unlimited();
    Server::with_everything(kind, policy(OnLimit::Reject, true), auth, protection).await
}

async fn put_as(srv: &Server, path: &str, credential: &str, body: Value, if_match: Option<&str>) -> Reply {
    let mut req = srv.client.put(srv.url(path)).bearer_auth(credential).json(&body);
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    Reply::from(req.send().await.unwrap()).await
}

async fn live_as_service(srv: &Server, user: &str) -> Vec<String> {
    let r = srv.client.get(srv.url(&format!("/v1/users/{user}/streams"))).bearer_auth(SERVICE_KEY).send().await;
    ids(&Reply::from(r.unwrap()).await.json()["active_streams"])
}

#[tokio::test]
async fn a_lease_keeps_its_plan_unless_a_token_names_one() {
    for kind in STORES {
        let srv = sticky_server(kind).await;
        let svc = |path: String, body: Value| {
            let srv = &srv;
            async move { put_as(srv, &path, SERVICE_KEY, body, None).await }
        };
        // The backend starts a premium (4) stream for u; the default is 3.
        let r = svc(s("u", "s1"), json!({"plan": "premium"})).await;
        assert_eq!((r.status, r.json()["limit"].clone()), (201, json!(4)), "{kind:?} {r:?}");
        // A heartbeat that forgets the plan is still judged as premium.
        let r = svc(s("u", "s1"), json!({})).await;
        assert_eq!((r.status, r.json()["limit"].clone()), (200, json!(4)), "{kind:?} {r:?}");
        // New streams that name no plan take the newest live lease's.
        for st in ["s2", "s3", "s4"] {
            let r = svc(s("u", st), json!({})).await;
            assert_eq!((r.status, r.json()["limit"].clone()), (201, json!(4)), "{kind:?} {st} {r:?}");
        }
        let p = svc(s("u", "s5"), json!({})).await.assert_problem(409, "stream-limit-reached");
        assert_eq!(p["limit"], 4, "{kind:?} {p}");
        // A player token without a plan claim inherits it too.
        let r = put_as(&srv, "/v1/me/streams/s1", &token("u", None), json!({}), None).await;
        assert_eq!((r.status, r.json()["limit"].clone()), (200, json!(4)), "{kind:?} {r:?}");
        // A token's plan claim wins over the lease's plan: basic (1).
        let basic = token("u", Some("basic"));
        let r = put_as(&srv, "/v1/me/streams/s2", &basic, json!({}), None).await;
        assert_eq!((r.status, r.json()["limit"].clone()), (200, json!(1)), "{kind:?} {r:?}");
        let p = put_as(&srv, "/v1/me/streams/t", &basic, json!({}), None).await;
        assert_eq!(p.assert_problem(409, "stream-limit-reached")["limit"], 1, "{kind:?}");
        // The basic renewal re-stamped s2, but the newest lease (s4) is premium.
        let r = svc(s("u", "s2"), json!({})).await;
        assert_eq!(r.json()["limit"], 1, "{kind:?}: s2's own plan is now basic: {r:?}");
        assert_eq!(live_as_service(&srv, "u").await, ["s1", "s2", "s3", "s4"], "{kind:?}");
    }
}

#[tokio::test]
async fn if_match_star_renews_a_held_lease_and_never_starts_one() {
    for kind in STORES {
        let srv = sticky_server(kind).await;
        let held = |path: String, tag: &'static str| {
            let srv = &srv;
            async move { put_as(srv, &path, SERVICE_KEY, json!({}), Some(tag)).await }
        };
        let p = held(s("h", "a"), "*").await.assert_problem(412, "lease-not-held");
        assert!(p["detail"].as_str().unwrap().contains("without If-Match"), "{kind:?} {p}");
        assert!(live_as_service(&srv, "h").await.is_empty(), "{kind:?}: a held request started nothing");
        assert_eq!(put_as(&srv, &s("h", "a"), SERVICE_KEY, json!({}), None).await.status, 201);
        assert_eq!(held(s("h", "a"), "*").await.status, 200, "{kind:?}");
        // streamcap issues no entity tags, so no other value ever matches.
        held(s("h", "a"), "\"v1\"").await.assert_problem(412, "lease-not-held");
        // A player's heartbeat may say so too.
        let r = put_as(&srv, "/v1/me/streams/a", &token("h", None), json!({}), Some("*")).await;
        assert_eq!(r.status, 200, "{kind:?} {r:?}");
    }
}
