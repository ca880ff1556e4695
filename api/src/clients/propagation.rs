//! What every outgoing call carries from the context it runs in: request, trace and span ids,
//! tenant and user, and a W3C `traceparent` that makes the call a child of the incoming one.
//!
//! Inside a request the context is [`crate::app::context::current`]. Work outside a request (the
//! refund retry loop) sets one with [`scope`], typically rebuilt from the metadata of the event
//! that started the work, so the peer's logs still correlate with the original request.

use std::future::Future;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

use crate::app::context::{self, RequestContext};

tokio::task_local! {
    static OUTGOING: RequestContext;
}

/// Runs `work` with `ctx` as the context of every outgoing call it makes.
pub async fn scope<F: Future>(ctx: RequestContext, work: F) -> F::Output {
    OUTGOING.scope(ctx, work).await
}

/// The context outgoing calls use now: an explicit [`scope`], else the current request's, else
/// a fresh one (a new request id and trace) so a call is never sent uncorrelated.
pub fn current() -> RequestContext {
    OUTGOING
        .try_with(Clone::clone)
        .ok()
        .or_else(context::current)
        .unwrap_or_else(|| RequestContext {
            request_id: Uuid::new_v4().to_string(),
            trace_id: random_hex::<16>(),
            ..RequestContext::default()
        })
}

/// The ids of one outgoing call (one attempt: each attempt is its own client span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingTrace {
    /// The W3C trace id (32 lowercase hex digits) shared with the incoming request.
    pub trace_id: String,
    /// This call's own span id (16 lowercase hex digits), the `parent-id` the peer sees.
    pub span_id: String,
    /// The full `traceparent` header value.
    pub traceparent: String,
}

/// A child of the context's `traceparent` when it has a valid one (same trace id and flags, a
/// new span id); otherwise the start of a trace whose id is the context's trace id when that is
/// a valid W3C id, or a random one.
pub fn child_trace(ctx: &RequestContext) -> OutgoingTrace {
    let span_id = random_hex::<8>();
    let (trace_id, flags) = match ctx.traceparent.as_deref().and_then(parse_traceparent) {
        Some((trace, flags)) => (trace.to_owned(), flags.to_owned()),
        None if is_w3c_id(&ctx.trace_id, 32) => (ctx.trace_id.clone(), "01".to_owned()),
        None => (random_hex::<16>(), "01".to_owned()),
    };
    OutgoingTrace {
        traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
        trace_id,
        span_id,
    }
}

/// The correlation headers of one attempt: `X-Request-ID`, `X-Trace-ID`, `X-Span-ID`,
/// `X-Tenant-ID` and `X-User-ID` (the last two when known), and `traceparent`.
///
/// `X-Trace-ID` is the context's trace id as received, which is what the platform's logs
/// correlate by; it equals the `traceparent` trace id whenever the caller sent a W3C one.
pub fn headers(ctx: &RequestContext, trace: &OutgoingTrace) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        // Context values come from validated headers or are generated, so this only drops a
        // value that could not be a header at all.
        if let Ok(v) = HeaderValue::from_str(value) {
            map.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-request-id", &ctx.request_id);
    put("x-trace-id", &ctx.trace_id);
    put("x-span-id", &trace.span_id);
    put("traceparent", &trace.traceparent);
    if let Some(tenant) = &ctx.tenant_id {
        put("x-tenant-id", tenant);
    }
    if let Some(user) = &ctx.user_id {
        put("x-user-id", user);
    }
    map
}

/// `(trace-id, flags)` of a valid version-00-compatible `traceparent`, else `None`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version_ok = is_hex(version, 2) && version != "ff";
    // Version 00 has exactly four fields; later versions may append more.
    let shape_ok = version != "00" || parts.next().is_none();
    (version_ok && shape_ok && is_w3c_id(trace, 32) && is_w3c_id(parent, 16) && is_hex(flags, 2))
        .then_some((trace, flags))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lowercase hex of the right length and not all zeros (W3C forbids the zero id).
fn is_w3c_id(s: &str, len: usize) -> bool {
    is_hex(s, len) && s.bytes().any(|b| b != b'0')
}

fn random_hex<const N: usize>() -> String {
    loop {
        let mut bytes = [0u8; N];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(traceparent: Option<&str>, trace_id: &str) -> RequestContext {
        RequestContext {
            request_id: "req-1".into(),
            trace_id: trace_id.into(),
            traceparent: traceparent.map(str::to_owned),
            tenant_id: Some("tenant-a".into()),
            user_id: None,
        }
    }

    #[test]
    fn a_call_is_a_child_of_the_incoming_traceparent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = child_trace(&ctx(Some(incoming), "4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(t.traceparent, format!("00-{}-{}-01", t.trace_id, t.span_id));
    }

    #[test]
    fn an_invalid_traceparent_starts_a_trace_with_the_context_trace_id() {
        let trace = "0af7651916cd43dd8448eb211c80319c";
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
        ] {
            let t = child_trace(&ctx(Some(bad), trace));
            assert_eq!(t.trace_id, trace, "{bad}");
        }
        let t = child_trace(&ctx(None, "not-a-w3c-id"));
        assert!(is_w3c_id(&t.trace_id, 32));
        assert!(is_w3c_id(&t.span_id, 16));
    }

    #[test]
    fn headers_carry_the_context_and_omit_what_is_unknown() {
        let c = ctx(None, "0af7651916cd43dd8448eb211c80319c");
        let t = child_trace(&c);
        let h = headers(&c, &t);
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["x-tenant-id"], "tenant-a");
        assert_eq!(h["x-span-id"], t.span_id.as_str());
        assert!(h.get("x-user-id").is_none());
    }
}
