//! Extractors that validate input and fail with problem+json: path ids
//! become [`UserId`]/[`StreamId`], bodies become typed JSON or a 400/413/415.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use crate::limiter::{StreamId, UserId};

/// `If-Match` on an acquire, read for its syntax only: what it asks is
/// evaluated once the request is admitted and valid. `*` says the caller
/// holds the stream's lease and wants it renewed, never started again.
/// streamcap issues no entity tags, so entity tags can never match: 412.
/// An empty or malformed value is a 400.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IfMatch {
    Absent,
    /// `If-Match: *`.
    Any,
    /// One or more entity tags.
    Tags,
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(header::IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(Self::Absent);
        }
        let (mut any, mut tags) = (false, false);
        for item in values.flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii) {
            match item {
                b"" => {}
                b"*" => any = true,
                tag if is_entity_tag(tag) => tags = true,
                _ => return Err(bad_if_match("it is neither * nor a list of quoted entity tags")),
            }
        }
        match (any, tags) {
            (true, false) => Ok(Self::Any),
            (false, true) => Ok(Self::Tags),
            (false, false) => Err(bad_if_match("it is empty")),
            (true, true) => Err(bad_if_match("* stands alone, never beside entity tags")),
        }
    }
}

fn bad_if_match(why: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid If-Match header: {why}; send If-Match: * to renew a lease the stream holds"))
}

/// An entity tag (RFC 9110): optionally `W/`, then a quoted string of
/// visible characters other than `"`.
fn is_entity_tag(tag: &[u8]) -> bool {
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    match tag.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) {
        Some(inner) => inner.iter().all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80),
        None => false,
    }
}

/// The path's id segments, validated: `PathIds<UserId>` for `{user_id}`,
/// `PathIds<StreamId>` for `{stream_id}` and `PathIds<(UserId, StreamId)>`
/// for both.
pub struct PathIds<T>(pub T);

/// Ids that path segments validate into, each named for its segment in
/// the 400 that a bad one gets.
pub trait FromSegments: Sized {
    /// The segments as axum's `Path` reads them.
    type Raw: DeserializeOwned + Send;

    fn validate(raw: Self::Raw) -> Result<Self, ApiError>;
}

impl FromSegments for UserId {
    type Raw = String;

    fn validate(raw: String) -> Result<Self, ApiError> {
        UserId::new(&raw).map_err(|e| ApiError::BadRequest(format!("user_id {e}")))
    }
}

impl FromSegments for StreamId {
    type Raw = String;

    fn validate(raw: String) -> Result<Self, ApiError> {
        StreamId::new(&raw).map_err(|e| ApiError::BadRequest(format!("stream_id {e}")))
    }
}

impl FromSegments for (UserId, StreamId) {
    type Raw = (String, String);

    fn validate((user, stream): (String, String)) -> Result<Self, ApiError> {
        Ok((UserId::validate(user)?, StreamId::validate(stream)?))
    }
}

impl<S: Send + Sync, T: FromSegments> FromRequestParts<S> for PathIds<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<T::Raw>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        T::validate(raw).map(Self)
    }
}

/// A query string, with malformed ones answered by a 400 problem.
pub struct PlanParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for PlanParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
        Ok(Self(q))
    }
}

/// A JSON body that may be absent: an empty body yields `T::default()`.
/// A non-empty body must be declared `application/json` (or `+json`).
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(format!("cannot read the body: {}", e.body_text()))
            }
        })?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        let declared = content_type.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        if !is_json(declared) {
            let shown = if declared.is_empty() { "no Content-Type" } else { declared };
            return Err(ApiError::UnsupportedMediaType(format!("the body must be application/json, got {shown}")));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    async fn if_match(values: &[&str]) -> Result<IfMatch, u16> {
        let mut req = Request::put("/");
        for v in values {
            req = req.header(header::IF_MATCH, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        IfMatch::from_request_parts(&mut parts, &()).await.map_err(|e| {
            use axum::response::IntoResponse;
            e.into_response().status().as_u16()
        })
    }

    #[tokio::test]
    async fn if_match_is_star_or_entity_tags_and_anything_else_is_a_400() {
        assert_eq!(if_match(&[]).await, Ok(IfMatch::Absent));
        assert_eq!(if_match(&["*"]).await, Ok(IfMatch::Any));
        assert_eq!(if_match(&[" * "]).await, Ok(IfMatch::Any));
        assert_eq!(if_match(&["\"a\""]).await, Ok(IfMatch::Tags));
        assert_eq!(if_match(&["W/\"a\", \"b\"", "\"c\""]).await, Ok(IfMatch::Tags));
        assert_eq!(if_match(&["\"\""]).await, Ok(IfMatch::Tags), "the empty entity tag is one");
        for bad in [&[""][..], &[" "], &[","], &["a"], &["\"a"], &["\"a\"b\""], &["*", "\"a\""], &["W/*"], &["**"]] {
            assert_eq!(if_match(bad).await, Err(400), "{bad:?}");
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json(""));
    }
}
