//! The crate's one error type.
//!
//! Everything here talks to Postgres, so most failures are sqlx errors; the rest are events that
//! cannot be read, which stop a reader at that event rather than skipping it.

use sqlx::postgres::{PgDatabaseError, PgSeverity};

/// A failure of the feed, a checkpoint, a read model or a query.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Postgres refused or could not be reached; the caller retries the whole batch.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event does not decode into a known event; the reader stops at it.
    #[error("event {aggregate_id}#{sequence} ({event_type}) cannot be decoded: {reason}")]
    Undecodable {
        aggregate_id: String,
        sequence: i64,
        event_type: String,
        reason: String,
    },
    /// A read-model row holds a value this code cannot represent (a status it does not know, a
    /// negative count): a bug or a hand edit, answered as an internal error.
    #[error("invalid read-model row: {0}")]
    InvalidRow(String),
    /// A reader's handler refused a batch for a reason of its own.
    #[error("{0}")]
    Handler(String),
    /// Replay: another session already rebuilds this projection (it holds the projection's
    /// replay lock); two rebuilds would write the same shadow tables.
    #[error("a rebuild of {projection} is already running{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    RebuildRunning {
        projection: String,
        /// The Postgres backend pid of the session holding the lock, when it can be found.
        pid: Option<i32>,
    },
    /// Replay: no projection of that name is registered.
    #[error("unknown projection '{name}' (known: {known})")]
    UnknownProjection { name: String, known: String },
    /// Replay: a rollback was asked for, but there are no previous tables to go back to.
    #[error("{projection} has no previous tables ({tables}) to roll back to")]
    NothingToRollBack { projection: String, tables: String },
    /// Replay: the tables to swap no longer have the same shape (a migration ran during the
    /// rebuild, or the previous tables predate one); swapping would change the schema.
    #[error(
        "{table} and {other} differ in shape ({detail}); run the rebuild again with --restart"
    )]
    SchemaDrift {
        table: String,
        other: String,
        detail: String,
    },
    /// The database's next transaction id is not above every id the feed has stored (see
    /// [`crate::feed::check_transaction_ids_ahead`]): after a logical restore into another
    /// cluster, every reader would wait forever. An operator must fix it; it does not pass.
    #[error(
        "the database's transaction ids are behind the stored events (largest stored {stored}, \
         in {place}; next {next}), so every reader of the feed would read nothing and report no \
         lag. This happens after a logical restore (pg_dump/pg_restore, a logical replication \
         cut-over) into another cluster. With the service stopped, re-stamp the stored ids with \
         scripts/restamp-after-restore.sql, or advance the cluster's transaction id epoch with \
         `pg_resetwal -e {epoch}` on the cleanly stopped cluster; see docs/operations.md: \
         'After a logical restore'",
        epoch = (stored >> 32) + 1
    )]
    TransactionIdsBehind {
        /// The largest stored transaction id.
        stored: u64,
        /// Where it is stored: the events table or a reader's checkpoint.
        place: String,
        /// The id the database hands out next.
        next: u64,
    },
}

impl ProjectionError {
    /// Whether retrying the same work later can succeed (an outage) or not (bad data, a bug).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => is_outage(e),
            Self::Undecodable { .. }
            | Self::InvalidRow(_)
            | Self::Handler(_)
            | Self::UnknownProjection { .. }
            | Self::NothingToRollBack { .. }
            | Self::SchemaDrift { .. }
            | Self::TransactionIdsBehind { .. } => false,
            // The other rebuild finishes or dies; trying again later can succeed.
            Self::RebuildRunning { .. } => true,
        }
    }
}

/// Whether a sqlx failure means the database is unreachable or going away (retry later, answer
/// 503) rather than a bug. Besides the connection-level errors, that is the server telling a
/// session it is shutting down or not accepting connections yet: SQLSTATE class 08
/// (connection exception) and 57P01–57P03 (admin shutdown, crash shutdown, cannot connect now),
/// which a restart of Postgres sends to every open session.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Whether a failed statement touched that one statement only, so that its session (with any
/// advisory lock and prepared statement it holds) is fine to use again: a cancel or statement
/// timeout (57014), a lock not available (55P03), a serialization failure or deadlock (40001,
/// 40P01), or a lack of resources (class 53), each at `ERROR` severity. Anything else may have
/// left the session, or the statement prepared on it, unusable: one that would fail the same
/// way on every run (a prepared statement whose result type a migration changed, 0A000) needs
/// a fresh connection, not a retry on this one.
pub fn is_statement_only(e: &sqlx::Error) -> bool {
    let Some(db) = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
    else {
        return false;
    };
    db.severity() == PgSeverity::Error
        && (matches!(db.code(), "57014" | "55P03" | "40001" | "40P01")
            || db.code().starts_with("53"))
}
