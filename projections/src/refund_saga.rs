//! The `pending_refunds` read model: refunds that were requested and have not finished yet.
//!
//! The refund saga (docs/contract.md §5) records `RefundRequested`, calls payment-service, then
//! records `OrderRefunded` or `RefundFailed`. A crash or an outage between those steps leaves a
//! refund requested; this table is how the retry loop finds it. The projector
//! [`PendingRefunds`] adds a row on `RefundRequested` and removes it on either outcome, in the
//! same transaction as its checkpoint, so the table never disagrees with the event store for
//! long. The retry loop claims due rows with [`claim_due`] (`FOR UPDATE SKIP LOCKED`, then a
//! lease), so any number of replicas can run it and each refund is worked on by one at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use order_domain::OrderEvent;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::feed::FeedEvent;
use crate::runner::Projector;

/// The checkpoint name of [`PendingRefunds`].
pub const REFUND_SAGA_PROJECTION: &str = "refund_saga";

/// Maintains `pending_refunds` from `RefundRequested`, `OrderRefunded` and `RefundFailed`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PendingRefunds;

impl Projector for PendingRefunds {
    /// With metadata: a refund's row keeps the tenant, request and trace ids of its request.
    type Event = FeedEvent;

    fn name(&self) -> &str {
        REFUND_SAGA_PROJECTION
    }

    /// One statement per refund event, none for the others: refund events are a small share
    /// of the feed, so a batch holds few of them.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            apply_event(&mut *conn, event).await?;
        }
        Ok(())
    }
}

/// Adds or removes `event`'s refund, if it is a refund event.
async fn apply_event(conn: &mut PgConnection, event: &FeedEvent) -> Result<(), ProjectionError> {
    if !matches!(
        event.event_type.as_str(),
        "RefundRequested"
            | "OrderRefunded"
            | "RefundFailed"
            | "PaymentRejected"
            | "PaymentReturned"
            | "PaymentReturnFailed"
    ) {
        return Ok(());
    }
    let Some(order_id) = event.order_id() else {
        return Err(ProjectionError::Handler(format!(
            "aggregate id '{}' is not an order id",
            event.aggregate_id
        )));
    };
    match event.decode()? {
        // Inserting twice is harmless: a replayed batch finds the row there already.
        OrderEvent::RefundRequested(e) => {
            insert(&mut *conn, event, order_id, e.refund_id, e.amount_cents).await?;
        }
        // The return of a captured payment the order rejected is a refund like any other
        // for the retry loop: same table, same idempotency key, same outcomes.
        OrderEvent::PaymentRejected(e) => {
            insert(&mut *conn, event, order_id, e.refund_id, e.amount_cents).await?;
        }
        OrderEvent::PaymentReturned(e) => remove(&mut *conn, e.refund_id).await?,
        OrderEvent::PaymentReturnFailed(e) => remove(&mut *conn, e.refund_id).await?,
        OrderEvent::OrderRefunded(e) => remove(&mut *conn, e.refund_id).await?,
        OrderEvent::RefundFailed(e) => remove(&mut *conn, e.refund_id).await?,
        _ => {}
    }
    Ok(())
}

/// Adds a refund to be finished, unless it is there already.
async fn insert(
    conn: &mut PgConnection,
    event: &FeedEvent,
    order_id: Uuid,
    refund_id: Uuid,
    amount_cents: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO pending_refunds
             (refund_id, order_id, amount_cents, tenant_id, request_id, trace_id,
              requested_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(refund_id)
    .bind(order_id)
    .bind(amount_cents)
    .bind(event.meta("tenantId"))
    .bind(event.meta("requestId"))
    .bind(event.meta("traceId"))
    .bind(event.recorded_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund the retry loop has claimed for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRefund {
    pub refund_id: Uuid,
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub tenant_id: Option<String>,
    /// The request that asked for the refund, for correlation.
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// How [`claim_due`] picks and leases refunds.
#[derive(Debug, Clone, Copy)]
pub struct ClaimPolicy {
    /// A refund younger than this is left to the request that is still finishing it.
    pub grace: Duration,
    /// Most refunds claimed per call.
    pub limit: i64,
    /// Lease after the first attempt; it doubles per attempt up to `max_lease`. A replica that
    /// dies mid-attempt loses nothing: the row becomes due again when the lease runs out.
    pub base_lease: Duration,
    pub max_lease: Duration,
}

/// Claims up to `policy.limit` refunds that are due, pushing each one's next attempt out by its
/// lease. Rows locked by another replica's claim are skipped, never waited for, and the claim
/// commits at once, so no transaction stays open while payment-service is called.
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn claim_due(
    pool: &PgPool,
    policy: ClaimPolicy,
) -> Result<Vec<ClaimedRefund>, ProjectionError> {
    let rows = sqlx::query(
        "UPDATE pending_refunds p
            SET attempts = p.attempts + 1,
                next_attempt_at = now() + make_interval(
                    secs => LEAST($3::float8 * power(2, p.attempts), $4::float8))
           FROM (SELECT refund_id FROM pending_refunds
                  WHERE next_attempt_at <= now()
                    AND requested_at <= now() - make_interval(secs => $1::float8)
                  ORDER BY next_attempt_at
                  LIMIT $2
                  FOR UPDATE SKIP LOCKED) due
          WHERE p.refund_id = due.refund_id
      RETURNING p.refund_id, p.order_id, p.amount_cents, p.tenant_id, p.request_id, p.trace_id,
                p.requested_at, p.attempts",
    )
    .bind(policy.grace.as_secs_f64())
    .bind(policy.limit.max(1))
    .bind(policy.base_lease.as_secs_f64())
    .bind(policy.max_lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ClaimedRefund {
                refund_id: r.try_get("refund_id")?,
                order_id: r.try_get("order_id")?,
                amount_cents: r.try_get("amount_cents")?,
                tenant_id: r.try_get("tenant_id")?,
                request_id: r.try_get("request_id")?,
                trace_id: r.try_get("trace_id")?,
                requested_at: r.try_get("requested_at")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

/// Notes why the last attempt on a refund did not finish it (shown to operators).
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn record_error(
    pool: &PgPool,
    refund_id: Uuid,
    error: &str,
) -> Result<(), ProjectionError> {
    sqlx::query("UPDATE pending_refunds SET last_error = $2 WHERE refund_id = $1")
        .bind(refund_id)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets a refund that finished (or can never be finished). The projector does the same when
/// it sees the outcome; doing it here too stops a second attempt before the projector catches up.
///
/// # Errors
/// [`ProjectionError::Database`] when the statement fails.
pub async fn forget(pool: &PgPool, refund_id: Uuid) -> Result<(), ProjectionError> {
    let mut conn = pool.acquire().await?;
    remove(&mut conn, refund_id).await
}

/// Refunds still pending, oldest first (for operators and tests).
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails.
pub async fn pending(pool: &PgPool) -> Result<Vec<Uuid>, ProjectionError> {
    Ok(
        sqlx::query_scalar("SELECT refund_id FROM pending_refunds ORDER BY requested_at")
            .fetch_all(pool)
            .await?,
    )
}

async fn remove(conn: &mut PgConnection, refund_id: Uuid) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM pending_refunds WHERE refund_id = $1")
        .bind(refund_id)
        .execute(conn)
        .await?;
    Ok(())
}
