//! Per-request context: the request and trace ids, the tenant and the acting user.
//!
//! [`request_context`] reads them from the headers once, stores them in the request's extensions
//! for handlers, and in a task-local so that code far from the handler (the error body, outgoing
//! clients) can stamp them without threading them through every call.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// What every request carries into events' metadata and outgoing calls.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub trace_id: String,
    /// The W3C `traceparent` received, if any.
    pub traceparent: Option<String>,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
}

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

impl RequestContext {
    /// Reads the context from request headers, inventing ids that are missing.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id =
            header(headers, "x-request-id").unwrap_or_else(|| Uuid::new_v4().to_string());
        let traceparent = header(headers, "traceparent");
        let trace_id = traceparent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1))
            .filter(|t| t.len() == 32)
            .map(str::to_owned)
            .or_else(|| header(headers, "x-trace-id"))
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
        Self {
            request_id,
            trace_id,
            traceparent,
            tenant_id: header(headers, "x-tenant-id"),
            user_id: header(headers, "x-user-id"),
        }
    }
}

/// The current request's id, or `"-"` outside a request.
pub fn current_request_id() -> String {
    CONTEXT
        .try_with(|c| c.request_id.clone())
        .unwrap_or_else(|_| "-".to_owned())
}

/// The current request's context, if inside one.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// Middleware that establishes the context for everything the request runs.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let ctx = RequestContext::from_headers(request.headers());
    request.extensions_mut().insert(ctx.clone());
    let span = tracing::info_span!(
        "request",
        request.id = %ctx.request_id,
        trace.id = %ctx.trace_id,
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    // `let _ = span.enter()` dropped the guard at once, and a guard held across an await would
    // leak the span into other tasks; instrumenting the future is the async-safe way.
    CONTEXT.scope(ctx, next.run(request)).instrument(span).await
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::from_headers(&parts.headers)))
    }
}
