//! Tickets issued against line items: never more than the line's quantity, idempotent on the
//! ticket id, and a ticket id belongs to one line only.

mod common;

use common::*;
use order_domain::testing::given;
use order_domain::{OrderError, OrderStatus};

#[test]
fn recording_tickets_adds_them_to_the_order() {
    let tickets = [
        ticket(ITEM_A, "tkt_1"),
        ticket(ITEM_A, "tkt_2"),
        ticket(ITEM_B, "tkt_3"),
    ];
    let order = given(paid())
        .when(record_tickets(&tickets))
        .then(vec![tickets_issued(&tickets)]);
    assert_eq!(order.tickets, tickets.to_vec());
    assert_eq!(order.ticket_count(), 3);
}

#[test]
fn the_event_counts_the_tickets_it_carries() {
    let tickets = [ticket(ITEM_A, "tkt_1"), ticket(ITEM_B, "tkt_3")];
    let events = given(paid())
        .when(record_tickets(&tickets))
        .result()
        .unwrap();
    let [order_domain::OrderEvent::TicketsIssued(e)] = &events[..] else {
        panic!("expected one TicketsIssued, got {events:?}");
    };
    assert_eq!(e.ticket_count, 2);
    assert_eq!(e.tickets.len(), 2);
}

#[test]
fn a_ticket_for_an_unknown_line_item_is_refused_and_nothing_is_recorded() {
    given(paid())
        .when(record_tickets(&[
            ticket(ITEM_A, "tkt_1"),
            ticket(UNKNOWN_ITEM, "tkt_2"),
        ]))
        .then_err(OrderError::UnknownItem(UNKNOWN_ITEM));
}

#[test]
fn more_tickets_than_the_line_quantity_in_one_command_are_refused() {
    given(paid())
        .when(record_tickets(&[
            ticket(ITEM_A, "tkt_1"),
            ticket(ITEM_A, "tkt_2"),
            ticket(ITEM_A, "tkt_3"),
        ]))
        .then_err(OrderError::TooManyTickets {
            item_id: ITEM_A,
            quantity: QTY_A,
        });
}

#[test]
fn more_tickets_than_the_line_quantity_across_commands_are_refused() {
    let full = with(
        paid(),
        &[tickets_issued(&[
            ticket(ITEM_A, "tkt_1"),
            ticket(ITEM_A, "tkt_2"),
        ])],
    );
    given(full.clone())
        .when(record_tickets(&[ticket(ITEM_A, "tkt_9")]))
        .then_err(OrderError::TooManyTickets {
            item_id: ITEM_A,
            quantity: QTY_A,
        });
    // The other line still has room.
    given(full)
        .when(record_tickets(&[ticket(ITEM_B, "tkt_9")]))
        .then(vec![tickets_issued(&[ticket(ITEM_B, "tkt_9")])]);
}

#[test]
fn recording_the_same_ticket_again_changes_nothing() {
    let tickets = [ticket(ITEM_A, "tkt_1"), ticket(ITEM_A, "tkt_2")];
    let order = given(with(paid(), &[tickets_issued(&tickets)]))
        .when(record_tickets(&tickets))
        .then_nothing();
    assert_eq!(order.ticket_count(), 2);
}

#[test]
fn a_redelivery_with_one_new_ticket_records_only_the_new_one() {
    let history = with(paid(), &[tickets_issued(&[ticket(ITEM_A, "tkt_1")])]);
    given(history)
        .when(record_tickets(&[
            ticket(ITEM_A, "tkt_1"),
            ticket(ITEM_A, "tkt_2"),
        ]))
        .then(vec![tickets_issued(&[ticket(ITEM_A, "tkt_2")])]);
}

#[test]
fn a_ticket_repeated_within_one_command_is_recorded_once() {
    given(paid())
        .when(record_tickets(&[
            ticket(ITEM_B, "tkt_1"),
            ticket(ITEM_B, "tkt_1"),
        ]))
        .then(vec![tickets_issued(&[ticket(ITEM_B, "tkt_1")])]);
}

#[test]
fn the_same_ticket_id_on_another_line_item_is_refused() {
    given(with(paid(), &[tickets_issued(&[ticket(ITEM_A, "tkt_1")])]))
        .when(record_tickets(&[ticket(ITEM_B, "tkt_1")]))
        .then_err(OrderError::TicketOnOtherItem("tkt_1".to_owned()));
}

#[test]
fn the_same_ticket_id_on_two_line_items_in_one_command_is_refused() {
    given(paid())
        .when(record_tickets(&[
            ticket(ITEM_A, "tkt_1"),
            ticket(ITEM_B, "tkt_1"),
        ]))
        .then_err(OrderError::TicketOnOtherItem("tkt_1".to_owned()));
}

#[test]
fn a_blank_ticket_id_is_refused() {
    given(paid())
        .when(record_tickets(&[ticket(ITEM_A, "")]))
        .then_err(OrderError::Empty("ticketId"));
}

#[test]
fn recording_no_tickets_changes_nothing() {
    given(paid()).when(record_tickets(&[])).then_nothing();
}

#[test]
fn tickets_cannot_be_recorded_before_payment() {
    given(pending())
        .when(record_tickets(&[ticket(ITEM_A, "tkt_1")]))
        .then_err(invalid("record tickets on", OrderStatus::Pending));
}
