//! Background workers that run beside the HTTP server inside `serve`.
//!
//! Every worker is a loop that stops when the shared [`CancellationToken`] is cancelled and is
//! tracked by a [`TaskTracker`], so shutdown can wait for each to finish its current step.
//! Work that must run on one replica at a time takes a Postgres advisory lock inside its loop;
//! none of them keeps state that matters in memory.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::startup::AppState;

/// How often expired nonces are purged from the shared replay store.
const NONCE_PURGE_EVERY: Duration = Duration::from_secs(60);

/// Starts every background worker.
pub fn spawn_all(state: &AppState, stop: &CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(purge_nonces(state.clone(), stop.clone()));
}

/// Keeps the replay store bounded: rows older than the signature window can never match a
/// request that passes the timestamp check, so they are deleted.
async fn purge_nonces(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(NONCE_PURGE_EVERY) => {}
        }
        match state.auth.nonces().purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "purged expired nonces"),
            Err(e) => tracing::warn!(error = %e, "nonce purge failed; will retry"),
        }
    }
}
