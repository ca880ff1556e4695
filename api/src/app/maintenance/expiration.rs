//! The expiration job: PENDING or RESERVED orders past their expiry become `OrderExpired`
//! through `ExpireOrder`. An order paid or cancelled since the scan refuses it, and one
//! already expired is left as it is.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use order_domain::commands::ExpireOrder;
use order_domain::OrderCommand;
use order_projections::queries::{JobCandidate, JobScan};

use super::{JobRun, Outcome, Sweep};
use crate::app::error::AppResult;
use crate::app::store::OrderStore;

/// The job's name and lock suffix.
pub const NAME: &str = "expiration";

/// Expires open orders past their expiry.
#[derive(Debug, Clone)]
pub struct Expiration {
    store: OrderStore,
}

impl Expiration {
    /// The sweep over `store`.
    pub fn new(store: OrderStore) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Sweep for Expiration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(&self, now: DateTime<Utc>) -> JobScan {
        JobScan::Expired { now }
    }

    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome> {
        let now = run.now;
        super::command(&self.store, NAME, run, order, || {
            OrderCommand::ExpireOrder(ExpireOrder { now })
        })
        .await
    }
}
