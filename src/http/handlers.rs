//! The route handlers. Each one authenticates the caller, checks what the
//! caller may do, validates input into limiter types, resolves policy, calls
//! the store once and turns its answer into JSON. None decides anything.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
#[allow(unused_imports)] // some are named only in #[utoipa::path] attributes
use super::dto::{
    self, AcquireBody, LeaseBody, LimitBody, ListBody, PlanQuery, ProblemBody, RevokedBody, SetLimitBody, StatusBody,
    StreamView,
};
use super::extract::{OptionalJson, PlanParam, StreamOnlyPath, StreamPath, UserPath};
use super::problem::{ApiError, Problem};
use crate::auth::{AuthError, Caller};
use crate::clock::{Clock, SystemClock};
use crate::limiter::{Acquire, Decision, Label, Lease, Limit, RevokeReason, StreamId, UserId};
use crate::metrics;
use crate::policy::{OnStoreError, Resolved};
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

/// The authenticated caller, already charged one token of its
/// per-credential rate limit.
pub(super) struct Authed(Caller);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?),
        };
        let caller = state.auth.authenticate(header).map_err(|e| {
            metrics::auth_failure();
            match e {
                AuthError::Missing | AuthError::Invalid(_) => ApiError::Unauthorized(e.to_string()),
            }
        })?;
        if let Some(key) = caller.credential_key() {
            state.rate.check_credential(&key).map_err(|wait| {
                metrics::rate_limited("credential");
                ApiError::RateLimited(wait)
            })?;
        }
        Ok(Self(caller))
    }
}

/// What a route needs from its caller.
#[derive(Clone, Copy)]
enum Need {
    /// To read or change this user's streams.
    ActFor,
    /// To change overrides or revoke every stream.
    Admin,
}

/// Checks permission, then charges the user's rate limit.
fn admit(state: &AppState, caller: &Caller, user: &UserId, need: Need) -> Result<(), ApiError> {
    let allowed = match need {
        Need::ActFor => caller.may_act_for(user),
        Need::Admin => caller.is_admin(),
    };
    if !allowed {
        return Err(ApiError::Forbidden(match need {
            Need::ActFor => format!("this credential may not act for user {user}"),
            Need::Admin => "this needs an admin key or the streams:admin scope".to_owned(),
        }));
    }
    state.rate.check_user(user.as_str()).map_err(|wait| {
        metrics::rate_limited("user");
        ApiError::RateLimited(wait)
    })
}

/// The user behind a player token, for the `/v1/me` routes.
fn me(caller: &Caller) -> Result<UserId, ApiError> {
    match caller {
        Caller::User { user, .. } => Ok(user.clone()),
        Caller::Anonymous => Err(ApiError::Unauthorized("/v1/me needs a user token".into())),
        Caller::Service { .. } => {
            Err(ApiError::Forbidden("an API key has no user of its own; use /v1/users/{user_id}".into()))
        }
    }
}

/// The plan that applies: a token's plan claim always wins; a user token
/// without one may not pick a plan; services and open mode may.
fn plan_of<'a>(caller: &'a Caller, requested: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match caller {
        Caller::User { plan: Some(p), .. } => Ok(Some(p)),
        c if c.is_service() => Ok(requested),
        _ if requested.is_some() => Err(ApiError::Forbidden("only a service may choose the plan".into())),
        _ => Ok(None),
    }
}

fn resolve(state: &AppState, plan: Option<&str>) -> Result<Resolved, ApiError> {
    state.policy.resolve(plan).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/streams/{stream_id}",
    tag = "streams",
    summary = "Acquire or renew a stream's lease",
    params(("user_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]"), ("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]")),
    request_body(content = Option<AcquireBody>, content_type = "application/json", description = "Optional; an empty body is fine"),
    responses(
        (status = 201, description = "A new lease was granted (Location header set)", body = LeaseBody),
        (status = 200, description = "The live lease was renewed", body = LeaseBody),
        (status = 409, description = "The account is full (`stream-limit-reached`)", body = ProblemBody, content_type = "application/problem+json"),
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
    StreamPath(user, stream): StreamPath,
    OptionalJson(body): OptionalJson<AcquireBody>,
) -> Result<Response, ApiError> {
    admit(&state, &caller, &user, Need::ActFor)?;
    acquire_for(&state, &caller, user, stream, body).await
}

#[utoipa::path(
    put,
    path = "/v1/me/streams/{stream_id}",
    tag = "me",
    summary = "Acquire or renew, for the user of the token",
    params(("stream_id" = String, Path, description = "1-128 of [A-Za-z0-9._~:@-]")),
    request_body(content = Option<AcquireBody>, content_type = "application/json", description = "Optional; an empty body is fine"),
    responses(
        (status = 201, description = "A new lease was granted", body = LeaseBody),
        (status = 200, description = "The live lease was renewed", body = LeaseBody),
        (status = 409, description = "The account is full", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "The stream was evicted or revoked", body = ProblemBody, content_type = "application/problem+json"),
        CommonErrors,
    ),
    security(("bearer_jwt" = []))
)]
pub(super) async fn acquire_mine(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    StreamOnlyPath(stream): StreamOnlyPath,
    OptionalJson(body): OptionalJson<AcquireBody>,
) -> Result<Response, ApiError> {
    let user = me(&caller)?;
    admit(&state, &caller, &user, Need::ActFor)?;
    acquire_for(&state, &caller, user, stream, body).await
}

async fn acquire_for(
    state: &AppState,
    caller: &Caller,
    user: UserId,
    stream: StreamId,
    body: AcquireBody,
) -> Result<Response, ApiError> {
    let label = |field: &str, v: Option<String>| {
        v.map(|s| Label::new(&s).map_err(|e| ApiError::BadRequest(format!("{field} {e}")))).transpose()
    };
    let evict = body
        .evict
        .unwrap_or_default()
        .iter()
        .map(|s| StreamId::new(s).map_err(|e| ApiError::BadRequest(format!("evict: stream id {s:?} {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = resolve(state, plan_of(caller, body.plan.as_deref())?)?;
    let req = Acquire {
        stream_id: stream,
        device_id: label("device_id", body.device_id)?,
        content_id: label("content_id", body.content_id)?,
        limit: policy.limit,
        ttl: state.policy.lease_ttl,
        on_limit: policy.on_limit,
        evict,
        enforce: state.policy.enforce,
    };
    let (ttl, enforced) = (req.ttl.as_secs(), req.enforce);
    let fallback = (state.policy.on_store_error == OnStoreError::Allow).then(|| req.clone());
    let decision = match (state.store.acquire(&user, req).await, fallback) {
        (Ok(d), _) => d,
        (Err(e), None) => return Err(e.into()),
        (Err(e), Some(req)) => {
            // Fail open, as configured: admit unchecked, and say so.
            tracing::warn!(error = %e, "store unavailable; granting degraded as on_store_error = allow");
            metrics::degraded_grant();
            let now = SystemClock.now();
            let lease = Lease {
                stream_id: req.stream_id,
                device_id: req.device_id,
                content_id: req.content_id,
                started_at: now,
                expires_at: now.plus(req.ttl),
            };
            let body = LeaseBody::degraded(&user, &lease, ttl, req.limit.get(), enforced);
            return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
        }
    };
    match decision {
        Decision::Granted(g) => {
            let location = format!("/v1/users/{user}/streams/{}", g.lease.stream_id);
            let body = LeaseBody::new(&user, &g, ttl, enforced);
            let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            Ok(res)
        }
        Decision::Renewed(g) => Ok(axum::Json(LeaseBody::new(&user, &g, ttl, enforced)).into_response()),
        Decision::Denied(d) => {
            let live: Vec<StreamView<'_>> = d.live.iter().map(StreamView::from).collect();
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "stream-limit-reached",
                "Stream limit reached",
                format!(
                    "user {user} already has {} of {} streams active; stop one to start another",
                    live.len(),
                    d.limit.get()
                ),
            )
            .with("limit", json!(d.limit.get()))
            .with("active_streams", json!(live));
            Err(ApiError::Problem(problem))
        }
        Decision::Gone(t) => {
            let (reason, detail) = match &t.reason {
                RevokeReason::EvictedBy(by) => (
                    "evicted_by_new_stream",
                    format!("stream {} was stopped to make room for stream {by}", t.stream_id),
                ),
                RevokeReason::Revoked => ("revoked", format!("stream {} was revoked", t.stream_id)),
            };
            let mut problem = Problem::new(StatusCode::GONE, "stream-revoked", "Stream revoked", detail)
                .with("reason", json!(reason));
            if let RevokeReason::EvictedBy(by) = &t.reason {
                problem = problem.with("by_stream_id", json!(by.as_str()));
            }
            Err(ApiError::Problem(problem))
        }
    }
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
    StreamPath(user, stream): StreamPath,
) -> Result<StatusCode, ApiError> {
    admit(&state, &caller, &user, Need::ActFor)?;
    state.store.release(&user, stream).await?;
    Ok(StatusCode::NO_CONTENT)
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
    Authed(caller): Authed,
    StreamOnlyPath(stream): StreamOnlyPath,
) -> Result<StatusCode, ApiError> {
    let user = me(&caller)?;
    admit(&state, &caller, &user, Need::ActFor)?;
    state.store.release(&user, stream).await?;
    Ok(StatusCode::NO_CONTENT)
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
    UserPath(user): UserPath,
) -> Result<Response, ApiError> {
    admit(&state, &caller, &user, Need::Admin)?;
    let revoked = state.store.revoke_all(&user, state.policy.lease_ttl).await?;
    let body = RevokedBody { revoked: revoked.iter().map(StreamId::as_str).collect() };
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
    UserPath(user): UserPath,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    admit(&state, &caller, &user, Need::ActFor)?;
    list_for(&state, &caller, user, query).await
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
    Authed(caller): Authed,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    let user = me(&caller)?;
    admit(&state, &caller, &user, Need::ActFor)?;
    list_for(&state, &caller, user, query).await
}

async fn list_for(state: &AppState, caller: &Caller, user: UserId, query: PlanQuery) -> Result<Response, ApiError> {
    let policy = resolve(state, plan_of(caller, query.plan.as_deref())?)?;
    let (limit, live) = state.store.list(&user, policy.limit).await?;
    let body = ListBody {
        user_id: user.as_str(),
        limit: limit.get(),
        active_streams: live.iter().map(StreamView::from).collect(),
    };
    Ok(axum::Json(body).into_response())
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
    UserPath(user): UserPath,
    PlanParam(query): PlanParam<PlanQuery>,
) -> Result<Response, ApiError> {
    admit(&state, &caller, &user, Need::ActFor)?;
    let policy = resolve(&state, plan_of(&caller, query.plan.as_deref())?)?;
    let (limit, source) = state.store.limit(&user, policy.limit, policy.source).await?;
    let body = LimitBody { user_id: user.as_str(), limit: limit.get(), source: dto::source_name(source) };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/limit",
    tag = "limits",
    summary = "Set a per-user override (admin)",
    description = "Durable. Lowering it below the live count evicts nobody; new acquires are refused until the count drops.",
    params(("user_id" = String, Path)),
    request_body(content = SetLimitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The override now in force", body = LimitBody),
        CommonErrors,
    ),
    security((), ("bearer_jwt" = []), ("api_key" = []))
)]
pub(super) async fn set_limit(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    UserPath(user): UserPath,
    OptionalJson(body): OptionalJson<SetLimitBody>,
) -> Result<Response, ApiError> {
    admit(&state, &caller, &user, Need::Admin)?;
    let n = body.limit.ok_or_else(|| ApiError::BadRequest("limit is required, e.g. {\"limit\": 5}".into()))?;
    let limit =
        Limit::new(n).ok_or_else(|| ApiError::BadRequest(format!("limit {n} is out of range 0..={}", Limit::MAX)))?;
    state.store.set_override(&user, Some(limit)).await?;
    let body = LimitBody { user_id: user.as_str(), limit: limit.get(), source: "override" };
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
    UserPath(user): UserPath,
) -> Result<StatusCode, ApiError> {
    admit(&state, &caller, &user, Need::Admin)?;
    state.store.set_override(&user, None).await?;
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
        (status = 200, description = "Ready", body = StatusBody),
        (status = 503, description = "The store does not answer", body = ProblemBody, content_type = "application/problem+json")
    )
)]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    // Readiness must answer quickly even when the store hangs.
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(axum::Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::Store(e)),
        Err(_) => Err(ApiError::Store(StoreError::Unavailable("ping timed out".into()))),
    }
}

pub(super) async fn not_found() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}
