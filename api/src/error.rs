//! The HTTP adapter's one error type, and the one place errors become HTTP answers.
//!
//! Policy: handlers and extractors return [`ApiError`]. Each variant's doc names its status.
//! Use cases fail with [`AppError`], which `From<AppError> for ApiError` maps to a status here
//! and nowhere else.
//! Every error body is `{"error": <reason phrase>, "message": <text>, "requestId": <id>}`
//! (docs/contract.md §3.1). Internal errors answer an opaque 500 and are logged exactly once, by
//! [`error_envelope`], with the request id; their text never reaches the caller. Libraries below
//! use `thiserror`; `anyhow` appears here only to carry internal causes to that log line.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::context;
use crate::app::AppError;
use crate::clients::ClientError;
use crate::deadline::DeadlinePassed;
use crate::request_context::InvalidTenantId;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says what was wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: credentials missing, invalid or replayed. The message is deliberately generic.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the caller is not allowed here.
    #[error("Service not authorized")]
    Forbidden,
    /// 404: no such order (or not visible to this tenant).
    #[error("{0}")]
    NotFound(String),
    /// 409: the order's state forbids the command, or a concurrent write won.
    #[error("{0}")]
    Conflict(String),
    /// 409: a concurrent command on the same order kept winning; safe to retry.
    #[error("the order was changed concurrently; retry the command")]
    ConcurrentWrite,
    /// 413: the body is larger than `REQUEST_BODY_LIMIT`. Usually the body-limit layer answers
    /// this from `Content-Length`; this variant covers a chunked body that only turns out too
    /// large while it is read.
    #[error("the request body is larger than the limit")]
    PayloadTooLarge,
    /// 422: well-formed but contradicts an earlier request (an idempotency key reused).
    #[error("{0}")]
    Unprocessable(String),
    /// 502: a peer service answered with an error.
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is down or did not answer within the request's database deadline,
    /// or the read model is behind; retry after `retry_after` s.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// 500: a bug or an unexpected failure. Logged once; never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Handlers' result type.
pub type ApiResult<T, E = ApiError> = Result<T, E>;

impl ApiError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::ConcurrentWrite => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Wraps any internal failure.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }
}

/// The error body every failure answers with (docs/contract.md §3.1).
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

/// Builds the normative error body with the current request id.
pub fn error_body(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        error: status.canonical_reason().unwrap_or("Error").to_owned(),
        message: message.to_owned(),
        request_id: context::current_request_id(),
    };
    (status, Json(body)).into_response()
}

/// Carries an internal error from `into_response` to the one place that logs it.
#[derive(Clone, Debug)]
struct InternalCause(Arc<anyhow::Error>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(_) => "An internal error occurred".to_owned(),
            other => other.to_string(),
        };
        let mut response = error_body(status, &message);
        match self {
            Self::Internal(cause) => {
                response
                    .extensions_mut()
                    .insert(InternalCause(Arc::new(cause)));
            }
            Self::Unavailable {
                retry_after: Some(secs),
                ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

/// The status of each way a use case can fail.
impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(m) => Self::BadRequest(m),
            AppError::NotFound(m) => Self::NotFound(m),
            AppError::Rejected(m) => Self::Conflict(m),
            AppError::KeyReused(m) => Self::Unprocessable(m),
            // The middleware answers a replay itself; this is the same answer, should it not.
            AppError::Replayed => Self::Unauthorized(crate::auth::INVALID_CREDENTIALS),
            AppError::ConcurrentWrite => Self::ConcurrentWrite,
            AppError::Unavailable {
                message,
                retry_after,
            } => Self::Unavailable {
                message,
                retry_after,
            },
            AppError::PeerFailed(m) => Self::BadGateway(m),
            AppError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<DeadlinePassed> for ApiError {
    fn from(e: DeadlinePassed) -> Self {
        AppError::from(e).into()
    }
}

/// A domain value refused while parsing a request (an unknown currency).
impl From<order_domain::OrderError> for ApiError {
    fn from(e: order_domain::OrderError) -> Self {
        AppError::from(e).into()
    }
}

/// A peer's failure as the caller sees it: 502 when it answered with an error, 503 when it
/// could not be asked.
impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        AppError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::BadRequest("expected a JSON body with content-type application/json".into())
            }
            // Over the limit while reading (a chunked body has no Content-Length to check).
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            JsonRejection::BytesRejection(_) => {
                Self::BadRequest("the request body could not be read".into())
            }
            // Syntax and data errors carry serde's text, which names the field and position
            // and never anything internal.
            other => Self::BadRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<InvalidTenantId> for ApiError {
    fn from(e: InvalidTenantId) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// Outermost error middleware: logs internal errors once, and turns every error answer that is
/// not already our JSON body (an unknown route, a wrong method, a body over the limit, a
/// timeout) into one, so callers see a single error shape.
pub async fn error_envelope(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(error = ?cause, %method, %path, "request failed with an internal error");
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => "no route matches this path",
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this route",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit",
        StatusCode::REQUEST_TIMEOUT => "the request took too long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported content type",
        s if s.is_server_error() => "An internal error occurred",
        _ => "the request was refused",
    };
    let mut replaced = error_body(status, message);
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = response.headers().get(&name) {
            replaced.headers_mut().insert(name, v.clone());
        }
    }
    replaced
}
