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
//! `?minVersion=N` on the three per-order routes waits for the read model to reach the order's
//! version `N` (read-your-writes; [`crate::app::queries`] has the rule and the lag bound): 503
//! with `Retry-After: 1` if it has not within `READ_WAIT_MS`, 404 at once for an order the event
//! store does not hold, 409 at once for a version beyond the one it holds.
//!
//! Every read runs within the request's database deadline (`REQUEST_DB_DEADLINE_MS`): when the
//! database does not answer by then, the route answers 503 with `Retry-After`, as it does when
//! the database refuses outright.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{middleware, Json, Router};
use order_domain::OrderStatus;
use order_projections::queries::{ForPayment, WithoutTickets};

use super::answers::{OrderAnswer, OrderItemsAnswer, WithoutTicketsAnswer};
use crate::app::context::RequestContext;
use crate::auth::{authenticate, RoutePolicy};
use crate::error::{ApiError, ApiResult};
use crate::extract::{truncate, OrderIdPath};
use crate::startup::AppState;

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
        (status = 200, description = "The order", body = OrderAnswer),
        (status = 400, description = "Malformed order id or query parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::error::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::error::ErrorBody),
    ),
)]
pub async fn order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<OrderAnswer>> {
    let min_version = number(&params, "minVersion")?;
    let order = state
        .queries
        .order(id, ctx.tenant_id.as_deref(), min_version)
        .await?;
    Ok(Json(OrderAnswer { order }))
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
        (status = 200, description = "Line items with their ticket ids", body = OrderItemsAnswer),
        (status = 400, description = "Malformed order id or query parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::error::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::error::ErrorBody),
    ),
)]
pub async fn order_items(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<OrderItemsAnswer>> {
    let min_version = number(&params, "minVersion")?;
    let detail = state
        .queries
        .detail(id, ctx.tenant_id.as_deref(), min_version)
        .await?;
    Ok(Json(OrderItemsAnswer {
        order_id: id,
        items: detail.items,
    }))
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
        (status = 200, description = "What a charge needs, and whether it may happen now", body = ForPayment),
        (status = 400, description = "Malformed order id or query parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant), with or without minVersion", body = crate::error::ErrorBody),
        (status = 409, description = "minVersion is beyond the order's version in the event store: nothing is pending that could reach it", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable, or the read model is still behind minVersion; retry after Retry-After", body = crate::error::ErrorBody),
    ),
)]
pub async fn order_for_payment(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<ForPayment>> {
    let min_version = number(&params, "minVersion")?;
    let answer = state
        .queries
        .for_payment(id, ctx.tenant_id.as_deref(), min_version)
        .await?;
    Ok(Json(answer))
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
        ("status" = Option<order_projections::view::OrderStatusSchema>, Query, description = "Only orders in this status (default PAID; any case is accepted)"),
        ("limit" = Option<u64>, Query, minimum = 1, description = "At most this many orders (default 100; above 500 is capped at 500)"),
    ),
    responses(
        (status = 200, description = "Paid orders without tickets, oldest payment first", body = WithoutTicketsAnswer),
        (status = 400, description = "A negative or non-numeric number, a zero limit or an unknown status", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn orders_without_tickets(
    State(state): State<AppState>,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Json<WithoutTicketsAnswer>> {
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
    let orders = state
        .queries
        .without_tickets(&criteria, ctx.tenant_id.as_deref())
        .await?;
    Ok(Json(WithoutTicketsAnswer {
        count: orders.len(),
        orders,
        criteria,
    }))
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
