//! The refund saga (docs/contract.md §5): request, initiate, record.
//!
//! 1. The order's own rules are checked first, with no call out: a refund the order's state
//!    forbids (not paid, refunds locked by a dispute, nothing left, too much asked) is refused
//!    at once, whatever the state of the other services.
//! 2. The facts are gathered from the peers ([`facts`]) and passed in `RequestRefund`; the
//!    aggregate decides and records `RefundRequested`, or refuses with the peers' reason.
//! 3. payment-service's `initiateRefund` is called with the refund id as the idempotency key.
//! 4. `OrderRefunded` or `RefundFailed` is recorded from its answer.
//!
//! `RefundFailed` releases the refund's amount, so it is recorded only on payment-service's
//! explicit refusal of the refund: its receipt with status failed, in a 2xx or in a 422
//! ([`payment::refusal`] says why nothing else counts). After any other outcome of step 3 (the
//! peer down or slow, a 5xx, any other 4xx, an answer that does not parse) the provider may
//! have paid or may yet pay, so the refund stays requested with its amount reserved, the caller
//! gets a peer failure or "not now" that says so, and the [`retrier`] loop asks again under the same idempotency
//! key until payment-service settles it, as it does for a refund left between steps 2 and 4 by
//! a crash. Causes that retries alone will not fix (401, 403, 404, ...) also raise
//! `refunds_unsettled_total{reason}` (see `unsettled_reason`). Repeating a request with the
//! same refund id resumes the same refund, so nothing is ever refunded twice.
//!
//! [`payment::refusal`]: crate::clients::payment::refusal

pub mod facts;
pub mod retrier;

use std::collections::HashMap;

use chrono::Utc;
use order_domain::commands::{CompleteRefund, FailRefund, RefundFacts, RequestRefund};
use order_domain::values::RefundState;
use order_domain::{Order, OrderCommand};
use uuid::Uuid;

use crate::app::error::AppError;
use crate::app::store::OrderStore;
use crate::clients::{ClientError, RefundInstruction, RefundStatus, ServiceClients};

pub use retrier::{RefundRetrier, RetryPass};

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
    /// payment-service explicitly refused it; `RefundFailed` is recorded and the amount is
    /// released.
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

impl RefundSaga {
    /// A saga over the event store and the peers.
    pub fn new(store: OrderStore, clients: ServiceClients) -> Self {
        Self { store, clients }
    }

    /// Requests a refund and carries it as far as it can go now. `check` runs against the
    /// loaded order before anything else (tenant scoping).
    ///
    /// # Errors
    /// Not found for an unknown order; invalid or rejected when the order's rules or the peers'
    /// facts refuse the refund (nothing recorded); a peer failure or "not now" when
    /// payment-service could not be asked or answered
    /// anything but a receipt or an explicit refusal, in which case the refund stays requested
    /// and is retried.
    #[tracing::instrument(skip_all, fields(order.id = %order_id, refund.id = %request.refund_id))]
    pub async fn run(
        &self,
        order_id: Uuid,
        request: &RefundRequest,
        metadata: &HashMap<String, String>,
        check: impl Fn(&Order) -> Result<(), AppError>,
    ) -> Result<Settled, AppError> {
        let order = self
            .store
            .load(order_id)
            .await?
            .ok_or_else(AppError::order_not_found)?;
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
    /// Not found or rejected for an unknown order or refund; a peer failure or "not now" when
    /// payment-service could not settle it now (the refund stays requested).
    #[tracing::instrument(skip_all, fields(order.id = %order_id, refund.id = %refund_id))]
    pub async fn finish(
        &self,
        order_id: Uuid,
        refund_id: Uuid,
        metadata: &HashMap<String, String>,
    ) -> Result<Settled, AppError> {
        let order = self
            .store
            .load(order_id)
            .await?
            .ok_or_else(AppError::order_not_found)?;
        // A refund of the order, or the return of a payment the order rejected: both go to
        // payment-service the same way, each against its own payment intent.
        let Some(refund) = order.owed_refund(refund_id) else {
            return Err(AppError::Rejected(format!(
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
        if order.refunds_locked() {
            // A dispute seen after the refund was requested: the card network may be pulling the
            // same money back, so nothing goes out while it is open (or for good, once lost).
            // The refund stays requested, reserved and visible; a person decides after a loss.
            metrics::counter!("refunds_unsettled_total", "reason" => "disputed").increment(1);
            tracing::warn!("refund held: the order has an open or lost dispute");
            return Err(AppError::Unavailable {
                message: format!(
                    "refunds are locked by a dispute; refund {refund_id} stays requested and \
                     is retried once the dispute is won"
                ),
                retry_after: None,
            });
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
                        .as_deref()
                        .map(peer_reason)
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "payment-service refused the refund".into());
                    self.record_failure(order_id, refund_id, reason, metadata)
                        .await
                }
            },
            // An explicit refusal came back as a failed receipt above; this is not one, and the
            // provider may have paid, so the amount stays reserved.
            Err(e) => {
                metrics::counter!("refunds_total", "outcome" => "deferred").increment(1);
                match unsettled_reason(&e) {
                    Some(reason) => {
                        metrics::counter!("refunds_unsettled_total", "reason" => reason)
                            .increment(1);
                        tracing::warn!(
                            error = %e,
                            reason,
                            "refund cannot be settled until payment-service's answer is looked into; it stays requested"
                        );
                    }
                    None => {
                        tracing::warn!(error = %e, "refund could not be initiated; it stays requested");
                    }
                }
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
    ) -> Result<Settled, AppError> {
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

/// Most characters of a peer's refusal text kept in an event or an answer.
pub const MAX_PEER_REASON_CHARS: usize = 200;

/// A peer's refusal text as it may be stored and shown: trimmed, control characters replaced,
/// and cut to [`MAX_PEER_REASON_CHARS`] with `…` marking the cut. The text is the peer's, not
/// ours, so its size and content are not ours to trust: unbounded, it would grow every event
/// and answer that quotes it.
pub fn peer_reason(text: &str) -> String {
    let text = text.trim();
    let mut cut: String = text
        .chars()
        .take(MAX_PEER_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_PEER_REASON_CHARS).is_some() {
        cut.push('…');
    }
    cut
}

/// Why a refund payment-service did not settle needs someone to look, as the `reason` label of
/// `refunds_unsettled_total`; `None` when retrying is expected to settle it by itself (no
/// answer, a 5xx, 408, 409, 425, 429). Either way the refund stays requested and the retry loop
/// keeps asking, so the counter grows once per attempt while the cause lasts: alert on its rate.
///
/// - `unauthorized` (401), `forbidden` (403): payment-service does not accept this service's
///   signature (a key rotated on one side only, a clock skew) or caller name.
/// - `not_found` (404): a wrong base URL or route, or a payment it does not know.
/// - `rejected`: any other 4xx, such as a 400 or a 422 without a refusal receipt: it will not
///   take the request as sent, yet it did not refuse the refund.
/// - `invalid_answer`: a 2xx that is no receipt for this refund, so whether money went out is
///   unknown.
/// - `invalid_request`: the request could not be built, which is a bug.
fn unsettled_reason(e: &ClientError) -> Option<&'static str> {
    match e {
        ClientError::Status { status: 401, .. } => Some("unauthorized"),
        ClientError::Status { status: 403, .. } => Some("forbidden"),
        ClientError::Status { status: 404, .. } => Some("not_found"),
        ClientError::Status {
            status: 408 | 409 | 425 | 429,
            ..
        } => None,
        ClientError::Status {
            status: 400..=499, ..
        } => Some("rejected"),
        ClientError::InvalidResponse { .. } => Some("invalid_answer"),
        ClientError::InvalidRequest { .. } => Some("invalid_request"),
        ClientError::Status { .. }
        | ClientError::Unreachable { .. }
        | ClientError::Timeout { .. }
        | ClientError::BreakerOpen { .. } => None,
    }
}

/// The error when payment-service could not settle a refund now: a peer failure or "not now"
/// as the client error maps, with a message that says the refund is not lost.
fn still_requested(e: ClientError, refund_id: Uuid) -> AppError {
    let message = format!(
        "{}; refund {refund_id} is recorded as requested and will be retried automatically",
        e.public_message()
    );
    match AppError::from(e) {
        AppError::PeerFailed(_) => AppError::PeerFailed(message),
        AppError::Unavailable { retry_after, .. } => AppError::Unavailable {
            message,
            retry_after,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clients::PeerBody;

    fn status(status: u16) -> ClientError {
        ClientError::Status {
            service: "payment-service",
            operation: "initiateRefund",
            status,
            retry_after: None,
            body: PeerBody::default(),
        }
    }

    #[test]
    fn peer_reasons_are_bounded_and_printable() {
        assert_eq!(peer_reason("  card closed \n"), "card closed");
        assert_eq!(peer_reason("a\u{7}b\nc"), "a b c");
        let long = "é".repeat(5_000);
        let cut = peer_reason(&long);
        assert_eq!(cut.chars().count(), MAX_PEER_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(MAX_PEER_REASON_CHARS);
        assert_eq!(peer_reason(&exact), exact);
    }

    #[test]
    fn only_causes_retries_will_not_fix_raise_the_alert() {
        let reason = |e: ClientError| unsettled_reason(&e);
        assert_eq!(reason(status(401)), Some("unauthorized"));
        assert_eq!(reason(status(403)), Some("forbidden"));
        assert_eq!(reason(status(404)), Some("not_found"));
        for s in [400, 410, 422] {
            assert_eq!(reason(status(s)), Some("rejected"), "{s}");
        }
        for s in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert_eq!(reason(status(s)), None, "{s}");
        }
        let timeout = ClientError::Timeout {
            service: "payment-service",
            operation: "initiateRefund",
            after: Duration::from_secs(1),
        };
        assert_eq!(reason(timeout), None);
        let open = ClientError::BreakerOpen {
            service: "payment-service",
            operation: "initiateRefund",
        };
        assert_eq!(reason(open), None);
        let unreadable = ClientError::InvalidResponse {
            service: "payment-service",
            operation: "initiateRefund",
            reason: "not JSON".into(),
        };
        assert_eq!(reason(unreadable), Some("invalid_answer"));
    }

    #[test]
    fn a_status_answer_says_the_refund_stays_requested() {
        let id = Uuid::nil();
        for s in [401, 404, 409, 422] {
            let AppError::PeerFailed(message) = still_requested(status(s), id) else {
                panic!("a {s} is a peer failure");
            };
            assert_eq!(
                message,
                format!(
                    "payment-service answered {s} to initiateRefund; refund {id} is recorded as requested and will be retried automatically"
                )
            );
        }
    }
}
