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
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
mod openapi;
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
    let (router, _) = api_router(state.expose_metrics).split_for_parts();
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
                // Global: axum clones layers per route, and a plain
                // concurrency limit would then count each route apart.
                .layer(GlobalConcurrencyLimitLayer::new(protection.max_concurrent_requests))
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

/// Every route, with its documentation: the router and the OpenAPI
/// document come from these same `routes!` calls.
fn api_router(with_metrics: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(acquire, release))
        .routes(routes!(list, revoke_all))
        .routes(routes!(get_limit, set_limit, clear_limit))
        .routes(routes!(acquire_mine, release_mine))
        .routes(routes!(list_mine))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json));
    if with_metrics { router.routes(routes!(metrics_text)) } else { router }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router(true).split_for_parts().1
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json() -> impl axum::response::IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_pretty_json().unwrap_or_default());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.as_str())
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format)",
    description = "Not on this port when `--metrics-listen` is set.",
    responses((status = 200, description = "Metrics", content_type = "text/plain"))
)]
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
        .route("/metrics", axum::routing::get(metrics_text))
        .fallback(not_found)
        .layer(axum::middleware::map_response(problem::ensure_problem));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
