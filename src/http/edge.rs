//! The edge: the one middleware every request passes first. It gives the
//! request its id and its tracing span, refuses oversized headers (431)
//! and load beyond the concurrency limit (503, counted as shed), bounds
//! the request's time (408), turns a panic into a 500, turns any error
//! response that is not yet problem+json into one, echoes the id and
//! records the latency under the route template.
//!
//! These jobs share one service and one future on purpose: each is a few
//! lines, and as separate layers each cost an allocation, a boxed future
//! or a label lookup per request. The edge keeps per-request work to what
//! it can name: one id when the client sent none, one span, one semaphore
//! permit, and a histogram handle found by index.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::metrics::Histogram;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Span;

use super::REQUEST_ID;
use super::problem::{self, Problem};
use super::protect::MAX_HEADER_BYTES;
use crate::metrics;
use crate::policy::Protection;

/// The edge layer. Cheap to clone: every route's copy shares one state.
/// Its inner service must answer `Response` (axum's body), so that nothing
/// between the edge and the handlers boxes the body again.
#[derive(Clone)]
pub(super) struct Edge {
    shared: Arc<Shared>,
}

struct Shared {
    /// One permit per request in flight; none left means shed the request.
    permits: Arc<Semaphore>,
    timeout: Duration,
    ids: RequestIds,
    latency: Latency,
}

impl Edge {
    /// `routes` are the route templates the router serves, for the latency
    /// labels; `max_in_flight` bounds the requests in flight.
    pub(super) fn new<'a>(routes: impl IntoIterator<Item = &'a str>, protection: &Protection) -> Self {
        let shared = Shared {
            permits: Arc::new(Semaphore::new(protection.max_concurrent_requests.min(Semaphore::MAX_PERMITS))),
            timeout: protection.request_timeout,
            ids: RequestIds::new(),
            latency: Latency::new(routes),
        };
        Self { shared: Arc::new(shared) }
    }
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService { inner, shared: self.shared.clone() }
    }
}

#[derive(Clone)]
pub(super) struct EdgeService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let id = match req.headers().get(&REQUEST_ID) {
            Some(given) => given.clone(),
            None => self.shared.ids.next(),
        };
        let template = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            route = template.unwrap_or(metrics::UNMATCHED_ROUTE),
            request_id = id.to_str().unwrap_or(""),
        );
        let mut done = Done {
            shared: self.shared.clone(),
            route: self.shared.latency.route(template),
            method: req.method().clone(),
            id,
            span,
            started,
            _permit: None,
        };
        if headers_size(req.headers()) > MAX_HEADER_BYTES {
            return EdgeFuture::answered(headers_too_large(), done);
        }
        match self.shared.permits.clone().try_acquire_owned() {
            Ok(permit) => done._permit = Some(permit),
            Err(_) => {
                metrics::shed();
                return EdgeFuture::answered(overloaded(), done);
            }
        }
        let called = done.span.in_scope(|| catch_unwind(AssertUnwindSafe(|| self.inner.call(req))));
        match called {
            Ok(future) => EdgeFuture {
                running: Some(Running { future, deadline: tokio::time::sleep(self.shared.timeout) }),
                answered: None,
                done: Some(done),
            },
            Err(panic) => EdgeFuture::answered(panicked(panic), done),
        }
    }
}

pin_project! {
    /// The inner service's response, finished by the edge.
    pub(super) struct EdgeFuture<F> {
        #[pin]
        running: Option<Running<F>>,
        // The edge's own answer, when the request never went further.
        answered: Option<Response>,
        done: Option<Done>,
    }
}

pin_project! {
    struct Running<F> {
        #[pin]
        future: F,
        // Registered with the timer only if the first poll does not finish.
        #[pin]
        deadline: Sleep,
    }
}

impl<F> EdgeFuture<F> {
    fn answered(res: Response, done: Done) -> Self {
        Self { running: None, answered: Some(res), done: Some(done) }
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(done) = this.done.as_ref() else {
            panic!("EdgeFuture polled after it completed");
        };
        let res = match this.running.as_pin_mut() {
            Some(running) => {
                let running = running.project();
                match done.span.in_scope(|| catch_unwind(AssertUnwindSafe(|| running.future.poll(cx)))) {
                    Ok(Poll::Ready(Ok(res))) => res,
                    Ok(Poll::Ready(Err(never))) => match never {},
                    Ok(Poll::Pending) => match running.deadline.poll(cx) {
                        Poll::Ready(()) => Problem::for_status(StatusCode::REQUEST_TIMEOUT).into_response(),
                        Poll::Pending => return Poll::Pending,
                    },
                    Err(panic) => panicked(panic),
                }
            }
            None => match this.answered.take() {
                Some(res) => res,
                None => Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response(),
            },
        };
        let done = this.done.take().expect("checked above");
        Poll::Ready(Ok(done.finish(res)))
    }
}

/// What the edge needs once the response is there. Dropping it returns
/// the request's permit.
struct Done {
    shared: Arc<Shared>,
    route: usize,
    method: Method,
    id: HeaderValue,
    span: Span,
    started: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Done {
    fn finish(self, res: Response) -> Response {
        let mut res = problem::ensure_problem(res);
        let status = res.status();
        let took = self.started.elapsed();
        self.shared.latency.record(self.route, &self.method, status, took.as_secs_f64());
        self.span.in_scope(|| {
            let latency_us = took.as_micros() as u64;
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), latency_us, "request failed");
            } else {
                tracing::debug!(status = status.as_u16(), latency_us, "request finished");
            }
        });
        res.headers_mut().insert(REQUEST_ID.clone(), self.id);
        res
    }
}

/// A handler panicked: log why, answer 500. The panic stays contained in
/// this request; the rules mutate a user's state only after all checks.
fn panicked(panic: Box<dyn Any + Send>) -> Response {
    let why = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = why, "request handler panicked");
    Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}

fn headers_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

fn headers_too_large() -> Response {
    Problem::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
        "Request headers too large",
        format!("request headers may total at most {MAX_HEADER_BYTES} bytes"),
    )
    .into_response()
}

fn overloaded() -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Overloaded",
        "too many requests are in flight; retry shortly",
    )
    .into_response()
}

/// Request ids for requests that came without one: UUID-shaped (version 8,
/// RFC 9562) from a random per-process prefix and a counter, so they are
/// unique within the process and, with overwhelming odds, across
/// processes, without asking the OS for randomness per request.
struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        // RandomState's keys come from the OS's random source.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let prefix = RandomState::new().hash_one((std::process::id(), since_epoch));
        Self { prefix, next: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_bytes(&uuid_text(self.prefix, n)).expect("hex digits and hyphens are a valid header value")
    }
}

/// `hi` and `lo` as the 36 characters of a version-8 UUID. The version
/// nibble replaces 4 bits of `hi`; the variant, the top 2 bits of `lo`.
fn uuid_text(hi: u64, lo: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = (hi & !0xf000) | 0x8000;
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    out
}

/// The latency histograms, one handle per route template, method and
/// status, each registered on its first request. Methods and statuses the
/// API never answers are looked up by label each time.
struct Latency {
    routes: Box<[Box<str>]>,
    handles: Box<[OnceLock<Histogram>]>,
}

const METHODS: [Method; 4] = [Method::GET, Method::PUT, Method::POST, Method::DELETE];
/// Sorted, for a binary search.
const STATUSES: [u16; 17] = [200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 429, 431, 500, 503];

impl Latency {
    fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut routes: Vec<Box<str>> = routes.into_iter().map(Box::from).collect();
        routes.push(metrics::UNMATCHED_ROUTE.into());
        let handles = (0..routes.len() * METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect();
        Self { routes: routes.into(), handles }
    }

    /// The index of a route template; requests that matched none, and
    /// templates this table was not built with, count as unmatched.
    fn route(&self, template: Option<&str>) -> usize {
        let unmatched = self.routes.len() - 1;
        template.and_then(|t| self.routes.iter().position(|r| **r == *t)).unwrap_or(unmatched)
    }

    fn record(&self, route: usize, method: &Method, status: StatusCode, seconds: f64) {
        let register = || metrics::http_seconds(&self.routes[route], method.as_str(), status.as_str());
        let m = METHODS.iter().position(|m| m == method);
        let s = STATUSES.binary_search(&status.as_u16()).ok();
        match (m, s) {
            (Some(m), Some(s)) => {
                self.handles[(route * METHODS.len() + m) * STATUSES.len() + s].get_or_init(register).record(seconds)
            }
            _ => register().record(seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// A router with one slow and one panicking route behind the edge.
    fn app(protection: Protection) -> Router {
        let edge = Edge::new(["/slow", "/panic"], &protection);
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    "done"
                }),
            )
            .route("/panic", get(boom))
            .layer(edge)
    }

    async fn boom() -> &'static str {
        panic!("handler bug")
    }

    async fn call(app: Router, path: &str) -> (StatusCode, HeaderMap, serde_json::Value) {
        let res = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_with_the_request_id() {
        let (status, headers, body) = call(app(Protection::default()), "/panic").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["content-type"], problem::CONTENT_TYPE);
        assert_eq!(body["type"], format!("{}internal-error", problem::TYPE_BASE));
        assert_eq!(headers[&REQUEST_ID].len(), 36);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_timeout_is_a_408_problem() {
        let protection = Protection { request_timeout: Duration::from_secs(10), ..Protection::default() };
        let (status, headers, body) = call(app(protection), "/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(headers["content-type"], problem::CONTENT_TYPE);
        assert_eq!(body["type"], format!("{}request-timeout", problem::TYPE_BASE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_within_the_timeout_is_answered() {
        let protection = Protection { request_timeout: Duration::from_secs(30), ..Protection::default() };
        let res = app(protection).oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn no_free_slot_is_a_503_overloaded_problem_and_unknown_paths_are_404_problems() {
        let (status, _, body) =
            call(app(Protection { max_concurrent_requests: 0, ..Protection::default() }), "/slow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["type"], format!("{}overloaded", problem::TYPE_BASE));
        let (status, headers, body) = call(app(Protection::default()), "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], problem::CONTENT_TYPE);
        assert_eq!(body["type"], format!("{}not-found", problem::TYPE_BASE));
    }

    #[test]
    fn generated_ids_are_version_8_uuids_and_differ() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 36);
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{s}");
            assert!(groups[2].starts_with('8'), "version 8: {s}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "RFC 9562 variant: {s}");
        }
    }

    #[test]
    fn uuid_text_keeps_the_bits_it_does_not_mark() {
        let text = uuid_text(0x0123_4567_89ab_cdef, 0x0011_2233_4455_6677);
        assert_eq!(std::str::from_utf8(&text).unwrap(), "01234567-89ab-8def-8011-223344556677");
    }

    #[test]
    fn routes_are_found_by_template_and_unknown_ones_count_as_unmatched() {
        let l = Latency::new(["/livez", "/v1/users/{user_id}/streams"]);
        assert_eq!(l.route(Some("/livez")), 0);
        assert_eq!(l.route(Some("/v1/users/{user_id}/streams")), 1);
        assert_eq!(l.route(None), 2);
        assert_eq!(l.route(Some("/elsewhere")), 2);
        assert_eq!(&*l.routes[2], metrics::UNMATCHED_ROUTE);
    }
}
