//! The loop that finishes refunds left requested: by a crash between `RefundRequested` and the
//! payment call, by a payment-service outage, or by a provider still processing.
//!
//! Each pass brings the `pending_refunds` read model up to date (the `refund_saga` projector),
//! claims the refunds that are due (older than the grace period, which leaves a refund to the
//! request still finishing it; `FOR UPDATE SKIP LOCKED` plus a lease, so each refund is tried
//! by one replica at a time), and runs [`RefundSaga::finish`] on each. `initiateRefund` carries
//! the refund id as its idempotency key, so a refund tried twice is still refunded once. A
//! refund leaves the loop only when it is settled: completed, or explicitly refused by
//! payment-service; any other answer, 4xx included, keeps it here.

use std::collections::HashMap;
use std::time::Duration;

use order_projections::refund_saga::{self, ClaimPolicy, ClaimedRefund, PendingRefunds};
use order_projections::{ProjectionError, ProjectionRunner};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{RefundSaga, Settled};
use crate::app::context::RequestContext;
use crate::app::error::AppError;
use crate::clients::propagation;

/// Events the projector applies per transaction.
const PROJECTION_BATCH: i64 = 500;
/// Refunds claimed per pass.
const CLAIM_LIMIT: i64 = 20;
/// A claimed refund is not tried again for this long, doubling per attempt up to
/// [`MAX_LEASE`]: the backoff between attempts, and the time after which a replica that died
/// mid-attempt is taken over.
const BASE_LEASE: Duration = Duration::from_secs(30);
const MAX_LEASE: Duration = Duration::from_secs(600);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryPass {
    /// Refunds claimed and tried.
    pub claimed: usize,
    /// Of those, settled for good (completed or failed).
    pub settled: usize,
}

impl RetryPass {
    /// Whether the pass tried anything (callers run again at once while it did).
    pub fn did_work(&self) -> bool {
        self.claimed > 0
    }
}

/// Finishes requested refunds.
#[derive(Debug)]
pub struct RefundRetrier {
    pool: PgPool,
    saga: RefundSaga,
    projection: ProjectionRunner<PendingRefunds>,
    policy: ClaimPolicy,
}

impl RefundRetrier {
    /// A retrier over `pool` that leaves refunds younger than `grace` alone.
    pub fn new(pool: PgPool, saga: RefundSaga, grace: Duration) -> Self {
        Self {
            projection: ProjectionRunner::new(pool.clone(), PendingRefunds, PROJECTION_BATCH),
            pool,
            saga,
            policy: ClaimPolicy {
                grace,
                limit: CLAIM_LIMIT,
                base_lease: BASE_LEASE,
                max_lease: MAX_LEASE,
            },
        }
    }

    /// One pass: catch the read model up, claim due refunds, try each once.
    ///
    /// # Errors
    /// Postgres failures of the projection or the claim. A refund that cannot be settled now is
    /// not an error: its row keeps the reason and it is tried again after its lease.
    pub async fn run_once(&self) -> Result<RetryPass, ProjectionError> {
        self.projection.drain().await?;
        let claimed = refund_saga::claim_due(&self.pool, self.policy).await?;
        let mut pass = RetryPass {
            claimed: claimed.len(),
            settled: 0,
        };
        for refund in claimed {
            if self.attempt(&refund).await? {
                pass.settled += 1;
            }
        }
        Ok(pass)
    }

    /// Runs passes every `every` until `stop` is cancelled, straight on while there is work.
    /// Cancellation does not wait for a pass to end: dropping one mid-attempt loses nothing,
    /// because the refund stays requested, its lease makes it due again, and `initiateRefund`
    /// is idempotent under the refund id.
    pub async fn run_until_stopped(&self, every: Duration, stop: CancellationToken) {
        loop {
            let pass = tokio::select! {
                () = stop.cancelled() => return,
                pass = self.run_once() => pass,
            };
            let wait = match pass {
                Ok(pass) if pass.did_work() => Duration::ZERO,
                Ok(_) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "refund retry pass failed; will retry");
                    every
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Tries one refund; `true` when it is settled for good.
    #[tracing::instrument(skip_all, fields(order.id = %refund.order_id, refund.id = %refund.refund_id, attempt = refund.attempts))]
    async fn attempt(&self, refund: &ClaimedRefund) -> Result<bool, ProjectionError> {
        let ctx = RequestContext {
            request_id: Uuid::new_v4().to_string(),
            trace_id: refund
                .trace_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().simple().to_string()),
            traceparent: None,
            tenant_id: refund.tenant_id.clone(),
            user_id: None,
        };
        let metadata = retry_metadata(&ctx, refund);
        let outcome = propagation::scope(
            ctx,
            self.saga
                .finish(refund.order_id, refund.refund_id, &metadata),
        )
        .await;
        let (settled, label) = match outcome {
            Ok(Settled::Completed(_)) => (true, "completed"),
            Ok(Settled::Failed { .. }) => (true, "failed"),
            Ok(Settled::Pending(_)) => {
                refund_saga::record_error(
                    &self.pool,
                    refund.refund_id,
                    "payment-service reports the refund pending",
                )
                .await?;
                (false, "pending")
            }
            // The order or the refund is gone, or the refund already settled another way: there
            // is nothing left to finish. These come from the event store only: payment-service's
            // own 404 or 409 arrive as a peer failure and keep the refund for the next attempt.
            Err(e @ (AppError::NotFound(_) | AppError::Rejected(_))) => {
                tracing::warn!(error = %e, "pending refund cannot be finished; dropping it");
                (true, "dropped")
            }
            Err(e) => {
                refund_saga::record_error(&self.pool, refund.refund_id, &e.to_string()).await?;
                (false, "deferred")
            }
        };
        if settled {
            refund_saga::forget(&self.pool, refund.refund_id).await?;
        }
        metrics::counter!("refund_retries_total", "outcome" => label).increment(1);
        Ok(settled)
    }
}

/// Metadata of the events a retry records: its own request id, the trace of the request that
/// asked for the refund, and that request as the correlation id.
fn retry_metadata(ctx: &RequestContext, refund: &ClaimedRefund) -> HashMap<String, String> {
    let correlation = refund
        .request_id
        .clone()
        .unwrap_or_else(|| ctx.request_id.clone());
    let mut m = HashMap::from([
        ("requestId".to_owned(), ctx.request_id.clone()),
        ("traceId".to_owned(), ctx.trace_id.clone()),
        ("correlationId".to_owned(), correlation.clone()),
        ("causationId".to_owned(), correlation),
        ("actor".to_owned(), "order-service/refund-retry".to_owned()),
    ]);
    if let Some(t) = &refund.tenant_id {
        m.insert("tenantId".to_owned(), t.clone());
    }
    m
}
