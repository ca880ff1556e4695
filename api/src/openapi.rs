//! The OpenAPI 3 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations, served at `GET /openapi.json`, with Swagger UI at `/docs`.
//!
//! Swagger UI's assets are compiled into the binary (`utoipa-swagger-ui` with `vendored`), so
//! neither the build nor the page needs the network.
//!
//! Most handlers answer `serde_json::Value` built with `json!`; the `*Doc` and `*Answer` types
//! here describe those bodies for the document only. Each mirrors a serialised type of the
//! projections or jobs modules field by field (`ops` integration tests compare real answers with
//! the document's required fields, so a drift shows up there).
//!
//! Security is added by [`SecuritySchemes`] rather than repeated on every handler:
//! docs/contract.md §4 makes it a rule of the path (every route under `/api` and `/internal`
//! accepts hmac-v1 or hmac-v2), and the modifier applies exactly that rule, with the 401 and 403
//! answers the authentication middleware gives.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};
use uuid::Uuid;

use crate::routes::{commands, health, jobs, queries};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

/// The document's root: every documented operation, the shared schemas and the security rule.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "The order engine of the ticketing platform: commands under /api/v1, \
            internal read-model queries under /internal, and operations endpoints. Routes under \
            /api and /internal need one of the two HMAC schemes of docs/contract.md §4: hmac-v1 \
            (all four hmac-v1 headers) or hmac-v2 (all three hmac-v2 headers).",
    ),
    paths(
        health::live,
        health::ready,
        health::asyncapi,
        crate::metrics::render,
        openapi_json,
        commands::create_order,
        commands::reserve_order,
        commands::confirm_order,
        commands::cancel_order,
        commands::refund_order,
        commands::record_tickets,
        commands::order_events,
        queries::order,
        queries::order_items,
        queries::order_for_payment,
        queries::orders_without_tickets,
        crate::routes::events::events,
        jobs::list_jobs,
    ),
    components(schemas(ErrorBody, crate::routes::events::EventsPage)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Health, metrics and published contracts; unauthenticated"),
        (name = "commands", description = "Order commands (docs/contract.md §3.3)"),
        (name = "queries", description = "Read-model queries (docs/contract.md §3.2)"),
        (name = "jobs", description = "Scheduled jobs of this replica"),
    ),
)]
pub struct ApiDoc;

/// The error body every failure answers with (docs/contract.md §3.1, [`crate::error`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The status's reason phrase, e.g. `Not Found`.
    #[schema(example = "Not Found")]
    pub error: String,
    /// What went wrong, for a human. Never carries internal details.
    #[schema(example = "order not found")]
    pub message: String,
    /// The request's id (`x-request-id`), also echoed as a response header.
    pub request_id: String,
}

/// Life-cycle status of an order (the normative wire names).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatusDoc {
    Pending,
    Reserved,
    Paid,
    Cancelled,
    Expired,
    Refunded,
    PartiallyRefunded,
    Failed,
}

/// The order object (mirrors `order_projections::OrderView`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderDoc {
    pub id: Uuid,
    pub order_number: String,
    pub tenant_id: String,
    pub user_id: String,
    pub event_id: Uuid,
    pub status: OrderStatusDoc,
    pub subtotal_cents: i64,
    pub fees_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    pub payment_intent_id: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub paid_at: Option<chrono::DateTime<chrono::Utc>>,
    pub refunded_cents: i64,
    pub refunds_locked: bool,
    pub ticket_count: u32,
    /// The aggregate's version; pass it as `minVersion` to read your own write.
    pub version: u64,
}

/// `{"order": {...}}`: the answer of every command and of `GET /internal/orders/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAnswer {
    pub order: OrderDoc,
}

/// The refund part of a refund command's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundDoc {
    pub id: Uuid,
    /// `completed` (200) or `requested` (202, still processing).
    #[schema(example = "completed")]
    pub status: String,
    pub amount_cents: Option<i64>,
}

/// The answer of `POST /api/v1/orders/{id}/refunds`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundAnswer {
    pub order: OrderDoc,
    pub refund: RefundDoc,
}

/// One stored event of an order's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEventDoc {
    pub sequence: i64,
    /// The event type, e.g. `OrderCreated`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: String,
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The event's payload, upcast to the current version.
    pub payload: serde_json::Value,
    /// Request, trace, correlation and causation ids, actor, tenant.
    pub metadata: serde_json::Value,
}

/// The answer of `GET /api/v1/orders/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderEventsAnswer {
    pub order_id: Uuid,
    pub events: Vec<OrderEventDoc>,
}

/// One line item with its tickets (mirrors `order_projections::queries::OrderItemView`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemDoc {
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub ticket_ids: Vec<String>,
}

/// The answer of `GET /internal/orders/{id}/items`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemsAnswer {
    pub order_id: Uuid,
    pub items: Vec<OrderItemDoc>,
}

/// The criteria `without-tickets` applied, defaults filled in.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WithoutTicketsCriteriaDoc {
    pub minutes_old: u32,
    pub status: OrderStatusDoc,
    pub limit: u32,
}

/// The answer of `GET /internal/orders/without-tickets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WithoutTicketsAnswer {
    pub orders: Vec<OrderDoc>,
    pub count: usize,
    pub criteria: WithoutTicketsCriteriaDoc,
}

/// The order part of `for-payment` (mirrors `order_projections::queries::PaymentOrder`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentOrderDoc {
    pub id: Uuid,
    pub order_number: String,
    pub total_cents: i64,
    pub currency: String,
    pub status: OrderStatusDoc,
    pub payment_intent_id: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub version: u64,
}

/// One line of `for-payment`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentItemDoc {
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// Why an order cannot be charged now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentRefusalDoc {
    OrderExpired,
    InvalidStatus,
    AlreadyPaid,
    ZeroTotal,
    NoItems,
}

/// Whether the order can be charged now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentContextDoc {
    pub item_count: usize,
    pub ticket_count: u32,
    pub can_process_payment: bool,
    pub is_expired: bool,
    pub validation_errors: Vec<PaymentRefusalDoc>,
}

/// The answer of `GET /internal/orders/{id}/for-payment`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForPaymentAnswer {
    pub order: PaymentOrderDoc,
    pub items: Vec<PaymentItemDoc>,
    pub payment_context: PaymentContextDoc,
}

/// A job's last failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobErrorDoc {
    pub at: chrono::DateTime<chrono::Utc>,
    pub message: String,
}

/// One job's status in this replica (mirrors `crate::jobs::JobStatusView`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusDoc {
    pub name: String,
    #[schema(example = "every 30s")]
    pub schedule: String,
    pub interval_seconds: u64,
    pub enabled: bool,
    pub leader: bool,
    pub running: bool,
    pub last_run: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<JobErrorDoc>,
    pub consecutive_failures: u32,
    /// `closed`, `open` or `half-open`.
    #[schema(example = "closed")]
    pub breaker: String,
    pub breaker_open_until: Option<chrono::DateTime<chrono::Utc>>,
    pub next_run: Option<chrono::DateTime<chrono::Utc>>,
    /// What the last successful run did: examined, acted, unchanged, refused, alerts,
    /// stoppedEarly.
    pub last_report: Option<serde_json::Value>,
}

/// The answer of `GET /internal/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsAnswer {
    pub jobs: Vec<JobStatusDoc>,
}

/// `{"status": "ok"}` of liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveAnswer {
    #[schema(example = "ok")]
    pub status: String,
}

/// One readiness check: `ok`, or `failing` with a reason. The relay check also reports
/// `backlog`, `secondsBehind`, `fenced` and `maxBacklog`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyCheckDoc {
    #[schema(example = "ok")]
    pub status: String,
    pub reason: Option<String>,
}

/// The readiness checks by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecksDoc {
    pub postgres: ReadyCheckDoc,
    pub nats: ReadyCheckDoc,
    pub relay: ReadyCheckDoc,
    /// Fails when the database's transaction ids are behind the feed's stored ones (after a
    /// logical restore); the reason names the fix.
    pub feed: ReadyCheckDoc,
}

/// The answer of `GET /health/ready`, 200 or 503 alike.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyAnswer {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: String,
    pub checks: ReadyChecksDoc,
}

/// The headers of each HMAC scheme, as `(security scheme name, header, description)`.
const HMAC_V1: [(&str, &str, &str); 4] = [
    (
        "hmac-v1-service",
        "x-service-name",
        "hmac-v1: the calling service's name",
    ),
    (
        "hmac-v1-timestamp",
        "x-request-timestamp",
        "hmac-v1: milliseconds since the epoch, within 5 minutes",
    ),
    (
        "hmac-v1-nonce",
        "x-request-nonce",
        "hmac-v1: a random nonce, accepted once per service",
    ),
    (
        "hmac-v1-signature",
        "x-internal-auth",
        "hmac-v1: lowercase hex HMAC-SHA256 of `service:timestamp:nonce:METHOD:url`",
    ),
];
const HMAC_V2: [(&str, &str, &str); 3] = [
    (
        "hmac-v2-service",
        "x-internal-service",
        "hmac-v2: the calling service's name",
    ),
    (
        "hmac-v2-timestamp",
        "x-internal-timestamp",
        "hmac-v2: milliseconds since the epoch, within 5 minutes",
    ),
    (
        "hmac-v2-signature",
        "x-internal-signature",
        "hmac-v2: lowercase hex HMAC-SHA256 of `service:timestamp:url`, accepted once",
    ),
];

/// Adds the HMAC security schemes, and to every operation under `/api` and `/internal` the
/// requirement "all hmac-v1 headers, or all hmac-v2 headers" with the 401 and 403 answers, and
/// the 413 of the body limit to those that take a body.
#[derive(Debug)]
pub struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, header, description) in HMAC_V1.iter().chain(HMAC_V2.iter()) {
            components.add_security_scheme(
                *name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    *header,
                    *description,
                ))),
            );
        }
        let requirement = |scheme: &[(&str, &str, &str)]| {
            scheme
                .iter()
                .fold(SecurityRequirement::default(), |r, (name, _, _)| {
                    r.add::<&str, [&str; 0], &str>(name, [])
                })
        };
        let either = vec![requirement(&HMAC_V1), requirement(&HMAC_V2)];
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build()
                .into()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !(path.starts_with("/api/") || path.starts_with("/internal/")) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                op.security = Some(either.clone());
                op.responses
                    .responses
                    .entry("401".to_owned())
                    .or_insert_with(|| {
                        error("Missing, invalid, expired or replayed HMAC credentials")
                    });
                op.responses
                    .responses
                    .entry("403".to_owned())
                    .or_insert_with(|| error("The calling service may not use this route"));
                // A size in bytes is not something JSON Schema can bound, so a body the schema
                // allows can still be over the limit: say so on every operation with a body.
                if op.request_body.is_some() {
                    op.responses
                        .responses
                        .entry("413".to_owned())
                        .or_insert_with(|| {
                            error(
                                "The body is over REQUEST_BODY_LIMIT (64 KiB by default), \
                                 however valid its content",
                            )
                        });
                }
            }
        }
    }
}

/// The document, built once: generating it walks every annotation.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json`: this document. Unauthenticated: it describes the API, holds no data,
/// and other teams' tooling fetches it like `/asyncapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this service",
        body = serde_json::Value, content_type = "application/json")),
)]
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| {
        document().to_pretty_json().unwrap_or_else(|e| {
            // The document is plain data built from string literals; serialising it cannot fail
            // short of a serde_json bug. Answer a valid, if empty, document rather than panic.
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            r#"{"openapi":"3.1.0","info":{"title":"order-service","version":"0"},"paths":{}}"#
                .to_owned()
        })
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response()
}

/// Swagger UI at [`DOCS_PATH`] (with its assets under it), reading [`OPENAPI_PATH`]. The assets
/// are embedded, so the page works with no network.
pub fn swagger_ui<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new(DOCS_PATH)
        .config(Config::from(OPENAPI_PATH))
        .into()
}

#[cfg(test)]
mod tests {
    use order_domain::values::{MAX_AMOUNT_CENTS, MAX_LINE_ITEMS, QUANTITY_RANGE};
    use order_domain::Currency;
    use serde_json::Value;

    use super::document;
    use crate::routes::commands::{MAX_EXPIRY_SECS, MAX_INTENT_ID, MAX_TEXT, MAX_TICKETS};

    /// utoipa's `#[schema(...)]` bounds are literals; this ties them to the constants the
    /// handlers and the aggregate check, so that a changed rule cannot leave the document behind.
    #[test]
    fn request_bounds_are_the_rules_the_handlers_enforce() {
        let doc = serde_json::to_value(document()).unwrap();
        let props = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
        let bounds = |v: &Value| (v["minimum"].clone(), v["maximum"].clone());
        let amount = (Value::from(0), Value::from(MAX_AMOUNT_CENTS));
        let expiry = (Value::from(1), Value::from(MAX_EXPIRY_SECS));

        let create = props("CreateOrderBody");
        assert_eq!(create["items"]["minItems"], 1);
        assert_eq!(create["items"]["maxItems"], MAX_LINE_ITEMS);
        assert_eq!(bounds(&create["feesCents"]), amount);
        assert_eq!(bounds(&create["taxCents"]), amount);
        assert_eq!(bounds(&create["expiresInSeconds"]), expiry);
        let codes: Vec<&str> = create["currency"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(codes, Currency::CODES);
        let item = props("CreateItemBody");
        assert_eq!(
            bounds(&item["quantity"]),
            (
                Value::from(*QUANTITY_RANGE.start()),
                Value::from(*QUANTITY_RANGE.end())
            )
        );
        assert_eq!(bounds(&item["unitPriceCents"]), amount);
        assert_eq!(bounds(&props("ReserveBody")["expiresInSeconds"]), expiry);
        assert_eq!(
            props("ConfirmBody")["paymentIntentId"]["maxLength"],
            MAX_INTENT_ID
        );
        assert_eq!(props("TicketsBody")["tickets"]["maxItems"], MAX_TICKETS);
        for (schema, field) in [
            ("CancelBody", "reason"),
            ("RefundBody", "reason"),
            ("TicketBody", "ticketId"),
        ] {
            assert_eq!(
                props(schema)[field]["maxLength"],
                MAX_TEXT,
                "{schema}.{field}"
            );
        }
        // Not blank: a character `str::trim` keeps, so exactly the chars outside White_Space;
        // and no U+0000 anywhere.
        let white: String = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .map(|c| format!("\\u{:04x}", u32::from(c)))
            .collect();
        let not_blank = format!("^[^\\u0000]*[^{white}\\u0000][^\\u0000]*$");
        for (schema, field) in [
            ("CreateOrderBody", "userId"),
            ("ConfirmBody", "paymentIntentId"),
            ("CancelBody", "reason"),
            ("RefundBody", "reason"),
            ("TicketBody", "ticketId"),
        ] {
            assert_eq!(
                props(schema)[field]["pattern"],
                not_blank.as_str(),
                "{schema}.{field}"
            );
        }
    }
}
