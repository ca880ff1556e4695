//! The shadow and previous copies of a projection's tables: the only DDL outside `migrations/`.
//!
//! The read-model schema is defined by migrations alone. Replay never invents a table: it makes
//! copies of the live tables with `CREATE TABLE shadow (LIKE live INCLUDING ALL)` (columns,
//! defaults, checks, indexes, storage), adds the foreign keys between the copies that `LIKE`
//! leaves out, and renames tables and indexes to swap them. Names follow one convention, so
//! every step can find its tables again after a crash:
//!
//! | role     | table                | index              | checkpoint consumer |
//! |----------|----------------------|--------------------|---------------------|
//! | live     | `order_read`         | `order_read_pkey`  | `orders`            |
//! | shadow   | `order_read__shadow` | `…_pkey__shadow`   | `orders@shadow`     |
//! | previous | `order_read__old`    | `…_pkey__old`      | `orders@old`        |
//!
//! Indexes are renamed along with their tables, so after a swap the live tables carry exactly
//! the index and constraint names the migrations gave them, and a later migration that names
//! one still works. Not copied: triggers, policies and grants (the read models have none; the
//! service's role owns them).

use sqlx::{PgConnection, Row};

use crate::error::ProjectionError;

/// Postgres truncates longer identifiers silently, which would lose a table between steps.
const MAX_IDENTIFIER: usize = 63;

pub(crate) use crate::copies::ident;
pub use crate::copies::TableSet;

fn checked_name(name: String) -> Result<String, ProjectionError> {
    if name.len() > MAX_IDENTIFIER {
        return Err(ProjectionError::Handler(format!(
            "replay cannot use the name '{name}': Postgres identifiers are at most {MAX_IDENTIFIER} bytes"
        )));
    }
    Ok(name)
}

/// Whether every table of the set exists.
pub(crate) async fn all_exist(
    conn: &mut PgConnection,
    tables: &[&str],
    set: TableSet,
) -> Result<bool, ProjectionError> {
    Ok(count_existing(conn, tables, set).await? == tables.len())
}

/// How many tables of the set exist.
pub(crate) async fn count_existing(
    conn: &mut PgConnection,
    tables: &[&str],
    set: TableSet,
) -> Result<usize, ProjectionError> {
    let names: Vec<String> = tables.iter().map(|t| set.table(t)).collect();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) n WHERE to_regclass(quote_ident(n)) IS NOT NULL",
    )
    .bind(&names)
    .fetch_one(&mut *conn)
    .await?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Drops the tables of a set that exist (never [`TableSet::Live`]).
pub(crate) async fn drop_set(
    conn: &mut PgConnection,
    tables: &[&str],
    set: TableSet,
) -> Result<(), ProjectionError> {
    if set == TableSet::Live {
        return Err(ProjectionError::Handler(
            "replay never drops the live tables".into(),
        ));
    }
    let list: Vec<String> = tables.iter().map(|t| set.quoted(t)).collect();
    // Without the "does not exist, skipping" notices for the tables that are not there.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("DROP TABLE IF EXISTS {}", list.join(", ")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Creates the shadow copies of the live tables (parents first), empty and unlogged (until
/// [`complete_shadow`]; see [`emptied_by_recovery`]): the live columns,
/// defaults and checks, and the primary-key and unique constraints the upserts need, under
/// `…__shadow` names. The other indexes and the foreign keys come with [`complete_shadow`]
/// once the bulk of the rows is in: building an index once over a full table is several times
/// cheaper than maintaining it through every batch, and a foreign key is validated in one join.
pub(crate) async fn create_shadow(
    conn: &mut PgConnection,
    tables: &[&str],
) -> Result<(), ProjectionError> {
    let shadow = TableSet::Shadow;
    for table in tables {
        let copy = checked_name(shadow.table(table))?;
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)",
            ident(&copy),
            ident(table)
        ))
        .execute(&mut *conn)
        .await?;
        // `LIKE` copies no storage parameters: the copy gets the live table's fillfactor.
        let options: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass(quote_ident($1))",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(options) = options.filter(|o| !o.is_empty()) {
            sqlx::query(&format!(
                "ALTER TABLE {} SET ({})",
                ident(&copy),
                options.join(", ")
            ))
            .execute(&mut *conn)
            .await?;
        }
        let keys = sqlx::query(
            "SELECT conname::text AS name, pg_get_constraintdef(oid) AS definition
               FROM pg_constraint
              WHERE conrelid = to_regclass(quote_ident($1)) AND contype IN ('p', 'u')
              ORDER BY contype, conname",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for key in keys {
            let name: String = key.try_get("name")?;
            let definition: String = key.try_get("definition")?;
            sqlx::query(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
                ident(&copy),
                ident(&checked_name(shadow.table(&name))?)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Makes the shadow tables logged and gives them the live indexes and foreign keys they do not
/// have yet (see [`create_shadow`]); a no-op once that is done.
///
/// `SET LOGGED` rewrites each table once, writing it to the WAL in one sequential pass, which
/// costs far less than the WAL of every batch's inserts and updates (full-page images of pages
/// touched again after each checkpoint) would have.
pub(crate) async fn complete_shadow(
    conn: &mut PgConnection,
    tables: &[&str],
) -> Result<(), ProjectionError> {
    let shadow = TableSet::Shadow;
    // Parents first: a logged table cannot reference an unlogged one (no foreign key does yet,
    // but the order costs nothing).
    for table in tables {
        if is_unlogged(conn, &shadow.table(table)).await? {
            sqlx::query(&format!("ALTER TABLE {} SET LOGGED", shadow.quoted(table)))
                .execute(&mut *conn)
                .await?;
        }
    }
    for table in tables {
        let copy = shadow.table(table);
        let existing: Vec<String> = indexes(conn, &copy)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for (name, shape) in indexes(conn, table).await? {
            let target = checked_name(shadow.table(&name))?;
            if existing.contains(&target) {
                continue;
            }
            // `shape` is "[primary |unique ]USING …": everything after the table name.
            let (unique, using) = if let Some(rest) = shape.strip_prefix("unique ") {
                ("UNIQUE ", rest)
            } else {
                ("", shape.strip_prefix("primary ").unwrap_or(&shape))
            };
            sqlx::query(&format!(
                "CREATE {unique}INDEX {} ON {}{using}",
                ident(&target),
                ident(&copy)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    for table in tables {
        let existing: Vec<String> = foreign_key_rows(conn, &shadow.table(table))
            .await?
            .into_iter()
            .map(|(name, ..)| name)
            .collect();
        for (name, definition) in foreign_keys(conn, tables, table, shadow).await? {
            if existing.contains(&name) {
                continue;
            }
            sqlx::query(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
                shadow.quoted(table),
                ident(&name)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Whether crash recovery emptied the shadow: it is unlogged while it is built, and Postgres
/// truncates unlogged tables when it recovers from a crash, while the shadow's checkpoint
/// (logged) survives. Every shadow table is then unlogged and empty although events were
/// applied; a rebuild must start over rather than resume on missing rows. (A build whose events
/// all wrote no row at all looks the same, and starting it over costs nothing.)
pub(crate) async fn emptied_by_recovery(
    conn: &mut PgConnection,
    tables: &[&str],
    events_applied: i64,
) -> Result<bool, ProjectionError> {
    if events_applied == 0 {
        return Ok(false);
    }
    for table in tables {
        let copy = TableSet::Shadow.table(table);
        if !is_unlogged(conn, &copy).await? {
            return Ok(false);
        }
        let empty: bool = sqlx::query_scalar(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            TableSet::Shadow.quoted(table)
        ))
        .fetch_one(&mut *conn)
        .await?;
        if !empty {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `table` is unlogged (a shadow still being built).
pub(crate) async fn is_unlogged(
    conn: &mut PgConnection,
    table: &str,
) -> Result<bool, ProjectionError> {
    Ok(sqlx::query_scalar(
        "SELECT relpersistence = 'u' FROM pg_class WHERE oid = to_regclass(quote_ident($1))",
    )
    .bind(table)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(false))
}

/// Renames every table of `from` to its name in `to`, and its indexes with it.
pub(crate) async fn rename_set(
    conn: &mut PgConnection,
    tables: &[&str],
    from: TableSet,
    to: TableSet,
) -> Result<(), ProjectionError> {
    for table in tables {
        let target = checked_name(to.table(table))?;
        sqlx::query(&format!(
            "ALTER TABLE {} RENAME TO {}",
            from.quoted(table),
            ident(&target)
        ))
        .execute(&mut *conn)
        .await?;
        for (index, _) in indexes(conn, &target).await? {
            let base = index.strip_suffix(from.suffix()).unwrap_or(&index);
            let renamed = checked_name(to.table(base))?;
            if renamed != index {
                sqlx::query(&format!(
                    "ALTER INDEX {} RENAME TO {}",
                    ident(&index),
                    ident(&renamed)
                ))
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// How much of two copies' shape [`ensure_same_shape`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Columns and checks: what the rows must fit (a shadow still being built lacks indexes).
    Rows,
    /// Columns, checks, indexes and foreign keys: what a swap must keep.
    Full,
}

/// Fails with [`ProjectionError::SchemaDrift`] unless every table of `a` has the same shape as
/// its counterpart in `b`.
pub(crate) async fn ensure_same_shape(
    conn: &mut PgConnection,
    tables: &[&str],
    a: TableSet,
    b: TableSet,
    scope: Shape,
) -> Result<(), ProjectionError> {
    let keep = |parts: Vec<String>| -> Vec<String> {
        match scope {
            Shape::Full => parts,
            Shape::Rows => parts
                .into_iter()
                .filter(|p| p.starts_with("column ") || p.starts_with("check "))
                .collect(),
        }
    };
    for table in tables {
        let left = keep(shape(conn, tables, table, a).await?);
        let right = keep(shape(conn, tables, table, b).await?);
        if left != right {
            let detail = left.iter().zip(&right).find(|(l, r)| l != r).map_or_else(
                || format!("{} against {} parts", left.len(), right.len()),
                |(l, r)| format!("'{l}' against '{r}'"),
            );
            return Err(ProjectionError::SchemaDrift {
                table: a.table(table),
                other: b.table(table),
                detail,
            });
        }
    }
    Ok(())
}

/// A table's indexes: (name, definition from "USING" on, with uniqueness).
async fn indexes(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, String)>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT c.relname AS name,
                CASE WHEN i.indisprimary THEN 'primary ' WHEN i.indisunique THEN 'unique ' ELSE '' END
                || substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$') AS shape
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = to_regclass(quote_ident($1))
          ORDER BY c.relname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("shape")?)))
        .collect()
}

/// A table's foreign keys: (name, definition, referenced table as `regclass` text, referenced
/// table's bare name).
async fn foreign_key_rows(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, String, String, String)>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT c.conname::text AS name, pg_get_constraintdef(c.oid) AS definition,
                c.confrelid::regclass::text AS referenced, r.relname::text AS referenced_name
           FROM pg_constraint c
           JOIN pg_class r ON r.oid = c.confrelid
          WHERE c.conrelid = to_regclass(quote_ident($1)) AND c.contype = 'f'
          ORDER BY c.conname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("name")?,
                r.try_get("definition")?,
                r.try_get("referenced")?,
                r.try_get("referenced_name")?,
            ))
        })
        .collect()
}

/// The foreign keys of the live `table`, rewritten for the copy `set`: a reference to another
/// table of the projection points at that table's copy.
async fn foreign_keys(
    conn: &mut PgConnection,
    tables: &[&str],
    table: &str,
    set: TableSet,
) -> Result<Vec<(String, String)>, ProjectionError> {
    let mut keys = Vec::new();
    for (name, definition, referenced, referenced_name) in foreign_key_rows(conn, table).await? {
        if !tables.contains(&referenced_name.as_str()) {
            keys.push((name, definition));
            continue;
        }
        let from = format!("REFERENCES {referenced}(");
        if !definition.contains(&from) {
            return Err(ProjectionError::Handler(format!(
                "cannot copy foreign key {name} of {table}: unexpected definition '{definition}'"
            )));
        }
        let to = format!("REFERENCES {}(", set.quoted(&referenced_name));
        keys.push((name, definition.replacen(&from, &to, 1)));
    }
    Ok(keys)
}

/// Everything about a table that a copy must share with the original, with the copy's suffix
/// taken out of names: columns in order, indexes, check and foreign-key constraints.
async fn shape(
    conn: &mut PgConnection,
    tables: &[&str],
    logical: &str,
    set: TableSet,
) -> Result<Vec<String>, ProjectionError> {
    let physical = set.table(logical);
    let mut parts = Vec::new();
    let columns = sqlx::query(
        "SELECT a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                || CASE WHEN a.attidentity <> '' THEN ' identity' ELSE '' END
                || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END AS part
           FROM pg_attribute a
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(&physical)
    .fetch_all(&mut *conn)
    .await?;
    for row in columns {
        parts.push(format!("column {}", row.try_get::<String, _>("part")?));
    }
    let mut index_parts: Vec<String> = indexes(conn, &physical)
        .await?
        .into_iter()
        .map(|(name, shape)| {
            let base = name.strip_suffix(set.suffix()).unwrap_or(&name).to_owned();
            format!("index {base} {shape}")
        })
        .collect();
    index_parts.sort();
    parts.extend(index_parts);
    let checks = sqlx::query(
        "SELECT conname::text || ' ' || pg_get_constraintdef(oid) AS part
           FROM pg_constraint
          WHERE conrelid = to_regclass(quote_ident($1)) AND contype = 'c'
          ORDER BY conname",
    )
    .bind(&physical)
    .fetch_all(&mut *conn)
    .await?;
    for row in checks {
        parts.push(format!("check {}", row.try_get::<String, _>("part")?));
    }
    // Foreign keys, with references to the set's own tables named by their logical name.
    for (name, mut definition, referenced, referenced_name) in
        foreign_key_rows(conn, &physical).await?
    {
        let base = referenced_name
            .strip_suffix(set.suffix())
            .unwrap_or(&referenced_name);
        if tables.contains(&base) {
            definition = definition.replacen(
                &format!("REFERENCES {referenced}("),
                &format!("REFERENCES {base}("),
                1,
            );
        }
        parts.push(format!("foreign key {name} {definition}"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        assert_eq!(TableSet::Live.table("order_read"), "order_read");
        assert_eq!(TableSet::Shadow.table("order_read"), "order_read__shadow");
        assert_eq!(
            TableSet::Old.table("order_read_pkey"),
            "order_read_pkey__old"
        );
        assert_eq!(TableSet::Shadow.quoted("a\"b"), "\"a\"\"b__shadow\"");
    }

    #[test]
    fn over_long_names_are_refused_not_truncated() {
        assert!(checked_name("x".repeat(63)).is_ok());
        assert!(checked_name("x".repeat(64)).is_err());
    }
}
