//! Value types that are valid by construction: parse at the boundary, then trust.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::errors::OrderError;

/// Smallest and largest quantity of one line item. The platform caps a basket line at 50
/// tickets so that one order cannot hold a whole section.
pub const QUANTITY_RANGE: std::ops::RangeInclusive<u32> = 1..=50;

/// Most line items one order may carry; bounds the size of every event and read-model row.
pub const MAX_LINE_ITEMS: usize = 100;

/// The life-cycle status of an order. The wire names are normative (docs/contract.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    #[default]
    Pending,
    Reserved,
    Paid,
    Cancelled,
    Expired,
    Refunded,
    PartiallyRefunded,
    Failed,
}

impl OrderStatus {
    /// All statuses, in life-cycle order; used to validate query parameters.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Reserved,
        Self::Paid,
        Self::Cancelled,
        Self::Expired,
        Self::Refunded,
        Self::PartiallyRefunded,
        Self::Failed,
    ];

    /// The normative wire name, e.g. `PARTIALLY_REFUNDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Reserved => "RESERVED",
            Self::Paid => "PAID",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Failed => "FAILED",
        }
    }

    /// Parses a wire name; `None` for anything else (callers answer 400).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Still waiting for payment: the only statuses that can expire, be reserved or be paid.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Reserved)
    }

    /// Money was taken at some point, so refunds, disputes and tickets apply.
    pub fn is_paid(self) -> bool {
        matches!(self, Self::Paid | Self::PartiallyRefunded | Self::Refunded)
    }

    /// No further business transition is possible except archiving.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Cancelled | Self::Expired | Self::Refunded | Self::Failed
        )
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ISO 4217 currency code from the list of active codes. Unknown codes are refused at the
/// boundary instead of being carried as free text into payment calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// Active ISO 4217 codes (2024 list, funds and precious metals left out).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

impl Currency {
    /// Accepts an upper-case ISO 4217 code.
    ///
    /// # Errors
    /// [`OrderError::UnknownCurrency`] for anything not in the active list.
    pub fn parse(code: &str) -> Result<Self, OrderError> {
        if ISO_4217.binary_search(&code).is_ok() {
            Ok(Self(code.to_owned()))
        } else {
            Err(OrderError::UnknownCurrency(code.chars().take(16).collect()))
        }
    }

    /// The three-letter code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = OrderError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.0
    }
}

/// A requested line item before the order exists; validated by [`Order::decide`](crate::Order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewLineItem {
    /// Stable id of the line, chosen by the application layer so that tickets can point at it.
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// One line of an order: a quantity of one ticket type at a unit price, in integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

impl LineItem {
    /// `quantity × unit price`, or `None` on overflow.
    pub fn line_total_cents(&self) -> Option<i64> {
        i64::from(self.quantity).checked_mul(self.unit_price_cents)
    }
}

/// A ticket issued by ticket-service against one line item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTicket {
    pub item_id: Uuid,
    pub ticket_id: String,
}

/// How a dispute ended. A won dispute gives the money back to the merchant, so refunds unlock;
/// a lost one already returned the money to the buyer, so refunds stay locked for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DisputeOutcome {
    Won,
    Lost,
}

/// The state of one refund inside an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundState {
    /// Recorded, and the payment call may or may not have happened yet.
    Requested,
    Completed,
    Failed,
}

/// A refund, keyed by its id (the idempotency key of the payment call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    pub refund_id: Uuid,
    pub amount_cents: i64,
    pub reason: String,
    pub state: RefundState,
    pub requested_at: DateTime<Utc>,
}

/// Why a captured payment could not confirm its order (the `reason` of `PaymentRejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentRejection {
    /// The order reached its expiry before the payment arrived.
    OrderExpired,
    /// The order was cancelled.
    OrderCancelled,
    /// The order failed, or is otherwise no longer payable.
    OrderClosed,
    /// The order is already paid with another payment intent: a second charge.
    AlreadyPaid,
    /// The amount captured is not the order's total.
    AmountMismatch,
    /// The currency captured is not the order's currency.
    CurrencyMismatch,
}

impl PaymentRejection {
    /// The wire code, as serialised.
    pub fn code(self) -> &'static str {
        match self {
            Self::OrderExpired => "ORDER_EXPIRED",
            Self::OrderCancelled => "ORDER_CANCELLED",
            Self::OrderClosed => "ORDER_CLOSED",
            Self::AlreadyPaid => "ALREADY_PAID",
            Self::AmountMismatch => "AMOUNT_MISMATCH",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
        }
    }
}

/// A captured payment the order rejected, and the refund that gives it back. Keyed by
/// `refund_id`, the idempotency key of the refund call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedPayment {
    pub refund_id: Uuid,
    pub payment_intent_id: String,
    pub amount_cents: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub reason: PaymentRejection,
    pub state: RefundState,
}
