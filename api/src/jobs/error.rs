//! The jobs' error type: what stops a run. Refusals by an order's own state are not errors
//! (they are counted as [`super::Outcome::Refused`]); these are failures that a later run can
//! get past, and they count against the job's circuit breaker.

use order_projections::ProjectionError;
use uuid::Uuid;

use crate::app::error::AppError;
use crate::clients::ClientError;

/// Why a run stopped before finishing its batch.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The read model, the feed or a job table could not be read or written.
    #[error("read side: {0}")]
    ReadSide(#[from] ProjectionError),
    /// A command could not be decided or appended for a reason other than the order's state:
    /// the database is unreachable, or other writers kept winning the race.
    #[error("order {order_id}: {source}")]
    Command {
        order_id: Uuid,
        #[source]
        source: AppError,
    },
    /// A peer service could not give the facts the job needs (unreachable, too slow, 5xx,
    /// breaker open).
    #[error("order {order_id}: {source}")]
    Peer {
        order_id: Uuid,
        #[source]
        source: ClientError,
    },
}
