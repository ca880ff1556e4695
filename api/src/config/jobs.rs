//! The scheduled jobs' settings: whether they run here, each job's interval and window, and
//! their breaker.

use std::time::Duration;

use chrono::TimeDelta;
use clap::Args;

use crate::jobs::breaker::JobBreakerPolicy;

/// How often each job runs, what it looks at, and when its breaker opens.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Scheduled jobs")]
pub struct JobSettings {
    /// Run the scheduled jobs (docs/contract.md §8) in this process. Every replica may run them:
    /// each job has its own leader lock, so one replica at a time runs a given job.
    #[arg(
        id = "jobs_enabled",
        long = "jobs-enabled",
        env = "JOBS_ENABLED", value_name = "JOBS_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// Orders one job run looks at, at most: a run's work is bounded, never "all rows".
    #[arg(
        id = "job_batch_size",
        long = "job-batch-size",
        env = "JOB_BATCH_SIZE",
        value_name = "JOB_BATCH_SIZE",
        default_value_t = 100
    )]
    pub batch_size: i64,

    /// Seconds between runs of the expiration job (open orders past their expiry).
    #[arg(
        id = "job_expiration_interval_secs",
        long = "job-expiration-interval-secs",
        env = "JOB_EXPIRATION_INTERVAL_SECS",
        value_name = "JOB_EXPIRATION_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub expiration_interval_secs: u64,

    /// Seconds between runs of the reminder job (open orders about to expire).
    #[arg(
        id = "job_reminder_interval_secs",
        long = "job-reminder-interval-secs",
        env = "JOB_REMINDER_INTERVAL_SECS",
        value_name = "JOB_REMINDER_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub reminder_interval_secs: u64,

    /// An open order expiring within this many seconds gets its one reminder.
    #[arg(
        id = "job_reminder_window_secs",
        long = "job-reminder-window-secs",
        env = "JOB_REMINDER_WINDOW_SECS",
        value_name = "JOB_REMINDER_WINDOW_SECS",
        default_value_t = 300
    )]
    pub reminder_window_secs: u64,

    /// Seconds between runs of the reconciliation job (tickets, refunds, relay lag).
    #[arg(
        id = "job_reconciliation_interval_secs",
        long = "job-reconciliation-interval-secs",
        env = "JOB_RECONCILIATION_INTERVAL_SECS",
        value_name = "JOB_RECONCILIATION_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub reconciliation_interval_secs: u64,

    /// A paid order still without tickets this many minutes after payment is reconciled.
    #[arg(
        id = "job_reconciliation_after_minutes",
        long = "job-reconciliation-after-minutes",
        env = "JOB_RECONCILIATION_AFTER_MINUTES",
        value_name = "JOB_RECONCILIATION_AFTER_MINUTES",
        default_value_t = 10
    )]
    pub reconciliation_after_minutes: u32,

    /// Seconds between runs of the archiving job.
    #[arg(
        id = "job_archiving_interval_secs",
        long = "job-archiving-interval-secs",
        env = "JOB_ARCHIVING_INTERVAL_SECS",
        value_name = "JOB_ARCHIVING_INTERVAL_SECS",
        default_value_t = 3600
    )]
    pub archiving_interval_secs: u64,

    /// A terminal order (cancelled, expired, failed, refunded) untouched for this many days
    /// leaves the hot read model for the archive tables.
    #[arg(
        id = "job_archive_after_days",
        long = "job-archive-after-days",
        env = "JOB_ARCHIVE_AFTER_DAYS",
        value_name = "JOB_ARCHIVE_AFTER_DAYS",
        default_value_t = 30
    )]
    pub archive_after_days: u32,

    /// Seconds between runs of the event reminder job.
    #[arg(
        id = "job_event_reminder_interval_secs",
        long = "job-event-reminder-interval-secs",
        env = "JOB_EVENT_REMINDER_INTERVAL_SECS",
        value_name = "JOB_EVENT_REMINDER_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub event_reminder_interval_secs: u64,

    /// A paid order whose event starts within this many hours gets its one event reminder.
    #[arg(
        id = "job_event_reminder_window_hours",
        long = "job-event-reminder-window-hours",
        env = "JOB_EVENT_REMINDER_WINDOW_HOURS",
        value_name = "JOB_EVENT_REMINDER_WINDOW_HOURS",
        default_value_t = 24
    )]
    pub event_reminder_window_hours: u32,

    /// Consecutive failed runs of one job that open its circuit breaker (runs are skipped).
    #[arg(
        id = "job_breaker_failures",
        long = "job-breaker-failures",
        env = "JOB_BREAKER_FAILURES",
        value_name = "JOB_BREAKER_FAILURES",
        default_value_t = 3
    )]
    pub breaker_failures: u32,

    /// Seconds an open job breaker skips runs before it lets one probe run through.
    #[arg(
        id = "job_breaker_cooldown_secs",
        long = "job-breaker-cooldown-secs",
        env = "JOB_BREAKER_COOLDOWN_SECS",
        value_name = "JOB_BREAKER_COOLDOWN_SECS",
        default_value_t = 300
    )]
    pub breaker_cooldown_secs: u64,
}

impl JobSettings {
    /// Orders one run looks at, at least one.
    pub fn batch(&self) -> i64 {
        self.batch_size.max(1)
    }

    /// The breaker policy of every job.
    pub fn breaker_policy(&self) -> JobBreakerPolicy {
        JobBreakerPolicy {
            failures: self.breaker_failures.max(1),
            cool_down: TimeDelta::seconds(
                i64::try_from(self.breaker_cooldown_secs.max(1)).unwrap_or(i64::MAX),
            ),
        }
    }

    /// Between two expiration runs.
    pub fn expiration_interval(&self) -> Duration {
        secs(self.expiration_interval_secs)
    }

    /// Between two reminder runs.
    pub fn reminder_interval(&self) -> Duration {
        secs(self.reminder_interval_secs)
    }

    /// How soon before its expiry an open order is reminded.
    pub fn reminder_window(&self) -> TimeDelta {
        TimeDelta::seconds(i64::try_from(self.reminder_window_secs).unwrap_or(i64::MAX))
    }

    /// Between two reconciliation runs.
    pub fn reconciliation_interval(&self) -> Duration {
        secs(self.reconciliation_interval_secs)
    }

    /// How long after payment a paid order without tickets is reconciled.
    pub fn reconciliation_after(&self) -> TimeDelta {
        TimeDelta::minutes(i64::from(self.reconciliation_after_minutes))
    }

    /// Between two archiving runs.
    pub fn archiving_interval(&self) -> Duration {
        secs(self.archiving_interval_secs)
    }

    /// How long a terminal order stays in the hot read model.
    pub fn archive_after(&self) -> TimeDelta {
        TimeDelta::days(i64::from(self.archive_after_days))
    }

    /// Between two event reminder runs.
    pub fn event_reminder_interval(&self) -> Duration {
        secs(self.event_reminder_interval_secs)
    }

    /// How soon before its event a paid order is reminded.
    pub fn event_reminder_window(&self) -> TimeDelta {
        TimeDelta::hours(i64::from(self.event_reminder_window_hours))
    }
}

/// Seconds as an interval, never zero (a zero period would spin).
fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}
