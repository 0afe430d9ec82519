//! Browsers on other origins: CORS on the `/v1` routes, and the `Origin`
//! check of their WebSocket upgrades, both from one list of allowed
//! origins (`--cors-allowed-origins`).
//!
//! With no origin listed, nothing here runs: no route sends CORS headers,
//! so a browser lets only pages of streamcap's own origin read its
//! answers, and any socket may open. With some, each `/v1` route gets
//! tower-http's `CorsLayer`: it answers a preflight with exactly that
//! route's methods and the request headers a player sends, echoes a listed
//! `Origin` (never another, and never a wildcard) and exposes the response
//! headers a player reads. No credentials are allowed: streamcap reads no
//! cookies. A preflight from an unlisted origin, or for a method the route
//! lacks, is still answered 200, without `Access-Control-Allow-Origin` or
//! without the method, and the browser refuses the request itself.
//!
//! A WebSocket is not subject to CORS, so a page of any origin could open
//! one with the credential it holds; an upgrade whose `Origin` is not
//! listed is refused with 403 before the upgrade. A client that sends no
//! `Origin` (anything but a browser) is not affected.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::path::PathItem;
use utoipa_axum::router::UtoipaMethodRouter;

use super::problem::ApiError;

/// The request headers a player may send: the JS client sends the first
/// two, and `If-Match` renews; a request id ties its logs to ours.
const ALLOWED_HEADERS: [HeaderName; 4] =
    [header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_MATCH, HeaderName::from_static("x-request-id")];

/// The response headers a player may read, beyond the ones every response
/// exposes: where a new lease lives, how long to wait, the request id, and
/// what credential a 401 asks for.
const EXPOSED_HEADERS: [HeaderName; 4] =
    [header::LOCATION, header::RETRY_AFTER, HeaderName::from_static("x-request-id"), header::WWW_AUTHENTICATE];

/// Preflights are cached this long (Chromium caps it at two hours).
const MAX_AGE_SECS: u64 = 600;

/// The CORS of the `/v1` routes, when some origin is listed.
#[derive(Clone)]
pub(super) struct Cors {
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// `origins` are checked origins, as the config spells them.
    pub(super) fn new(origins: &[String]) -> Option<Self> {
        let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        (!origins.is_empty()).then_some(Self { origins })
    }

    /// `route` with CORS when its path is a `/v1` route; the allowed
    /// methods are the ones its documentation lists, which are the ones it
    /// routes, since both come from the same `routes!` call.
    pub(super) fn route<S>(&self, route: UtoipaMethodRouter<S>) -> UtoipaMethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let (schemas, paths, router) = route;
        let Some((path, item)) = paths.paths.iter().find(|(path, _)| path.starts_with("/v1/")) else {
            return (schemas, paths, router);
        };
        debug_assert_eq!(paths.paths.len(), 1, "one path per routes! call: {path}");
        let layer = CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.origins.iter().cloned()))
            .allow_methods(methods(item))
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(std::time::Duration::from_secs(MAX_AGE_SECS));
        let router = router.layer(layer);
        (schemas, paths, router)
    }
}

/// The methods a path's documentation lists.
fn methods(item: &PathItem) -> Vec<Method> {
    let ops = [(&item.get, Method::GET), (&item.put, Method::PUT), (&item.post, Method::POST)];
    let more = [(&item.delete, Method::DELETE), (&item.patch, Method::PATCH), (&item.head, Method::HEAD)];
    ops.into_iter().chain(more).filter(|(op, _)| op.is_some()).map(|(_, m)| m).collect()
}

/// Refuses a WebSocket upgrade from a page whose origin is not listed,
/// when origins are listed; a request without `Origin` passes.
pub(super) fn check_socket_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(origin.as_bytes());
    Err(ApiError::Forbidden(format!(
        "pages of origin {shown} may not open this socket: it is not in --cors-allowed-origins"
    )))
}
