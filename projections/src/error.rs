//! The crate's one error type.
//!
//! Everything here talks to Postgres, so most failures are sqlx errors; the rest are events that
//! cannot be read, which stop a reader at that event rather than skipping it.

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
    /// A reader's handler refused a batch for a reason of its own.
    #[error("{0}")]
    Handler(String),
}

impl ProjectionError {
    /// Whether retrying the same work later can succeed (an outage) or not (bad data, a bug).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            Self::Undecodable { .. } | Self::Handler(_) => false,
        }
    }
}
