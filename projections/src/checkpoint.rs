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

/// The upsert after its first line, shared by both forms below so they cannot drift apart.
macro_rules! save_tail {
    () => {
        " ON CONFLICT (consumer) DO UPDATE
            SET transaction_id = EXCLUDED.transaction_id,
                global_position = EXCLUDED.global_position,
                events_total = feed_checkpoints.events_total + EXCLUDED.events_total,
                updated_at = now()"
    };
}

/// The relaxed upsert's first lines, up to its values (see [`SAVE_RELAXED_SQL`]).
macro_rules! relaxed_head {
    () => {
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
     INSERT INTO feed_checkpoints (consumer, transaction_id, global_position, events_total, updated_at)"
    };
}

const SAVE_SQL: &str = concat!(
    "INSERT INTO feed_checkpoints (consumer, transaction_id, global_position, events_total, updated_at)
     VALUES ($1, $2::text::xid8, $3, $4, now())",
    save_tail!()
);

/// [`SAVE_SQL`] that also turns `synchronous_commit` off until the end of its transaction: a
/// CTE, so that it costs no extra round trip.
const SAVE_RELAXED_SQL: &str = concat!(
    relaxed_head!(),
    " SELECT $1, $2::text::xid8, $3, $4, now() FROM relaxed",
    save_tail!()
);

/// Moves a reader's checkpoint forward to `position`, counting `events` more done.
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn save<'e>(
    executor: impl PgExecutor<'e>,
    consumer: &str,
    position: FeedPosition,
    events: u64,
) -> Result<(), ProjectionError> {
    save_with(executor, consumer, position, events, Durability::Flushed).await
}

/// [`save`], choosing how the enclosing transaction commits (see [`Durability`]).
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn save_with<'e>(
    executor: impl PgExecutor<'e>,
    consumer: &str,
    position: FeedPosition,
    events: u64,
    durability: Durability,
) -> Result<(), ProjectionError> {
    let sql = match durability {
        Durability::Flushed => SAVE_SQL,
        Durability::Relaxed => SAVE_RELAXED_SQL,
    };
    sqlx::query(sql)
        .bind(consumer)
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .execute(executor)
        .await?;
    Ok(())
}

/// Saves a projector's checkpoint ([`Durability::Relaxed`]) and commits the transaction open
/// on `tx` (a `Transaction`'s connection), in one round trip, leaving it in a new, empty
/// transaction for the `Transaction`'s own commit.
///
/// Why: a transaction that writes holds the feed's fence (see [`crate::feed`]) from its first
/// write until its commit, so every reader of the feed, the relay included, waits for events
/// committed meanwhile. Sampling `pg_stat_activity` under `just bench`'s create load showed the
/// projector's transaction as the fence's holder, "idle in transaction" after its checkpoint
/// statement for 11 ms at the median and 37 ms at p90: the wait for the service to send
/// `COMMIT`. Sent with the checkpoint as one simple query ([`save_and_commit_sql`]), the
/// commit follows the checkpoint at once. A name that cannot go into that query is saved
/// with a bound parameter and commits with `tx` as before.
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails (the transaction is then aborted,
/// and rolls back when `tx` is dropped).
pub async fn save_and_commit(
    tx: &mut sqlx::PgConnection,
    consumer: &str,
    position: FeedPosition,
    events: u64,
) -> Result<(), ProjectionError> {
    let Some(sql) = save_and_commit_sql(consumer, position, events) else {
        return save_with(&mut *tx, consumer, position, events, Durability::Relaxed).await;
    };
    // A query without arguments goes as one simple query, several statements included.
    sqlx::Executor::execute(&mut *tx, sql.as_str()).await?;
    Ok(())
}

/// The statements [`save_and_commit`] sends: the relaxed checkpoint, `COMMIT`, `BEGIN`, for a
/// projector to send right after its own writes in the same simple query (see
/// [`crate::Projector::apply_batch_and_commit`]). The values go into the text as literals, so
/// only plain consumer names (ASCII letters, digits, `_`, `-`, `.`, `:`) have one; `None` for
/// any other.
pub fn save_and_commit_sql(consumer: &str, position: FeedPosition, events: u64) -> Option<String> {
    let plain = !consumer.is_empty()
        && consumer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    plain.then(|| {
        format!(
            concat!(
                relaxed_head!(),
                " SELECT '{}', '{}'::xid8, {}, {}, now() FROM relaxed",
                save_tail!(),
                "; COMMIT; BEGIN"
            ),
            consumer,
            position.transaction_id,
            position.global_position,
            i64::try_from(events).unwrap_or(i64::MAX),
        )
    })
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
