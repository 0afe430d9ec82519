//! The routes, one function each, with the OpenAPI documentation of each
//! route on it. A route's body names whose streams it acts on and hands the
//! request to the operation it shares with its `/v1/users` or `/v1/me`
//! twin: each operation admits the caller, validates input into limiter
//! types, resolves policy, calls the store once and renders its answer.
//! None decides anything.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::access::{Authed, AuthedUser, Need, Whose, admit, resolve};
use super::acquire::{acquire_request, acquired};
use super::audit;
#[allow(unused_imports)] // some are named only in #[utoipa::path] attributes
use super::dto::{
    self, AcquireBody, ActiveStream, ClockBody, LeaseBody, LimitBody, ListBody, PlanQuery, ProblemBody, ReadyBody,
    RevokedBody, SetLimitBody, SocketMessage, SocketQuery, StatusBody, StreamView, TombstoneView,
};
use super::extract::{IfMatch, OptionalJson, PathIds, PlanParam};
use super::problem::{ApiError, Problem};
use super::source::Source;
use crate::auth::Caller;
use crate::clock::TimeSource;
use crate::limiter::{Acquire, Limit, Override, StreamId, Timestamp, UserId};
use crate::store::StoreError;

/// The error answers every authenticated route shares, for the OpenAPI
/// document. Each is an RFC 9457 problem.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never built
enum CommonErrors {
    /// Malformed id, body or plan
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(ProblemBody),
    /// Missing or invalid credential (with `WWW-Authenticate: Bearer`)
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(ProblemBody),
    /// Not allowed for this credential
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemBody),
    /// Rate limited (with `Retry-After`)
    #[response(status = 429, content_type = "application/problem+json")]
    RateLimited(ProblemBody),
    /// Store unavailable or overloaded
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(ProblemBody),
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/streams/{stream_id}",
    tag = "streams",
    summary = "Acquire or renew a stream's lease",
    params(("user_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"), ("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"), ("If-Match" = Option<String>, Header, description = "`*`: renew the stream's live lease, never start a new one (412 when it holds none); a degraded answer to it is 200")),
    request_body(content = Option<AcquireBody>, content_type = "application/json", description = "Optional; an empty body is fine"),
    responses(
        (status = 201, description = "A new lease was granted (Location header set)", body = LeaseBody),
        (status = 200, description = "The live lease was renewed", body = LeaseBody),
        (status = 412, description = "`If-Match: *` and the stream holds no live lease, or `If-Match` named an entity tag (`lease-not-held`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The account, or the scope of a rule that the stream falls under, is full (`stream-limit-reached`; `rule` and `rule_limit` name the rule)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "The stream was evicted or revoked (`stream-revoked`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn acquire(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds((user, stream)): PathIds<(UserId, StreamId)>,
    if_match: IfMatch,
    OptionalJson(body): OptionalJson<AcquireBody>,
) -> Result<Response, ApiError> {
    acquire_for(&state, &caller, Whose::User(user), stream, body, if_match).await
}

#[utoipa::path(
    put,
    path = "/v1/me/streams/{stream_id}",
    tag = "me",
    summary = "Acquire or renew, for the user of the token",
    params(("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"), ("If-Match" = Option<String>, Header, description = "`*`: renew the stream's live lease, never start a new one (412 when it holds none); a degraded answer to it is 200")),
    request_body(content = Option<AcquireBody>, content_type = "application/json", description = "Optional; an empty body is fine"),
    responses(
        (status = 201, description = "A new lease was granted", body = LeaseBody),
        (status = 200, description = "The live lease was renewed", body = LeaseBody),
        (status = 412, description = "`If-Match: *` and the stream holds no live lease (`lease-not-held`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The account, or a rule's scope, is full", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "The stream was evicted or revoked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        CommonErrors,
    ),
    security(("bearer_jwt" = []))
)]
pub(super) async fn acquire_mine(
    State(state): State<Arc<AppState>>,
    AuthedUser(caller): AuthedUser,
    PathIds(stream): PathIds<StreamId>,
    if_match: IfMatch,
    OptionalJson(body): OptionalJson<AcquireBody>,
) -> Result<Response, ApiError> {
    acquire_for(&state, &caller, Whose::Mine, stream, body, if_match).await
}

/// The answers of the WebSocket routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never built
enum SocketAnswers {
    /// Switching Protocols: the connection is a WebSocket. The lease was
    /// acquired as the `PUT` acquires it, and the first text message says
    /// how that went (`SocketMessage`: `granted`, or `refused`, `revoked`
    /// or `error` followed by a close with 4000 + the `PUT`'s status).
    /// While the lease is held, the server renews it every ttl/3 and pings
    /// the client at the same pace, sending `renewed`; it renews only while
    /// the client answers. Closing the socket releases the lease. The
    /// subprotocol `streamcap.v1` is chosen when offered.
    #[response(status = 101)]
    Upgraded,
    /// A request that cannot be upgraded, with a malformed id or query, or
    /// with subprotocols offered without `streamcap.v1`
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(ProblemBody),
    /// A request that cannot be upgraded, without a valid credential
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(ProblemBody),
    /// A page of an origin that `--cors-allowed-origins` does not list; or
    /// a request that cannot be upgraded, for a user this credential may
    /// not act for
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemBody),
    /// A valid request that is not a WebSocket upgrade (`upgrade-required`,
    /// with `Upgrade: websocket`)
    #[response(status = 426, content_type = "application/problem+json")]
    UpgradeRequired(ProblemBody),
    /// A request that cannot be upgraded, rate limited (with `Retry-After`)
    #[response(status = 429, content_type = "application/problem+json")]
    RateLimited(ProblemBody),
    /// Too many requests in flight (`overloaded`)
    #[response(status = 503, content_type = "application/problem+json")]
    Overloaded(ProblemBody),
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/streams/{stream_id}/socket",
    tag = "streams",
    summary = "Hold a stream's lease for as long as a WebSocket stays open",
    description = "The same acquire as the `PUT`, with the body's fields as query parameters, and the same \
authorization. Browsers, which cannot set headers on a WebSocket, offer the subprotocols \
`streamcap.v1, streamcap.bearer.<token>` instead of `Authorization`. Every refusal after a valid upgrade \
is a message and a close code, never an HTTP status: see `SocketMessage`.",
    params(
        ("user_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"),
        ("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"),
        SocketQuery,
    ),
    responses(SocketAnswers),
    security((), ("bearer_jwt" = []), ("api_key" = []), ("bearer_subprotocol" = []))
)]
pub(super) async fn socket(
    State(state): State<Arc<AppState>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    source: Source,
    path: Result<PathIds<(UserId, StreamId)>, ApiError>,
    query: Result<PlanParam<SocketQuery>, ApiError>,
) -> Response {
    let target = path.map(|PathIds((user, stream))| (Whose::User(user), stream));
    super::socket::open(state, upgrade, &headers, source, target, query.map(|PlanParam(q)| q)).await
}

#[utoipa::path(
    get,
    path = "/v1/me/streams/{stream_id}/socket",
    tag = "me",
    summary = "Hold a stream's lease over a WebSocket, for the user of the token",
    params(("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"), SocketQuery),
    responses(SocketAnswers),
    security(("bearer_jwt" = []), ("bearer_subprotocol" = []))
)]
pub(super) async fn socket_mine(
    State(state): State<Arc<AppState>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    source: Source,
    path: Result<PathIds<StreamId>, ApiError>,
    query: Result<PlanParam<SocketQuery>, ApiError>,
) -> Response {
    let target = path.map(|PathIds(stream)| (Whose::Mine, stream));
    super::socket::open(state, upgrade, &headers, source, target, query.map(|PlanParam(q)| q)).await
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/streams/{stream_id}",
    tag = "streams",
    summary = "Release a stream's lease (no tombstone)",
    params(("user_id" = String, Path), ("stream_id" = String, Path)),
    responses(
        (status = 204, description = "Released, or there was nothing to release"),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn release(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds((user, stream)): PathIds<(UserId, StreamId)>,
) -> Result<StatusCode, ApiError> {
    release_for(&state, &caller, Whose::User(user), stream).await
}

#[utoipa::path(
    delete,
    path = "/v1/me/streams/{stream_id}",
    tag = "me",
    summary = "Release, for the user of the token",
    params(("stream_id" = String, Path)),
    responses(
        (status = 204, description = "Released, or there was nothing to release"),
        CommonErrors,
    ),
    security(("bearer_jwt" = []))
)]
pub(super) async fn release_mine(
    State(state): State<Arc<AppState>>,
    AuthedUser(caller): AuthedUser,
    PathIds(stream): PathIds<StreamId>,
) -> Result<StatusCode, ApiError> {
    release_for(&state, &caller, Whose::Mine, stream).await
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/streams",
    tag = "streams",
    summary = "Revoke every live stream of a user (admin)",
    description = "Each revoked stream leaves a tombstone until its former expiry plus one TTL; a PUT for it gets 410.",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, description = "The streams that were revoked", body = RevokedBody),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn revoke_all(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds(user): PathIds<UserId>,
) -> Result<Response, ApiError> {
    let user = admit(&state, &caller, Whose::User(user), Need::Admin)?;
    let answer = state.store.revoke_all(&user, state.policy.lease_ttl).await;
    let detail = match &answer {
        Ok(revoked) => format!("revoked={}", revoked.len()),
        Err(_) => String::new(),
    };
    audit::record(&caller, &user, "revoke_all", answer.is_ok(), &detail);
    let revoked = answer?;
    state.sockets.revoked(&user, &revoked);
    let body = RevokedBody { revoked: revoked.iter().map(|l| l.stream_id.as_str()).collect() };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/streams/{stream_id}/revoke",
    tag = "streams",
    summary = "Stop one stream of a user (admin)",
    description = "Revokes the stream's live lease, as revoke-all does for every stream: it leaves a tombstone until \
its former expiry plus one TTL (a PUT for it gets 410), and a WebSocket holding it gets `revoked`. A stream \
that holds no live lease is left as it is.",
    params(("user_id" = String, Path), ("stream_id" = String, Path)),
    responses(
        (status = 200, description = "`revoked` names the stream, or is empty when it held no live lease", body = RevokedBody),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn revoke_stream(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds((user, stream)): PathIds<(UserId, StreamId)>,
) -> Result<Response, ApiError> {
    let user = admit(&state, &caller, Whose::User(user), Need::Admin)?;
    let answer = state.store.revoke(&user, stream.clone(), state.policy.lease_ttl).await;
    let detail = match &answer {
        Ok(revoked) => format!("stream={stream} revoked={}", u8::from(revoked.is_some())),
        Err(_) => format!("stream={stream}"),
    };
    audit::record(&caller, &user, "revoke_stream", answer.is_ok(), &detail);
    let revoked: Vec<_> = answer?.into_iter().collect();
    state.sockets.revoked(&user, &revoked);
    let body = RevokedBody { revoked: revoked.iter().map(|l| l.stream_id.as_str()).collect() };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/streams",
    tag = "streams",
    summary = "List a user's live streams, oldest first",
    params(("user_id" = String, Path), PlanQuery),
    responses(
        (status = 200, description = "Live leases and the effective limit", body = ListBody),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds(user): PathIds<UserId>,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    list_for(&state, &caller, Whose::User(user), query).await
}

#[utoipa::path(
    get,
    path = "/v1/me/streams",
    tag = "me",
    summary = "List the token user's live streams",
    params(PlanQuery),
    responses(
        (status = 200, description = "Live leases and the effective limit", body = ListBody),
        CommonErrors,
    ),
    security(("bearer_jwt" = []))
)]
pub(super) async fn list_mine(
    State(state): State<Arc<AppState>>,
    AuthedUser(caller): AuthedUser,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    list_for(&state, &caller, Whose::Mine, query).await
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/limit",
    tag = "limits",
    summary = "The effective limit and its source",
    params(("user_id" = String, Path), PlanQuery),
    responses(
        (status = 200, description = "Override, else the plan's limit, else the default", body = LimitBody),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn get_limit(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds(user): PathIds<UserId>,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    let user = admit(&state, &caller, Whose::User(user), Need::ActFor)?;
    let policy = resolve(&state, &caller, query.plan.as_deref())?;
    let (limit, source, expires_at) = state.store.limit(&user, policy.limit, policy.source).await?;
    let body = LimitBody {
        user_id: user.as_str(),
        limit: limit.get(),
        source: dto::source_name(source),
        expires_at: expires_at.map(dto::rfc3339),
    };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/limit",
    tag = "limits",
    summary = "Set a per-user override (admin)",
    description = "Durable. Lowering it below the live count evicts nobody; new acquires are refused until the count drops. \
With `expires_at`, the override counts until then, and the plan's limit or the default applies again after it.",
    params(("user_id" = String, Path)),
    request_body(content = SetLimitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The override now in force", body = LimitBody),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn set_limit(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds(user): PathIds<UserId>,
    OptionalJson(body): OptionalJson<SetLimitBody>,
) -> Result<Response, ApiError> {
    let user = admit(&state, &caller, Whose::User(user), Need::Admin)?;
    let n = body.limit.ok_or_else(|| ApiError::BadRequest("limit is required, e.g. {\"limit\": 5}".into()))?;
    let limit =
        Limit::new(n).ok_or_else(|| ApiError::BadRequest(format!("limit {n} is out of range 0..={}", Limit::MAX)))?;
    let expires_at = body.expires_at.map(|v| override_expiry(&v, state.clock.now())).transpose()?;
    let set = Override { limit, expires_at };
    let answer = state.store.set_override(&user, Some(set)).await;
    let until = expires_at.map_or_else(|| "never".to_owned(), dto::rfc3339);
    audit::record(&caller, &user, "set_override", answer.is_ok(), &format!("limit={n} expires_at={until}"));
    answer?;
    let body = LimitBody {
        user_id: user.as_str(),
        limit: limit.get(),
        source: "override",
        expires_at: expires_at.map(dto::rfc3339),
    };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/limit",
    tag = "limits",
    summary = "Remove a per-user override (admin)",
    params(("user_id" = String, Path)),
    responses(
        (status = 204, description = "Removed, or there was none"),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn clear_limit(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    PathIds(user): PathIds<UserId>,
) -> Result<StatusCode, ApiError> {
    let user = admit(&state, &caller, Whose::User(user), Need::Admin)?;
    let answer = state.store.set_override(&user, None).await;
    audit::record(&caller, &user, "clear_override", answer.is_ok(), "");
    answer?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    summary = "Liveness: 200 while the process serves",
    responses((status = 200, description = "Alive", body = StatusBody))
)]
pub(super) async fn livez() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: 200 when the store answers",
    responses(
        (status = 200, description = "Ready, with the clock that judges expiry", body = ReadyBody),
        (status = 503, description = "The store does not answer", body = ProblemBody, content_type = "application/problem+json")
    )
)]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    // Readiness must answer quickly even when the store hangs.
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            let host = TimeSource::read();
            let clock = ClockBody {
                decides: state.store.clock_owner(),
                source: host.clocksource,
                synchronized: host.synchronized,
                max_error_ms: host.max_error_ms,
            };
            Ok(axum::Json(ReadyBody { status: "ready", instance: state.instance.to_string(), clock }))
        }
        Ok(Err(e)) => Err(ApiError::Store(e)),
        Err(_) => Err(ApiError::Store(StoreError::Unavailable("ping timed out".into()))),
    }
}

pub(super) async fn not_found() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}

// The operations that a `/v1/users/{user_id}` route and its `/v1/me` twin
// share. Each admits the caller first, so that a request the caller may
// not make never reaches the store.

async fn acquire_for(
    state: &AppState,
    caller: &Caller,
    whose: Whose,
    stream: StreamId,
    body: AcquireBody,
    if_match: IfMatch,
) -> Result<Response, ApiError> {
    let (user, req) = acquire_request(state, caller, whose, stream, body)?;
    // The precondition, once the request is admitted and valid.
    let held = match if_match {
        IfMatch::Absent => false,
        IfMatch::Any => true,
        IfMatch::Tags => return Err(ApiError::NotHeld(NO_ENTITY_TAGS)),
    };
    acquired(state, user, Acquire { held, ..req }).await
}

/// The 412 for an `If-Match` that names entity tags.
const NO_ENTITY_TAGS: &str = "streamcap issues no entity tags: send If-Match: * to renew a lease the stream holds";

async fn release_for(
    state: &AppState,
    caller: &Caller,
    whose: Whose,
    stream: StreamId,
) -> Result<StatusCode, ApiError> {
    let user = admit(state, caller, whose, Need::ActFor)?;
    state.store.release(&user, stream).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_for(state: &AppState, caller: &Caller, whose: Whose, query: PlanQuery) -> Result<Response, ApiError> {
    let user = admit(state, caller, whose, Need::ActFor)?;
    let policy = resolve(state, caller, query.plan.as_deref())?;
    let listing = state.store.listing(&user, policy.limit).await?;
    let ttl = state.policy.lease_ttl;
    let body = ListBody {
        user_id: user.as_str(),
        limit: listing.limit.get(),
        active_streams: listing.live.iter().map(|l| ActiveStream::new(l, ttl)).collect(),
        tombstones: listing.tombstones.iter().map(TombstoneView::from).collect(),
    };
    Ok(axum::Json(body).into_response())
}

/// An override's `expires_at` as given: an RFC 3339 time after `now` and
/// at most 366 days ahead of it.
fn override_expiry(value: &serde_json::Value, now: Timestamp) -> Result<Timestamp, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("expires_at {why}"));
    let text = value.as_str().ok_or_else(|| bad("must be a string holding an RFC 3339 time"))?;
    let at = dto::parse_rfc3339(text)
        .ok_or_else(|| bad(&format!("{text:?} is not an RFC 3339 time, e.g. \"2026-12-24T00:00:00Z\"")))?;
    if at <= now {
        return Err(bad(&format!("{text:?} is not in the future")));
    }
    if at.as_micros() - now.as_micros() > Override::MAX_AHEAD_MICROS {
        return Err(bad(&format!("{text:?} is more than 366 days ahead")));
    }
    Ok(at)
}
