//! Replay protection shared by every replica: the `auth_nonces` table
//! (`migrations/0002_auth_nonces.sql`). Recording is the atomic check, so two replicas receiving
//! the same request at once cannot both accept it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Longest nonce (or hmac-v2 replay key) stored; longer values are refused without a query, so
/// a caller cannot grow the table's rows or index at will.
pub const MAX_NONCE_LEN: usize = 128;

/// Rows deleted per statement by [`NonceStore::purge_expired`], so a purge never holds long
/// locks or builds one huge transaction.
const PURGE_BATCH: i64 = 5_000;

/// The nonces (hmac-v1) and signatures (hmac-v2) already accepted, per service, until they
/// expire. Cheap to clone (it holds the pool).
#[derive(Debug, Clone)]
pub struct NonceStore {
    pool: PgPool,
}

impl NonceStore {
    /// A store over the service's pool; the table comes from the migrations.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records `nonce` for `service` until `expires_at`. `Ok(true)` means first use;
    /// `Ok(false)` means a replay, or a nonce that is empty or longer than [`MAX_NONCE_LEN`]
    /// (refused without touching the database).
    ///
    /// # Errors
    /// The database failed; the request must then be refused, not let through.
    #[tracing::instrument(name = "auth.nonce.record", skip_all, fields(auth.service = %service))]
    pub async fn record(
        &self,
        service: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        if nonce.is_empty() || nonce.chars().count() > MAX_NONCE_LEN {
            return Ok(false);
        }
        // One round trip, committed without waiting for the WAL flush (`synchronous_commit`
        // off for this statement's own transaction only). That is safe where it matters:
        // - the atomic check is unchanged; the row is visible to every replica on commit;
        // - a write request appends its events after this, and their synchronous commit flushes
        //   the WAL up to and past this row, so no acknowledged write can be replayed after a
        //   crash;
        // - at worst a crash loses the last few hundred ms of nonces of read requests, whose
        //   replay within the timestamp window returns data the caller was already sent.
        // Waiting for the flush doubled the fsyncs per command and was most of a read's latency.
        let result = sqlx::query(
            "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
             INSERT INTO auth_nonces (service, nonce, expires_at)
             SELECT $1, $2, $3 FROM async_commit
             ON CONFLICT (service, nonce) DO NOTHING",
        )
        .bind(service)
        .bind(nonce)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes expired rows in batches and returns how many went. Meant for a periodic job; the
    /// table only needs rows whose timestamp could still pass the window.
    ///
    /// # Errors
    /// The database failed; rows deleted by earlier batches stay deleted.
    #[tracing::instrument(name = "auth.nonce.purge", skip_all)]
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM auth_nonces WHERE ctid IN \
                 (SELECT ctid FROM auth_nonces WHERE expires_at < now() LIMIT $1)",
            )
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += deleted;
            if deleted < PURGE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[sqlx::test(migrations = "../migrations")]
    async fn first_use_wins_and_replays_lose(pool: PgPool) {
        let store = NonceStore::new(pool);
        let later = Utc::now() + Duration::minutes(5);
        assert!(store.record("payment-service", "n1", later).await.unwrap());
        assert!(!store.record("payment-service", "n1", later).await.unwrap());
        // Nonces are per service.
        assert!(store.record("ticket-service", "n1", later).await.unwrap());
        assert!(!store.record("payment-service", "", later).await.unwrap());
        let long = "a".repeat(MAX_NONCE_LEN + 1);
        assert!(!store.record("payment-service", &long, later).await.unwrap());
        let max = "a".repeat(MAX_NONCE_LEN);
        assert!(store.record("payment-service", &max, later).await.unwrap());
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn concurrent_records_accept_exactly_one(pool: PgPool) {
        let store = NonceStore::new(pool);
        let later = Utc::now() + Duration::minutes(5);
        let attempts = (0..8).map(|_| store.record("payment-service", "race", later));
        let results = futures::future::join_all(attempts).await;
        let accepted = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(accepted, 1);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn purge_removes_only_expired_rows(pool: PgPool) {
        let store = NonceStore::new(pool.clone());
        let past = Utc::now() - Duration::seconds(1);
        let later = Utc::now() + Duration::minutes(5);
        assert!(store.record("payment-service", "old", past).await.unwrap());
        assert!(store.record("payment-service", "new", later).await.unwrap());
        assert_eq!(store.purge_expired().await.unwrap(), 1);
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 1);
        assert!(!store.record("payment-service", "new", later).await.unwrap());
    }
}
