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
}

impl AppState {
    pub fn new(store: Store, policy: Policy, auth: Arc<Authenticator>, protection: Protection) -> Self {
        let rate = Arc::new(RateLimits::new(&protection));
        Self { store, policy: Arc::new(policy), auth, protection, rate }
    }
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let protection = state.protection;
    Router::new()
        .route("/v1/users/{user_id}/streams/{stream_id}", put(acquire).delete(release))
        .route("/v1/users/{user_id}/streams", get(list).delete(revoke_all))
        .route("/v1/users/{user_id}/limit", get(get_limit).put(set_limit).delete(clear_limit))
        .route("/v1/me/streams/{stream_id}", put(acquire_mine).delete(release_mine))
        .route("/v1/me/streams", get(list_mine))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
        // Outermost first: trace every request (with the matched route in
        // the span); turn every error status into problem+json; shed load
        // beyond the concurrency limit (503); bound each request's time
        // (408); refuse oversized headers (431); catch panics (500); and
        // bound the body (413) right around the handlers.
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                    tracing::info_span!("request", method = %req.method(), route)
                }))
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
