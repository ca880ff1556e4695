//! Inbound events turned into commands (docs/contract.md §6): the application's
//! [`InboundHandler`], and builders that wire the bus's subscribers and dead-letter stream from
//! settings.
//!
//! | type | command |
//! |---|---|
//! | `payment.succeeded` | `SettlePayment`: confirms, or records `PaymentRejected` and its refund |
//! | `payment.failed` | `RecordPaymentFailure` |
//! | `dispute.created` | `OpenDispute` (locks refunds) |
//! | `dispute.updated` | `UpdateDispute` |
//! | `dispute.closed` | `CloseDispute` (won unlocks refunds, lost keeps them locked) |
//! | `ticket.issued` | `RecordTickets` |
//!
//! Every command is idempotent by natural key, which is what makes a redelivery after a crash
//! between the effect and the inbox record harmless. The message id becomes the events'
//! correlation and causation id, and the NATS `traceparent` header their trace.
//!
//! Errors are classified once here: a refusal by the order (unknown order, a rule) is permanent
//! and parks the message; an outage (database down, lost write races, a bug that may be
//! environmental) and a message that may apply later (tickets before the payment) are transient
//! and retried for a bounded time. A message whose effect is moot is acknowledged as a no-op.
//! A captured payment that cannot confirm its order is never refused: it is recorded as
//! rejected with its refund requested, which the refund retry loop carries out.

use std::collections::HashMap;

use async_nats::jetstream::Context;
use chrono::Utc;
use order_bus::dlq::{DeadLetters, DlqConfig};
use order_bus::inbound::message::PaymentSucceeded;
use order_bus::inbound::{
    Family, HandleError, InboundEvent, InboundHandler, InboundMessage, MessageContext, Subscriber,
    SubscriberConfig,
};
use order_domain::commands::{
    CloseDispute, OpenDispute, RecordPaymentFailure, RecordTickets, SettlePayment, UpdateDispute,
};
use order_domain::{Order, OrderCommand, OrderEvent};
use sqlx::PgPool;

use crate::clients::PaymentClient;
use crate::config::Settings;
use crate::error::ApiError;
use crate::store::OrderStore;

/// The actor recorded in the metadata of events caused by inbound messages.
pub const ACTOR: &str = "order-service/inbound";

/// Applies inbound messages to orders through the command path.
#[derive(Debug, Clone)]
pub struct OrderInboundHandler {
    store: OrderStore,
    /// When set, every `payment.succeeded` is checked with payment-service first.
    payments: Option<PaymentClient>,
}

impl OrderInboundHandler {
    /// A handler writing through `store`, taking payment messages at their word.
    pub fn new(store: OrderStore) -> Self {
        Self {
            store,
            payments: None,
        }
    }

    /// Checks every `payment.succeeded` with payment-service before it settles the order: the
    /// one message that turns money into tickets is not taken on the broker's word alone.
    #[must_use]
    pub fn verifying_payments(mut self, payments: PaymentClient) -> Self {
        self.payments = Some(payments);
        self
    }

    /// Fails closed: a payment that cannot be verified now is retried (and parked once the
    /// retries are used up); one payment-service does not vouch for is parked at once.
    async fn verify(&self, msg: &InboundMessage, p: &PaymentSucceeded) -> Result<(), HandleError> {
        let Some(payments) = &self.payments else {
            return Ok(());
        };
        let status = payments
            .verify_payment(&p.payment_intent_id)
            .await
            .map_err(|e| {
                HandleError::Transient(format!(
                    "cannot verify the payment with payment-service: {}",
                    e.public_message()
                ))
            })?;
        let same_currency = match (&status.currency, &p.currency) {
            (Some(theirs), Some(ours)) => theirs.eq_ignore_ascii_case(ours),
            _ => false,
        };
        let vouched = status.payment_intent_id == p.payment_intent_id
            && status.status.eq_ignore_ascii_case("succeeded")
            && status.order_id == Some(msg.order_id)
            && status.amount_cents == Some(p.amount_cents)
            && same_currency;
        if vouched {
            Ok(())
        } else {
            metrics::counter!("inbound_payments_unverified_total").increment(1);
            tracing::warn!(
                payment.intent = %p.payment_intent_id,
                "payment-service does not vouch for this payment; parked"
            );
            Err(HandleError::Permanent(
                "payment-service does not confirm this payment (status, order, amount or currency differ)"
                    .to_owned(),
            ))
        }
    }
}

impl InboundHandler for OrderInboundHandler {
    #[tracing::instrument(skip_all, fields(msg.id = %msg.id, msg.type = msg.event_type(), order.id = %msg.order_id))]
    async fn handle(&self, msg: &InboundMessage, ctx: &MessageContext) -> Result<(), HandleError> {
        let metadata = metadata(msg, ctx);
        let store = &self.store;
        let id = msg.order_id;
        let result = match &msg.event {
            InboundEvent::PaymentSucceeded(p) => {
                self.verify(msg, p).await?;
                store
                    .execute(id, &metadata, exists, || {
                        OrderCommand::SettlePayment(SettlePayment {
                            payment_intent_id: p.payment_intent_id.clone(),
                            amount_cents: p.amount_cents,
                            currency: p.currency.clone(),
                            now: Utc::now(),
                        })
                    })
                    .await
            }
            InboundEvent::PaymentFailed(p) => {
                store
                    .execute(id, &metadata, exists, || {
                        OrderCommand::RecordPaymentFailure(RecordPaymentFailure {
                            payment_intent_id: p.payment_intent_id.clone(),
                            reason: p
                                .reason
                                .clone()
                                .unwrap_or_else(|| "payment failed".to_owned()),
                            now: Utc::now(),
                        })
                    })
                    .await
            }
            InboundEvent::DisputeCreated(d) => {
                store
                    .execute(id, &metadata, exists, || {
                        OrderCommand::OpenDispute(OpenDispute {
                            dispute_id: d.dispute_id.clone(),
                            amount_cents: d.amount_cents,
                            reason: d.reason.clone(),
                            now: Utc::now(),
                        })
                    })
                    .await
            }
            InboundEvent::DisputeUpdated(d) => {
                store
                    .execute(id, &metadata, exists, || {
                        OrderCommand::UpdateDispute(UpdateDispute {
                            dispute_id: d.dispute_id.clone(),
                            status: d.status.clone(),
                            now: Utc::now(),
                        })
                    })
                    .await
            }
            InboundEvent::DisputeClosed(d) => {
                store
                    .execute(id, &metadata, exists, || {
                        OrderCommand::CloseDispute(CloseDispute {
                            dispute_id: d.dispute_id.clone(),
                            outcome: d.outcome,
                            now: Utc::now(),
                        })
                    })
                    .await
            }
            InboundEvent::TicketIssued(t) => {
                store
                    .execute(id, &metadata, paid_or_closed, || {
                        OrderCommand::RecordTickets(RecordTickets {
                            tickets: t.tickets.clone(),
                            now: Utc::now(),
                        })
                    })
                    .await
            }
        };
        match result {
            Ok(done) => {
                report(msg, &done.events);
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// Logs and counts what a message did. A message that changed nothing got past the inbox, so
/// it is either a natural-key repeat or moot (a failure for a settled order, an update of a
/// closed dispute): acknowledged, never parked.
fn report(msg: &InboundMessage, events: &[OrderEvent]) {
    let message_type = msg.event_type();
    if events.is_empty() {
        tracing::info!("inbound message had no effect: already applied, or moot");
        metrics::counter!("inbound_noop_total", "type" => message_type).increment(1);
        return;
    }
    for e in events {
        if let OrderEvent::PaymentRejected(r) = e {
            tracing::warn!(
                payment.intent = %r.payment_intent_id,
                amount_cents = r.amount_cents,
                reason = r.reason.code(),
                refund.id = %r.refund_id,
                "captured payment rejected by the order; its refund is requested"
            );
            metrics::counter!("inbound_payments_rejected_total", "reason" => r.reason.code())
                .increment(1);
        }
    }
    tracing::debug!(events = events.len(), "inbound message applied");
}

/// Tickets need a paid order. While the order is still open, its payment may be on its way
/// (the payment and ticket consumers run independently), so the message is retried for the
/// bounded time the consumer's backoff allows, then parked; on a closed order the aggregate's
/// own refusal parks it.
fn paid_or_closed(order: &Order) -> Result<(), ApiError> {
    exists(order)?;
    if order.status.is_open() {
        return Err(not_yet("the order is not paid yet"));
    }
    Ok(())
}

/// A refusal that may not hold later: classified as transient (see [`classify`]).
fn not_yet(message: &str) -> ApiError {
    ApiError::Unavailable {
        message: message.to_owned(),
        retry_after: None,
    }
}

/// Refuses messages for orders this service does not know (a permanent failure).
fn exists(order: &Order) -> Result<(), ApiError> {
    if order.exists() {
        Ok(())
    } else {
        Err(ApiError::NotFound("order not found".to_owned()))
    }
}

/// Permanent: the order refuses the message as it is, and always will. Transient: the refusal
/// came from the infrastructure.
pub fn classify(e: ApiError) -> HandleError {
    match e {
        ApiError::BadRequest(m)
        | ApiError::NotFound(m)
        | ApiError::Conflict(m)
        | ApiError::Unprocessable(m) => HandleError::Permanent(m),
        ApiError::Unauthorized(m) => HandleError::Permanent(m.to_owned()),
        ApiError::Forbidden => HandleError::Permanent("forbidden".to_owned()),
        ApiError::PayloadTooLarge => HandleError::Permanent(ApiError::PayloadTooLarge.to_string()),
        ApiError::ConcurrentWrite => HandleError::Transient(ApiError::ConcurrentWrite.to_string()),
        ApiError::BadGateway(m) => HandleError::Transient(m),
        ApiError::Unavailable { message, .. } => HandleError::Transient(message),
        ApiError::Internal(e) => HandleError::Transient(format!("internal error: {e:#}")),
    }
}

/// The metadata stored with the events a message causes.
pub fn metadata(msg: &InboundMessage, ctx: &MessageContext) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("correlationId".to_owned(), msg.id.clone()),
        ("causationId".to_owned(), msg.id.clone()),
        ("messageId".to_owned(), msg.id.clone()),
        ("messageType".to_owned(), msg.event_type().to_owned()),
        ("subject".to_owned(), ctx.subject.clone()),
        ("streamSequence".to_owned(), ctx.stream_sequence.to_string()),
        ("actor".to_owned(), ACTOR.to_owned()),
    ]);
    if let Some(tp) = &ctx.traceparent {
        m.insert("traceparent".to_owned(), tp.clone());
        if let Some(trace_id) = tp.split('-').nth(1).filter(|t| t.len() == 32) {
            m.insert("traceId".to_owned(), trace_id.to_owned());
        }
    }
    m
}

/// The dead-letter stream as configured.
pub fn dead_letters(settings: &Settings, jetstream: Context, pool: PgPool) -> DeadLetters {
    DeadLetters::new(jetstream, pool, settings.dlq_config())
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
    if settings.nats_create_stream {
        // The same stream specification as the relay's, so neither undoes the other's update.
        subscriber.with_events_stream(settings.relay_config().stream)
    } else {
        subscriber
    }
}

/// The DLQ configuration's stream settings follow the events stream's.
pub(crate) fn dlq_config(settings: &Settings) -> DlqConfig {
    let mut c = DlqConfig::new(
        &settings.dlq_stream,
        &settings.nats_subject_prefix,
        &settings.nats_stream,
    );
    c.duplicate_window = std::time::Duration::from_secs(settings.nats_duplicate_window_secs.max(1));
    c.replicas = settings.nats_stream_replicas.max(1);
    c.ensure_stream = settings.nats_create_stream;
    c.max_age = crate::config::hours(settings.dlq_stream_max_age_hours);
    c.max_bytes = crate::config::byte_limit(settings.dlq_stream_max_bytes);
    c
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
        order_bus::relay::jetstream_context(client, state.settings.relay_publish_timeout());
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
    let holds = order_bus::dlq::Holds::new(state.pool.clone(), &state.settings.dlq_stream);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INBOX_PURGE_EVERY) => {}
        }
        match inbox
            .purge_older_than(state.settings.inbox_retention())
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
