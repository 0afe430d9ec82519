//! The decision rules of streamcap, written once.
//!
//! This module owns the vocabulary (users, streams, leases, limits, time) and
//! the rules that turn one user's leases plus a request into a [`Decision`].
//! Everything here is a pure function of `(state, op, now)`: no I/O, no
//! clock, no locks, no HTTP, no serde. Stores make the rules atomic, and
//! every one of them calls [`apply`]: memory and sqlite under their own
//! serialisation, Redis and DynamoDB inside a read and a conditional write.

use std::collections::BTreeMap;
use std::sync::Arc;

mod ids;
#[cfg(test)]
mod model_tests;
mod rules;

pub use ids::{Holder, InvalidId, Label, MAX_ID_LEN, StreamId, UserId};
pub use rules::{apply, expire};

/// Microseconds since the Unix epoch, UTC. All rule arithmetic uses it.
/// Microseconds, not milliseconds, so that "oldest first" follows the order
/// in which a user's streams really started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(us: i64) -> Self {
        Self(us)
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms.saturating_mul(1000))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whole milliseconds, rounded down.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// `self + ttl`, saturating instead of overflowing.
    pub fn plus(self, ttl: Ttl) -> Self {
        Self(self.0.saturating_add(ttl.as_micros()))
    }
}

/// How many live leases one user may hold: 0 to [`Limit::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Limit(u32);

impl Limit {
    pub const MAX: u32 = 1000;

    pub fn new(n: u32) -> Option<Self> {
        (n <= Self::MAX).then_some(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How long a lease lives without a heartbeat: 1 s to 24 h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u32);

impl Ttl {
    pub const MAX_SECONDS: u32 = 86_400;

    pub fn from_secs(secs: u32) -> Option<Self> {
        (1..=Self::MAX_SECONDS).contains(&secs).then_some(Self(secs))
    }

    pub fn as_secs(self) -> u32 {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        i64::from(self.0) * 1000
    }

    pub fn as_micros(self) -> i64 {
        i64::from(self.0) * 1_000_000
    }
}

/// One playback stream's seat. It is live while `now < expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub stream_id: StreamId,
    pub device_id: Option<Label>,
    pub content_id: Option<Label>,
    /// What kind of device plays it ("tv", "mobile"), for rules' scopes.
    pub device_class: Option<Label>,
    /// What kind of content it plays ("live", "download"), for rules' scopes.
    pub content_kind: Option<Label>,
    /// The plan of the request that holds it, if one was named.
    pub plan: Option<Label>,
    /// The socket that holds it, if one does.
    pub holder: Option<Holder>,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Lease {
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }
}

/// Why a stream lost its seat against its will.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeReason {
    /// `evict_oldest` or a take-over made room for this other stream.
    EvictedBy(StreamId),
    /// All of the user's streams were revoked.
    Revoked,
}

/// The mark an evicted or revoked stream leaves, so that its player learns
/// it must stop instead of quietly acquiring again. It lasts while
/// `now < until`: the lease's former expiry plus one TTL, long enough for
/// any heartbeat of the old player to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub stream_id: StreamId,
    pub reason: RevokeReason,
    pub until: Timestamp,
}

impl Tombstone {
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

/// What to do when a user with `limit` live leases asks for one more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnLimit {
    /// Refuse the new stream.
    Reject,
    /// Revoke the oldest live lease and grant the new one.
    EvictOldest,
}

/// Where an effective limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitSource {
    /// A per-user override, stored with the user.
    Override,
    /// The limit of the request's plan.
    Plan,
    /// The configured default.
    Default,
}

/// A per-user limit set by an admin, stored with the user. It counts while
/// `now < expires_at`, or for good without an expiry; past its expiry the
/// plan's limit or the default applies again, and whoever holds a seat
/// keeps it, as with any change of limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Override {
    pub limit: Limit,
    pub expires_at: Option<Timestamp>,
}

impl Override {
    /// How far ahead an expiry may be: 366 days, in µs.
    pub const MAX_AHEAD_MICROS: i64 = 366 * 86_400 * 1_000_000;

    /// An override without an expiry.
    pub fn permanent(limit: Limit) -> Self {
        Self { limit, expires_at: None }
    }

    /// True while the override counts.
    pub fn counts_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// A limit on part of a user's streams: those that match its scope, or
/// with `per_content`, those that match it and play one title. A rule
/// with neither `device_class` nor `content_kind` matches every stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: Label,
    /// Scope: only streams of this device class match.
    pub device_class: Option<Label>,
    /// Scope: only streams of this content kind match.
    pub content_kind: Option<Label>,
    /// The limit applies to each `content_id` separately. Streams without
    /// a content id are outside such a rule.
    pub per_content: bool,
    pub limit: Limit,
    /// Matching streams do not count toward the user's total.
    pub exempt: bool,
}

/// What a plan sets, as the rules apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub limit: Limit,
    pub on_limit: OnLimit,
    pub rules: Arc<[Rule]>,
}

/// The configured plans by name.
pub type Plans = BTreeMap<Label, Terms>;

/// A rule that refused a stream (or would have, in shadow mode), as the
/// answer names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleHit {
    pub name: Label,
    pub limit: Limit,
}

/// Everything the rules know about one user. Stores load it, hand it to
/// [`apply`] and persist the returned [`Write`]s, all inside one atomic step.
/// It may hold expired leases and tombstones; the rules ignore and remove them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    leases: Vec<Lease>,
    tombstones: Vec<Tombstone>,
    limit_override: Option<Override>,
}

impl UserState {
    pub fn new(leases: Vec<Lease>, tombstones: Vec<Tombstone>, limit_override: Option<Override>) -> Self {
        Self { leases, tombstones, limit_override }
    }

    /// All stored leases, live or not, in no particular order.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// All stored tombstones, live or not, in no particular order.
    pub fn tombstones(&self) -> &[Tombstone] {
        &self.tombstones
    }

    /// The stored override, whether or not it still counts.
    pub fn limit_override(&self) -> Option<Override> {
        self.limit_override
    }

    /// The override if it counts at `now`.
    pub fn override_at(&self, now: Timestamp) -> Option<Override> {
        self.limit_override.filter(|o| o.counts_at(now))
    }

    /// True when nothing about this user needs to be kept.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.tombstones.is_empty() && self.limit_override.is_none()
    }

    /// The live leases, oldest first (ties broken by stream id).
    pub fn live(&self, now: Timestamp) -> Vec<Lease> {
        let mut live: Vec<Lease> = self.leases.iter().filter(|l| l.is_live(now)).cloned().collect();
        live.sort_by(|a, b| (a.started_at, &a.stream_id).cmp(&(b.started_at, &b.stream_id)));
        live
    }
}

/// A request to hold a seat for `stream_id`. Policy is already resolved by
/// the caller; only a per-user override, which lives in the state, can
/// change the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire {
    pub stream_id: StreamId,
    pub device_id: Option<Label>,
    pub content_id: Option<Label>,
    pub device_class: Option<Label>,
    pub content_kind: Option<Label>,
    /// The plan the request named, kept on the lease.
    pub plan: Option<Label>,
    /// The plan's limit or the default. A per-user override wins over it.
    pub limit: Limit,
    /// The plan's rules or the default ones, in configured order.
    pub rules: Arc<[Rule]>,
    pub ttl: Ttl,
    /// What to do when the account is full.
    pub on_limit: OnLimit,
    /// Take-over: revoke these streams of the user to make room.
    pub evict: Vec<StreamId>,
    /// `false` is shadow mode: never deny, never evict, only report.
    pub enforce: bool,
    /// Set when the request named no plan: the configured plans, so that a
    /// renewal keeps the plan its lease was acquired with and a new stream
    /// takes the plan of the user's newest live lease. The fields above
    /// hold the default's terms, which apply when that lease has no plan
    /// or its plan is no longer configured.
    pub plans: Option<Arc<Plans>>,
    /// The caller says it holds this stream: renew it, never start it.
    pub held: bool,
    /// The socket that asks, if one does. It becomes the lease's holder,
    /// replacing any other; a request without one leaves the holder as it
    /// is.
    pub holder: Option<Holder>,
}

impl Acquire {
    /// The lease this request starts at `now`: its labels, its plan and its
    /// holder, for one TTL.
    pub fn into_lease(self, now: Timestamp) -> Lease {
        Lease {
            stream_id: self.stream_id,
            device_id: self.device_id,
            content_id: self.content_id,
            device_class: self.device_class,
            content_kind: self.content_kind,
            plan: self.plan,
            holder: self.holder,
            started_at: now,
            expires_at: now.plus(self.ttl),
        }
    }
}

#[cfg(test)]
impl Acquire {
    /// A plain acquire for tests: limit `limit`, TTL 60 s, reject when
    /// full, no metadata, no take-over, enforced.
    pub(crate) fn for_test(stream: &str, limit: u32) -> Acquire {
        Acquire {
            stream_id: StreamId::new(stream).unwrap(),
            device_id: None,
            content_id: None,
            device_class: None,
            content_kind: None,
            plan: None,
            limit: Limit::new(limit).unwrap(),
            rules: Arc::from([]),
            ttl: Ttl::from_secs(60).unwrap(),
            on_limit: OnLimit::Reject,
            evict: Vec::new(),
            enforce: true,
            plans: None,
            held: false,
            holder: None,
        }
    }

    /// [`Acquire::for_test`] under `rules`, for a stream on a device of
    /// `class` playing `title` of `kind` (each optional).
    pub(crate) fn on_test(
        stream: &str,
        limit: u32,
        rules: &[Rule],
        class: Option<&str>,
        kind: Option<&str>,
        title: Option<&str>,
    ) -> Acquire {
        let label = |s: &str| Label::new(s).unwrap();
        Acquire {
            device_class: class.map(label),
            content_kind: kind.map(label),
            content_id: title.map(label),
            rules: Arc::from(rules),
            ..Acquire::for_test(stream, limit)
        }
    }
}

/// One operation on one user. Every store executes exactly these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Acquire a new lease, or renew the stream's live one.
    Acquire(Acquire),
    /// Drop the stream's lease, if any, leaving no tombstone. Idempotent.
    Release(StreamId),
    /// Drop the stream's lease only if `holder` still holds it: a socket
    /// that was replaced never frees its successor's seat. Idempotent.
    ReleaseHeld { stream: StreamId, holder: Holder },
    /// Revoke every live lease, leaving tombstones that last one `ttl` past
    /// each lease's expiry.
    RevokeAll { ttl: Ttl },
    /// Revoke the stream's live lease, if it has one, leaving a tombstone
    /// as [`Op::RevokeAll`] does.
    Revoke { stream: StreamId, ttl: Ttl },
    /// Read the live leases, the live tombstones and the effective limit.
    /// Changes nothing.
    List { limit: Limit },
    /// Read the effective limit and where it comes from. Changes nothing.
    GetLimit { fallback: Limit, source: LimitSource },
    /// Set or clear the per-user override. Evicts nobody.
    SetOverride(Option<Override>),
}

/// What an [`Op`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one reply per operation, moved to its caller; boxing the grant would allocate on every request"
)]
pub enum Reply {
    Decision(Decision),
    Done,
    /// The leases that were revoked, oldest first.
    Revoked(Vec<Lease>),
    Leases {
        limit: Limit,
        live: Vec<Lease>,
        /// The live tombstones, in stream id order.
        tombstones: Vec<Tombstone>,
    },
    Limit {
        limit: Limit,
        source: LimitSource,
        /// When the override that sets the limit ends, if it does.
        expires_at: Option<Timestamp>,
    },
}

/// The answer to an acquire. Refusals are values, not errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new lease was created.
    Granted(Grant),
    /// The stream already held a live lease; its expiry moved to now + ttl.
    Renewed(Grant),
    /// A scope the new stream must fit in is full. A live stream is
    /// refused only when its renewal moves it into a full scope (a new
    /// device class, content kind or title); it then keeps its lease as
    /// it was.
    Denied(Denial),
    /// The stream was evicted or revoked and must stop.
    Gone(Tombstone),
    /// The caller said it holds the stream, but it has no live lease:
    /// nothing changed.
    NotHeld,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lease: Lease,
    /// Live leases after this request, this one included.
    pub active_streams: u32,
    /// The effective limit.
    pub limit: Limit,
    /// Leases revoked to make room for this one, oldest first.
    pub evicted: Vec<Lease>,
    /// Shadow mode: enforcing would have refused this grant.
    pub would_deny: bool,
    /// Shadow mode: the rule that would have refused it (`None` when it
    /// was the total, or nothing).
    pub would_deny_rule: Option<RuleHit>,
    /// Shadow mode: enforcing would have evicted these streams.
    pub would_evict: Vec<StreamId>,
    /// A renewal by another socket than the one that held the lease: the
    /// holder it replaced.
    pub replaced: Option<Holder>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The effective total limit.
    pub limit: Limit,
    /// The rule that is full, or `None` when the total is.
    pub rule: Option<RuleHit>,
    /// The live leases in the full scope (the rule's, or those that count
    /// toward the total), oldest first.
    pub live: Vec<Lease>,
}

/// A change a store must persist so that its copy of [`UserState`] matches
/// the one [`apply`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the lease of `lease.stream_id`.
    PutLease(Lease),
    DeleteLease(StreamId),
    /// Insert or replace the tombstone of `tombstone.stream_id`.
    PutTombstone(Tombstone),
    DeleteTombstone(StreamId),
    /// Set (`Some`) or remove (`None`) the per-user override.
    SetOverride(Option<Override>),
}

/// The reply to an [`Op`] and the writes that persist its effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    pub writes: Vec<Write>,
    /// Leases this step found expired and removed (for metrics).
    pub expired: usize,
}
