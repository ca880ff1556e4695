//! Runs a [`Projector`] over the feed: one batch per transaction, checkpoint included.
//!
//! Each batch takes a transaction-scoped advisory lock named after the projector, so across any
//! number of replicas exactly one applies a given batch and the others stand by; if the active
//! one dies, its transaction rolls back and the next poll of another replica carries on from
//! the same checkpoint.

use std::future::Future;
use std::time::Duration;

use order_domain::ORDER_AGGREGATE_TYPE;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Durability};
use crate::error::ProjectionError;
use crate::feed::{FeedItem, ReadFrom};
use crate::postgres::{batch, CommitSignal, CommitWatch, HeldConnection, DEFAULT_GATHER};

/// How long [`ProjectionRunner::catch_up`] waits before looking at the feed again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(10);

/// The advisory-lock key of a projector; also taken by resets, so they never interleave with a
/// batch.
pub(crate) fn lock_key(name: &str) -> String {
    format!("projection:{name}")
}

/// Builds a read model from events.
pub trait Projector: Send + Sync {
    /// What its batches are made of, and so how the feed is read and decoded for it
    /// ([`FeedItem`]).
    type Event: FeedItem;

    /// The checkpoint name; also the advisory-lock key.
    fn name(&self) -> &str;

    /// Applies a batch, in feed order, on the connection of the batch's transaction, which
    /// [`ProjectionRunner::run_once`] then saves the checkpoint in and commits. It must be
    /// idempotent per event (guard updates by the row's last applied sequence), so that a
    /// replayed batch changes nothing. A projector whose batches can be large should write
    /// them in a few statements rather than a few per event: the transaction holds the feed's
    /// fence back from its first write to its commit, so every reader of the feed (the relay
    /// included) waits for events committed meanwhile.
    fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Self::Event],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

/// What one call to [`ProjectionRunner::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOnce {
    /// Applied this many events and moved the checkpoint.
    Processed(usize),
    /// Nothing new behind the fence.
    Idle,
    /// Another replica holds this projector's lock.
    Standby,
}

impl RunOnce {
    /// Whether the call did work (callers loop while it did).
    pub fn did_work(self) -> bool {
        matches!(self, Self::Processed(_))
    }
}

/// Drives one projector.
#[derive(Debug)]
pub struct ProjectionRunner<P> {
    pool: PgPool,
    /// The connection batches run on while they keep finding work: no pool check after each.
    conn: HeldConnection,
    projector: P,
    batch_size: i64,
    wake: Option<CommitSignal>,
    /// The pause that gathers commits landing during a batch into the next.
    gather: Duration,
}

impl<P: Projector> ProjectionRunner<P> {
    /// A runner reading `batch_size` events per transaction.
    pub fn new(pool: PgPool, projector: P, batch_size: i64) -> Self {
        Self {
            conn: HeldConnection::released_when_idle(pool.clone(), batch::HELD_IDLE),
            pool,
            projector,
            batch_size: batch_size.max(1),
            wake: None,
            gather: DEFAULT_GATHER,
        }
    }

    /// Wakes the runner when this process commits events, instead of at its next poll; commits
    /// that land while a batch is applied wait `gather` to be applied together
    /// ([`CommitWatch::after_work`]).
    #[must_use]
    pub fn with_wake(mut self, signal: CommitSignal, gather: Duration) -> Self {
        self.wake = Some(signal);
        self.gather = gather;
        self
    }

    /// The projector this runner drives.
    pub fn projector(&self) -> &P {
        &self.projector
    }

    /// Applies at most one batch.
    ///
    /// # Errors
    /// Any error rolls the whole batch back, checkpoint included.
    pub async fn run_once(&self) -> Result<RunOnce, ProjectionError> {
        let mut held = self.conn.lock().await?;
        let outcome = self.batch(held.conn()).await;
        // Kept only while there is work: an idle or standby round gives the connection back
        // (with the rollback of its empty transaction), so a quiet projector holds none.
        if matches!(outcome, Ok(RunOnce::Processed(_))) {
            held.keep();
        }
        outcome
    }

    /// One batch on `conn`, in a transaction of its own.
    async fn batch(&self, conn: &mut PgConnection) -> Result<RunOnce, ProjectionError> {
        let name = self.projector.name();
        let mut tx = conn.begin().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(lock_key(name))
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            return Ok(RunOnce::Standby);
        }
        // From the checkpoint as the read finds it: the lock is held by then, so no other
        // replica moves it until this transaction ends.
        let events = P::Event::read(&mut tx, ReadFrom::Checkpoint(name), self.batch_size).await?;
        let Some(last) = events.last().map(FeedItem::position) else {
            return Ok(RunOnce::Idle);
        };
        let count = events.len() as u64;
        self.projector.apply_batch(&mut tx, &events).await?;
        // Relaxed: a crash loses the checkpoint with the rows it covers, and the batch is
        // applied again.
        checkpoint::save(&mut *tx, name, last, count, Durability::Relaxed).await?;
        tx.commit().await?;
        metrics::counter!("projection_events_total", "projection" => name.to_owned())
            .increment(count);
        Ok(RunOnce::Processed(events.len()))
    }

    /// Runs batches until caught up.
    ///
    /// # Errors
    /// The first failing batch's error.
    pub async fn drain(&self) -> Result<usize, ProjectionError> {
        let mut total = 0;
        while let RunOnce::Processed(n) = self.run_once().await? {
            total += n;
        }
        Ok(total)
    }

    /// Runs batches until every event committed before the call has been applied, by this
    /// runner or by another replica. Unlike [`Self::drain`], it does not stop at
    /// [`RunOnce::Standby`] or at an [`RunOnce::Idle`] caused by a transaction elsewhere that
    /// holds the feed's fence back: it waits for those (the fence is cluster-wide, so any open
    /// transaction on the server delays it). Meant for tests and rebuilds; it returns the
    /// number of events this runner applied.
    ///
    /// # Errors
    /// The first failing batch's error.
    pub async fn catch_up(&self) -> Result<usize, ProjectionError> {
        let target: Option<i64> =
            sqlx::query_scalar("SELECT max(global_position) FROM events WHERE aggregate_type = $1")
                .bind(ORDER_AGGREGATE_TYPE)
                .fetch_one(&self.pool)
                .await?;
        let Some(target) = target else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            if let RunOnce::Processed(n) = self.run_once().await? {
                total += n;
                continue;
            }
            if self.has_applied_up_to(target).await? {
                return Ok(total);
            }
            tokio::time::sleep(CATCH_UP_RETRY).await;
        }
    }

    /// Whether no event at or below `position` is left after the checkpoint. Positions are
    /// taken at insert, so every event committed when `position` was the largest is covered.
    async fn has_applied_up_to(&self, position: i64) -> Result<bool, ProjectionError> {
        let after = checkpoint::load(&self.pool, self.projector.name()).await?;
        let done: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (
                 SELECT 1 FROM events
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                    AND global_position <= $3 AND aggregate_type = $4)",
        )
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(position)
        .bind(ORDER_AGGREGATE_TYPE)
        .fetch_one(&self.pool)
        .await?;
        Ok(done)
    }

    /// Polls until `stop` is cancelled: straight on while there is work, every `idle_poll`
    /// otherwise, backing off up to 5 s after errors. A short poll on the feed index is cheap
    /// and, unlike a NOTIFY per event, does not serialize the writers' commits. With a
    /// [`CommitSignal`] (see [`Self::with_wake`]), a commit in this process wakes it at once,
    /// and commits landing while a batch is applied are gathered into the next
    /// ([`CommitWatch::after_work`]).
    pub async fn run_until_stopped(&self, idle_poll: Duration, stop: CancellationToken) {
        let mut wake = self.wake.as_ref().map(CommitSignal::subscribe);
        let mut backoff = idle_poll;
        loop {
            if let Some(w) = wake.as_mut() {
                w.mark_seen();
            }
            let wait = match self.run_once().await {
                Ok(RunOnce::Processed(n)) => {
                    backoff = idle_poll;
                    if let Some(w) = wake.as_mut() {
                        let full = n as i64 >= self.batch_size;
                        // Biased: after a full batch the pause is ready at once, and a stop
                        // must win.
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return,
                            () = w.after_work(full, self.gather, idle_poll) => {}
                        }
                    }
                    continue;
                }
                Ok(RunOnce::Idle | RunOnce::Standby) => idle_poll,
                Err(e) => {
                    tracing::warn!(projection = self.projector.name(), error = %e, "projection batch failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = idle_wait(wake.as_mut(), wait) => {}
            }
        }
    }
}

/// An idle reader's pause: the commit watch's when there is one, else a plain poll.
async fn idle_wait(wake: Option<&mut CommitWatch>, idle_poll: Duration) {
    match wake {
        Some(w) => w.idle_wait(idle_poll).await,
        None => tokio::time::sleep(idle_poll).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::feed::tests::store_creations;
    use crate::feed::{FeedEvent, FeedPosition};

    /// Records what it is given, and the backend each batch ran on, and writes nothing.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<FeedPosition>>, Mutex<Vec<i32>>);

    impl Projector for Recorder {
        type Event = FeedEvent;

        fn name(&self) -> &str {
            "recorder"
        }

        async fn apply_batch(
            &self,
            conn: &mut PgConnection,
            events: &[FeedEvent],
        ) -> Result<(), ProjectionError> {
            let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await?;
            self.1.lock().unwrap().push(backend);
            let mut seen = self.0.lock().unwrap();
            seen.extend(events.iter().map(|e| e.position));
            Ok(())
        }
    }

    fn in_use(pool: &PgPool) -> u32 {
        pool.size() - pool.num_idle() as u32
    }

    /// The next batch that finds work: the feed's fence is cluster-wide, so a transaction of
    /// a test running beside this one can hold the events back for a moment.
    async fn next_batch<P: Projector>(runner: &ProjectionRunner<P>) -> RunOnce {
        for _ in 0..1000 {
            match runner.run_once().await.unwrap() {
                RunOnce::Idle => tokio::time::sleep(Duration::from_millis(10)).await,
                other => return other,
            }
        }
        RunOnce::Idle
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn batches_keep_one_connection_while_they_find_work_and_follow_the_stored_checkpoint(
        pool: PgPool,
    ) {
        store_creations(&pool, 3).await;
        // Two idle connections: the pool hands them out in turn, so a batch that took its
        // connection from the pool would run on the other backend than the batch before.
        let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        drop((a, b));
        let runner = ProjectionRunner::new(pool.clone(), Recorder::default(), 2);
        assert_eq!(next_batch(&runner).await, RunOnce::Processed(2));
        assert_eq!(in_use(&pool), 1, "kept after a batch that found work");
        assert_eq!(next_batch(&runner).await, RunOnce::Processed(1));
        let backends = runner.projector().1.lock().unwrap().clone();
        assert_eq!(backends.len(), 2);
        assert_eq!(
            backends[0], backends[1],
            "the second batch ran on the kept connection"
        );
        assert_eq!(runner.run_once().await.unwrap(), RunOnce::Idle);
        let mut back = false;
        for _ in 0..200 {
            back = in_use(&pool) == 0;
            if back {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back, "given back after a batch that found nothing");

        // Each batch starts from the checkpoint as stored, not from where the runner was: a
        // reset (as a rebuild does) is followed at once.
        checkpoint::reset(&pool, "recorder").await.unwrap();
        assert_eq!(next_batch(&runner).await, RunOnce::Processed(2));
        let seen = runner.projector().0.lock().unwrap().clone();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[..2], seen[3..], "read again from the start");
        assert!(seen[..3].windows(2).all(|w| w[0] < w[1]), "feed order");
        assert_eq!(
            checkpoint::load(&pool, "recorder").await.unwrap(),
            seen[4],
            "the checkpoint moved with the batch"
        );
    }
}
