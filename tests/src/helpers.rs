//! Small helpers the integration modules share, so that each is written once: where NATS is,
//! bringing the order read models up to date, an order's event types, running the relay dry,
//! the `/metrics` page, and what every error body must look like. (Creating an order through
//! the API is [`crate::TestApp::create_order`].)

use std::time::{Duration, Instant};

use order_bus::relay;
use order_bus::{Relay, RelayOutcome, RELAY_CONSUMER};
use order_projections::{OrdersProjector, ProjectionRunner};
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;

use crate::{Auth, TestApp};

/// The NATS the suite runs against: `NATS_URL`, or the local default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Applies every committed event to the order read models, bounded so that a stuck feed fails
/// the test instead of hanging it.
pub async fn project(pool: &PgPool) {
    let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, 500);
    tokio::time::timeout(Duration::from_secs(30), runner.catch_up())
        .await
        .expect("the projector caught up in time")
        .expect("projection succeeds");
}

/// Asserts the normative error body of docs/contract.md §3.1: exactly `error` (here `reason`,
/// the status's reason phrase), a non-empty `message` and a non-empty `requestId`. Returns the
/// message, for tests that check what it says.
pub fn assert_error_body(body: &Value, reason: &str) -> String {
    let mut keys: Vec<&str> = body
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "requestId"], "{body}");
    assert_eq!(body["error"], reason, "{body}");
    assert!(
        body["requestId"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    let message = body["message"].as_str().expect("message").to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}

/// The event types of one order, in order.
pub async fn event_types(pool: &PgPool, order_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence")
        .bind(order_id)
        .fetch_all(pool)
        .await
        .expect("query events")
}

/// Runs the relay until the feed holds nothing for it, and returns how many events it
/// published. An idle round can be early when some other transaction on the cluster holds the
/// feed's fence, so "done" is the relay's own lag reaching zero, not the first idle round.
pub async fn drain_relay(relay: &Relay, pool: &PgPool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut total = 0;
    loop {
        match relay.run_once().await.expect("relay round") {
            RelayOutcome::Published(n) => total += n,
            RelayOutcome::Idle => {
                let lag = relay::lag(pool, RELAY_CONSUMER).await.expect("lag");
                if lag.events_behind == 0 && lag.events_fenced == 0 {
                    return total;
                }
                assert!(Instant::now() < deadline, "the feed stayed fenced: {lag:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            RelayOutcome::Standby => panic!("this relay is not the leader"),
        }
    }
}

/// Waits until every committed event is behind the feed's fence, so that the next read or
/// relay round is certain to see them (a transaction elsewhere on the cluster, another test's,
/// can hold the fence briefly).
pub async fn wait_visible(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = relay::lag(pool, RELAY_CONSUMER).await.expect("lag");
        if lag.events_fenced == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the feed stayed fenced: {lag:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `/metrics` page, after checking it is answered 200 as Prometheus text.
pub async fn metrics_text(app: &TestApp) -> String {
    let resp = app
        .send(Method::GET, "/metrics", Auth::None, &[], None)
        .await;
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    resp.text().await.expect("metrics body")
}
