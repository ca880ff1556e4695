//! Per-order holds (table `dlq_holds`): while a message of an order is parked, the order's
//! later messages are parked behind it, so that no effect is applied out of order; other
//! orders keep flowing.
//!
//! Holds are per family: a parked payment message holds the order's later payment messages, not
//! its tickets or disputes (families are consumed independently, so holding across them buys
//! no order). Rows parked before holds were per family have no family and hold every family.
//!
//! One row per parked message that names an order; an order is held while it has rows. Rows
//! are ordered by `position`, the message's place in the order's queue: a redriven message
//! that is parked again takes its predecessor row's place. The state lives in Postgres, not in
//! memory, so every replica and every restart sees the same holds.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::BusError;
use crate::inbound::Family;

/// One parked message of a held order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HoldRow {
    /// The message's sequence in the dead-letter stream, or a negative [`provisional_key`]
    /// while it is being parked.
    pub dlq_seq: i64,
    pub order_id: Uuid,
    /// The family it was consumed from; `None` for rows that hold every family.
    pub family: Option<String>,
    pub position: i64,
    /// Republished by a redrive and not handled yet.
    pub redriving: bool,
    pub error: String,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

impl HoldRow {
    /// The DLQ sequence as the broker counts it (0 for a reservation, see
    /// [`Holds::reserve`]).
    pub fn seq(&self) -> u64 {
        u64::try_from(self.dlq_seq).unwrap_or_default()
    }

    /// A reservation made before its message reached the dead-letter stream.
    pub fn is_reservation(&self) -> bool {
        self.dlq_seq < 0
    }
}

/// The holds of one dead-letter stream.
#[derive(Debug, Clone)]
pub struct Holds {
    pool: PgPool,
    dlq_stream: String,
}

fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The hold key of a message that is being parked but not yet in the dead-letter stream: the
/// negated stream sequence, which no DLQ sequence (always positive) can equal.
pub fn provisional_key(stream_sequence: u64) -> i64 {
    -db_seq(stream_sequence)
}

impl Holds {
    /// Holds recorded for parked messages of `dlq_stream`.
    pub fn new(pool: PgPool, dlq_stream: &str) -> Self {
        Self {
            pool,
            dlq_stream: dlq_stream.to_owned(),
        }
    }

    /// The pool the holds live in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The order's queue of parked messages that hold `family` (every family's with `None`),
    /// head first; empty when the order is not held.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn queue(
        &self,
        order_id: Uuid,
        family: Option<Family>,
    ) -> Result<Vec<HoldRow>, BusError> {
        Ok(sqlx::query_as::<_, HoldRow>(
            "SELECT dlq_seq, order_id, family, position, redriving, error, parked_at FROM dlq_holds
              WHERE dlq_stream = $1 AND order_id = $2
                AND ($3::text IS NULL OR family IS NULL OR family = $3)
              ORDER BY position, dlq_seq",
        )
        .bind(&self.dlq_stream)
        .bind(order_id)
        .bind(family.map(Family::as_str))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every held order's queue, orders by the age of their head.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn all(&self) -> Result<Vec<HoldRow>, BusError> {
        Ok(sqlx::query_as::<_, HoldRow>(
            "SELECT dlq_seq, order_id, family, position, redriving, error, parked_at FROM dlq_holds h
              WHERE dlq_stream = $1
              ORDER BY (SELECT min(position) FROM dlq_holds x
                         WHERE x.dlq_stream = h.dlq_stream AND x.order_id = h.order_id),
                       order_id, position, dlq_seq",
        )
        .bind(&self.dlq_stream)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The row of one parked message, if it holds an order.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn get(&self, dlq_seq: u64) -> Result<Option<HoldRow>, BusError> {
        Ok(sqlx::query_as::<_, HoldRow>(
            "SELECT dlq_seq, order_id, family, position, redriving, error, parked_at FROM dlq_holds
              WHERE dlq_stream = $1 AND dlq_seq = $2",
        )
        .bind(&self.dlq_stream)
        .bind(db_seq(dlq_seq))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Holds `order_id` for a message about to be parked, before it is published to the
    /// dead-letter stream: if the publish (or anything after it) fails, the order is already
    /// held, so its later messages cannot overtake this one while it is redelivered. The row's
    /// key is [`provisional_key`] of the message's stream sequence until [`Self::settle`] moves
    /// it to the DLQ sequence. With `replaces` (a hold key), the row takes the replaced row's
    /// place in the queue (a redriven message parked again); otherwise it joins the end.
    /// Repeating the call for the same message changes nothing but the error.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn reserve(
        &self,
        stream_sequence: u64,
        order_id: Uuid,
        family: Option<Family>,
        error: &str,
        replaces: Option<i64>,
    ) -> Result<(), BusError> {
        let key = provisional_key(stream_sequence);
        let mut tx = self.pool.begin().await?;
        let inherited: Option<i64> = match replaces {
            Some(old) if old != key => sqlx::query_scalar(
                "DELETE FROM dlq_holds WHERE dlq_stream = $1 AND dlq_seq = $2 RETURNING position",
            )
            .bind(&self.dlq_stream)
            .bind(old)
            .fetch_optional(&mut *tx)
            .await?,
            _ => None,
        };
        sqlx::query(
            "INSERT INTO dlq_holds (dlq_stream, dlq_seq, order_id, position, error, family)
             VALUES ($1, $2, $3, COALESCE($4, nextval('dlq_hold_position')), $5, $6)
             ON CONFLICT (dlq_stream, dlq_seq)
             DO UPDATE SET redriving = false, error = EXCLUDED.error",
        )
        .bind(&self.dlq_stream)
        .bind(key)
        .bind(order_id)
        .bind(inherited)
        .bind(error)
        .bind(family.map(Family::as_str))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves the row [`Self::reserve`] made to the message's DLQ sequence once the publish was
    /// acknowledged. When that row exists already (the same delivery parked twice, the second
    /// publish deduplicated by the broker), it keeps its place and the reservation goes.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn settle(&self, stream_sequence: u64, dlq_seq: u64) -> Result<(), BusError> {
        sqlx::query(
            "WITH reserved AS (
                 DELETE FROM dlq_holds WHERE dlq_stream = $1 AND dlq_seq = $2
                 RETURNING order_id, family, position, error, parked_at)
             INSERT INTO dlq_holds (dlq_stream, dlq_seq, order_id, family, position, error, parked_at)
             SELECT $1, $3, order_id, family, position, error, parked_at FROM reserved
             ON CONFLICT (dlq_stream, dlq_seq)
             DO UPDATE SET redriving = false, error = EXCLUDED.error",
        )
        .bind(&self.dlq_stream)
        .bind(provisional_key(stream_sequence))
        .bind(db_seq(dlq_seq))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Releases the row (by hold key) of a handled message, inside the caller's transaction.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn release(&self, conn: &mut PgConnection, key: i64) -> Result<(), BusError> {
        sqlx::query("DELETE FROM dlq_holds WHERE dlq_stream = $1 AND dlq_seq = $2")
            .bind(&self.dlq_stream)
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Drops reservations older than `age`: a message being parked comes back within its
    /// redelivery backoff, so a reservation that old belongs to a message whose deliveries ran
    /// out while parking kept failing, and would otherwise hold its order for good.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn purge_reservations_older_than(
        &self,
        age: std::time::Duration,
    ) -> Result<u64, BusError> {
        let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "DELETE FROM dlq_holds WHERE dlq_stream = $1 AND dlq_seq < 0
               AND parked_at < now() - ($2::bigint * interval '1 second')",
        )
        .bind(&self.dlq_stream)
        .bind(secs)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Drops a row whose message no longer exists in the dead-letter stream.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn forget(&self, dlq_seq: u64) -> Result<(), BusError> {
        sqlx::query("DELETE FROM dlq_holds WHERE dlq_stream = $1 AND dlq_seq = $2")
            .bind(&self.dlq_stream)
            .bind(db_seq(dlq_seq))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks every parked message of `order_id` as being redriven and returns the queue as it
    /// was before (head first), so the caller can tell rows already in flight.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn start_redrive(&self, order_id: Uuid) -> Result<Vec<HoldRow>, BusError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, HoldRow>(
            "SELECT dlq_seq, order_id, family, position, redriving, error, parked_at FROM dlq_holds
              WHERE dlq_stream = $1 AND order_id = $2 ORDER BY position, dlq_seq FOR UPDATE",
        )
        .bind(&self.dlq_stream)
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await?;
        // A reservation's message is not in the dead-letter stream yet: it is still being
        // redelivered from its own stream, so there is nothing to republish for it.
        sqlx::query(
            "UPDATE dlq_holds SET redriving = true
              WHERE dlq_stream = $1 AND order_id = $2 AND dlq_seq > 0",
        )
        .bind(&self.dlq_stream)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }
}
