//! The JSON answers of the routes. Each handler returns one of these (or a read model's own
//! type, such as `order_projections::queries::ForPayment`), and the OpenAPI document's schemas
//! are derived from the same types, so what is documented is what is sent.
//!
//! Errors answer [`crate::error::ErrorBody`] instead.

use chrono::{DateTime, Utc};
use order_projections::queries::{OrderItemView, WithoutTickets};
use order_projections::view::rfc3339;
use order_projections::OrderView;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::jobs::JobStatusView;

/// `{"order": {...}}`: the answer of every command but the refund, and of
/// `GET /internal/orders/{orderId}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAnswer {
    pub order: OrderView,
}

/// The answer of `POST /api/v1/orders/{id}/refunds`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundAnswer {
    pub order: OrderView,
    pub refund: RefundView,
}

/// The refund part of a refund command's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    pub id: Uuid,
    pub status: RefundProgress,
    pub amount_cents: Option<i64>,
}

/// Where a refund stands: `completed` (200) or `requested` (202, still processing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RefundProgress {
    Completed,
    Requested,
}

/// The answer of `GET /api/v1/orders/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderEventsAnswer {
    pub order_id: Uuid,
    pub events: Vec<OrderEventView>,
}

/// One stored event of an order's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEventView {
    pub sequence: i64,
    /// The event type, e.g. `OrderCreated`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: String,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// The event's payload, upcast to the current version.
    pub payload: Value,
    /// Request, trace, correlation and causation ids, actor, tenant.
    pub metadata: Value,
}

/// The answer of `GET /internal/orders/{orderId}/items`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemsAnswer {
    pub order_id: Uuid,
    pub items: Vec<OrderItemView>,
}

/// The answer of `GET /internal/orders/without-tickets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WithoutTicketsAnswer {
    pub orders: Vec<OrderView>,
    pub count: usize,
    /// The criteria applied, defaults filled in.
    pub criteria: WithoutTickets,
}

/// The answer of `GET /internal/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsAnswer {
    pub jobs: Vec<JobStatusView>,
}

/// `{"status": "ok"}` of liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveAnswer {
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

/// The answer of `GET /health/ready`, 200 or 503 alike.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyAnswer {
    /// `ready` or `not ready`.
    #[schema(value_type = String, example = "ready")]
    pub status: &'static str,
    pub checks: ReadyChecks,
}

/// The readiness checks by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    pub postgres: ReadyCheck,
    pub nats: ReadyCheck,
    pub relay: ReadyCheck,
    /// Fails when the database's transaction ids are behind the feed's stored ones (after a
    /// logical restore); the reason names the fix.
    pub feed: ReadyCheck,
}

/// One readiness check: `ok`, or `failing` with a reason. The relay check also reports its
/// backlog, whether it passes or not.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyCheck {
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Relay: events committed but not yet published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Relay: age of the oldest unpublished event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_behind: Option<f64>,
    /// Relay: events not yet behind the feed's fence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<i64>,
    /// Relay: the backlog above which the check fails (`RELAY_READY_MAX_BACKLOG`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<i64>,
}

impl ReadyCheck {
    /// A passing check.
    pub fn ok() -> Self {
        Self {
            status: "ok",
            ..Self::default()
        }
    }

    /// A failing check and why.
    pub fn failing(reason: impl Into<String>) -> Self {
        Self {
            status: "failing",
            reason: Some(reason.into()),
            ..Self::default()
        }
    }

    /// A check from its outcome.
    pub fn of(outcome: &Result<(), String>) -> Self {
        match outcome {
            Ok(()) => Self::ok(),
            Err(reason) => Self::failing(reason.clone()),
        }
    }
}
