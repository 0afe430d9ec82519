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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::auth::KeyScope;

    /// A writer that keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(caller: &Caller, ok: bool) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
        let user = UserId::new("alice").unwrap();
        tracing::subscriber::with_default(subscriber, || record(caller, &user, "revoke_all", ok, "revoked=2"));
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_line_names_the_actor_of_each_kind_of_credential_and_the_outcome() {
        let jwt = Caller::User { user: UserId::new("support-7").unwrap(), plan: None, scopes: Default::default() };
        let key = Caller::Service { name: "support-desk".into(), scope: KeyScope::Admin };
        for (caller, ok, actor, kind, outcome) in [
            (&jwt, true, "\"support-7\"", "\"jwt\"", "\"ok\""),
            (&key, false, "\"support-desk\"", "\"api_key\"", "\"unavailable\""),
            (&Caller::Anonymous, true, "\"-\"", "\"anonymous\"", "\"ok\""),
        ] {
            let line = logged(caller, ok);
            for needle in [
                " INFO ".to_owned(),
                format!("{TARGET}: admin action"),
                format!("actor={actor} actor_kind={kind} user=alice action=\"revoke_all\" outcome={outcome}"),
                "detail=\"revoked=2\"".to_owned(),
            ] {
                assert!(line.contains(&needle), "{needle} not in {line}");
            }
        }
    }
}
