//! The internal query routes of docs/contract.md §3.2, served from the order read models.
//!
//! | route | policy | answer |
//! |---|---|---|
//! | `GET /internal/orders/{orderId}` | `orders.read` | `{"order": {...}}` |
//! | `GET /internal/orders/{orderId}/items` | `orders.items` | `{"orderId", "items": [...]}` |
//! | `GET /internal/orders/without-tickets` | `orders.read` | `{"orders", "count", "criteria"}` |
//! | `GET /internal/orders/{orderId}/for-payment` | `orders.read` | `{"order", "items", "paymentContext"}` |
//!
//! A caller that sends `X-Tenant-ID` sees only that tenant's orders: another tenant's order is
//! 404, exactly like an unknown one.
//!
//! # Read-your-writes and the lag bound
//! The read models follow the event store through the `orders` projector, which runs in every
//! replica and polls the feed every `PROJECTION_POLL_MS` (50 ms) when idle and continuously
//! when busy. So a committed command normally shows up in these routes within one poll interval
//! plus one batch (tens of milliseconds). The bound is not hard: a transaction left open
//! anywhere on the database holds the feed's fence back (the feed's lag report names it), and a
//! projector that keeps failing backs off up to 5 s.
//!
//! A caller that must see its own write passes the order's `version` from the command's answer
//! as `?minVersion=N` on the three per-order routes. The route then waits, polling the read
//! model every 25 ms, until the order's version is at least `N`, for up to `READ_WAIT_MS`
//! (2 s by default). If the read model is still behind then, it answers 503 with
//! `Retry-After: 1`. Nothing is waited for that is not pending: an order the event store does
//! not hold is 404 at once, and a version beyond the one the event store holds is 409 at once.
//! `minVersion=0` asks for nothing and reads like no parameter.
//!
//! # Outages
//! Every read runs within the request's database deadline (`REQUEST_DB_DEADLINE_MS`, see
//! [`crate::deadline`]): when the database does not answer by then, the route answers 503 with
//! `Retry-After`, as it does when the database refuses outright.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{middleware, Json, Router};
use chrono::Utc;
use order_domain::{OrderStatus, ORDER_AGGREGATE_TYPE};
use order_projections::queries::{self, ForPayment, WithoutTickets};
use order_projections::{OrderView, ProjectionError};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::{authenticate, RoutePolicy};
use crate::context::RequestContext;
use crate::deadline::within_deadline;
use crate::error::{ApiError, ApiResult};
use crate::extract::{truncate, OrderIdPath};
use crate::startup::AppState;
use crate::store::sqlx_error;

/// How often a `minVersion` read looks at the read model again.
const READ_POLL: Duration = Duration::from_millis(25);

/// Seconds a caller is told to wait after a read that is still behind.
const RETRY_AFTER_SECS: u64 = 1;

/// The query routes, each behind its route policy. `without-tickets` is a static segment, so
/// the router matches it before `{id}` and never parses it as an order id.
pub fn router(state: &AppState) -> Router<AppState> {
    let read = Router::new()
        .route(
            "/internal/orders/without-tickets",
            get(orders_without_tickets),
        )
        .route("/internal/orders/{id}", get(order))
        .route("/internal/orders/{id}/for-payment", get(order_for_payment))
        .route_layer(middleware::from_fn_with_state(
            state.auth.guard(RoutePolicy::OrdersRead),
            authenticate,
        ));
    let items = Router::new()
        .route("/internal/orders/{id}/items", get(order_items))
        .route_layer(middleware::from_fn_with_state(
            state.auth.guard(RoutePolicy::OrdersItems),
            authenticate,
        ));
    read.merge(items)
}

/// Query parameters as sent; each route parses the ones it knows and ignores the rest. A query
/// string that does not decode is 400 with the API's error body.
#[derive(Debug)]
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(params) =
            Query::<HashMap<String, String>>::from_request_parts(parts, state).await?;
        Ok(Self(params))
    }
}

/// `GET /internal/orders/{orderId}`: the order object.
#[utoipa::path(
    get,
    path = "/internal/orders/{id}",
    tag = "queries",
    params(
        ("id" = uuid::Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
        ("minVersion" = Option<u64>, Query, minimum = 0, description = "Wait (up to READ_WAIT_MS) until the read model has reached this version of the order; 503 with Retry-After otherwise. An order the event store does not hold is 404, and a version beyond its version there 409, at once"),
    ),
    responses(
        (status = 200, description = "The order", body = crate::openapi::OrderAnswer),
        (status = 400, description = "Malformed order id or query parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::openapi::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::openapi::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<OrderBody>> {
    let min_version = number(&params, "minVersion")?;
    let tenant = ctx.tenant_id.as_deref();
    let order = read_at_least(
        &state,
        (id, tenant),
        min_version,
        || state.reads.order(id, tenant),
        |o| o.version,
    )
    .await?;
    Ok(Json(OrderBody { order }))
}

/// The answer of `GET /internal/orders/{orderId}`, serialized straight to the response: the
/// route payment-service calls most, so no intermediate `Value` tree.
#[derive(Debug, Serialize)]
pub struct OrderBody {
    order: OrderView,
}

/// `GET /internal/orders/{orderId}/items`: line items with their ticket ids.
#[utoipa::path(
    get,
    path = "/internal/orders/{id}/items",
    tag = "queries",
    params(
        ("id" = uuid::Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
        ("minVersion" = Option<u64>, Query, minimum = 0, description = "Wait (up to READ_WAIT_MS) until the read model has reached this version of the order; 503 with Retry-After otherwise. An order the event store does not hold is 404, and a version beyond its version there 409, at once"),
    ),
    responses(
        (status = 200, description = "Line items with their ticket ids", body = crate::openapi::OrderItemsAnswer),
        (status = 400, description = "Malformed order id or query parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::openapi::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::openapi::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn order_items(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<Value>> {
    let min_version = number(&params, "minVersion")?;
    let tenant = ctx.tenant_id.as_deref();
    let detail = read_at_least(
        &state,
        (id, tenant),
        min_version,
        || {
            state
                .reads
                .read(|pool| async move { queries::order_detail(&pool, id, tenant).await })
        },
        |d| d.order.version,
    )
    .await?;
    Ok(Json(json!({ "orderId": id, "items": detail.items })))
}

/// `GET /internal/orders/{orderId}/for-payment`: what payment-service needs to charge the
/// order, and whether it may (the codes of `validationErrors` are listed in
/// [`order_projections::queries`]).
#[utoipa::path(
    get,
    path = "/internal/orders/{id}/for-payment",
    tag = "queries",
    params(
        ("id" = uuid::Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
        ("minVersion" = Option<u64>, Query, minimum = 0, description = "Wait (up to READ_WAIT_MS) until the read model has reached this version of the order; 503 with Retry-After otherwise. An order the event store does not hold is 404, and a version beyond its version there 409, at once"),
    ),
    responses(
        (status = 200, description = "What a charge needs, and whether it may happen now", body = crate::openapi::ForPaymentAnswer),
        (status = 400, description = "Malformed order id or query parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::openapi::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::openapi::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn order_for_payment(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<ForPayment>> {
    let min_version = number(&params, "minVersion")?;
    let tenant = ctx.tenant_id.as_deref();
    let detail = read_at_least(
        &state,
        (id, tenant),
        min_version,
        || {
            state
                .reads
                .read(|pool| async move { queries::order_detail(&pool, id, tenant).await })
        },
        |d| d.order.version,
    )
    .await?;
    Ok(Json(ForPayment::evaluate(detail, Utc::now())))
}

/// `GET /internal/orders/without-tickets?minutesOld=5&status=PAID&limit=100`: paid orders that
/// never got their tickets, for reconciliation. `limit` above 500 is capped; a negative or
/// non-numeric number, a zero limit or an unknown status is 400.
#[utoipa::path(
    get,
    path = "/internal/orders/without-tickets",
    tag = "queries",
    params(
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
        ("minutesOld" = Option<u64>, Query, minimum = 0, description = "Only orders paid at least this many minutes ago (default 5)"),
        ("status" = Option<crate::openapi::OrderStatusDoc>, Query, description = "Only orders in this status (default PAID; any case is accepted)"),
        ("limit" = Option<u64>, Query, minimum = 1, description = "At most this many orders (default 100; above 500 is capped at 500)"),
    ),
    responses(
        (status = 200, description = "Paid orders without tickets, oldest payment first", body = crate::openapi::WithoutTicketsAnswer),
        (status = 400, description = "A negative or non-numeric number, a zero limit or an unknown status", body = crate::openapi::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn orders_without_tickets(
    State(state): State<AppState>,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<Value>> {
    // Huge values saturate: an age beyond the epoch matches every paid order, and a limit
    // beyond the cap is capped.
    let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let minutes_old = number(&params, "minutesOld")?.map(saturate);
    let limit = number(&params, "limit")?.map(saturate);
    if limit == Some(0) {
        return Err(ApiError::BadRequest("limit must be at least 1".into()));
    }
    let status = params
        .get("status")
        .map(|raw| {
            OrderStatus::parse(&raw.trim().to_ascii_uppercase()).ok_or_else(|| {
                let known: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!(
                    "status must be one of {}, got '{}'",
                    known.join(", "),
                    truncate(raw)
                ))
            })
        })
        .transpose()?;
    let criteria = WithoutTickets::new(minutes_old, status, limit);
    let orders = within_deadline("read", async {
        let tenant = ctx.tenant_id.as_deref();
        let now = Utc::now();
        state
            .reads
            .read(|pool| {
                let criteria = &criteria;
                async move { queries::without_tickets(&pool, criteria, tenant, now).await }
            })
            .await
            .map_err(read_error)
    })
    .await?;
    Ok(Json(json!({
        "orders": orders,
        "count": orders.len(),
        "criteria": criteria,
    })))
}

/// Parses an optional non-negative integer parameter: decimal digits only (400 otherwise, for
/// a sign, a fraction or an empty value); a number too large for 64 bits saturates.
fn number(params: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    let Some(raw) = params.get(name) else {
        return Ok(None);
    };
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "{name} must be a non-negative integer, got '{}'",
            truncate(raw)
        )));
    }
    Ok(Some(digits.parse().unwrap_or(u64::MAX)))
}

/// Reads through `fetch`; without `min_version` (or with 0) that is one read (404 when
/// absent). With it, reads again every [`READ_POLL`] until the version is at least
/// `min_version`, for up to the configured wait, then answers 503 with Retry-After. Nothing
/// pending is not waited for: an order the event store does not hold for this tenant is 404,
/// and a version beyond the store's 409, at once.
/// Each read runs within the request's database deadline, so a read wait longer than what
/// is left of it ends at the deadline, also with 503.
async fn read_at_least<T, F, Fut>(
    state: &AppState,
    (id, tenant): (Uuid, Option<&str>),
    min_version: Option<u64>,
    fetch: F,
    version: impl Fn(&T) -> u64,
) -> ApiResult<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<T>, ProjectionError>>,
{
    let deadline = Instant::now() + Duration::from_millis(state.settings.read_wait_ms);
    let mut checked = false;
    loop {
        let found = within_deadline("read", async { fetch().await.map_err(read_error) }).await?;
        // Every order is at version 0 or more, so `minVersion=0` waits for nothing: an order
        // the read model lacks is unknown (404) at once, as without the parameter.
        let Some(min) = min_version.filter(|&m| m > 0) else {
            return found.ok_or_else(not_found);
        };
        if let Some(current) = found.filter(|v| version(v) >= min) {
            return Ok(current);
        }
        // Only what the event store holds can still reach the read model. Asked once: a caller
        // that got `minVersion` from a command's answer asks after that version was committed.
        if !checked {
            match within_deadline("read", stored_version(&state.pool, id, tenant)).await? {
                None => return Err(not_found()),
                Some(stored) if stored < min => {
                    return Err(ApiError::Conflict(format!(
                        "the order is at version {stored}; version {min} does not exist yet"
                    )))
                }
                Some(_) => checked = true,
            }
        }
        let now = Instant::now();
        if now >= deadline {
            metrics::counter!("read_model_behind_total").increment(1);
            return Err(ApiError::Unavailable {
                message: format!(
                    "the read model has not reached version {min} of this order yet; retry shortly"
                ),
                retry_after: Some(RETRY_AFTER_SECS),
            });
        }
        tokio::time::sleep(READ_POLL.min(deadline - now)).await;
    }
}

/// The version of order `id` in the event store (its last sequence), or `None` when the store
/// does not hold it for `tenant` (another tenant's order is unknown here, as on every read).
async fn stored_version(pool: &PgPool, id: Uuid, tenant: Option<&str>) -> ApiResult<Option<u64>> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT max(sequence) FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND EXISTS (SELECT 1 FROM events c
                         WHERE c.aggregate_type = $1 AND c.aggregate_id = $2 AND c.sequence = 1
                           AND ($3::text IS NULL
                                OR c.payload->'OrderCreated'->>'tenantId' = $3))",
    )
    .bind(ORDER_AGGREGATE_TYPE)
    .bind(id.to_string())
    .bind(tenant)
    .fetch_one(pool)
    .await
    .map_err(sqlx_error)?;
    Ok(last.and_then(|v| u64::try_from(v).ok()))
}

fn not_found() -> ApiError {
    ApiError::NotFound("order not found".into())
}

/// An outage is 503 (retry); anything else is a bug, answered as an opaque 500.
fn read_error(e: ProjectionError) -> ApiError {
    if e.is_transient() {
        tracing::warn!(error = %e, "read model unavailable");
        ApiError::Unavailable {
            message: "the database is unavailable; retry shortly".into(),
            retry_after: Some(RETRY_AFTER_SECS),
        }
    } else {
        ApiError::internal(e)
    }
}
