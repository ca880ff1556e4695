//! Replay protection shared by every replica: the `auth_nonces` table
//! (`migrations/0002_auth_nonces.sql`). Recording is the atomic check, so two replicas receiving
//! the same request at once cannot both accept it.
//!
//! Every signed request records one nonce, so under load this is one write transaction per
//! request. Concurrent records are therefore batched ([`order_projections::postgres::batch`]): whatever records are
//! waiting go in one statement (`unnest` … `ON CONFLICT DO NOTHING RETURNING`), one statement
//! at a time; while it runs, the next records queue up and become the next batch.
//! (More statements in flight measured slower: with `just bench quick B8` on 2 cores, signed
//! no-database requests/s with 1, 2, 4 and 16 in flight were 12.6k, 11.4k, 9.4k and 6.7k, as
//! each statement in flight holds a pool connection that the requests' own reads then wait
//! for, while one statement of up to `MAX_BATCH` rows takes about 0.35 ms.) Alone, a record is still one statement, so nothing waits for a batch
//! to fill. Postgres stays the arbiter: a key is first use only if this statement's
//! insert returned it, and a key that appears twice in one batch is first use at most once.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use order_projections::postgres::batch::{self, BatchFuture, Batcher};
use order_projections::postgres::HeldConnection;
use sqlx::PgPool;

/// Longest nonce (or hmac-v2 replay key) stored; longer values are refused without a query, so
/// a caller cannot grow the table's rows or index at will.
pub const MAX_NONCE_LEN: usize = 128;

/// How long past its expiry a record is kept. Expiry is the request's timestamp plus the
/// window, by the replica's clock that checked it, while the purge compares it with the
/// database's clock: a replica whose clock runs behind the database's still accepts the
/// timestamp after the database's clock has passed the expiry, and without this margin the
/// record would be gone by then, opening a replay. Clock skew beyond the margin is an outage to
/// fix, not a case to tolerate.
pub const PURGE_MARGIN: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Rows deleted per statement by [`NonceStore::purge_expired`], so a purge never holds long
/// locks or builds one huge transaction.
const PURGE_BATCH: i64 = 5_000;

/// Most records inserted by one statement.
const MAX_BATCH: usize = 256;

/// Whether a key may be stored at all: not empty, and at most [`MAX_NONCE_LEN`] characters.
/// Any other key is refused as a replay, without a query.
pub(crate) fn storable(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.chars().count() <= MAX_NONCE_LEN
}

/// One record for a batch.
#[derive(Debug)]
struct Record {
    service: String,
    nonce: String,
    expires_at: DateTime<Utc>,
}

/// The nonces (hmac-v1) and signatures (hmac-v2) already accepted, per service, until they
/// expire. Cheap to clone (clones share the pool and the batcher).
#[derive(Debug, Clone)]
pub struct NonceStore {
    pool: PgPool,
    batcher: Batcher<Record, Result<bool, sqlx::Error>>,
}

impl NonceStore {
    /// A store over the service's pool; the table comes from the migrations.
    pub fn new(pool: PgPool) -> Self {
        let (batch_pool, held) = (pool.clone(), HeldConnection::new(pool.clone()));
        let (idle, release) = batch::idle_hook(&held);
        let batcher = Batcher::new(MAX_BATCH, "auth_nonce_batch_size", move |records| {
            Box::pin(record_batch(batch_pool.clone(), held.clone(), records)) as BatchFuture<_>
        })
        .on_idle(idle, release);
        Self { pool, batcher }
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
        if !storable(nonce) {
            return Ok(false);
        }
        let record = Record {
            service: service.to_owned(),
            nonce: nonce.to_owned(),
            expires_at,
        };
        match self.batcher.submit(record).await {
            Some(answer) => answer,
            // The batcher is gone (its runtime shut down): check on our own.
            None => record_one(&self.pool, service, nonce, expires_at).await,
        }
    }

    /// Deletes rows expired for longer than [`PURGE_MARGIN`], in batches, and returns how
    /// many went. Meant for a periodic job; the table only needs rows whose timestamp could
    /// still pass the window on some replica.
    ///
    /// # Errors
    /// The database failed; rows deleted by earlier batches stay deleted.
    #[tracing::instrument(name = "auth.nonce.purge", skip_all)]
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let margin_secs = PURGE_MARGIN.as_secs_f64();
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM auth_nonces WHERE ctid IN \
                 (SELECT ctid FROM auth_nonces \
                  WHERE expires_at < now() - make_interval(secs => $2) LIMIT $1)",
            )
            .bind(PURGE_BATCH)
            .bind(margin_secs)
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

/// One statement for the whole batch, on the batcher's own connection, then each record's
/// answer. If the statement fails, each record is checked on its own, on the pool, so every
/// caller gets its own outcome and its own error (an outage still reads as one: 503, not 500).
async fn record_batch(
    pool: PgPool,
    held: HeldConnection,
    batch: Vec<Record>,
) -> Vec<Result<bool, sqlx::Error>> {
    let inserted = insert_batch(&held, &batch).await;
    match inserted {
        Ok(rows) => {
            let mut first_use: HashSet<(String, String)> = rows.into_iter().collect();
            batch
                .into_iter()
                // `remove`: a key listed twice in the batch is first use for one caller only.
                .map(|r| Ok(first_use.remove(&(r.service, r.nonce))))
                .collect()
        }
        Err(e) => {
            tracing::debug!(error = %e, records = batch.len(), "batched nonce insert failed; checking each record on its own");
            futures::future::join_all(
                batch
                    .iter()
                    .map(|r| record_one(&pool, &r.service, &r.nonce, r.expires_at)),
            )
            .await
        }
    }
}

/// The batch's statement: the keys it inserted, which are the first uses.
async fn insert_batch(
    held: &HeldConnection,
    batch: &[Record],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let services: Vec<&str> = batch.iter().map(|r| r.service.as_str()).collect();
    let nonces: Vec<&str> = batch.iter().map(|r| r.nonce.as_str()).collect();
    let expiries: Vec<DateTime<Utc>> = batch.iter().map(|r| r.expires_at).collect();
    let mut conn = held.lock().await?;
    // `synchronous_commit` off for this statement's own transaction: see `record_one`. Keys go
    // in in key order, as the grouped append inserts them (`crate::app::append`), so that the
    // two never wait on each other's keys crosswise (a deadlock, broken only after 1 s).
    let inserted = sqlx::query_as(
        "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO auth_nonces (service, nonce, expires_at)
         SELECT u.service, u.nonce, u.expires_at
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(service, nonce, expires_at),
                async_commit
          ORDER BY u.service, u.nonce
         ON CONFLICT (service, nonce) DO NOTHING
         RETURNING service, nonce",
    )
    .bind(&services)
    .bind(&nonces)
    .bind(&expiries)
    .fetch_all(conn.conn())
    .await;
    if inserted.is_ok() {
        conn.keep();
    }
    inserted
}

/// One record, one statement: the batch's fallback.
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for this statement's
/// own transaction only), like the batch. That is safe where it matters:
/// - the atomic check is unchanged; the row is visible to every replica on commit;
/// - a command that appends records its key with its events, in their synchronous commit
///   (`crate::app::store`), so no acknowledged write can be replayed after a crash; the keys
///   recorded here are those of reads, of commands that appended nothing, and of the commands
///   that record first (the refund, whose appends follow and flush the WAL past the key);
/// - at worst a crash loses the last few hundred ms of those keys: a read's replay within the
///   timestamp window returns data the caller was already sent, and a command that appended
///   nothing had no effect to repeat (its replay is decided afresh, as a new request would be).
///
/// Waiting for the flush doubled the fsyncs per command and was most of a read's latency.
async fn record_one(
    pool: &PgPool,
    service: &str,
    nonce: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO auth_nonces (service, nonce, expires_at)
         SELECT $1, $2, $3 FROM async_commit
         ON CONFLICT (service, nonce) DO NOTHING",
    )
    .bind(service)
    .bind(nonce)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
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
    async fn concurrent_records_are_batched_and_each_key_is_accepted_once(pool: PgPool) {
        let store = NonceStore::new(pool.clone());
        let later = Utc::now() + Duration::minutes(5);
        // Already used before the burst: a replay however it is batched.
        assert!(store.record("payment-service", "n-0", later).await.unwrap());
        let before = store.batcher.batches();
        // 300 keys, each sent twice at once (and one service's nonce reused by another).
        let keys: Vec<(String, String)> = (0..300)
            .flat_map(|i| {
                let service = if i % 2 == 0 {
                    "payment-service"
                } else {
                    "ticket-service"
                };
                let key = (service.to_owned(), format!("n-{}", i / 2 * 2));
                [key.clone(), key]
            })
            .collect();
        let results = futures::future::join_all(
            keys.iter()
                .map(|(service, nonce)| store.record(service, nonce, later)),
        )
        .await;
        let mut accepted = HashSet::new();
        for (key, result) in keys.iter().zip(results) {
            if result.unwrap() {
                assert!(accepted.insert(key.clone()), "{key:?} accepted twice");
            }
        }
        let distinct: HashSet<_> = keys.iter().cloned().collect();
        assert_eq!(
            accepted.len(),
            distinct.len() - 1,
            "every key once, but the used one"
        );
        assert!(!accepted.contains(&("payment-service".to_owned(), "n-0".to_owned())));
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows as usize, distinct.len());
        let statements = store.batcher.batches() - before;
        assert!(
            statements < 100,
            "600 concurrent records took {statements} statements: they were not batched"
        );
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_batch_on_a_broken_held_connection_falls_back_and_the_next_takes_a_new_one(
        pool: PgPool,
    ) {
        let store = NonceStore::new(pool.clone());
        let later = Utc::now() + Duration::minutes(5);
        assert!(store
            .record("payment-service", "before", later)
            .await
            .unwrap());
        // Every other session of this database goes, the batcher's held connection included.
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()) k",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(killed >= 1, "the held connection was open");
        // Its batch fails; the record is checked on its own, on the pool, and is still right.
        assert!(store
            .record("payment-service", "after", later)
            .await
            .unwrap());
        assert!(!store
            .record("payment-service", "before", later)
            .await
            .unwrap());
        let batches = store.batcher.batches();
        assert!(store
            .record("payment-service", "again", later)
            .await
            .unwrap());
        assert_eq!(store.batcher.batches(), batches + 1);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn an_idle_store_gives_its_connection_back_so_the_pool_can_close(pool: PgPool) {
        let store = NonceStore::new(pool.clone());
        let later = Utc::now() + Duration::minutes(5);
        assert!(store.record("payment-service", "n", later).await.unwrap());
        // The store is alive but idle: its held connection goes back within the idle time.
        tokio::time::timeout(std::time::Duration::from_secs(5), pool.close())
            .await
            .expect("the pool closed while the store was idle");
        assert!(store.record("payment-service", "m", later).await.is_err());
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
    async fn purge_removes_only_rows_expired_beyond_the_margin(pool: PgPool) {
        let store = NonceStore::new(pool.clone());
        let margin = Duration::from_std(PURGE_MARGIN).unwrap();
        let past = Utc::now() - margin - Duration::seconds(1);
        let just_expired = Utc::now() - Duration::seconds(1);
        let later = Utc::now() + Duration::minutes(5);
        assert!(store.record("payment-service", "old", past).await.unwrap());
        assert!(store
            .record("payment-service", "recent", just_expired)
            .await
            .unwrap());
        assert!(store.record("payment-service", "new", later).await.unwrap());
        assert_eq!(store.purge_expired().await.unwrap(), 1);
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 2);
        assert!(!store.record("payment-service", "new", later).await.unwrap());
        assert!(!store
            .record("payment-service", "recent", later)
            .await
            .unwrap());
    }
}
