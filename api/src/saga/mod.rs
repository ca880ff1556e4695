//! The refund saga (DESIGN section 7): request, initiate, record.
//!
//! 1. The order's own rules are checked first, with no call out: a refund the order's state
//!    forbids (not paid, refunds locked by a dispute, nothing left, too much asked) is refused
//!    at once, whatever the state of the other services.
//! 2. The facts are gathered from the peers ([`facts`]) and passed in `RequestRefund`; the
//!    aggregate decides and records `RefundRequested`, or refuses with the peers' reason.
//! 3. payment-service's `initiateRefund` is called with the refund id as the idempotency key.
//! 4. `OrderRefunded` or `RefundFailed` is recorded from its answer.
//!
//! When step 3 cannot complete (the peer is down, slow, or answers 5xx), the refund stays
//! requested and the caller gets a 502/503 that says so; the [`retry`] loop finishes it later,
//! as it does for a refund left between steps 2 and 4 by a crash. Repeating a request with the
//! same refund id resumes the same refund, so nothing is ever refunded twice.

pub mod facts;
pub mod retry;

use std::collections::HashMap;

use chrono::Utc;
use order_domain::commands::{CompleteRefund, FailRefund, RefundFacts, RequestRefund};
use order_domain::values::RefundState;
use order_domain::{Order, OrderCommand};
use uuid::Uuid;

use crate::clients::{ClientError, RefundInstruction, RefundStatus, ServiceClients};
use crate::error::ApiError;
use crate::store::OrderStore;

pub use retry::{RefundRetrier, RetryPass};

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub refund_id: Uuid,
    /// `None`: everything left to refund.
    pub amount_cents: Option<i64>,
    pub reason: String,
}

/// Where a refund ended up after one pass of the saga.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The money went back; `OrderRefunded` is recorded.
    Completed(Order),
    /// payment-service accepted it and is still working on it; the refund stays requested and
    /// the retry loop asks again (same idempotency key) until it settles.
    Pending(Order),
    /// payment-service refused it; `RefundFailed` is recorded and the amount is released.
    Failed { order: Order, reason: String },
}

impl Settled {
    /// The order after this pass.
    pub fn order(&self) -> &Order {
        match self {
            Self::Completed(o) | Self::Pending(o) | Self::Failed { order: o, .. } => o,
        }
    }
}

/// Runs refunds through the steps above. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RefundSaga {
    store: OrderStore,
    clients: ServiceClients,
}

fn not_found() -> ApiError {
    ApiError::NotFound("order not found".into())
}

impl RefundSaga {
    /// A saga over the event store and the peers.
    pub fn new(store: OrderStore, clients: ServiceClients) -> Self {
        Self { store, clients }
    }

    /// Requests a refund and carries it as far as it can go now. `check` runs against the
    /// loaded order before anything else (tenant scoping).
    ///
    /// # Errors
    /// 404 for an unknown order; 400/409 when the order's rules or the peers' facts refuse the
    /// refund (nothing recorded); 502/503 when payment-service could not be asked or failed, in
    /// which case the refund stays requested and is retried.
    #[tracing::instrument(skip_all, fields(order.id = %order_id, refund.id = %request.refund_id))]
    pub async fn run(
        &self,
        order_id: Uuid,
        request: &RefundRequest,
        metadata: &HashMap<String, String>,
        check: impl Fn(&Order) -> Result<(), ApiError>,
    ) -> Result<Settled, ApiError> {
        let order = self.store.load(order_id).await?.ok_or_else(not_found)?;
        check(&order)?;
        let command = |facts: RefundFacts| {
            OrderCommand::RequestRefund(RequestRefund {
                refund_id: request.refund_id,
                amount_cents: request.amount_cents,
                reason: request.reason.clone(),
                facts,
                now: Utc::now(),
            })
        };
        // A dry run with no facts applies every rule of the order itself; only a refund the
        // order would accept is worth asking the peers about.
        let is_new = !order.decide(command(RefundFacts::default()))?.is_empty();
        if is_new {
            let facts = facts::gather(&self.clients, &order, Utc::now()).await;
            if !facts.refusals.is_empty() {
                tracing::info!(refusals = ?facts.refusals, "refund refused by the peers' facts");
            }
            self.store
                .execute(order_id, metadata, &check, || command(facts.clone()))
                .await?;
        }
        self.finish(order_id, request.refund_id, metadata).await
    }

    /// Carries a requested refund through `initiateRefund` and records the outcome; a refund
    /// already settled is reported as it is. Used by [`Self::run`] and by the retry loop.
    ///
    /// # Errors
    /// 404/409 for an unknown order or refund; 502/503 when payment-service could not settle
    /// it now (the refund stays requested).
    #[tracing::instrument(skip_all, fields(order.id = %order_id, refund.id = %refund_id))]
    pub async fn finish(
        &self,
        order_id: Uuid,
        refund_id: Uuid,
        metadata: &HashMap<String, String>,
    ) -> Result<Settled, ApiError> {
        let order = self.store.load(order_id).await?.ok_or_else(not_found)?;
        // A refund of the order, or the return of a payment the order rejected: both go to
        // payment-service the same way, each against its own payment intent.
        let Some(refund) = order.owed_refund(refund_id) else {
            return Err(ApiError::Conflict(format!(
                "refund {refund_id} is not known on this order"
            )));
        };
        match refund.state {
            RefundState::Completed => return Ok(Settled::Completed(order)),
            RefundState::Failed => {
                return Ok(Settled::Failed {
                    order,
                    reason: "the refund was already recorded as failed".into(),
                })
            }
            RefundState::Requested => {}
        }
        let instruction = RefundInstruction {
            refund_id,
            order_id,
            payment_intent_id: refund.payment_intent_id.unwrap_or_default().to_owned(),
            amount_cents: refund.amount_cents,
            currency: refund.currency.unwrap_or_default().to_owned(),
            reason: refund.reason.to_owned(),
        };
        let outcome = match self.clients.payment.initiate_refund(&instruction).await {
            Ok(receipt) if receipt.refund_id != refund_id => Err(ClientError::InvalidResponse {
                service: self.clients.payment.peer().service(),
                operation: "initiateRefund",
                reason: "the receipt is for another refund".into(),
            }),
            other => other,
        };
        match outcome {
            Ok(receipt) => match receipt.status {
                RefundStatus::Succeeded => {
                    let done = self
                        .store
                        .execute(
                            order_id,
                            metadata,
                            |_| Ok(()),
                            || {
                                OrderCommand::CompleteRefund(CompleteRefund {
                                    refund_id,
                                    now: Utc::now(),
                                })
                            },
                        )
                        .await?;
                    metrics::counter!("refunds_total", "outcome" => "completed").increment(1);
                    Ok(Settled::Completed(done.order))
                }
                RefundStatus::Pending => Ok(Settled::Pending(order)),
                RefundStatus::Failed => {
                    let reason = receipt
                        .reason
                        .filter(|r| !r.trim().is_empty())
                        .unwrap_or_else(|| "payment-service refused the refund".into());
                    self.record_failure(order_id, refund_id, reason, metadata)
                        .await
                }
            },
            Err(e) if e.is_refusal() => {
                let reason = e.public_message();
                self.record_failure(order_id, refund_id, reason, metadata)
                    .await
            }
            Err(e) => {
                metrics::counter!("refunds_total", "outcome" => "deferred").increment(1);
                tracing::warn!(error = %e, "refund could not be initiated; it stays requested");
                Err(still_requested(e, refund_id))
            }
        }
    }

    async fn record_failure(
        &self,
        order_id: Uuid,
        refund_id: Uuid,
        reason: String,
        metadata: &HashMap<String, String>,
    ) -> Result<Settled, ApiError> {
        let done = self
            .store
            .execute(
                order_id,
                metadata,
                |_| Ok(()),
                || {
                    OrderCommand::FailRefund(FailRefund {
                        refund_id,
                        reason: reason.clone(),
                        now: Utc::now(),
                    })
                },
            )
            .await?;
        metrics::counter!("refunds_total", "outcome" => "failed").increment(1);
        Ok(Settled::Failed {
            order: done.order,
            reason,
        })
    }
}

/// The answer when payment-service could not settle a refund now: 502 or 503 as the client
/// error maps, with a message that says the refund is not lost.
fn still_requested(e: ClientError, refund_id: Uuid) -> ApiError {
    let message = format!(
        "{}; refund {refund_id} is recorded as requested and will be retried automatically",
        e.public_message()
    );
    match ApiError::from(e) {
        ApiError::BadGateway(_) => ApiError::BadGateway(message),
        ApiError::Unavailable { retry_after, .. } => ApiError::Unavailable {
            message,
            retry_after,
        },
        other => other,
    }
}
