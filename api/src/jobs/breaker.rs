//! One circuit breaker per job: after `failures` consecutive failed runs it opens and the
//! scheduler skips runs for `cool_down`; then it is half-open and lets one probe run through,
//! which closes it on success or opens it again on failure.
//!
//! Time is the run's clock ([`super::JobContext::now`]), not a monotonic one, so tests step
//! through a cool-down by passing a later `now` instead of sleeping.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

/// When a job's breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBreakerPolicy {
    /// Consecutive failed runs that open the breaker (at least 1).
    pub failures: u32,
    /// How long an open breaker skips runs.
    pub cool_down: TimeDelta,
}

/// The breaker's state as `GET /internal/jobs` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobBreakerState {
    /// Runs go ahead.
    Closed,
    /// Runs are skipped until the cool-down ends.
    Open,
    /// The cool-down ended: the next run is a probe.
    HalfOpen,
}

impl JobBreakerState {
    /// The wire name: `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// A job's breaker.
#[derive(Debug, Clone)]
pub struct JobBreaker {
    policy: JobBreakerPolicy,
    consecutive_failures: u32,
    open_until: Option<DateTime<Utc>>,
}

impl JobBreaker {
    /// A closed breaker.
    pub fn new(policy: JobBreakerPolicy) -> Self {
        Self {
            policy,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> JobBreakerState {
        match self.open_until {
            None => JobBreakerState::Closed,
            Some(until) if now < until => JobBreakerState::Open,
            Some(_) => JobBreakerState::HalfOpen,
        }
    }

    /// Whether a run may go ahead at `now` (closed, or half-open for a probe).
    pub fn admits(&self, now: DateTime<Utc>) -> bool {
        self.state(now) != JobBreakerState::Open
    }

    /// Failed runs in a row, up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Until when an open breaker skips runs.
    pub fn open_until(&self) -> Option<DateTime<Utc>> {
        self.open_until
    }

    /// A run succeeded: the breaker closes.
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
    }

    /// A run failed at `now`: the breaker opens at the threshold, or again after a failed probe.
    pub fn failed(&mut self, now: DateTime<Utc>) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let probing = self.open_until.is_some();
        if probing || self.consecutive_failures >= self.policy.failures.max(1) {
            self.open_until = Some(
                now.checked_add_signed(self.policy.cool_down)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> JobBreakerPolicy {
        JobBreakerPolicy {
            failures: 3,
            cool_down: TimeDelta::seconds(60),
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cool_down() {
        let mut b = JobBreaker::new(policy());
        b.failed(t(0));
        b.failed(t(1));
        assert_eq!(b.state(t(1)), JobBreakerState::Closed);
        b.failed(t(2));
        assert_eq!(b.state(t(2)), JobBreakerState::Open);
        assert!(!b.admits(t(61)));
        assert_eq!(b.state(t(62)), JobBreakerState::HalfOpen);
        assert!(b.admits(t(62)));
        b.succeeded();
        assert_eq!(b.state(t(62)), JobBreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn a_failed_probe_opens_it_again_at_once() {
        let mut b = JobBreaker::new(policy());
        for s in 0..3 {
            b.failed(t(s));
        }
        b.failed(t(100));
        assert_eq!(b.state(t(100)), JobBreakerState::Open);
        assert_eq!(b.open_until(), Some(t(160)));
        assert_eq!(b.consecutive_failures(), 4);
    }

    #[test]
    fn wire_names_are_kebab_case() {
        assert_eq!(
            serde_json::to_value([
                JobBreakerState::Closed,
                JobBreakerState::Open,
                JobBreakerState::HalfOpen
            ])
            .unwrap_or_default(),
            serde_json::json!(["closed", "open", "half-open"])
        );
        assert_eq!(JobBreakerState::HalfOpen.as_str(), "half-open");
    }
}
