//! The Order aggregate: its state, [`Order::decide`] and [`Order::apply`].
//!
//! `decide` checks a command against the current state and returns the events that record its
//! effect, or the rule it breaks. An empty list means "already done": commands are idempotent by
//! natural key (the payment intent, the dispute id, the refund id, the ticket id), so a retried
//! command changes nothing and is not an error. `apply` folds one event into the state and never
//! fails: an event is a fact, and validation already happened when it was decided.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commands::*;
use crate::errors::OrderError;
use crate::events::*;
use crate::values::{
    Currency, DisputeOutcome, IssuedTicket, LineItem, OrderStatus, PaymentRejection, Refund,
    RefundState, RejectedPayment, MAX_LINE_ITEMS, QUANTITY_RANGE,
};

/// The aggregate type under which orders are stored (`events.aggregate_type`).
pub const ORDER_AGGREGATE_TYPE: &str = "Order";

/// The state of one order, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// `None` until `OrderCreated`; every other command is refused with `NotFound` before it.
    pub id: Option<Uuid>,
    pub order_number: String,
    pub tenant_id: String,
    pub user_id: String,
    pub event_id: Option<Uuid>,
    pub status: OrderStatus,
    pub currency: Option<Currency>,
    pub items: Vec<LineItem>,
    pub subtotal_cents: i64,
    pub fees_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub payment_intent_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub event_starts_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded_cents: i64,
    pub refunds: Vec<Refund>,
    /// Open disputes by id, with their last known status.
    pub open_disputes: BTreeMap<String, String>,
    /// Every dispute id ever opened, so a redelivered close is recognised.
    pub dispute_history: Vec<String>,
    /// Set by a lost dispute: the money already went back through the card network.
    pub lost_dispute: bool,
    pub tickets: Vec<IssuedTicket>,
    pub failed_payment_intents: BTreeSet<String>,
    /// Captured payments the order could not accept, each with the refund that returns it.
    #[serde(default)]
    pub rejected_payments: Vec<RejectedPayment>,
    pub reminder_sent: bool,
    pub event_reminder_sent: bool,
    pub archived: bool,
    /// Number of events applied; the optimistic-lock version callers see.
    pub version: u64,
}

type Decision = Result<Vec<OrderEvent>, OrderError>;

impl Order {
    /// Refunds are locked by any open dispute, and for good by a lost one.
    pub fn refunds_locked(&self) -> bool {
        self.lost_dispute || !self.open_disputes.is_empty()
    }

    /// Money reserved by refunds that were requested but have not finished.
    pub fn pending_refund_cents(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.state == RefundState::Requested)
            .map(|r| r.amount_cents)
            .sum()
    }

    /// What can still be refunded: paid, minus refunded, minus refunds under way.
    pub fn refundable_cents(&self) -> i64 {
        if !self.status.is_paid() {
            return 0;
        }
        self.total_cents - self.refunded_cents - self.pending_refund_cents()
    }

    /// The refund id under which a rejected payment is returned: a UUID v5 of the order and the
    /// payment intent, so every replica and every redelivery names the same refund and the
    /// provider sees one idempotency key.
    pub fn rejected_payment_refund_id(order_id: Uuid, payment_intent_id: &str) -> Uuid {
        Uuid::new_v5(
            &order_id,
            format!("rejected-payment:{payment_intent_id}").as_bytes(),
        )
    }

    /// What a refund id owes, whether it is a refund of the order or the return of a rejected
    /// payment: the payment intent to refund (`None`: the order's own), the amount and state.
    pub fn owed_refund(&self, refund_id: Uuid) -> Option<OwedRefund<'_>> {
        if let Some(r) = self.refunds.iter().find(|r| r.refund_id == refund_id) {
            return Some(OwedRefund {
                payment_intent_id: self.payment_intent_id.as_deref(),
                currency: self.currency.as_ref().map(Currency::as_str),
                amount_cents: r.amount_cents,
                reason: &r.reason,
                state: r.state,
            });
        }
        self.rejected_payments
            .iter()
            .find(|p| p.refund_id == refund_id)
            .map(|p| OwedRefund {
                payment_intent_id: Some(&p.payment_intent_id),
                // Money goes back in the currency it was taken in.
                currency: p
                    .currency
                    .as_deref()
                    .or(self.currency.as_ref().map(Currency::as_str)),
                amount_cents: p.amount_cents,
                reason: p.reason.code(),
                state: p.state,
            })
    }

    /// Number of tickets issued so far.
    pub fn ticket_count(&self) -> u32 {
        u32::try_from(self.tickets.len()).unwrap_or(u32::MAX)
    }

    /// Whether the order is past its expiry at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Whether `OrderCreated` has been applied.
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// Decides what a command means for this order. Pure: no clock, no I/O.
    ///
    /// # Errors
    /// The [`OrderError`] naming the rule the command breaks.
    pub fn decide(&self, command: OrderCommand) -> Decision {
        if let OrderCommand::CreateOrder(cmd) = command {
            return self.create(cmd);
        }
        if !self.exists() {
            return Err(OrderError::NotFound);
        }
        if self.archived {
            // Archiving again is accepted (as a no-op), and so is money: a payment captured
            // after archiving must still be rejected and returned, and that return finished.
            return match command {
                OrderCommand::ArchiveOrder(_) => Ok(vec![]),
                OrderCommand::SettlePayment(c) => self.settle_payment(c),
                OrderCommand::CompleteRefund(c) if self.rejected_payment(c.refund_id).is_some() => {
                    self.complete_refund(&c)
                }
                OrderCommand::FailRefund(c) if self.rejected_payment(c.refund_id).is_some() => {
                    self.fail_refund(c)
                }
                _ => Err(OrderError::Archived),
            };
        }
        match command {
            OrderCommand::CreateOrder(_) => unreachable!("handled above"),
            OrderCommand::ReserveOrder(c) => self.reserve(&c),
            OrderCommand::ConfirmOrder(c) => self.confirm(c),
            OrderCommand::SettlePayment(c) => self.settle_payment(c),
            OrderCommand::CancelOrder(c) => self.cancel(c),
            OrderCommand::ExpireOrder(c) => self.expire(&c),
            OrderCommand::FailOrder(c) => self.fail(c),
            OrderCommand::RecordPaymentFailure(c) => self.record_payment_failure(c),
            OrderCommand::RequestRefund(c) => self.request_refund(c),
            OrderCommand::CompleteRefund(c) => self.complete_refund(&c),
            OrderCommand::FailRefund(c) => self.fail_refund(c),
            OrderCommand::OpenDispute(c) => self.open_dispute(c),
            OrderCommand::UpdateDispute(c) => self.update_dispute(c),
            OrderCommand::CloseDispute(c) => self.close_dispute(c),
            OrderCommand::RecordTickets(c) => self.record_tickets(c),
            OrderCommand::SendReminder(c) => self.send_reminder(&c),
            OrderCommand::SendEventReminder(c) => self.send_event_reminder(&c),
            OrderCommand::ArchiveOrder(c) => self.archive(&c),
        }
    }

    fn create(&self, c: CreateOrder) -> Decision {
        if self.exists() {
            return Err(OrderError::AlreadyExists);
        }
        if c.items.is_empty() {
            return Err(OrderError::NoItems);
        }
        if c.items.len() > MAX_LINE_ITEMS {
            return Err(OrderError::TooManyItems {
                max: MAX_LINE_ITEMS,
                got: c.items.len(),
            });
        }
        if c.tenant_id.trim().is_empty() {
            return Err(OrderError::Empty("tenantId"));
        }
        if c.user_id.trim().is_empty() {
            return Err(OrderError::Empty("userId"));
        }
        non_negative("feesCents", c.fees_cents)?;
        non_negative("taxCents", c.tax_cents)?;
        if c.expires_at <= c.now {
            return Err(OrderError::ExpiryInPast);
        }
        let mut seen = BTreeSet::new();
        let mut subtotal: i64 = 0;
        let mut items = Vec::with_capacity(c.items.len());
        for item in c.items {
            if !QUANTITY_RANGE.contains(&item.quantity) {
                return Err(OrderError::QuantityOutOfRange(item.quantity));
            }
            non_negative("unitPriceCents", item.unit_price_cents)?;
            if !seen.insert(item.id) {
                return Err(OrderError::DuplicateItemId);
            }
            let line = LineItem {
                id: item.id,
                ticket_type_id: item.ticket_type_id,
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            };
            let line_total = line.line_total_cents().ok_or(OrderError::AmountOverflow)?;
            subtotal = subtotal
                .checked_add(line_total)
                .ok_or(OrderError::AmountOverflow)?;
            items.push(line);
        }
        let total = subtotal
            .checked_add(c.fees_cents)
            .and_then(|t| t.checked_add(c.tax_cents))
            .ok_or(OrderError::AmountOverflow)?;
        Ok(vec![OrderEvent::OrderCreated(OrderCreated {
            order_id: c.order_id,
            order_number: c.order_number,
            tenant_id: c.tenant_id,
            user_id: c.user_id,
            event_id: c.event_id,
            currency: c.currency,
            items,
            subtotal_cents: subtotal,
            fees_cents: c.fees_cents,
            tax_cents: c.tax_cents,
            total_cents: total,
            expires_at: c.expires_at,
            event_starts_at: c.event_starts_at,
            created_at: c.now,
        })])
    }

    fn reserve(&self, c: &ReserveOrder) -> Decision {
        match self.status {
            OrderStatus::Reserved => Ok(vec![]),
            OrderStatus::Pending => {
                if self.is_expired_at(c.now) {
                    return Err(OrderError::Expired("reserved"));
                }
                if c.expires_at <= c.now {
                    return Err(OrderError::ExpiryInPast);
                }
                Ok(vec![OrderEvent::OrderReserved(OrderReserved {
                    expires_at: c.expires_at,
                    occurred_at: c.now,
                })])
            }
            status => Err(OrderError::InvalidTransition {
                action: "reserve",
                status,
            }),
        }
    }

    fn confirm(&self, c: ConfirmOrder) -> Decision {
        if self.status.is_paid() {
            // Natural key: the same payment intent confirming again is a retry, not an error.
            return if self.payment_intent_id.as_deref() == Some(c.payment_intent_id.as_str()) {
                Ok(vec![])
            } else {
                Err(OrderError::PaidWithOtherIntent)
            };
        }
        if !self.status.is_open() {
            return Err(OrderError::InvalidTransition {
                action: "confirm",
                status: self.status,
            });
        }
        if c.payment_intent_id.trim().is_empty() {
            return Err(OrderError::Empty("paymentIntentId"));
        }
        if self
            .rejected_payments
            .iter()
            .any(|p| p.payment_intent_id == c.payment_intent_id)
        {
            // Its money is on its way back to the buyer; it cannot pay the order as well.
            return Err(OrderError::IntentRejected(c.payment_intent_id));
        }
        if let Some(expected) = c.expected_version {
            if expected != self.version {
                return Err(OrderError::VersionMismatch {
                    expected,
                    actual: self.version,
                });
            }
        }
        if self.is_expired_at(c.now) {
            return Err(OrderError::Expired("confirmed"));
        }
        if c.amount_cents != self.total_cents {
            return Err(OrderError::AmountMismatch {
                expected: self.total_cents,
                actual: c.amount_cents,
            });
        }
        Ok(vec![OrderEvent::OrderConfirmed(OrderConfirmed {
            payment_intent_id: c.payment_intent_id,
            amount_cents: c.amount_cents,
            occurred_at: c.now,
        })])
    }

    fn settle_payment(&self, c: SettlePayment) -> Decision {
        let intent = c.payment_intent_id.as_str();
        if self.status.is_paid() && self.payment_intent_id.as_deref() == Some(intent) {
            return Ok(vec![]);
        }
        if self
            .rejected_payments
            .iter()
            .any(|p| p.payment_intent_id == intent)
        {
            return Ok(vec![]);
        }
        if intent.trim().is_empty() {
            return Err(OrderError::Empty("paymentIntentId"));
        }
        non_negative("amountCents", c.amount_cents)?;
        if c.amount_cents == 0 {
            // Nothing was taken, so there is nothing to confirm with or to give back.
            return Err(OrderError::ZeroAmount);
        }
        let currency_matches = match (&c.currency, &self.currency) {
            (Some(paid), Some(owed)) => paid.eq_ignore_ascii_case(owed.as_str()),
            _ => true,
        };
        let rejection = match self.status {
            s if s.is_paid() => PaymentRejection::AlreadyPaid,
            OrderStatus::Expired => PaymentRejection::OrderExpired,
            OrderStatus::Cancelled => PaymentRejection::OrderCancelled,
            s if !s.is_open() => PaymentRejection::OrderClosed,
            _ if self.is_expired_at(c.now) => PaymentRejection::OrderExpired,
            _ if c.amount_cents != self.total_cents => PaymentRejection::AmountMismatch,
            _ if !currency_matches => PaymentRejection::CurrencyMismatch,
            _ => {
                return Ok(vec![OrderEvent::OrderConfirmed(OrderConfirmed {
                    payment_intent_id: c.payment_intent_id,
                    amount_cents: c.amount_cents,
                    occurred_at: c.now,
                })])
            }
        };
        let order_id = self.id.unwrap_or_default();
        Ok(vec![OrderEvent::PaymentRejected(PaymentRejected {
            refund_id: Self::rejected_payment_refund_id(order_id, intent),
            payment_intent_id: c.payment_intent_id,
            amount_cents: c.amount_cents,
            currency: c.currency,
            reason: rejection,
            occurred_at: c.now,
        })])
    }

    fn cancel(&self, c: CancelOrder) -> Decision {
        match self.status {
            OrderStatus::Cancelled => Ok(vec![]),
            status if status.is_open() => Ok(vec![OrderEvent::OrderCancelled(OrderCancelled {
                reason: c.reason,
                previous_status: status,
                occurred_at: c.now,
            })]),
            status => Err(OrderError::InvalidTransition {
                action: "cancel",
                status,
            }),
        }
    }

    fn expire(&self, c: &ExpireOrder) -> Decision {
        match self.status {
            OrderStatus::Expired => Ok(vec![]),
            status if status.is_open() => {
                let Some(expires_at) = self.expires_at.filter(|at| c.now >= *at) else {
                    return Err(OrderError::NotYetExpired);
                };
                Ok(vec![OrderEvent::OrderExpired(OrderExpired {
                    expired_at: expires_at,
                    previous_status: status,
                    occurred_at: c.now,
                })])
            }
            status => Err(OrderError::InvalidTransition {
                action: "expire",
                status,
            }),
        }
    }

    fn fail(&self, c: FailOrder) -> Decision {
        match self.status {
            OrderStatus::Failed => Ok(vec![]),
            status if status.is_open() => Ok(vec![OrderEvent::OrderFailed(OrderFailed {
                reason: c.reason,
                occurred_at: c.now,
            })]),
            status => Err(OrderError::InvalidTransition {
                action: "fail",
                status,
            }),
        }
    }

    fn record_payment_failure(&self, c: RecordPaymentFailure) -> Decision {
        if self.failed_payment_intents.contains(&c.payment_intent_id) {
            return Ok(vec![]);
        }
        if !self.status.is_open() {
            // Moot: the order is settled (paid, or closed for good), so a failed attempt,
            // typically a webhook retry of an older intent, changes nothing about it.
            return Ok(vec![]);
        }
        Ok(vec![OrderEvent::PaymentFailed(PaymentFailed {
            payment_intent_id: c.payment_intent_id,
            reason: c.reason,
            occurred_at: c.now,
        })])
    }

    fn request_refund(&self, c: RequestRefund) -> Decision {
        if self.refunds.iter().any(|r| r.refund_id == c.refund_id) {
            return Ok(vec![]);
        }
        if !matches!(
            self.status,
            OrderStatus::Paid | OrderStatus::PartiallyRefunded
        ) {
            return Err(OrderError::InvalidTransition {
                action: "refund",
                status: self.status,
            });
        }
        if self.refunds_locked() {
            return Err(OrderError::RefundsLocked);
        }
        let remaining = self.refundable_cents();
        if remaining <= 0 {
            return Err(OrderError::NothingToRefund);
        }
        let amount = c.amount_cents.unwrap_or(remaining);
        if amount < 0 {
            return Err(OrderError::NegativeAmount {
                field: "amountCents",
                value: amount,
            });
        }
        if amount == 0 {
            return Err(OrderError::ZeroAmount);
        }
        if amount > remaining {
            return Err(OrderError::RefundExceedsRemaining {
                requested: amount,
                remaining,
            });
        }
        if let Some(refusal) = c.facts.refusals.into_iter().next() {
            return Err(OrderError::RefundNotEligible(refusal));
        }
        Ok(vec![OrderEvent::RefundRequested(RefundRequested {
            refund_id: c.refund_id,
            amount_cents: amount,
            reason: c.reason,
            occurred_at: c.now,
        })])
    }

    fn complete_refund(&self, c: &CompleteRefund) -> Decision {
        if let Some(p) = self.rejected_payment(c.refund_id) {
            return match p.state {
                RefundState::Completed => Ok(vec![]),
                RefundState::Failed => Err(OrderError::RefundAlreadyFinished(c.refund_id)),
                RefundState::Requested => Ok(vec![OrderEvent::PaymentReturned(PaymentReturned {
                    refund_id: c.refund_id,
                    payment_intent_id: p.payment_intent_id.clone(),
                    amount_cents: p.amount_cents,
                    occurred_at: c.now,
                })]),
            };
        }
        let refund = self.refund(c.refund_id)?;
        match refund.state {
            RefundState::Completed => Ok(vec![]),
            RefundState::Failed => Err(OrderError::RefundAlreadyFinished(c.refund_id)),
            RefundState::Requested => {
                let refunded_total = self.refunded_cents + refund.amount_cents;
                Ok(vec![OrderEvent::OrderRefunded(OrderRefunded {
                    refund_id: c.refund_id,
                    amount_cents: refund.amount_cents,
                    refunded_total_cents: refunded_total,
                    full: refunded_total >= self.total_cents,
                    occurred_at: c.now,
                })])
            }
        }
    }

    fn fail_refund(&self, c: FailRefund) -> Decision {
        if let Some(p) = self.rejected_payment(c.refund_id) {
            return match p.state {
                RefundState::Failed => Ok(vec![]),
                RefundState::Completed => Err(OrderError::RefundAlreadyFinished(c.refund_id)),
                RefundState::Requested => {
                    Ok(vec![OrderEvent::PaymentReturnFailed(PaymentReturnFailed {
                        refund_id: c.refund_id,
                        payment_intent_id: p.payment_intent_id.clone(),
                        amount_cents: p.amount_cents,
                        reason: c.reason,
                        occurred_at: c.now,
                    })])
                }
            };
        }
        match self.refund(c.refund_id)?.state {
            RefundState::Failed => Ok(vec![]),
            RefundState::Completed => Err(OrderError::RefundAlreadyFinished(c.refund_id)),
            RefundState::Requested => Ok(vec![OrderEvent::RefundFailed(RefundFailed {
                refund_id: c.refund_id,
                reason: c.reason,
                occurred_at: c.now,
            })]),
        }
    }

    fn rejected_payment(&self, refund_id: Uuid) -> Option<&RejectedPayment> {
        self.rejected_payments
            .iter()
            .find(|p| p.refund_id == refund_id)
    }

    fn refund(&self, refund_id: Uuid) -> Result<&Refund, OrderError> {
        self.refunds
            .iter()
            .find(|r| r.refund_id == refund_id)
            .ok_or(OrderError::UnknownRefund(refund_id))
    }

    fn open_dispute(&self, c: OpenDispute) -> Decision {
        // Natural key: a dispute id already seen (open or closed) is a redelivery.
        if self.dispute_history.contains(&c.dispute_id) {
            return Ok(vec![]);
        }
        if c.dispute_id.trim().is_empty() {
            return Err(OrderError::Empty("disputeId"));
        }
        // Any status: the provider's word that money is being pulled back is a fact even when
        // this order has not heard of the payment yet (the payment and dispute consumers run
        // independently) or rejected it. Refusing it would leave refunds unlocked.
        Ok(vec![OrderEvent::DisputeOpened(DisputeOpened {
            dispute_id: c.dispute_id,
            amount_cents: c.amount_cents,
            reason: c.reason,
            occurred_at: c.now,
        })])
    }

    fn update_dispute(&self, c: UpdateDispute) -> Decision {
        match self.open_disputes.get(&c.dispute_id) {
            // The provider's updates can arrive after its close: the close already decided.
            None if self.closed_disputes().any(|d| d == c.dispute_id) => Ok(vec![]),
            // An update that overtook its dispute's creation: the dispute exists, so it is
            // opened here (refunds lock at once) and the late creation is a redelivery.
            None => {
                let mut events = self.open_unseen_dispute(&c.dispute_id, c.now)?;
                if c.status != "open" {
                    events.push(OrderEvent::DisputeUpdated(DisputeUpdated {
                        dispute_id: c.dispute_id,
                        status: c.status,
                        occurred_at: c.now,
                    }));
                }
                Ok(events)
            }
            Some(status) if *status == c.status => Ok(vec![]),
            Some(_) => Ok(vec![OrderEvent::DisputeUpdated(DisputeUpdated {
                dispute_id: c.dispute_id,
                status: c.status,
                occurred_at: c.now,
            })]),
        }
    }

    fn close_dispute(&self, c: CloseDispute) -> Decision {
        let mut events = Vec::new();
        let mut others_open = self.open_disputes.len();
        if self.open_disputes.contains_key(&c.dispute_id) {
            others_open -= 1;
        } else if self.closed_disputes().any(|d| d == c.dispute_id) {
            // A close for a dispute this order already closed is a redelivery.
            return Ok(vec![]);
        } else {
            // A close that overtook its dispute's creation: record both, so the late creation
            // is a redelivery and cannot lock refunds again.
            events = self.open_unseen_dispute(&c.dispute_id, c.now)?;
        }
        let lost = self.lost_dispute || c.outcome == DisputeOutcome::Lost;
        events.push(OrderEvent::DisputeClosed(DisputeClosed {
            dispute_id: c.dispute_id,
            outcome: c.outcome,
            refunds_locked: others_open > 0 || lost,
            occurred_at: c.now,
        }));
        Ok(events)
    }

    /// `DisputeOpened` for a dispute first heard of through a later message of its own.
    fn open_unseen_dispute(&self, dispute_id: &str, now: DateTime<Utc>) -> Decision {
        self.open_dispute(OpenDispute {
            dispute_id: dispute_id.to_owned(),
            amount_cents: None,
            reason: None,
            now,
        })
    }

    /// Disputes seen on this order that are no longer open.
    fn closed_disputes(&self) -> impl Iterator<Item = &str> {
        self.dispute_history
            .iter()
            .map(String::as_str)
            .filter(|d| !self.open_disputes.contains_key(*d))
    }

    fn record_tickets(&self, c: RecordTickets) -> Decision {
        if !self.status.is_paid() {
            return Err(OrderError::InvalidTransition {
                action: "record tickets on",
                status: self.status,
            });
        }
        let mut new = Vec::new();
        let mut per_item: BTreeMap<Uuid, u32> = BTreeMap::new();
        for t in &self.tickets {
            *per_item.entry(t.item_id).or_default() += 1;
        }
        for ticket in c.tickets {
            if ticket.ticket_id.trim().is_empty() {
                return Err(OrderError::Empty("ticketId"));
            }
            let item = self
                .items
                .iter()
                .find(|i| i.id == ticket.item_id)
                .ok_or(OrderError::UnknownItem(ticket.item_id))?;
            if let Some(existing) = self
                .tickets
                .iter()
                .chain(new.iter())
                .find(|t| t.ticket_id == ticket.ticket_id)
            {
                if existing.item_id == ticket.item_id {
                    continue; // already recorded: a redelivery
                }
                return Err(OrderError::TicketOnOtherItem(ticket.ticket_id));
            }
            let count = per_item.entry(item.id).or_default();
            if *count >= item.quantity {
                return Err(OrderError::TooManyTickets {
                    item_id: item.id,
                    quantity: item.quantity,
                });
            }
            *count += 1;
            new.push(ticket);
        }
        if new.is_empty() {
            return Ok(vec![]);
        }
        let ticket_count = u32::try_from(new.len()).unwrap_or(u32::MAX);
        Ok(vec![OrderEvent::TicketsIssued(TicketsIssued {
            tickets: new,
            ticket_count,
            occurred_at: c.now,
        })])
    }

    fn send_reminder(&self, c: &SendReminder) -> Decision {
        if self.reminder_sent {
            return Ok(vec![]);
        }
        if !self.status.is_open() {
            return Err(OrderError::InvalidTransition {
                action: "remind about",
                status: self.status,
            });
        }
        let Some(expires_at) = self.expires_at.filter(|at| c.now < *at) else {
            return Err(OrderError::Expired("reminded about"));
        };
        Ok(vec![OrderEvent::ReminderSent(ReminderSent {
            expires_at,
            occurred_at: c.now,
        })])
    }

    fn send_event_reminder(&self, c: &SendEventReminder) -> Decision {
        if self.event_reminder_sent {
            return Ok(vec![]);
        }
        if self.status != OrderStatus::Paid && self.status != OrderStatus::PartiallyRefunded {
            return Err(OrderError::InvalidTransition {
                action: "send an event reminder for",
                status: self.status,
            });
        }
        Ok(vec![OrderEvent::EventReminderSent(EventReminderSent {
            event_starts_at: self.event_starts_at,
            occurred_at: c.now,
        })])
    }

    fn archive(&self, c: &ArchiveOrder) -> Decision {
        // Paid orders are finished business too once the event is over; the archiving job
        // decides age, the aggregate only refuses orders that may still change.
        if self.status.is_open() {
            return Err(OrderError::InvalidTransition {
                action: "archive",
                status: self.status,
            });
        }
        // A refund under way or an open dispute will still be completed or closed, and an
        // archived order refuses those commands: archiving now would lose their outcome.
        if self
            .refunds
            .iter()
            .any(|r| r.state == RefundState::Requested)
        {
            return Err(OrderError::InvalidTransition {
                action: "archive, while a refund is under way,",
                status: self.status,
            });
        }
        if self
            .rejected_payments
            .iter()
            .any(|p| p.state == RefundState::Requested)
        {
            return Err(OrderError::InvalidTransition {
                action: "archive, while a rejected payment is being returned,",
                status: self.status,
            });
        }
        if !self.open_disputes.is_empty() {
            return Err(OrderError::InvalidTransition {
                action: "archive, while a dispute is open,",
                status: self.status,
            });
        }
        Ok(vec![OrderEvent::OrderArchived(OrderArchived {
            final_status: self.status,
            occurred_at: c.now,
        })])
    }

    /// Folds one event into the state. Never fails: events are facts.
    pub fn apply(&mut self, event: &OrderEvent) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            OrderEvent::OrderCreated(e) => {
                self.id = Some(e.order_id);
                self.order_number.clone_from(&e.order_number);
                self.tenant_id.clone_from(&e.tenant_id);
                self.user_id.clone_from(&e.user_id);
                self.event_id = Some(e.event_id);
                self.status = OrderStatus::Pending;
                self.currency = Some(e.currency.clone());
                self.items.clone_from(&e.items);
                self.subtotal_cents = e.subtotal_cents;
                self.fees_cents = e.fees_cents;
                self.tax_cents = e.tax_cents;
                self.total_cents = e.total_cents;
                self.expires_at = Some(e.expires_at);
                self.event_starts_at = e.event_starts_at;
                self.created_at = Some(e.created_at);
            }
            OrderEvent::OrderReserved(e) => {
                self.status = OrderStatus::Reserved;
                self.expires_at = Some(e.expires_at);
            }
            OrderEvent::OrderConfirmed(e) => {
                self.status = OrderStatus::Paid;
                self.payment_intent_id = Some(e.payment_intent_id.clone());
                self.paid_at = Some(e.occurred_at);
            }
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
            OrderEvent::OrderExpired(_) => self.status = OrderStatus::Expired,
            OrderEvent::OrderFailed(_) => self.status = OrderStatus::Failed,
            OrderEvent::PaymentFailed(e) => {
                self.failed_payment_intents
                    .insert(e.payment_intent_id.clone());
            }
            OrderEvent::RefundRequested(e) => self.refunds.push(Refund {
                refund_id: e.refund_id,
                amount_cents: e.amount_cents,
                reason: e.reason.clone(),
                state: RefundState::Requested,
                requested_at: e.occurred_at,
            }),
            OrderEvent::OrderRefunded(e) => {
                self.set_refund_state(e.refund_id, RefundState::Completed);
                self.refunded_cents = e.refunded_total_cents;
                self.status = if e.full {
                    OrderStatus::Refunded
                } else {
                    OrderStatus::PartiallyRefunded
                };
            }
            OrderEvent::RefundFailed(e) => self.set_refund_state(e.refund_id, RefundState::Failed),
            OrderEvent::PaymentRejected(e) => self.rejected_payments.push(RejectedPayment {
                refund_id: e.refund_id,
                payment_intent_id: e.payment_intent_id.clone(),
                amount_cents: e.amount_cents,
                currency: e.currency.clone(),
                reason: e.reason,
                state: RefundState::Requested,
            }),
            OrderEvent::PaymentReturned(e) => {
                self.set_refund_state(e.refund_id, RefundState::Completed);
            }
            OrderEvent::PaymentReturnFailed(e) => {
                self.set_refund_state(e.refund_id, RefundState::Failed);
            }
            OrderEvent::DisputeOpened(e) => {
                self.open_disputes
                    .insert(e.dispute_id.clone(), "open".to_owned());
                if !self.dispute_history.contains(&e.dispute_id) {
                    self.dispute_history.push(e.dispute_id.clone());
                }
            }
            OrderEvent::DisputeUpdated(e) => {
                self.open_disputes
                    .insert(e.dispute_id.clone(), e.status.clone());
            }
            OrderEvent::DisputeClosed(e) => {
                self.open_disputes.remove(&e.dispute_id);
                if e.outcome == DisputeOutcome::Lost {
                    self.lost_dispute = true;
                }
            }
            OrderEvent::TicketsIssued(e) => self.tickets.extend(e.tickets.iter().cloned()),
            OrderEvent::ReminderSent(_) => self.reminder_sent = true,
            OrderEvent::EventReminderSent(_) => self.event_reminder_sent = true,
            OrderEvent::OrderArchived(_) => self.archived = true,
        }
    }

    fn set_refund_state(&mut self, refund_id: Uuid, state: RefundState) {
        if let Some(r) = self.refunds.iter_mut().find(|r| r.refund_id == refund_id) {
            r.state = state;
        } else if let Some(p) = self
            .rejected_payments
            .iter_mut()
            .find(|p| p.refund_id == refund_id)
        {
            p.state = state;
        }
    }
}

fn non_negative(field: &'static str, value: i64) -> Result<(), OrderError> {
    if value < 0 {
        Err(OrderError::NegativeAmount { field, value })
    } else {
        Ok(())
    }
}

/// A refund the order owes, seen the same way whether it refunds the order or returns a
/// rejected payment (see [`Order::owed_refund`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwedRefund<'a> {
    /// The payment intent the money goes back to.
    pub payment_intent_id: Option<&'a str>,
    /// ISO 4217 code of the money to give back.
    pub currency: Option<&'a str>,
    pub amount_cents: i64,
    pub reason: &'a str,
    pub state: RefundState,
}
