//! The OpenAPI 3 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations, served at `GET /openapi.json`, with Swagger UI at `/docs`.
//!
//! Swagger UI's assets are compiled into the binary (`utoipa-swagger-ui` with `vendored`), so
//! neither the build nor the page needs the network.
//!
//! The answers' schemas are derived from the types the handlers send
//! ([`crate::routes::answers`], the read models' own types, [`crate::error::ErrorBody`]), so
//! this module holds no shape of its own: only the document's root, the security rule and the
//! routes that serve it.
//!
//! Security is added by [`SecuritySchemes`] rather than repeated on every handler:
//! docs/contract.md §4 makes it a rule of the path (every route under `/api` and `/internal`
//! accepts hmac-v1 or hmac-v2), and the modifier applies exactly that rule, with the 401 and 403
//! answers the authentication middleware gives.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

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
    components(schemas(crate::error::ErrorBody, crate::routes::events::EventsPage)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Health, metrics and published contracts; unauthenticated"),
        (name = "commands", description = "Order commands (docs/contract.md §3.3)"),
        (name = "queries", description = "Read-model queries (docs/contract.md §3.2)"),
        (name = "jobs", description = "Scheduled jobs of this replica"),
    ),
)]
pub struct ApiDoc;

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
