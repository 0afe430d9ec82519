//! Who is calling and what they may do: the [`Authed`] extractor
//! authenticates, refusing a source that failed too often and charging
//! each failure to its source, and charges the per-credential bucket; [`admit`] settles
//! whose streams a request acts on, checks the caller's right to them and
//! charges the per-user bucket, and [`resolve`] picks the plan that applies.
//! All of it runs before the store is called, and none of it reaches the
//! store.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};

use super::AppState;
use super::problem::ApiError;
use super::source::Source;
use crate::auth::{AuthError, Caller};
use crate::limiter::UserId;
use crate::metrics;
use crate::policy::Resolved;

/// The authenticated caller, already charged one token of its
/// per-credential rate limit.
pub(super) struct Authed(pub(super) Caller);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let source = Source::of(parts, state);
        authenticate(state, source, parts.headers.get(header::AUTHORIZATION)).map(Self)
    }
}

/// The authenticated caller of a `/v1/me` route, which must be a user's
/// token: a request without one is refused here, before anything in it is
/// read, as a request without a credential is on any other route.
pub(super) struct AuthedUser(pub(super) Caller);

impl FromRequestParts<Arc<AppState>> for AuthedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let Authed(caller) = Authed::from_request_parts(parts, state).await?;
        own_user(&caller)?;
        Ok(Self(caller))
    }
}

/// The caller behind an `Authorization` value (`Bearer <token or key>`),
/// charged one token of its per-credential rate limit. The extractor and
/// the WebSocket routes, whose browsers send the token another way, share it.
///
/// A credential from a source whose failures have emptied its bucket is
/// refused with 429 before it is read, so a flood of bad credentials costs
/// the verifier nothing; every credential that fails charges its source.
/// A request without any credential is neither refused nor charged: it
/// gives the verifier no work and guesses nothing.
pub(super) fn authenticate(
    state: &AppState,
    source: Source,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, ApiError> {
    let charged = authorization.and(source.0);
    if let Some(ip) = charged {
        state.rate.check_source(ip).map_err(|wait| {
            metrics::rate_limited("auth_failure");
            ApiError::RateLimited(wait)
        })?;
    }
    let verified = match authorization.map(HeaderValue::to_str) {
        Some(Err(_)) => Err(ApiError::Unauthorized("malformed Authorization header".into())),
        Some(Ok(value)) => state.auth.authenticate(Some(value)).map_err(unauthorized),
        None => state.auth.authenticate(None).map_err(unauthorized),
    };
    let caller = verified.inspect_err(|_| {
        metrics::auth_failure();
        if let Some(ip) = charged {
            state.rate.charge_source(ip);
        }
    })?;
    if let Some(key) = caller.credential_key() {
        state.rate.check_credential(&key).map_err(|wait| {
            metrics::rate_limited("credential");
            ApiError::RateLimited(wait)
        })?;
    }
    Ok(caller)
}

fn unauthorized(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing | AuthError::Invalid(_) => ApiError::Unauthorized(e.to_string()),
    }
}

/// Whose streams a request acts on.
pub(super) enum Whose {
    /// The `{user_id}` of a `/v1/users` route.
    User(UserId),
    /// The token's own user, on a `/v1/me` route.
    Mine,
}

/// What a route needs from its caller.
#[derive(Clone, Copy)]
pub(super) enum Need {
    /// To read or change this user's streams.
    ActFor,
    /// To change overrides or revoke every stream.
    Admin,
}

/// The user a request acts on, once the caller may do what the route
/// needs and the user's rate limit has a token to spare.
pub(super) fn admit(state: &AppState, caller: &Caller, whose: Whose, need: Need) -> Result<UserId, ApiError> {
    let user = match whose {
        Whose::User(user) => user,
        Whose::Mine => own_user(caller)?,
    };
    let allowed = match need {
        Need::ActFor => caller.may_act_for(&user),
        Need::Admin => caller.is_admin(),
    };
    if !allowed {
        return Err(ApiError::Forbidden(match need {
            Need::ActFor => format!("this credential may not act for user {user}"),
            Need::Admin => "this needs an admin key or the streams:admin scope".to_owned(),
        }));
    }
    state.rate.check_user(&user).map_err(|wait| {
        metrics::rate_limited("user");
        ApiError::RateLimited(wait)
    })?;
    Ok(user)
}

/// The user behind a player token, for the `/v1/me` routes.
fn own_user(caller: &Caller) -> Result<UserId, ApiError> {
    match caller {
        Caller::User { user, .. } => Ok(user.clone()),
        Caller::Anonymous => Err(ApiError::Unauthorized("/v1/me needs a user token".into())),
        Caller::Service { .. } => {
            Err(ApiError::Forbidden("an API key has no user of its own; use /v1/users/{user_id}".into()))
        }
    }
}

/// The policy for this request: the limit and on-limit behaviour of the
/// plan that applies, or of the default. An unknown plan is a 400.
pub(super) fn resolve(state: &AppState, caller: &Caller, requested: Option<&str>) -> Result<Resolved, ApiError> {
    state.policy.resolve(plan_of(caller, requested)?).map_err(|e| ApiError::BadRequest(e.to_string()))
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
