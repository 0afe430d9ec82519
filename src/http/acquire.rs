//! The acquire path that the `PUT`, the WebSocket routes and the API
//! Gateway front share: the caller admitted and the request validated into
//! an `Acquire` with the policy of its plan (`acquire_request`), the store
//! called and this instance's sockets told of the leases it evicted
//! (`acquire_lease`), and the answer rendered as the `PUT` gives it
//! (`acquired`). It decides nothing; it must never import a route module.

use axum::response::Response;

use super::AppState;
use super::access::{Need, Whose, admit, resolve};
use super::dto::AcquireBody;
use super::problem::ApiError;
use super::respond;
use crate::auth::Caller;
use crate::limiter::{Acquire, Decision, Label, StreamId, UserId};
use crate::policy::OnStoreError;
use crate::store::StoreError;

/// The user an acquire acts on, once the caller is admitted for it, and
/// the acquire body validated into limiter types with the policy of the
/// plan that applies. The `PUT` and the WebSocket routes share it, so both
/// follow the same rules in the same order.
pub(super) fn acquire_request(
    state: &AppState,
    caller: &Caller,
    whose: Whose,
    stream: StreamId,
    body: AcquireBody,
) -> Result<(UserId, Acquire), ApiError> {
    let user = admit(state, caller, whose, Need::ActFor)?;
    let label = |field: &str, v: Option<String>| {
        v.map(|s| Label::new(&s).map_err(|e| ApiError::BadRequest(format!("{field} {e}")))).transpose()
    };
    let evict = body
        .evict
        .unwrap_or_default()
        .iter()
        .map(|s| StreamId::new(s).map_err(|e| ApiError::BadRequest(format!("evict: stream id {s:?} {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = resolve(state, caller, body.plan.as_deref())?;
    let policy_named = policy.plan.is_some();
    let req = Acquire {
        stream_id: stream,
        device_id: label("device_id", body.device_id)?,
        content_id: label("content_id", body.content_id)?,
        device_class: trait_label("device_class", body.device_class)?,
        content_kind: trait_label("content_kind", body.content_kind)?,
        plan: policy.plan,
        limit: policy.limit,
        rules: policy.rules,
        ttl: state.policy.lease_ttl,
        on_limit: policy.on_limit,
        evict,
        enforce: state.policy.enforce,
        // A request that names no plan keeps the plan of its lease.
        plans: if policy_named { None } else { state.plans.clone() },
        held: false,
        holder: None,
    };
    Ok((user, req))
}

/// The answer to an admitted, validated acquire, exactly as the `PUT`
/// gives it: 201, 200, 409, 410, 503, or a degraded 201 when the policy
/// fails open. The `PUT` and the WebSocket routes share it.
pub(super) async fn acquired(state: &AppState, user: UserId, req: Acquire) -> Result<Response, ApiError> {
    // A degraded grant needs the request that the store call consumes.
    let fallback = (state.policy.on_store_error == OnStoreError::Allow).then(|| req.clone());
    let answer = acquire_lease(state, &user, req).await;
    respond::acquired(state, user, answer, fallback)
}

/// The store's acquire, with this instance's sockets told at once about
/// the leases it evicted. Every acquire, from a `PUT` or a socket, goes
/// through here.
pub(super) async fn acquire_lease(state: &AppState, user: &UserId, req: Acquire) -> Result<Decision, StoreError> {
    let answer = state.store.acquire(user, req).await;
    if let Ok(Decision::Granted(grant) | Decision::Renewed(grant)) = &answer {
        state.sockets.granted(user, grant);
    }
    answer
}

/// A trait that rules match on (`device_class`, `content_kind`): a label
/// of the id alphabet, as the configured rules' values are, so that a
/// value a rule could never match is refused rather than quietly ignored.
fn trait_label(field: &str, value: Option<String>) -> Result<Option<Label>, ApiError> {
    let Some(s) = value else { return Ok(None) };
    Label::id(&s).map(Some).map_err(|e| ApiError::BadRequest(format!("{field} {e}")))
}
