//! payment-service: payment intents, payment status and refunds.
//!
//! Writes never fall back: `createPaymentIntent`, `confirmPayment` and `initiateRefund` fail
//! explicitly. `getPaymentStatus` falls back to "not refundable", which refuses a refund rather
//! than risk paying one out twice (fail closed).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ClientError;
use super::peer::{segment, Operation, PeerClient};

/// `POST /internal/payments/intents` (retried only with an idempotency key).
pub const CREATE_PAYMENT_INTENT: Operation = Operation::write("createPaymentIntent");
/// `POST /internal/payments/{paymentIntentId}/confirm` (retried only with an idempotency key).
pub const CONFIRM_PAYMENT: Operation = Operation::write("confirmPayment");
/// `POST /internal/refunds`, always with `Idempotency-Key: <refund id>`.
pub const INITIATE_REFUND: Operation = Operation::write("initiateRefund");
/// `GET /internal/payments/{paymentIntentId}/status`.
pub const GET_PAYMENT_STATUS: Operation = Operation::read("getPaymentStatus");

/// Every operation of the client, one breaker each.
pub const OPERATIONS: &[Operation] = &[
    CREATE_PAYMENT_INTENT,
    CONFIRM_PAYMENT,
    INITIATE_REFUND,
    GET_PAYMENT_STATUS,
];

/// Body of `createPaymentIntent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPaymentIntent {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
}

/// Answer of `createPaymentIntent`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntent {
    pub payment_intent_id: String,
    pub status: String,
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// Answer of `confirmPayment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentConfirmation {
    pub payment_intent_id: String,
    pub status: String,
}

/// Answer of `getPaymentStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentStatus {
    pub payment_intent_id: String,
    #[serde(default)]
    pub status: String,
    pub refundable: bool,
    /// The order, amount and currency of the payment, when payment-service names them: what
    /// an inbound `payment.succeeded` is checked against.
    #[serde(default)]
    pub order_id: Option<Uuid>,
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// Set on the fallback answer: payment-service could not be asked, so `refundable` is the
    /// safe default, not its word.
    #[serde(skip)]
    pub fallback: bool,
}

impl PaymentStatus {
    /// The fail-closed default: not refundable.
    pub fn unknown(payment_intent_id: &str) -> Self {
        Self {
            payment_intent_id: payment_intent_id.to_owned(),
            status: "unknown".to_owned(),
            refundable: false,
            order_id: None,
            amount_cents: None,
            currency: None,
            fallback: true,
        }
    }
}

/// Body of `initiateRefund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundInstruction {
    pub refund_id: Uuid,
    pub order_id: Uuid,
    pub payment_intent_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub reason: String,
}

/// Where the provider is with a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    /// The money went back.
    #[serde(alias = "completed")]
    Succeeded,
    /// Accepted, not settled yet: asking again (same idempotency key) reports progress.
    #[serde(alias = "processing")]
    Pending,
    /// The provider refused; `reason` says why.
    #[serde(alias = "rejected")]
    Failed,
}

/// Answer of `initiateRefund`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundReceipt {
    pub refund_id: Uuid,
    pub status: RefundStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The payment-service client.
#[derive(Debug, Clone)]
pub struct PaymentClient {
    peer: PeerClient,
}

impl PaymentClient {
    /// Wraps a peer client built with [`OPERATIONS`].
    pub fn new(peer: PeerClient) -> Self {
        Self { peer }
    }

    /// The underlying peer client (breaker states, service name).
    pub fn peer(&self) -> &PeerClient {
        &self.peer
    }

    /// Creates a payment intent. No fallback.
    ///
    /// # Errors
    /// Any failure, explicitly.
    pub async fn create_payment_intent(
        &self,
        intent: &NewPaymentIntent,
        idempotency_key: Option<&str>,
    ) -> Result<PaymentIntent, ClientError> {
        self.peer
            .post_json(
                CREATE_PAYMENT_INTENT,
                "/internal/payments/intents",
                intent,
                idempotency_key,
            )
            .await
    }

    /// Confirms a payment intent. No fallback.
    ///
    /// # Errors
    /// Any failure, explicitly.
    pub async fn confirm_payment(
        &self,
        payment_intent_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<PaymentConfirmation, ClientError> {
        let target = format!("/internal/payments/{}/confirm", segment(payment_intent_id));
        self.peer
            .post_json(
                CONFIRM_PAYMENT,
                &target,
                &serde_json::json!({ "paymentIntentId": payment_intent_id }),
                idempotency_key,
            )
            .await
    }

    /// Asks the provider to refund, with the refund id as the idempotency key, so a repeat
    /// (a retry, the retry loop after a crash) never refunds twice. No fallback.
    ///
    /// payment-service's explicit refusal comes back as the refund's receipt with status
    /// [`RefundStatus::Failed`], whether it came in a 2xx or in a 422 (see [`refusal`]).
    ///
    /// # Errors
    /// Any other failure, explicitly, 4xx included: none of them says that the refund was not
    /// paid.
    pub async fn initiate_refund(
        &self,
        refund: &RefundInstruction,
    ) -> Result<RefundReceipt, ClientError> {
        let key = refund.refund_id.to_string();
        match self
            .peer
            .post_json(INITIATE_REFUND, "/internal/refunds", refund, Some(&key))
            .await
        {
            Err(e) => refusal(&e, refund.refund_id).ok_or(e),
            answer => answer,
        }
    }

    /// payment-service's word on a payment, with no fallback: a payment that cannot be verified
    /// must not confirm an order (fail closed).
    ///
    /// # Errors
    /// The [`ClientError`] of the call when payment-service could not answer.
    pub async fn verify_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentStatus, ClientError> {
        let target = format!("/internal/payments/{}/status", segment(payment_intent_id));
        self.peer
            .get_json::<PaymentStatus>(GET_PAYMENT_STATUS, &target)
            .await
    }

    /// Whether the payment can be refunded; "not refundable" when payment-service cannot say.
    pub async fn get_payment_status(&self, payment_intent_id: &str) -> PaymentStatus {
        let target = format!("/internal/payments/{}/status", segment(payment_intent_id));
        match self
            .peer
            .get_json::<PaymentStatus>(GET_PAYMENT_STATUS, &target)
            .await
        {
            Ok(status) => status,
            Err(e) => self.peer.fall_back(
                GET_PAYMENT_STATUS,
                &e,
                PaymentStatus::unknown(payment_intent_id),
            ),
        }
    }
}

/// The receipt in an error answer to `initiateRefund` that is payment-service's explicit
/// refusal of the refund: a 422 whose JSON body is the receipt of this very refund (its
/// `refundId`) with status `failed`. A refund recorded as failed releases its amount, so the
/// rule is narrow: after any other error answer the provider may have paid the refund, or may
/// yet pay it, and only another attempt under the same idempotency key can tell.
///
/// - 401 and 403 come from the authentication in front of the refund (a clock skew, a key being
///   rotated), before the refund is looked at.
/// - 404 is as likely a wrong route or a proxy as an unknown payment.
/// - 409 is an earlier call under the same idempotency key still in flight; 408, 425 and 429
///   mean "not now".
/// - 400 says the request was not understood, not that the refund was weighed and refused.
/// - A 422 without this refund's failed receipt may be the idempotency key reused with another
///   body, that is a refund under this key that already exists; a receipt with another
///   `refundId` is about another refund.
/// - An answer that does not parse says nothing at all.
pub fn refusal(error: &ClientError, refund_id: Uuid) -> Option<RefundReceipt> {
    let ClientError::Status {
        status: 422, body, ..
    } = error
    else {
        return None;
    };
    serde_json::from_slice::<RefundReceipt>(body.as_bytes())
        .ok()
        .filter(|r| r.refund_id == refund_id && r.status == RefundStatus::Failed)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::clients::PeerBody;

    fn answer(status: u16, body: &serde_json::Value) -> ClientError {
        ClientError::Status {
            service: "payment-service",
            operation: INITIATE_REFUND.name,
            status,
            retry_after: None,
            body: PeerBody::new(Bytes::from(body.to_string())),
        }
    }

    #[test]
    fn only_a_422_with_this_refunds_failed_receipt_is_a_refusal() {
        let id = Uuid::now_v7();
        let receipt = json!({"refundId": id, "status": "failed", "reason": "card closed"});
        let refused = refusal(&answer(422, &receipt), id).expect("a refusal");
        assert_eq!(refused.status, RefundStatus::Failed);
        assert_eq!(refused.reason.as_deref(), Some("card closed"));
        let rejected =
            json!({"refundId": id, "status": "rejected", "error": "Unprocessable Entity"});
        assert!(refusal(&answer(422, &rejected), id).is_some());

        for status in [400, 401, 403, 404, 408, 409, 425, 429, 500, 502, 503] {
            assert_eq!(refusal(&answer(status, &receipt), id), None, "{status}");
        }
        let not_refusals = [
            json!({"error": "Unprocessable Entity", "message": "idempotency key reused"}),
            json!({"refundId": Uuid::now_v7(), "status": "failed"}),
            json!({"refundId": id, "status": "pending"}),
            json!({"refundId": id, "status": "succeeded"}),
            json!({"refundId": id}),
            json!("failed"),
        ];
        for body in not_refusals {
            assert_eq!(refusal(&answer(422, &body), id), None, "{body}");
        }
        let garbage = ClientError::Status {
            service: "payment-service",
            operation: INITIATE_REFUND.name,
            status: 422,
            retry_after: None,
            body: PeerBody::new(Bytes::from_static(b"<html>422</html>")),
        };
        assert_eq!(refusal(&garbage, id), None);
        let unreadable = ClientError::InvalidResponse {
            service: "payment-service",
            operation: INITIATE_REFUND.name,
            reason: "not JSON".into(),
        };
        assert_eq!(refusal(&unreadable, id), None);
    }
}
