//! Scheduled jobs (docs/contract.md §8): expiration, reminder, reconciliation, archiving and event
//! reminder, each run on one replica at a time.
//!
//! A [`Job`] does one bounded, idempotent pass in [`Job::run_once`]: it asks the hot read model
//! for at most `JOB_BATCH_SIZE` orders and acts on each only through a command, so running it
//! twice, or on two replicas at once, changes nothing the first run did not. It takes its clock
//! from [`JobContext::now`], so tests drive it at any time, and stops at its next safe point
//! (between two orders) once [`JobContext::stop`] is cancelled.
//!
//! A [`JobRunner`] schedules one job: on each tick it confirms leadership through the job's own
//! Postgres advisory lock `job:<name>` (a dedicated connection, re-checked every tick, released
//! on shutdown), asks the job's circuit breaker, runs, and records the outcome in the shared
//! [`JobRegistry`] that `GET /internal/jobs` serves, and in the `job_*` metrics.
//!
//! What each job does is a use case of the application layer (`crate::app::maintenance`):
//! this module decides only when and where it runs, and records how it went.
//!
//! # Layout
//! - [`sweep`]: the batch loop the order jobs share (scan, act on each, stop when asked).
//! - [`reconciliation`]: the job that runs three checks in turn.
//! - [`runner`]: one job's schedule, leadership and breaker; [`breaker`]: the breaker.
//! - [`status`]: what `GET /internal/jobs` answers; [`error`]: the jobs' error type.
//!
//! # Must not depend on
//! The HTTP adapter (`crate::routes` serves the status, not the other way round).

pub mod breaker;
pub mod error;
pub mod reconciliation;
pub mod runner;
pub mod status;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::app::maintenance::reconciliation::TicketCheck;
use crate::app::maintenance::{archiving, event_reminder, expiration, reminder, JobRun, Outcome};
use crate::startup::AppState;

pub use breaker::{JobBreaker, JobBreakerPolicy, JobBreakerState};
pub use error::JobError;
pub use runner::{JobRunner, Tick};
pub use status::{JobRegistry, JobStatusView};
pub use sweep::SweepJob;

/// One scheduled job. Implementations hold their own handles (store, pool, clients) and keep
/// no state that matters between runs: everything they decide comes from the read model and
/// the event store, so any replica can take over.
#[async_trait]
pub trait Job: Send + Sync + std::fmt::Debug {
    /// Stable name: the status key, the `job` metric label, and the leader lock `job:<name>`.
    fn name(&self) -> &'static str;

    /// Time between two scheduled runs.
    fn interval(&self) -> Duration;

    /// The schedule as `GET /internal/jobs` shows it.
    fn schedule(&self) -> String {
        schedule_of(self.interval())
    }

    /// One bounded pass at `ctx.now`.
    ///
    /// # Errors
    /// A transient failure (database, peer service) that stopped the pass; orders handled
    /// before it stay handled. An order whose state refuses the command is not an error.
    async fn run_once(&self, ctx: &JobContext) -> Result<JobReport, JobError>;
}

/// What one run is given: its clock, its stop signal and its id.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The run's "now": commands carry it, and scans are relative to it.
    pub now: DateTime<Utc>,
    /// Cancelled on shutdown: the run stops before its next order.
    pub stop: CancellationToken,
    /// Correlates the run's events and outgoing calls (their `correlationId` and request id).
    pub run_id: Uuid,
}

impl JobContext {
    /// A run at `now` that is never asked to stop.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self::with_stop(now, CancellationToken::new())
    }

    /// A run at `now` that stops at its next safe point once `stop` is cancelled.
    pub fn with_stop(now: DateTime<Utc>, stop: CancellationToken) -> Self {
        Self {
            now,
            stop,
            run_id: Uuid::now_v7(),
        }
    }

    /// What the run's actions are told about it.
    pub fn run(&self) -> JobRun {
        JobRun {
            now: self.now,
            run_id: self.run_id,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// Orders looked at.
    pub examined: usize,
    /// Orders a command changed (an event was recorded).
    pub acted: usize,
    /// Orders already in the state the command asks for (nothing recorded).
    pub unchanged: usize,
    /// Orders whose state refused the command (their state moved on since the scan).
    pub refused: usize,
    /// Problems raised for a human (warning log and `job_alerts_total`).
    pub alerts: usize,
    /// The run was asked to stop and left the rest of its batch for the next run.
    pub stopped_early: bool,
    /// Job-specific figures (reconciliation: relay lag, refunds retried).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, i64>)]
    pub details: BTreeMap<&'static str, i64>,
}

impl JobReport {
    /// Counts one order's outcome.
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Acted => self.acted += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Alert => self.alerts += 1,
        }
    }

    /// Adds another part's figures to this report.
    pub fn merge(&mut self, other: Self) {
        self.examined += other.examined;
        self.acted += other.acted;
        self.unchanged += other.unchanged;
        self.refused += other.refused;
        self.alerts += other.alerts;
        self.stopped_early |= other.stopped_early;
        self.details.extend(other.details);
    }
}

/// `every 30s`, `every 5m`, `every 1h`: the largest whole unit.
fn schedule_of(every: Duration) -> String {
    let secs = every.as_secs().max(1);
    if secs.is_multiple_of(3600) {
        format!("every {}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("every {}m", secs / 60)
    } else {
        format!("every {secs}s")
    }
}

/// Every job, configured from settings, in a stable order.
pub fn all(state: &AppState) -> Vec<Arc<dyn Job>> {
    let s = &state.settings.jobs;
    let pool = state.pool.clone();
    let store = state.store.clone();
    let batch = s.batch();
    vec![
        Arc::new(SweepJob::new(
            expiration::Expiration::new(store.clone()),
            pool.clone(),
            s.expiration_interval(),
            batch,
        )),
        Arc::new(SweepJob::new(
            reminder::Reminder::new(store.clone(), s.reminder_window()),
            pool.clone(),
            s.reminder_interval(),
            batch,
        )),
        Arc::new(reconciliation::Reconciliation::new(
            TicketCheck::new(
                store.clone(),
                state.clients.ticket.clone(),
                s.reconciliation_after(),
            ),
            crate::workers::refund_retrier(state),
            pool.clone(),
            s.reconciliation_interval(),
            batch,
        )),
        Arc::new(SweepJob::new(
            archiving::Archiving::new(store.clone(), s.archive_after()),
            pool.clone(),
            s.archiving_interval(),
            batch,
        )),
        Arc::new(SweepJob::new(
            event_reminder::EventReminder::new(store, s.event_reminder_window()),
            pool,
            s.event_reminder_interval(),
            batch,
        )),
    ]
}

/// Lists every configured job in `state.jobs`, running here or not, so `GET /internal/jobs`
/// shows what this replica would run even while jobs are disabled on it.
pub fn register_all(state: &AppState) {
    for job in all(state) {
        state
            .jobs
            .register(job.name(), &job.schedule(), job.interval());
    }
}

/// Starts one runner per job, each a task of `tracker` that stops when `stop` is cancelled:
/// it lets the current run reach its safe point, then releases the job's leader lock.
pub fn spawn(state: &AppState, stop: &CancellationToken, tracker: &TaskTracker) {
    let policy = state.settings.jobs.breaker_policy();
    for job in all(state) {
        let runner = JobRunner::new(state.pool.clone(), job, policy, &state.jobs);
        tracker.spawn(runner.run_until_stopped(stop.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_use_the_largest_whole_unit() {
        assert_eq!(schedule_of(Duration::from_secs(30)), "every 30s");
        assert_eq!(schedule_of(Duration::from_secs(300)), "every 5m");
        assert_eq!(schedule_of(Duration::from_secs(7200)), "every 2h");
        assert_eq!(schedule_of(Duration::from_secs(90)), "every 90s");
        assert_eq!(schedule_of(Duration::ZERO), "every 1s");
    }

    #[test]
    fn reports_count_and_merge() {
        let mut a = JobReport {
            examined: 3,
            ..JobReport::default()
        };
        a.count(Outcome::Acted);
        a.count(Outcome::Refused);
        let mut b = JobReport {
            examined: 1,
            stopped_early: true,
            ..JobReport::default()
        };
        b.count(Outcome::Alert);
        b.details.insert("relayEventsBehind", 4);
        a.merge(b);
        assert_eq!((a.examined, a.acted, a.refused, a.alerts), (4, 1, 1, 1));
        assert!(a.stopped_early);
        assert_eq!(a.details.get("relayEventsBehind"), Some(&4));
    }
}
