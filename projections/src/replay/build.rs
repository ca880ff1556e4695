//! A rebuild's life: start (the shadow tables), build (the feed into them), compare, and swap
//! (or abandon).

use super::*;

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
        let mut writer = self.spec.writer();
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
            writer
                .apply_batch(&mut tx, TableSet::Shadow, &events)
                .await?;
            // A crash may lose the last batches committed this way, but always together with
            // their checkpoint, and the rebuild then redoes them: durability is not needed
            // here, and waiting for each flush is.
            checkpoint::save(&mut *tx, &shadow_consumer, last, n, Durability::Relaxed).await?;
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
pub(super) async fn pause_live_projector(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(), ProjectionError> {
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
pub(super) async fn read_upto(
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
pub(super) async fn catch_up_in(
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
        spec.writer().apply_batch(conn, set, &events).await?;
        let n = events.len() as u64;
        checkpoint::save(&mut *conn, &consumer, last, n, Durability::Flushed).await?;
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
pub(super) async fn move_checkpoint(
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
