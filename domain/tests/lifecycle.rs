//! The unpaid life of an order: creation, reservation, payment, cancellation, expiry, failure,
//! and the version that counts its events.

mod common;

use common::*;
use order_domain::testing::given;
use order_domain::values::{MAX_LINE_ITEMS, QUANTITY_RANGE};
use order_domain::{Currency, OrderError, OrderEvent, OrderStatus};
use uuid::Uuid;

fn created_from(result: Result<Vec<OrderEvent>, OrderError>) -> order_domain::events::OrderCreated {
    match result.expect("creation was refused").as_slice() {
        [OrderEvent::OrderCreated(e)] => e.clone(),
        other => panic!("expected one OrderCreated, got {other:?}"),
    }
}

// ------------------------------------------------------------------ creation

#[test]
fn creating_an_order_records_its_items_and_totals() {
    let order = given(vec![]).when(create()).then(vec![created()]);
    assert!(order.exists());
    assert_eq!(order.id, Some(ORDER_ID));
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.items, line_items());
    assert_eq!(order.subtotal_cents, SUBTOTAL);
    assert_eq!(order.total_cents, TOTAL);
    assert_eq!(order.expires_at, Some(expires_at()));
    assert_eq!(order.created_at, Some(t(0)));
    assert_eq!(
        order.refundable_cents(),
        0,
        "nothing is refundable before payment"
    );
}

#[test]
fn the_total_is_the_sum_of_quantity_times_unit_price_plus_fees_plus_tax() {
    let cmd = create_with(|c| {
        c.items = vec![
            new_item(Uuid::from_u128(1), 3, 1_999),
            new_item(Uuid::from_u128(2), 7, 1),
            new_item(Uuid::from_u128(3), 1, 0),
        ];
        c.fees_cents = 99;
        c.tax_cents = 1_234;
    });
    let e = created_from(given(vec![]).when(cmd).result());
    assert_eq!(e.subtotal_cents, 3 * 1_999 + 7);
    assert_eq!(e.fees_cents, 99);
    assert_eq!(e.tax_cents, 1_234);
    assert_eq!(e.total_cents, 3 * 1_999 + 7 + 99 + 1_234);
}

#[test]
fn an_order_of_free_tickets_costs_only_its_fees_and_tax() {
    let cmd = create_with(|c| c.items = vec![new_item(ITEM_A, 4, 0)]);
    let e = created_from(given(vec![]).when(cmd).result());
    assert_eq!(e.subtotal_cents, 0);
    assert_eq!(e.total_cents, FEES + TAX);
}

#[test]
fn quantities_of_one_and_fifty_are_accepted() {
    assert_eq!(QUANTITY_RANGE, 1..=50);
    for quantity in [1, 50] {
        let cmd = create_with(|c| c.items = vec![new_item(ITEM_A, quantity, 100)]);
        let e = created_from(given(vec![]).when(cmd).result());
        assert_eq!(e.items[0].quantity, quantity);
        assert_eq!(e.subtotal_cents, i64::from(quantity) * 100);
    }
}

#[test]
fn quantities_of_zero_and_fifty_one_are_refused() {
    for quantity in [0, 51, u32::MAX] {
        given(vec![])
            .when(create_with(|c| {
                c.items = vec![new_item(ITEM_A, quantity, 100)]
            }))
            .then_err(OrderError::QuantityOutOfRange(quantity));
    }
}

#[test]
fn a_bad_quantity_on_a_later_line_is_refused_too() {
    given(vec![])
        .when(create_with(|c| c.items.push(new_item(UNKNOWN_ITEM, 51, 1))))
        .then_err(OrderError::QuantityOutOfRange(51));
}

#[test]
fn a_negative_unit_price_is_refused() {
    given(vec![])
        .when(create_with(|c| c.items[1].unit_price_cents = -1))
        .then_err(OrderError::NegativeAmount {
            field: "unitPriceCents",
            value: -1,
        });
}

#[test]
fn negative_fees_are_refused() {
    given(vec![])
        .when(create_with(|c| c.fees_cents = -300))
        .then_err(OrderError::NegativeAmount {
            field: "feesCents",
            value: -300,
        });
}

#[test]
fn negative_tax_is_refused() {
    given(vec![])
        .when(create_with(|c| c.tax_cents = i64::MIN))
        .then_err(OrderError::NegativeAmount {
            field: "taxCents",
            value: i64::MIN,
        });
}

#[test]
fn an_order_without_items_is_refused() {
    given(vec![])
        .when(create_with(|c| c.items.clear()))
        .then_err(OrderError::NoItems);
}

#[test]
fn at_most_a_hundred_lines_are_accepted() {
    assert_eq!(MAX_LINE_ITEMS, 100);
    let lines = |n: u128| {
        (1..=n)
            .map(|i| new_item(Uuid::from_u128(i), 1, 10))
            .collect()
    };
    let e = created_from(
        given(vec![])
            .when(create_with(|c| c.items = lines(100)))
            .result(),
    );
    assert_eq!(e.items.len(), 100);
    assert_eq!(e.subtotal_cents, 1_000);
    given(vec![])
        .when(create_with(|c| c.items = lines(101)))
        .then_err(OrderError::TooManyItems { max: 100, got: 101 });
}

#[test]
fn duplicate_line_item_ids_are_refused() {
    given(vec![])
        .when(create_with(|c| c.items[1].id = ITEM_A))
        .then_err(OrderError::DuplicateItemId);
}

#[test]
fn an_expiry_in_the_past_or_right_now_is_refused() {
    for expiry in [t(-1), t(0)] {
        given(vec![])
            .when(create_with(|c| c.expires_at = expiry))
            .then_err(OrderError::ExpiryInPast);
    }
}

#[test]
fn a_blank_tenant_or_user_is_refused() {
    given(vec![])
        .when(create_with(|c| c.tenant_id = " ".to_owned()))
        .then_err(OrderError::Empty("tenantId"));
    given(vec![])
        .when(create_with(|c| c.user_id = String::new()))
        .then_err(OrderError::Empty("userId"));
}

#[test]
fn a_line_total_beyond_i64_is_refused_as_overflow() {
    given(vec![])
        .when(create_with(|c| {
            c.items = vec![new_item(ITEM_A, 2, i64::MAX / 2 + 1)]
        }))
        .then_err(OrderError::AmountOverflow);
}

#[test]
fn a_subtotal_beyond_i64_is_refused_as_overflow() {
    given(vec![])
        .when(create_with(|c| {
            c.items = vec![new_item(ITEM_A, 1, i64::MAX), new_item(ITEM_B, 1, 1)];
            // No fees or tax, so that only the sum of the lines overflows.
            c.fees_cents = 0;
            c.tax_cents = 0;
        }))
        .then_err(OrderError::AmountOverflow);
}

#[test]
fn fees_or_tax_pushing_the_total_beyond_i64_are_refused_as_overflow() {
    given(vec![])
        .when(create_with(|c| {
            c.items = vec![new_item(ITEM_A, 1, i64::MAX)];
            c.fees_cents = 1;
            c.tax_cents = 0;
        }))
        .then_err(OrderError::AmountOverflow);
    given(vec![])
        .when(create_with(|c| {
            c.items = vec![new_item(ITEM_A, 1, i64::MAX - 1)];
            c.fees_cents = 1;
            c.tax_cents = 1;
        }))
        .then_err(OrderError::AmountOverflow);
}

#[test]
fn a_total_of_exactly_i64_max_is_accepted() {
    let cmd = create_with(|c| {
        c.items = vec![new_item(ITEM_A, 1, i64::MAX - 2)];
        c.fees_cents = 1;
        c.tax_cents = 1;
    });
    let e = created_from(given(vec![]).when(cmd).result());
    assert_eq!(e.total_cents, i64::MAX);
}

#[test]
fn creating_an_order_twice_is_refused() {
    given(pending())
        .when(create())
        .then_err(OrderError::AlreadyExists);
}

#[test]
fn unknown_currency_codes_cannot_be_built() {
    assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
    assert_eq!(
        Currency::parse("usd"),
        Err(OrderError::UnknownCurrency("usd".to_owned()))
    );
    assert_eq!(
        Currency::parse("XXX"),
        Err(OrderError::UnknownCurrency("XXX".to_owned()))
    );
}

#[test]
fn every_command_on_an_order_that_does_not_exist_is_refused_with_not_found() {
    for cmd in [
        reserve(),
        confirm(),
        cancel(),
        expire(),
        archive(),
        send_reminder(),
    ] {
        given(vec![]).when(cmd).then_err(OrderError::NotFound);
    }
}

// ------------------------------------------------------------------ reservation

#[test]
fn reserving_holds_the_order_until_the_new_expiry() {
    let order = given(pending()).when(reserve()).then(vec![reserved()]);
    assert_eq!(order.status, OrderStatus::Reserved);
    assert_eq!(order.expires_at, Some(reserved_until()));
}

#[test]
fn reserving_again_changes_nothing_even_with_another_expiry() {
    given(reserved_order())
        .when(reserve_at(t(45), now()))
        .then_nothing();
}

#[test]
fn reserving_after_the_expiry_is_refused() {
    for at in [expires_at(), t(16)] {
        given(pending())
            .when(reserve_at(t(60), at))
            .then_err(OrderError::Expired("reserved"));
    }
}

#[test]
fn reserving_until_a_time_already_past_is_refused() {
    for until in [t(4), now()] {
        given(pending())
            .when(reserve_at(until, now()))
            .then_err(OrderError::ExpiryInPast);
    }
}

// ------------------------------------------------------------------ payment

#[test]
fn confirming_marks_the_order_paid_with_its_intent() {
    let order = given(pending()).when(confirm()).then(vec![confirmed()]);
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.payment_intent_id.as_deref(), Some(INTENT));
    assert_eq!(order.paid_at, Some(now()));
    assert_eq!(order.refundable_cents(), TOTAL);
}

#[test]
fn confirming_twice_with_the_same_intent_changes_nothing() {
    given(paid()).when(confirm()).then_nothing();
}

#[test]
fn confirming_again_with_the_same_intent_ignores_a_stale_version_and_amount() {
    given(paid())
        .when(confirm_with(INTENT, TOTAL + 1, Some(0), t(60)))
        .then_nothing();
}

#[test]
fn confirming_with_another_intent_once_paid_is_refused() {
    given(paid())
        .when(confirm_with(OTHER_INTENT, TOTAL, None, now()))
        .then_err(OrderError::PaidWithOtherIntent);
}

#[test]
fn confirming_with_the_expected_version_is_accepted() {
    given(reserved_order())
        .when(confirm_with(INTENT, TOTAL, Some(2), now()))
        .then(vec![confirmed()]);
}

#[test]
fn confirming_with_a_stale_expected_version_is_refused() {
    given(reserved_order())
        .when(confirm_with(INTENT, TOTAL, Some(1), now()))
        .then_err(OrderError::VersionMismatch {
            expected: 1,
            actual: 2,
        });
    given(pending())
        .when(confirm_with(INTENT, TOTAL, Some(7), now()))
        .then_err(OrderError::VersionMismatch {
            expected: 7,
            actual: 1,
        });
}

#[test]
fn confirming_at_or_after_the_expiry_is_refused() {
    for at in [expires_at(), t(16)] {
        given(pending())
            .when(confirm_with(INTENT, TOTAL, None, at))
            .then_err(OrderError::Expired("confirmed"));
    }
}

#[test]
fn a_reservation_extends_the_time_to_pay() {
    given(reserved_order())
        .when(confirm_with(INTENT, TOTAL, None, t(20)))
        .then(vec![OrderEvent::OrderConfirmed(
            order_domain::events::OrderConfirmed {
                payment_intent_id: INTENT.to_owned(),
                amount_cents: TOTAL,
                occurred_at: t(20),
            },
        )]);
    given(reserved_order())
        .when(confirm_with(INTENT, TOTAL, None, reserved_until()))
        .then_err(OrderError::Expired("confirmed"));
}

#[test]
fn confirming_an_amount_other_than_the_total_is_refused() {
    for amount in [TOTAL - 1, TOTAL + 1, 0, -TOTAL] {
        given(pending())
            .when(confirm_with(INTENT, amount, None, now()))
            .then_err(OrderError::AmountMismatch {
                expected: TOTAL,
                actual: amount,
            });
    }
}

#[test]
fn confirming_without_a_payment_intent_is_refused() {
    given(pending())
        .when(confirm_with("  ", TOTAL, None, now()))
        .then_err(OrderError::Empty("paymentIntentId"));
}

#[test]
fn a_failed_payment_leaves_the_order_payable() {
    let order = given(pending())
        .when(payment_failure("pi_declined"))
        .then(vec![payment_failed("pi_declined")]);
    assert_eq!(order.status, OrderStatus::Pending);
    assert!(order.failed_payment_intents.contains("pi_declined"));
    let mut history = pending();
    history.push(payment_failed("pi_declined"));
    given(history).when(confirm()).then(vec![confirmed()]);
}

#[test]
fn recording_the_same_payment_failure_again_changes_nothing() {
    given(vec![created(), payment_failed("pi_declined")])
        .when(payment_failure("pi_declined"))
        .then_nothing();
}

#[test]
fn a_redelivered_payment_failure_after_payment_changes_nothing() {
    given(vec![created(), payment_failed("pi_declined"), confirmed()])
        .when(payment_failure("pi_declined"))
        .then_nothing();
}

#[test]
fn a_stale_payment_failure_after_payment_is_moot() {
    // A webhook retry for an older intent: the order is settled, so the failure changes nothing
    // (and is never a refusal that would hold the order's later messages).
    for history in [paid(), cancelled_order(), expired_order()] {
        given(history)
            .when(payment_failure("pi_late"))
            .then_nothing();
    }
}

// ------------------------------------------------------------------ cancel, expire, fail

#[test]
fn cancelling_records_the_status_it_left() {
    let order = given(reserved_order())
        .when(cancel())
        .then(vec![cancelled(OrderStatus::Reserved)]);
    assert_eq!(order.status, OrderStatus::Cancelled);
}

#[test]
fn cancelling_twice_changes_nothing() {
    given(cancelled_order()).when(cancel()).then_nothing();
}

#[test]
fn cancelling_a_paid_order_is_refused() {
    given(paid())
        .when(cancel())
        .then_err(invalid("cancel", OrderStatus::Paid));
}

#[test]
fn expiring_before_the_expiry_is_refused() {
    given(pending())
        .when(expire_at(t(14)))
        .then_err(OrderError::NotYetExpired);
}

#[test]
fn expiring_exactly_at_the_expiry_is_accepted() {
    let order =
        given(pending())
            .when(expire_at(expires_at()))
            .then(vec![OrderEvent::OrderExpired(
                order_domain::events::OrderExpired {
                    expired_at: expires_at(),
                    previous_status: OrderStatus::Pending,
                    occurred_at: expires_at(),
                },
            )]);
    assert_eq!(order.status, OrderStatus::Expired);
}

#[test]
fn a_reserved_order_does_not_expire_at_its_original_expiry() {
    given(reserved_order())
        .when(expire_at(t(20)))
        .then_err(OrderError::NotYetExpired);
    given(reserved_order())
        .when(expire())
        .then(vec![expired(reserved_until(), OrderStatus::Reserved)]);
}

#[test]
fn expiring_twice_changes_nothing() {
    given(expired_order()).when(expire()).then_nothing();
}

#[test]
fn expiring_a_paid_order_is_refused_even_after_its_expiry() {
    given(paid())
        .when(expire())
        .then_err(invalid("expire", OrderStatus::Paid));
}

#[test]
fn failing_an_open_order_makes_it_failed() {
    let order = given(pending()).when(fail()).then(vec![failed()]);
    assert_eq!(order.status, OrderStatus::Failed);
}

#[test]
fn failing_twice_changes_nothing() {
    given(failed_order()).when(fail()).then_nothing();
}

#[test]
fn a_finished_unpaid_order_cannot_be_paid() {
    for status in [
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Failed,
    ] {
        given(history(status))
            .when(confirm())
            .then_err(invalid("confirm", status));
    }
}

// ------------------------------------------------------------------ version

#[test]
fn the_version_counts_the_events_applied() {
    let mut order = replay(&[]);
    assert_eq!(order.version, 0);
    let events = [
        created(),
        reserved(),
        confirmed(),
        refund_requested(REFUND_1, PARTIAL),
        refunded(REFUND_1, PARTIAL, PARTIAL, false),
        archived(OrderStatus::PartiallyRefunded),
    ];
    for (n, e) in events.iter().enumerate() {
        order.apply(e);
        assert_eq!(order.version, n as u64 + 1, "after {}", e.event_type());
        assert_eq!(order.updated_at, Some(e.occurred_at()));
    }
}

#[test]
fn a_decision_yields_events_that_advance_the_version_by_their_number() {
    let before = given(reserved_order());
    assert_eq!(before.order().version, 2);
    let after = before.when(confirm()).then(vec![confirmed()]);
    assert_eq!(after.version, 3);
    let unchanged = given(paid()).when(confirm()).then_nothing();
    assert_eq!(unchanged.version, 2, "an idempotent repeat adds no version");
}

#[test]
fn deciding_does_not_change_the_order() {
    let order = replay(&reserved_order());
    let copy = order.clone();
    for cmd in [
        confirm(),
        cancel(),
        expire(),
        fail(),
        reserve(),
        send_reminder(),
    ] {
        let _ = order.decide(cmd);
        assert_eq!(order, copy);
    }
}
