//! The `orders` projector: keeps `order_read` and `order_item_read` (migration 0101) in step
//! with the feed, and rebuilds them from scratch.
//!
//! Projection logic stays minimal: every value comes from the event's payload (events carry
//! what views need), so the rows depend on the events alone and a rebuild yields exactly the
//! live rows. Each update is guarded by the row's `last_sequence`, so an event applied twice
//! (a batch retried after a crash, a replay over existing rows) changes nothing.

pub(crate) mod params;
pub mod writer;

use chrono::{DateTime, Utc};
use order_domain::events::{OrderCreated, TicketsIssued};
use order_domain::{OrderEvent, OrderStatus};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::checkpoint;
use crate::copies::TableSet;
use crate::error::ProjectionError;
use crate::feed::{DecodedEvent, FeedEvent};
use crate::runner::{lock_key, ProjectionRunner, Projector};

/// The projection's name: its checkpoint and its advisory-lock key.
pub const ORDERS_PROJECTION: &str = "orders";

/// Builds the order read models. Stateless: all state lives in the tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjector;

impl Projector for OrdersProjector {
    fn name(&self) -> &str {
        ORDERS_PROJECTION
    }

    /// The batch written by [`writer`] (which replay runs too): the batch's orders read once,
    /// folded in memory and written with one upsert per table, so that the
    /// transaction holds the feed's fence for a few statements rather than two per event. (A
    /// projector catching up on 500 events held it for up to 0.7 s, and the relay with it.)
    /// The replay tests compare this path with [`Projector::apply`], row for row.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), ProjectionError> {
        writer::apply_batch(conn, TableSet::Live, &decode_batch(events)?, None, None).await?;
        Ok(())
    }

    /// [`Self::apply_batch`] with the checkpoint and the commit in the same simple query, the
    /// rows written in as literals (the `params` module).
    async fn apply_batch_and_commit(
        &self,
        conn: &mut PgConnection,
        events: &[FeedEvent],
        commit: &str,
    ) -> Result<bool, ProjectionError> {
        writer::apply_live_batch_and_commit(conn, &decode_batch(events)?, commit).await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &FeedEvent,
    ) -> Result<(), ProjectionError> {
        let order_id = order_id_of(event)?;
        match event.decode()? {
            OrderEvent::OrderCreated(created) => insert_order(conn, &created, event.sequence).await,
            other => {
                let applied =
                    update_order(conn, order_id, event.sequence, &change_of(&other)).await?;
                if !applied {
                    // Already applied (a retried batch), or an order whose creation this
                    // projection never saw; either way there is nothing to change.
                    tracing::debug!(order.id = %order_id, event.sequence = event.sequence, "event skipped: row already at or past it");
                    return Ok(());
                }
                if let OrderEvent::TicketsIssued(issued) = &other {
                    add_tickets(conn, order_id, issued).await?;
                }
                if let OrderEvent::OrderArchived(_) = &other {
                    move_to_archive(conn, order_id).await?;
                }
                Ok(())
            }
        }
    }
}

/// The order an event belongs to; a handler error for an aggregate id that is not a UUID.
fn order_id_of(event: &FeedEvent) -> Result<Uuid, ProjectionError> {
    event.order_id().ok_or_else(|| {
        ProjectionError::Handler(format!(
            "order event {}#{} has an aggregate id that is not a UUID",
            event.aggregate_id, event.sequence
        ))
    })
}

/// The batch's events decoded for the batched writer.
fn decode_batch(events: &[FeedEvent]) -> Result<Vec<DecodedEvent>, ProjectionError> {
    events
        .iter()
        .map(|event| {
            Ok(DecodedEvent {
                position: event.position,
                order_id: order_id_of(event)?,
                sequence: event.sequence,
                event: event.decode()?,
            })
        })
        .collect()
}

/// What one event (other than `OrderCreated`) changes on the order row; `None` keeps the value.
/// Shared with the batched [`writer`], so both paths derive rows from events through this one
/// mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) status: Option<OrderStatus>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) payment_intent_id: Option<String>,
    pub(crate) paid_at: Option<DateTime<Utc>>,
    pub(crate) refunded_cents: Option<i64>,
    pub(crate) refunds_locked: Option<bool>,
    pub(crate) tickets_added: i32,
    pub(crate) archived: bool,
}

/// Mirrors [`order_domain::Order::apply`] for the fields the read model keeps.
pub(crate) fn change_of(event: &OrderEvent) -> Change {
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

async fn insert_order(
    conn: &mut PgConnection,
    e: &OrderCreated,
    sequence: i64,
) -> Result<(), ProjectionError> {
    let item_count = i32::try_from(e.items.len()).unwrap_or(i32::MAX);
    let inserted = sqlx::query(
        "INSERT INTO order_read (order_id, order_number, tenant_id, user_id, event_id, status,
                                 subtotal_cents, fees_cents, tax_cents, total_cents, currency,
                                 expires_at, event_starts_at, created_at, updated_at,
                                 item_count, last_sequence)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(e.order_id)
    .bind(&e.order_number)
    .bind(&e.tenant_id)
    .bind(&e.user_id)
    .bind(e.event_id)
    .bind(OrderStatus::Pending.as_str())
    .bind(e.subtotal_cents)
    .bind(e.fees_cents)
    .bind(e.tax_cents)
    .bind(e.total_cents)
    .bind(e.currency.as_str())
    .bind(e.expires_at)
    .bind(e.event_starts_at)
    .bind(e.created_at)
    .bind(item_count)
    .bind(sequence)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(e.items.len());
    let mut types = Vec::with_capacity(e.items.len());
    let mut quantities = Vec::with_capacity(e.items.len());
    let mut prices = Vec::with_capacity(e.items.len());
    for item in &e.items {
        ids.push(item.id);
        types.push(item.ticket_type_id);
        quantities.push(i32::try_from(item.quantity).unwrap_or(i32::MAX));
        prices.push(item.unit_price_cents);
    }
    sqlx::query(
        "INSERT INTO order_item_read (order_id, item_id, position, ticket_type_id, quantity, unit_price_cents)
         SELECT $1, u.item_id, (u.ord - 1)::int, u.ticket_type_id, u.quantity, u.unit_price_cents
           FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::bigint[])
                WITH ORDINALITY AS u(item_id, ticket_type_id, quantity, unit_price_cents, ord)
         ON CONFLICT (order_id, item_id) DO NOTHING",
    )
    .bind(e.order_id)
    .bind(ids)
    .bind(types)
    .bind(quantities)
    .bind(prices)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies a change if the row has not seen this sequence yet; `false` when it had.
async fn update_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    sequence: i64,
    c: &Change,
) -> Result<bool, ProjectionError> {
    let updated = sqlx::query(
        "UPDATE order_read
            SET last_sequence = $2,
                updated_at = $3,
                status = COALESCE($4, status),
                expires_at = COALESCE($5, expires_at),
                payment_intent_id = COALESCE($6, payment_intent_id),
                paid_at = COALESCE($7, paid_at),
                refunded_cents = COALESCE($8, refunded_cents),
                refunds_locked = COALESCE($9, refunds_locked),
                ticket_count = ticket_count + $10,
                archived = archived OR $11
          WHERE order_id = $1 AND last_sequence < $2",
    )
    .bind(order_id)
    .bind(sequence)
    .bind(c.occurred_at)
    .bind(c.status.map(OrderStatus::as_str))
    .bind(c.expires_at)
    .bind(c.payment_intent_id.as_deref())
    .bind(c.paid_at)
    .bind(c.refunded_cents)
    .bind(c.refunds_locked)
    .bind(c.tickets_added)
    .bind(c.archived)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Appends the new tickets to their items, in the order the event lists them. Runs only after
/// the guarded order update succeeded, so a replayed event never appends twice.
async fn add_tickets(
    conn: &mut PgConnection,
    order_id: Uuid,
    issued: &TicketsIssued,
) -> Result<(), ProjectionError> {
    let (items, tickets): (Vec<Uuid>, Vec<String>) = issued
        .tickets
        .iter()
        .map(|t| (t.item_id, t.ticket_id.clone()))
        .unzip();
    sqlx::query(
        "UPDATE order_item_read i
            SET ticket_ids = i.ticket_ids || t.ids
           FROM (SELECT item_id, array_agg(ticket_id ORDER BY ord) AS ids
                   FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS u(item_id, ticket_id, ord)
                  GROUP BY item_id) t
          WHERE i.order_id = $1 AND i.item_id = t.item_id",
    )
    .bind(order_id)
    .bind(items)
    .bind(tickets)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves an archived order's rows out of the hot tables into the archive tables (migration
/// 0500), which the by-id queries also read. Runs only after the guarded update applied
/// `OrderArchived`, and an archived order takes no further events, so the rows move once; a
/// replay over existing rows finds the archive rows in place and leaves them.
async fn move_to_archive(conn: &mut PgConnection, order_id: Uuid) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO order_read_archive SELECT * FROM order_read WHERE order_id = $1
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO order_item_read_archive SELECT * FROM order_item_read WHERE order_id = $1
         ON CONFLICT (order_id, item_id) DO NOTHING",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    // The items go with the order (ON DELETE CASCADE).
    sqlx::query("DELETE FROM order_read WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
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
    use order_domain::events::{DisputeClosed, OrderConfirmed, OrderRefunded};
    use order_domain::values::{DisputeOutcome, IssuedTicket};

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
