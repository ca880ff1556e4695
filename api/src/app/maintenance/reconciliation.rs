//! The reconciliation job's own checks on work other parts of the platform should have
//! finished (its third, the refund retry pass, is [`crate::app::refund::RefundRetrier`]).
//!
//! - **Relay lag** ([`relay_lag`]): how far the outbox relay is behind the feed, as the
//!   `relay_lag_events` and `relay_lag_seconds` gauges.
//! - **Paid orders without tickets** ([`TicketCheck`]): PAID orders still without tickets
//!   `JOB_RECONCILIATION_AFTER_MINUTES` after payment. ticket-service is asked for the
//!   order's tickets (`getTicketsForOrder`); the ones it lists are recorded with
//!   `RecordTickets`, matched to line items by `itemId`, or by `ticketTypeId` in line order.
//!   When it lists none, or none that fit, an alert is raised: a warning log and
//!   `job_alerts_total{job="reconciliation",kind=...}`. A 404 from ticket-service counts as
//!   "none"; any other failure to ask stops the run, and counts against the job's breaker.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use order_domain::commands::RecordTickets;
use order_domain::values::IssuedTicket;
use order_domain::{Order, OrderCommand};
use order_projections::feed::{self, Lag};
use order_projections::queries::{JobCandidate, JobScan};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{JobRun, Outcome, Sweep};
use crate::app::context::RequestContext;
use crate::app::error::{AppError, AppResult};
use crate::app::store::OrderStore;
use crate::clients::{propagation, ticket, ClientError, TicketClient};

/// The job's name and lock suffix.
pub const NAME: &str = "reconciliation";

/// One ticket as `getTicketsForOrder` lists it, with the fields that tie it to a line item.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedTicket {
    pub id: String,
    #[serde(default)]
    pub item_id: Option<Uuid>,
    #[serde(default)]
    pub ticket_type_id: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
struct ListedTickets {
    tickets: Vec<ListedTicket>,
}

/// Asks ticket-service about paid orders that have no tickets yet.
#[derive(Debug, Clone)]
pub struct TicketCheck {
    store: OrderStore,
    tickets: TicketClient,
    after: TimeDelta,
}

impl TicketCheck {
    /// Checks orders paid at least `after` before the run.
    pub fn new(store: OrderStore, tickets: TicketClient, after: TimeDelta) -> Self {
        Self {
            store,
            tickets,
            after,
        }
    }

    /// The order's tickets as ticket-service lists them (`getTicketsForOrder`, over the ticket
    /// client's signing, retries and breaker); a 404 is an empty list.
    async fn listed(&self, order_id: Uuid) -> Result<Vec<ListedTicket>, ClientError> {
        let target = format!("/internal/orders/{order_id}/tickets");
        match self
            .tickets
            .peer()
            .get_json::<ListedTickets>(ticket::GET_TICKETS_FOR_ORDER, &target)
            .await
        {
            Ok(list) => Ok(list.tickets),
            Err(e) if e.status() == Some(404) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Sweep for TicketCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(&self, now: DateTime<Utc>) -> JobScan {
        JobScan::WithoutTickets {
            paid_before: now
                .checked_sub_signed(self.after)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome> {
        let outgoing = RequestContext {
            request_id: run.run_id.to_string(),
            trace_id: run.run_id.simple().to_string(),
            traceparent: None,
            tenant_id: Some(order.tenant_id.clone()),
            user_id: None,
        };
        let listed = propagation::scope(outgoing, self.listed(order.order_id)).await?;
        if listed.is_empty() {
            return Ok(alert(
                "no_tickets",
                order,
                "ticket-service lists no tickets",
            ));
        }
        let loaded = self.store.load(order.order_id).await?;
        let Some(current) = loaded else {
            return Ok(Outcome::Refused);
        };
        let (issued, unmatched) = match_tickets(&current, &listed);
        if unmatched > 0 {
            alert(
                "unmatched_tickets",
                order,
                &format!("{unmatched} listed tickets fit no line item"),
            );
        }
        if issued.is_empty() {
            return Ok(if unmatched > 0 {
                Outcome::Alert
            } else {
                Outcome::Unchanged
            });
        }
        let now = run.now;
        let outcome = super::command(&self.store, NAME, run, order, || {
            OrderCommand::RecordTickets(RecordTickets {
                tickets: issued.clone(),
                now,
            })
        })
        .await?;
        Ok(match outcome {
            Outcome::Refused => alert(
                "tickets_refused",
                order,
                "the order refused the tickets ticket-service lists",
            ),
            other => other,
        })
    }
}

/// Raises an alert about a paid order without tickets.
fn alert(kind: &'static str, order: &JobCandidate, detail: &str) -> Outcome {
    metrics::counter!("job_alerts_total", "job" => NAME, "kind" => kind).increment(1);
    tracing::warn!(
        alert = kind,
        order.id = %order.order_id,
        tenant.id = %order.tenant_id,
        detail,
        "reconciliation: a paid order still has no tickets"
    );
    Outcome::Alert
}

/// Matches listed tickets to the order's line items: by `itemId` when it names one, else to
/// the first line of the same ticket type with room left. Returns the tickets to record and
/// how many fit nowhere. Tickets already recorded are left out.
pub fn match_tickets(order: &Order, listed: &[ListedTicket]) -> (Vec<IssuedTicket>, usize) {
    let mut room: BTreeMap<Uuid, u32> = order.items.iter().map(|i| (i.id, i.quantity)).collect();
    for t in &order.tickets {
        if let Some(left) = room.get_mut(&t.item_id) {
            *left = left.saturating_sub(1);
        }
    }
    let mut issued = Vec::new();
    let mut unmatched = 0;
    for t in listed {
        if t.id.trim().is_empty() || order.tickets.iter().any(|r| r.ticket_id == t.id) {
            continue;
        }
        if issued.iter().any(|i: &IssuedTicket| i.ticket_id == t.id) {
            continue;
        }
        let by_item = t
            .item_id
            .filter(|id| room.get(id).is_some_and(|left| *left > 0));
        let by_type = || {
            let ticket_type = t.ticket_type_id?;
            order
                .items
                .iter()
                .find(|i| {
                    i.ticket_type_id == ticket_type && room.get(&i.id).is_some_and(|l| *l > 0)
                })
                .map(|i| i.id)
        };
        match by_item.or_else(by_type) {
            Some(item_id) => {
                if let Some(left) = room.get_mut(&item_id) {
                    *left -= 1;
                }
                issued.push(IssuedTicket {
                    item_id,
                    ticket_id: t.id.clone(),
                });
            }
            None => unmatched += 1,
        }
    }
    (issued, unmatched)
}

/// How far the outbox relay is behind the feed, also set as the `relay_lag_events` and
/// `relay_lag_seconds` gauges.
///
/// # Errors
/// The feed could not be read.
pub async fn relay_lag(pool: &PgPool) -> AppResult<Lag> {
    let lag = feed::lag(pool, order_bus::relay::RELAY_CONSUMER)
        .await
        .map_err(AppError::from_read_side)?;
    #[allow(clippy::cast_precision_loss)] // a gauge; exact beyond 2^53 events is moot
    metrics::gauge!("relay_lag_events").set(lag.events_behind as f64);
    metrics::gauge!("relay_lag_seconds").set(lag.seconds_behind);
    Ok(lag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_domain::values::LineItem;

    fn order() -> Order {
        let item = |n: u128, t: u128, q| LineItem {
            id: Uuid::from_u128(n),
            ticket_type_id: Uuid::from_u128(t),
            quantity: q,
            unit_price_cents: 100,
        };
        Order {
            items: vec![item(1, 10, 2), item(2, 20, 1)],
            tickets: vec![IssuedTicket {
                item_id: Uuid::from_u128(1),
                ticket_id: "old".into(),
            }],
            ..Order::default()
        }
    }

    fn listed(id: &str, item: Option<u128>, ticket_type: Option<u128>) -> ListedTicket {
        ListedTicket {
            id: id.into(),
            item_id: item.map(Uuid::from_u128),
            ticket_type_id: ticket_type.map(Uuid::from_u128),
        }
    }

    #[test]
    fn tickets_match_by_item_then_by_type_within_the_room_left() {
        let (issued, unmatched) = match_tickets(
            &order(),
            &[
                listed("old", Some(1), None),
                listed("a", Some(1), None),
                listed("b", None, Some(20)),
                listed("c", None, Some(10)),
                listed("d", None, None),
                listed("a", Some(1), None),
            ],
        );
        assert_eq!(
            issued,
            vec![
                IssuedTicket {
                    item_id: Uuid::from_u128(1),
                    ticket_id: "a".into()
                },
                IssuedTicket {
                    item_id: Uuid::from_u128(2),
                    ticket_id: "b".into()
                },
            ]
        );
        // "c": its type's line is full; "d": nothing to match on.
        assert_eq!(unmatched, 2);
    }

    #[test]
    fn an_unknown_item_falls_back_to_the_ticket_type() {
        let (issued, unmatched) = match_tickets(&order(), &[listed("x", Some(99), Some(20))]);
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].item_id, Uuid::from_u128(2));
        assert_eq!(unmatched, 0);
    }
}
