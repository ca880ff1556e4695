//! The archiving job: terminal orders (CANCELLED, EXPIRED, REFUNDED, FAILED) whose last change
//! is older than a configurable age (`JOB_ARCHIVE_AFTER_DAYS`) get `ArchiveOrder`. When the
//! `orders` projector applies the resulting `OrderArchived`, it moves the order's rows from
//! the hot read model to the archive tables (migration 0500). The aggregate refuses orders
//! with a refund under way or a dispute open; those are skipped until they settle.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use order_domain::commands::ArchiveOrder;
use order_domain::OrderCommand;
use order_projections::queries::{JobCandidate, JobScan};

use super::{JobRun, Outcome, Sweep};
use crate::app::error::AppResult;
use crate::app::store::OrderStore;

/// The job's name and lock suffix.
pub const NAME: &str = "archiving";

/// Archives old terminal orders.
#[derive(Debug, Clone)]
pub struct Archiving {
    store: OrderStore,
    age: TimeDelta,
}

impl Archiving {
    /// Archives terminal orders untouched for at least `age`.
    pub fn new(store: OrderStore, age: TimeDelta) -> Self {
        Self { store, age }
    }
}

#[async_trait]
impl Sweep for Archiving {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(&self, now: DateTime<Utc>) -> JobScan {
        JobScan::Archivable {
            before: now
                .checked_sub_signed(self.age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome> {
        let now = run.now;
        super::command(&self.store, NAME, run, order, || {
            OrderCommand::ArchiveOrder(ArchiveOrder { now })
        })
        .await
    }
}
