//! The audit trail of admin changes: one INFO event per change made
//! through the API with an admin credential (an override set or cleared, a
//! stream stopped, all of a user's streams revoked), on the target
//! `streamcap::audit`, and one count in `streamcap_admin_actions_total`.
//! It names the actor, the user, the action and the outcome; never a
//! credential, and the metric never a user.

use crate::auth::Caller;
use crate::limiter::UserId;
use crate::metrics;

/// The target of every audit event, for filtering (`RUST_LOG`) and search.
pub const TARGET: &str = "streamcap::audit";

/// Records that `caller` did `action` (one of [`metrics::ADMIN_ACTIONS`])
/// to `user`; `ok` is false when the store failed, and `detail` says what
/// changed (`limit=5 expires_at=…`, `stream=tv-1 revoked=1`).
pub(super) fn record(caller: &Caller, user: &UserId, action: &'static str, ok: bool, detail: &str) {
    let (actor_kind, actor) = match caller {
        Caller::Anonymous => ("anonymous", "-"),
        Caller::Service { name, .. } => ("api_key", name.as_str()),
        Caller::User { user, .. } => ("jwt", user.as_str()),
    };
    let outcome = if ok { "ok" } else { "unavailable" };
    tracing::info!(target: TARGET, actor, actor_kind, user = %user, action, outcome, detail, "admin action");
    metrics::admin_action(action, ok);
}
