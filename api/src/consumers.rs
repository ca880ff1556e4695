//! The inbound consumers' wiring: the bus's subscribers and dead-letter stream built from
//! settings over [`OrderInboundHandler`], and the workers that consume each family and keep
//! the inbox bounded.

use async_nats::jetstream::Context;
use order_bus::dlq::DeadLetters;
use order_bus::inbound::{Family, InboundHandler, Subscriber, SubscriberConfig};
use sqlx::PgPool;

use crate::app::messages::OrderInboundHandler;
use crate::config::Settings;

/// The dead-letter stream as configured.
pub fn dead_letters(settings: &Settings, jetstream: Context, pool: PgPool) -> DeadLetters {
    DeadLetters::new(jetstream, pool, settings.streams.dlq_config())
}

/// The subscriber of one family as configured, over `handler`.
pub fn subscriber<H: InboundHandler>(
    settings: &Settings,
    family: Family,
    jetstream: Context,
    pool: PgPool,
    handler: H,
) -> Subscriber<H> {
    let config: SubscriberConfig = settings.subscriber_config(family);
    let dlq = dead_letters(settings, jetstream.clone(), pool.clone());
    let subscriber = Subscriber::new(jetstream, pool, config, dlq, handler);
    if settings.streams.create {
        // The same stream specification as the relay's, so neither undoes the other's update.
        subscriber.with_events_stream(settings.relay_config().stream)
    } else {
        subscriber
    }
}

/// How often the inbox is purged of ids older than the retention.
const INBOX_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Hold reservations older than this belong to messages the broker stopped delivering: a
/// message being parked comes back within its backoff (under an hour in all).
const RESERVATION_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// The worker of one inbound family: consumes until `stop`. Every replica runs it; replicas
/// share the durable consumer, so each message goes to one of them.
pub async fn consume(
    state: crate::startup::AppState,
    family: Family,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(client) = state.nats.clone() else {
        tracing::error!(%family, "NATS is not configured; inbound messages are not consumed");
        return;
    };
    let jetstream =
        order_bus::relay::jetstream_context(client, state.settings.relay.publish_timeout());
    let mut handler = OrderInboundHandler::new(state.store.clone());
    if state.settings.verify_inbound_payments() {
        handler = handler.verifying_payments(state.clients.payment.clone());
    }
    subscriber(
        &state.settings,
        family,
        jetstream,
        state.pool.clone(),
        handler,
    )
    .run_until_stopped(stop)
    .await;
}

/// Keeps the inbox bounded: ids older than the retention are deleted (hourly).
pub async fn purge_inbox(
    state: crate::startup::AppState,
    stop: tokio_util::sync::CancellationToken,
) {
    let inbox = order_bus::inbound::Inbox::new(state.pool.clone());
    let holds = order_bus::dlq::Holds::new(state.pool.clone(), &state.settings.streams.dlq);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INBOX_PURGE_EVERY) => {}
        }
        match inbox
            .purge_older_than(state.settings.inbound.inbox_retention())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "purged old inbox ids"),
            Err(e) => tracing::warn!(error = %e, "inbox purge failed; will retry"),
        }
        match holds
            .purge_reservations_older_than(RESERVATION_MAX_AGE)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(purged = n, "dropped stale hold reservations"),
            Err(e) => tracing::warn!(error = %e, "hold reservation purge failed; will retry"),
        }
    }
}
