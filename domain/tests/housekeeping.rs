//! Reminders (each sent at most once) and archiving (only orders that can no longer change;
//! an archived order refuses everything but archiving again).

mod common;

use common::*;
use order_domain::testing::given;
use order_domain::values::DisputeOutcome;
use order_domain::{OrderCommand, OrderError, OrderStatus};

// ------------------------------------------------------------------ expiry reminder

#[test]
fn an_expiry_reminder_names_the_expiry_in_force() {
    let order = given(pending())
        .when(send_reminder())
        .then(vec![reminder_sent(expires_at())]);
    assert!(order.reminder_sent);
    given(reserved_order())
        .when(send_reminder())
        .then(vec![reminder_sent(reserved_until())]);
}

#[test]
fn an_expiry_reminder_is_sent_once() {
    let reminded = with(pending(), &[reminder_sent(expires_at())]);
    given(reminded.clone()).when(send_reminder()).then_nothing();
    given(with(reminded, &[reserved()]))
        .when(send_reminder())
        .then_nothing();
}

#[test]
fn a_redelivered_reminder_after_payment_changes_nothing() {
    given(with(pending(), &[reminder_sent(expires_at()), confirmed()]))
        .when(send_reminder())
        .then_nothing();
}

#[test]
fn no_expiry_reminder_at_or_after_the_expiry() {
    for at in [expires_at(), t(20)] {
        given(pending())
            .when(send_reminder_at(at))
            .then_err(OrderError::Expired("reminded about"));
    }
}

#[test]
fn no_expiry_reminder_for_a_paid_order() {
    given(paid())
        .when(send_reminder())
        .then_err(invalid("remind about", OrderStatus::Paid));
}

// ------------------------------------------------------------------ event reminder

#[test]
fn an_event_reminder_names_the_event_start() {
    let order = given(paid())
        .when(send_event_reminder())
        .then(vec![event_reminder_sent()]);
    assert!(order.event_reminder_sent);
}

#[test]
fn an_event_reminder_is_sent_once() {
    given(with(paid(), &[event_reminder_sent()]))
        .when(send_event_reminder())
        .then_nothing();
}

#[test]
fn an_event_reminder_without_a_known_start_carries_none() {
    let mut created = created_event();
    created.event_starts_at = None;
    let events = given(vec![
        order_domain::OrderEvent::OrderCreated(created),
        confirmed(),
    ])
    .when(send_event_reminder())
    .result()
    .unwrap();
    let [order_domain::OrderEvent::EventReminderSent(e)] = &events[..] else {
        panic!("expected one EventReminderSent, got {events:?}");
    };
    assert_eq!(e.event_starts_at, None);
}

#[test]
fn no_event_reminder_for_a_fully_refunded_order() {
    given(refunded_order())
        .when(send_event_reminder())
        .then_err(invalid("send an event reminder for", OrderStatus::Refunded));
}

// ------------------------------------------------------------------ archiving

#[test]
fn every_order_that_can_no_longer_be_paid_can_be_archived() {
    for status in OrderStatus::ALL.into_iter().filter(|s| !s.is_open()) {
        let order = given(history(status))
            .when(archive())
            .then(vec![archived(status)]);
        assert!(order.archived);
        assert_eq!(order.status, status, "archiving keeps the final status");
    }
}

#[test]
fn an_open_order_cannot_be_archived() {
    for status in [OrderStatus::Pending, OrderStatus::Reserved] {
        given(history(status))
            .when(archive())
            .then_err(invalid("archive", status));
    }
}

#[test]
fn archiving_twice_changes_nothing() {
    given(archived_history(OrderStatus::Expired))
        .when(archive())
        .then_nothing();
}

#[test]
fn an_order_with_a_refund_under_way_cannot_be_archived() {
    for history in [
        with(paid(), &[refund_requested(REFUND_1, PARTIAL)]),
        with(partially_refunded(), &[refund_requested(REFUND_2, 1)]),
    ] {
        let status = replay(&history).status;
        given(history)
            .when(archive())
            .then_err(invalid("archive, while a refund is under way,", status));
    }
}

#[test]
fn an_order_with_an_open_dispute_cannot_be_archived() {
    given(with(paid(), &[dispute_opened(DISPUTE)]))
        .when(archive())
        .then_err(invalid(
            "archive, while a dispute is open,",
            OrderStatus::Paid,
        ));
}

#[test]
fn an_order_whose_refunds_and_disputes_finished_can_be_archived() {
    let history = with(
        paid(),
        &[
            refund_requested(REFUND_1, PARTIAL),
            refund_failed(REFUND_1),
            dispute_opened(DISPUTE),
            dispute_closed(DISPUTE, DisputeOutcome::Lost, true),
        ],
    );
    given(history)
        .when(archive())
        .then(vec![archived(OrderStatus::Paid)]);
}

fn every_command_but_create_and_archive() -> Vec<OrderCommand> {
    vec![
        reserve(),
        confirm(),
        confirm_with(OTHER_INTENT, TOTAL, None, now()),
        cancel(),
        expire(),
        fail(),
        payment_failure("pi_x"),
        request_refund(REFUND_2, None),
        request_refund(REFUND_1, None),
        complete_refund(REFUND_1),
        fail_refund(REFUND_1),
        open_dispute(DISPUTE),
        update_dispute(DISPUTE, "under_review"),
        close_dispute(DISPUTE, DisputeOutcome::Won),
        record_tickets(&[ticket(ITEM_A, "tkt_1")]),
        send_reminder(),
        send_event_reminder(),
    ]
}

#[test]
fn an_archived_order_refuses_every_command_even_a_redelivered_one() {
    // This history has a completed refund, a closed dispute, tickets and reminders, so the
    // commands above would be repeats (no-ops) if the order were not archived.
    let history = with(
        partially_refunded(),
        &[
            dispute_opened(DISPUTE),
            dispute_closed(DISPUTE, DisputeOutcome::Won, false),
            tickets_issued(&[ticket(ITEM_A, "tkt_1")]),
            event_reminder_sent(),
            archived(OrderStatus::PartiallyRefunded),
        ],
    );
    for cmd in every_command_but_create_and_archive() {
        let result = given(history.clone()).when(cmd.clone()).result();
        assert_eq!(result, Err(OrderError::Archived), "for {cmd:?}");
    }
}

#[test]
fn an_archived_order_cannot_be_created_again() {
    given(archived_history(OrderStatus::Cancelled))
        .when(create())
        .then_err(OrderError::AlreadyExists);
}
