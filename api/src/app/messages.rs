//! Inbound messages turned into commands (docs/contract.md §6): the application's
//! [`InboundHandler`], which the bus's subscribers call (their wiring is `crate::consumers`).
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
//! Errors are classified once here, by [`AppError::is_permanent`]: a refusal by the order
//! (unknown order, a rule) is permanent and parks the message; an outage (database down, lost
//! write races, a bug that may be environmental) and a message that may apply later (tickets
//! before the payment) are transient and retried for a bounded time. A message whose effect is moot is acknowledged as a no-op.
//! A captured payment that cannot confirm its order is never refused: it is recorded as
//! rejected with its refund requested, which the refund retry loop carries out.

use std::collections::HashMap;

use chrono::Utc;
use order_bus::inbound::message::PaymentSucceeded;
use order_bus::inbound::{
    HandleError, InboundEvent, InboundHandler, InboundMessage, MessageContext,
};
use order_domain::commands::{
    CloseDispute, OpenDispute, RecordPaymentFailure, RecordTickets, SettlePayment, UpdateDispute,
};
use order_domain::{Order, OrderCommand, OrderEvent};

use crate::app::error::AppError;
use crate::app::store::OrderStore;
use crate::clients::PaymentClient;

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
fn paid_or_closed(order: &Order) -> Result<(), AppError> {
    exists(order)?;
    if order.status.is_open() {
        return Err(not_yet("the order is not paid yet"));
    }
    Ok(())
}

/// A refusal that may not hold later: classified as transient (see [`classify`]).
fn not_yet(message: &str) -> AppError {
    AppError::Unavailable {
        message: message.to_owned(),
        retry_after: None,
    }
}

/// Refuses messages for orders this service does not know (a permanent failure).
fn exists(order: &Order) -> Result<(), AppError> {
    if order.exists() {
        Ok(())
    } else {
        Err(AppError::order_not_found())
    }
}

/// Permanent: the order refuses the message as it is, and always will. Transient: the refusal
/// came from the infrastructure, or from an order not yet ready for the message.
pub fn classify(e: AppError) -> HandleError {
    match e {
        e if e.is_permanent() => HandleError::Permanent(e.to_string()),
        AppError::Internal(e) => HandleError::Transient(format!("internal error: {e:#}")),
        e => HandleError::Transient(e.to_string()),
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
