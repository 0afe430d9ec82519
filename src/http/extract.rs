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

/// The `{user_id}` path segment, validated.
pub struct UserPath(pub UserId);

/// The `{user_id}` and `{stream_id}` path segments, validated.
pub struct StreamPath(pub UserId, pub StreamId);

fn user(raw: &str) -> Result<UserId, ApiError> {
    UserId::new(raw).map_err(|e| ApiError::BadRequest(format!("user_id {e}")))
}

fn stream(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::new(raw).map_err(|e| ApiError::BadRequest(format!("stream_id {e}")))
}

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        Ok(Self(user(&raw)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((u, s)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        Ok(Self(user(&u)?, stream(&s)?))
    }
}

/// The `{stream_id}` path segment of the `/v1/me` routes, validated.
pub struct StreamOnlyPath(pub StreamId);

impl<S: Send + Sync> FromRequestParts<S> for StreamOnlyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        Ok(Self(stream(&raw)?))
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
    use super::is_json;

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
