//! `GET /internal/events`: the feed in pages, for event-stream subscribers that need history
//! the stream no longer holds (docs/contract.md §6.6).
//!
//! Each item is the exact envelope the relay publishes (same `id`, `type`, `sequenceNumber`,
//! payload upcast to the current version: the relay's encoder builds both), the answer's
//! `next` is the cursor to continue from, and `caughtUp` says the page reached the end of the
//! feed as it stood. The read is behind the feed's fence, so a late commit is never skipped.
//! `X-Tenant-ID` limits it to one tenant's events, `types` to some event types.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use order_bus::catchup::{page, FeedCursor, PageQuery};
use order_bus::subjects::all_integration_types;

use crate::app::context::RequestContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::truncate;
use crate::routes::queries::Params;
use crate::startup::AppState;

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;

/// The answer's shape, for the OpenAPI document (the handler writes the relay's bytes).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// Envelopes exactly as published on NATS (docs/contract.md §6), in feed order.
    pub events: Vec<serde_json::Value>,
    /// The cursor to pass as `after` for the next page.
    pub next: String,
    /// The page reached the end of the feed as it stood: switch to the live stream.
    pub caught_up: bool,
}

/// `GET /internal/events`: one page of the feed.
#[utoipa::path(
    get,
    path = "/internal/events",
    tag = "queries",
    params(
        ("after" = Option<String>, Query, pattern = "^(0|[0-9]{1,20}-[0-9]{1,19})$", description = "The `next` of the previous page; absent or 0: from the start"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Events per page, 1 to 1000 (default 100)"),
        ("types" = Option<String>, Query, pattern = "^order\\.(archived|cancelled|confirmed|created|dispute_closed|dispute_opened|dispute_updated|event_reminder_sent|expired|failed|payment_failed|payment_rejected|payment_return_failed|payment_returned|refund_failed|refund_requested|refunded|reminder_sent|reserved|tickets_issued)(,order\\.(archived|cancelled|confirmed|created|dispute_closed|dispute_opened|dispute_updated|event_reminder_sent|expired|failed|payment_failed|payment_rejected|payment_return_failed|payment_returned|refund_failed|refund_requested|refunded|reminder_sent|reserved|tickets_issued))*$", description = "Comma-separated event types (`order.created,order.confirmed`); absent: every type; an unknown type is 400"),
        ("x-tenant-id" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[!-~]+$", description = "Only this tenant's events. Sent once, 1 to 128 visible ASCII characters; anything else is 400"),
    ),
    responses(
        (status = 200, description = "A page of envelopes and the cursor after it", body = EventsPage),
        (status = 400, description = "Malformed cursor, limit or type", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable; retry after Retry-After", body = crate::error::ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    ctx: RequestContext,
    Params(params): Params,
) -> ApiResult<Response> {
    let query = PageQuery {
        after: match params.get("after") {
            None => FeedCursor::default(),
            Some(raw) => raw.parse().map_err(|e| {
                ApiError::BadRequest(format!("after: {e}, got '{}'", truncate(raw)))
            })?,
        },
        limit: limit(params.get("limit").map(String::as_str))?,
        types: types(params.get("types").map(String::as_str))?,
        tenant: ctx.tenant_id.clone(),
    };
    let subjects = order_bus::Subjects::new(&state.settings.streams.subject_prefix);
    let body = state.queries.event_page(&subjects, &query).await?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

fn limit(raw: Option<&str>) -> ApiResult<i64> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<i64>() {
        Ok(n) if (1..=page::MAX_LIMIT).contains(&n) && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(n)
        }
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer from 1 to {}, got '{}'",
            page::MAX_LIMIT,
            truncate(raw)
        ))),
    }
}

fn types(raw: Option<&str>) -> ApiResult<BTreeSet<String>> {
    let Some(raw) = raw else {
        return Ok(BTreeSet::new());
    };
    let known: BTreeSet<String> = all_integration_types()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    raw.split(',')
        .map(str::trim)
        .map(|t| {
            if known.contains(t) {
                Ok(t.to_owned())
            } else {
                Err(ApiError::BadRequest(format!(
                    "types: unknown event type '{}' (known: {})",
                    truncate(t),
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use order_bus::subjects::all_integration_types;

    /// The `types` pattern of the OpenAPI document lists exactly the known event types.
    #[test]
    fn the_documented_types_are_the_known_ones() {
        let documented: BTreeSet<String> = "archived|cancelled|confirmed|created|dispute_closed|dispute_opened|dispute_updated|event_reminder_sent|expired|failed|payment_failed|payment_rejected|payment_return_failed|payment_returned|refund_failed|refund_requested|refunded|reminder_sent|reserved|tickets_issued"
            .split('|')
            .map(|t| format!("order.{t}"))
            .collect();
        let known: BTreeSet<String> = all_integration_types()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            documented, known,
            "update the pattern of `types` in #[utoipa::path]"
        );
        // Twice in the pattern, in the list above, and in this line.
        let source = include_str!("events.rs");
        assert_eq!(source.matches("archived|cancelled|confirmed|created|dispute_closed|dispute_opened|dispute_updated|event_reminder_sent|expired|failed|payment_failed|payment_rejected|payment_return_failed|payment_returned|refund_failed|refund_requested|refunded|reminder_sent|reserved|tickets_issued").count(), 4);
    }
}
