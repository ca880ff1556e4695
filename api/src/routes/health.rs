//! Liveness and readiness (DESIGN section 5.3). Unauthenticated: load balancers call them.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::startup::AppState;

/// `GET /health/live`: the process is up and serving.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: Postgres answers and NATS is connected. 503 with the failing checks
/// otherwise, so an orchestrator stops routing traffic here until they recover.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|r| r.map(|_| ()).map_err(|_| "unreachable".to_owned()));
    let nats = match &state.nats {
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(format!("{other:?}").to_lowercase()),
        },
        None => Err("not configured".to_owned()),
    };
    let check = |r: &Result<(), String>| match r {
        Ok(()) => json!({ "status": "ok" }),
        Err(reason) => json!({ "status": "failing", "reason": reason }),
    };
    let ok = postgres.is_ok() && nats.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "not ready" },
            "checks": { "postgres": check(&postgres), "nats": check(&nats) },
        })),
    )
}
