//! Oversized bodies: answer 413 after reading the body, not under the client's writes.
//!
//! A body whose `Content-Length` is over `REQUEST_BODY_LIMIT` is refused without being read.
//! If the connection closed right after that answer, a client that sends its whole body before
//! it reads (Node's `fetch`, most HTTP libraries: no `Expect: 100-continue`) would fail with a
//! broken pipe and never see the 413. So the rest of such a body is read and discarded, up to
//! [`DRAIN_UP_TO`] bytes and [`DRAIN_FOR`], before the 413 goes out; past either bound the
//! connection is closed, which is the best a server can do against a client that keeps sending.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::error::ApiError;

/// Largest oversized body read to its end before answering.
pub const DRAIN_UP_TO: u64 = 16 * 1024 * 1024;

/// Longest time spent reading an oversized body before answering.
pub const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Middleware: for a declared length over `limit`, drain the body (within the bounds), then
/// answer the contract's 413. Anything else passes through to the body-limit layer.
pub async fn drain_oversized(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    let drained = length <= DRAIN_UP_TO
        && tokio::time::timeout(DRAIN_FOR, async {
            let mut body = request.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                if chunk.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
    let mut response = ApiError::PayloadTooLarge.into_response();
    if !drained {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}
