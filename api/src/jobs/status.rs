//! Job status as this replica sees it, shared by the runners (writers) and
//! `GET /internal/jobs` (reader). In memory on purpose: each replica reports its own runs and
//! whether it holds each job's lock; the leader's answer is the one with `leader: true`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use order_projections::view::{rfc3339, rfc3339_opt};
use serde::Serialize;

use super::breaker::{JobBreaker, JobBreakerState};
use super::JobReport;

/// The last failure of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub message: String,
}

/// One job's status, as `GET /internal/jobs` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusView {
    pub name: String,
    /// e.g. `every 30s`.
    #[schema(example = "every 30s")]
    pub schedule: String,
    pub interval_seconds: u64,
    /// Whether a runner for this job runs in this replica (`JOBS_ENABLED`).
    pub enabled: bool,
    /// Whether this replica holds the job's leader lock (as of its last tick).
    pub leader: bool,
    /// Whether a run is under way here now.
    pub running: bool,
    /// When the last run here started.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_run: Option<DateTime<Utc>>,
    /// When the last successful run here started.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub consecutive_failures: u32,
    /// `closed`, `open` or `half-open`.
    pub breaker: JobBreakerState,
    /// Until when an open breaker skips runs.
    #[serde(serialize_with = "rfc3339_opt")]
    pub breaker_open_until: Option<DateTime<Utc>>,
    /// When this replica's runner ticks next (it runs then if it leads and the breaker lets it).
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_run: Option<DateTime<Utc>>,
    /// What the last successful run did.
    pub last_report: Option<JobReport>,
}

/// The mutable status of one job.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub name: String,
    pub schedule: String,
    pub interval: Duration,
    pub enabled: bool,
    pub leader: bool,
    pub running: bool,
    pub last_run: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub breaker: Option<JobBreaker>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_report: Option<JobReport>,
}

impl JobStatus {
    fn view(&self, now: DateTime<Utc>) -> JobStatusView {
        JobStatusView {
            name: self.name.clone(),
            schedule: self.schedule.clone(),
            interval_seconds: self.interval.as_secs(),
            enabled: self.enabled,
            leader: self.leader,
            running: self.running,
            last_run: self.last_run,
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            consecutive_failures: self
                .breaker
                .as_ref()
                .map_or(0, JobBreaker::consecutive_failures),
            breaker: self
                .breaker
                .as_ref()
                .map_or(JobBreakerState::Closed, |b| b.state(now)),
            breaker_open_until: self.breaker.as_ref().and_then(JobBreaker::open_until),
            next_run: self.next_run,
            last_report: self.last_report.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; status stays readable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One job's entry in the registry; its runner writes through it.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<JobStatus>>);

impl StatusHandle {
    /// Changes the status under its lock.
    pub fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        change(&mut lock(&self.0));
    }

    /// The status as served at `now`.
    pub fn view(&self, now: DateTime<Utc>) -> JobStatusView {
        lock(&self.0).view(now)
    }
}

/// Every job's status in this process. Cheap to clone: a handle.
#[derive(Debug, Clone, Default)]
pub struct JobRegistry {
    jobs: Arc<Mutex<Vec<StatusHandle>>>,
}

impl JobRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of job `name`, created on first use (listed in registration order).
    pub fn register(&self, name: &str, schedule: &str, interval: Duration) -> StatusHandle {
        let mut jobs = lock(&self.jobs);
        if let Some(found) = jobs.iter().find(|h| lock(&h.0).name == name) {
            return found.clone();
        }
        let handle = StatusHandle(Arc::new(Mutex::new(JobStatus {
            name: name.to_owned(),
            schedule: schedule.to_owned(),
            interval,
            enabled: false,
            leader: false,
            running: false,
            last_run: None,
            last_success: None,
            last_error: None,
            breaker: None,
            next_run: None,
            last_report: None,
        })));
        jobs.push(handle.clone());
        handle
    }

    /// Every job's status at `now`, in registration order.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Vec<JobStatusView> {
        lock(&self.jobs).iter().map(|h| h.view(now)).collect()
    }

    /// One job's status at `now`.
    pub fn get(&self, name: &str, now: DateTime<Utc>) -> Option<JobStatusView> {
        self.snapshot(now).into_iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobBreakerPolicy;
    use chrono::TimeDelta;

    #[test]
    fn registering_twice_returns_the_same_entry_and_views_are_camel_case() {
        let r = JobRegistry::new();
        let a = r.register("expiration", "every 30s", Duration::from_secs(30));
        let b = r.register("expiration", "every 30s", Duration::from_secs(30));
        r.register("reminder", "every 1m", Duration::from_secs(60));
        let now = Utc::now();
        a.update(|s| {
            s.enabled = true;
            let mut breaker = JobBreaker::new(JobBreakerPolicy {
                failures: 1,
                cool_down: TimeDelta::seconds(10),
            });
            breaker.failed(now);
            s.breaker = Some(breaker);
        });
        assert_eq!(r.snapshot(now).len(), 2);
        let v = serde_json::to_value(b.view(now)).unwrap_or_default();
        assert_eq!(v["name"], "expiration");
        assert_eq!(v["enabled"], true);
        assert_eq!(v["breaker"], "open");
        assert_eq!(v["consecutiveFailures"], 1);
        assert!(v["breakerOpenUntil"].is_string());
        assert!(v["lastRun"].is_null());
        assert_eq!(
            r.get("expiration", now + TimeDelta::seconds(11))
                .map(|v| v.breaker),
            Some(JobBreakerState::HalfOpen)
        );
    }
}
