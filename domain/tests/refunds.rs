//! Refunds: never more than was paid, counting refunds still under way; idempotent on the refund
//! id; completed refunds move the status, failed ones release what they reserved.

mod common;

use common::*;
use order_domain::commands::RefundFacts;
use order_domain::testing::given;
use order_domain::values::RefundState;
use order_domain::{OrderError, OrderEvent, OrderStatus};
use uuid::Uuid;

// ------------------------------------------------------------------ requesting

#[test]
fn a_refund_without_an_amount_asks_for_everything_paid() {
    let order = given(paid())
        .when(request_refund(REFUND_1, None))
        .then(vec![refund_requested(REFUND_1, TOTAL)]);
    assert_eq!(
        order.status,
        OrderStatus::Paid,
        "status waits for completion"
    );
    assert_eq!(order.pending_refund_cents(), TOTAL);
    assert_eq!(order.refundable_cents(), 0);
    assert_eq!(order.refunded_cents, 0);
    assert_eq!(order.refunds[0].state, RefundState::Requested);
}

#[test]
fn a_refund_without_an_amount_after_a_partial_one_asks_for_the_rest() {
    given(partially_refunded())
        .when(request_refund(REFUND_2, None))
        .then(vec![refund_requested(REFUND_2, TOTAL - PARTIAL)]);
}

#[test]
fn a_partial_refund_reserves_its_amount() {
    let order = given(paid())
        .when(request_refund(REFUND_1, Some(PARTIAL)))
        .then(vec![refund_requested(REFUND_1, PARTIAL)]);
    assert_eq!(order.pending_refund_cents(), PARTIAL);
    assert_eq!(order.refundable_cents(), TOTAL - PARTIAL);
}

#[test]
fn refunding_exactly_what_is_left_is_accepted() {
    given(paid())
        .when(request_refund(REFUND_1, Some(TOTAL)))
        .then(vec![refund_requested(REFUND_1, TOTAL)]);
    given(partially_refunded())
        .when(request_refund(REFUND_2, Some(TOTAL - PARTIAL)))
        .then(vec![refund_requested(REFUND_2, TOTAL - PARTIAL)]);
}

#[test]
fn refunding_more_than_was_paid_is_refused() {
    given(paid())
        .when(request_refund(REFUND_1, Some(TOTAL + 1)))
        .then_err(OrderError::RefundExceedsRemaining {
            requested: TOTAL + 1,
            remaining: TOTAL,
        });
}

#[test]
fn refunding_more_than_is_left_after_a_completed_refund_is_refused() {
    given(partially_refunded())
        .when(request_refund(REFUND_2, Some(TOTAL)))
        .then_err(OrderError::RefundExceedsRemaining {
            requested: TOTAL,
            remaining: TOTAL - PARTIAL,
        });
}

#[test]
fn refunds_still_under_way_count_against_what_is_left() {
    let history = with(paid(), &[refund_requested(REFUND_1, 10_000)]);
    given(history.clone())
        .when(request_refund(REFUND_2, Some(3_001)))
        .then_err(OrderError::RefundExceedsRemaining {
            requested: 3_001,
            remaining: 3_000,
        });
    given(history.clone())
        .when(request_refund(REFUND_2, Some(3_000)))
        .then(vec![refund_requested(REFUND_2, 3_000)]);
    given(history)
        .when(request_refund(REFUND_2, None))
        .then(vec![refund_requested(REFUND_2, 3_000)]);
}

#[test]
fn nothing_is_refundable_once_every_cent_is_reserved_by_refunds_under_way() {
    let history = with(
        paid(),
        &[
            refund_requested(REFUND_1, 10_000),
            refund_requested(REFUND_2, 3_000),
        ],
    );
    for amount in [None, Some(1)] {
        given(history.clone())
            .when(request_refund(REFUND_3, amount))
            .then_err(OrderError::NothingToRefund);
    }
}

#[test]
fn a_zero_refund_is_refused() {
    given(paid())
        .when(request_refund(REFUND_1, Some(0)))
        .then_err(OrderError::ZeroAmount);
}

#[test]
fn a_negative_refund_is_refused() {
    given(paid())
        .when(request_refund(REFUND_1, Some(-1)))
        .then_err(OrderError::NegativeAmount {
            field: "amountCents",
            value: -1,
        });
}

#[test]
fn a_refund_another_service_refused_is_not_eligible() {
    let facts = RefundFacts {
        refusals: vec![
            "ticket tkt_1 was transferred".to_owned(),
            "event already happened".to_owned(),
        ],
    };
    given(paid())
        .when(request_refund_with(REFUND_1, None, facts))
        .then_err(OrderError::RefundNotEligible(
            "ticket tkt_1 was transferred".to_owned(),
        ));
}

#[test]
fn requesting_the_same_refund_id_again_changes_nothing() {
    let history = with(paid(), &[refund_requested(REFUND_1, PARTIAL)]);
    given(history.clone())
        .when(request_refund(REFUND_1, Some(PARTIAL)))
        .then_nothing();
    // The key is the id: a redelivery with other details is still the same refund.
    given(history)
        .when(request_refund(REFUND_1, Some(TOTAL * 10)))
        .then_nothing();
}

#[test]
fn requesting_a_completed_or_failed_refund_id_again_changes_nothing() {
    given(partially_refunded())
        .when(request_refund(REFUND_1, Some(PARTIAL)))
        .then_nothing();
    given(refunded_order())
        .when(request_refund(REFUND_1, None))
        .then_nothing();
    given(with(
        paid(),
        &[refund_requested(REFUND_1, PARTIAL), refund_failed(REFUND_1)],
    ))
    .when(request_refund(REFUND_1, Some(PARTIAL)))
    .then_nothing();
}

#[test]
fn a_fully_refunded_order_refuses_a_new_refund() {
    given(refunded_order())
        .when(request_refund(REFUND_2, Some(1)))
        .then_err(invalid("refund", OrderStatus::Refunded));
}

#[test]
fn an_unpaid_order_refuses_a_refund() {
    for status in [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Cancelled,
    ] {
        given(history(status))
            .when(request_refund(REFUND_1, None))
            .then_err(invalid("refund", status));
    }
}

#[test]
fn many_small_refunds_add_up_to_exactly_what_was_paid() {
    let mut order = replay(&paid());
    let mut requested = 0;
    let mut ids = (1_000u128..).map(Uuid::from_u128);
    loop {
        match order.decide(request_refund(ids.next().unwrap(), Some(1_500))) {
            Ok(events) => {
                for e in &events {
                    order.apply(e);
                }
                requested += 1_500;
            }
            Err(e) => {
                assert_eq!(
                    e,
                    OrderError::RefundExceedsRemaining {
                        requested: 1_500,
                        remaining: 1_000,
                    }
                );
                break;
            }
        }
    }
    assert_eq!(requested, 12_000);
    let rest = order
        .decide(request_refund(ids.next().unwrap(), None))
        .unwrap();
    assert!(matches!(&rest[..], [OrderEvent::RefundRequested(r)] if r.amount_cents == 1_000));
    order.apply(&rest[0]);
    assert_eq!(order.refundable_cents(), 0);
    assert_eq!(
        order.decide(request_refund(ids.next().unwrap(), Some(1))),
        Err(OrderError::NothingToRefund)
    );
    for r in order.refunds.clone() {
        for e in &order.decide(complete_refund(r.refund_id)).unwrap() {
            order.apply(e);
        }
    }
    assert_eq!(order.refunded_cents, TOTAL);
    assert_eq!(order.status, OrderStatus::Refunded);
}

// ------------------------------------------------------------------ completing

#[test]
fn completing_a_full_refund_makes_the_order_refunded() {
    let order = given(with(paid(), &[refund_requested(REFUND_1, TOTAL)]))
        .when(complete_refund(REFUND_1))
        .then(vec![refunded(REFUND_1, TOTAL, TOTAL, true)]);
    assert_eq!(order.status, OrderStatus::Refunded);
    assert_eq!(order.refunded_cents, TOTAL);
    assert_eq!(order.pending_refund_cents(), 0);
    assert_eq!(order.refundable_cents(), 0);
    assert_eq!(order.refunds[0].state, RefundState::Completed);
}

#[test]
fn completing_a_partial_refund_makes_the_order_partially_refunded() {
    let order = given(with(paid(), &[refund_requested(REFUND_1, PARTIAL)]))
        .when(complete_refund(REFUND_1))
        .then(vec![refunded(REFUND_1, PARTIAL, PARTIAL, false)]);
    assert_eq!(order.status, OrderStatus::PartiallyRefunded);
    assert_eq!(order.refunded_cents, PARTIAL);
    assert_eq!(order.refundable_cents(), TOTAL - PARTIAL);
}

#[test]
fn completing_the_rest_after_a_partial_refund_makes_the_order_refunded() {
    let history = with(
        partially_refunded(),
        &[refund_requested(REFUND_2, TOTAL - PARTIAL)],
    );
    let order = given(history)
        .when(complete_refund(REFUND_2))
        .then(vec![refunded(REFUND_2, TOTAL - PARTIAL, TOTAL, true)]);
    assert_eq!(order.status, OrderStatus::Refunded);
    assert_eq!(order.refunded_cents, TOTAL);
}

#[test]
fn refunds_under_way_complete_in_any_order() {
    let history = with(
        paid(),
        &[
            refund_requested(REFUND_1, 5_000),
            refund_requested(REFUND_2, 8_000),
        ],
    );
    let order = given(history.clone())
        .when(complete_refund(REFUND_2))
        .then(vec![refunded(REFUND_2, 8_000, 8_000, false)]);
    assert_eq!(order.status, OrderStatus::PartiallyRefunded);
    assert_eq!(order.pending_refund_cents(), 5_000);
    assert_eq!(order.refundable_cents(), 0);
    let mut history = history;
    history.push(refunded(REFUND_2, 8_000, 8_000, false));
    let order = given(history)
        .when(complete_refund(REFUND_1))
        .then(vec![refunded(REFUND_1, 5_000, TOTAL, true)]);
    assert_eq!(order.status, OrderStatus::Refunded);
}

#[test]
fn completing_a_refund_twice_changes_nothing() {
    given(partially_refunded())
        .when(complete_refund(REFUND_1))
        .then_nothing();
}

#[test]
fn completing_a_failed_refund_is_refused() {
    given(with(
        paid(),
        &[refund_requested(REFUND_1, PARTIAL), refund_failed(REFUND_1)],
    ))
    .when(complete_refund(REFUND_1))
    .then_err(OrderError::RefundAlreadyFinished(REFUND_1));
}

#[test]
fn completing_an_unknown_refund_is_refused() {
    given(with(paid(), &[refund_requested(REFUND_1, PARTIAL)]))
        .when(complete_refund(REFUND_2))
        .then_err(OrderError::UnknownRefund(REFUND_2));
}

#[test]
fn a_refund_already_under_way_still_completes_while_a_dispute_is_open() {
    let history = with(
        paid(),
        &[refund_requested(REFUND_1, PARTIAL), dispute_opened(DISPUTE)],
    );
    given(history)
        .when(complete_refund(REFUND_1))
        .then(vec![refunded(REFUND_1, PARTIAL, PARTIAL, false)]);
}

// ------------------------------------------------------------------ failing

#[test]
fn a_failed_refund_releases_what_it_reserved() {
    let order = given(with(paid(), &[refund_requested(REFUND_1, TOTAL)]))
        .when(fail_refund(REFUND_1))
        .then(vec![refund_failed(REFUND_1)]);
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.pending_refund_cents(), 0);
    assert_eq!(order.refundable_cents(), TOTAL);
    assert_eq!(order.refunds[0].state, RefundState::Failed);
}

#[test]
fn after_a_failed_refund_a_new_one_may_ask_for_the_released_amount() {
    given(with(
        paid(),
        &[refund_requested(REFUND_1, TOTAL), refund_failed(REFUND_1)],
    ))
    .when(request_refund(REFUND_2, None))
    .then(vec![refund_requested(REFUND_2, TOTAL)]);
}

#[test]
fn failing_a_refund_twice_changes_nothing() {
    given(with(
        paid(),
        &[refund_requested(REFUND_1, PARTIAL), refund_failed(REFUND_1)],
    ))
    .when(fail_refund(REFUND_1))
    .then_nothing();
}

#[test]
fn failing_a_completed_refund_is_refused() {
    given(partially_refunded())
        .when(fail_refund(REFUND_1))
        .then_err(OrderError::RefundAlreadyFinished(REFUND_1));
}

#[test]
fn failing_an_unknown_refund_is_refused() {
    given(paid())
        .when(fail_refund(REFUND_2))
        .then_err(OrderError::UnknownRefund(REFUND_2));
}
