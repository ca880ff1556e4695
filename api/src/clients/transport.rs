//! The innermost layer: send one signed request and read the whole answer, within the
//! client's timeout. It is a `tower::Service`, so the circuit breaker wraps it directly and sees
//! the outcome of the complete exchange (a body that stalls is a timeout, and a failure).

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;

/// Largest answer body read from a peer; a bigger one is refused, not buffered.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A peer's complete answer.
#[derive(Debug, Clone)]
pub struct PeerResponse {
    pub status: StatusCode,
    /// `Retry-After` in seconds, when sent.
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Why no complete answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The per-attempt timeout ran out.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or broke.
    #[error("transport error: {0}")]
    Http(#[source] reqwest::Error),
    /// The body was larger than [`MAX_BODY_BYTES`].
    #[error("answer body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// Sends requests on the shared `reqwest::Client` with a per-attempt timeout.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    timeout: Duration,
}

impl Transport {
    /// A transport on `http` whose every exchange must finish within `timeout`.
    pub fn new(http: reqwest::Client, timeout: Duration) -> Self {
        Self { http, timeout }
    }

    async fn exchange(
        http: reqwest::Client,
        request: reqwest::Request,
    ) -> Result<PeerResponse, TransportError> {
        let mut response = http.execute(request).await.map_err(TransportError::Http)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(TransportError::Http)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(TransportError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(PeerResponse {
            status,
            retry_after,
            body: body.freeze(),
        })
    }
}

impl tower::Service<reqwest::Request> for Transport {
    type Response = PeerResponse;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<PeerResponse, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest queues internally; the breaker in front decides whether a call may go.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        let (http, timeout) = (self.http.clone(), self.timeout);
        Box::pin(async move {
            tokio::time::timeout(timeout, Self::exchange(http, request))
                .await
                .unwrap_or(Err(TransportError::Timeout(timeout)))
        })
    }
}
