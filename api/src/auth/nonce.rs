//! Replay protection shared by every replica: the `auth_nonces` table
//! (`migrations/0002_auth_nonces.sql`). Recording is the atomic check, so two replicas receiving
//! the same request at once cannot both accept it.
//!
//! Every signed request records one nonce, so under load this is one write transaction per
//! request. Concurrent records are therefore batched: a background task takes whatever records
//! are waiting and inserts them in one statement (`unnest` … `ON CONFLICT DO NOTHING RETURNING`),
//! one statement at a time; while it runs, the next records queue up and become the next batch.
//! (More statements in flight measured slower: with `just bench quick B8` on 2 cores, signed
//! no-database requests/s with 1, 2, 4 and 16 in flight were 12.6k, 11.4k, 9.4k and 6.7k, as
//! each statement in flight holds a pool connection that the requests' own reads then wait
//! for, while one statement of up to `MAX_BATCH` rows takes about 0.35 ms.) Alone, a record is still one statement, so nothing waits for a batch
//! to fill. Postgres stays the arbiter: a key is first use only if this statement's
//! insert returned it, and a key that appears twice in one batch is first use at most once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Longest nonce (or hmac-v2 replay key) stored; longer values are refused without a query, so
/// a caller cannot grow the table's rows or index at will.
pub const MAX_NONCE_LEN: usize = 128;

/// Rows deleted per statement by [`NonceStore::purge_expired`], so a purge never holds long
/// locks or builds one huge transaction.
const PURGE_BATCH: i64 = 5_000;

/// Most records inserted by one statement.
const MAX_BATCH: usize = 256;

/// Records waiting for the batcher; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4_096;

/// One record waiting for its batch.
#[derive(Debug)]
struct Pending {
    service: String,
    nonce: String,
    expires_at: DateTime<Utc>,
    reply: oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// The nonces (hmac-v1) and signatures (hmac-v2) already accepted, per service, until they
/// expire. Cheap to clone (clones share the pool and the batcher).
#[derive(Debug, Clone)]
pub struct NonceStore {
    pool: PgPool,
    /// Started by the first record, inside the runtime that serves requests.
    batcher: Arc<OnceLock<mpsc::Sender<Pending>>>,
    /// Batch statements sent so far (for the tests that check batching happens).
    statements: Arc<AtomicU64>,
}

impl NonceStore {
    /// A store over the service's pool; the table comes from the migrations.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            batcher: Arc::new(OnceLock::new()),
            statements: Arc::new(AtomicU64::new(0)),
        }
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
        let batcher = self.batcher.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(run_batcher(
                self.pool.clone(),
                receiver,
                Arc::clone(&self.statements),
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            service: service.to_owned(),
            nonce: nonce.to_owned(),
            expires_at,
            reply,
        };
        if batcher.send(pending).await.is_ok() {
            if let Ok(answer) = answer.await {
                return answer;
            }
        }
        // The batcher is gone (its runtime shut down): check on our own.
        record_one(&self.pool, service, nonce, expires_at).await
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

/// The batcher: waits for a record, takes every other one already waiting (up to
/// [`MAX_BATCH`]) and inserts them in one statement, then does it again: the records that
/// arrive during a statement make the next batch. Ends when every [`NonceStore`] clone is gone.
async fn run_batcher(pool: PgPool, mut queue: mpsc::Receiver<Pending>, statements: Arc<AtomicU64>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        statements.fetch_add(1, Ordering::Relaxed);
        record_batch(&pool, batch).await;
    }
}

/// One statement for the whole batch, then each caller's answer. If the statement fails, each
/// record is checked on its own, so every caller gets its own outcome and its own error (an
/// outage still reads as one: 503, not 500).
async fn record_batch(pool: &PgPool, batch: Vec<Pending>) {
    metrics::histogram!("auth_nonce_batch_size").record(batch.len() as f64);
    let services: Vec<&str> = batch.iter().map(|p| p.service.as_str()).collect();
    let nonces: Vec<&str> = batch.iter().map(|p| p.nonce.as_str()).collect();
    let expiries: Vec<DateTime<Utc>> = batch.iter().map(|p| p.expires_at).collect();
    // `synchronous_commit` off for this statement's own transaction: see `record_one`.
    let inserted: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
        "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO auth_nonces (service, nonce, expires_at)
         SELECT u.service, u.nonce, u.expires_at
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(service, nonce, expires_at),
                async_commit
         ON CONFLICT (service, nonce) DO NOTHING
         RETURNING service, nonce",
    )
    .bind(&services)
    .bind(&nonces)
    .bind(&expiries)
    .fetch_all(pool)
    .await;
    match inserted {
        Ok(rows) => {
            let mut first_use: HashSet<(String, String)> = rows.into_iter().collect();
            for p in batch {
                // `remove`: a key listed twice in the batch is first use for one caller only.
                let fresh = first_use.remove(&(p.service, p.nonce));
                let _ = p.reply.send(Ok(fresh));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, records = batch.len(), "batched nonce insert failed; checking each record on its own");
            futures::future::join_all(batch.into_iter().map(|p| async move {
                let answer = record_one(pool, &p.service, &p.nonce, p.expires_at).await;
                let _ = p.reply.send(answer);
            }))
            .await;
        }
    }
}

/// One record, one statement: the batch's fallback.
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for this statement's
/// own transaction only), like the batch. That is safe where it matters:
/// - the atomic check is unchanged; the row is visible to every replica on commit;
/// - a write request appends its events after this, and their synchronous commit flushes the
///   WAL up to and past this row, so no acknowledged write can be replayed after a crash;
/// - at worst a crash loses the last few hundred ms of nonces of read requests, whose replay
///   within the timestamp window returns data the caller was already sent.
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
        let before = store.statements.load(Ordering::Relaxed);
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
        let statements = store.statements.load(Ordering::Relaxed) - before;
        assert!(
            statements < 100,
            "600 concurrent records took {statements} statements: they were not batched"
        );
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
