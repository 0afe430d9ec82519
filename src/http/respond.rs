//! How an acquire's answer goes on the wire, in one place: each
//! [`Decision`] to its status and body, and a store failure to a 503 or, when
//! the policy fails open, to a degraded grant. The problem documents
//! themselves are spelled in `problem`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::dto::LeaseBody;
use super::problem::ApiError;
use crate::limiter::{Acquire, Decision, UserId};
use crate::metrics;
use crate::store::StoreError;

/// The answer to an acquire of `user`'s stream:
///
/// | store answer | response |
/// |---|---|
/// | `Granted` | 201 with the lease and a `Location` header |
/// | `Renewed` | 200 with the lease |
/// | `Denied` | 409 `stream-limit-reached` |
/// | `Gone` | 410 `stream-revoked` |
/// | `Err`, with a `fallback` | 201 degraded: the fallback request granted unchecked |
/// | `Err`, without | 503 `store-unavailable` |
///
/// `fallback` is the request itself, kept only when the policy fails open.
pub(super) fn acquired(
    state: &AppState,
    user: UserId,
    answer: Result<Decision, StoreError>,
    fallback: Option<Acquire>,
) -> Result<Response, ApiError> {
    let (ttl, enforced) = (state.policy.lease_ttl.as_secs(), state.policy.enforce);
    match answer {
        Ok(Decision::Granted(grant)) => {
            let location = format!("/v1/users/{user}/streams/{}", grant.lease.stream_id);
            let mut res = (StatusCode::CREATED, Json(LeaseBody::new(&user, &grant, ttl, enforced))).into_response();
            if let Ok(v) = HeaderValue::try_from(location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            Ok(res)
        }
        Ok(Decision::Renewed(grant)) => Ok(Json(LeaseBody::new(&user, &grant, ttl, enforced)).into_response()),
        Ok(Decision::Denied(denial)) => Err(ApiError::LimitReached(user, denial)),
        Ok(Decision::Gone(tombstone)) => Err(ApiError::Revoked(tombstone)),
        Ok(Decision::NotHeld) => Err(ApiError::NotHeld(NOT_HELD)),
        Err(e) => match fallback {
            Some(req) => Ok(degraded(state, &user, req, &e)),
            None => Err(e.into()),
        },
    }
}

/// The 412's detail when a held request finds no live lease.
pub(super) const NOT_HELD: &str =
    "the stream holds no live lease (it expired, or was released); acquire it again without If-Match";

/// Fail open, as configured: a 201 (200 for a held request) for a lease
/// built from the request and the app's clock, marked degraded and stored
/// nowhere.
fn degraded(state: &AppState, user: &UserId, req: Acquire, error: &StoreError) -> Response {
    tracing::warn!(error = %error, "store unavailable; granting degraded as on_store_error = allow");
    metrics::degraded_grant();
    let now = state.clock.now();
    let (ttl, limit, enforce, held) = (req.ttl, req.limit, req.enforce, req.held);
    let lease = req.into_lease(now);
    let body = LeaseBody::degraded(user, &lease, ttl.as_secs(), limit.get(), enforce);
    // The caller's word is all there is: a stream that says it holds its
    // lease (`If-Match: *`) is answered as a renewal.
    let status = if held { StatusCode::OK } else { StatusCode::CREATED };
    (status, Json(body)).into_response()
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::Arc;

    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::auth::Authenticator;
    use crate::clock::ManualClock;
    use crate::http::{AppState, app};
    use crate::limiter::{Limit, Timestamp, Ttl};
    use crate::policy::Protection;
    use crate::policy::{OnStoreError, Policy};
    use crate::store::{Store, StoreConfig, StoreKind};

    /// An acquire against a store that has stopped answering.
    async fn acquire_with_store_down(on_store_error: OnStoreError) -> (StatusCode, Option<String>, Value) {
        acquire_with_store_down_of(on_store_error, r#"{"device_id": "living-room"}"#, None).await
    }

    async fn acquire_with_store_down_of(
        on_store_error: OnStoreError,
        body: &str,
        if_match: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(StoreKind::Sqlite, dir.path().to_path_buf());
        let clock = ManualClock::new(Timestamp::from_micros(1_795_498_190_123_456));
        let store = Store::open(&config, Arc::new(clock.clone())).await.unwrap();
        store.close().await.unwrap();
        let policy = Policy { on_store_error, ..Policy::uniform(Limit::new(2).unwrap(), Ttl::from_secs(60).unwrap()) };
        let mut state = AppState::new(store, policy, Arc::new(Authenticator::none()), Protection::unlimited());
        state.clock = Arc::new(clock);
        let mut req = Request::put("/v1/users/alice/streams/tv").header(header::CONTENT_TYPE, "application/json");
        if let Some(v) = if_match {
            req = req.header(header::IF_MATCH, v);
        }
        let req = req.body(Body::from(body.to_owned())).unwrap();
        let res = app(state).oneshot(req).await.unwrap();
        let status = res.status();
        let retry_after = res.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_failed_acquire_fails_open_on_the_app_clock_when_allowed() {
        let (status, retry_after, body) = acquire_with_store_down(OnStoreError::Allow).await;
        assert_eq!((status, retry_after), (StatusCode::CREATED, None));
        assert_eq!(
            body,
            json!({
                "user_id": "alice",
                "stream_id": "tv",
                "device_id": "living-room",
                "started_at": "2026-11-24T05:29:50.123456Z",
                "expires_at": "2026-11-24T05:30:50.123456Z",
                "ttl_seconds": 60,
                "active_streams": null,
                "limit": 2,
                "enforced": true,
                "degraded": true,
            })
        );
    }

    #[tokio::test]
    async fn a_degraded_grant_keeps_the_requests_traits() {
        let body = r#"{"device_class": "tv", "content_kind": "live", "content_id": "final"}"#;
        let (status, _, body) = acquire_with_store_down_of(OnStoreError::Allow, body, None).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!((body["device_class"].as_str(), body["content_kind"].as_str()), (Some("tv"), Some("live")));
        assert_eq!((body["content_id"].as_str(), body["degraded"].as_bool()), (Some("final"), Some(true)));
        assert!(body.get("rule").is_none(), "{body}");
    }

    #[tokio::test]
    async fn a_degraded_answer_to_a_held_stream_is_a_renewal() {
        let (status, _, body) = acquire_with_store_down_of(OnStoreError::Allow, "{}", Some("*")).await;
        assert_eq!((status, body["degraded"].as_bool()), (StatusCode::OK, Some(true)));
        let (status, _, _) = acquire_with_store_down_of(OnStoreError::Deny, "{}", Some("*")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_failed_acquire_is_a_503_when_denied() {
        let (status, retry_after, body) = acquire_with_store_down(OnStoreError::Deny).await;
        assert_eq!((status, retry_after.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert_eq!(body["type"], "https://streamcap.dev/problems/store-unavailable");
    }
}
