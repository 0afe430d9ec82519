//! The order of a request's checks, over real HTTP against the real
//! binary: authentication first (401), then the request's validity (400),
//! then the caller's rights (403), and only then the preconditions
//! (`If-Match`: 412) and the WebSocket upgrade (426). A request that fails
//! several checks gets the first one's answer. Each case here is one
//! schemathesis once found answered out of order.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Process, Reply};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

const SECRET: &str = "an-order-test-secret-of-at-least-32-bytes";
const ADMIN_KEY: &str = "order-test-admin-key-0123456789";

/// A server with player tokens (HS256) and an admin key; the config file
/// lives as long as the directory.
fn with_auth() -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let digest: String = Sha256::digest(ADMIN_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let config = dir.path().join("streamcap.toml");
    let text = format!(
        "store = \"memory\"\n[auth]\nmode = \"jwt\"\njwt_secret_file = \"{}\"\n\
         [[auth.api_keys]]\nname = \"admin\"\nsha256 = \"{digest}\"\nscope = \"admin\"\n",
        secret.display()
    );
    std::fs::write(&config, text).unwrap();
    (Process::start(&["--config", config.to_str().unwrap()]), dir)
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp}), &key).unwrap()
}

async fn send(server: &Process, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.request(method, server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_owned());
    }
    Reply::from(req.send().await.unwrap()).await
}

#[tokio::test]
async fn an_empty_or_malformed_if_match_is_a_400_before_any_precondition() {
    let open = Process::start(&["--store", "memory"]);
    let unknown_field = Some(r#"{"no_such_field": 1}"#);
    // The case schemathesis found: an empty If-Match and an unknown field.
    let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "")], unknown_field).await;
    r.assert_problem(400, "invalid-request");
    for bad in ["", " ", ",", "abc", "\"unterminated", "*, \"a\"", "W/*"] {
        let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", bad)], None).await;
        let body = r.assert_problem(400, "invalid-request");
        assert!(body["detail"].as_str().unwrap().contains("If-Match"), "{bad:?}: {body}");
    }
    // A well-formed entity tag never matches (streamcap issues none): 412,
    // but only for a request that is otherwise valid.
    let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "\"v1\"")], unknown_field).await;
    r.assert_problem(400, "invalid-request");
    let long = format!(r#"{{"device_id": "{}"}}"#, "d".repeat(300));
    let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "\"v1\"")], Some(&long)).await;
    r.assert_problem(400, "invalid-request");
    let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "\"v1\"")], None).await;
    r.assert_problem(412, "lease-not-held");
    // `*` on a stream without a lease is a 412 too, from the rules; and
    // with the lease, a renewal.
    let r = send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "*")], None).await;
    r.assert_problem(412, "lease-not-held");
    assert_eq!(send(&open, Method::PUT, "/v1/users/0/streams/0", &[], None).await.status, 201);
    assert_eq!(send(&open, Method::PUT, "/v1/users/0/streams/0", &[("if-match", "*")], None).await.status, 200);
    // Nothing about If-Match was granted or refused by the store: one lease.
    let list = send(&open, Method::GET, "/v1/users/0/streams", &[], None).await.json();
    assert_eq!(list["active_streams"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn a_me_route_without_a_user_token_is_a_401_whatever_else_is_wrong() {
    let open = Process::start(&["--store", "memory"]);
    let (authed, _dir) = with_auth();
    for server in [&open, &authed] {
        // The case schemathesis found: no credential and an empty If-Match.
        let r = send(server, Method::PUT, "/v1/me/streams/0", &[("if-match", "")], None).await;
        r.assert_problem(401, "unauthorized");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{r:?}");
        let r = send(server, Method::PUT, "/v1/me/streams/0", &[("if-match", "\"v1\"")], Some("{\"x\":1}")).await;
        r.assert_problem(401, "unauthorized");
        let r = send(server, Method::PUT, "/v1/me/streams/bad%20id", &[], Some("not json")).await;
        r.assert_problem(401, "unauthorized");
        for (method, path) in
            [(Method::GET, "/v1/me/streams?plan=no-such-plan"), (Method::DELETE, "/v1/me/streams/a%20b")]
        {
            send(server, method, path, &[], None).await.assert_problem(401, "unauthorized");
        }
    }
    // An API key has no user of its own: 403, before the request is read.
    let admin = format!("Bearer {ADMIN_KEY}");
    let r = send(&authed, Method::PUT, "/v1/me/streams/0", &[("authorization", &admin), ("if-match", "")], None).await;
    r.assert_problem(403, "forbidden");
    // A user's token gets the request read: the empty If-Match is a 400.
    let user = format!("Bearer {}", token("alice"));
    let r = send(&authed, Method::PUT, "/v1/me/streams/0", &[("authorization", &user), ("if-match", "")], None).await;
    r.assert_problem(400, "invalid-request");
    let r = send(&authed, Method::PUT, "/v1/me/streams/0", &[("authorization", &user)], None).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test]
async fn a_socket_request_that_is_not_an_upgrade_is_checked_before_its_426() {
    let open = Process::start(&["--store", "memory"]);
    let (authed, _dir) = with_auth();
    let user = format!("Bearer {}", token("alice"));
    let long = "x".repeat(129);
    for (server, path, auth) in [
        (&open, "/v1/users/0/streams/0/socket", None),
        (&authed, "/v1/users/alice/streams/0/socket", Some(user.as_str())),
        (&authed, "/v1/me/streams/0/socket", Some(user.as_str())),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        // The cases schemathesis found: over-long labels are a 400, not a 426.
        for field in ["device_id", "content_id", "device_class"] {
            let r = send(server, Method::GET, &format!("{path}?{field}={long}"), &headers, None).await;
            let body = r.assert_problem(400, "invalid-request");
            assert!(body["detail"].as_str().unwrap().contains(field), "{path} {field}: {body}");
        }
        let r = send(server, Method::GET, &format!("{path}?evict=a%20b"), &headers, None).await;
        r.assert_problem(400, "invalid-request");
        // Subprotocols without streamcap.v1 cannot be answered: 400.
        let mut offered = headers.clone();
        offered.push(("sec-websocket-protocol", "chat"));
        send(server, Method::GET, path, &offered, None).await.assert_problem(400, "invalid-request");
        // A valid request that is no upgrade: 426, saying how to connect.
        let r = send(server, Method::GET, &format!("{path}?device_id=tv"), &headers, None).await;
        r.assert_problem(426, "upgrade-required");
        assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
    }
    // Authentication comes first, on both routes.
    let long_query = format!("?device_id={long}");
    for path in ["/v1/users/alice/streams/0/socket", "/v1/me/streams/0/socket"] {
        let r = send(&authed, Method::GET, &format!("{path}{long_query}"), &[], None).await;
        r.assert_problem(401, "unauthorized");
        let bad = [("authorization", "Bearer not-a-token")];
        send(&authed, Method::GET, &format!("{path}{long_query}"), &bad, None)
            .await
            .assert_problem(401, "unauthorized");
    }
    // Then the caller's rights: another user's streams are not alice's.
    let r = send(&authed, Method::GET, "/v1/users/bob/streams/0/socket", &[("authorization", &user)], None).await;
    r.assert_problem(403, "forbidden");
    // The /v1/me socket needs a user: an API key gets 403, in open mode 401.
    let admin = format!("Bearer {ADMIN_KEY}");
    let r = send(&authed, Method::GET, "/v1/me/streams/0/socket", &[("authorization", &admin)], None).await;
    r.assert_problem(403, "forbidden");
    send(&open, Method::GET, "/v1/me/streams/0/socket", &[], None).await.assert_problem(401, "unauthorized");
    // None of it acquired anything.
    let list = send(&authed, Method::GET, "/v1/users/alice/streams", &[("authorization", &admin)], None).await.json();
    assert_eq!(list["active_streams"], json!([]), "{list}");
}
