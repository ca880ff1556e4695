//! The crate's one error type.

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
}
