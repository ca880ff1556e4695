//! Small helpers the integration modules share, so that each is written once: where NATS is,
//! bringing the order read models up to date, and what every error body must look like.
//! (Creating an order through the API is [`crate::TestApp::create_order`].)

use std::time::Duration;

use order_projections::{OrdersProjector, ProjectionRunner};
use serde_json::Value;
use sqlx::PgPool;

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
