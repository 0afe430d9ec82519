//! The support console, served only with `--console`: a page in plain
//! HTML, CSS and JavaScript on which an operator signs in with an admin or
//! service credential, looks a user up (effective limit and its source,
//! live streams, tombstones) and acts on them (stop one stream, stop all,
//! set or clear the override).
//!
//! The page is not part of the API and holds no power of its own: it calls
//! the documented `/v1` routes of its own origin with the credential the
//! operator pasted, which the API checks as it checks any client's. Its
//! routes sit beside the documented router, so they are in neither the
//! OpenAPI document nor the drift test. The files are compiled into the
//! binary; the page loads nothing from anywhere else, sets no cookie, and
//! runs no inline code.

use axum::Router;
use axum::response::{Redirect, Response};
use axum::routing::get;

/// The route templates, for the edge's latency labels.
pub(super) const ROUTES: [&str; 4] = ["/console", "/console/", "/console/console.js", "/console/console.css"];

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The page and its two assets.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        // Relative links in the page resolve against `/console`, not `/console/`.
        .route("/console/", get(|| async { Redirect::permanent("../console") }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
}

/// Everything from this origin only: no inline script or style, no
/// plugins, no framing (the page's buttons must not be clickjacked), no
/// form that posts anywhere, no `<base>`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    super::page_file(CONTENT_SECURITY_POLICY, content_type, body)
}
