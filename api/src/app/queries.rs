//! The order lookups (docs/contract.md §3.2): by id, its items, what a charge needs, paid
//! orders without tickets, and an order's event history, each scoped to the caller's tenant
//! (another tenant's order is not found, exactly like an unknown one).
//!
//! # Read-your-writes and the lag bound
//! The read models follow the event store through the `orders` projector, which runs in every
//! replica, is woken by this replica's commits, polls the feed every `PROJECTION_POLL_MS`
//! (50 ms) for the others' when idle, and under load waits up to `PROJECTION_GATHER_MS` (5 ms)
//! between batches to apply the commits landing meanwhile together. So a committed command
//! normally shows up here within one poll interval plus one batch (tens of milliseconds). The
//! bound is not hard: a transaction left open anywhere on the database holds the feed's fence
//! back (the feed's lag report names it), and a projector that keeps failing backs off up to
//! 5 s.
//!
//! A caller that must see its own write passes the order's `version` from the command's answer
//! as the minimum version of the three per-order lookups. The lookup then waits, polling the
//! read model every 25 ms, until the order's version is at least that, for up to
//! `READ_WAIT_MS` (2 s by default), and is "not now" if the read model is still behind then.
//! Nothing is waited for that is not pending: an order the event store does not hold is not
//! found at once, and a version beyond the one the event store holds is rejected at once. A
//! minimum of 0 asks for nothing.
//!
//! # Outages
//! Every read runs within the request's database deadline (`REQUEST_DB_DEADLINE_MS`, see
//! [`crate::deadline`]); past it, or when the database refuses outright, the answer is "not
//! now" with a retry hint.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use order_bus::catchup::{page, PageQuery};
use order_bus::{BusError, Subjects};
use order_domain::ORDER_AGGREGATE_TYPE;
use order_projections::queries::{self, ForPayment, OrderDetail, WithoutTickets};
use order_projections::{OrderView, ProjectionError};
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::app::error::{AppError, AppResult};
use crate::app::store::{OrderStore, StoredEvent};
use crate::deadline::within_deadline;
use crate::read_side::{ReadFrom, ReadSide};

/// How often a minimum-version read looks at the read model again.
const READ_POLL: Duration = Duration::from_millis(25);

/// Seconds a caller is told to wait after a read that is still behind.
const RETRY_AFTER_SECS: u64 = 1;

/// The lookup use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queries {
    pool: PgPool,
    reads: ReadSide,
    store: OrderStore,
    read_wait: Duration,
}

impl Queries {
    /// Lookups over the read models through `reads` (a standby's, when `READ_DATABASE_URL` is
    /// set, else those in `pool`) and over the event store in `pool`, waiting up to
    /// `read_wait` for a minimum version.
    pub fn new(pool: PgPool, reads: ReadSide, store: OrderStore, read_wait: Duration) -> Self {
        Self {
            pool,
            reads,
            store,
            read_wait,
        }
    }

    /// Where the read models are read.
    pub fn reads(&self) -> &ReadSide {
        &self.reads
    }

    /// The order.
    ///
    /// # Errors
    /// See the module doc: not found, rejected, or "not now".
    pub async fn order(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        min_version: Option<u64>,
    ) -> AppResult<OrderView> {
        self.read_at_least(
            (id, tenant),
            min_version,
            |from| self.reads.order(from, id, tenant),
            |o| o.version,
        )
        .await
    }

    /// The order with its line items and their ticket ids.
    ///
    /// # Errors
    /// As [`Self::order`].
    pub async fn detail(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        min_version: Option<u64>,
    ) -> AppResult<OrderDetail> {
        self.read_at_least(
            (id, tenant),
            min_version,
            |from| {
                self.reads.read(from, |pool| async move {
                    queries::order_detail(&pool, id, tenant).await
                })
            },
            |d| d.order.version,
        )
        .await
    }

    /// What payment-service needs to charge the order, and whether it may.
    ///
    /// # Errors
    /// As [`Self::order`].
    pub async fn for_payment(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        min_version: Option<u64>,
    ) -> AppResult<ForPayment> {
        let detail = self.detail(id, tenant, min_version).await?;
        Ok(ForPayment::evaluate(detail, Utc::now()))
    }

    /// Paid orders that never got their tickets, for reconciliation.
    ///
    /// # Errors
    /// "Not now" when the database is unavailable.
    pub async fn without_tickets(
        &self,
        criteria: &WithoutTickets,
        tenant: Option<&str>,
    ) -> AppResult<Vec<OrderView>> {
        within_deadline("read", async {
            let now = Utc::now();
            self.reads
                .read(ReadFrom::Standby, |pool| async move {
                    queries::without_tickets(&pool, criteria, tenant, now).await
                })
                .await
                .map_err(AppError::from_read_side)
        })
        .await
    }

    /// The order's stored events in sequence order, upcast to current versions.
    ///
    /// # Errors
    /// Not found for an order the store does not hold for `tenant`; "not now" when the
    /// database is unavailable.
    pub async fn history(&self, id: Uuid, tenant: Option<&str>) -> AppResult<Vec<StoredEvent>> {
        let history = self.store.history(id).await?;
        let Some(first) = history.first() else {
            return Err(AppError::order_not_found());
        };
        let owner = first
            .payload
            .get("OrderCreated")
            .and_then(|c| c.get("tenantId"))
            .and_then(Value::as_str);
        if tenant.is_some_and(|t| Some(t) != owner) {
            return Err(AppError::order_not_found());
        }
        Ok(history)
    }

    /// One page of the feed for event-stream subscribers (docs/contract.md §6.6): the JSON of
    /// the envelopes exactly as the relay publishes them, and the cursor after them.
    ///
    /// # Errors
    /// "Not now" when the database is unavailable.
    pub async fn event_page(&self, subjects: &Subjects, query: &PageQuery) -> AppResult<Vec<u8>> {
        let read = within_deadline("read", async {
            page::read_page(&self.pool, subjects, query)
                .await
                .map_err(feed_error)
        })
        .await?;
        read.into_json().map_err(AppError::internal)
    }

    /// Reads through `fetch`; without `min_version` (or with 0) that is one read (not found
    /// when absent). With it, reads again every [`READ_POLL`] until the version is at least
    /// `min_version`, for up to the configured wait (from the standby, when one is in use, for
    /// the first half of it and from the primary for the rest), then "not now". Nothing pending is waited
    /// for: an order the event store does not hold for this tenant is not found, and a version
    /// beyond the store's rejected, at once. Each read runs within the request's database
    /// deadline, so a wait longer than what is left of it ends at the deadline.
    async fn read_at_least<T, F, Fut>(
        &self,
        (id, tenant): (Uuid, Option<&str>),
        min_version: Option<u64>,
        fetch: F,
        version: impl Fn(&T) -> u64,
    ) -> AppResult<T>
    where
        F: Fn(ReadFrom) -> Fut,
        Fut: Future<Output = Result<Option<T>, ProjectionError>>,
    {
        let started = Instant::now();
        let deadline = started + self.read_wait;
        // A standby still behind after half the wait is lagging: the primary, whose read model
        // has the version as soon as the projector wrote it, gets the other half.
        let standby_until = started + self.read_wait / 2;
        let mut checked = false;
        let mut first = true;
        loop {
            let from = if std::mem::take(&mut first) || Instant::now() < standby_until {
                ReadFrom::Standby
            } else {
                ReadFrom::Primary
            };
            let found = within_deadline("read", async {
                fetch(from).await.map_err(AppError::from_read_side)
            })
            .await?;
            // Every order is at version 0 or more, so a minimum of 0 waits for nothing: an
            // order the read model lacks is unknown at once, as without the parameter.
            let Some(min) = min_version.filter(|&m| m > 0) else {
                return found.ok_or_else(AppError::order_not_found);
            };
            if let Some(current) = found.filter(|v| version(v) >= min) {
                return Ok(current);
            }
            // Only what the event store holds can still reach the read model. Asked once: a
            // caller that got the version from a command's answer asks after it was committed.
            if !checked {
                match within_deadline("read", stored_version(&self.pool, id, tenant)).await? {
                    None => return Err(AppError::order_not_found()),
                    Some(stored) if stored < min => {
                        return Err(AppError::Rejected(format!(
                            "the order is at version {stored}; version {min} does not exist yet"
                        )))
                    }
                    Some(_) => checked = true,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("read_model_behind_total").increment(1);
                return Err(AppError::Unavailable {
                    message: format!(
                        "the read model has not reached version {min} of this order yet; retry shortly"
                    ),
                    retry_after: Some(RETRY_AFTER_SECS),
                });
            }
            tokio::time::sleep(READ_POLL.min(deadline - now)).await;
        }
    }
}

/// The version of order `id` in the event store (its last sequence), or `None` when the store
/// does not hold it for `tenant` (another tenant's order is unknown here, as on every read).
async fn stored_version(pool: &PgPool, id: Uuid, tenant: Option<&str>) -> AppResult<Option<u64>> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT max(sequence) FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND EXISTS (SELECT 1 FROM events c
                         WHERE c.aggregate_type = $1 AND c.aggregate_id = $2 AND c.sequence = 1
                           AND ($3::text IS NULL
                                OR c.payload->'OrderCreated'->>'tenantId' = $3))",
    )
    .bind(ORDER_AGGREGATE_TYPE)
    .bind(id.to_string())
    .bind(tenant)
    .fetch_one(pool)
    .await
    .map_err(AppError::from_sqlx)?;
    Ok(last.and_then(|v| u64::try_from(v).ok()))
}

/// A feed read's failure: an outage is "not now", anything else a bug.
fn feed_error(e: BusError) -> AppError {
    if e.is_transient() {
        tracing::warn!(error = %e, "event feed unavailable");
        AppError::Unavailable {
            message: "the database is unavailable; retry shortly".into(),
            retry_after: Some(1),
        }
    } else {
        AppError::internal(e)
    }
}
