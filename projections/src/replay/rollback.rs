//! Undoing a swap, and dropping the copies replay keeps.

use super::build::{catch_up_in, move_checkpoint, pause_live_projector, read_upto};
use super::*;

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
        spec.writer()
            .apply_batch(&mut tx, TableSet::Old, &events)
            .await?;
        let n = events.len() as u64;
        checkpoint::save(&mut *tx, &old_consumer, last, n, Durability::Flushed).await?;
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
