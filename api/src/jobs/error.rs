//! The jobs' error type: what stops a run. Refusals by an order's own state are not errors
//! (they are counted as [`Outcome::Refused`]); these are the application's transient failures,
//! which a later run can get past, and they count against the job's circuit breaker.

use uuid::Uuid;

use crate::app::error::AppError;
#[cfg(doc)]
use crate::app::maintenance::Outcome;

/// Why a run stopped before finishing its batch.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A step that is not about one order failed: the scan of the read model, the relay lag,
    /// the refund pass.
    #[error("{0}")]
    Run(#[from] AppError),
    /// Acting on one order failed for a reason other than the order's state: the database is
    /// unreachable, other writers kept winning the race, or a peer service could not give the
    /// facts the job needs (unreachable, too slow, 5xx, breaker open).
    #[error("order {order_id}: {source}")]
    Order {
        order_id: Uuid,
        #[source]
        source: AppError,
    },
}
