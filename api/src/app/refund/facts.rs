//! The facts a refund depends on, gathered from the peers before the aggregate decides
//! (docs/contract.md §5). Each fact that does not allow the refund becomes a refusal, and the
//! aggregate refuses a refund with any refusal; the aggregate itself stays pure.
//!
//! - Payment: payment-service must say the payment is refundable. Its fallback is "not
//!   refundable", so an unreachable payment-service refuses the refund (fail closed).
//! - Tickets: every ticket of the order, as recorded on it and as ticket-service lists it,
//!   must be confirmed not transferred. These reads have no fallback: a ticket that cannot be
//!   verified refuses the refund (409 with the reason), whatever the failure. We chose a
//!   refusal over a 503 because the issue asks for it and because nothing is recorded: the
//!   caller can simply ask again once ticket-service is back.
//! - Event: a cancelled or postponed event makes the order refundable even after its start;
//!   otherwise a refund after the event started is refused. event-service's fallback (status
//!   unknown) widens nothing, so the order's own start time decides.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use order_domain::commands::RefundFacts;
use order_domain::Order;

use crate::clients::ServiceClients;

/// Tickets checked at once against ticket-service.
const TICKET_CHECK_CONCURRENCY: usize = 8;

/// Asks the three peers, concurrently, and turns their answers into refusals.
pub async fn gather(clients: &ServiceClients, order: &Order, now: DateTime<Utc>) -> RefundFacts {
    let (payment, tickets, event) = tokio::join!(
        payment_refusal(clients, order),
        ticket_refusals(clients, order),
        event_refusal(clients, order, now),
    );
    RefundFacts {
        refusals: payment.into_iter().chain(tickets).chain(event).collect(),
    }
}

async fn payment_refusal(clients: &ServiceClients, order: &Order) -> Option<String> {
    let Some(intent) = order.payment_intent_id.as_deref() else {
        return Some("the order has no payment to refund".into());
    };
    let status = clients.payment.get_payment_status(intent).await;
    if status.refundable {
        None
    } else if status.fallback {
        Some("payment-service could not confirm that the payment is refundable".into())
    } else {
        Some(format!(
            "payment-service reports that the payment is not refundable (status '{}')",
            status.status
        ))
    }
}

async fn ticket_refusals(clients: &ServiceClients, order: &Order) -> Vec<String> {
    let Some(order_id) = order.id else {
        return vec!["the order has no id".into()];
    };
    let listed = match clients.ticket.get_tickets_for_order(order_id).await {
        Ok(tickets) => tickets,
        Err(e) => {
            return vec![format!(
                "cannot verify the order's tickets: {}",
                e.public_message()
            )]
        }
    };
    let mut refusals: Vec<String> = listed
        .iter()
        .filter(|t| t.transferred)
        .map(|t| format!("ticket {} was transferred", t.id))
        .collect();
    let ids: BTreeSet<String> = order
        .tickets
        .iter()
        .map(|t| t.ticket_id.clone())
        .chain(listed.into_iter().filter(|t| !t.transferred).map(|t| t.id))
        .collect();
    let checks: Vec<Option<String>> = stream::iter(ids)
        .map(|id| async move {
            match clients.ticket.check_ticket_not_transferred(&id).await {
                Ok(true) => None,
                Ok(false) => Some(format!("ticket {id} was transferred")),
                Err(e) => Some(format!(
                    "cannot verify that ticket {id} was not transferred: {}",
                    e.public_message()
                )),
            }
        })
        .buffer_unordered(TICKET_CHECK_CONCURRENCY)
        .collect()
        .await;
    refusals.extend(checks.into_iter().flatten());
    refusals.sort();
    refusals
}

async fn event_refusal(
    clients: &ServiceClients,
    order: &Order,
    now: DateTime<Utc>,
) -> Option<String> {
    let event_id = order.event_id?;
    let event = clients.event.get_event(event_id).await;
    if event.cancelled_or_postponed() {
        return None;
    }
    let starts_at = event.starts_at.or(order.event_starts_at)?;
    (now >= starts_at)
        .then(|| "the event has already started and was neither cancelled nor postponed".to_owned())
}
