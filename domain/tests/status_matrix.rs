//! Every command in every situation: the eight statuses, an archived order (archived once paid
//! and once cancelled) and an order that was never created. Each cell names the exact events or
//! the exact refusal. The other test files cover the finer rules of each command.

mod common;

use common::*;
use order_domain::values::DisputeOutcome;
use order_domain::{OrderError, OrderStatus};

use OrderStatus::{
    Cancelled, Expired, Failed, Paid, PartiallyRefunded as PartRefunded, Pending, Refunded,
    Reserved,
};

/// The two situations every command but create and archive answers the same way.
fn existing(situation: Situation, by_status: impl Fn(OrderStatus) -> Outcome) -> Outcome {
    match situation {
        Situation::Status(status) => by_status(status),
        Situation::Archived(_) => Err(OrderError::Archived),
        Situation::NotCreated => Err(OrderError::NotFound),
    }
}

#[test]
fn create_is_accepted_only_when_no_order_exists() {
    assert_matrix(&create(), |s| match s {
        Situation::NotCreated => Ok(vec![created()]),
        Situation::Status(_) | Situation::Archived(_) => Err(OrderError::AlreadyExists),
    });
}

#[test]
fn reserve_is_accepted_when_pending_and_a_no_op_when_reserved() {
    assert_matrix(&reserve(), |s| {
        existing(s, |status| match status {
            Pending => Ok(vec![reserved()]),
            Reserved => Ok(vec![]),
            other => Err(invalid("reserve", other)),
        })
    });
}

#[test]
fn confirm_is_accepted_while_open_and_a_no_op_once_paid_with_the_same_intent() {
    assert_matrix(&confirm(), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![confirmed()]),
            Paid | PartRefunded | Refunded => Ok(vec![]),
            other => Err(invalid("confirm", other)),
        })
    });
}

#[test]
fn confirm_with_another_intent_is_refused_once_paid() {
    let cmd = confirm_with(OTHER_INTENT, TOTAL, None, now());
    assert_matrix(&cmd, |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![confirmed_with(OTHER_INTENT)]),
            Paid | PartRefunded | Refunded => Err(OrderError::PaidWithOtherIntent),
            other => Err(invalid("confirm", other)),
        })
    });
}

#[test]
fn cancel_is_accepted_while_open_and_a_no_op_when_cancelled() {
    assert_matrix(&cancel(), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![cancelled(status)]),
            Cancelled => Ok(vec![]),
            other => Err(invalid("cancel", other)),
        })
    });
}

#[test]
fn expire_after_the_expiry_is_accepted_while_open_and_a_no_op_when_expired() {
    assert_matrix(&expire(), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![expired(expiry_in(status), status)]),
            Expired => Ok(vec![]),
            other => Err(invalid("expire", other)),
        })
    });
}

#[test]
fn fail_is_accepted_while_open_and_a_no_op_when_failed() {
    assert_matrix(&fail(), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![failed()]),
            Failed => Ok(vec![]),
            other => Err(invalid("fail", other)),
        })
    });
}

#[test]
fn a_payment_failure_is_recorded_while_open_and_moot_once_settled() {
    assert_matrix(&payment_failure("pi_declined"), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![payment_failed("pi_declined")]),
            _ => Ok(vec![]),
        })
    });
}

#[test]
fn a_full_refund_is_requested_only_when_paid_or_partially_refunded() {
    assert_matrix(&request_refund(REFUND_2, None), |s| {
        existing(s, |status| match status {
            Paid => Ok(vec![refund_requested(REFUND_2, TOTAL)]),
            PartRefunded => Ok(vec![refund_requested(REFUND_2, TOTAL - PARTIAL)]),
            other => Err(invalid("refund", other)),
        })
    });
}

#[test]
fn completing_an_unknown_refund_is_refused_in_every_status() {
    assert_matrix(&complete_refund(REFUND_3), |s| {
        existing(s, |_| Err(OrderError::UnknownRefund(REFUND_3)))
    });
}

#[test]
fn completing_an_already_completed_refund_changes_nothing_in_the_statuses_that_have_one() {
    assert_matrix(&complete_refund(REFUND_1), |s| {
        existing(s, |status| match status {
            PartRefunded | Refunded => Ok(vec![]),
            _ => Err(OrderError::UnknownRefund(REFUND_1)),
        })
    });
}

#[test]
fn failing_an_unknown_refund_is_refused_in_every_status() {
    assert_matrix(&fail_refund(REFUND_3), |s| {
        existing(s, |_| Err(OrderError::UnknownRefund(REFUND_3)))
    });
}

#[test]
fn failing_an_already_completed_refund_is_refused() {
    assert_matrix(&fail_refund(REFUND_1), |s| {
        existing(s, |status| match status {
            PartRefunded | Refunded => Err(OrderError::RefundAlreadyFinished(REFUND_1)),
            _ => Err(OrderError::UnknownRefund(REFUND_1)),
        })
    });
}

#[test]
fn a_dispute_is_recorded_in_every_status_because_the_provider_says_so() {
    assert_matrix(&open_dispute(DISPUTE), |s| {
        existing(s, |_| Ok(vec![dispute_opened(DISPUTE)]))
    });
}

#[test]
fn an_update_of_a_dispute_never_seen_opens_it_in_every_status() {
    assert_matrix(&update_dispute(DISPUTE, "under_review"), |s| {
        existing(s, |_| {
            Ok(vec![
                dispute_opened_unseen(DISPUTE),
                dispute_updated(DISPUTE, "under_review"),
            ])
        })
    });
}

#[test]
fn a_close_of_a_dispute_never_seen_opens_and_closes_it_in_every_status() {
    assert_matrix(&close_dispute(DISPUTE, DisputeOutcome::Won), |s| {
        existing(s, |_| {
            Ok(vec![
                dispute_opened_unseen(DISPUTE),
                dispute_closed(DISPUTE, DisputeOutcome::Won, false),
            ])
        })
    });
}

#[test]
fn tickets_are_recorded_only_on_an_order_that_took_money() {
    let tickets = [ticket(ITEM_A, "tkt_1")];
    assert_matrix(&record_tickets(&tickets), |s| {
        existing(s, |status| match status {
            Paid | PartRefunded | Refunded => Ok(vec![tickets_issued(&tickets)]),
            other => Err(invalid("record tickets on", other)),
        })
    });
}

#[test]
fn an_expiry_reminder_is_sent_only_while_open() {
    assert_matrix(&send_reminder(), |s| {
        existing(s, |status| match status {
            Pending | Reserved => Ok(vec![reminder_sent(expiry_in(status))]),
            other => Err(invalid("remind about", other)),
        })
    });
}

#[test]
fn an_event_reminder_is_sent_only_while_the_buyer_still_holds_paid_tickets() {
    assert_matrix(&send_event_reminder(), |s| {
        existing(s, |status| match status {
            Paid | PartRefunded => Ok(vec![event_reminder_sent()]),
            other => Err(invalid("send an event reminder for", other)),
        })
    });
}

#[test]
fn archive_is_refused_while_open_accepted_otherwise_and_a_no_op_once_archived() {
    assert_matrix(&archive(), |s| match s {
        Situation::Status(status @ (Pending | Reserved)) => Err(invalid("archive", status)),
        Situation::Status(status) => Ok(vec![archived(status)]),
        Situation::Archived(_) => Ok(vec![]),
        Situation::NotCreated => Err(OrderError::NotFound),
    });
}

#[test]
fn the_matrix_histories_reach_the_status_they_are_named_for() {
    for status in OrderStatus::ALL {
        let order = replay(&history(status));
        assert_eq!(order.status, status);
        assert!(!order.archived);
        let archived = replay(&archived_history(status));
        assert!(archived.archived, "{status} history did not archive");
        assert_eq!(archived.status, status);
    }
}
