//! Events: facts the order recorded, named in the past tense.
//!
//! The enum is stored externally tagged (`{"OrderCreated": {...}}`), as postgres-es stores any
//! `DomainEvent`. Each variant's name is its stable wire name, and [`OrderEvent::event_version`]
//! its schema version. Changing a payload's shape means a new version plus an upcaster in
//! [`crate::upcast`], never an edit in place.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{
    Currency, DisputeOutcome, IssuedTicket, LineItem, OrderStatus, PaymentRejection,
};

/// Every fact in an order's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum OrderEvent {
    OrderCreated(OrderCreated),
    OrderReserved(OrderReserved),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    OrderExpired(OrderExpired),
    OrderRefunded(OrderRefunded),
    OrderFailed(OrderFailed),
    PaymentFailed(PaymentFailed),
    TicketsIssued(TicketsIssued),
    DisputeOpened(DisputeOpened),
    DisputeUpdated(DisputeUpdated),
    DisputeClosed(DisputeClosed),
    RefundRequested(RefundRequested),
    RefundFailed(RefundFailed),
    ReminderSent(ReminderSent),
    EventReminderSent(EventReminderSent),
    OrderArchived(OrderArchived),
    PaymentRejected(PaymentRejected),
    PaymentReturned(PaymentReturned),
    PaymentReturnFailed(PaymentReturnFailed),
}

/// Current schema version of `OrderCreated`. Version 1.0 lacked tenant, order number, item ids
/// and the fee/tax split; it is upcast on load.
pub const ORDER_CREATED_VERSION: &str = "2.0";
/// Schema version of every other event, none of which has changed shape yet.
pub const V1: &str = "1.0";

impl OrderEvent {
    /// All wire names, for schema generation and subject tables.
    pub const TYPES: [&'static str; 20] = [
        "OrderCreated",
        "OrderReserved",
        "OrderConfirmed",
        "OrderCancelled",
        "OrderExpired",
        "OrderRefunded",
        "OrderFailed",
        "PaymentFailed",
        "TicketsIssued",
        "DisputeOpened",
        "DisputeUpdated",
        "DisputeClosed",
        "RefundRequested",
        "RefundFailed",
        "ReminderSent",
        "EventReminderSent",
        "OrderArchived",
        "PaymentRejected",
        "PaymentReturned",
        "PaymentReturnFailed",
    ];

    /// The stable wire name, equal to the variant name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::OrderCreated(_) => "OrderCreated",
            Self::OrderReserved(_) => "OrderReserved",
            Self::OrderConfirmed(_) => "OrderConfirmed",
            Self::OrderCancelled(_) => "OrderCancelled",
            Self::OrderExpired(_) => "OrderExpired",
            Self::OrderRefunded(_) => "OrderRefunded",
            Self::OrderFailed(_) => "OrderFailed",
            Self::PaymentFailed(_) => "PaymentFailed",
            Self::TicketsIssued(_) => "TicketsIssued",
            Self::DisputeOpened(_) => "DisputeOpened",
            Self::DisputeUpdated(_) => "DisputeUpdated",
            Self::DisputeClosed(_) => "DisputeClosed",
            Self::RefundRequested(_) => "RefundRequested",
            Self::RefundFailed(_) => "RefundFailed",
            Self::ReminderSent(_) => "ReminderSent",
            Self::EventReminderSent(_) => "EventReminderSent",
            Self::OrderArchived(_) => "OrderArchived",
            Self::PaymentRejected(_) => "PaymentRejected",
            Self::PaymentReturned(_) => "PaymentReturned",
            Self::PaymentReturnFailed(_) => "PaymentReturnFailed",
        }
    }

    /// The schema version of this event's payload.
    pub fn event_version(&self) -> &'static str {
        version_of(self.event_type())
    }

    /// When the fact happened, by the clock of the command that caused it.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::OrderCreated(e) => e.created_at,
            Self::OrderReserved(e) => e.occurred_at,
            Self::OrderConfirmed(e) => e.occurred_at,
            Self::OrderCancelled(e) => e.occurred_at,
            Self::OrderExpired(e) => e.occurred_at,
            Self::OrderRefunded(e) => e.occurred_at,
            Self::OrderFailed(e) => e.occurred_at,
            Self::PaymentFailed(e) => e.occurred_at,
            Self::TicketsIssued(e) => e.occurred_at,
            Self::DisputeOpened(e) => e.occurred_at,
            Self::DisputeUpdated(e) => e.occurred_at,
            Self::DisputeClosed(e) => e.occurred_at,
            Self::RefundRequested(e) => e.occurred_at,
            Self::RefundFailed(e) => e.occurred_at,
            Self::ReminderSent(e) => e.occurred_at,
            Self::EventReminderSent(e) => e.occurred_at,
            Self::OrderArchived(e) => e.occurred_at,
            Self::PaymentRejected(e) => e.occurred_at,
            Self::PaymentReturned(e) => e.occurred_at,
            Self::PaymentReturnFailed(e) => e.occurred_at,
        }
    }
}

/// The current schema version for a wire name (`1.0` for names this crate does not know).
pub fn version_of(event_type: &str) -> &'static str {
    if event_type == "OrderCreated" {
        ORDER_CREATED_VERSION
    } else {
        V1
    }
}

/// An order was placed. Carries everything the read side needs, so projections stay minimal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub order_number: String,
    pub tenant_id: String,
    pub user_id: String,
    pub event_id: Uuid,
    pub currency: Currency,
    pub items: Vec<LineItem>,
    pub subtotal_cents: i64,
    pub fees_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_starts_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Tickets are held for the buyer until the new expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderReserved {
    pub expires_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

/// Payment succeeded; the order is PAID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    pub occurred_at: DateTime<Utc>,
}

/// The order was cancelled before payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub reason: String,
    pub previous_status: OrderStatus,
    pub occurred_at: DateTime<Utc>,
}

/// The order passed its expiry unpaid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderExpired {
    pub expired_at: DateTime<Utc>,
    pub previous_status: OrderStatus,
    pub occurred_at: DateTime<Utc>,
}

/// Money went back to the buyer. `full` is true once everything paid is refunded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRefunded {
    pub refund_id: Uuid,
    pub amount_cents: i64,
    pub refunded_total_cents: i64,
    pub full: bool,
    pub occurred_at: DateTime<Utc>,
}

/// The order failed for a reason outside the buyer's control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderFailed {
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// A payment attempt failed; the order can still be paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub payment_intent_id: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// Tickets were issued against line items (only the ones new to this order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketsIssued {
    pub tickets: Vec<IssuedTicket>,
    pub ticket_count: u32,
    pub occurred_at: DateTime<Utc>,
}

/// A chargeback was opened; refunds are locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisputeOpened {
    pub dispute_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// An open dispute changed status at the payment provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisputeUpdated {
    pub dispute_id: String,
    pub status: String,
    pub occurred_at: DateTime<Utc>,
}

/// A dispute ended; `refunds_locked` is the lock after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisputeClosed {
    pub dispute_id: String,
    pub outcome: DisputeOutcome,
    pub refunds_locked: bool,
    pub occurred_at: DateTime<Utc>,
}

/// A refund was accepted by the order and is now owed by the payment provider. The amount is
/// reserved against the order's refundable balance until it completes or fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundRequested {
    pub refund_id: Uuid,
    pub amount_cents: i64,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// The payment provider did not refund; the reserved amount is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundFailed {
    pub refund_id: Uuid,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// The buyer was reminded that the order is about to expire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReminderSent {
    pub expires_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

/// The buyer was reminded that the event is close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventReminderSent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_starts_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// The order left the hot read model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderArchived {
    pub final_status: OrderStatus,
    pub occurred_at: DateTime<Utc>,
}

/// A payment was captured that the order could not accept (see [`PaymentRejection`]). The
/// buyer was charged all the same, so the money is owed back: its refund, with `refund_id` as
/// the idempotency key, is requested in the same breath and finished by the refund saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRejected {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub reason: PaymentRejection,
    pub refund_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

/// The money of a rejected payment went back to the buyer. The order's own status and
/// refundable balance are untouched: that payment never counted towards them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReturned {
    pub refund_id: Uuid,
    pub payment_intent_id: String,
    pub amount_cents: i64,
    pub occurred_at: DateTime<Utc>,
}

/// payment-service explicitly refused to return a rejected payment. The money is still the
/// buyer's and this order holds no claim to it: a person has to settle it with the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReturnFailed {
    pub refund_id: Uuid,
    pub payment_intent_id: String,
    pub amount_cents: i64,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}
