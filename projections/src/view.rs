//! The order object of docs/contract.md §3.2: camelCase, integer cents, RFC 3339 UTC timestamps.
//!
//! Command answers build it from the aggregate they just changed (so callers read their own
//! write), and queries build it from read-model rows; both go through this one type so the two
//! can never drift apart.

use chrono::{DateTime, SecondsFormat, Utc};
use order_domain::{Order, OrderStatus};
use serde::{Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// The normative order object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: Uuid,
    pub order_number: String,
    pub tenant_id: String,
    pub user_id: String,
    pub event_id: Uuid,
    #[schema(value_type = OrderStatusSchema)]
    pub status: OrderStatus,
    pub subtotal_cents: i64,
    pub fees_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    pub payment_intent_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded_cents: i64,
    pub refunds_locked: bool,
    pub ticket_count: u32,
    /// The aggregate's version; pass it as `minVersion` to read your own write.
    pub version: u64,
}

/// The schema of an order's status, named `OrderStatus` in the OpenAPI document: the wire
/// names of [`OrderStatus::ALL`]. The domain crate stays free of documentation crates, so the
/// schema is built here from its list rather than derived there.
#[derive(Debug)]
pub struct OrderStatusSchema;

impl PartialSchema for OrderStatusSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(OrderStatus::ALL.iter().map(|s| s.as_str())))
            .description(Some(
                "Life-cycle status of an order (the normative wire names)",
            ))
            .into()
    }
}

impl ToSchema for OrderStatusSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "OrderStatus".into()
    }
}

impl OrderView {
    /// Builds the view from an aggregate; `None` when the order was never created.
    pub fn from_aggregate(order: &Order) -> Option<Self> {
        let created_at = order.created_at?;
        Some(Self {
            id: order.id?,
            order_number: order.order_number.clone(),
            tenant_id: order.tenant_id.clone(),
            user_id: order.user_id.clone(),
            event_id: order.event_id?,
            status: order.status,
            subtotal_cents: order.subtotal_cents,
            fees_cents: order.fees_cents,
            tax_cents: order.tax_cents,
            total_cents: order.total_cents,
            currency: order
                .currency
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            payment_intent_id: order.payment_intent_id.clone(),
            expires_at: order.expires_at.unwrap_or(created_at),
            created_at,
            updated_at: order.updated_at.unwrap_or(created_at),
            paid_at: order.paid_at,
            refunded_cents: order.refunded_cents,
            refunds_locked: order.refunds_locked(),
            ticket_count: order.ticket_count(),
            version: order.version,
        })
    }
}

/// Timestamps go out with millisecond precision and a `Z`, the shape the Node services emit.
pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// [`rfc3339`] for optional timestamps (`null` when absent).
pub fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}
