//! The event reminder job: PAID or PARTIALLY_REFUNDED orders whose event starts within a
//! configurable window (`JOB_EVENT_REMINDER_WINDOW_HOURS`) get `SendEventReminder`, which
//! records `EventReminderSent` once (published as `order.event_reminder_sent`).

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use order_domain::commands::SendEventReminder;
use order_domain::OrderCommand;
use order_projections::queries::{JobCandidate, JobScan};

use super::{JobRun, Outcome, Sweep};
use crate::app::error::AppResult;
use crate::app::store::OrderStore;

/// The job's name and lock suffix.
pub const NAME: &str = "event-reminder";

/// Reminds ticket holders that their event is close.
#[derive(Debug, Clone)]
pub struct EventReminder {
    store: OrderStore,
    window: TimeDelta,
}

impl EventReminder {
    /// Reminds about events starting within `window` of the run.
    pub fn new(store: OrderStore, window: TimeDelta) -> Self {
        Self { store, window }
    }
}

#[async_trait]
impl Sweep for EventReminder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(&self, now: DateTime<Utc>) -> JobScan {
        JobScan::EventStartingSoon {
            now,
            until: now
                .checked_add_signed(self.window)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    async fn act(&self, run: &JobRun, order: &JobCandidate) -> AppResult<Outcome> {
        let now = run.now;
        super::command(&self.store, NAME, run, order, || {
            OrderCommand::SendEventReminder(SendEventReminder { now })
        })
        .await
    }
}
