//! The loop the order jobs share: scan the hot read model for up to one batch of orders, then
//! act on each in turn (the [`Sweep`], a use case of `crate::app::maintenance`), stopping
//! between two orders when asked.
//!
//! The scan resumes where the previous run of this runner left off (an in-memory keyset
//! position) and starts over once a page comes back short, so orders a job cannot act on
//! (refused, or reconciled to an alert) never keep later ones from their turn. A replica that
//! takes over starts from the beginning, which only repeats no-ops.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use order_projections::queries::{self, ScanPosition};
use sqlx::PgPool;

use super::{Job, JobContext, JobError, JobReport};
use crate::app::maintenance::Sweep;
use crate::app::AppError;

/// A [`Job`] made of a [`Sweep`], a schedule and a batch size.
#[derive(Debug)]
pub struct SweepJob<S> {
    sweep: S,
    pool: PgPool,
    interval: Duration,
    batch: i64,
    resume_after: Mutex<Option<ScanPosition>>,
}

impl<S: Sweep> SweepJob<S> {
    /// A job running `sweep` every `interval` over at most `batch` orders per run.
    pub fn new(sweep: S, pool: PgPool, interval: Duration, batch: i64) -> Self {
        Self {
            sweep,
            pool,
            interval,
            batch: batch.max(1),
            resume_after: Mutex::new(None),
        }
    }

    /// The sweep itself.
    pub fn sweep(&self) -> &S {
        &self.sweep
    }

    fn position(&self) -> Option<ScanPosition> {
        *self
            .resume_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_position(&self, position: Option<ScanPosition>) {
        *self
            .resume_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = position;
    }

    /// One pass over one batch.
    ///
    /// # Errors
    /// The scan failed, or acting on an order failed transiently (orders before it stay done).
    pub async fn run_batch(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let started_after = self.position();
        let page = queries::job_candidates(
            &self.pool,
            self.sweep.scan(ctx.now),
            started_after,
            self.batch,
        )
        .await
        .map_err(AppError::from_read_side)?;
        let mut report = JobReport::default();
        let mut done_up_to = started_after;
        let run = ctx.run();
        for order in &page {
            if ctx.stop.is_cancelled() {
                report.stopped_early = true;
                break;
            }
            report.examined += 1;
            match self.sweep.act(&run, order).await {
                Ok(outcome) => report.count(outcome),
                Err(source) => {
                    self.set_position(done_up_to);
                    return Err(JobError::Order {
                        order_id: order.order_id,
                        source,
                    });
                }
            }
            done_up_to = Some(order.position);
        }
        let reached_the_end = !report.stopped_early && page.len() < self.batch_len();
        self.set_position(if reached_the_end { None } else { done_up_to });
        Ok(report)
    }

    fn batch_len(&self) -> usize {
        usize::try_from(self.batch).unwrap_or(usize::MAX)
    }
}

#[async_trait]
impl<S: Sweep> Job for SweepJob<S> {
    fn name(&self) -> &'static str {
        self.sweep.name()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        self.run_batch(ctx).await
    }
}
