//! The jobs' use cases (docs/contract.md §8): which orders each scheduled job looks at, and
//! what it does with each one, always through a command of the order's own aggregate.
//!
//! Each job here is a [`Sweep`]: a scan of the hot read model ([`Sweep::scan`]) and an action
//! on one order ([`Sweep::act`]) that answers an [`Outcome`] or fails with an [`AppError`]
//! classified as everywhere else: a refusal by the order is an outcome, not an error, and what
//! is left (an outage, a lost race, a peer that could not answer) is for a later run.
//!
//! When and where they run (schedule, leader lock, batch loop, breaker, status) is the
//! scheduler's business (`crate::jobs`), which this module must not depend on.
//!
//! # Parts
//! - [`expiration`], [`reminder`], [`event_reminder`], [`archiving`]: one command per order.
//! - [`reconciliation`]: paid orders without tickets (asks ticket-service), and the relay's
//!   lag.

pub mod archiving;
pub mod event_reminder;
pub mod expiration;
pub mod reconciliation;
pub mod reminder;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use order_domain::OrderCommand;
use order_projections::queries::{JobCandidate, JobScan};
use uuid::Uuid;

use super::error::AppResult;
use super::store::OrderStore;
#[cfg(doc)]
use super::AppError;

/// The run an action belongs to: its clock and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRun {
    /// The run's "now": commands carry it, and scans are relative to it.
    pub now: DateTime<Utc>,
    /// Correlates the run's events and outgoing calls (their `correlationId` and request id).
    pub run_id: Uuid,
}

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
    /// The job's name: the status key, the `job` metric label, and the leader lock
    /// `job:<name>`.
    fn name(&self) -> &'static str;

    /// The orders to look at, relative to the run's `now`.
    fn scan(&self, now: DateTime<Utc>) -> JobScan;

    /// Acts on one order.
    ///
    /// # Errors
    /// A transient failure ([`AppError::is_permanent`] is false): the run stops and this order
    /// is looked at again next run.
    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome>;
}

/// Sends `command` to `order` on behalf of job `job` and classifies the result: a refusal by
/// the order itself (or a vanished order) is permanent for this command, so the job moves on
/// instead of failing the run.
///
/// # Errors
/// A transient failure (database down, a race lost every time).
pub async fn command(
    store: &OrderStore,
    job: &'static str,
    run: &JobRun,
    order: &JobCandidate,
    command: impl Fn() -> OrderCommand,
) -> AppResult<Outcome> {
    let metadata = metadata(job, run, &order.tenant_id);
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
        Err(e) => Err(e),
    }
}

/// The metadata of events a job records: the run as request, correlation and cause, the job
/// as actor, and the order's tenant.
pub fn metadata(job: &'static str, run: &JobRun, tenant_id: &str) -> HashMap<String, String> {
    let id = run.run_id.to_string();
    HashMap::from([
        ("requestId".to_owned(), id.clone()),
        ("traceId".to_owned(), run.run_id.simple().to_string()),
        ("correlationId".to_owned(), id.clone()),
        ("causationId".to_owned(), id),
        ("actor".to_owned(), format!("order-service/job:{job}")),
        ("tenantId".to_owned(), tenant_id.to_owned()),
    ])
}
