//! Rebuilding one aggregate's rows in place.

use super::build::pause_live_projector;
use super::*;

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
    spec.writer()
        .apply_batch(&mut tx, TableSet::Live, &events)
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
pub(super) fn row_changes(
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
