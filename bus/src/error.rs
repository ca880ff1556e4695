//! The crate's one error type.
//!
//! Policy: this crate is a library for the application layer, so it returns typed errors
//! ([`BusError`], thiserror) and leaves logging to the loop that handles them; `anyhow` belongs
//! in the binary and glue code.

/// A failure of publishing, consuming or the dead-letter stream.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Postgres failed (checkpoints, inbox, leader lock).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the event feed failed.
    #[error(transparent)]
    Feed(#[from] order_projections::ProjectionError),
    /// NATS or JetStream refused or could not be reached.
    #[error("broker error: {0}")]
    Broker(String),
    /// A payload broke its published JSON Schema; the relay stops at that event.
    #[error("event {event_id} ({event_type}) fails its schema: {reason}")]
    SchemaViolation {
        event_id: String,
        event_type: String,
        reason: String,
    },
    /// A message or event could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The existing stream has a setting that cannot be changed in place.
    #[error("stream mismatch: {0}")]
    StreamMismatch(String),
    /// The leader lock could not be checked in time.
    #[error("leader lock: {0}")]
    Leader(String),
}

impl From<order_projections::postgres::LeaderError> for BusError {
    fn from(e: order_projections::postgres::LeaderError) -> Self {
        use order_projections::postgres::LeaderError;
        match e {
            LeaderError::Database(e) => Self::Database(e),
            LeaderError::Timeout(m) => Self::Leader(m),
        }
    }
}

impl BusError {
    /// Whether retrying later can succeed (an outage) or not (bad data, a misconfiguration):
    /// the relay backs off on the first kind and raises an alert on the second.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(_) | Self::Broker(_) | Self::Leader(_) => true,
            Self::Feed(e) => e.is_transient(),
            Self::SchemaViolation { .. } | Self::Codec(_) | Self::StreamMismatch(_) => false,
        }
    }
}
