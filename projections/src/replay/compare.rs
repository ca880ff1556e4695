//! Comparing two copies of a table: row counts, a checksum, and the rows that differ.
//!
//! The checksum is the sum of a 64-bit hash (the first 16 hex digits of `md5`) of every row's
//! text, over all columns. A sum does not depend on row order and needs no sort, and unlike an
//! `md5(string_agg(...))` it never builds one string the size of the table (which, past a few
//! million rows, would exceed Postgres' 1 GB value limit). Rows are only read one by one when
//! the checksums or counts differ.

use serde_json::{Map, Value};
use sqlx::{PgConnection, Row};

use super::tables::{ident, TableSet};
use crate::error::ProjectionError;

/// How one table compares between the live and the rebuilt copy.
#[derive(Debug, Clone, PartialEq)]
pub struct TableComparison {
    /// The live table's name.
    pub table: String,
    pub live_rows: i64,
    pub rebuilt_rows: i64,
    pub live_checksum: String,
    pub rebuilt_checksum: String,
    /// Rows that are missing on one side or differ in a column (0 when the checksums agree).
    pub differing_rows: i64,
    /// The first differing rows, in key order, up to the limit asked for.
    pub diffs: Vec<RowDiff>,
}

impl TableComparison {
    /// Whether both copies hold exactly the same rows.
    pub fn is_identical(&self) -> bool {
        self.differing_rows == 0
    }
}

/// One row that differs between the live table and its rebuilt copy.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDiff {
    /// The live table's name.
    pub table: String,
    /// The primary key, `column=value` pairs joined by `, `.
    pub key: String,
    pub kind: DiffKind,
}

/// How a row differs.
#[derive(Debug, Clone, PartialEq)]
pub enum DiffKind {
    /// The live table has the row; the rebuild does not.
    OnlyLive,
    /// The rebuild has the row; the live table does not.
    OnlyRebuilt,
    /// Both have the row, with different values in these columns.
    Changed(Vec<ColumnDiff>),
}

/// One column of a changed row.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDiff {
    pub column: String,
    pub live: Value,
    pub rebuilt: Value,
}

impl RowDiff {
    /// The names of the columns that differ (empty for a missing row).
    pub fn columns(&self) -> Vec<&str> {
        match &self.kind {
            DiffKind::Changed(c) => c.iter().map(|c| c.column.as_str()).collect(),
            DiffKind::OnlyLive | DiffKind::OnlyRebuilt => Vec::new(),
        }
    }
}

impl std::fmt::Display for RowDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            DiffKind::OnlyLive => write!(f, "{} {}: only in the live table", self.table, self.key),
            DiffKind::OnlyRebuilt => {
                write!(f, "{} {}: only in the rebuild", self.table, self.key)
            }
            DiffKind::Changed(columns) => {
                write!(f, "{} {}:", self.table, self.key)?;
                for c in columns {
                    write!(f, " {} live={} rebuilt={};", c.column, c.live, c.rebuilt)?;
                }
                Ok(())
            }
        }
    }
}

/// A table's columns, in order.
pub(crate) async fn columns(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<String>, ProjectionError> {
    Ok(sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = to_regclass(quote_ident($1)) AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// A table's primary-key columns, in key order.
pub(crate) async fn key_columns(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<String>, ProjectionError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text
           FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
          WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    if keys.is_empty() {
        return Err(ProjectionError::Handler(format!(
            "{table} has no primary key, so its rows cannot be compared"
        )));
    }
    Ok(keys)
}

/// Row count and checksum of one physical table over `columns`.
async fn checksum(
    conn: &mut PgConnection,
    table: &str,
    columns: &[String],
) -> Result<(i64, String), ProjectionError> {
    let row_expr = columns
        .iter()
        .map(|c| format!("t.{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let row = sqlx::query(&format!(
        "SELECT count(*) AS n,
                COALESCE(sum(('x' || substr(md5(ROW({row_expr})::text), 1, 16))::bit(64)::int8::numeric), 0)::text AS sum
           FROM {} t",
        ident(table)
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("n")?, row.try_get("sum")?))
}

/// Compares the live table `logical` with its copy in `other`, listing up to `limit`
/// differing rows.
pub(crate) async fn compare_table(
    conn: &mut PgConnection,
    logical: &str,
    other: TableSet,
    limit: usize,
) -> Result<TableComparison, ProjectionError> {
    let columns = columns(conn, logical).await?;
    let (live_rows, live_checksum) = checksum(conn, logical, &columns).await?;
    let (rebuilt_rows, rebuilt_checksum) = checksum(conn, &other.table(logical), &columns).await?;
    let mut comparison = TableComparison {
        table: logical.to_owned(),
        live_rows,
        rebuilt_rows,
        live_checksum,
        rebuilt_checksum,
        differing_rows: 0,
        diffs: Vec::new(),
    };
    if comparison.live_rows == comparison.rebuilt_rows
        && comparison.live_checksum == comparison.rebuilt_checksum
    {
        return Ok(comparison);
    }
    let keys = key_columns(conn, logical).await?;
    let (total, diffs) =
        diff_rows(conn, logical, &other.table(logical), &columns, &keys, limit).await?;
    comparison.differing_rows = total;
    comparison.diffs = diffs;
    Ok(comparison)
}

/// The rows of `live` and `rebuilt` that differ: the total, and the first `limit` in key
/// order.
pub(crate) async fn diff_rows(
    conn: &mut PgConnection,
    live: &str,
    rebuilt: &str,
    columns: &[String],
    keys: &[String],
    limit: usize,
) -> Result<(i64, Vec<RowDiff>), ProjectionError> {
    let side = |alias: &str| {
        columns
            .iter()
            .map(|c| format!("{alias}.{}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let join = keys
        .iter()
        .map(|k| format!("l.{0} = r.{0}", ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let order = keys
        .iter()
        .map(|k| format!("COALESCE(l.{0}, r.{0})", ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::query(&format!(
        "SELECT to_jsonb(l) AS live, to_jsonb(r) AS rebuilt, count(*) OVER () AS total
           FROM {} l FULL JOIN {} r ON {join}
          WHERE ROW({}) IS DISTINCT FROM ROW({})
          ORDER BY {order}
          LIMIT $1",
        ident(live),
        ident(rebuilt),
        side("l"),
        side("r"),
    ))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut total = 0;
    let mut diffs = Vec::with_capacity(rows.len());
    for row in rows {
        total = row.try_get("total")?;
        let l: Option<Value> = row.try_get("live")?;
        let r: Option<Value> = row.try_get("rebuilt")?;
        diffs.push(row_diff(live, columns, keys, l.as_ref(), r.as_ref()));
    }
    if diffs.is_empty() && limit == 0 {
        // LIMIT 0 reads no row, so count separately.
        total = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} l FULL JOIN {} r ON {join}
              WHERE ROW({}) IS DISTINCT FROM ROW({})",
            ident(live),
            ident(rebuilt),
            side("l"),
            side("r"),
        ))
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok((total, diffs))
}

/// Describes one differing row from its JSON on each side (`None`: missing there).
pub(crate) fn row_diff(
    table: &str,
    columns: &[String],
    keys: &[String],
    live: Option<&Value>,
    rebuilt: Option<&Value>,
) -> RowDiff {
    let empty = Map::new();
    let l = live.and_then(Value::as_object).unwrap_or(&empty);
    let r = rebuilt.and_then(Value::as_object).unwrap_or(&empty);
    let present = if live.is_some() { l } else { r };
    let key = keys
        .iter()
        .map(|k| {
            let v = present.get(k).unwrap_or(&Value::Null);
            match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match (live.is_some(), rebuilt.is_some()) {
        (true, false) => DiffKind::OnlyLive,
        (false, true) => DiffKind::OnlyRebuilt,
        _ => DiffKind::Changed(
            columns
                .iter()
                .filter_map(|c| {
                    let a = l.get(c).cloned().unwrap_or(Value::Null);
                    let b = r.get(c).cloned().unwrap_or(Value::Null);
                    (a != b).then(|| ColumnDiff {
                        column: c.clone(),
                        live: a,
                        rebuilt: b,
                    })
                })
                .collect(),
        ),
    };
    RowDiff {
        table: table.to_owned(),
        key,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_row_names_its_key_and_the_columns_that_differ() {
        let columns = vec![
            "order_id".to_owned(),
            "status".into(),
            "ticket_count".into(),
        ];
        let keys = vec!["order_id".to_owned()];
        let d = row_diff(
            "order_read",
            &columns,
            &keys,
            Some(&json!({"order_id": "a", "status": "PAID", "ticket_count": 9})),
            Some(&json!({"order_id": "a", "status": "PAID", "ticket_count": 2})),
        );
        assert_eq!(d.key, "order_id=a");
        assert_eq!(d.columns(), vec!["ticket_count"]);
        assert_eq!(
            d.to_string(),
            "order_read order_id=a: ticket_count live=9 rebuilt=2;"
        );
    }

    #[test]
    fn a_missing_row_says_which_side_has_it() {
        let columns = vec!["order_id".to_owned()];
        let d = row_diff(
            "order_read",
            &columns,
            &columns,
            None,
            Some(&json!({"order_id": "b"})),
        );
        assert_eq!(d.kind, DiffKind::OnlyRebuilt);
        assert_eq!(d.key, "order_id=b");
    }
}
