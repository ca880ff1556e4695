//! Real peer services for tests: axum servers on `127.0.0.1:0` that stand in for
//! payment-service, ticket-service and event-service.
//!
//! Like the real services, a [`Peer`] verifies the hmac-v1 signature of every request (with the
//! development secret, over the request target it received) and accepts each nonce once; a
//! request that fails either check is answered 401 and recorded as rejected. Every request is
//! recorded with its headers and body, so tests assert on exactly what arrived. Answers are
//! scripted per route: a sequence of [`Reply`]s, the last of which repeats.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{now_ms, sign_v1, SECRET};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Wait this long before answering (to trip the client's timeout).
    pub delay: Duration,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    /// Copy the request body's `refundId` into the answer's (payment-service's receipts).
    pub echo_refund_id: bool,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            delay: Duration::ZERO,
            retry_after: None,
            echo_refund_id: false,
        }
    }

    /// payment-service's `initiateRefund` receipt with `status` for the refund it was asked for.
    pub fn refund(status: &str) -> Self {
        Self {
            echo_refund_id: true,
            ..Self::ok(json!({"status": status, "reason": format!("scripted {status}")}))
        }
    }

    /// payment-service's explicit refusal of the refund it was asked for: 422 whose body is the
    /// error body plus that refund's receipt with status `failed`.
    pub fn refund_refused(reason: &str) -> Self {
        Self {
            status: 422,
            echo_refund_id: true,
            ..Self::ok(json!({
                "error": "Unprocessable Entity",
                "message": reason,
                "status": "failed",
                "reason": reason,
            }))
        }
    }

    /// `status` with an error body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: json!({"error": "scripted", "message": format!("scripted {status}")}),
            delay: Duration::ZERO,
            retry_after: None,
            echo_refund_id: false,
        }
    }

    /// The same answer, after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The same answer with `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// What the peer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query as on the request line.
    pub target: String,
    /// Header names lowercase.
    pub headers: HashMap<String, String>,
    pub body: Option<Value>,
    /// Why the peer refused it (bad signature, replayed nonce, stale timestamp), if it did.
    pub rejected: Option<&'static str>,
    pub at: Instant,
}

impl Received {
    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Script {
    /// (method, path) -> replies; the last one repeats.
    routes: HashMap<(String, String), Vec<Reply>>,
}

#[derive(Default)]
struct Inner {
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    nonces: Mutex<HashSet<(String, String)>>,
}

/// A running peer. Dropping it leaves the server running until the test's runtime ends.
#[derive(Clone)]
pub struct Peer {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Starts a peer with no routes (everything 404 until scripted).
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a peer port");
        let url = format!("http://{}", listener.local_addr().expect("peer address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner }
    }

    /// Scripts `METHOD path` (path without query): answers in order, the last one repeating.
    /// A `*` segment in `path` matches any one segment; exact paths win over patterns.
    pub fn on(&self, method: &str, path: &str, replies: Vec<Reply>) -> &Self {
        assert!(!replies.is_empty(), "script at least one reply");
        self.inner
            .script
            .lock()
            .expect("script lock")
            .routes
            .insert((method.to_owned(), path.to_owned()), replies);
        self
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().expect("received lock").clone()
    }

    /// Requests received for `path` (query ignored).
    pub fn hits(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .collect()
    }
}

fn matches_pattern(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<_>, Vec<_>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
}

/// A URL where nothing listens: a port bound and released at once.
pub async fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

fn header_map(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<binary>").to_owned(),
            )
        })
        .collect()
}

/// The hmac-v1 check of docs/contract.md §4, written from the spec (not the service's code).
fn verify(
    inner: &Inner,
    method: &str,
    target: &str,
    h: &HashMap<String, String>,
) -> Option<&'static str> {
    let get = |k: &str| h.get(k).map(String::as_str);
    let (Some(service), Some(ts), Some(nonce), Some(sig)) = (
        get("x-service-name"),
        get("x-request-timestamp"),
        get("x-request-nonce"),
        get("x-internal-auth"),
    ) else {
        return Some("missing hmac-v1 headers");
    };
    let Ok(ts_ms) = ts.parse::<i64>() else {
        return Some("bad timestamp");
    };
    if (now_ms() - ts_ms).abs() > 5 * 60 * 1000 {
        return Some("stale timestamp");
    }
    if sign_v1(SECRET, service, ts, nonce, method, target) != sig {
        return Some("bad signature");
    }
    let fresh = inner
        .nonces
        .lock()
        .expect("nonce lock")
        .insert((service.to_owned(), nonce.to_owned()));
    if !fresh {
        return Some("replayed nonce");
    }
    None
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let path = parts.uri.path().to_owned();
    let headers = header_map(&parts.headers);
    let bytes: Bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let refund_id = body.as_ref().and_then(|b| b.get("refundId")).cloned();
    let rejected = verify(&inner, &method, &target, &headers);
    inner
        .received
        .lock()
        .expect("received lock")
        .push(Received {
            method: method.clone(),
            target,
            headers,
            body,
            rejected,
            at: Instant::now(),
        });
    if let Some(why) = rejected {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Unauthorized", "message": why})),
        )
            .into_response();
    }
    let mut reply = {
        let mut script = inner.script.lock().expect("script lock");
        // An exact path wins over a pattern with `*` segments.
        let key = if script.routes.contains_key(&(method.clone(), path.clone())) {
            Some((method, path))
        } else {
            script
                .routes
                .keys()
                .find(|(m, pattern)| *m == method && matches_pattern(pattern, &path))
                .cloned()
        };
        match key.and_then(|k| script.routes.get_mut(&k)) {
            Some(replies) if replies.len() > 1 => replies.remove(0),
            Some(replies) => replies[0].clone(),
            None => Reply::status(404),
        }
    };
    if reply.echo_refund_id {
        reply.body["refundId"] = refund_id.unwrap_or(Value::Null);
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(reply.body)).into_response();
    if let Some(secs) = reply.retry_after {
        response.headers_mut().insert(
            "retry-after",
            secs.to_string()
                .parse()
                .expect("a number is a header value"),
        );
    }
    response
}

/// payment-service, ticket-service and event-service, answering so that refunds go through
/// unless a test scripts otherwise.
#[derive(Debug, Clone)]
pub struct Peers {
    pub payment: Peer,
    pub ticket: Peer,
    pub event: Peer,
}

impl Peers {
    /// Starts the three peers scripted so that any refund of a paid order goes through: every
    /// payment refundable and every refund completed, every order without tickets on
    /// ticket-service, every event scheduled. Tests narrow this per order with
    /// [`Peers::order`] and per route with [`Peer::on`].
    pub async fn start() -> Self {
        let peers = Self {
            payment: Peer::start().await,
            ticket: Peer::start().await,
            event: Peer::start().await,
        };
        peers.payment.on(
            "GET",
            "/internal/payments/*/status",
            vec![Reply::ok(
                json!({"paymentIntentId": "any", "status": "succeeded", "refundable": true}),
            )],
        );
        peers.payment.on(
            "POST",
            "/internal/refunds",
            vec![Reply::refund("succeeded")],
        );
        peers.ticket.on(
            "GET",
            "/internal/orders/*/tickets",
            vec![Reply::ok(json!({"tickets": []}))],
        );
        peers.event.on(
            "GET",
            "/internal/events/*",
            vec![Reply::ok(json!({"id": Uuid::nil(), "status": "scheduled"}))],
        );
        peers
    }

    /// Scripts payment-service to call `payment_intent_id` refundable.
    pub fn refundable(&self, payment_intent_id: &str) -> &Self {
        self.payment.on(
            "GET",
            &format!("/internal/payments/{payment_intent_id}/status"),
            vec![Reply::ok(json!({"paymentIntentId": payment_intent_id, "status": "succeeded", "refundable": true}))],
        );
        self
    }

    /// Scripts ticket-service for `order_id` (these tickets, none transferred) and
    /// event-service for `event_id` (scheduled).
    pub fn order(&self, order_id: &str, event_id: &str, tickets: &[&str]) -> &Self {
        let list: Vec<Value> = tickets
            .iter()
            .map(|t| json!({"id": t, "orderId": order_id, "status": "valid", "transferred": false}))
            .collect();
        self.ticket.on(
            "GET",
            &format!("/internal/orders/{order_id}/tickets"),
            vec![Reply::ok(json!({"orderId": order_id, "tickets": list}))],
        );
        for t in tickets {
            self.ticket.on(
                "GET",
                &format!("/internal/tickets/{t}/transfer-status"),
                vec![Reply::ok(json!({"ticketId": t, "transferred": false}))],
            );
        }
        self.event.on(
            "GET",
            &format!("/internal/events/{event_id}"),
            vec![Reply::ok(json!({"id": event_id, "status": "scheduled"}))],
        );
        self
    }

    /// Points a service's settings at these peers.
    pub fn configure(&self, settings: &mut order_api::config::Settings) {
        settings.peers.payment_url = self.payment.url.clone();
        settings.peers.ticket_url = self.ticket.url.clone();
        settings.peers.event_url = self.event.url.clone();
    }
}
