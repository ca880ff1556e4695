//! The `orders` projector: keeps `order_read` and `order_item_read` (migration 0101) in step
//! with the feed, and rebuilds them from scratch.
//!
//! Projection logic stays minimal: every value comes from the event's payload (events carry
//! what views need), so the rows depend on the events alone and a rebuild yields exactly the
//! live rows. Each update is guarded by the row's `last_sequence`, so an event applied twice
//! (a batch retried after a crash, a replay over existing rows) changes nothing.

pub mod writer;

use chrono::{DateTime, Utc};
use order_domain::{OrderEvent, OrderStatus};
use sqlx::{PgConnection, PgPool};

use crate::checkpoint;
use crate::copies::TableSet;
use crate::error::ProjectionError;
use crate::feed::DecodedEvent;
use crate::runner::{lock_key, ProjectionRunner, Projector};

/// The projection's name: its checkpoint and its advisory-lock key.
pub const ORDERS_PROJECTION: &str = "orders";

/// Builds the order read models. Stateless: all state lives in the tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjector;

impl Projector for OrdersProjector {
    /// Decoded straight from the stored text: the rows need the domain event and nothing else.
    type Event = DecodedEvent;

    fn name(&self) -> &str {
        ORDERS_PROJECTION
    }

    /// The batch written by [`writer`] (which replay runs too): the batch's orders read once,
    /// folded in memory and written with one upsert per table, so that the transaction holds
    /// the feed's fence for a few statements rather than two per event. (A projector catching
    /// up on 500 events held it for up to 0.7 s, and the relay with it.)
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[DecodedEvent],
    ) -> Result<(), ProjectionError> {
        writer::apply_batch(conn, TableSet::Live, events, None).await?;
        Ok(())
    }
}

/// What one event (other than `OrderCreated`) changes on the order row; `None` keeps the value.
/// Public for the per-event reference the tests check the batched [`writer`] against, so that
/// both derive rows from events through this one mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The event's time: the row's `updated_at`.
    pub occurred_at: DateTime<Utc>,
    pub status: Option<OrderStatus>,
    pub expires_at: Option<DateTime<Utc>>,
    pub payment_intent_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    /// The running total refunded (not this refund's amount).
    pub refunded_cents: Option<i64>,
    pub refunds_locked: Option<bool>,
    /// Tickets to add to `ticket_count`.
    pub tickets_added: i32,
    /// `OrderArchived`: the rows move to the archive tables.
    pub archived: bool,
}

/// Mirrors [`order_domain::Order::apply`] for the fields the read model keeps.
pub fn change_of(event: &OrderEvent) -> Change {
    let mut c = Change {
        occurred_at: event.occurred_at(),
        ..Change::default()
    };
    match event {
        OrderEvent::OrderReserved(e) => {
            c.status = Some(OrderStatus::Reserved);
            c.expires_at = Some(e.expires_at);
        }
        OrderEvent::OrderConfirmed(e) => {
            c.status = Some(OrderStatus::Paid);
            c.payment_intent_id = Some(e.payment_intent_id.clone());
            c.paid_at = Some(e.occurred_at);
        }
        OrderEvent::OrderCancelled(_) => c.status = Some(OrderStatus::Cancelled),
        OrderEvent::OrderExpired(_) => c.status = Some(OrderStatus::Expired),
        OrderEvent::OrderFailed(_) => c.status = Some(OrderStatus::Failed),
        OrderEvent::OrderRefunded(e) => {
            c.refunded_cents = Some(e.refunded_total_cents);
            c.status = Some(if e.full {
                OrderStatus::Refunded
            } else {
                OrderStatus::PartiallyRefunded
            });
        }
        OrderEvent::DisputeOpened(_) => c.refunds_locked = Some(true),
        OrderEvent::DisputeClosed(e) => c.refunds_locked = Some(e.refunds_locked),
        OrderEvent::TicketsIssued(e) => {
            c.tickets_added = i32::try_from(e.tickets.len()).unwrap_or(i32::MAX);
        }
        OrderEvent::OrderArchived(_) => c.archived = true,
        // These only move the version and the update time: the read model keeps no reminder
        // flags, failed intents, refund requests or dispute statuses.
        OrderEvent::PaymentFailed(_)
        | OrderEvent::DisputeUpdated(_)
        | OrderEvent::RefundRequested(_)
        | OrderEvent::RefundFailed(_)
        | OrderEvent::PaymentRejected(_)
        | OrderEvent::PaymentReturned(_)
        | OrderEvent::PaymentReturnFailed(_)
        | OrderEvent::ReminderSent(_)
        | OrderEvent::EventReminderSent(_)
        | OrderEvent::OrderCreated(_) => {}
    }
    c
}

/// Empties the order read models and forgets the projection's checkpoint, under the
/// projection's lock, so the next batch starts again from the first event.
///
/// The lock waits for a batch in flight on another replica, and that replica's next batch
/// sees the reset checkpoint, so the two can never interleave old and new rows.
///
/// # Errors
/// [`ProjectionError::Database`] when a statement fails; nothing is reset then.
pub async fn reset(pool: &PgPool) -> Result<(), ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(lock_key(ORDERS_PROJECTION))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "TRUNCATE order_item_read, order_read, order_item_read_archive, order_read_archive",
    )
    .execute(&mut *tx)
    .await?;
    checkpoint::reset(&mut *tx, ORDERS_PROJECTION).await?;
    tx.commit().await?;
    Ok(())
}

/// Rebuilds the order read models from the first event: [`reset`], then applies the whole feed
/// in batches of `batch_size`. Returns the number of events applied by this call.
///
/// Queries see partial rows while it runs; the replay command is expected to build into fresh
/// tables and swap if that matters.
///
/// # Errors
/// The first failing statement or batch; a batch that failed is rolled back, so running it
/// again carries on from the last committed batch.
pub async fn rebuild(pool: &PgPool, batch_size: i64) -> Result<usize, ProjectionError> {
    reset(pool).await?;
    ProjectionRunner::new(pool.clone(), OrdersProjector, batch_size)
        .catch_up()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_domain::events::{DisputeClosed, OrderConfirmed, OrderRefunded, TicketsIssued};
    use order_domain::values::{DisputeOutcome, IssuedTicket};
    use uuid::Uuid;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + min * 60, 0).unwrap_or_default()
    }

    #[test]
    fn confirmation_sets_status_intent_and_paid_time() {
        let c = change_of(&OrderEvent::OrderConfirmed(OrderConfirmed {
            payment_intent_id: "pi_1".into(),
            amount_cents: 100,
            occurred_at: at(3),
        }));
        assert_eq!(c.status, Some(OrderStatus::Paid));
        assert_eq!(c.payment_intent_id.as_deref(), Some("pi_1"));
        assert_eq!(c.paid_at, Some(at(3)));
        assert_eq!(c.occurred_at, at(3));
    }

    #[test]
    fn refunds_carry_the_running_total_and_the_full_flag() {
        let partial = change_of(&OrderEvent::OrderRefunded(OrderRefunded {
            refund_id: Uuid::nil(),
            amount_cents: 10,
            refunded_total_cents: 30,
            full: false,
            occurred_at: at(1),
        }));
        assert_eq!(partial.refunded_cents, Some(30));
        assert_eq!(partial.status, Some(OrderStatus::PartiallyRefunded));
    }

    #[test]
    fn dispute_close_takes_the_lock_from_the_event() {
        let c = change_of(&OrderEvent::DisputeClosed(DisputeClosed {
            dispute_id: "dp_1".into(),
            outcome: DisputeOutcome::Lost,
            refunds_locked: true,
            occurred_at: at(1),
        }));
        assert_eq!(c.refunds_locked, Some(true));
        assert_eq!(c.status, None);
    }

    #[test]
    fn tickets_count_the_new_tickets_only() {
        let c = change_of(&OrderEvent::TicketsIssued(TicketsIssued {
            tickets: vec![
                IssuedTicket {
                    item_id: Uuid::nil(),
                    ticket_id: "t1".into(),
                },
                IssuedTicket {
                    item_id: Uuid::nil(),
                    ticket_id: "t2".into(),
                },
            ],
            ticket_count: 2,
            occurred_at: at(1),
        }));
        assert_eq!(c.tickets_added, 2);
    }
}
