//! The inbox: ids of inbound messages whose effect is recorded (table `inbox`).
//!
//! Checked before a message is handled and written after the handler succeeded. It catches
//! redeliveries and re-publishes of the same `id` under another `Nats-Msg-Id`, long after the
//! broker's duplicate window; rows are purged once older than the retention, which must stay
//! far longer than that window.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::family::Family;
use crate::error::BusError;

/// The inbox table.
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
}

impl Inbox {
    /// The inbox in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether the effect of message `id` of `family` is already recorded. Ids are unique per
    /// family only: they are the producers' own.
    ///
    /// # Errors
    /// [`BusError::Database`] when Postgres cannot answer (transient).
    pub async fn contains(&self, family: Family, id: &str) -> Result<bool, BusError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM inbox WHERE family = $1 AND message_id = $2")
                .bind(family.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Records message `id` as done, inside `tx` (with the release of its hold, if any).
    /// Recording twice is harmless.
    ///
    /// # Errors
    /// [`BusError::Database`] when the insert fails.
    pub async fn record(
        tx: &mut sqlx::PgConnection,
        family: Family,
        id: &str,
        subject: &str,
        order_id: Option<Uuid>,
        stream_sequence: u64,
    ) -> Result<(), BusError> {
        sqlx::query(
            "INSERT INTO inbox (family, message_id, subject, order_id, stream_sequence)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (family, message_id) DO NOTHING",
        )
        .bind(family.as_str())
        .bind(id)
        .bind(subject)
        .bind(order_id)
        .bind(i64::try_from(stream_sequence).unwrap_or(i64::MAX))
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Deletes ids processed more than `retention` ago; returns how many.
    ///
    /// # Errors
    /// [`BusError::Database`] when the delete fails.
    pub async fn purge_older_than(&self, retention: Duration) -> Result<u64, BusError> {
        let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "DELETE FROM inbox WHERE processed_at < now() - ($1::bigint * interval '1 second')",
        )
        .bind(secs)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
