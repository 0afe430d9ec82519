//! The configured rules `http` applies to each request before any store is
//! called.
//!
//! [`Policy`] says which limit, which rules and which on-limit behaviour
//! apply: plan → limit, plan → rule set, plan → on-limit behaviour, enforce
//! or shadow, TTL. The one input it cannot see is a per-user override,
//! which lives with the user in the store and wins over the total inside
//! the limiter. [`Protection`] holds the edge limits:
//! request rates, timeout and concurrency. Both are built by `config`;
//! nothing here does I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::limiter::{Label, Limit, LimitSource, OnLimit, Plans, Rule, Terms, Ttl};

/// The configured policy. Built and validated by `config`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_limit: Limit,
    /// What happens on a full account when the plan does not say.
    pub on_limit: OnLimit,
    /// Plan name → its limit and on-limit behaviour (already merged with
    /// `on_limit` when the plan has no override of its own).
    pub plans: BTreeMap<String, Plan>,
    /// The default rule set, in configured order: for requests without a
    /// plan, and for plans without a set of their own. Empty: no rules.
    pub rules: Arc<[Rule]>,
    /// Plan name → its own rule set, which replaces the default set for
    /// that plan (an empty set means no rules). Every name is in `plans`.
    pub plan_rules: BTreeMap<String, Arc<[Rule]>>,
    /// `false` is shadow mode: report, never deny or evict.
    pub enforce: bool,
    pub lease_ttl: Ttl,
    /// What an acquire answers when the store cannot.
    pub on_store_error: OnStoreError,
}

/// Fail closed or open when the store is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// 503: never grant what could not be checked.
    Deny,
    /// Grant without checking, marked `"degraded": true`: for platforms
    /// that would rather over-admit than block playback.
    Allow,
}

impl OnStoreError {
    pub const ALL: [Self; 2] = [Self::Deny, Self::Allow];

    pub fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub limit: Limit,
    pub on_limit: OnLimit,
}

/// The policy that applies to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The plan that applies, if any, as the lease keeps it.
    pub plan: Option<Label>,
    /// The plan's limit or the default; a per-user override may still win.
    pub limit: Limit,
    pub source: LimitSource,
    pub on_limit: OnLimit,
    /// The plan's own rule set, or else the default one.
    pub rules: Arc<[Rule]>,
}

/// A request named a plan the configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan {name:?} (known plans: {known})")]
pub struct UnknownPlan {
    pub name: String,
    pub known: String,
}

impl Policy {
    /// A policy with one limit for everyone and no plans.
    pub fn uniform(default_limit: Limit, lease_ttl: Ttl) -> Self {
        Self {
            default_limit,
            on_limit: OnLimit::Reject,
            plans: BTreeMap::new(),
            rules: Arc::from([]),
            plan_rules: BTreeMap::new(),
            enforce: true,
            lease_ttl,
            on_store_error: OnStoreError::Deny,
        }
    }

    /// The policy of `plan`, or the default one without a plan.
    /// Every plan's terms by name, as the rules apply them.
    pub fn terms(&self) -> Plans {
        self.plans
            .iter()
            .filter_map(|(name, p)| {
                let rules = self.plan_rules.get(name).unwrap_or(&self.rules).clone();
                // Plan names are validated as ids by `config`.
                Some((Label::new(name).ok()?, Terms { limit: p.limit, on_limit: p.on_limit, rules }))
            })
            .collect()
    }

    pub fn resolve(&self, plan: Option<&str>) -> Result<Resolved, UnknownPlan> {
        match plan {
            None => Ok(Resolved {
                plan: None,
                limit: self.default_limit,
                source: LimitSource::Default,
                on_limit: self.on_limit,
                rules: self.rules.clone(),
            }),
            Some(name) => match self.plans.get(name) {
                Some(p) => Ok(Resolved {
                    // Plan names are validated as ids by `config`, and an
                    // id is always a valid label.
                    plan: Label::new(name).ok(),
                    limit: p.limit,
                    source: LimitSource::Plan,
                    on_limit: p.on_limit,
                    rules: self.plan_rules.get(name).unwrap_or(&self.rules).clone(),
                }),
                None => Err(UnknownPlan {
                    name: name.to_owned(),
                    known: if self.plans.is_empty() {
                        "none configured".to_owned()
                    } else {
                        self.plans.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                    },
                }),
            },
        }
    }
}

impl OnLimit {
    pub const ALL: [Self; 2] = [Self::Reject, Self::EvictOldest];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::EvictOldest => "evict_oldest",
        }
    }
}

/// The edge limits, as configured: rate limits per user, per credential
/// and on failed authentication per source address, the request timeout
/// and load shedding, which `http` applies before any store is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protection {
    /// Requests per second per user id (0 = off) and the burst above it.
    pub user_rate: u32,
    pub user_burst: u32,
    /// Requests per second per credential (0 = off) and the burst above it.
    pub credential_rate: u32,
    pub credential_burst: u32,
    /// Failed authentications per second per source address (0 = off) and
    /// the burst above it. A source past it is refused before its
    /// credential is looked at.
    pub auth_failure_rate: u32,
    pub auth_failure_burst: u32,
    /// The proxies whose `X-Forwarded-For` names the source of a request.
    pub trusted_proxies: Vec<IpNet>,
    /// A request that takes longer is answered 408.
    pub request_timeout: Duration,
    /// More requests in flight than this are shed with 503.
    pub max_concurrent_requests: usize,
    /// The browser origins (`scheme://host[:port]`, lowercase) whose pages
    /// may call the `/v1` routes (CORS) and open their sockets; none by
    /// default, which sends no CORS headers and lets any socket open.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            user_rate: 20,
            user_burst: 40,
            credential_rate: 2000,
            credential_burst: 4000,
            auth_failure_rate: 10,
            auth_failure_burst: 20,
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Protection {
    /// No rate limits: for benchmarks and tests that are not about them.
    pub fn unlimited() -> Self {
        Self { user_rate: 0, credential_rate: 0, auth_failure_rate: 0, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_resolve_and_unknown_plans_are_named() {
        let mut p = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
        p.plans.insert("basic".into(), Plan { limit: Limit::new(1).unwrap(), on_limit: OnLimit::EvictOldest });
        p.plans.insert("premium".into(), Plan { limit: Limit::new(4).unwrap(), on_limit: OnLimit::Reject });
        let r = p.resolve(None).unwrap();
        assert_eq!((r.limit.get(), r.source, r.on_limit), (3, LimitSource::Default, OnLimit::Reject));
        let r = p.resolve(Some("basic")).unwrap();
        assert_eq!((r.limit.get(), r.source, r.on_limit), (1, LimitSource::Plan, OnLimit::EvictOldest));
        let e = p.resolve(Some("gold")).unwrap_err();
        assert_eq!(e.to_string(), "unknown plan \"gold\" (known plans: basic, premium)");
    }

    #[test]
    fn a_plan_gets_its_own_rule_set_or_else_the_default_one_and_its_name() {
        let rule = |name: &str, limit| Rule {
            name: Label::new(name).unwrap(),
            device_class: Label::new("tv").ok(),
            content_kind: None,
            per_content: false,
            limit: Limit::new(limit).unwrap(),
            exempt: false,
        };
        let mut p = Policy::uniform(Limit::new(3).unwrap(), Ttl::from_secs(60).unwrap());
        let plan = Plan { limit: Limit::new(4).unwrap(), on_limit: OnLimit::Reject };
        for name in ["basic", "standard", "premium"] {
            p.plans.insert(name.into(), plan);
        }
        p.rules = Arc::from([rule("tv", 2)]);
        p.plan_rules.insert("premium".into(), Arc::from([rule("tv", 4)]));
        p.plan_rules.insert("basic".into(), Arc::from([]));
        let r = p.resolve(None).unwrap();
        assert_eq!((r.plan, r.rules.to_vec()), (None, vec![rule("tv", 2)]));
        let r = p.resolve(Some("standard")).unwrap();
        assert_eq!((r.plan, r.rules.to_vec()), (Label::new("standard").ok(), vec![rule("tv", 2)]));
        assert_eq!(p.resolve(Some("premium")).unwrap().rules.to_vec(), [rule("tv", 4)]);
        assert!(p.resolve(Some("basic")).unwrap().rules.is_empty(), "an empty set means no rules");
    }
}
