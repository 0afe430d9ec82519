//! The HTTP API, v1. The only module that knows about HTTP and JSON.
//!
//! [`app`] builds the router shared by `main` and the tests; [`serve`] runs
//! it on a listener until a shutdown future resolves. Handlers validate
//! input into limiter types, resolve the limit and TTL, call the store and
//! turn its answer into JSON. They never decide anything themselves. The
//! WebSocket routes hold a lease for as long as a socket stays open
//! (`socket`). Pages of other origins reach the `/v1` routes only through
//! `cors`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::limiter::Plans;
use crate::policy::Policy;
use crate::store::Store;
use axum::http::HeaderName;

mod access;
mod acquire;
mod audit;
mod console;
mod cors;
mod demo;
pub mod dto;
mod edge;
mod extract;
pub mod gateway;
mod handlers;
mod notice;
mod openapi;
pub mod problem;
pub mod protect;
mod respond;
mod socket;
mod source;

pub use notice::{GATEWAY, InstanceId, push_to_gateway};

use crate::policy::Protection;
use handlers::*;
use protect::RateLimits;
use socket::Sockets;

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
    /// "Now" for the times of a degraded grant, the one lease that no store
    /// makes. Wall time unless a test sets another clock.
    pub clock: Arc<dyn Clock>,
    /// Serve `/metrics` on this router (off when a separate metrics
    /// listener is configured).
    pub expose_metrics: bool,
    /// Serve the demo page at `/demo` (`--demo`).
    pub demo: bool,
    /// Serve the support console at `/console` (`--console`).
    pub console: bool,
    /// This instance's name: in the start line, `/readyz` and the holder
    /// tokens of its sockets.
    pub instance: InstanceId,
    /// This instance's socket-held leases and open sockets.
    sockets: Sockets,
    /// Every configured plan's terms, which a request naming no plan
    /// passes to the rules (`None` when no plan is configured).
    pub plans: Option<Arc<Plans>>,
}

impl AppState {
    pub fn new(store: Store, policy: Policy, auth: Arc<Authenticator>, protection: Protection) -> Self {
        let rate = Arc::new(RateLimits::new(&protection));
        let clock = Arc::new(SystemClock);
        let instance = InstanceId::generate();
        let sockets = Sockets::new(instance.clone(), store.clone());
        let plans = (!policy.plans.is_empty()).then(|| Arc::new(policy.terms()));
        let policy = Arc::new(policy);
        let (expose_metrics, demo, console) = (true, false, false);
        Self { store, policy, auth, protection, rate, clock, expose_metrics, demo, console, instance, sockets, plans }
    }
}

/// The whole API as one router, with the demo page when `state.demo` and
/// the support console when `state.console`.
pub fn app(state: AppState) -> Router {
    let protection = state.protection.clone();
    let cors = cors::Cors::new(&protection.cors_allowed_origins);
    let (mut router, doc) = api_router(state.expose_metrics, cors.as_ref()).split_for_parts();
    let mut routes: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    // The demo page is not part of the API: it sits beside the documented
    // routes, never in the OpenAPI document.
    if state.demo {
        router = router.merge(demo::router());
        routes.extend(demo::ROUTES);
    }
    // Nor is the support console, a page that calls the API like any client.
    if state.console {
        router = router.merge(console::router());
        routes.extend(console::ROUTES);
    }
    let edge = edge::Edge::new(routes, &protection);
    router
        .fallback(not_found)
        // One Arc: a handler's `State` costs one reference count, not one per field.
        .with_state(Arc::new(state))
        // Outermost first. The edge takes or makes the request id (and
        // echoes it), opens the request's span, refuses oversized headers
        // (431), sheds load beyond the concurrency limit (503), bounds the
        // request's time (408), turns a panic into a 500, turns every error
        // status into problem+json and times the request by route. Inside
        // it, the body limit (413) sits right around the handlers, and with
        // `--cors-allowed-origins` each `/v1` route has its own CORS layer
        // (`cors`), so the edge's own answers carry no CORS headers.
        .layer(ServiceBuilder::new().layer(edge).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
}

/// A file of a page embedded in the binary (`demo`, `console`) under the
/// page's content security policy `csp`. `no-cache`, so that a new
/// binary's page is seen at once; never framed; no referrer, so that a
/// page's address never leaves it.
fn page_file(csp: &'static str, content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish, and closes every WebSocket with 1001 once
/// its lease is released. The caller closes the store afterwards.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tidy = tidy(&state);
    // Notices from other instances about this one's sockets, before any
    // socket opens. Without them, a socket learns of a loss decided
    // elsewhere at its next renewal.
    let notices = match state.store.subscribe(state.instance.as_str()).await {
        Ok(Some(subscription)) => {
            let sockets = state.sockets.clone();
            let me = state.instance.clone();
            Some(tokio::spawn(notice::receive(me, subscription, move |n| sockets.deliver(n))))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for notices from other instances; sockets learn of losses decided elsewhere at their next renewal");
            None
        }
    };
    // An upgraded socket outlives its HTTP connection, so axum's graceful
    // shutdown does not wait for it: the sockets close on the same signal,
    // and are waited for here.
    let sockets = state.sockets.clone();
    let closing = sockets.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close_all();
    };
    // The peer's address is the source of a request for the limit on
    // failed authentication (or the proxy that names the source).
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    sockets.close_all();
    sockets.all_closed().await;
    tidy.abort();
    if let Some(notices) = notices {
        notices.abort();
    }
    served
}

/// Forgets idle rate-limit buckets once a minute, until the task is
/// aborted. A frozen Lambda instance catches up when it thaws.
pub fn tidy(state: &AppState) -> tokio::task::JoinHandle<()> {
    let rate = state.rate.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            rate.tidy();
        }
    })
}

/// Every route, with its documentation: the router and the OpenAPI
/// document come from these same `routes!` calls. With `cors`, each `/v1`
/// route answers preflights with its own methods.
fn api_router(with_metrics: bool, cors: Option<&cors::Cors>) -> OpenApiRouter<Arc<AppState>> {
    let v1 = |route| match cors {
        Some(cors) => cors.route(route),
        None => route,
    };
    let router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(v1(routes!(acquire, release)))
        .routes(v1(routes!(list, revoke_all)))
        .routes(v1(routes!(revoke_stream)))
        .routes(v1(routes!(get_limit, set_limit, clear_limit)))
        .routes(v1(routes!(acquire_mine, release_mine)))
        .routes(v1(routes!(list_mine)))
        .routes(v1(routes!(socket)))
        .routes(v1(routes!(socket_mine)))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json));
    if with_metrics { router.routes(routes!(metrics_text)) } else { router }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router(true, None).split_for_parts().1
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
        .layer(axum::middleware::map_response(|res| async { problem::ensure_problem(res) }));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
