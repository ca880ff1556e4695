//! Extractors whose rejections use the API's error body instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// `Json<T>` with [`ApiError`] rejections (400 with serde's message).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// The `{orderId}`/`{id}` path segment, parsed as a UUID (400 otherwise, never 404).
#[derive(Debug, Clone, Copy)]
pub struct OrderIdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrderIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Uuid::parse_str(&raw).map(Self).map_err(|_| {
            ApiError::BadRequest(format!("order id '{}' is not a UUID", truncate(&raw)))
        })
    }
}

/// Echoes at most 64 characters of caller input in messages.
pub fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
