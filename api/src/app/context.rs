//! The context a use case runs in: who asked (tenant, user) and the ids that tie its events and
//! outgoing calls to the request, message or job run that started it.
//!
//! Whoever delivers the work establishes it with [`scope`] (the HTTP adapter for each request,
//! from its headers); code far from the entry point (the error body, the outgoing clients)
//! reads it with [`current`] instead of having it threaded through every call.

use std::future::Future;

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

/// Runs `work` with `ctx` as the current context.
pub async fn scope<F: Future>(ctx: RequestContext, work: F) -> F::Output {
    CONTEXT.scope(ctx, work).await
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
