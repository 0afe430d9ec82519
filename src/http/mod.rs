//! The HTTP API, v1. The only module that knows about HTTP and JSON.
//!
//! [`app`] builds the router shared by `main` and the tests; [`serve`] runs
//! it on a listener until a shutdown future resolves. Handlers validate
//! input into limiter types, resolve the limit and TTL, call the store and
//! turn its answer into JSON. They never decide anything themselves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::clock::{Clock, SystemClock};
use crate::limiter::{Acquire, Decision, Label, Lease, Limit, RevokeReason, StreamId};
use crate::policy::{OnStoreError, Policy, Resolved};
use crate::store::{Store, StoreError};

pub mod dto;
mod extract;
pub mod problem;

use dto::{AcquireBody, LeaseBody, LimitBody, ListBody, PlanQuery, RevokedBody, SetLimitBody, StreamView};
use extract::{OptionalJson, PlanParam, StreamPath, UserPath};
use problem::{ApiError, Problem};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub policy: Arc<Policy>,
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/users/{user_id}/streams/{stream_id}", put(acquire).delete(release))
        .route("/v1/users/{user_id}/streams", get(list).delete(revoke_all))
        .route("/v1/users/{user_id}/limit", get(get_limit).put(set_limit).delete(clear_limit))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
        // Layers run outermost-last in this list, so the request meets them
        // bottom-up: trace (with the matched route in the span), then the
        // problem rewriter (so even a caught panic leaves as problem+json),
        // then the panic catcher, then the body limit around the handlers.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::map_response(problem::ensure_problem))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("request", method = %req.method(), route)
        }))
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish. The caller closes the store afterwards.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}

fn resolve(policy: &Policy, plan: Option<&str>) -> Result<Resolved, ApiError> {
    policy.resolve(plan).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn acquire(
    State(state): State<AppState>,
    StreamPath(user, stream): StreamPath,
    OptionalJson(body): OptionalJson<AcquireBody>,
) -> Result<Response, ApiError> {
    let label = |field: &str, v: Option<String>| {
        v.map(|s| Label::new(&s).map_err(|e| ApiError::BadRequest(format!("{field} {e}")))).transpose()
    };
    let evict = body
        .evict
        .unwrap_or_default()
        .iter()
        .map(|s| StreamId::new(s).map_err(|e| ApiError::BadRequest(format!("evict: stream id {s:?} {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = resolve(&state.policy, body.plan.as_deref())?;
    let req = Acquire {
        stream_id: stream,
        device_id: label("device_id", body.device_id)?,
        content_id: label("content_id", body.content_id)?,
        limit: policy.limit,
        ttl: state.policy.lease_ttl,
        on_limit: policy.on_limit,
        evict,
        enforce: state.policy.enforce,
    };
    let (ttl, enforced) = (req.ttl.as_secs(), req.enforce);
    let fallback = (state.policy.on_store_error == OnStoreError::Allow).then(|| req.clone());
    let decision = match (state.store.acquire(&user, req).await, fallback) {
        (Ok(d), _) => d,
        (Err(e), None) => return Err(e.into()),
        (Err(e), Some(req)) => {
            // Fail open, as configured: admit unchecked, and say so.
            tracing::warn!(error = %e, "store unavailable; granting degraded as on_store_error = allow");
            let now = SystemClock.now();
            let lease = Lease {
                stream_id: req.stream_id,
                device_id: req.device_id,
                content_id: req.content_id,
                started_at: now,
                expires_at: now.plus(req.ttl),
            };
            let body = LeaseBody::degraded(&user, &lease, ttl, req.limit.get(), enforced);
            return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
        }
    };
    match decision {
        Decision::Granted(g) => {
            let location = format!("/v1/users/{user}/streams/{}", g.lease.stream_id);
            let body = LeaseBody::new(&user, &g, ttl, enforced);
            let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            Ok(res)
        }
        Decision::Renewed(g) => Ok(axum::Json(LeaseBody::new(&user, &g, ttl, enforced)).into_response()),
        Decision::Denied(d) => {
            let live: Vec<StreamView<'_>> = d.live.iter().map(StreamView::from).collect();
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "stream-limit-reached",
                "Stream limit reached",
                format!(
                    "user {user} already has {} of {} streams active; stop one to start another",
                    live.len(),
                    d.limit.get()
                ),
            )
            .with("limit", json!(d.limit.get()))
            .with("active_streams", json!(live));
            Err(ApiError::Problem(problem))
        }
        Decision::Gone(t) => {
            let (reason, detail) = match &t.reason {
                RevokeReason::EvictedBy(by) => (
                    "evicted_by_new_stream",
                    format!("stream {} was stopped to make room for stream {by}", t.stream_id),
                ),
                RevokeReason::Revoked => ("revoked", format!("stream {} was revoked", t.stream_id)),
            };
            let mut problem = Problem::new(StatusCode::GONE, "stream-revoked", "Stream revoked", detail)
                .with("reason", json!(reason));
            if let RevokeReason::EvictedBy(by) = &t.reason {
                problem = problem.with("by_stream_id", json!(by.as_str()));
            }
            Err(ApiError::Problem(problem))
        }
    }
}

async fn release(State(state): State<AppState>, StreamPath(user, stream): StreamPath) -> Result<StatusCode, ApiError> {
    state.store.release(&user, stream).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_all(State(state): State<AppState>, UserPath(user): UserPath) -> Result<Response, ApiError> {
    let revoked = state.store.revoke_all(&user, state.policy.lease_ttl).await?;
    let body = RevokedBody { revoked: revoked.iter().map(StreamId::as_str).collect() };
    Ok(axum::Json(body).into_response())
}

async fn list(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    let policy = resolve(&state.policy, query.plan.as_deref())?;
    let (limit, live) = state.store.list(&user, policy.limit).await?;
    let body = ListBody {
        user_id: user.as_str(),
        limit: limit.get(),
        active_streams: live.iter().map(StreamView::from).collect(),
    };
    Ok(axum::Json(body).into_response())
}

async fn get_limit(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    let policy = resolve(&state.policy, query.plan.as_deref())?;
    let (limit, source) = state.store.limit(&user, policy.limit, policy.source).await?;
    let body = LimitBody { user_id: user.as_str(), limit: limit.get(), source: dto::source_name(source) };
    Ok(axum::Json(body).into_response())
}

async fn set_limit(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    OptionalJson(body): OptionalJson<SetLimitBody>,
) -> Result<Response, ApiError> {
    let n = body.limit.ok_or_else(|| ApiError::BadRequest("limit is required, e.g. {\"limit\": 5}".into()))?;
    let limit =
        Limit::new(n).ok_or_else(|| ApiError::BadRequest(format!("limit {n} is out of range 0..={}", Limit::MAX)))?;
    state.store.set_override(&user, Some(limit)).await?;
    let body = LimitBody { user_id: user.as_str(), limit: limit.get(), source: "override" };
    Ok(axum::Json(body).into_response())
}

async fn clear_limit(State(state): State<AppState>, UserPath(user): UserPath) -> Result<StatusCode, ApiError> {
    state.store.set_override(&user, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn livez() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // Readiness must answer quickly even when the store hangs.
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(axum::Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::Store(e)),
        Err(_) => Err(ApiError::Store(StoreError::Unavailable("ping timed out".into()))),
    }
}

async fn not_found() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}
