//! RFC 9457 problem details: the one shape of every error streamcap sends.
//!
//! Handlers return [`ApiError`]; anything else that produces an error status
//! (axum's own 405, a panic caught by the panic layer) is rewritten into a
//! problem by [`ensure_problem`]. Internal detail is logged, never sent.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::dto::StreamView;
use crate::limiter::{Denial, RevokeReason, Tombstone, UserId};
use crate::store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Every problem `type` is this base followed by a slug.
pub const TYPE_BASE: &str = "https://streamcap.dev/problems/";

/// A problem document ready to send.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into(), extensions: Map::new() }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    /// The generic problem for a status that no handler described.
    pub fn for_status(status: StatusCode) -> Self {
        let (slug, title, detail) = match status {
            StatusCode::NOT_FOUND => ("not-found", "Not found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method-not-allowed", "Method not allowed", "this route does not accept that method")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload-too-large", "Payload too large", "the request body is larger than 16 KiB")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "Unsupported media type", "send the body as application/json")
            }
            StatusCode::REQUEST_TIMEOUT => {
                ("request-timeout", "Request timeout", "the request took too long and was abandoned; retry")
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ("service-unavailable", "Service unavailable", "the service cannot answer now; retry later")
            }
            s if s.is_client_error() => ("bad-request", "Bad request", "the request was not understood"),
            _ => ("internal-error", "Internal error", "the server failed; the error has been logged"),
        };
        Self::new(status, slug, title, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("{TYPE_BASE}{}", self.slug)));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.extend(self.extensions);
        let mut res = (self.status, Value::Object(body).to_string()).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        res
    }
}

/// The errors handlers return. Each maps to exactly one problem, built in
/// `into_response` below: every problem a handler sends is spelled here.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a path id, query or body field is malformed.
    BadRequest(String),
    /// 401: no credential, or one that does not verify.
    Unauthorized(String),
    /// 403: authenticated, but not allowed to do this.
    Forbidden(String),
    /// 409: the account is full ([`Decision::Denied`](crate::limiter::Decision)).
    LimitReached(UserId, Denial),
    /// 410: the stream was evicted or revoked and must stop
    /// ([`Decision::Gone`](crate::limiter::Decision)).
    Revoked(Tombstone),
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: a body that is not JSON.
    UnsupportedMediaType(String),
    /// 426: a WebSocket route asked without a WebSocket upgrade.
    UpgradeRequired(String),
    /// 429: out of tokens; retry after this long.
    RateLimited(std::time::Duration),
    /// 503: the store did not answer. Detail is logged only.
    Store(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail).into_response()
            }
            Self::Unauthorized(detail) => {
                let mut res =
                    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail).into_response();
                let challenge = HeaderValue::from_static("Bearer realm=\"streamcap\"");
                res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
                res
            }
            Self::Forbidden(detail) => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail).into_response()
            }
            Self::LimitReached(user, denial) => limit_reached(&user, &denial).into_response(),
            Self::Revoked(tombstone) => revoked(&tombstone).into_response(),
            Self::PayloadTooLarge => Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response(),
            Self::UnsupportedMediaType(detail) => {
                let p = Problem::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
                Problem { detail, ..p }.into_response()
            }
            Self::UpgradeRequired(detail) => upgrade_required(detail),
            Self::RateLimited(wait) => rate_limited(wait),
            Self::Store(e) => store_unavailable(&e),
        }
    }
}

/// 409 `stream-limit-reached`, with the total limit and the live leases of
/// the full scope; when a rule is full, also the rule and its limit. A
/// refusal by the total is exactly the body it was before rules existed.
fn limit_reached(user: &UserId, denial: &Denial) -> Problem {
    let live: Vec<StreamView<'_>> = denial.live.iter().map(StreamView::from).collect();
    let limit = denial.limit.get();
    let detail = match &denial.rule {
        None => format!("user {user} already has {} of {limit} streams active; stop one to start another", live.len()),
        Some(rule) if rule.limit.get() == 0 => {
            format!("rule {:?} allows user {user} no stream like this one", rule.name.as_str())
        }
        Some(rule) => format!(
            "user {user} already has {} of {} streams active under rule {:?}; stop one of them to start another",
            live.len(),
            rule.limit.get(),
            rule.name.as_str()
        ),
    };
    let mut problem = Problem::new(StatusCode::CONFLICT, "stream-limit-reached", "Stream limit reached", detail)
        .with("limit", json!(limit))
        .with("active_streams", json!(live));
    if let Some(rule) = &denial.rule {
        problem = problem.with("rule", json!(rule.name.as_str())).with("rule_limit", json!(rule.limit.get()));
    }
    problem
}

/// 410 `stream-revoked`, with the reason and, after an eviction, the
/// stream that took the seat.
fn revoked(tombstone: &Tombstone) -> Problem {
    let stream = &tombstone.stream_id;
    match &tombstone.reason {
        RevokeReason::EvictedBy(by) => Problem::new(
            StatusCode::GONE,
            "stream-revoked",
            "Stream revoked",
            format!("stream {stream} was stopped to make room for stream {by}"),
        )
        .with("reason", json!("evicted_by_new_stream"))
        .with("by_stream_id", json!(by.as_str())),
        RevokeReason::Revoked => {
            Problem::new(StatusCode::GONE, "stream-revoked", "Stream revoked", format!("stream {stream} was revoked"))
                .with("reason", json!("revoked"))
        }
    }
}

/// 426 `upgrade-required`, naming the protocol to upgrade to (RFC 9110
/// section 15.5.22) and the WebSocket version spoken (RFC 6455 section 4.4).
fn upgrade_required(detail: String) -> Response {
    let mut res =
        Problem::new(StatusCode::UPGRADE_REQUIRED, "upgrade-required", "Upgrade required", detail).into_response();
    res.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    res.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    res
}

/// 429 `rate-limited`, with `Retry-After`.
fn rate_limited(wait: std::time::Duration) -> Response {
    // Whole seconds, rounded up: never tell a client to retry too early.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut res = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("slow down; retry in {secs} s"),
    )
    .with("retry_after_seconds", json!(secs))
    .into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

/// 503 `store-unavailable`, with `Retry-After`. The cause is logged, not sent.
fn store_unavailable(error: &StoreError) -> Response {
    tracing::error!(error = %error, "store unavailable");
    let mut res = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "Store unavailable",
        "the lease store did not answer in time; retry shortly (PUT and DELETE are safe to repeat)",
    )
    .into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// Rewrites any error response that is not already a problem (axum's 405,
/// a caught panic, a rejection we did not map) into one, keeping headers
/// such as `Allow`.
pub fn ensure_problem(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == CONTENT_TYPE.as_bytes());
    if is_problem {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let problem = Problem::for_status(status).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    let (_, body) = problem.into_parts();
    Response::from_parts(parts, Body::new(body))
}
