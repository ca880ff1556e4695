//! Why the aggregate refuses a command. One variant per rule, so tests match variants, not text.
//!
//! Error policy: this crate uses `thiserror` only. Messages are safe to show to callers: they
//! name the rule and the values involved, never internal detail.

use thiserror::Error;
use uuid::Uuid;

use crate::values::OrderStatus;

/// How the application layer should answer a refusal. The API maps each kind to a status once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command itself is malformed (HTTP 400).
    Invalid,
    /// The order does not exist (HTTP 404).
    NotFound,
    /// The order's state forbids the command (HTTP 409).
    Conflict,
}

/// A command refused by the Order aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OrderError {
    // --- malformed commands ---
    #[error("an order needs at least one item")]
    NoItems,
    #[error("an order may have at most {max} items, got {got}")]
    TooManyItems { max: usize, got: usize },
    #[error("quantity must be between 1 and 50, got {0}")]
    QuantityOutOfRange(u32),
    #[error("{field} must not be negative, got {value}")]
    NegativeAmount { field: &'static str, value: i64 },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("order total is too large")]
    AmountOverflow,
    #[error("unknown currency '{0}': use an ISO 4217 code such as USD")]
    UnknownCurrency(String),
    #[error("expiry must be in the future")]
    ExpiryInPast,
    #[error("line item ids must be unique")]
    DuplicateItemId,
    #[error("{0} must not be empty")]
    Empty(&'static str),

    // --- unknown things ---
    #[error("order not found")]
    NotFound,

    // --- state conflicts ---
    #[error("order already exists")]
    AlreadyExists,
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition {
        action: &'static str,
        status: OrderStatus,
    },
    #[error("order expired at its expiry time and can no longer be {0}")]
    Expired(&'static str),
    #[error("order has not reached its expiry time yet")]
    NotYetExpired,
    #[error("payment amount {actual} does not match the order total {expected}")]
    AmountMismatch { expected: i64, actual: i64 },
    #[error("expected version {expected} but the order is at version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("order is already paid with another payment intent")]
    PaidWithOtherIntent,
    #[error("payment intent {0} was rejected for this order and is being returned")]
    IntentRejected(String),
    #[error("refunds are locked while a dispute is open or after a lost dispute")]
    RefundsLocked,
    #[error("refund of {requested} exceeds the {remaining} left to refund")]
    RefundExceedsRemaining { requested: i64, remaining: i64 },
    #[error("nothing is left to refund")]
    NothingToRefund,
    #[error("refund {0} is not known on this order")]
    UnknownRefund(Uuid),
    #[error("refund {0} already finished")]
    RefundAlreadyFinished(Uuid),
    #[error("dispute {0} is not open on this order")]
    UnknownDispute(String),
    #[error("line item {0} is not part of this order")]
    UnknownItem(Uuid),
    #[error("line item {item_id} has {quantity} tickets; cannot record more")]
    TooManyTickets { item_id: Uuid, quantity: u32 },
    #[error("ticket {0} is already recorded against another line item")]
    TicketOnOtherItem(String),
    #[error("order is archived")]
    Archived,
    #[error("refund refused: {0}")]
    RefundNotEligible(String),
}

impl OrderError {
    /// The class of refusal, which decides the HTTP status and whether an inbound message is
    /// worth retrying (it is not: every refusal here is permanent for the same input).
    pub fn kind(&self) -> ErrorKind {
        use OrderError as E;
        match self {
            E::NoItems
            | E::TooManyItems { .. }
            | E::QuantityOutOfRange(_)
            | E::NegativeAmount { .. }
            | E::ZeroAmount
            | E::AmountOverflow
            | E::UnknownCurrency(_)
            | E::ExpiryInPast
            | E::DuplicateItemId
            | E::Empty(_) => ErrorKind::Invalid,
            E::NotFound => ErrorKind::NotFound,
            E::AlreadyExists
            | E::InvalidTransition { .. }
            | E::Expired(_)
            | E::NotYetExpired
            | E::AmountMismatch { .. }
            | E::VersionMismatch { .. }
            | E::PaidWithOtherIntent
            | E::IntentRejected(_)
            | E::RefundsLocked
            | E::RefundExceedsRemaining { .. }
            | E::NothingToRefund
            | E::UnknownRefund(_)
            | E::RefundAlreadyFinished(_)
            | E::UnknownDispute(_)
            | E::UnknownItem(_)
            | E::TooManyTickets { .. }
            | E::TicketOnOtherItem(_)
            | E::Archived
            | E::RefundNotEligible(_) => ErrorKind::Conflict,
        }
    }
}
