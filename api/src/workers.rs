//! Background workers that run beside the HTTP server inside `serve`.
//!
//! Every worker is a loop that stops when the shared [`CancellationToken`] is cancelled and is
//! tracked by a [`TaskTracker`], so shutdown can wait for each to finish its current step.
//! Work that must run on one replica at a time takes a Postgres advisory lock inside its loop;
//! none of them keeps state that matters in memory.

use std::time::Duration;

use order_projections::{OrdersProjector, ProjectionRunner};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::refund::{RefundRetrier, RefundSaga};
use crate::startup::AppState;

/// How often expired nonces are purged from the shared replay store.
const NONCE_PURGE_EVERY: Duration = Duration::from_secs(60);

/// How often the feed lag gauges and the dead-letter count are refreshed: about the scrape
/// interval, so each scrape sees a fresh value without loading the database.
const BACKLOG_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Starts every background worker.
pub fn spawn_all(state: &AppState, stop: &CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(purge_nonces(state.clone(), stop.clone()));
    if state.settings.relay.enabled {
        tracker.spawn(relay_events(state.clone(), stop.clone()));
    }
    tracker.spawn(retry_refunds(state.clone(), stop.clone()));
    if state.settings.inbound.enabled {
        for family in order_bus::inbound::Family::ALL {
            tracker.spawn(crate::consumers::consume(
                state.clone(),
                family,
                stop.clone(),
            ));
        }
        tracker.spawn(crate::consumers::purge_inbox(state.clone(), stop.clone()));
    }
    tracker.spawn(project_orders(state.clone(), stop.clone()));
    tracker.spawn(measure_backlogs(state.clone(), stop.clone()));
    if state.queries.reads().has_standby() {
        tracker.spawn(probe_read_standby(state.clone(), stop.clone()));
    }
}

/// Keeps the read standby's health and lag current (`crate::read_side`): reads use it only
/// while the last probe found it sound, and only a probe puts it back in use.
async fn probe_read_standby(state: AppState, stop: CancellationToken) {
    let reads = state.queries.reads().clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(crate::read_side::STANDBY_PROBE_EVERY) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = reads.probe_once() => {}
        }
    }
}

/// Keeps the order read models in step with the feed. Every replica runs it; the runner's
/// per-batch advisory lock makes one apply each batch while the others stand by.
async fn project_orders(state: AppState, stop: CancellationToken) {
    let runner = ProjectionRunner::new(
        state.pool.clone(),
        OrdersProjector,
        state.settings.read_model.projection_batch_size,
    )
    .with_wake(
        state.store.commit_signal().clone(),
        state.settings.read_model.projection_gather(),
    );
    let poll = state.settings.read_model.projection_poll();
    runner.run_until_stopped(poll, stop).await;
}

/// Publishes committed events to JetStream (the transactional outbox). Every replica runs it;
/// the relay's leader lock lets one publish while the others stand by. It creates the stream
/// itself before its first publish when `NATS_CREATE_STREAM` allows, and keeps retrying with
/// backoff while NATS is down: commands never wait for it.
async fn relay_events(state: AppState, stop: CancellationToken) {
    let Some(client) = state.nats.clone() else {
        tracing::error!(
            "NATS is not configured; the outbox relay does not run and the backlog grows"
        );
        return;
    };
    let jetstream =
        order_bus::relay::jetstream_context(client, state.settings.relay.publish_timeout());
    let relay = order_bus::Relay::new(state.pool.clone(), jetstream, state.settings.relay_config())
        .with_wake(state.store.commit_signal().clone());
    relay.run_until_stopped(stop).await;
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

/// The refund retry loop for this state: finishes refunds left requested (docs/contract.md §5).
pub fn refund_retrier(state: &AppState) -> RefundRetrier {
    RefundRetrier::new(
        state.pool.clone(),
        RefundSaga::new(state.store.clone(), state.clients.clone()),
        Duration::from_secs(state.settings.refunds.retry_grace_secs),
    )
}

/// Finishes refunds stuck between `RefundRequested` and their outcome. Every replica runs it;
/// each refund is claimed by one at a time.
async fn retry_refunds(state: AppState, stop: CancellationToken) {
    let every = Duration::from_secs(state.settings.refunds.retry_every_secs.max(1));
    refund_retrier(&state).run_until_stopped(every, stop).await;
}

/// Refreshes the backlog gauges every [`BACKLOG_GAUGES_EVERY`], starting at once:
/// `feed_lag_events{consumer}`, `feed_lag_seconds{consumer}`, `feed_fenced_events{consumer}`
/// and `feed_blocking_transaction_seconds{consumer}` for the `orders` projector and the `relay`, and `dlq_messages` (messages parked in the dead-letter stream) when inbound
/// consumers run here. Every replica measures the same shared state, so any one's scrape will
/// do. A measurement in progress is abandoned on shutdown; it changes nothing.
async fn measure_backlogs(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = measure_backlogs_once(&state) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_GAUGES_EVERY) => {}
        }
    }
}

/// One refresh of the backlog gauges. A failed measurement leaves the last value and is logged
/// at debug: readiness reports outages.
async fn measure_backlogs_once(state: &AppState) {
    for consumer in [
        order_projections::ORDERS_PROJECTION,
        order_bus::relay::RELAY_CONSUMER,
    ] {
        match order_projections::feed::lag(&state.pool, consumer).await {
            Ok(lag) => {
                metrics::gauge!("feed_lag_events", "consumer" => consumer)
                    .set(lag.events_behind as f64);
                metrics::gauge!("feed_lag_seconds", "consumer" => consumer).set(lag.seconds_behind);
                // Events committed but not yet readable, and how long the oldest open
                // transaction holding them back has been open: a lag that grows while these
                // do is a stuck transaction, not a slow reader.
                metrics::gauge!("feed_fenced_events", "consumer" => consumer)
                    .set(lag.events_fenced as f64);
                metrics::gauge!("feed_blocking_transaction_seconds", "consumer" => consumer).set(
                    lag.oldest_open_transaction
                        .as_ref()
                        .map_or(0.0, |t| t.age_seconds),
                );
            }
            Err(e) => tracing::debug!(error = %e, consumer, "feed lag not measured"),
        }
    }
    if !state.settings.inbound.enabled {
        return;
    }
    let Some(client) = state.nats.clone() else {
        return;
    };
    match async_nats::jetstream::new(client)
        .get_stream(&state.settings.streams.dlq)
        .await
    {
        Ok(stream) => {
            metrics::gauge!("dlq_messages").set(stream.cached_info().state.messages as f64);
        }
        Err(e) => tracing::debug!(error = %e, "dead-letter count not measured"),
    }
}
