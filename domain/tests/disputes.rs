//! Disputes (chargebacks): idempotent on the dispute id; an open dispute locks refunds, a won
//! one unlocks them once no other dispute is open, a lost one locks them for good.

mod common;

use common::*;
use order_domain::testing::given;
use order_domain::values::DisputeOutcome::{Lost, Won};
use order_domain::{OrderError, OrderStatus};

fn disputed() -> Vec<order_domain::OrderEvent> {
    with(paid(), &[dispute_opened(DISPUTE)])
}

#[test]
fn opening_a_dispute_locks_refunds_and_keeps_the_status() {
    let order = given(paid())
        .when(open_dispute(DISPUTE))
        .then(vec![dispute_opened(DISPUTE)]);
    assert!(order.refunds_locked());
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(
        order.open_disputes.get(DISPUTE).map(String::as_str),
        Some("open")
    );
    assert_eq!(order.dispute_history, vec![DISPUTE.to_owned()]);
}

#[test]
fn a_refund_is_refused_while_a_dispute_is_open() {
    given(disputed())
        .when(request_refund(REFUND_2, None))
        .then_err(OrderError::RefundsLocked);
    given(with(partially_refunded(), &[dispute_opened(DISPUTE)]))
        .when(request_refund(REFUND_2, Some(1)))
        .then_err(OrderError::RefundsLocked);
}

#[test]
fn a_refund_requested_before_the_dispute_is_still_recognised_as_a_repeat() {
    given(with(
        paid(),
        &[refund_requested(REFUND_1, PARTIAL), dispute_opened(DISPUTE)],
    ))
    .when(request_refund(REFUND_1, Some(PARTIAL)))
    .then_nothing();
}

#[test]
fn opening_a_dispute_that_is_already_open_changes_nothing() {
    given(disputed()).when(open_dispute(DISPUTE)).then_nothing();
}

#[test]
fn opening_a_dispute_that_was_already_closed_changes_nothing() {
    for outcome in [Won, Lost] {
        let locked = outcome == Lost;
        let order = given(with(
            disputed(),
            &[dispute_closed(DISPUTE, outcome, locked)],
        ))
        .when(open_dispute(DISPUTE))
        .then_nothing();
        assert!(
            order.open_disputes.is_empty(),
            "a redelivery must not reopen it"
        );
        assert_eq!(order.refunds_locked(), locked);
    }
}

#[test]
fn opening_a_dispute_without_an_id_is_refused() {
    given(paid())
        .when(open_dispute(" "))
        .then_err(OrderError::Empty("disputeId"));
}

#[test]
fn a_dispute_on_an_order_not_paid_yet_is_recorded_and_locks_refunds_once_paid() {
    // The dispute consumer can run before the payment consumer has confirmed the order.
    let order = given(reserved_order())
        .when(open_dispute(DISPUTE))
        .then(vec![dispute_opened(DISPUTE)]);
    assert!(order.refunds_locked());
    given(with(
        reserved_order(),
        &[dispute_opened(DISPUTE), confirmed()],
    ))
    .when(request_refund(REFUND_2, None))
    .then_err(OrderError::RefundsLocked);
}

#[test]
fn a_fully_refunded_order_can_still_be_disputed() {
    let order = given(refunded_order())
        .when(open_dispute(DISPUTE))
        .then(vec![dispute_opened(DISPUTE)]);
    assert_eq!(order.status, OrderStatus::Refunded);
}

// ------------------------------------------------------------------ updates

#[test]
fn updating_an_open_dispute_records_its_new_status() {
    let order = given(disputed())
        .when(update_dispute(DISPUTE, "under_review"))
        .then(vec![dispute_updated(DISPUTE, "under_review")]);
    assert_eq!(
        order.open_disputes.get(DISPUTE).map(String::as_str),
        Some("under_review")
    );
    assert!(order.refunds_locked());
}

#[test]
fn updating_a_dispute_to_the_status_it_has_changes_nothing() {
    given(disputed())
        .when(update_dispute(DISPUTE, "open"))
        .then_nothing();
    given(with(
        disputed(),
        &[dispute_updated(DISPUTE, "under_review")],
    ))
    .when(update_dispute(DISPUTE, "under_review"))
    .then_nothing();
}

#[test]
fn an_update_that_overtakes_its_creation_opens_the_dispute_and_locks_refunds() {
    let order = given(paid())
        .when(update_dispute(DISPUTE, "under_review"))
        .then(vec![
            dispute_opened_unseen(DISPUTE),
            dispute_updated(DISPUTE, "under_review"),
        ]);
    assert!(order.refunds_locked());
    let history = with(
        paid(),
        &[
            dispute_opened_unseen(DISPUTE),
            dispute_updated(DISPUTE, "under_review"),
        ],
    );
    // The creation, arriving last, is a redelivery of what is already known.
    given(history.clone())
        .when(open_dispute(DISPUTE))
        .then_nothing();
    given(history)
        .when(request_refund(REFUND_2, None))
        .then_err(OrderError::RefundsLocked);
}

#[test]
fn an_update_with_status_open_that_overtakes_its_creation_only_opens_it() {
    given(paid())
        .when(update_dispute(DISPUTE, "open"))
        .then(vec![dispute_opened_unseen(DISPUTE)]);
}

#[test]
fn an_update_of_another_dispute_opens_that_one_too() {
    let order = given(disputed())
        .when(update_dispute(OTHER_DISPUTE, "under_review"))
        .then(vec![
            dispute_opened_unseen(OTHER_DISPUTE),
            dispute_updated(OTHER_DISPUTE, "under_review"),
        ]);
    assert_eq!(order.open_disputes.len(), 2);
}

#[test]
fn an_update_arriving_after_the_close_changes_nothing() {
    given(with(disputed(), &[dispute_closed(DISPUTE, Won, false)]))
        .when(update_dispute(DISPUTE, "under_review"))
        .then_nothing();
}

// ------------------------------------------------------------------ closing

#[test]
fn closing_a_dispute_as_won_unlocks_refunds() {
    let order = given(disputed())
        .when(close_dispute(DISPUTE, Won))
        .then(vec![dispute_closed(DISPUTE, Won, false)]);
    assert!(!order.refunds_locked());
    assert!(!order.lost_dispute);
    given(with(disputed(), &[dispute_closed(DISPUTE, Won, false)]))
        .when(request_refund(REFUND_2, None))
        .then(vec![refund_requested(REFUND_2, TOTAL)]);
}

#[test]
fn closing_a_dispute_as_lost_keeps_refunds_locked() {
    let order = given(disputed())
        .when(close_dispute(DISPUTE, Lost))
        .then(vec![dispute_closed(DISPUTE, Lost, true)]);
    assert!(order.refunds_locked());
    assert!(order.lost_dispute);
    assert!(order.open_disputes.is_empty());
    given(with(disputed(), &[dispute_closed(DISPUTE, Lost, true)]))
        .when(request_refund(REFUND_2, Some(1)))
        .then_err(OrderError::RefundsLocked);
}

#[test]
fn after_a_lost_dispute_a_later_won_dispute_does_not_unlock_refunds() {
    let history = with(
        disputed(),
        &[
            dispute_closed(DISPUTE, Lost, true),
            dispute_opened(OTHER_DISPUTE),
        ],
    );
    let order = given(history.clone())
        .when(close_dispute(OTHER_DISPUTE, Won))
        .then(vec![dispute_closed(OTHER_DISPUTE, Won, true)]);
    assert!(order.refunds_locked());
    let mut history = history;
    history.push(dispute_closed(OTHER_DISPUTE, Won, true));
    given(history)
        .when(request_refund(REFUND_2, None))
        .then_err(OrderError::RefundsLocked);
}

#[test]
fn with_two_disputes_open_closing_one_as_won_keeps_refunds_locked() {
    let two_open = with(disputed(), &[dispute_opened(OTHER_DISPUTE)]);
    let order = given(two_open.clone())
        .when(close_dispute(DISPUTE, Won))
        .then(vec![dispute_closed(DISPUTE, Won, true)]);
    assert!(order.refunds_locked());
    let one_left = with(two_open, &[dispute_closed(DISPUTE, Won, true)]);
    given(one_left.clone())
        .when(request_refund(REFUND_2, None))
        .then_err(OrderError::RefundsLocked);
    let order = given(one_left.clone())
        .when(close_dispute(OTHER_DISPUTE, Won))
        .then(vec![dispute_closed(OTHER_DISPUTE, Won, false)]);
    assert!(!order.refunds_locked());
    given(with(one_left, &[dispute_closed(OTHER_DISPUTE, Won, false)]))
        .when(request_refund(REFUND_2, None))
        .then(vec![refund_requested(REFUND_2, TOTAL)]);
}

#[test]
fn closing_a_dispute_twice_changes_nothing() {
    for outcome in [Won, Lost] {
        let history = with(
            disputed(),
            &[dispute_closed(DISPUTE, outcome, outcome == Lost)],
        );
        // The redelivered close may even carry the other outcome: the first close stands.
        given(history.clone())
            .when(close_dispute(DISPUTE, outcome))
            .then_nothing();
        let order = given(history)
            .when(close_dispute(DISPUTE, Won))
            .then_nothing();
        assert_eq!(order.lost_dispute, outcome == Lost);
    }
}

#[test]
fn a_close_that_overtakes_its_creation_records_both_and_the_creation_is_then_a_no_op() {
    for outcome in [Won, Lost] {
        let locked = outcome == Lost;
        let order = given(paid())
            .when(close_dispute(DISPUTE, outcome))
            .then(vec![
                dispute_opened_unseen(DISPUTE),
                dispute_closed(DISPUTE, outcome, locked),
            ]);
        assert_eq!(order.refunds_locked(), locked);
        let history = with(
            paid(),
            &[
                dispute_opened_unseen(DISPUTE),
                dispute_closed(DISPUTE, outcome, locked),
            ],
        );
        let order = given(history).when(open_dispute(DISPUTE)).then_nothing();
        assert_eq!(
            order.refunds_locked(),
            locked,
            "a late creation must not relock"
        );
    }
}

#[test]
fn a_close_of_an_unseen_dispute_keeps_refunds_locked_by_another_open_one() {
    given(disputed())
        .when(close_dispute(OTHER_DISPUTE, Won))
        .then(vec![
            dispute_opened_unseen(OTHER_DISPUTE),
            dispute_closed(OTHER_DISPUTE, Won, true),
        ]);
}

#[test]
fn every_order_of_create_update_close_ends_in_the_same_state() {
    let messages = [
        open_dispute(DISPUTE),
        update_dispute(DISPUTE, "under_review"),
        close_dispute(DISPUTE, Lost),
    ];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut state = order_domain::Order::default();
        for e in paid() {
            state.apply(&e);
        }
        for i in order {
            for e in state.decide(messages[i].clone()).expect("accepted") {
                state.apply(&e);
            }
        }
        assert!(state.open_disputes.is_empty(), "{order:?}");
        assert!(state.lost_dispute && state.refunds_locked(), "{order:?}");
        assert_eq!(state.dispute_history, vec![DISPUTE.to_owned()], "{order:?}");
    }
}

#[test]
fn an_open_dispute_does_not_stop_tickets_or_the_event_reminder() {
    let tickets = [ticket(ITEM_A, "tkt_1")];
    given(disputed())
        .when(record_tickets(&tickets))
        .then(vec![tickets_issued(&tickets)]);
    given(disputed())
        .when(send_event_reminder())
        .then(vec![event_reminder_sent()]);
}
