//! R9: the commit-safe feed under many writers for a set time. The in-process test in
//! `tests/integration/feed.rs` proves the fence with a fixed amount of work; this runs the same
//! kind of writers (several transactions per order, each sleeping a random while before COMMIT,
//! so commits land out of position order) for a duration, with a fenced reader following along,
//! and counts what the reader missed, doubled or read out of order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_projections::feed::read_after;
use order_projections::FeedPosition;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What one feed run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedRun {
    pub written: usize,
    pub read: usize,
    pub missed: usize,
    pub doubled: usize,
    pub out_of_order: usize,
    /// Time the reader needed after the last commit to have everything.
    pub settle: Duration,
}

async fn insert(conn: &mut sqlx::PgConnection, order: Uuid, sequence: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, $2, 'ReminderSent', '1.0', $3, '{}')",
    )
    .bind(order.to_string())
    .bind(sequence)
    .bind(json!({"ReminderSent": {"n": sequence}}))
    .execute(conn)
    .await
    .map(|_| ())
}

/// One writer until `stop`: per order, sequences 1 and 2 in one transaction, then 3, then 4,
/// each transaction pausing 0–`max_delay_ms` ms before COMMIT.
async fn writer(
    pool: PgPool,
    stop: CancellationToken,
    max_delay_ms: u64,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut written = Vec::new();
    while !stop.is_cancelled() {
        let order = Uuid::new_v4();
        for sequences in [&[1_i64, 2][..], &[3], &[4]] {
            let mut tx = pool.begin().await?;
            for &s in sequences {
                insert(&mut tx, order, s).await?;
            }
            let pause = rand::random::<u64>() % (max_delay_ms + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            tx.commit().await?;
            written.extend(sequences.iter().map(|&s| (order.to_string(), s)));
        }
    }
    Ok(written)
}

/// Runs `writers` writers for `duration` on the (migrated, otherwise unused) database at
/// `db_url`, with a fenced reader following the feed, then lets the reader finish.
///
/// # Errors
/// When the database fails, or the reader has not read everything 30 s after the last commit.
pub async fn run(
    db_url: &str,
    writers: usize,
    duration: Duration,
    max_delay_ms: u64,
) -> anyhow::Result<FeedRun> {
    let pool = PgPoolOptions::new()
        .max_connections(writers as u32 + 2)
        .connect(db_url)
        .await?;
    let stop = CancellationToken::new();
    let reader_stop = CancellationToken::new();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(reader(pool.clone(), reader_stop.clone(), progress.clone()));
    let tasks: Vec<_> = (0..writers)
        .map(|_| tokio::spawn(writer(pool.clone(), stop.clone(), max_delay_ms)))
        .collect();
    // The run's length is the point of the scenario: this sleep paces it, it does not wait
    // for anything.
    tokio::time::sleep(duration).await;
    stop.cancel();
    let mut written = Vec::new();
    for t in tasks {
        written.extend(t.await??);
    }
    let committed = Instant::now();
    let expected = written.len();
    // The reader follows until it has as many events as were written, for 30 s at most; what
    // it lacks then counts as missed.
    let _ = super::poll_until(Duration::from_secs(30), || {
        let done = progress.load(Ordering::SeqCst) >= expected || reader.is_finished();
        async move { done.then_some(()) }
    })
    .await;
    let settle = committed.elapsed();
    // One more round after the target, so anything beyond it (there must be none) shows.
    tokio::time::sleep(Duration::from_millis(50)).await;
    reader_stop.cancel();
    let events = reader.await??;
    let mut run = FeedRun {
        written: expected,
        read: events.len(),
        settle,
        ..FeedRun::default()
    };
    let unique: HashSet<&(String, i64)> = events.iter().collect();
    run.doubled = events.len() - unique.len();
    let written_set: HashSet<&(String, i64)> = written.iter().collect();
    run.missed = written_set.difference(&unique).count();
    let mut next: HashMap<&str, i64> = HashMap::new();
    let mut bad: HashSet<&str> = HashSet::new();
    for (order, seq) in &events {
        let expected = next.entry(order.as_str()).or_insert(1);
        if *seq != *expected {
            bad.insert(order.as_str());
        }
        *expected = seq + 1;
    }
    run.out_of_order = bad.len();
    pool.close().await;
    Ok(run)
}

/// Follows the feed from the start until `stop`, publishing how many events it has read.
async fn reader(
    pool: PgPool,
    stop: CancellationToken,
    progress: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut read = Vec::new();
    let mut after = FeedPosition::default();
    while !stop.is_cancelled() {
        let batch = read_after(&pool, after, 500).await?;
        if let Some(last) = batch.last() {
            anyhow::ensure!(last.position > after, "the feed moved backwards");
            after = last.position;
        }
        let empty = batch.is_empty();
        read.extend(batch.into_iter().map(|e| (e.aggregate_id, e.sequence)));
        progress.store(read.len(), Ordering::SeqCst);
        if empty {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(read)
}
