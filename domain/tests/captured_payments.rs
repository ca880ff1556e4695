//! A payment the provider captured (`payment.succeeded`) settles the order when it can, and is
//! otherwise recorded as rejected with its refund requested: the buyer was charged either way,
//! so the money must go back. Idempotent on the payment intent.

mod common;

use common::*;
use order_domain::testing::given;
use order_domain::values::{PaymentRejection, RefundState};
use order_domain::{OrderError, OrderStatus};

#[test]
fn a_payment_for_the_total_confirms_an_open_order() {
    for history in [pending(), reserved_order()] {
        let order = given(history)
            .when(settle_payment(INTENT, TOTAL))
            .then(vec![confirmed()]);
        assert_eq!(order.status, OrderStatus::Paid);
        assert!(order.rejected_payments.is_empty());
    }
}

#[test]
fn the_same_payment_again_changes_nothing() {
    given(paid())
        .when(settle_payment(INTENT, TOTAL))
        .then_nothing();
}

#[test]
fn a_payment_after_the_expiry_is_rejected_and_its_refund_requested() {
    let late = expires_at() + chrono::Duration::minutes(1);
    let order = given(pending())
        .when(settle_payment_at(INTENT, TOTAL, Some("USD"), late))
        .then(vec![payment_rejected_at(
            INTENT,
            TOTAL,
            PaymentRejection::OrderExpired,
            late,
        )]);
    assert_eq!(
        order.status,
        OrderStatus::Pending,
        "the expiry job still expires it"
    );
    let owed = order
        .owed_refund(rejected_refund_id(INTENT))
        .expect("a refund is owed");
    assert_eq!(owed.amount_cents, TOTAL);
    assert_eq!(owed.payment_intent_id, Some(INTENT));
    assert_eq!(owed.state, RefundState::Requested);
}

#[test]
fn a_payment_on_a_closed_order_is_rejected_with_the_reason() {
    let cases = [
        (expired_order(), PaymentRejection::OrderExpired),
        (cancelled_order(), PaymentRejection::OrderCancelled),
        (with(pending(), &[failed()]), PaymentRejection::OrderClosed),
    ];
    for (history, reason) in cases {
        given(history)
            .when(settle_payment(INTENT, TOTAL))
            .then(vec![payment_rejected(INTENT, TOTAL, reason)]);
    }
}

#[test]
fn a_second_intent_on_a_paid_order_is_a_double_charge_and_goes_back() {
    let order = given(paid())
        .when(settle_payment(OTHER_INTENT, TOTAL))
        .then(vec![payment_rejected(
            OTHER_INTENT,
            TOTAL,
            PaymentRejection::AlreadyPaid,
        )]);
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.payment_intent_id.as_deref(), Some(INTENT));
    assert_eq!(
        order.refundable_cents(),
        TOTAL,
        "the returned payment never counts against the order's own refunds"
    );
}

#[test]
fn a_wrong_amount_or_currency_is_rejected_rather_than_left_with_the_money() {
    given(pending())
        .when(settle_payment(INTENT, TOTAL - 1))
        .then(vec![payment_rejected(
            INTENT,
            TOTAL - 1,
            PaymentRejection::AmountMismatch,
        )]);
    let mut rejected = payment_rejected(INTENT, TOTAL, PaymentRejection::CurrencyMismatch);
    if let order_domain::OrderEvent::PaymentRejected(e) = &mut rejected {
        e.currency = Some("EUR".to_owned());
    }
    given(pending())
        .when(settle_payment_at(INTENT, TOTAL, Some("EUR"), now()))
        .then(vec![rejected]);
    // No currency on the message: the amount decides.
    given(pending())
        .when(settle_payment_at(INTENT, TOTAL, None, now()))
        .then(vec![confirmed()]);
}

#[test]
fn a_rejected_payment_seen_again_changes_nothing() {
    given(with(
        cancelled_order(),
        &[payment_rejected(
            INTENT,
            TOTAL,
            PaymentRejection::OrderCancelled,
        )],
    ))
    .when(settle_payment(INTENT, TOTAL))
    .then_nothing();
}

#[test]
fn nothing_taken_is_refused() {
    given(pending())
        .when(settle_payment(INTENT, 0))
        .then_err(OrderError::ZeroAmount);
    given(pending())
        .when(settle_payment(" ", TOTAL))
        .then_err(OrderError::Empty("paymentIntentId"));
}

#[test]
fn the_return_completes_or_fails_through_the_refund_commands() {
    let rejected = with(
        cancelled_order(),
        &[payment_rejected(
            INTENT,
            TOTAL,
            PaymentRejection::OrderCancelled,
        )],
    );
    let order = given(rejected.clone())
        .when(complete_refund(rejected_refund_id(INTENT)))
        .then(vec![payment_returned(INTENT, TOTAL)]);
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.refunded_cents, 0);
    assert_eq!(
        order
            .owed_refund(rejected_refund_id(INTENT))
            .map(|o| o.state),
        Some(RefundState::Completed)
    );
    given(with(rejected.clone(), &[payment_returned(INTENT, TOTAL)]))
        .when(complete_refund(rejected_refund_id(INTENT)))
        .then_nothing();
    let order = given(rejected)
        .when(fail_refund(rejected_refund_id(INTENT)))
        .then(vec![payment_return_failed(INTENT, TOTAL)]);
    assert_eq!(
        order
            .owed_refund(rejected_refund_id(INTENT))
            .map(|o| o.state),
        Some(RefundState::Failed)
    );
}

#[test]
fn an_order_is_not_archived_while_a_rejected_payment_is_being_returned() {
    let rejected = with(
        cancelled_order(),
        &[payment_rejected(
            INTENT,
            TOTAL,
            PaymentRejection::OrderCancelled,
        )],
    );
    given(rejected.clone())
        .when(archive())
        .then_err(OrderError::InvalidTransition {
            action: "archive, while a rejected payment is being returned,",
            status: OrderStatus::Cancelled,
        });
    given(with(rejected, &[payment_returned(INTENT, TOTAL)]))
        .when(archive())
        .then(vec![archived(OrderStatus::Cancelled)]);
}

#[test]
fn an_intent_being_returned_cannot_confirm_the_order_afterwards() {
    given(with(
        pending(),
        &[payment_rejected(
            INTENT,
            TOTAL - 1,
            PaymentRejection::AmountMismatch,
        )],
    ))
    .when(confirm())
    .then_err(OrderError::IntentRejected(INTENT.to_owned()));
}

#[test]
fn a_payment_captured_after_archiving_is_still_rejected_and_returned() {
    let archived_order = with(cancelled_order(), &[archived(OrderStatus::Cancelled)]);
    given(archived_order.clone())
        .when(settle_payment(INTENT, TOTAL))
        .then(vec![payment_rejected(
            INTENT,
            TOTAL,
            PaymentRejection::OrderCancelled,
        )]);
    let rejected = with(
        archived_order,
        &[payment_rejected(
            INTENT,
            TOTAL,
            PaymentRejection::OrderCancelled,
        )],
    );
    given(rejected.clone())
        .when(complete_refund(rejected_refund_id(INTENT)))
        .then(vec![payment_returned(INTENT, TOTAL)]);
    // The order's own refunds stay closed.
    given(rejected)
        .when(complete_refund(REFUND_1))
        .then_err(OrderError::Archived);
}
