//! The JSON bodies of API v1, and the only place that formats times.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;
use utoipa::{IntoParams, ToSchema};

use crate::limiter::{Grant, Label, Lease, LimitSource, StreamId, Timestamp, Tombstone, Ttl, UserId};

/// Declares a struct whose first fields are the stream's fields that an
/// acquire's `PUT` body and a socket's query share, so that each field and
/// its documentation have one home. `$attr` is how the struct's derive
/// spells a field's OpenAPI attribute (`schema` for a body, `param` for a
/// query); the fields that differ follow the shared ones.
///
/// A macro rather than a `#[serde(flatten)]`-ed struct: serde does not
/// support `deny_unknown_fields` together with `flatten`, so unknown fields
/// would no longer be a 400, and utoipa would describe the body as an
/// `allOf` of two schemas rather than one object.
macro_rules! with_stream_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $attr:ident; $($rest:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// Free text, at most 128 characters; kept with the lease.
            #[$attr(max_length = 128, example = "living-room-tv")]
            pub device_id: Option<String>,
            /// Free text, at most 128 characters; kept with the lease.
            #[$attr(max_length = 128, example = "movie-42")]
            pub content_id: Option<String>,
            /// What kind of device plays the stream, for the rules' scopes: 1-128
            /// of `[A-Za-z0-9._~:@-]`. Kept with the lease.
            #[$attr(max_length = 128, example = "tv")]
            pub device_class: Option<String>,
            /// What kind of content the stream plays, for the rules' scopes: 1-128
            /// of `[A-Za-z0-9._~:@-]`. Kept with the lease.
            #[$attr(max_length = 128, example = "live")]
            pub content_kind: Option<String>,
            /// The user's plan, which selects the limit, the rules and the on-limit policy. Only
            /// service callers may set it; a token's plan claim always wins.
            #[$attr(example = "premium")]
            pub plan: Option<String>,
            $($rest)*
        }
    };
}

with_stream_fields! {
    /// `PUT /v1/users/{user_id}/streams/{stream_id}` body. Every field is
    /// optional and an empty body is the same as `{}`. Unknown fields are a 400.
    #[derive(Debug, Default, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AcquireBody {
        schema;
        /// Take-over: revoke these live streams of the same user to make room,
        /// all or nothing. Ids that are not the user's live streams are ignored.
        pub evict: Option<Vec<String>>,
    }
}

with_stream_fields! {
    /// The query of the WebSocket routes: the `PUT` body's fields, with the
    /// same meaning and validation. Unknown parameters are a 400, as unknown
    /// body fields are.
    #[derive(Debug, Default, Deserialize, IntoParams)]
    #[serde(deny_unknown_fields)]
    #[into_params(parameter_in = Query)]
    pub struct SocketQuery {
        param;
        /// Take-over: the stream ids to revoke to make room, separated by
        /// commas (a comma is not in the id alphabet). Empty means none.
        #[param(example = "tv-1,laptop-1")]
        pub evict: Option<String>,
    }
}

impl SocketQuery {
    /// The `PUT` body these parameters stand for.
    pub fn into_body(self) -> AcquireBody {
        let evict = self.evict.map(|list| match list.as_str() {
            "" => Vec::new(),
            list => list.split(',').map(str::to_owned).collect(),
        });
        AcquireBody {
            device_id: self.device_id,
            content_id: self.content_id,
            device_class: self.device_class,
            content_kind: self.content_kind,
            plan: self.plan,
            evict,
        }
    }
}

/// `PUT /v1/users/{user_id}/limit` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimitBody {
    /// The user's new limit, 0 to 1000. Required.
    #[schema(required = true, minimum = 0, maximum = 1000, example = 5)]
    pub limit: Option<u32>,
    /// When the override ends: an RFC 3339 time, in the future and at most
    /// 366 days ahead. Past it, the plan's limit or the default applies
    /// again. Absent (or `null`): the override lasts until it is changed
    /// or removed.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-12-24T00:00:00Z")]
    pub expires_at: Option<serde_json::Value>,
}

/// The `?plan=` query of the read routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlanQuery {
    /// Report the limit as it applies under this plan (services only).
    pub plan: Option<String>,
}

/// `GET|PUT /v1/users/{user_id}/limit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitBody<'a> {
    pub user_id: &'a str,
    /// The effective limit.
    pub limit: u32,
    /// Where the limit comes from: `override`, `plan` or `default`.
    #[schema(value_type = String, example = "override")]
    pub source: &'static str,
    /// RFC 3339, UTC, microseconds: when the override in force ends.
    /// Absent when it lasts until changed, or when no override is in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-12-24T00:00:00.000000Z")]
    pub expires_at: Option<String>,
}

/// `DELETE /v1/users/{user_id}/streams` and
/// `POST /v1/users/{user_id}/streams/{stream_id}/revoke`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedBody<'a> {
    /// The streams that were live and are now revoked, oldest first; empty
    /// when there was none.
    pub revoked: Vec<&'a str>,
}

/// One live lease as listed in `active_streams`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamView<'a> {
    pub stream_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "tv")]
    pub device_class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "live")]
    pub content_kind: Option<&'a str>,
    /// RFC 3339, UTC, microseconds.
    #[schema(example = "2026-11-24T05:29:50.123456Z")]
    pub started_at: String,
    /// RFC 3339, UTC, microseconds. The lease is live until then.
    #[schema(example = "2026-11-24T05:30:50.123456Z")]
    pub expires_at: String,
}

impl<'a> From<&'a Lease> for StreamView<'a> {
    fn from(l: &'a Lease) -> Self {
        Self {
            stream_id: l.stream_id.as_str(),
            device_id: l.device_id.as_ref().map(Label::as_str),
            content_id: l.content_id.as_ref().map(Label::as_str),
            device_class: l.device_class.as_ref().map(Label::as_str),
            content_kind: l.content_kind.as_ref().map(Label::as_str),
            started_at: rfc3339(l.started_at),
            expires_at: rfc3339(l.expires_at),
        }
    }
}

/// The 200/201 answer to an acquire.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseBody<'a> {
    pub user_id: &'a str,
    #[serde(flatten)]
    pub lease: StreamView<'a>,
    pub ttl_seconds: u32,
    /// Live leases after this request, this one included; `null` only when
    /// degraded, as the store could not count.
    #[schema(required = true)]
    pub active_streams: Option<u32>,
    pub limit: u32,
    /// Leases revoked to make room for this one; absent when none were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<StreamView<'a>>,
    /// `false` in shadow mode.
    pub enforced: bool,
    /// Shadow mode only: enforcing would have refused this stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<bool>,
    /// Shadow mode, with `would_deny`: the rule that would have refused
    /// this stream; absent when it was the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "tv")]
    pub rule: Option<&'a str>,
    /// Shadow mode, with `rule`: that rule's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_limit: Option<u32>,
    /// Shadow mode only: enforcing would have evicted these streams.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_evict: Vec<&'a str>,
    /// The store was down and `on_store_error = "allow"` granted this
    /// stream unchecked. Present only then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
}

impl<'a> LeaseBody<'a> {
    pub fn new(user: &'a UserId, grant: &'a Grant, ttl_seconds: u32, enforced: bool) -> Self {
        Self {
            user_id: user.as_str(),
            lease: StreamView::from(&grant.lease),
            ttl_seconds,
            active_streams: Some(grant.active_streams),
            limit: grant.limit.get(),
            evicted: grant.evicted.iter().map(StreamView::from).collect(),
            enforced,
            would_deny: (!enforced).then_some(grant.would_deny),
            rule: grant.would_deny_rule.as_ref().map(|r| r.name.as_str()),
            rule_limit: grant.would_deny_rule.as_ref().map(|r| r.limit.get()),
            would_evict: grant.would_evict.iter().map(StreamId::as_str).collect(),
            degraded: false,
        }
    }

    /// The answer when the store is down and policy says to admit anyway.
    pub fn degraded(user: &'a UserId, lease: &'a Lease, ttl_seconds: u32, limit: u32, enforced: bool) -> Self {
        Self {
            user_id: user.as_str(),
            lease: StreamView::from(lease),
            ttl_seconds,
            active_streams: None,
            limit,
            evicted: Vec::new(),
            enforced,
            would_deny: None,
            rule: None,
            rule_limit: None,
            would_evict: Vec::new(),
            degraded: true,
        }
    }
}

/// RFC 9457 problem details, the body of every error
/// (`application/problem+json`). Extension members appear with the problem
/// types that use them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// `https://streamcap.dev/problems/<slug>`; the slugs are listed in the
    /// API description.
    #[serde(rename = "type")]
    #[schema(example = "https://streamcap.dev/problems/stream-limit-reached")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// `stream-limit-reached`: the effective limit on the user's total.
    pub limit: Option<u32>,
    /// `stream-limit-reached`: the live streams in the full scope, oldest
    /// first: those in the scope of `rule` when a rule refused, else those
    /// that count toward the total.
    pub active_streams: Option<Vec<StreamView<'static>>>,
    /// `stream-limit-reached` when a rule refused: its name. Absent when
    /// the total refused.
    #[schema(example = "tv")]
    pub rule: Option<String>,
    /// `stream-limit-reached` with `rule`: that rule's limit.
    pub rule_limit: Option<u32>,
    /// `stream-revoked`: `evicted_by_new_stream` or `revoked`.
    pub reason: Option<String>,
    /// `stream-revoked` after an eviction: the stream that took the seat.
    pub by_stream_id: Option<String>,
    /// `rate-limited`: also sent as the `Retry-After` header.
    pub retry_after_seconds: Option<u64>,
}

/// What the server sends on a lease's WebSocket: JSON text messages, each
/// with a `type`. `renewed` and `revoked` are built from this type;
/// `granted`, `refused` and `error` are built from the very answer a `PUT`
/// gives, so that they cannot drift from it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)] // `Granted`, `Refused` and `Error` document, never built
pub enum SocketMessage<'a> {
    /// The first message when the lease is held (acquired, or renewed for a
    /// stream that still held a live lease): the `PUT`'s 201/200 body.
    Granted(LeaseBody<'a>),
    /// After each renewal, every ttl/3 while the client answers pings.
    Renewed(RenewedMessage),
    /// The account is full, as the `PUT`'s 409; the socket then closes
    /// with 4409.
    Refused(SocketProblem),
    /// The stream was evicted or revoked (or is held by a newer socket);
    /// the socket then closes with 4410.
    Revoked(RevokedMessage),
    /// Any other refusal, as the `PUT`'s problem of that status; the
    /// socket then closes with 4000 + `status`.
    Error(SocketProblem),
}

/// `{"type":"renewed", ...}`: the lease was renewed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenewedMessage {
    /// RFC 3339, UTC, microseconds: the lease's new expiry.
    #[schema(example = "2026-11-24T05:30:50.123456Z")]
    pub expires_at: String,
    /// Live leases of the user, this one included.
    pub active_streams: u32,
}

/// `{"type":"revoked", ...}`: the stream must stop.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedMessage {
    /// `evicted_by_new_stream` (evict-oldest or a take-over), `revoked`
    /// (revoke-all), or `replaced` (a newer socket holds this stream).
    #[schema(example = "evicted_by_new_stream")]
    pub reason: String,
    /// The stream that took the seat; `null` after a revoke-all. For
    /// `replaced`, this same stream.
    #[schema(required = true)]
    pub by_stream_id: Option<String>,
}

/// A problem document's fields on a WebSocket (`refused`, `error`): the
/// problem's `type` URI is `problem_type`, since `type` names the message.
#[derive(Debug, Serialize, ToSchema)]
pub struct SocketProblem {
    /// `https://streamcap.dev/problems/<slug>`.
    #[schema(example = "https://streamcap.dev/problems/stream-limit-reached")]
    pub problem_type: String,
    pub title: String,
    /// The HTTP status the `PUT` would have answered; the close code is
    /// 4000 + `status`.
    pub status: u16,
    pub detail: String,
    /// `refused`: the effective limit on the user's total.
    pub limit: Option<u32>,
    /// `refused`: the live streams in the full scope, oldest first (as
    /// the 409's `active_streams`).
    pub active_streams: Option<Vec<StreamView<'static>>>,
    /// `refused` by a rule: its name.
    pub rule: Option<String>,
    /// `refused` by a rule: its limit.
    pub rule_limit: Option<u32>,
    /// 429 and 503: when to try again.
    pub retry_after_seconds: Option<u64>,
}

/// `GET /livez`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// This instance's id: the host's name and a random suffix, as in its
    /// start line.
    #[schema(example = "streamcap-7d9f8-x2kqp-3fa81c0e")]
    pub instance: String,
    pub clock: ClockBody,
}

/// The clock that judges lease expiry, and how far it can be trusted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClockBody {
    /// `instance`: this process's clock decides (memory, sqlite, dynamodb;
    /// instances sharing a table must agree on time). `redis`: Redis's
    /// own clock decides, the same for every instance.
    #[schema(example = "instance")]
    pub decides: &'static str,
    /// This host's kernel clocksource (Linux), e.g. `tsc` or `kvm-clock`.
    #[schema(example = "kvm-clock")]
    pub source: Option<String>,
    /// Whether the kernel considers this host's clock synchronized.
    pub synchronized: Option<bool>,
    /// The kernel's bound on this host's clock error, in milliseconds.
    #[schema(example = 16.5)]
    pub max_error_ms: Option<f64>,
}

/// How a [`LimitSource`] is spelled on the wire.
pub fn source_name(source: LimitSource) -> &'static str {
    match source {
        LimitSource::Override => "override",
        LimitSource::Plan => "plan",
        LimitSource::Default => "default",
    }
}

/// `GET /v1/users/{user_id}/streams`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListBody<'a> {
    pub user_id: &'a str,
    pub limit: u32,
    /// The live leases, oldest first.
    pub active_streams: Vec<ActiveStream<'a>>,
    /// The user's revoked or evicted streams whose mark is still live: a
    /// renewal of one is refused with 410 until `expires_at`.
    pub tombstones: Vec<TombstoneView<'a>>,
}

/// One live lease in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveStream<'a> {
    #[serde(flatten)]
    pub lease: StreamView<'a>,
    /// The plan the lease was acquired or last renewed under.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "premium")]
    pub plan: Option<&'a str>,
    /// RFC 3339, UTC, microseconds: the last grant or renewal, which is
    /// `expires_at` less the configured lease TTL.
    #[schema(example = "2026-11-24T05:29:50.123456Z")]
    pub renewed_at: String,
    /// Whether a WebSocket holds the lease.
    pub socket: bool,
}

impl<'a> ActiveStream<'a> {
    pub fn new(l: &'a Lease, ttl: Ttl) -> Self {
        Self {
            lease: StreamView::from(l),
            plan: l.plan.as_ref().map(Label::as_str),
            renewed_at: rfc3339(Timestamp::from_micros(l.expires_at.as_micros() - ttl.as_micros())),
            socket: l.holder.is_some(),
        }
    }
}

/// A live tombstone in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct TombstoneView<'a> {
    pub stream_id: &'a str,
    /// RFC 3339, UTC, microseconds: until then, a renewal of the stream is
    /// refused with 410.
    #[schema(example = "2026-11-24T05:31:50.123456Z")]
    pub expires_at: String,
}

impl<'a> From<&'a Tombstone> for TombstoneView<'a> {
    fn from(t: &'a Tombstone) -> Self {
        Self { stream_id: t.stream_id.as_str(), expires_at: rfc3339(t.until) }
    }
}

/// An RFC 3339 time as a [`Timestamp`]; `None` when `s` is not one.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let dt = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1_000)).ok().map(Timestamp::from_micros)
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-24T05:29:50.123456Z`.
pub fn rfc3339(t: Timestamp) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1_000)
        .ok()
        .and_then(|dt| dt.format(format).ok())
        // Only reachable for times past year 9999, which no clock produces.
        .unwrap_or_else(|| "9999-12-31T23:59:59.999999Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_any_offset_and_precision() {
        let t = Timestamp::from_micros(1_795_498_190_123_456);
        assert_eq!(parse_rfc3339("2026-11-24T05:29:50.123456Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-11-24T06:29:50.123456789+01:00"), Some(t));
        for bad in ["", "tomorrow", "2026-11-24", "2026-11-24T05:29:50", "2026-13-01T00:00:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// The socket's query and the `PUT` body declare their shared fields
    /// once; both still take every one of them as text and refuse a field
    /// they do not know.
    #[test]
    fn the_query_and_the_body_take_the_same_fields() {
        use axum::extract::Query;
        use axum::http::Uri;
        let query = |q: &str| Query::<SocketQuery>::try_from_uri(&Uri::try_from(format!("/s?{q}")).unwrap());
        let shared = "device_id=a%20b&content_id=m&device_class=tv&content_kind=live&plan=premium";
        let Query(q) = query(&format!("{shared}&evict=x,y")).unwrap();
        let body: AcquireBody = serde_json::from_str(
            r#"{"device_id":"a b","content_id":"m","device_class":"tv","content_kind":"live","plan":"premium","evict":["x","y"]}"#,
        )
        .unwrap();
        assert_eq!(format!("{:?}", q.into_body()), format!("{body:?}"));
        assert_eq!(query("evict=").unwrap().0.into_body().evict, Some(Vec::new()));
        // Digits and booleans are text too.
        assert_eq!(query("plan=5&device_class=true").unwrap().0.plan.as_deref(), Some("5"));
        assert!(query("limit=5").is_err(), "an unknown parameter is refused");
        assert!(serde_json::from_str::<AcquireBody>(r#"{"limit":5}"#).is_err(), "an unknown field is refused");
    }

    #[test]
    fn formats_utc_with_microseconds() {
        assert_eq!(rfc3339(Timestamp::from_millis(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(Timestamp::from_micros(1_795_498_190_123_456)), "2026-11-24T05:29:50.123456Z");
    }

    /// A holder is a socket's secret: no answer shows it, whether for the
    /// lease itself, an evicted one, a listing or the holder a renewal
    /// replaced.
    #[test]
    fn no_body_shows_a_holder() {
        use crate::limiter::{Acquire, Holder, Limit};
        let held = |s: &str, h: &str| {
            let a = Acquire { holder: Some(Holder::new(h).unwrap()), ..Acquire::for_test(s, 2) };
            a.into_lease(Timestamp::from_millis(0))
        };
        let grant = Grant {
            lease: held("tv", "secret-1"),
            active_streams: 1,
            limit: Limit::new(2).unwrap(),
            evicted: vec![held("phone", "secret-2")],
            would_deny: false,
            would_deny_rule: None,
            would_evict: Vec::new(),
            replaced: Some(Holder::new("secret-3").unwrap()),
        };
        let user = UserId::new("alice").unwrap();
        let leases = [grant.lease.clone(), grant.evicted[0].clone()];
        let bodies = [
            serde_json::to_string(&LeaseBody::new(&user, &grant, 60, true)).unwrap(),
            serde_json::to_string(&LeaseBody::degraded(&user, &grant.lease, 60, 2, true)).unwrap(),
            serde_json::to_string(&ListBody {
                user_id: user.as_str(),
                limit: 2,
                active_streams: leases.iter().map(|l| ActiveStream::new(l, Ttl::from_secs(60).unwrap())).collect(),
                tombstones: Vec::new(),
            })
            .unwrap(),
        ];
        for body in bodies {
            assert!(body.contains(r#""stream_id":"tv""#), "{body}");
            assert!(!body.contains("holder") && !body.contains("secret"), "{body}");
        }
    }
}
