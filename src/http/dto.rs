//! The JSON bodies of API v1, and the only place that formats times.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::limiter::{Grant, Label, Lease, Timestamp, UserId};

/// `PUT /v1/users/{user_id}/streams/{stream_id}` body. Every field is
/// optional and an empty body is the same as `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    pub device_id: Option<String>,
    pub content_id: Option<String>,
}

/// One live lease as listed in `active_streams`.
#[derive(Debug, Serialize)]
pub struct StreamView<'a> {
    pub stream_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<&'a str>,
    pub started_at: String,
    pub expires_at: String,
}

impl<'a> From<&'a Lease> for StreamView<'a> {
    fn from(l: &'a Lease) -> Self {
        Self {
            stream_id: l.stream_id.as_str(),
            device_id: l.device_id.as_ref().map(Label::as_str),
            content_id: l.content_id.as_ref().map(Label::as_str),
            started_at: rfc3339(l.started_at),
            expires_at: rfc3339(l.expires_at),
        }
    }
}

/// The 200/201 answer to an acquire.
#[derive(Debug, Serialize)]
pub struct LeaseBody<'a> {
    pub user_id: &'a str,
    #[serde(flatten)]
    pub lease: StreamView<'a>,
    pub ttl_seconds: u32,
    pub active_streams: u32,
    pub limit: u32,
}

impl<'a> LeaseBody<'a> {
    pub fn new(user: &'a UserId, grant: &'a Grant, ttl_seconds: u32) -> Self {
        Self {
            user_id: user.as_str(),
            lease: StreamView::from(&grant.lease),
            ttl_seconds,
            active_streams: grant.active_streams,
            limit: grant.limit.get(),
        }
    }
}

/// `GET /v1/users/{user_id}/streams`.
#[derive(Debug, Serialize)]
pub struct ListBody<'a> {
    pub user_id: &'a str,
    pub limit: u32,
    pub active_streams: Vec<StreamView<'a>>,
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-24T05:29:50.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_millis()) * 1_000_000)
        .ok()
        .and_then(|dt| dt.format(format).ok())
        // Only reachable for times past year 9999, which no clock produces.
        .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(Timestamp::from_millis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Timestamp::from_millis(1_795_498_190_123)), "2026-11-24T05:29:50.123Z");
    }
}
