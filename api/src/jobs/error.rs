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

impl JobError {
    /// The error with every cause under it, for the log: an internal failure's own text stays
    /// out of `GET /internal/jobs` (which shows [`ToString::to_string`]) but not out of the log.
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let more = c.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = c.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_names_an_internal_cause_the_message_hides() {
        let e = JobError::Order {
            order_id: Uuid::nil(),
            source: AppError::internal(anyhow::anyhow!("relation \"orders\" does not exist")),
        };
        assert!(!e.to_string().contains("does not exist"), "{e}");
        assert!(e.detail().contains("does not exist"), "{}", e.detail());
        let outage = JobError::Run(AppError::Unavailable {
            message: "the database is unavailable; retry shortly".into(),
            retry_after: Some(1),
        });
        assert_eq!(
            outage.detail(),
            "the database is unavailable; retry shortly"
        );
    }
}
