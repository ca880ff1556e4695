//! Liveness, readiness (docs/contract.md §3.4) and the published event contract. Unauthenticated:
//! load balancers and other teams' tooling call them.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use order_bus::relay::{self, RELAY_CONSUMER};
use serde_json::Value;

use super::answers::{LiveAnswer, ReadyAnswer, ReadyCheck, ReadyChecks};
use crate::startup::AppState;

/// `GET /health/live`: the process is up and serving.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = LiveAnswer)),
)]
pub async fn live() -> Json<LiveAnswer> {
    Json(LiveAnswer { status: "ok" })
}

/// `GET /health/ready`: Postgres answers, NATS is connected, the outbox relay is not far
/// behind (`RELAY_READY_MAX_BACKLOG`), and the feed's stored transaction ids are below the
/// database's next one (after a logical restore they are not, and every reader stalls while
/// its lag reads 0). 503 with the failing checks otherwise, so an orchestrator stops routing
/// traffic here until they recover. The relay check reports the backlog either way, so an
/// operator sees it grow while NATS is down.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Postgres, NATS, the relay and the feed are fine", body = ReadyAnswer),
        (status = 503, description = "At least one check fails; each failing check gives its reason", body = ReadyAnswer),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<ReadyAnswer>) {
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
    let (relay_ok, relay) = relay_check(&state).await;
    let feed = feed_check(&state).await;
    let ok = postgres.is_ok() && nats.is_ok() && relay_ok && feed.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadyAnswer {
            status: if ok { "ready" } else { "not ready" },
            checks: ReadyChecks {
                postgres: ReadyCheck::of(&postgres),
                nats: ReadyCheck::of(&nats),
                relay,
                feed: ReadyCheck::of(&feed),
            },
        }),
    )
}

/// The relay's backlog against the configured limit.
async fn relay_check(state: &AppState) -> (bool, ReadyCheck) {
    let max = state.settings.relay.ready_max_backlog;
    let measured = tokio::time::timeout(
        Duration::from_secs(2),
        relay::lag(&state.pool, RELAY_CONSUMER),
    )
    .await;
    match measured {
        Ok(Ok(lag)) => {
            let ok = lag.events_behind <= max;
            let mut check = if ok {
                ReadyCheck::ok()
            } else {
                ReadyCheck::failing(format!(
                    "{} events wait for the relay (limit {max})",
                    lag.events_behind
                ))
            };
            check.backlog = Some(lag.events_behind);
            check.seconds_behind = Some(lag.seconds_behind);
            check.fenced = Some(lag.events_fenced);
            check.max_backlog = Some(max);
            (ok, check)
        }
        Ok(Err(_)) => (false, ReadyCheck::failing("backlog unmeasurable")),
        Err(_) => (false, ReadyCheck::failing("timed out")),
    }
}

/// Whether every reader of the feed can make progress: the database's next transaction id is
/// above every stored one (order_projections::feed::check_transaction_ids_ahead). The failing
/// reason is the check's own message, which names the fix.
async fn feed_check(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        order_projections::feed::check_transaction_ids_ahead(&state.pool),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ order_projections::ProjectionError::TransactionIdsBehind { .. })) => {
            Err(e.to_string())
        }
        Ok(Err(_)) => Err("unchecked: the database did not answer".to_owned()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// `GET /asyncapi.json`: the AsyncAPI 3.0 document of every subject this service publishes,
/// with the envelope and the JSON Schema of each payload (generated from the event types).
#[utoipa::path(
    get,
    path = "/asyncapi.json",
    tag = "operations",
    responses((status = 200, description = "The AsyncAPI 3.0 document of the published events", body = serde_json::Value)),
)]
pub async fn asyncapi(State(state): State<AppState>) -> Json<Value> {
    let subjects = order_bus::Subjects::new(&state.settings.streams.subject_prefix);
    Json(order_bus::asyncapi::document(&subjects))
}
