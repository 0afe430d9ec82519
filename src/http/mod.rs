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
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::{get, put};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::policy::Policy;
use crate::store::Store;
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub mod dto;
mod extract;
mod handlers;
pub mod problem;
pub mod protect;

use handlers::*;
use protect::{Protection, RateLimits};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub auth: Arc<Authenticator>,
    pub protection: Protection,
    pub rate: Arc<RateLimits>,
    /// Serve `/metrics` on this router (off when a separate metrics
    /// listener is configured).
    pub expose_metrics: bool,
}

impl AppState {
    pub fn new(store: Store, policy: Policy, auth: Arc<Authenticator>, protection: Protection) -> Self {
        let rate = Arc::new(RateLimits::new(&protection));
        Self { store, policy: Arc::new(policy), auth, protection, rate, expose_metrics: true }
    }
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let protection = state.protection;
    crate::metrics::handle();
    let router = Router::new()
        .route("/v1/users/{user_id}/streams/{stream_id}", put(acquire).delete(release))
        .route("/v1/users/{user_id}/streams", get(list).delete(revoke_all))
        .route("/v1/users/{user_id}/limit", get(get_limit).put(set_limit).delete(clear_limit))
        .route("/v1/me/streams/{stream_id}", put(acquire_mine).delete(release_mine))
        .route("/v1/me/streams", get(list_mine))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    let router = if state.expose_metrics { router.route("/metrics", get(metrics_text)) } else { router };
    router
        .fallback(not_found)
        .with_state(state)
        // Outermost first: take or make the request id (and echo it); trace
        // every request with its id and matched route; time it for metrics;
        // turn every error status into problem+json; shed load beyond the
        // concurrency limit (503); bound each request's time (408); refuse
        // oversized headers (431); catch panics (500); and bound the body
        // (413) right around the handlers.
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), route, request_id = id)
                }))
                .layer(axum::middleware::from_fn(track))
                .layer(axum::middleware::map_response(problem::ensure_problem))
                .layer(HandleErrorLayer::new(protect::shed))
                .load_shed()
                .concurrency_limit(protection.max_concurrent_requests)
                .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, protection.request_timeout))
                .layer(axum::middleware::from_fn(protect::limit_headers))
                .layer(CatchPanicLayer::new())
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish. The caller closes the store afterwards.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Idle rate-limit buckets are forgotten once a minute.
    let rate = state.rate.clone();
    let tidy = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            rate.tidy();
        }
    });
    let served = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await;
    tidy.abort();
    served
}

/// The header that carries the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Records each request's latency under its route template (never the raw
/// path, which holds user ids).
async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::http_request(&route, method.as_str(), res.status().as_u16(), started.elapsed());
    res
}

async fn metrics_text() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render())
}

/// Serves only `GET /metrics` on its own listener (`--metrics-listen`).
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::metrics::handle();
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(axum::middleware::map_response(problem::ensure_problem));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
