//! The demo page, served only with `--demo`: a player page in plain
//! HTML, CSS and JavaScript on which each browser tab plays a fake stream
//! through the JavaScript client (`clients/js/streamcap.js`), shows its
//! state and the user's streams, and offers "watch here instead".
//!
//! The page is not part of the API. Its routes are mounted beside the
//! documented router, so they are in neither the OpenAPI document nor the
//! drift test that holds the router to it. The files are compiled into the
//! binary; the page loads nothing from anywhere else, and talks to the API
//! on its own origin like any player would.

use axum::Router;
use axum::response::{Redirect, Response};
use axum::routing::get;

/// The route templates, for the edge's latency labels.
pub(super) const ROUTES: [&str; 5] = ["/demo", "/demo/", "/demo/demo.js", "/demo/demo.css", "/demo/streamcap.js"];

const INDEX_HTML: &str = include_str!("demo/index.html");
const DEMO_JS: &str = include_str!("demo/demo.js");
const DEMO_CSS: &str = include_str!("demo/demo.css");
const CLIENT_JS: &str = include_str!("../../clients/js/streamcap.js");

/// The page, its assets and the client module.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/demo", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        // Relative links in the page resolve against `/demo`, not `/demo/`.
        .route("/demo/", get(|| async { Redirect::permanent("../demo") }))
        .route("/demo/demo.js", get(|| async { asset(JAVASCRIPT, DEMO_JS) }))
        .route("/demo/demo.css", get(|| async { asset("text/css; charset=utf-8", DEMO_CSS) }))
        .route("/demo/streamcap.js", get(|| async { asset(JAVASCRIPT, CLIENT_JS) }))
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Scripts, styles and connections from this origin only; no inline code,
/// no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    super::page_file(CONTENT_SECURITY_POLICY, content_type, body)
}
