//! Who made an authenticated request: what [`super::authenticate`] leaves for handlers.

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;

use crate::error::ApiError;

/// Which signature scheme a caller used (docs/contract.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `x-service-name` / `x-request-timestamp` / `x-request-nonce` / `x-internal-auth`.
    HmacV1,
    /// `x-internal-service` / `x-internal-timestamp` / `x-internal-signature`.
    HmacV2,
}

impl Scheme {
    /// The scheme's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacV1 => "hmac-v1",
            Self::HmacV2 => "hmac-v2",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated calling service, inserted into the request's extensions by
/// [`super::authenticate`]; handlers take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The service name from the signed headers, checked against the allowlist.
    pub service: String,
    /// The scheme it signed with.
    pub scheme: Scheme,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Fails closed with a 500 when the route is not behind the middleware: that is a wiring
    /// bug, and answering as if authenticated would hide it.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "Caller extracted on a route without the authenticate middleware"
            ))
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}
