//! The reminder job: PENDING or RESERVED orders expiring within a configurable window
//! (`JOB_REMINDER_WINDOW_SECS`) get `SendReminder`, which records `ReminderSent` once; the
//! outbox relay publishes it as `order.reminder_sent`, for the notification service.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use order_domain::commands::SendReminder;
use order_domain::OrderCommand;
use order_projections::queries::{JobCandidate, JobScan};

use super::{JobRun, Outcome, Sweep};
use crate::app::error::AppResult;
use crate::app::store::OrderStore;

/// The job's name and lock suffix.
pub const NAME: &str = "reminder";

/// Reminds buyers of orders about to expire.
#[derive(Debug, Clone)]
pub struct Reminder {
    store: OrderStore,
    window: TimeDelta,
}

impl Reminder {
    /// Reminds about orders expiring within `window` of the run.
    pub fn new(store: OrderStore, window: TimeDelta) -> Self {
        Self { store, window }
    }
}

#[async_trait]
impl Sweep for Reminder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(&self, now: DateTime<Utc>) -> JobScan {
        JobScan::ExpiringSoon {
            now,
            until: now
                .checked_add_signed(self.window)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome> {
        let now = run.now;
        super::command(&self.store, NAME, run, order, || {
            OrderCommand::SendReminder(SendReminder { now })
        })
        .await
    }
}
