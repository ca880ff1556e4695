//! The `orders` projector one event at a time: the reference the batched writer
//! (`order_projections::orders::writer`, which the service and replay run) is checked against.
//! A statement or two per event, straight from the event, with the same [`change_of`] mapping
//! and the same `last_sequence` guard; the replay tests build the live tables with it and
//! compare every rebuild with them row for row.

use order_domain::events::{OrderCreated, TicketsIssued};
use order_domain::{OrderEvent, OrderStatus};
use order_projections::orders::{change_of, Change};
use order_projections::{FeedEvent, ProjectionError, Projector, ORDERS_PROJECTION};
use sqlx::PgConnection;
use uuid::Uuid;

/// The `orders` projection applied one event at a time, under the live projector's name
/// (checkpoint and lock), so that it builds the live tables in its place.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerEvent;

impl Projector for PerEvent {
    type Event = FeedEvent;

    fn name(&self) -> &str {
        ORDERS_PROJECTION
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            apply(&mut *conn, event).await?;
        }
        Ok(())
    }
}

/// Applies one event to the live order tables.
///
/// # Errors
/// [`ProjectionError`] when the event does not decode or a statement fails.
pub async fn apply(conn: &mut PgConnection, event: &FeedEvent) -> Result<(), ProjectionError> {
    let order_id = event.order_id().ok_or_else(|| {
        ProjectionError::Handler(format!(
            "order event {}#{} has an aggregate id that is not a UUID",
            event.aggregate_id, event.sequence
        ))
    })?;
    match event.decode()? {
        OrderEvent::OrderCreated(created) => insert_order(conn, &created, event.sequence).await,
        other => {
            let applied = update_order(conn, order_id, event.sequence, &change_of(&other)).await?;
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
