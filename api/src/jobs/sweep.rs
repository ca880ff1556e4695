//! The loop the order jobs share: scan the hot read model for up to one batch of orders, then
//! act on each in turn, stopping between two orders when asked.
//!
//! The scan resumes where the previous run of this runner left off (an in-memory keyset
//! position) and starts over once a page comes back short, so orders a job cannot act on
//! (refused, or reconciled to an alert) never keep later ones from their turn. A replica that
//! takes over starts from the beginning, which only repeats no-ops.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use order_domain::OrderCommand;
use order_projections::queries::{self, JobCandidate, JobScan, ScanPosition};
use sqlx::PgPool;

use super::{Job, JobContext, JobError, JobReport};
use crate::app::store::OrderStore;

/// What acting on one order came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A command changed the order.
    Acted,
    /// The order was already as the command asks (a repeat, or another runner got there).
    Unchanged,
    /// The order's state refused the command (it moved on since the scan).
    Refused,
    /// Nothing could be done; a human was alerted.
    Alert,
}

/// One kind of order job: which orders, and what to do with each.
#[async_trait]
pub trait Sweep: Send + Sync + std::fmt::Debug {
    /// The job's name.
    fn name(&self) -> &'static str;

    /// The orders to look at, relative to the run's `now`.
    fn scan(&self, now: DateTime<Utc>) -> JobScan;

    /// Acts on one order.
    ///
    /// # Errors
    /// A transient failure: the run stops and this order is looked at again next run.
    async fn act(&self, ctx: &JobContext, order: &JobCandidate) -> Result<Outcome, JobError>;
}

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
        .await?;
        let mut report = JobReport::default();
        let mut done_up_to = started_after;
        for order in &page {
            if ctx.stop.is_cancelled() {
                report.stopped_early = true;
                break;
            }
            report.examined += 1;
            match self.sweep.act(ctx, order).await {
                Ok(outcome) => report.count(outcome),
                Err(e) => {
                    self.set_position(done_up_to);
                    return Err(e);
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

/// Sends `command` to `order` on behalf of job `job` and classifies the result: a refusal by
/// the order itself (or a vanished order) is permanent for this command, so the job moves on
/// instead of failing the run.
///
/// # Errors
/// [`JobError::Command`] for a transient failure (database down, a race lost every time).
pub async fn command(
    store: &OrderStore,
    job: &'static str,
    ctx: &JobContext,
    order: &JobCandidate,
    command: impl Fn() -> OrderCommand,
) -> Result<Outcome, JobError> {
    let metadata = metadata(job, ctx, &order.tenant_id);
    match store
        .execute(order.order_id, &metadata, |_| Ok(()), command)
        .await
    {
        Ok(done) if done.events.is_empty() => Ok(Outcome::Unchanged),
        Ok(_) => Ok(Outcome::Acted),
        Err(e) if e.is_permanent() => {
            tracing::info!(job, order.id = %order.order_id, reason = %e, "order refused the job's command");
            Ok(Outcome::Refused)
        }
        Err(source) => Err(JobError::Command {
            order_id: order.order_id,
            source,
        }),
    }
}

/// The metadata of events a job records: the run as request, correlation and cause, the job
/// as actor, and the order's tenant.
pub fn metadata(job: &'static str, ctx: &JobContext, tenant_id: &str) -> HashMap<String, String> {
    let run = ctx.run_id.to_string();
    HashMap::from([
        ("requestId".to_owned(), run.clone()),
        ("traceId".to_owned(), ctx.run_id.simple().to_string()),
        ("correlationId".to_owned(), run.clone()),
        ("causationId".to_owned(), run),
        ("actor".to_owned(), format!("order-service/job:{job}")),
        ("tenantId".to_owned(), tenant_id.to_owned()),
    ])
}
