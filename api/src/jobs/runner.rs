//! One job's scheduler: a tick loop that runs the job when this replica leads it and its
//! breaker lets it.
//!
//! Leadership is the session advisory lock `job:<name>` held on a dedicated connection
//! ([`order_projections::postgres::LeaderLock`]), confirmed with a keepalive on every tick before the job
//! runs, and released when the loop stops, so a standby replica takes over on its next tick.
//! A leader that loses its connection mid-run may overlap with the next leader for that run;
//! jobs act only through idempotent commands, so the overlap changes nothing twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use order_projections::postgres::LeaderLock;
use sqlx::PgPool;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::{JobBreaker, JobBreakerPolicy, JobBreakerState};
use super::status::{JobRegistry, LastError, StatusHandle};
use super::{Job, JobContext, JobError, JobReport};

/// What one tick did.
#[derive(Debug)]
pub enum Tick {
    /// Another replica leads this job; nothing ran here.
    Standby,
    /// Leadership could not be checked (the database is unreachable); nothing ran.
    LeaderUnknown(String),
    /// The breaker is open; the run was skipped.
    BreakerOpen { until: Option<DateTime<Utc>> },
    /// The job ran (to the end of its batch, or to a safe point when asked to stop).
    Ran(JobReport),
    /// The job ran and failed; the failure counts against the breaker.
    Failed(JobError),
}

/// Schedules one job.
#[derive(Debug)]
pub struct JobRunner {
    job: Arc<dyn Job>,
    lock: LeaderLock,
    breaker: JobBreaker,
    status: StatusHandle,
}

impl JobRunner {
    /// A runner for `job` that elects its leader on `pool` and reports to `registry`.
    pub fn new(
        pool: PgPool,
        job: Arc<dyn Job>,
        policy: JobBreakerPolicy,
        registry: &JobRegistry,
    ) -> Self {
        let status = registry.register(job.name(), &job.schedule(), job.interval());
        let breaker = JobBreaker::new(policy);
        status.update(|s| {
            s.enabled = true;
            s.breaker = Some(breaker.clone());
        });
        Self {
            lock: LeaderLock::new(pool, format!("job:{}", job.name())),
            job,
            breaker,
            status,
        }
    }

    /// The job's name.
    pub fn name(&self) -> &'static str {
        self.job.name()
    }

    /// Whether the last tick found this runner leading.
    pub fn is_leader(&self) -> bool {
        self.lock.is_leader()
    }

    /// The job's breaker.
    pub fn breaker(&self) -> &JobBreaker {
        &self.breaker
    }

    /// One scheduled step at `now`: confirm or take leadership, ask the breaker, run.
    pub async fn tick(&mut self, now: DateTime<Utc>, stop: &CancellationToken) -> Tick {
        let name = self.job.name();
        let leader = match self.lock.ensure().await {
            Ok(leader) => leader,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "cannot check the job's leader lock; skipping this run");
                self.set_leader(false);
                return Tick::LeaderUnknown(e.to_string());
            }
        };
        self.set_leader(leader);
        if !leader {
            return Tick::Standby;
        }
        if !self.breaker.admits(now) {
            metrics::counter!("job_runs_total", "job" => name, "outcome" => "skipped").increment(1);
            tracing::debug!(job = name, "breaker open; skipping this run");
            return Tick::BreakerOpen {
                until: self.breaker.open_until(),
            };
        }
        let probe = self.breaker.state(now) == JobBreakerState::HalfOpen;
        let ctx = JobContext::with_stop(now, stop.clone());
        self.status.update(|s| {
            s.running = true;
            s.last_run = Some(now);
        });
        let started = Instant::now();
        let span = tracing::info_span!("job.run", job = name, run.id = %ctx.run_id, probe);
        let result = self.job.run_once(&ctx).instrument(span).await;
        metrics::histogram!("job_run_duration_seconds", "job" => name)
            .record(started.elapsed().as_secs_f64());
        let tick = match result {
            Ok(report) => {
                self.breaker.succeeded();
                let outcome = if report.stopped_early {
                    "interrupted"
                } else {
                    "success"
                };
                metrics::counter!("job_runs_total", "job" => name, "outcome" => outcome)
                    .increment(1);
                metrics::counter!("job_orders_acted_total", "job" => name)
                    .increment(report.acted as u64);
                if report.acted > 0 || report.alerts > 0 || report.stopped_early {
                    tracing::info!(job = name, run.id = %ctx.run_id, ?report, "job run finished");
                } else {
                    tracing::debug!(job = name, run.id = %ctx.run_id, ?report, "job run finished");
                }
                let breaker = self.breaker.clone();
                let kept = report.clone();
                self.status.update(|s| {
                    s.last_success = Some(now);
                    s.last_report = Some(kept);
                    s.breaker = Some(breaker);
                });
                Tick::Ran(report)
            }
            Err(e) => {
                self.breaker.failed(now);
                metrics::counter!("job_runs_total", "job" => name, "outcome" => "failure")
                    .increment(1);
                metrics::counter!("job_failures_total", "job" => name).increment(1);
                tracing::warn!(
                    job = name,
                    run.id = %ctx.run_id,
                    error = %e.detail(),
                    consecutive_failures = self.breaker.consecutive_failures(),
                    breaker = self.breaker.state(now).as_str(),
                    "job run failed"
                );
                let breaker = self.breaker.clone();
                let message = e.to_string();
                self.status.update(|s| {
                    s.last_error = Some(LastError { at: now, message });
                    s.breaker = Some(breaker);
                });
                Tick::Failed(e)
            }
        };
        self.status.update(|s| s.running = false);
        let open = self.breaker.state(now) == JobBreakerState::Open;
        metrics::gauge!("job_breaker_open", "job" => name).set(if open { 1.0 } else { 0.0 });
        metrics::gauge!("job_consecutive_failures", "job" => name)
            .set(f64::from(self.breaker.consecutive_failures()));
        tick
    }

    /// Ticks every interval until `stop` is cancelled, then releases the leader lock. A run
    /// under way when `stop` is cancelled finishes its current order and stops there.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) {
        let period = self.job.interval().max(Duration::from_millis(1));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        self.status.update(|s| s.next_run = Some(Utc::now()));
        loop {
            let ticked_at = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                at = interval.tick() => at,
            };
            self.tick(Utc::now(), &stop).await;
            let next = next_tick(ticked_at, period, Instant::now());
            let wall = Utc::now()
                + chrono::TimeDelta::from_std(next.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
            self.status.update(|s| s.next_run = Some(wall));
        }
        self.release().await;
    }

    /// Gives up leadership at once (shutdown, or a test's failover), so a standby takes over
    /// on its next tick instead of waiting for the session to time out.
    pub async fn release(&mut self) {
        if let Err(e) = self.lock.release().await {
            tracing::warn!(job = self.job.name(), error = %e, "leader lock release failed; it ends with the session");
        }
        self.set_leader(false);
        self.status.update(|s| {
            s.running = false;
            s.next_run = None;
        });
    }

    fn set_leader(&self, leader: bool) {
        self.status.update(|s| s.leader = leader);
        metrics::gauge!("job_leader", "job" => self.job.name()).set(if leader { 1.0 } else { 0.0 });
    }
}

/// The tick after the one at `ticked_at` when missed ticks are skipped: the first multiple of
/// `period` after it that is not in the past.
fn next_tick(ticked_at: Instant, period: Duration, now: Instant) -> Instant {
    let mut next = ticked_at + period;
    if next < now {
        let behind = now.duration_since(next).as_nanos();
        let periods = behind / period.as_nanos().max(1) + 1;
        next += period * u32::try_from(periods).unwrap_or(u32::MAX);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_skips_missed_ones() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        assert_eq!(next_tick(t0, p, t0 + Duration::from_secs(3)), t0 + p);
        assert_eq!(
            next_tick(t0, p, t0 + Duration::from_secs(25)),
            t0 + Duration::from_secs(30)
        );
    }
}
