//! The OpenAPI document: committed copy is current, it is served, and it
//! matches exactly the routes and methods the router serves.

mod common;

use std::collections::BTreeSet;

use common::{Reply, Server};
use serde_json::Value;
use streamcap::store::StoreKind;

const COMMITTED: &str = include_str!("../docs/openapi.json");
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

fn generated() -> String {
    streamcap::http::openapi().to_pretty_json().unwrap()
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    assert!(
        COMMITTED.trim_end() == generated().trim_end(),
        "docs/openapi.json is stale; regenerate it with:\n    cargo run -- openapi > docs/openapi.json"
    );
}

fn documented() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(&generated()).unwrap();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            out.push((path.clone(), method.to_uppercase()));
        }
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{user_id}", "doc-user").replace("{stream_id}", "doc-stream")
}

async fn send(s: &Server, method: &str, path: &str) -> Reply {
    Reply::from(s.client.request(method.parse().unwrap(), s.url(path)).send().await.unwrap()).await
}

#[tokio::test]
async fn the_router_serves_exactly_the_documented_routes() {
    let s = Server::start(StoreKind::Memory, 3, 60).await;
    let documented = documented();
    assert_eq!(documented.len(), 17, "{documented:?}");
    let paths: BTreeSet<&str> = documented.iter().map(|(p, _)| p.as_str()).collect();
    for path in paths {
        for method in METHODS {
            let r = send(&s, method, &concrete(path)).await;
            let is_documented = documented.iter().any(|(p, m)| p == path && m == method);
            if is_documented {
                // /v1/me needs a user token here, so 401 is the route
                // answering; a WebSocket route answers a plain GET with 426.
                assert!(![404, 405].contains(&r.status), "{method} {path} is documented but not served: {r:?}");
            } else {
                assert_eq!(r.status, 405, "{method} {path} is served but not documented: {r:?}");
            }
        }
    }
    // The document is served too, and is the same document.
    let served = send(&s, "GET", "/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), serde_json::from_str::<Value>(&generated()).unwrap());
    assert!(served.json()["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[test]
fn bodies_problems_and_auth_are_documented() {
    let doc: Value = serde_json::from_str(&generated()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "AcquireBody",
        "LeaseBody",
        "ListBody",
        "LimitBody",
        "SetLimitBody",
        "RevokedBody",
        "ProblemBody",
        "SocketMessage",
        "RenewedMessage",
        "RevokedMessage",
        "SocketProblem",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("bearer_jwt") && schemes.contains_key("api_key"));
    assert_eq!(schemes["bearer_subprotocol"]["name"], "Sec-WebSocket-Protocol");
    // The message types, each named by its `type`.
    let kinds: Vec<&str> = schemas["SocketMessage"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["allOf"][1]["properties"]["type"]["enum"][0].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["granted", "renewed", "refused", "revoked", "error"]);
    // The upgrade routes answer 101, with the query of the PUT's body.
    for path in ["/v1/users/{user_id}/streams/{stream_id}/socket", "/v1/me/streams/{stream_id}/socket"] {
        let get = &doc["paths"][path]["get"];
        assert!(get["responses"]["101"].is_object(), "{path}");
        assert!(get["responses"]["426"].is_object(), "{path}");
        let params: Vec<&str> =
            get["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        for name in ["device_id", "content_id", "plan", "evict"] {
            assert!(params.contains(&name), "{path} lacks ?{name}");
        }
        let security = get["security"].as_array().unwrap();
        assert!(security.iter().any(|s| s.get("bearer_subprotocol").is_some()), "{path}");
    }
    let description = doc["info"]["description"].as_str().unwrap();
    for slug in [
        "invalid-request",
        "unauthorized",
        "forbidden",
        "not-found",
        "method-not-allowed",
        "request-timeout",
        "stream-limit-reached",
        "stream-revoked",
        "payload-too-large",
        "unsupported-media-type",
        "upgrade-required",
        "rate-limited",
        "headers-too-large",
        "internal-error",
        "store-unavailable",
        "overloaded",
        "service-unavailable",
    ] {
        assert!(description.contains(&format!("`{slug}`")), "problem type {slug} is not documented");
    }
    // Every error response of every operation is problem+json.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object().unwrap();
                    assert!(content.contains_key("application/problem+json"), "{method} {path} {status}");
                }
            }
        }
    }
}
