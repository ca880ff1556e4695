//! The reconciliation job: three checks on work other parts of the platform should have
//! finished, in one run.
//!
//! 1. **Relay lag** ([`maintenance::reconciliation::relay_lag`]).
//! 2. **Unfinished refunds**: one pass of the refund retry loop ([`RefundRetrier::run_once`]),
//!    which finishes refunds left requested.
//! 3. **Paid orders without tickets** ([`TicketCheck`]), one batch.
//!
//! The checks are use cases of the application layer; this module only runs them in turn and
//! adds up their figures.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

use super::sweep::SweepJob;
use super::{Job, JobContext, JobError, JobReport};
use crate::app::maintenance::{self, reconciliation::TicketCheck, Sweep};
use crate::app::refund::RefundRetrier;
use crate::app::AppError;

/// The reconciliation job: relay lag, unfinished refunds, then paid orders without tickets.
#[derive(Debug)]
pub struct Reconciliation {
    tickets: SweepJob<TicketCheck>,
    refunds: RefundRetrier,
    pool: PgPool,
    interval: Duration,
}

impl Reconciliation {
    /// The job: `tickets` checked `batch` orders at a time, `refunds` for the refund pass.
    pub fn new(
        tickets: TicketCheck,
        refunds: RefundRetrier,
        pool: PgPool,
        interval: Duration,
        batch: i64,
    ) -> Self {
        Self {
            tickets: SweepJob::new(tickets, pool.clone(), interval, batch),
            refunds,
            pool,
            interval,
        }
    }
}

#[async_trait]
impl Job for Reconciliation {
    fn name(&self) -> &'static str {
        self.tickets.sweep().name()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let mut report = JobReport::default();

        let lag = maintenance::reconciliation::relay_lag(&self.pool).await?;
        report
            .details
            .insert("relayEventsBehind", lag.events_behind);
        report
            .details
            .insert("relayEventsFenced", lag.events_fenced);
        #[allow(clippy::cast_possible_truncation)] // whole seconds of lag fit an i64
        report.details.insert(
            "relaySecondsBehind",
            lag.seconds_behind.max(0.0).round() as i64,
        );

        if ctx.stop.is_cancelled() {
            report.stopped_early = true;
            return Ok(report);
        }
        let pass = self
            .refunds
            .run_once()
            .await
            .map_err(AppError::from_read_side)?;
        report.acted += pass.settled;
        report.details.insert(
            "refundsRetried",
            i64::try_from(pass.claimed).unwrap_or(i64::MAX),
        );
        report.details.insert(
            "refundsSettled",
            i64::try_from(pass.settled).unwrap_or(i64::MAX),
        );

        if ctx.stop.is_cancelled() {
            report.stopped_early = true;
            return Ok(report);
        }
        report.merge(self.tickets.run_batch(ctx).await?);
        Ok(report)
    }
}
