//! The clients' errors.
//!
//! [`ClientError`] says what went wrong with one call to a peer; the application maps it once
//! (`From<ClientError> for AppError`): a peer that answered with an error is a peer failure
//! (502 over HTTP), a peer that could not be asked (unreachable, too slow, breaker open) is
//! "not now" (503). Messages name the peer and the operation, never a URL, a header or the
//! peer's own error text.

use std::time::Duration;

use bytes::Bytes;

/// The body of a peer's error answer. It is kept so that a typed client can read an error
/// answer its contract defines (payment-service's refusal of a refund); it is never shown to a
/// caller or logged, so its `Debug` gives only the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerBody(Bytes);

impl PeerBody {
    /// Wraps an answer body.
    pub fn new(body: Bytes) -> Self {
        Self(body)
    }

    /// The raw body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for PeerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerBody({} bytes)", self.0.len())
    }
}

/// Why a call to a peer service did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 503: the connection could not be made (refused, DNS, TLS) or broke before an answer.
    #[error("{service} is unreachable ({operation})")]
    Unreachable {
        service: &'static str,
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// 503: no complete answer within the client's timeout.
    #[error("{service} did not answer {operation} within {after:?}")]
    Timeout {
        service: &'static str,
        operation: &'static str,
        after: Duration,
    },
    /// 503: the operation's circuit breaker is open, so the call failed fast without being sent.
    #[error(
        "{service} is failing: {operation} is not attempted while its circuit breaker is open"
    )]
    BreakerOpen {
        service: &'static str,
        operation: &'static str,
    },
    /// 502: the peer answered with a non-success status.
    #[error("{service} answered {status} to {operation}")]
    Status {
        service: &'static str,
        operation: &'static str,
        status: u16,
        /// The peer's `Retry-After`, in seconds, when it sent one (429 and 503).
        retry_after: Option<Duration>,
        /// The answer's body, for the typed client to read; not part of any message.
        body: PeerBody,
    },
    /// 502: the peer answered 2xx with a body that is not the contract's.
    #[error("{service} sent an unreadable answer to {operation}: {reason}")]
    InvalidResponse {
        service: &'static str,
        operation: &'static str,
        reason: String,
    },
    /// 500: the request could not be built (a bug: ids are encoded before use).
    #[error("cannot build the {operation} request to {service}: {reason}")]
    InvalidRequest {
        service: &'static str,
        operation: &'static str,
        reason: String,
    },
}

impl ClientError {
    /// The peer service this error is about.
    pub fn service(&self) -> &'static str {
        match self {
            Self::Unreachable { service, .. }
            | Self::Timeout { service, .. }
            | Self::BreakerOpen { service, .. }
            | Self::Status { service, .. }
            | Self::InvalidResponse { service, .. }
            | Self::InvalidRequest { service, .. } => service,
        }
    }

    /// The operation this error is about.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Unreachable { operation, .. }
            | Self::Timeout { operation, .. }
            | Self::BreakerOpen { operation, .. }
            | Self::Status { operation, .. }
            | Self::InvalidResponse { operation, .. }
            | Self::InvalidRequest { operation, .. } => operation,
        }
    }

    /// The HTTP status the peer answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether another attempt may succeed: connect errors, timeouts, 429, 502, 503 and 504
    /// (the only failures retried). Not an open breaker: that is the point of the breaker.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { source, .. } => source.is_connect(),
            Self::Timeout { .. } => true,
            Self::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Self::BreakerOpen { .. }
            | Self::InvalidResponse { .. }
            | Self::InvalidRequest { .. } => false,
        }
    }

    /// The peer's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl ClientError {
    /// What went wrong, safe to show a caller: the peer, the operation and the kind of failure,
    /// never a URL, a header or the peer's own error text.
    pub fn public_message(&self) -> String {
        let (service, operation) = (self.service(), self.operation());
        match self {
            Self::Status { status, .. } => format!("{service} answered {status} to {operation}"),
            Self::InvalidResponse { .. } => {
                format!("{service} sent an unreadable answer to {operation}")
            }
            Self::Unreachable { .. } => format!("{service} is unreachable ({operation})"),
            Self::Timeout { .. } => format!("{service} did not answer {operation} in time"),
            Self::BreakerOpen { .. } => format!(
                "{service} is failing and calls to {operation} are paused (circuit breaker open)"
            ),
            Self::InvalidRequest { .. } => {
                format!("the {operation} request to {service} could not be built")
            }
        }
    }
}

/// Settings the clients refuse at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// A peer URL that does not parse, or is not http(s).
    #[error("{setting} is not a valid http(s) URL: {reason}")]
    InvalidUrl {
        setting: &'static str,
        reason: String,
    },
    /// A plain-HTTP peer URL in production (docs/contract.md §5: HTTPS only).
    #[error("{setting} must use https:// when APP_ENV=production")]
    InsecureUrl { setting: &'static str },
    /// No key to sign calls to this peer with.
    #[error("no signing key for {service}: set INTERNAL_SERVICE_SECRET or a key in SERVICE_KEYS")]
    MissingKey { service: &'static str },
    /// The key settings do not parse.
    #[error("invalid key settings: {0}")]
    Keys(#[source] crate::auth::AuthConfigError),
    /// A zero timeout or breaker threshold, which would make every call fail.
    #[error("{setting} must be greater than zero")]
    Zero { setting: &'static str },
    /// The HTTP client could not be built (no TLS provider, bad TLS settings).
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// The circuit breaker settings were refused.
    #[error("invalid circuit breaker settings: {0}")]
    Breaker(String),
}
