//! Per-reader checkpoints in `feed_checkpoints`.
//!
//! A reader that writes to Postgres (a projector) saves its checkpoint in the same transaction as
//! its writes, so a crash between the two cannot happen. A reader that writes elsewhere (the
//! relay to NATS) saves it only after the other side acknowledged, so a crash repeats work and
//! never skips it; the other side deduplicates.

use sqlx::{PgExecutor, Row};

use crate::error::ProjectionError;
use crate::feed::FeedPosition;

/// Reads a reader's checkpoint; the start of the feed if it has none.
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails.
pub async fn load<'e>(
    executor: impl PgExecutor<'e>,
    consumer: &str,
) -> Result<FeedPosition, ProjectionError> {
    let row = sqlx::query(
        "SELECT transaction_id::text AS txid, global_position FROM feed_checkpoints WHERE consumer = $1",
    )
    .bind(consumer)
    .fetch_optional(executor)
    .await?;
    row.map_or(Ok(FeedPosition::default()), |r| {
        let txid: String = r.try_get("txid")?;
        Ok(FeedPosition {
            transaction_id: txid.parse().unwrap_or_default(),
            global_position: r.try_get("global_position")?,
        })
    })
}

/// How a checkpoint's transaction waits for its commit to reach disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Wait for the WAL flush, as every transaction does by default.
    Flushed,
    /// Commit without waiting for the flush (`synchronous_commit` off for this transaction
    /// only). For readers whose work is repeatable: a crash can lose the last few hundred ms
    /// of their commits, but it loses the checkpoint and the work it covers together (same
    /// transaction), or only a checkpoint after an acknowledged publish, which the broker
    /// deduplicates when it is sent again. It saves a disk flush per batch, which was most
    /// of the projector's and relay's per-batch latency. Never for a step an operator is
    /// told is done (a replay's swap).
    Relaxed,
}

/// The upsert, with `synchronous_commit` set for the rest of its transaction in a CTE (no
/// extra round trip): `off` when `$5` is true ([`Durability::Relaxed`]), else left as it is.
const SAVE_SQL: &str = "WITH durability AS (
         SELECT set_config('synchronous_commit',
                           CASE WHEN $5 THEN 'off' ELSE current_setting('synchronous_commit') END,
                           true))
     INSERT INTO feed_checkpoints (consumer, transaction_id, global_position, events_total, updated_at)
     SELECT $1, $2::text::xid8, $3, $4, now() FROM durability
     ON CONFLICT (consumer) DO UPDATE
        SET transaction_id = EXCLUDED.transaction_id,
            global_position = EXCLUDED.global_position,
            events_total = feed_checkpoints.events_total + EXCLUDED.events_total,
            updated_at = now()";

/// Moves a reader's checkpoint forward to `position`, counting `events` more done, and sets
/// how the enclosing transaction commits (see [`Durability`]).
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails (the enclosing transaction is then
/// aborted, and its other writes roll back with it).
pub async fn save<'e>(
    executor: impl PgExecutor<'e>,
    consumer: &str,
    position: FeedPosition,
    events: u64,
    durability: Durability,
) -> Result<(), ProjectionError> {
    sqlx::query(SAVE_SQL)
        .bind(consumer)
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .bind(durability == Durability::Relaxed)
        .execute(executor)
        .await?;
    Ok(())
}

/// Removes a reader's checkpoint, so it starts again from the beginning of the feed.
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn reset<'e>(
    executor: impl PgExecutor<'e>,
    consumer: &str,
) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM feed_checkpoints WHERE consumer = $1")
        .bind(consumer)
        .execute(executor)
        .await?;
    Ok(())
}
