//! Commands: what a caller asks the order to do, named as imperatives.
//!
//! Every command carries `now` from the caller's clock, and every fact that lives in another
//! service, so that [`Order::decide`](crate::Order::decide) is a pure function.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Currency, DisputeOutcome, IssuedTicket, NewLineItem};

/// Everything an order can be asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderCommand {
    CreateOrder(CreateOrder),
    ReserveOrder(ReserveOrder),
    ConfirmOrder(ConfirmOrder),
    SettlePayment(SettlePayment),
    CancelOrder(CancelOrder),
    ExpireOrder(ExpireOrder),
    FailOrder(FailOrder),
    RecordPaymentFailure(RecordPaymentFailure),
    RequestRefund(RequestRefund),
    CompleteRefund(CompleteRefund),
    FailRefund(FailRefund),
    OpenDispute(OpenDispute),
    UpdateDispute(UpdateDispute),
    CloseDispute(CloseDispute),
    RecordTickets(RecordTickets),
    SendReminder(SendReminder),
    SendEventReminder(SendEventReminder),
    ArchiveOrder(ArchiveOrder),
}

/// Place a new order. The application layer chooses the ids and the order number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateOrder {
    pub order_id: Uuid,
    pub order_number: String,
    pub tenant_id: String,
    pub user_id: String,
    pub event_id: Uuid,
    pub currency: Currency,
    pub items: Vec<NewLineItem>,
    pub fees_cents: i64,
    pub tax_cents: i64,
    pub expires_at: DateTime<Utc>,
    pub event_starts_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// Hold the tickets of a pending order until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveOrder {
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Mark the order paid. Idempotent on `payment_intent_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmOrder {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    /// Optimistic lock from a read the caller made; a mismatch is refused.
    pub expected_version: Option<u64>,
    pub now: DateTime<Utc>,
}

/// Settle a payment the provider reports as captured: it confirms the order when the order can
/// take it, and is otherwise recorded as rejected with its refund requested, because the buyer
/// was charged either way. Idempotent on `payment_intent_id`.
///
/// This is the inbound `payment.succeeded` path; `ConfirmOrder` stays the HTTP command, whose
/// caller is still there to hear a 409.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettlePayment {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    /// ISO 4217 code as the provider sent it; `None` when the message carried none.
    pub currency: Option<String>,
    pub now: DateTime<Utc>,
}

/// Cancel an unpaid order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// Expire an unpaid order whose expiry time has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpireOrder {
    pub now: DateTime<Utc>,
}

/// Give up on an unpaid order for a reason outside the buyer's control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailOrder {
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// Record that a payment attempt failed; the order stays payable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPaymentFailure {
    pub payment_intent_id: String,
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// Facts about a refund that other services hold, gathered before the command is sent.
/// A refund is refused unless every fact is known and allows it (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RefundFacts {
    /// Reasons another service gave for refusing, e.g. "ticket tkt_1 was transferred".
    pub refusals: Vec<String>,
}

/// Ask for money back. `amount_cents: None` means everything left to refund.
/// Idempotent on `refund_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRefund {
    pub refund_id: Uuid,
    pub amount_cents: Option<i64>,
    pub reason: String,
    pub facts: RefundFacts,
    pub now: DateTime<Utc>,
}

/// Record that the payment provider completed a requested refund.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteRefund {
    pub refund_id: Uuid,
    pub now: DateTime<Utc>,
}

/// Record that the payment provider refused or failed a requested refund.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailRefund {
    pub refund_id: Uuid,
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// A chargeback was opened against the payment. Idempotent on `dispute_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenDispute {
    pub dispute_id: String,
    pub amount_cents: Option<i64>,
    pub reason: Option<String>,
    pub now: DateTime<Utc>,
}

/// The payment provider changed an open dispute's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateDispute {
    pub dispute_id: String,
    pub status: String,
    pub now: DateTime<Utc>,
}

/// A dispute ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseDispute {
    pub dispute_id: String,
    pub outcome: DisputeOutcome,
    pub now: DateTime<Utc>,
}

/// Record tickets issued against line items. Tickets already recorded are skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordTickets {
    pub tickets: Vec<IssuedTicket>,
    pub now: DateTime<Utc>,
}

/// Remind the buyer that an unpaid order is about to expire. Sent at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReminder {
    pub now: DateTime<Utc>,
}

/// Remind the buyer that the event is close. Sent at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEventReminder {
    pub now: DateTime<Utc>,
}

/// Move a finished order out of the hot read model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveOrder {
    pub now: DateTime<Utc>,
}
