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
    /// # Errors
    /// Any failure, explicitly.
    pub async fn initiate_refund(
        &self,
        refund: &RefundInstruction,
    ) -> Result<RefundReceipt, ClientError> {
        let key = refund.refund_id.to_string();
        self.peer
            .post_json(INITIATE_REFUND, "/internal/refunds", refund, Some(&key))
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
