//! The HTTP side of the request context ([`RequestContext`], which the application layer
//! owns): the request and trace ids, the tenant and the acting user read from the headers.
//!
//! [`request_context`] reads them once, stores them in the request's extensions for handlers
//! (the [`RequestContext`] extractor), and makes them the current context
//! ([`crate::app::context::scope`]) for everything the request runs.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use uuid::Uuid;

use crate::app::context::{self, RequestContext};
use crate::error::ApiError;

/// Longest id accepted from a header; longer values are replaced, never truncated silently
/// into something that looks valid.
const MAX_ID_LEN: usize = 128;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LEN)
        .map(str::to_owned)
}

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// An `X-Tenant-ID` header that is present but not exactly one valid value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X-Tenant-ID must be sent once, as 1 to {MAX_TENANT_ID_LEN} visible ASCII characters")]
pub struct InvalidTenantId;

/// The tenant a request is scoped to: `None` when the header is absent, and an error when it is
/// present but not exactly one value of 1 to 128 visible ASCII characters. Such a header must
/// never be read as "absent": an absent tenant means unscoped, so a malformed one would lift
/// the tenant boundary instead of narrowing it.
///
/// # Errors
/// [`InvalidTenantId`] for a blank, too long or non-ASCII value, or one sent more than once.
pub fn tenant_id(headers: &HeaderMap) -> Result<Option<String>, InvalidTenantId> {
    let mut values = headers.get_all("x-tenant-id").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidTenantId);
    }
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_TENANT_ID_LEN
        && bytes.iter().all(u8::is_ascii_graphic);
    match value.to_str() {
        Ok(tenant) if valid => Ok(Some(tenant.to_owned())),
        _ => Err(InvalidTenantId),
    }
}

/// Reads the context from request headers, inventing ids that are missing.
///
/// # Errors
/// [`InvalidTenantId`] when `X-Tenant-ID` is present but invalid ([`tenant_id`]).
pub fn from_headers(headers: &HeaderMap) -> Result<RequestContext, InvalidTenantId> {
    Ok(RequestContext {
        tenant_id: tenant_id(headers)?,
        ..ids_from_headers(headers)
    })
}

/// The request and trace ids and the user, without the tenant.
fn ids_from_headers(headers: &HeaderMap) -> RequestContext {
    let request_id = header(headers, "x-request-id").unwrap_or_else(|| Uuid::new_v4().to_string());
    let traceparent = header(headers, "traceparent");
    let trace_id = traceparent
        .as_deref()
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|t| t.len() == 32)
        .map(str::to_owned)
        .or_else(|| header(headers, "x-trace-id"))
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    RequestContext {
        request_id,
        trace_id,
        traceparent,
        tenant_id: None,
        user_id: header(headers, "x-user-id"),
    }
}

/// Middleware that establishes the context for everything the request runs. A request with an
/// invalid `X-Tenant-ID` is answered 400 here, before any route sees it.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let mut ctx = ids_from_headers(request.headers());
    let tenant = tenant_id(request.headers());
    if let Ok(tenant) = &tenant {
        ctx.tenant_id.clone_from(tenant);
        request.extensions_mut().insert(ctx.clone());
    }
    let span = tracing::info_span!(
        "request",
        request.id = %ctx.request_id,
        trace.id = %ctx.trace_id,
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    // `let _ = span.enter()` dropped the guard at once, and a guard held across an await would
    // leak the span into other tasks; instrumenting the future is the async-safe way.
    let work = async move {
        match tenant {
            Ok(_) => next.run(request).await,
            // Inside the scope, so the error body carries the request id.
            Err(e) => ApiError::from(e).into_response(),
        }
    };
    context::scope(ctx, work).instrument(span).await
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Self>() {
            Some(ctx) => Ok(ctx.clone()),
            None => Ok(from_headers(&parts.headers)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn tenant_of(values: &[&[u8]]) -> Result<Option<String>, InvalidTenantId> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-tenant-id", HeaderValue::from_bytes(v).unwrap());
        }
        tenant_id(&headers)
    }

    #[test]
    fn a_tenant_header_is_one_visible_ascii_value_or_an_error() {
        assert_eq!(tenant_of(&[]), Ok(None));
        assert_eq!(tenant_of(&[b"tenant-a"]), Ok(Some("tenant-a".into())));
        let longest = "t".repeat(MAX_TENANT_ID_LEN);
        assert_eq!(tenant_of(&[longest.as_bytes()]), Ok(Some(longest.clone())));
        let too_long = "t".repeat(MAX_TENANT_ID_LEN + 1);
        for bad in [
            &b""[..],
            b" ",
            b"tenant a",
            b"tenant\ta",
            too_long.as_bytes(),
            "t\u{e9}nant".as_bytes(),
        ] {
            assert_eq!(tenant_of(&[bad]), Err(InvalidTenantId), "{bad:?}");
        }
        assert_eq!(tenant_of(&[b"tenant-a", b"tenant-a"]), Err(InvalidTenantId));
        assert_eq!(tenant_of(&[b"tenant-a", b"tenant-b"]), Err(InvalidTenantId));
    }
}
