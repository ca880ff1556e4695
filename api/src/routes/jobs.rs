//! `GET /internal/jobs` (route policy `jobs`): this replica's view of every scheduled job.
//!
//! ```json
//! {"jobs": [{"name": "expiration", "schedule": "every 30s", "intervalSeconds": 30,
//!            "enabled": true, "leader": true, "running": false,
//!            "lastRun": "2026-11-28T21:30:00.000Z", "lastSuccess": "2026-11-28T21:30:00.000Z",
//!            "lastError": null, "consecutiveFailures": 0, "breaker": "closed",
//!            "breakerOpenUntil": null, "nextRun": "2026-11-28T21:30:30.000Z",
//!            "lastReport": {"examined": 3, "acted": 3, "unchanged": 0, "refused": 0,
//!                           "alerts": 0, "stoppedEarly": false}}]}
//! ```
//!
//! Each replica answers for itself: `leader` says whether it holds the job's lock, and the
//! run fields describe runs made here. `lastError` is `{"at", "message"}` or null; `breaker`
//! is `closed`, `open` or `half-open`.

use axum::extract::State;
use axum::routing::get;
use axum::{middleware, Json, Router};
use chrono::Utc;

use super::answers::JobsAnswer;
use crate::auth::{authenticate, RoutePolicy};
use crate::startup::AppState;

/// The route behind the `jobs` policy.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/internal/jobs", get(list_jobs))
        .route_layer(middleware::from_fn_with_state(
            state.auth.guard(RoutePolicy::Jobs),
            authenticate,
        ))
}

/// `GET /internal/jobs`.
#[utoipa::path(
    get,
    path = "/internal/jobs",
    tag = "jobs",
    responses(
        (status = 200, description = "This replica's view of every scheduled job", body = JobsAnswer),
    ),
)]
pub async fn list_jobs(State(state): State<AppState>) -> Json<JobsAnswer> {
    Json(JobsAnswer {
        jobs: state.jobs.snapshot(Utc::now()),
    })
}
