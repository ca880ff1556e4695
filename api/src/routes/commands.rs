//! Command routes under `/api/v1/orders` (docs/contract.md §3.3).
//!
//! Each handler parses its body into domain types (400 on anything malformed), calls one use
//! case of [`crate::app::commands`], and answers with the order as the command left it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use order_domain::values::{IssuedTicket, MAX_AMOUNT_CENTS, QUANTITY_RANGE};
use order_domain::Currency;
use order_projections::OrderView;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::answers::{
    OrderAnswer, OrderEventView, OrderEventsAnswer, RefundAnswer, RefundProgress, RefundView,
};
use crate::app::commands::{Confirmation, NewLine, NewOrder, Origin};
use crate::app::context::RequestContext;
use crate::auth::{Caller, PendingNonce};
use crate::error::{ApiError, ApiResult};
use crate::extract::{truncate, whole, AppJson, OrderIdPath};
use crate::startup::AppState;

/// Default hold of a new or reserved order: 15 minutes.
const DEFAULT_EXPIRY_SECS: i64 = 900;
/// Longest hold a caller may ask for: one day.
pub(crate) const MAX_EXPIRY_SECS: i64 = 86_400;

// The `#[schema(...)]` bounds below state in the OpenAPI document the rules the handlers and
// the aggregate enforce; utoipa takes literals only, so `openapi::tests` checks them against
// the constants (QUANTITY_RANGE, MAX_LINE_ITEMS, MAX_AMOUNT_CENTS, MAX_EXPIRY_SECS,
// MAX_INTENT_ID, MAX_TICKETS, MAX_TEXT). A text that must not be blank has a character outside
// Unicode's White_Space, the set `str::trim` removes; the class is spelled out because `\S`
// differs between regex engines (U+0085 is white space to Rust and Python, not to ECMA-262).
// No text may hold U+0000, which Postgres cannot store in the events' jsonb.

/// `POST /api/v1/orders` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderBody {
    /// The buyer; not blank.
    #[schema(
        min_length = 1,
        pattern = "^[^\\u0000]*[^\\u0009\\u000a\\u000b\\u000c\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000\\u2001\\u2002\\u2003\\u2004\\u2005\\u2006\\u2007\\u2008\\u2009\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*$"
    )]
    pub user_id: String,
    pub event_id: Uuid,
    /// An active ISO 4217 code, upper case.
    #[schema(schema_with = currency_schema)]
    pub currency: String,
    /// 1 to 100 lines. Their item ids derive from the order id and the position.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<CreateItemBody>,
    /// Default 0.
    #[serde(default, deserialize_with = "whole::i64")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub fees_cents: i64,
    /// Default 0.
    #[serde(default, deserialize_with = "whole::i64")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub tax_cents: i64,
    /// How long the order is held, in seconds (default 900).
    #[serde(default, deserialize_with = "whole::option_i64")]
    #[schema(minimum = 1, maximum = 86_400)]
    pub expires_in_seconds: Option<i64>,
    pub event_starts_at: Option<DateTime<Utc>>,
}

/// One requested line.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateItemBody {
    pub ticket_type_id: Uuid,
    #[serde(deserialize_with = "whole::i64")]
    #[schema(minimum = 1, maximum = 50)]
    pub quantity: i64,
    #[serde(deserialize_with = "whole::i64")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub unit_price_cents: i64,
}

/// The schema of `currency`: the codes [`Currency::parse`] accepts.
fn currency_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Currency::CODES.iter().copied()))
        .description(Some("An active ISO 4217 code, upper case"))
        .build()
}

/// `POST .../reserve` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReserveBody {
    /// How long the order is held from now, in seconds (default 900).
    #[serde(default, deserialize_with = "whole::option_i64")]
    #[schema(minimum = 1, maximum = 86_400)]
    pub expires_in_seconds: Option<i64>,
}

/// `POST .../confirm` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmBody {
    /// Not blank.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000]*[^\\u0009\\u000a\\u000b\\u000c\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000\\u2001\\u2002\\u2003\\u2004\\u2005\\u2006\\u2007\\u2008\\u2009\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*$"
    )]
    pub payment_intent_id: String,
    /// The amount captured; it must equal the order's `totalCents` (409 otherwise).
    #[serde(deserialize_with = "whole::i64")]
    #[schema(minimum = 0)]
    pub amount_cents: i64,
    /// When given, the order's `version` must equal it (409 otherwise).
    #[serde(default, deserialize_with = "whole::option_u64")]
    pub expected_version: Option<u64>,
}

/// `POST .../cancel` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelBody {
    /// Not blank; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000]*[^\\u0009\\u000a\\u000b\\u000c\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000\\u2001\\u2002\\u2003\\u2004\\u2005\\u2006\\u2007\\u2008\\u2009\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*$"
    )]
    pub reason: String,
}

/// `POST .../refunds` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefundBody {
    /// At most what is left to refund (409 otherwise); absent: all of it.
    #[serde(default, deserialize_with = "whole::option_i64")]
    #[schema(minimum = 1)]
    pub amount_cents: Option<i64>,
    /// Not blank; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000]*[^\\u0009\\u000a\\u000b\\u000c\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000\\u2001\\u2002\\u2003\\u2004\\u2005\\u2006\\u2007\\u2008\\u2009\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*$"
    )]
    pub reason: String,
}

/// `POST .../tickets` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketsBody {
    #[schema(min_items = 1, max_items = 500)]
    pub tickets: Vec<TicketBody>,
}

/// One issued ticket.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketBody {
    /// A line item of the order (409 otherwise).
    pub item_id: Uuid,
    /// Not blank; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000]*[^\\u0009\\u000a\\u000b\\u000c\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000\\u2001\\u2002\\u2003\\u2004\\u2005\\u2006\\u2007\\u2008\\u2009\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\u0000][^\\u0000]*$"
    )]
    pub ticket_id: String,
}

/// The answer of every command but the refund.
fn order_answer(order: OrderView) -> Json<OrderAnswer> {
    Json(OrderAnswer { order })
}

/// The origin of a request's commands.
fn origin(ctx: &RequestContext, caller: &Caller) -> Origin {
    Origin::of_request(ctx, &caller.service)
}

/// How long an order is held (default 15 minutes); 400 outside 1 s to [`MAX_EXPIRY_SECS`].
fn hold(seconds: Option<i64>) -> ApiResult<Duration> {
    let secs = seconds.unwrap_or(DEFAULT_EXPIRY_SECS);
    if !(1..=MAX_EXPIRY_SECS).contains(&secs) {
        return Err(ApiError::BadRequest(format!(
            "expiresInSeconds must be between 1 and {MAX_EXPIRY_SECS}, got {secs}"
        )));
    }
    Ok(Duration::seconds(secs))
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1 to 255 visible characters".into(),
                    )
                })?;
            Ok(Some(key.to_owned()))
        }
    }
}

/// `POST /api/v1/orders`: place an order (201). With `Idempotency-Key`, a repeat with the same
/// body answers the first answer again, and the same key with another body is 422. The order id
/// is derived from the tenant and the key, so the event store's primary key makes the check
/// atomic and it survives restarts with no extra table.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "commands",
    params(
        ("x-tenant-id" = String, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "The tenant the order belongs to (required): sent once, 1 to 128 visible ASCII characters"),
        ("idempotency-key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]([\\t -~]*[!-~])?$", description = "1 to 255 visible ASCII characters; a repeat with the same key answers the first answer again"),
    ),
    request_body = CreateOrderBody,
    responses(
        (status = 201, description = "Order placed; with a repeated Idempotency-Key, the first answer again", body = OrderAnswer),
        (status = 400, description = "Malformed body (outside the schema's bounds), or X-Tenant-ID missing or invalid", body = crate::error::ErrorBody),
        (status = 409, description = "A concurrent write kept winning; retry", body = crate::error::ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn create_order(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    nonce: PendingNonce,
    headers: HeaderMap,
    AppJson(raw): AppJson<Value>,
) -> ApiResult<(StatusCode, Json<OrderAnswer>)> {
    let tenant = ctx.tenant_id.clone().ok_or_else(|| {
        ApiError::BadRequest("X-Tenant-ID header is required to create an order".into())
    })?;
    let request_hash = hex::encode(Sha256::digest(raw.to_string().as_bytes()));
    let body: CreateOrderBody = serde_json::from_value(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let idempotency_key = idempotency_key(&headers)?;
    let (currency, lines) = create_lines(&body)?;
    let hold = hold(body.expires_in_seconds)?;
    let new = NewOrder {
        tenant,
        idempotency_key,
        request_hash,
        user_id: body.user_id,
        event_id: body.event_id,
        currency,
        lines,
        fees_cents: body.fees_cents,
        tax_cents: body.tax_cents,
        hold,
        event_starts_at: body.event_starts_at,
    };
    let order = state
        .commands
        .create(&origin(&ctx, &caller), Some(nonce), new)
        .await?;
    Ok((StatusCode::CREATED, order_answer(order)))
}

/// The currency and lines of a create body, checked (400 on an unknown currency, a quantity
/// outside 1..=50 or an amount above [`MAX_AMOUNT_CENTS`]).
fn create_lines(body: &CreateOrderBody) -> ApiResult<(Currency, Vec<NewLine>)> {
    no_nul("userId", &body.user_id)?;
    let currency = Currency::parse(&body.currency)?;
    amount_bound("feesCents", body.fees_cents)?;
    amount_bound("taxCents", body.tax_cents)?;
    let items = body
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let quantity = u32::try_from(item.quantity)
                .ok()
                .filter(|q| QUANTITY_RANGE.contains(q))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "items[{i}].quantity must be between 1 and 50, got {}",
                        item.quantity
                    ))
                })?;
            amount_bound(&format!("items[{i}].unitPriceCents"), item.unit_price_cents)?;
            Ok(NewLine {
                ticket_type_id: item.ticket_type_id,
                quantity,
                unit_price_cents: item.unit_price_cents,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((currency, items))
}

/// A stated amount above [`MAX_AMOUNT_CENTS`] is 400; a negative one is left to the aggregate,
/// which refuses it with the same status.
fn amount_bound(field: &str, value: i64) -> ApiResult<()> {
    if value > MAX_AMOUNT_CENTS {
        return Err(ApiError::BadRequest(format!(
            "{field} must be at most {MAX_AMOUNT_CENTS}, got {value}"
        )));
    }
    Ok(())
}

/// `POST /api/v1/orders/{id}/reserve`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/reserve",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    request_body = ReserveBody,
    responses(
        (status = 200, description = "Reserved (or already reserved)", body = OrderAnswer),
        (status = 400, description = "Malformed body or parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 409, description = "The order's state forbids the command, or a concurrent write kept winning", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn reserve_order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    caller: Caller,
    nonce: PendingNonce,
    AppJson(body): AppJson<ReserveBody>,
) -> ApiResult<Json<OrderAnswer>> {
    let hold = hold(body.expires_in_seconds)?;
    let order = state
        .commands
        .reserve(id, &origin(&ctx, &caller), Some(nonce), hold)
        .await?;
    Ok(order_answer(order))
}

/// `POST /api/v1/orders/{id}/confirm`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/confirm",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    request_body = ConfirmBody,
    responses(
        (status = 200, description = "Paid (a repeat with the same payment intent is a no-op)", body = OrderAnswer),
        (status = 400, description = "Malformed body or parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 409, description = "The order's state forbids the command, or a concurrent write kept winning", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn confirm_order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    caller: Caller,
    nonce: PendingNonce,
    AppJson(body): AppJson<ConfirmBody>,
) -> ApiResult<Json<OrderAnswer>> {
    check_confirm(&body)?;
    let confirmation = Confirmation {
        payment_intent_id: body.payment_intent_id,
        amount_cents: body.amount_cents,
        expected_version: body.expected_version,
    };
    let order = state
        .commands
        .confirm(id, &origin(&ctx, &caller), Some(nonce), confirmation)
        .await?;
    Ok(order_answer(order))
}

/// `POST /api/v1/orders/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/cancel",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    request_body = CancelBody,
    responses(
        (status = 200, description = "Cancelled", body = OrderAnswer),
        (status = 400, description = "Malformed body or parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 409, description = "The order's state forbids the command, or a concurrent write kept winning", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn cancel_order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    caller: Caller,
    nonce: PendingNonce,
    AppJson(body): AppJson<CancelBody>,
) -> ApiResult<Json<OrderAnswer>> {
    let reason = required_text("reason", &body.reason)?;
    let order = state
        .commands
        .cancel(id, &origin(&ctx, &caller), Some(nonce), reason)
        .await?;
    Ok(order_answer(order))
}

/// `POST /api/v1/orders/{id}/refunds`: the refund saga (docs/contract.md §5, [`crate::app::refund`]).
///
/// The order's own rules are checked before any call goes out (409 at once); then the peers'
/// facts, then payment-service's `initiateRefund`. Answers 200 with the order once refunded,
/// 202 while payment-service is still processing it, 409 when refused (nothing recorded), 502
/// when payment-service explicitly refused it (recorded as failed, the amount released) or
/// answered anything else that settles nothing (5xx, 401, 404, 409, ...), and 503 when it could
/// not be asked; in those last two cases the message says that the refund stays requested and
/// the retry loop finishes it.
/// `Idempotency-Key` is required (422 without it): the refund id is derived from it, so a
/// retried request resumes the same refund instead of starting another, and a client that
/// retries after a lost answer cannot pay a refund out twice.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/refunds",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
        ("idempotency-key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]([\\t -~]*[!-~])?$", description = "Required, 1 to 255 visible ASCII characters: the refund's identity, so a repeat with the same key resumes the same refund instead of starting another"),
    ),
    request_body = RefundBody,
    responses(
        (status = 200, description = "Refunded", body = RefundAnswer),
        (status = 202, description = "Requested; payment-service is still processing it", body = RefundAnswer),
        (status = 400, description = "Malformed body or parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 409, description = "The order's state forbids the command, or a concurrent write kept winning", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key is missing", body = crate::error::ErrorBody),
        (status = 502, description = "payment-service explicitly refused the refund (recorded as failed), or answered without settling it (the refund stays requested and is retried)", body = crate::error::ErrorBody),
        (status = 503, description = "payment-service could not be asked (the refund stays requested and is retried), or the database is unavailable", body = crate::error::ErrorBody),
    ),
)]
pub async fn refund_order(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    caller: Caller,
    headers: HeaderMap,
    AppJson(body): AppJson<RefundBody>,
) -> ApiResult<(StatusCode, Json<RefundAnswer>)> {
    let key = idempotency_key(&headers)?.ok_or_else(|| {
        ApiError::Unprocessable(
            "Idempotency-Key is required: it identifies the refund, so that a retry cannot start \
             another"
                .into(),
        )
    })?;
    let reason = required_text("reason", &body.reason)?;
    let refund = state
        .commands
        .refund(id, &origin(&ctx, &caller), &key, body.amount_cents, reason)
        .await?;
    let (status, progress) = if refund.completed {
        (StatusCode::OK, RefundProgress::Completed)
    } else {
        (StatusCode::ACCEPTED, RefundProgress::Requested)
    };
    let answer = RefundAnswer {
        order: refund.order,
        refund: RefundView {
            id: refund.refund_id,
            status: progress,
            amount_cents: refund.amount_cents,
        },
    };
    Ok((status, Json(answer)))
}

/// `POST /api/v1/orders/{id}/tickets`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/tickets",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    request_body = TicketsBody,
    responses(
        (status = 200, description = "Tickets recorded", body = OrderAnswer),
        (status = 400, description = "Malformed body or parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 409, description = "The order's state forbids the command, or a concurrent write kept winning", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn record_tickets(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
    caller: Caller,
    nonce: PendingNonce,
    AppJson(body): AppJson<TicketsBody>,
) -> ApiResult<Json<OrderAnswer>> {
    let tickets = issued_tickets(body)?;
    let order = state
        .commands
        .record_tickets(id, &origin(&ctx, &caller), Some(nonce), tickets)
        .await?;
    Ok(order_answer(order))
}

/// `GET /api/v1/orders/{id}/events`: the order's history, upcast to current versions.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}/events",
    tag = "commands",
    params(
        ("id" = Uuid, Path, description = "The order id (a UUID)"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Scopes the call to one tenant: another tenant's order is 404. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    responses(
        (status = 200, description = "The order's events in sequence order, upcast to current versions", body = OrderEventsAnswer),
        (status = 400, description = "Malformed order id", body = crate::error::ErrorBody),
        (status = 404, description = "No such order (or not visible to this tenant)", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = crate::error::ErrorBody),
    ),
)]
pub async fn order_events(
    State(state): State<AppState>,
    OrderIdPath(id): OrderIdPath,
    ctx: RequestContext,
) -> ApiResult<Json<OrderEventsAnswer>> {
    let history = state.queries.history(id, ctx.tenant_id.as_deref()).await?;
    let events = history
        .into_iter()
        .map(|e| {
            // Stored payloads are externally tagged by type; the answer gives the inner object.
            let payload = match e.payload {
                Value::Object(mut m) if m.len() == 1 => {
                    m.remove(&e.event_type).unwrap_or(Value::Null)
                }
                other => other,
            };
            OrderEventView {
                sequence: e.sequence,
                event_type: e.event_type,
                version: e.event_version,
                timestamp: e.recorded_at,
                payload,
                metadata: e.metadata,
            }
        })
        .collect();
    Ok(Json(OrderEventsAnswer {
        order_id: id,
        events,
    }))
}

fn check_confirm(body: &ConfirmBody) -> ApiResult<()> {
    no_nul("paymentIntentId", &body.payment_intent_id)?;
    // Characters, not bytes: the document's `maxLength` counts characters.
    if body.payment_intent_id.trim().is_empty()
        || body.payment_intent_id.chars().count() > MAX_INTENT_ID
    {
        return Err(ApiError::BadRequest(format!(
            "paymentIntentId must be 1 to {MAX_INTENT_ID} characters"
        )));
    }
    Ok(())
}

fn issued_tickets(body: TicketsBody) -> ApiResult<Vec<IssuedTicket>> {
    if body.tickets.is_empty() || body.tickets.len() > MAX_TICKETS {
        return Err(ApiError::BadRequest(format!(
            "tickets must hold between 1 and {MAX_TICKETS} entries"
        )));
    }
    body.tickets
        .into_iter()
        .map(|t| {
            Ok(IssuedTicket {
                item_id: t.item_id,
                ticket_id: required_text("ticketId", &t.ticket_id)?,
            })
        })
        .collect()
}

/// The command bodies [`decode_body`] knows, one per body-carrying route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /api/v1/orders`.
    Create,
    /// `POST .../reserve`.
    Reserve,
    /// `POST .../confirm`.
    Confirm,
    /// `POST .../cancel`.
    Cancel,
    /// `POST .../refunds`.
    Refund,
    /// `POST .../tickets`.
    Tickets,
}

impl BodyKind {
    /// Every kind, in route order.
    pub const ALL: [Self; 6] = [
        Self::Create,
        Self::Reserve,
        Self::Confirm,
        Self::Cancel,
        Self::Refund,
        Self::Tickets,
    ];
}

/// Fuzzing and property-test entry point: decodes `bytes` as the JSON body of `kind` the way its
/// handler does (axum's `Json` extractor, then the handler's own checks that come before any
/// I/O), and stops where the handler would reach the store.
///
/// It exists so that fuzzing exercises the production decoders instead of a copy; the
/// invariant it lets tests state is docs/contract.md §3.1's "malformed input is 4xx, never 500".
///
/// # Errors
/// The [`ApiError`] the handler would answer with.
pub fn decode_body(kind: BodyKind, bytes: &[u8]) -> ApiResult<()> {
    fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
        Ok(Json::<T>::from_bytes(bytes)?.0)
    }
    match kind {
        BodyKind::Create => {
            let raw: Value = json(bytes)?;
            let body: CreateOrderBody = serde_json::from_value(raw)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            create_lines(&body)?;
            hold(body.expires_in_seconds)?;
        }
        BodyKind::Reserve => {
            let body: ReserveBody = json(bytes)?;
            hold(body.expires_in_seconds)?;
        }
        BodyKind::Confirm => check_confirm(&json(bytes)?)?,
        BodyKind::Cancel => {
            let body: CancelBody = json(bytes)?;
            required_text("reason", &body.reason)?;
        }
        BodyKind::Refund => {
            let body: RefundBody = json(bytes)?;
            required_text("reason", &body.reason)?;
        }
        BodyKind::Tickets => {
            issued_tickets(json(bytes)?)?;
        }
    }
    Ok(())
}

/// Longest payment intent id, in characters.
pub(crate) const MAX_INTENT_ID: usize = 255;

/// Most tickets one call may record.
pub(crate) const MAX_TICKETS: usize = 500;

/// Longest free text (a reason, a ticket id), in characters after trimming.
pub(crate) const MAX_TEXT: usize = 500;

/// 400 for a text holding U+0000: Postgres's jsonb, where events are stored, cannot hold it,
/// so it would otherwise fail the append as a 500.
fn no_nul(field: &str, value: &str) -> ApiResult<()> {
    if value.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "{field} must not contain U+0000"
        )));
    }
    Ok(())
}

fn required_text(field: &str, value: &str) -> ApiResult<String> {
    no_nul(field, value)?;
    let v = value.trim();
    // Characters, not bytes: the document's `maxLength` counts characters.
    if v.is_empty() || v.chars().count() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "{field} must be 1 to {MAX_TEXT} characters, got '{}'",
            truncate(v)
        )));
    }
    Ok(v.to_owned())
}
