//! Shared builders for the Order aggregate tests: one canonical order, its events and commands,
//! and histories that bring it to every status.
//!
//! The canonical order has two lines, A (2 × 50.00) and B (1 × 25.00), 3.00 of fees and 2.00 of
//! tax: 130.00 in all. It is created at `t(0)` and expires at `t(15)`; a reservation moves the
//! expiry to `t(30)`. Commands that are not about time run at `t(5)`.

// Each test binary uses a different subset of these builders.
#![allow(dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use order_domain::commands::*;
use order_domain::events::*;
use order_domain::values::{DisputeOutcome, IssuedTicket, LineItem, NewLineItem, PaymentRejection};
use order_domain::{Currency, Order, OrderCommand, OrderError, OrderEvent, OrderStatus};

pub const ORDER_ID: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
pub const EVENT_ID: Uuid = Uuid::from_u128(0x7e6d_5c4b_3a2f_4e1d_8c0b_9a8f_7e6d_5c4b);
pub const ITEM_A: Uuid = Uuid::from_u128(0xa1);
pub const ITEM_B: Uuid = Uuid::from_u128(0xb1);
pub const UNKNOWN_ITEM: Uuid = Uuid::from_u128(0xff);
pub const TYPE_A: Uuid = Uuid::from_u128(0xa2);
pub const TYPE_B: Uuid = Uuid::from_u128(0xb2);
pub const REFUND_1: Uuid = Uuid::from_u128(0x0001);
pub const REFUND_2: Uuid = Uuid::from_u128(0x0002);
pub const REFUND_3: Uuid = Uuid::from_u128(0x0003);

pub const QTY_A: u32 = 2;
pub const PRICE_A: i64 = 5_000;
pub const QTY_B: u32 = 1;
pub const PRICE_B: i64 = 2_500;
pub const SUBTOTAL: i64 = 12_500;
pub const FEES: i64 = 300;
pub const TAX: i64 = 200;
pub const TOTAL: i64 = 13_000;
/// The partial refund completed in [`partially_refunded`].
pub const PARTIAL: i64 = 3_000;

pub const INTENT: &str = "pi_1";
pub const OTHER_INTENT: &str = "pi_2";
pub const DISPUTE: &str = "dp_1";
pub const OTHER_DISPUTE: &str = "dp_2";

/// `minutes` after the moment the canonical order is created.
pub fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 19, 30, 0).unwrap() + Duration::minutes(minutes)
}

/// When a command not about time runs: after creation, before any expiry.
pub fn now() -> DateTime<Utc> {
    t(5)
}

pub fn expires_at() -> DateTime<Utc> {
    t(15)
}

pub fn reserved_until() -> DateTime<Utc> {
    t(30)
}

pub fn event_starts_at() -> DateTime<Utc> {
    t(60 * 24 * 30)
}

pub fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

// ---------------------------------------------------------------- commands

pub fn new_item(id: Uuid, quantity: u32, unit_price_cents: i64) -> NewLineItem {
    NewLineItem {
        id,
        ticket_type_id: TYPE_A,
        quantity,
        unit_price_cents,
    }
}

pub fn create_cmd() -> CreateOrder {
    CreateOrder {
        order_id: ORDER_ID,
        order_number: "ORD-20261128-3F4A5B".to_owned(),
        tenant_id: "tenant-acme".to_owned(),
        user_id: "user-1".to_owned(),
        event_id: EVENT_ID,
        currency: usd(),
        items: vec![
            NewLineItem {
                id: ITEM_A,
                ticket_type_id: TYPE_A,
                quantity: QTY_A,
                unit_price_cents: PRICE_A,
            },
            NewLineItem {
                id: ITEM_B,
                ticket_type_id: TYPE_B,
                quantity: QTY_B,
                unit_price_cents: PRICE_B,
            },
        ],
        fees_cents: FEES,
        tax_cents: TAX,
        expires_at: expires_at(),
        event_starts_at: Some(event_starts_at()),
        now: t(0),
    }
}

pub fn create() -> OrderCommand {
    OrderCommand::CreateOrder(create_cmd())
}

pub fn create_with(f: impl FnOnce(&mut CreateOrder)) -> OrderCommand {
    let mut cmd = create_cmd();
    f(&mut cmd);
    OrderCommand::CreateOrder(cmd)
}

pub fn reserve() -> OrderCommand {
    reserve_at(reserved_until(), now())
}

pub fn reserve_at(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> OrderCommand {
    OrderCommand::ReserveOrder(ReserveOrder { expires_at, now })
}

pub fn confirm() -> OrderCommand {
    confirm_with(INTENT, TOTAL, None, now())
}

pub fn confirm_with(
    intent: &str,
    amount_cents: i64,
    expected_version: Option<u64>,
    now: DateTime<Utc>,
) -> OrderCommand {
    OrderCommand::ConfirmOrder(ConfirmOrder {
        payment_intent_id: intent.to_owned(),
        amount_cents,
        expected_version,
        now,
    })
}

pub fn settle_payment_at(
    intent: &str,
    amount_cents: i64,
    currency: Option<&str>,
    now: DateTime<Utc>,
) -> OrderCommand {
    OrderCommand::SettlePayment(SettlePayment {
        payment_intent_id: intent.to_owned(),
        amount_cents,
        currency: currency.map(str::to_owned),
        now,
    })
}

pub fn settle_payment(intent: &str, amount_cents: i64) -> OrderCommand {
    settle_payment_at(intent, amount_cents, Some("USD"), now())
}

pub fn cancel() -> OrderCommand {
    OrderCommand::CancelOrder(CancelOrder {
        reason: "buyer changed their mind".to_owned(),
        now: now(),
    })
}

pub fn expire_at(now: DateTime<Utc>) -> OrderCommand {
    OrderCommand::ExpireOrder(ExpireOrder { now })
}

/// Expiry well after both the original and the reserved expiry.
pub fn expire() -> OrderCommand {
    expire_at(t(60))
}

pub fn fail() -> OrderCommand {
    OrderCommand::FailOrder(FailOrder {
        reason: "event cancelled".to_owned(),
        now: now(),
    })
}

pub fn payment_failure(intent: &str) -> OrderCommand {
    OrderCommand::RecordPaymentFailure(RecordPaymentFailure {
        payment_intent_id: intent.to_owned(),
        reason: "card declined".to_owned(),
        now: now(),
    })
}

pub fn request_refund(refund_id: Uuid, amount_cents: Option<i64>) -> OrderCommand {
    request_refund_with(refund_id, amount_cents, RefundFacts::default())
}

pub fn request_refund_with(
    refund_id: Uuid,
    amount_cents: Option<i64>,
    facts: RefundFacts,
) -> OrderCommand {
    OrderCommand::RequestRefund(RequestRefund {
        refund_id,
        amount_cents,
        reason: "requested by buyer".to_owned(),
        facts,
        now: now(),
    })
}

pub fn complete_refund(refund_id: Uuid) -> OrderCommand {
    OrderCommand::CompleteRefund(CompleteRefund {
        refund_id,
        now: now(),
    })
}

pub fn fail_refund(refund_id: Uuid) -> OrderCommand {
    OrderCommand::FailRefund(FailRefund {
        refund_id,
        reason: "provider declined".to_owned(),
        now: now(),
    })
}

pub fn open_dispute(dispute_id: &str) -> OrderCommand {
    OrderCommand::OpenDispute(OpenDispute {
        dispute_id: dispute_id.to_owned(),
        amount_cents: Some(TOTAL),
        reason: Some("fraudulent".to_owned()),
        now: now(),
    })
}

pub fn update_dispute(dispute_id: &str, status: &str) -> OrderCommand {
    OrderCommand::UpdateDispute(UpdateDispute {
        dispute_id: dispute_id.to_owned(),
        status: status.to_owned(),
        now: now(),
    })
}

pub fn close_dispute(dispute_id: &str, outcome: DisputeOutcome) -> OrderCommand {
    OrderCommand::CloseDispute(CloseDispute {
        dispute_id: dispute_id.to_owned(),
        outcome,
        now: now(),
    })
}

pub fn ticket(item_id: Uuid, ticket_id: &str) -> IssuedTicket {
    IssuedTicket {
        item_id,
        ticket_id: ticket_id.to_owned(),
    }
}

pub fn record_tickets(tickets: &[IssuedTicket]) -> OrderCommand {
    OrderCommand::RecordTickets(RecordTickets {
        tickets: tickets.to_vec(),
        now: now(),
    })
}

pub fn send_reminder() -> OrderCommand {
    send_reminder_at(now())
}

pub fn send_reminder_at(now: DateTime<Utc>) -> OrderCommand {
    OrderCommand::SendReminder(SendReminder { now })
}

pub fn send_event_reminder() -> OrderCommand {
    OrderCommand::SendEventReminder(SendEventReminder { now: now() })
}

pub fn archive() -> OrderCommand {
    OrderCommand::ArchiveOrder(ArchiveOrder { now: now() })
}

// ---------------------------------------------------------------- events

pub fn line_items() -> Vec<LineItem> {
    vec![
        LineItem {
            id: ITEM_A,
            ticket_type_id: TYPE_A,
            quantity: QTY_A,
            unit_price_cents: PRICE_A,
        },
        LineItem {
            id: ITEM_B,
            ticket_type_id: TYPE_B,
            quantity: QTY_B,
            unit_price_cents: PRICE_B,
        },
    ]
}

pub fn created_event() -> OrderCreated {
    OrderCreated {
        order_id: ORDER_ID,
        order_number: "ORD-20261128-3F4A5B".to_owned(),
        tenant_id: "tenant-acme".to_owned(),
        user_id: "user-1".to_owned(),
        event_id: EVENT_ID,
        currency: usd(),
        items: line_items(),
        subtotal_cents: SUBTOTAL,
        fees_cents: FEES,
        tax_cents: TAX,
        total_cents: TOTAL,
        expires_at: expires_at(),
        event_starts_at: Some(event_starts_at()),
        created_at: t(0),
    }
}

pub fn created() -> OrderEvent {
    OrderEvent::OrderCreated(created_event())
}

pub fn reserved() -> OrderEvent {
    OrderEvent::OrderReserved(OrderReserved {
        expires_at: reserved_until(),
        occurred_at: now(),
    })
}

pub fn confirmed() -> OrderEvent {
    confirmed_with(INTENT)
}

pub fn confirmed_with(intent: &str) -> OrderEvent {
    OrderEvent::OrderConfirmed(OrderConfirmed {
        payment_intent_id: intent.to_owned(),
        amount_cents: TOTAL,
        occurred_at: now(),
    })
}

pub fn cancelled(previous_status: OrderStatus) -> OrderEvent {
    OrderEvent::OrderCancelled(OrderCancelled {
        reason: "buyer changed their mind".to_owned(),
        previous_status,
        occurred_at: now(),
    })
}

pub fn expired(expired_at: DateTime<Utc>, previous_status: OrderStatus) -> OrderEvent {
    OrderEvent::OrderExpired(OrderExpired {
        expired_at,
        previous_status,
        occurred_at: t(60),
    })
}

pub fn failed() -> OrderEvent {
    OrderEvent::OrderFailed(OrderFailed {
        reason: "event cancelled".to_owned(),
        occurred_at: now(),
    })
}

pub fn payment_failed(intent: &str) -> OrderEvent {
    OrderEvent::PaymentFailed(PaymentFailed {
        payment_intent_id: intent.to_owned(),
        reason: "card declined".to_owned(),
        occurred_at: now(),
    })
}

pub fn refund_requested(refund_id: Uuid, amount_cents: i64) -> OrderEvent {
    OrderEvent::RefundRequested(RefundRequested {
        refund_id,
        amount_cents,
        reason: "requested by buyer".to_owned(),
        occurred_at: now(),
    })
}

pub fn refunded(
    refund_id: Uuid,
    amount_cents: i64,
    refunded_total_cents: i64,
    full: bool,
) -> OrderEvent {
    OrderEvent::OrderRefunded(OrderRefunded {
        refund_id,
        amount_cents,
        refunded_total_cents,
        full,
        occurred_at: now(),
    })
}

pub fn refund_failed(refund_id: Uuid) -> OrderEvent {
    OrderEvent::RefundFailed(RefundFailed {
        refund_id,
        reason: "provider declined".to_owned(),
        occurred_at: now(),
    })
}

pub fn rejected_refund_id(intent: &str) -> Uuid {
    Order::rejected_payment_refund_id(ORDER_ID, intent)
}

pub fn payment_rejected(intent: &str, amount_cents: i64, reason: PaymentRejection) -> OrderEvent {
    payment_rejected_at(intent, amount_cents, reason, now())
}

pub fn payment_rejected_at(
    intent: &str,
    amount_cents: i64,
    reason: PaymentRejection,
    at: DateTime<Utc>,
) -> OrderEvent {
    OrderEvent::PaymentRejected(PaymentRejected {
        payment_intent_id: intent.to_owned(),
        amount_cents,
        currency: Some("USD".to_owned()),
        reason,
        refund_id: rejected_refund_id(intent),
        occurred_at: at,
    })
}

pub fn payment_returned(intent: &str, amount_cents: i64) -> OrderEvent {
    OrderEvent::PaymentReturned(PaymentReturned {
        refund_id: rejected_refund_id(intent),
        payment_intent_id: intent.to_owned(),
        amount_cents,
        occurred_at: now(),
    })
}

pub fn payment_return_failed(intent: &str, amount_cents: i64) -> OrderEvent {
    OrderEvent::PaymentReturnFailed(PaymentReturnFailed {
        refund_id: rejected_refund_id(intent),
        payment_intent_id: intent.to_owned(),
        amount_cents,
        reason: "provider declined".to_owned(),
        occurred_at: now(),
    })
}

pub fn dispute_opened(dispute_id: &str) -> OrderEvent {
    OrderEvent::DisputeOpened(DisputeOpened {
        dispute_id: dispute_id.to_owned(),
        amount_cents: Some(TOTAL),
        reason: Some("fraudulent".to_owned()),
        occurred_at: now(),
    })
}

/// `DisputeOpened` for a dispute first heard of through its update or close.
pub fn dispute_opened_unseen(dispute_id: &str) -> OrderEvent {
    OrderEvent::DisputeOpened(DisputeOpened {
        dispute_id: dispute_id.to_owned(),
        amount_cents: None,
        reason: None,
        occurred_at: now(),
    })
}

pub fn dispute_updated(dispute_id: &str, status: &str) -> OrderEvent {
    OrderEvent::DisputeUpdated(DisputeUpdated {
        dispute_id: dispute_id.to_owned(),
        status: status.to_owned(),
        occurred_at: now(),
    })
}

pub fn dispute_closed(
    dispute_id: &str,
    outcome: DisputeOutcome,
    refunds_locked: bool,
) -> OrderEvent {
    OrderEvent::DisputeClosed(DisputeClosed {
        dispute_id: dispute_id.to_owned(),
        outcome,
        refunds_locked,
        occurred_at: now(),
    })
}

pub fn tickets_issued(tickets: &[IssuedTicket]) -> OrderEvent {
    OrderEvent::TicketsIssued(TicketsIssued {
        tickets: tickets.to_vec(),
        ticket_count: u32::try_from(tickets.len()).unwrap(),
        occurred_at: now(),
    })
}

pub fn reminder_sent(expires_at: DateTime<Utc>) -> OrderEvent {
    OrderEvent::ReminderSent(ReminderSent {
        expires_at,
        occurred_at: now(),
    })
}

pub fn event_reminder_sent() -> OrderEvent {
    OrderEvent::EventReminderSent(EventReminderSent {
        event_starts_at: Some(event_starts_at()),
        occurred_at: now(),
    })
}

pub fn archived(final_status: OrderStatus) -> OrderEvent {
    OrderEvent::OrderArchived(OrderArchived {
        final_status,
        occurred_at: now(),
    })
}

// ---------------------------------------------------------------- histories

pub fn pending() -> Vec<OrderEvent> {
    vec![created()]
}

pub fn reserved_order() -> Vec<OrderEvent> {
    vec![created(), reserved()]
}

pub fn paid() -> Vec<OrderEvent> {
    vec![created(), confirmed()]
}

pub fn cancelled_order() -> Vec<OrderEvent> {
    vec![created(), cancelled(OrderStatus::Pending)]
}

pub fn expired_order() -> Vec<OrderEvent> {
    vec![created(), expired(expires_at(), OrderStatus::Pending)]
}

pub fn failed_order() -> Vec<OrderEvent> {
    vec![created(), failed()]
}

/// Paid, then [`PARTIAL`] refunded through `REFUND_1`.
pub fn partially_refunded() -> Vec<OrderEvent> {
    vec![
        created(),
        confirmed(),
        refund_requested(REFUND_1, PARTIAL),
        refunded(REFUND_1, PARTIAL, PARTIAL, false),
    ]
}

/// Paid, then refunded in full through `REFUND_1`.
pub fn refunded_order() -> Vec<OrderEvent> {
    vec![
        created(),
        confirmed(),
        refund_requested(REFUND_1, TOTAL),
        refunded(REFUND_1, TOTAL, TOTAL, true),
    ]
}

/// A history that brings the canonical order to `status`.
pub fn history(status: OrderStatus) -> Vec<OrderEvent> {
    match status {
        OrderStatus::Pending => pending(),
        OrderStatus::Reserved => reserved_order(),
        OrderStatus::Paid => paid(),
        OrderStatus::Cancelled => cancelled_order(),
        OrderStatus::Expired => expired_order(),
        OrderStatus::Refunded => refunded_order(),
        OrderStatus::PartiallyRefunded => partially_refunded(),
        OrderStatus::Failed => failed_order(),
    }
}

/// `history` followed by `more`.
pub fn with(mut history: Vec<OrderEvent>, more: &[OrderEvent]) -> Vec<OrderEvent> {
    history.extend_from_slice(more);
    history
}

/// A history that reaches `status` (which must not be open) and then archives the order.
pub fn archived_history(status: OrderStatus) -> Vec<OrderEvent> {
    let mut h = history(status);
    h.push(archived(status));
    h
}

/// The order rebuilt from `history`.
pub fn replay(history: &[OrderEvent]) -> Order {
    let mut order = Order::default();
    for e in history {
        order.apply(e);
    }
    order
}

/// The expiry in force for an open status.
pub fn expiry_in(status: OrderStatus) -> DateTime<Utc> {
    if status == OrderStatus::Reserved {
        reserved_until()
    } else {
        expires_at()
    }
}

pub fn invalid(action: &'static str, status: OrderStatus) -> OrderError {
    OrderError::InvalidTransition { action, status }
}

/// What one command is expected to do in one situation.
pub type Outcome = Result<Vec<OrderEvent>, OrderError>;

/// The ten situations of the status matrix: every status, archived, and not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Situation {
    Status(OrderStatus),
    /// Reached the status, then archived.
    Archived(OrderStatus),
    NotCreated,
}

impl Situation {
    pub fn history(self) -> Vec<OrderEvent> {
        match self {
            Self::Status(s) => history(s),
            Self::Archived(s) => archived_history(s),
            Self::NotCreated => vec![],
        }
    }
}

/// Every status, then an archived paid order, an archived cancelled order, and no order at all.
pub fn all_situations() -> Vec<Situation> {
    let mut all: Vec<Situation> = OrderStatus::ALL
        .into_iter()
        .map(Situation::Status)
        .collect();
    all.push(Situation::Archived(OrderStatus::Paid));
    all.push(Situation::Archived(OrderStatus::Cancelled));
    all.push(Situation::NotCreated);
    all
}

/// Decides `command` in every situation and compares with `expected(situation)`, reporting every
/// mismatch at once so that one failing cell names its situation.
#[track_caller]
pub fn assert_matrix(command: &OrderCommand, expected: impl Fn(Situation) -> Outcome) {
    let mut mismatches = Vec::new();
    for situation in all_situations() {
        let order = replay(&situation.history());
        let got = order.decide(command.clone());
        let want = expected(situation);
        if got != want {
            mismatches.push(format!(
                "{situation:?}:\n    expected {want:?}\n    got      {got:?}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} situations differ for {command:?}:\n{}",
        mismatches.len(),
        all_situations().len(),
        mismatches.join("\n")
    );
}
