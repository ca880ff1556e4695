//! Replay: rebuilding a projection from the events while the service keeps serving it.
//!
//! A rebuild never touches the live tables until the very end:
//!
//! 1. [`Rebuild::start`] takes the projection's **replay lock** (a session advisory lock on a
//!    connection of its own, `replay:<name>`), so only one rebuild of a projection runs at a
//!    time; a second is refused with [`ProjectionError::RebuildRunning`], naming the pid that
//!    holds it. It then creates **shadow** copies of the live tables (see [`TableSet`]), or
//!    keeps the ones an interrupted rebuild left, with their own checkpoint `<name>@shadow`.
//! 2. [`Rebuild::build`] reads the commit-safe feed from the shadow's checkpoint and writes the
//!    shadow tables batch by batch, each batch and its checkpoint in one transaction, so an
//!    interrupted build resumes where it stopped. It chases the live projector's checkpoint and
//!    stops there: the two copies then describe the same events.
//! 3. [`Rebuild::compare`] compares them in one repeatable-read snapshot (live rows and the live
//!    checkpoint as of one instant, the shadow caught up to exactly that checkpoint): row counts
//!    and a checksum per table, and the differing rows when they disagree. The live projector
//!    keeps running meanwhile.
//! 4. [`Rebuild::swap`] swaps them in one transaction: it takes the live projector's batch lock
//!    (the same advisory lock [`crate::runner::ProjectionRunner`] takes, so the live projector
//!    pauses between two batches), catches the shadow up to the live checkpoint, renames the live
//!    tables to `…__old` (kept for [`rollback`]) and the shadow tables to the live names, and
//!    moves the checkpoints. Queries see the old rows or the new ones, never a mix.
//!
//! [`rebuild_aggregate`] rebuilds one aggregate's rows in place instead, [`rollback`] swaps
//! the previous tables back, and [`clean`] drops the copies replay keeps.
//!
//! A rebuild reads events and writes read-model tables and their checkpoints, nothing else: it
//! never moves the outbox relay's checkpoint or any job's, and it publishes and commands
//! nothing, so replaying an event never repeats its side effects.
//!
//! Projections that can be rebuilt implement [`Rebuildable`] and are listed in [`registry`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use order_domain::ORDER_AGGREGATE_TYPE;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::checkpoint;
use crate::error::ProjectionError;
use crate::feed::{read_decoded_after, transaction_id, DecodedEvent, FeedPosition};
use crate::runner::lock_key;

mod compare;
mod orders;
mod tables;

pub use compare::{ColumnDiff, DiffKind, RowDiff, TableComparison};
pub use orders::OrdersRebuild;
use tables::Shape;
pub use tables::TableSet;

/// Events per transaction while building: large enough that most orders' rows are written once
/// per batch rather than once per event, small enough that an interrupted batch costs little
/// (a fraction of a second) and the batches in flight stay small (three of them, read ahead,
/// folding and writing: a few tens of MB).
///
/// Each order's row is written once per batch that holds some of its events, so the writes
/// shrink as batches grow. `just bench B4` (1M events, histories spread over 25k events each) on
/// 2 cores: 73k events/s at 10k per batch, 91k at 20k, 105k at 30k. (Before the row cache and
/// the decoded feed, 50k was slower than 10k: each batch then read its orders back.)
pub const DEFAULT_BATCH_SIZE: i64 = 30_000;

/// How long a swap or rollback waits for the table locks (queries in flight) before giving up,
/// rather than queueing every new query behind it.
const LOCK_TIMEOUT: &str = "10s";

/// A boxed future, so that [`Rebuildable`] can be used as a trait object in the registry.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a projection keeps from one batch of a [`Rebuild::build`] to the next, opaque to replay
/// (for `orders`: the rows the last batches wrote, so that a history spanning batches is not
/// read back from the shadow). A build makes an empty one with [`Rebuildable::carry`] and drops
/// it when it stops or fails, so it only ever describes committed rows of the one copy that
/// build writes.
pub type Carry = Box<dyn std::any::Any + Send>;

/// A projection that replay can rebuild.
///
/// Its rows must depend on its events alone, and [`Rebuildable::apply_batch`] must give exactly
/// the rows its live projector gives, applied to any copy of its tables.
pub trait Rebuildable: Send + Sync + fmt::Debug {
    /// The live projector's name: its checkpoint and batch-lock key.
    fn name(&self) -> &'static str;

    /// The live tables, parents before the tables that reference them.
    fn tables(&self) -> &'static [&'static str];

    /// The column that holds the aggregate id in every table, for per-aggregate rebuilds.
    fn aggregate_column(&self) -> &'static str;

    /// An empty [`Carry`] for a build.
    fn carry(&self) -> Carry;

    /// Applies `events` (in feed order) to the copy `set` of the tables, inside the caller's
    /// transaction; idempotent per event like the live projector. Returns rows written.
    ///
    /// `carry`, when given, is the build's [`Carry`]: its rows stand for the table's, and the
    /// batch's own go into it. The caller must drop it if the transaction does not commit.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
        carry: Option<&'a mut Carry>,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>>;
}

static REGISTRY: &[&dyn Rebuildable] = &[&OrdersRebuild];

/// Every projection that can be rebuilt.
pub fn registry() -> &'static [&'static dyn Rebuildable] {
    REGISTRY
}

/// The registered projection called `name`.
///
/// # Errors
/// [`ProjectionError::UnknownProjection`] when none is.
pub fn find(name: &str) -> Result<&'static dyn Rebuildable, ProjectionError> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| ProjectionError::UnknownProjection {
            name: name.to_owned(),
            known: REGISTRY
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The checkpoint consumer of a copy of the projection's tables.
pub fn consumer(projection: &str, set: TableSet) -> String {
    match set {
        TableSet::Live => projection.to_owned(),
        TableSet::Shadow => format!("{projection}@shadow"),
        TableSet::Old => format!("{projection}@old"),
        TableSet::Swap => format!("{projection}@swap"),
    }
}

/// Receives a build's progress (the CLI draws a bar with it).
pub trait ReplayProgress: Send + Sync {
    /// A build of `projection` starts, with `total` events known to be left.
    fn start(&self, projection: &str, total: u64);
    /// More events became due while building (the live projector moved on).
    fn set_total(&self, total: u64);
    /// A batch of `events` was committed.
    fn advance(&self, events: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ReplayProgress for NoProgress {
    fn start(&self, _projection: &str, _total: u64) {}
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _events: u64) {}
}

// ---------------------------------------------------------------------------------------------
// the replay lock

/// A projection's replay lock: a session advisory lock held by a connection of its own, so it
/// lasts exactly as long as the rebuild's process (a crash or a kill closes the connection and
/// frees it) and never leaks into a pooled connection.
#[derive(Debug)]
pub struct ReplayLock {
    conn: PgConnection,
    projection: String,
}

impl ReplayLock {
    /// Takes the replay lock of `projection` without waiting.
    ///
    /// # Errors
    /// [`ProjectionError::RebuildRunning`] when another session holds it;
    /// [`ProjectionError::Database`] when Postgres cannot be reached.
    pub async fn acquire(pool: &PgPool, projection: &str) -> Result<Self, ProjectionError> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let key = replay_lock_key(projection);
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            let pid: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_locks
                  WHERE locktype = 'advisory' AND granted AND objsubid = 1
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND ((classid::int8 << 32) | objid::int8) = hashtextextended($1, 0)
                  LIMIT 1",
            )
            .bind(&key)
            .fetch_optional(&mut conn)
            .await?;
            let _ = conn.close().await;
            return Err(ProjectionError::RebuildRunning {
                projection: projection.to_owned(),
                pid,
            });
        }
        Ok(Self {
            conn,
            projection: projection.to_owned(),
        })
    }

    /// The Postgres backend pid holding the lock (what a refused rebuild reports).
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the lock's connection is gone.
    pub async fn pid(&mut self) -> Result<i32, ProjectionError> {
        Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Releases the lock and closes its connection.
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the connection fails; the server frees the lock
    /// when the connection ends anyway.
    pub async fn release(mut self) -> Result<(), ProjectionError> {
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(replay_lock_key(&self.projection))
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }
}

fn replay_lock_key(projection: &str) -> String {
    format!("replay:{projection}")
}

// ---------------------------------------------------------------------------------------------
// a rebuild

/// How a rebuild runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Events per transaction.
    pub batch_size: i64,
    /// Drop any shadow an earlier rebuild left and start from the first event.
    pub restart: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            restart: false,
        }
    }
}

/// Where a build stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// The shadow reached the live checkpoint, after applying this many events in this call.
    CaughtUp { events: u64 },
    /// Cancelled between two batches; a later build (or a new rebuild) carries on.
    Interrupted { events: u64 },
}

impl Built {
    /// Events applied by the call.
    pub fn events(self) -> u64 {
        match self {
            Self::CaughtUp { events } | Self::Interrupted { events } => events,
        }
    }
}

/// The live and rebuilt tables compared at one feed position.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The live checkpoint both copies were compared at.
    pub position: FeedPosition,
    pub tables: Vec<TableComparison>,
}

impl Comparison {
    /// Rows that differ, over all tables.
    pub fn differences(&self) -> i64 {
        self.tables.iter().map(|t| t.differing_rows).sum()
    }

    /// Rows in the rebuilt tables.
    pub fn rebuilt_rows(&self) -> i64 {
        self.tables.iter().map(|t| t.rebuilt_rows).sum()
    }

    /// Whether both copies are equal row for row.
    pub fn is_identical(&self) -> bool {
        self.differences() == 0
    }
}

/// What a swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// Events this rebuild applied in all, the swap's catch-up included.
    pub events: u64,
    /// Events applied to the shadow inside the swap, while the live projector waited.
    pub caught_up: u64,
    /// The checkpoint the new live tables start from.
    pub position: FeedPosition,
    /// The previous tables, kept for a rollback.
    pub kept: Vec<String>,
}

/// A rebuild in progress: holds the replay lock until [`Rebuild::swap`] or
/// [`Rebuild::abandon`] (or until dropped, which closes the lock's connection).
#[derive(Debug)]
pub struct Rebuild {
    pool: PgPool,
    spec: &'static dyn Rebuildable,
    lock: ReplayLock,
    options: RebuildOptions,
    /// The shadow's checkpoint; only this rebuild moves it.
    position: FeedPosition,
    resumed: Option<u64>,
    applied: u64,
    started: Instant,
}

impl Rebuild {
    /// Takes the replay lock and prepares the shadow tables: keeps them when an earlier rebuild
    /// left them complete, with a checkpoint, and shaped like the live tables (and
    /// `options.restart` is off); otherwise drops whatever is left and creates them empty.
    ///
    /// # Errors
    /// [`ProjectionError::RebuildRunning`] when another rebuild of the projection runs;
    /// [`ProjectionError::Database`] when a statement fails.
    #[tracing::instrument(skip_all, fields(projection = spec.name()), err)]
    pub async fn start(
        pool: &PgPool,
        spec: &'static dyn Rebuildable,
        options: RebuildOptions,
    ) -> Result<Self, ProjectionError> {
        let lock = ReplayLock::acquire(pool, spec.name()).await?;
        let shadow_consumer = consumer(spec.name(), TableSet::Shadow);
        let mut tx = pool.begin().await?;
        let tables = spec.tables();
        let has_checkpoint: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM feed_checkpoints WHERE consumer = $1)",
        )
        .bind(&shadow_consumer)
        .fetch_one(&mut *tx)
        .await?;
        let mut resumable = !options.restart
            && has_checkpoint
            && tables::all_exist(&mut tx, tables, TableSet::Shadow).await?;
        if resumable {
            match tables::ensure_same_shape(
                &mut tx,
                tables,
                TableSet::Live,
                TableSet::Shadow,
                Shape::Rows,
            )
            .await
            {
                Ok(()) => {}
                Err(e @ ProjectionError::SchemaDrift { .. }) => {
                    tracing::warn!(error = %e, "the shadow left by an earlier rebuild is outdated; starting over");
                    resumable = false;
                }
                Err(e) => return Err(e),
            }
        }
        let mut done: i64 = 0;
        if resumable {
            done =
                sqlx::query_scalar("SELECT events_total FROM feed_checkpoints WHERE consumer = $1")
                    .bind(&shadow_consumer)
                    .fetch_one(&mut *tx)
                    .await?;
            if tables::emptied_by_recovery(&mut tx, tables, done).await? {
                tracing::warn!(
                    events = done,
                    "the shadow left by an earlier rebuild was emptied by a Postgres crash recovery (it is unlogged while building); starting over"
                );
                resumable = false;
            }
        }
        let resumed = if resumable {
            tracing::info!(
                events = done,
                "resuming the rebuild from the shadow's checkpoint"
            );
            Some(u64::try_from(done).unwrap_or(0))
        } else {
            tables::drop_set(&mut tx, tables, TableSet::Shadow).await?;
            checkpoint::reset(&mut *tx, &shadow_consumer).await?;
            tables::create_shadow(&mut tx, tables).await?;
            None
        };
        let position = checkpoint::load(&mut *tx, &shadow_consumer).await?;
        tx.commit().await?;
        Ok(Self {
            pool: pool.clone(),
            spec,
            lock,
            options: RebuildOptions {
                batch_size: options.batch_size.max(1),
                ..options
            },
            position,
            resumed,
            applied: 0,
            started: Instant::now(),
        })
    }

    /// The projection being rebuilt.
    pub fn projection(&self) -> &'static str {
        self.spec.name()
    }

    /// Events an earlier, interrupted rebuild had already applied, when this one resumed it.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed
    }

    /// Events this rebuild applied so far.
    pub fn events_applied(&self) -> u64 {
        self.applied
    }

    /// Time since [`Rebuild::start`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The replay lock's backend pid.
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the lock's connection is gone.
    pub async fn lock_pid(&mut self) -> Result<i32, ProjectionError> {
        self.lock.pid().await
    }

    /// Applies the feed to the shadow, one transaction per batch, until it reaches the live
    /// projector's checkpoint (following it while it moves) or `cancel` fires. Safe to call
    /// again after an interruption.
    ///
    /// # Errors
    /// The first failing batch; it is rolled back, and the next build resumes before it.
    #[tracing::instrument(skip_all, fields(projection = self.spec.name()), err)]
    pub async fn build(
        &mut self,
        progress: &dyn ReplayProgress,
        cancel: &CancellationToken,
    ) -> Result<Built, ProjectionError> {
        let live = self.spec.name();
        let shadow_consumer = consumer(live, TableSet::Shadow);
        let target = checkpoint::load(&self.pool, live).await?;
        let mut total = count_between(&self.pool, self.position, target).await?;
        progress.start(live, total);
        // Reading the next batch overlaps with writing this one.
        let (sender, mut batches) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_ahead(
            self.pool.clone(),
            live.to_owned(),
            self.position,
            target,
            self.options.batch_size,
            sender,
        ));
        let _stop_reader = AbortOnDropHandle::new(reader);
        // Every way out of this loop, a failed batch included, drops it.
        let mut carry = self.spec.carry();
        let mut done = 0;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => None,
                next = batches.recv() => Some(next),
            };
            let Some(next) = next else {
                tracing::info!(events = done, "rebuild interrupted; it resumes from here");
                return Ok(Built::Interrupted { events: done });
            };
            let events = match next {
                Some(ReadAhead::Batch(events)) => events,
                Some(ReadAhead::MoreDue(more)) => {
                    total += more;
                    progress.set_total(total);
                    continue;
                }
                Some(ReadAhead::Failed(e)) => return Err(e),
                Some(ReadAhead::CaughtUp) | None => return Ok(Built::CaughtUp { events: done }),
            };
            let Some(last) = events.last().map(|e| e.position) else {
                continue;
            };
            let n = events.len() as u64;
            let mut tx = self.pool.begin().await?;
            // A crash may lose the last batches committed this way, but always together with
            // their checkpoint, and the rebuild then redoes them: durability is not needed
            // here, and waiting for each flush is.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            self.spec
                .apply_batch(&mut tx, TableSet::Shadow, &events, Some(&mut carry))
                .await?;
            checkpoint::save(&mut *tx, &shadow_consumer, last, n).await?;
            tx.commit().await?;
            self.position = last;
            self.applied += n;
            done += n;
            progress.advance(n);
            if cancel.is_cancelled() {
                tracing::info!(events = done, "rebuild interrupted; it resumes from here");
                return Ok(Built::Interrupted { events: done });
            }
        }
    }

    /// Gives the shadow the live indexes and foreign keys it was built without.
    async fn complete_shadow(&self) -> Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        tables::complete_shadow(&mut tx, self.spec.tables()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Compares the live tables with the shadow at the live checkpoint, in one snapshot, and
    /// lists up to `max_rows` differing rows per table. The shadow is first caught up to that
    /// checkpoint (inside the snapshot); the live projector is not paused.
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when a statement fails.
    #[tracing::instrument(skip_all, fields(projection = self.spec.name()), err)]
    pub async fn compare(&mut self, max_rows: usize) -> Result<Comparison, ProjectionError> {
        let live = self.spec.name();
        self.complete_shadow().await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let target = checkpoint::load(&mut *tx, live).await?;
        let (position, caught_up) = catch_up_in(
            &mut tx,
            self.spec,
            TableSet::Shadow,
            self.position,
            target,
            self.options.batch_size,
        )
        .await?;
        let mut tables = Vec::with_capacity(self.spec.tables().len());
        for table in self.spec.tables() {
            tables.push(compare::compare_table(&mut tx, table, TableSet::Shadow, max_rows).await?);
        }
        tx.commit().await?;
        self.position = position;
        self.applied += caught_up;
        Ok(Comparison {
            position: target,
            tables,
        })
    }

    /// Swaps the shadow in (see the module doc), keeping the previous tables as `…__old` and
    /// dropping the ones an earlier swap kept. Releases the replay lock.
    ///
    /// # Errors
    /// [`ProjectionError::SchemaDrift`] when a migration changed the live tables during the
    /// rebuild; [`ProjectionError::Database`] when a statement fails or the table locks are not
    /// granted within 10 s. Nothing is swapped then, and the shadow is kept.
    #[tracing::instrument(skip_all, fields(projection = self.spec.name()), err)]
    pub async fn swap(mut self) -> Result<Swapped, ProjectionError> {
        let spec = self.spec;
        let name = spec.name();
        let tables = spec.tables();
        // Outside the lock: what can be done before the live projector has to wait.
        self.build(&NoProgress, &CancellationToken::new()).await?;
        self.complete_shadow().await?;
        for table in tables {
            sqlx::query(&format!("ANALYZE {}", TableSet::Shadow.quoted(table)))
                .execute(&self.pool)
                .await?;
        }

        let mut tx = self.pool.begin().await?;
        pause_live_projector(&mut tx, name).await?;
        let live_position = checkpoint::load(&mut *tx, name).await?;
        let (_, caught_up) = catch_up_in(
            &mut tx,
            spec,
            TableSet::Shadow,
            self.position,
            live_position,
            self.options.batch_size,
        )
        .await?;
        tables::ensure_same_shape(
            &mut tx,
            tables,
            TableSet::Live,
            TableSet::Shadow,
            Shape::Full,
        )
        .await?;
        tables::drop_set(&mut tx, tables, TableSet::Old).await?;
        tables::rename_set(&mut tx, tables, TableSet::Live, TableSet::Old).await?;
        tables::rename_set(&mut tx, tables, TableSet::Shadow, TableSet::Live).await?;
        move_checkpoint(&mut tx, name, TableSet::Live, TableSet::Old).await?;
        move_checkpoint(&mut tx, name, TableSet::Shadow, TableSet::Live).await?;
        let position = checkpoint::load(&mut *tx, name).await?;
        tx.commit().await?;
        self.applied += caught_up;
        tracing::info!(
            events = self.applied,
            caught_up,
            "swapped the rebuilt tables in; the previous ones are kept for a rollback"
        );
        self.lock.release().await?;
        Ok(Swapped {
            events: self.applied,
            caught_up,
            position,
            kept: tables.iter().map(|t| TableSet::Old.table(t)).collect(),
        })
    }

    /// Stops here without swapping, keeping the shadow and its checkpoint so that a later
    /// rebuild resumes; releases the replay lock.
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the lock's connection fails (the server frees the
    /// lock anyway when the connection ends).
    pub async fn abandon(self) -> Result<(), ProjectionError> {
        self.lock.release().await
    }
}

/// What the read-ahead task of [`Rebuild::build`] hands over.
#[derive(Debug)]
enum ReadAhead {
    /// The next events, in feed order.
    Batch(Vec<DecodedEvent>),
    /// The live checkpoint moved on: this many more events are due.
    MoreDue(u64),
    /// Every event up to the live checkpoint has been handed over.
    CaughtUp,
    Failed(ProjectionError),
}

/// Reads batches after `from` for [`Rebuild::build`], up to the live checkpoint and following
/// it while it moves, until caught up or the receiver is gone.
async fn read_ahead(
    pool: PgPool,
    live: String,
    from: FeedPosition,
    mut target: FeedPosition,
    batch_size: i64,
    out: tokio::sync::mpsc::Sender<ReadAhead>,
) {
    let mut position = from;
    loop {
        let step = async {
            let mut conn = pool.acquire().await?;
            let events = read_upto(&mut conn, position, target, batch_size).await?;
            if !events.is_empty() {
                return Ok(ReadAhead::Batch(events));
            }
            let now = checkpoint::load(&mut *conn, &live).await?;
            if now <= target {
                return Ok(ReadAhead::CaughtUp);
            }
            let more = count_between(&pool, target, now).await?;
            target = now;
            Ok::<_, ProjectionError>(ReadAhead::MoreDue(more))
        };
        let message = step.await.unwrap_or_else(ReadAhead::Failed);
        let last = match &message {
            ReadAhead::Batch(events) => events.last().map(|e| e.position),
            _ => None,
        };
        let stop = matches!(message, ReadAhead::CaughtUp | ReadAhead::Failed(_));
        if out.send(message).await.is_err() || stop {
            return;
        }
        if let Some(last) = last {
            position = last;
        }
    }
}

/// Takes the live projector's batch lock for the rest of the transaction: a batch in flight
/// finishes first, and the next waits for the commit.
async fn pause_live_projector(conn: &mut PgConnection, name: &str) -> Result<(), ProjectionError> {
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(lock_key(name))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Reads up to `limit` events after `after` and not past `upto`, in feed order.
async fn read_upto(
    conn: &mut PgConnection,
    after: FeedPosition,
    upto: FeedPosition,
    limit: i64,
) -> Result<Vec<DecodedEvent>, ProjectionError> {
    if after >= upto {
        return Ok(Vec::new());
    }
    let mut events = read_decoded_after(&mut *conn, after, limit).await?;
    let keep = events.partition_point(|e| e.position <= upto);
    events.truncate(keep);
    Ok(events)
}

/// Applies the events between `from` and `upto` to the copy `set`, inside the caller's
/// transaction, and saves that copy's checkpoint. Returns the new position and the events
/// applied.
async fn catch_up_in(
    conn: &mut PgConnection,
    spec: &dyn Rebuildable,
    set: TableSet,
    from: FeedPosition,
    upto: FeedPosition,
    batch_size: i64,
) -> Result<(FeedPosition, u64), ProjectionError> {
    let consumer = consumer(spec.name(), set);
    let mut position = from;
    let mut applied = 0;
    loop {
        let events = read_upto(conn, position, upto, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        spec.apply_batch(conn, set, &events, None).await?;
        checkpoint::save(&mut *conn, &consumer, last, events.len() as u64).await?;
        applied += events.len() as u64;
        position = last;
    }
    Ok((position, applied))
}

/// Events of the projection's feed after `after` and up to `upto`.
async fn count_between(
    pool: &PgPool,
    after: FeedPosition,
    upto: FeedPosition,
) -> Result<u64, ProjectionError> {
    if after >= upto {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
            AND (transaction_id, global_position) <= ($3::text::xid8, $4)
            AND aggregate_type = $5",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.global_position)
    .bind(upto.transaction_id.to_string())
    .bind(upto.global_position)
    .bind(ORDER_AGGREGATE_TYPE)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Gives the checkpoint of copy `from` to copy `to` (removing `to`'s when `from` has none), as
/// its tables are renamed from one to the other.
async fn move_checkpoint(
    conn: &mut PgConnection,
    projection: &str,
    from: TableSet,
    to: TableSet,
) -> Result<(), ProjectionError> {
    let (from, to) = (consumer(projection, from), consumer(projection, to));
    sqlx::query("DELETE FROM feed_checkpoints WHERE consumer = $1")
        .bind(&to)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE feed_checkpoints SET consumer = $2, updated_at = now() WHERE consumer = $1",
    )
    .bind(&from)
    .bind(&to)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rollback

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// Events applied to the previous tables to bring them up to the live checkpoint.
    pub caught_up: u64,
    /// The tables that were live and are now kept as `…__old` (a second rollback swaps them
    /// back).
    pub kept: Vec<String>,
}

/// Swaps the previous tables (`…__old`, kept by the last swap) back in, and keeps the current
/// ones in their place. The previous tables are first caught up to the live checkpoint, so the
/// service sees no step back in time.
///
/// # Errors
/// [`ProjectionError::NothingToRollBack`] when there are no previous tables;
/// [`ProjectionError::RebuildRunning`] while a rebuild of the projection runs;
/// [`ProjectionError::SchemaDrift`] when a migration changed the live tables since the swap;
/// [`ProjectionError::Database`] when a statement fails.
#[tracing::instrument(skip_all, fields(projection = spec.name()), err)]
pub async fn rollback(
    pool: &PgPool,
    spec: &'static dyn Rebuildable,
    batch_size: i64,
) -> Result<RolledBack, ProjectionError> {
    let lock = ReplayLock::acquire(pool, spec.name()).await?;
    let name = spec.name();
    let tables = spec.tables();
    let batch_size = batch_size.max(1);
    let mut conn = pool.acquire().await?;
    if !tables::all_exist(&mut conn, tables, TableSet::Old).await? {
        lock.release().await?;
        return Err(ProjectionError::NothingToRollBack {
            projection: name.to_owned(),
            tables: tables
                .iter()
                .map(|t| TableSet::Old.table(t))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    tables::ensure_same_shape(
        &mut conn,
        tables,
        TableSet::Live,
        TableSet::Old,
        Shape::Full,
    )
    .await?;
    // Most of the catch-up, batch by batch, while the live projector runs.
    let old_consumer = consumer(name, TableSet::Old);
    let mut position = checkpoint::load(&mut *conn, &old_consumer).await?;
    let mut caught_up = 0;
    loop {
        let target = checkpoint::load(&mut *conn, name).await?;
        let mut tx = conn.begin().await?;
        let events = read_upto(&mut tx, position, target, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        spec.apply_batch(&mut tx, TableSet::Old, &events, None)
            .await?;
        checkpoint::save(&mut *tx, &old_consumer, last, events.len() as u64).await?;
        tx.commit().await?;
        caught_up += events.len() as u64;
        position = last;
    }

    let mut tx = conn.begin().await?;
    pause_live_projector(&mut tx, name).await?;
    let live_position = checkpoint::load(&mut *tx, name).await?;
    let (_, last) = catch_up_in(
        &mut tx,
        spec,
        TableSet::Old,
        position,
        live_position,
        batch_size,
    )
    .await?;
    caught_up += last;
    tables::rename_set(&mut tx, tables, TableSet::Live, TableSet::Swap).await?;
    tables::rename_set(&mut tx, tables, TableSet::Old, TableSet::Live).await?;
    tables::rename_set(&mut tx, tables, TableSet::Swap, TableSet::Old).await?;
    move_checkpoint(&mut tx, name, TableSet::Live, TableSet::Swap).await?;
    move_checkpoint(&mut tx, name, TableSet::Old, TableSet::Live).await?;
    move_checkpoint(&mut tx, name, TableSet::Swap, TableSet::Old).await?;
    tx.commit().await?;
    drop(conn);
    lock.release().await?;
    tracing::info!(caught_up, "rolled back to the previous tables");
    Ok(RolledBack {
        caught_up,
        kept: tables.iter().map(|t| TableSet::Old.table(t)).collect(),
    })
}

/// Drops the shadow tables a dry run or an interrupted rebuild left and the previous tables the
/// last swap kept (so nothing can be rolled back afterwards), with their checkpoints. Returns
/// the tables dropped.
///
/// # Errors
/// [`ProjectionError::RebuildRunning`] while a rebuild of the projection runs;
/// [`ProjectionError::Database`] when a statement fails (nothing is dropped then).
#[tracing::instrument(skip_all, fields(projection = spec.name()), err)]
pub async fn clean(
    pool: &PgPool,
    spec: &'static dyn Rebuildable,
) -> Result<Vec<String>, ProjectionError> {
    let lock = ReplayLock::acquire(pool, spec.name()).await?;
    let tables = spec.tables();
    let mut tx = pool.begin().await?;
    let mut dropped = Vec::new();
    for set in [TableSet::Shadow, TableSet::Old] {
        for table in tables {
            let name = set.table(table);
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
                    .bind(&name)
                    .fetch_one(&mut *tx)
                    .await?;
            if exists {
                dropped.push(name);
            }
        }
        tables::drop_set(&mut tx, tables, set).await?;
        checkpoint::reset(&mut *tx, &consumer(spec.name(), set)).await?;
    }
    tx.commit().await?;
    lock.release().await?;
    Ok(dropped)
}

// ---------------------------------------------------------------------------------------------
// one aggregate

/// What rebuilding one aggregate's rows did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRebuild {
    /// Events re-applied: the aggregate's events up to the live checkpoint.
    pub events: u64,
    /// Rows the aggregate has after the rebuild.
    pub rows: u64,
    /// Rows that changed: "live" is before, "rebuilt" after.
    pub changes: Vec<RowDiff>,
    /// Whether the change was rolled back (`dry_run`).
    pub dry_run: bool,
}

/// Rebuilds one aggregate's rows in the live tables: deletes them and re-applies the
/// aggregate's events (up to the live checkpoint, in sequence order) in one transaction under
/// the live projector's batch lock, so no batch interleaves. With `dry_run`, reports the
/// changes and rolls back.
///
/// # Errors
/// [`ProjectionError::Database`] when a statement fails (nothing changes then);
/// [`ProjectionError::Undecodable`] for an event that cannot be read.
#[tracing::instrument(skip_all, fields(projection = spec.name(), aggregate.id = aggregate_id), err)]
pub async fn rebuild_aggregate(
    pool: &PgPool,
    spec: &'static dyn Rebuildable,
    aggregate_id: &str,
    dry_run: bool,
) -> Result<AggregateRebuild, ProjectionError> {
    let name = spec.name();
    let column = spec.aggregate_column();
    let mut tx = pool.begin().await?;
    pause_live_projector(&mut tx, name).await?;
    let upto = checkpoint::load(&mut *tx, name).await?;

    let mut before = Vec::new();
    for table in spec.tables() {
        before.push(aggregate_rows(&mut tx, table, column, aggregate_id).await?);
    }
    for table in spec.tables().iter().rev() {
        let cast = column_type(&mut tx, table, column).await?;
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {} = $1::text::{cast}",
            TableSet::Live.quoted(table),
            tables::ident(column)
        ))
        .bind(aggregate_id)
        .execute(&mut *tx)
        .await?;
    }
    let events = aggregate_events(&mut tx, aggregate_id, upto).await?;
    spec.apply_batch(&mut tx, TableSet::Live, &events, None)
        .await?;

    let mut changes = Vec::new();
    let mut rows = 0;
    for (table, old) in spec.tables().iter().zip(before) {
        let new = aggregate_rows(&mut tx, table, column, aggregate_id).await?;
        rows += new.len() as u64;
        let columns = compare::columns(&mut tx, table).await?;
        let keys = compare::key_columns(&mut tx, table).await?;
        changes.extend(row_changes(table, &columns, &keys, &old, &new));
    }
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(AggregateRebuild {
        events: events.len() as u64,
        rows,
        changes,
        dry_run,
    })
}

/// The rows of one aggregate in a live table, as JSON objects.
async fn aggregate_rows(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    aggregate_id: &str,
) -> Result<Vec<Value>, ProjectionError> {
    let cast = column_type(conn, table, column).await?;
    Ok(sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t) FROM {} t WHERE {} = $1::text::{cast}",
        TableSet::Live.quoted(table),
        tables::ident(column)
    ))
    .bind(aggregate_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// The SQL type of a column, to compare it with a text id through its own index.
async fn column_type(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
) -> Result<String, ProjectionError> {
    sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = to_regclass(quote_ident($1)) AND attname = $2 AND NOT attisdropped",
    )
    .bind(table)
    .bind(column)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ProjectionError::Handler(format!("{table} has no column {column}")))
}

/// Pairs rows before and after by key and describes those that changed.
fn row_changes(
    table: &str,
    columns: &[String],
    keys: &[String],
    before: &[Value],
    after: &[Value],
) -> Vec<RowDiff> {
    let key_of = |v: &Value| -> Vec<Value> {
        keys.iter()
            .map(|k| v.get(k).cloned().unwrap_or(Value::Null))
            .collect()
    };
    let mut changes = Vec::new();
    for old in before {
        let new = after.iter().find(|n| key_of(n) == key_of(old));
        if new != Some(old) {
            changes.push(compare::row_diff(table, columns, keys, Some(old), new));
        }
    }
    for new in after {
        if !before.iter().any(|o| key_of(o) == key_of(new)) {
            changes.push(compare::row_diff(table, columns, keys, None, Some(new)));
        }
    }
    changes
}

/// One aggregate's events up to `upto`, in sequence order, upcast like the feed's.
async fn aggregate_events(
    conn: &mut PgConnection,
    aggregate_id: &str,
    upto: FeedPosition,
) -> Result<Vec<DecodedEvent>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT transaction_id::text AS txid, global_position, sequence, event_type,
                event_version, payload::text AS payload, metadata::text AS metadata
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND (transaction_id, global_position) <= ($3::text::xid8, $4)
          ORDER BY sequence",
    )
    .bind(ORDER_AGGREGATE_TYPE)
    .bind(aggregate_id)
    .bind(upto.transaction_id.to_string())
    .bind(upto.global_position)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            DecodedEvent::decode(
                FeedPosition {
                    transaction_id: transaction_id(row.try_get("txid")?)?,
                    global_position: row.try_get("global_position")?,
                },
                aggregate_id,
                row.try_get("sequence")?,
                row.try_get("event_type")?,
                row.try_get("event_version")?,
                row.try_get("payload")?,
                row.try_get("metadata")?,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registry_finds_orders_and_names_the_known_ones_otherwise() {
        assert_eq!(find("orders").map(|p| p.name()).ok(), Some("orders"));
        let err = find("nope").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown projection 'nope' (known: orders)")
        );
    }

    #[test]
    fn each_copy_has_its_own_checkpoint() {
        assert_eq!(consumer("orders", TableSet::Live), "orders");
        assert_eq!(consumer("orders", TableSet::Shadow), "orders@shadow");
        assert_eq!(consumer("orders", TableSet::Old), "orders@old");
    }

    #[test]
    fn a_refused_rebuild_names_the_pid() {
        let e = ProjectionError::RebuildRunning {
            projection: "orders".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "a rebuild of orders is already running (pid 42)"
        );
    }

    #[test]
    fn changes_pair_rows_by_key() {
        let columns = vec!["id".to_owned(), "v".to_owned()];
        let keys = vec!["id".to_owned()];
        let before = vec![json!({"id": 1, "v": "a"}), json!({"id": 2, "v": "b"})];
        let after = vec![
            json!({"id": 2, "v": "b"}),
            json!({"id": 1, "v": "z"}),
            json!({"id": 3, "v": "c"}),
        ];
        let changes = row_changes("t", &columns, &keys, &before, &after);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].columns(), vec!["v"]);
        assert_eq!(changes[1].kind, DiffKind::OnlyRebuilt);
    }
}
