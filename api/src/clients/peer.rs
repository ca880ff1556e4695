//! The outgoing call wrapper every typed client goes through.
//!
//! Per attempt, in this order: the context headers and a child `traceparent` are put on the
//! request, it is signed with hmac-v1 (a fresh timestamp and nonce, over the path and query
//! actually sent), it passes the operation's circuit breaker, and it is sent under the
//! client's timeout. Around the attempts, backon retries the ones worth retrying. The retry
//! loop is outermost so that every attempt is signed anew: a peer accepts a nonce once, so
//! resending a signed request would be refused as a replay.

use std::sync::Arc;
use std::time::Instant;

use backon::Retryable;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower_resilience::circuitbreaker::CircuitBreakerError;

use crate::app::context::RequestContext;
use crate::auth::{signing, KeyRing};
use crate::deadline;

use super::breaker::{BreakerState, Breakers};
use super::error::{ClientConfigError, ClientError, PeerBody};
use super::options::{ClientOptions, Peer};
use super::propagation;
use super::retry;
use super::transport::{PeerResponse, Transport, TransportError};

/// Whether an operation only reads (always safe to retry) or changes something at the peer
/// (retried only when it carries an idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// One operation of a peer's contract: its name (breaker, metrics, errors) and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub name: &'static str,
    pub kind: Kind,
}

impl Operation {
    /// A read.
    pub const fn read(name: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Read,
        }
    }

    /// A write.
    pub const fn write(name: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Write,
        }
    }
}

/// The raw pieces of one logical call (all its attempts).
#[derive(Debug)]
struct Call<'a> {
    operation: Operation,
    method: Method,
    url: Url,
    /// What is signed: the request target as sent, path and query, undecoded.
    target: String,
    body: Option<serde_json::Value>,
    idempotency_key: Option<&'a str>,
}

struct Inner {
    peer: Peer,
    base: Url,
    caller: String,
    keys: KeyRing,
    http: reqwest::Client,
    options: ClientOptions,
    breakers: Breakers,
}

/// A signed, traced, retried, breaker-guarded client for one peer. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("peer", &self.inner.peer.service())
            .field("base", &self.inner.base.as_str())
            .field("options", &self.inner.options)
            .field("breakers", &self.inner.breakers)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client for `peer` at `base`, signing as `caller` with the key `keys` holds for the
    /// peer, with one breaker per entry of `operations`.
    ///
    /// # Errors
    /// No signing key for the peer, or breaker settings tower-resilience refuses.
    pub fn new(
        peer: Peer,
        base: Url,
        caller: &str,
        keys: KeyRing,
        http: reqwest::Client,
        options: ClientOptions,
        operations: &[Operation],
    ) -> Result<Self, ClientConfigError> {
        if keys.signing_key(peer.service()).is_none() {
            return Err(ClientConfigError::MissingKey {
                service: peer.service(),
            });
        }
        let transport = Transport::new(http.clone(), options.timeout);
        let names: Vec<_> = operations.iter().map(|o| o.name).collect();
        let breakers = Breakers::new(peer.label(), &names, options.breaker, &transport)?;
        Ok(Self {
            inner: Arc::new(Inner {
                peer,
                base,
                caller: caller.to_owned(),
                keys,
                http,
                options,
                breakers,
            }),
        })
    }

    /// The peer's service name.
    pub fn service(&self) -> &'static str {
        self.inner.peer.service()
    }

    /// The state of `operation`'s breaker (`None` for an operation this client lacks).
    pub fn breaker_state(&self, operation: &str) -> Option<BreakerState> {
        self.inner.breakers.state(operation)
    }

    /// `GET target` and decode the JSON answer.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        operation: Operation,
        target: &str,
    ) -> Result<T, ClientError> {
        let call = self.call(operation, Method::GET, target, None, None)?;
        self.decode(operation, &self.send(&call).await?)
    }

    /// `POST target` with a JSON body and decode the JSON answer. With `idempotency_key` the
    /// request carries `Idempotency-Key` and may be retried; without it, it is sent once.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        operation: Operation,
        target: &str,
        body: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body)
            .map_err(|e| self.invalid_request(operation, e.to_string()))?;
        let call = self.call(operation, Method::POST, target, Some(body), idempotency_key)?;
        self.decode(operation, &self.send(&call).await?)
    }

    /// Logs and counts a fallback, then returns `value`: reads with a safe default use it
    /// instead of failing (docs/contract.md §5).
    pub fn fall_back<T>(&self, operation: Operation, error: &ClientError, value: T) -> T {
        metrics::counter!(
            "client_fallbacks_total",
            "client" => self.inner.peer.label(),
            "operation" => operation.name
        )
        .increment(1);
        tracing::warn!(
            peer = self.service(),
            operation = operation.name,
            error = %error,
            "peer call failed; using the safe default"
        );
        value
    }

    fn invalid_request(&self, operation: Operation, reason: String) -> ClientError {
        ClientError::InvalidRequest {
            service: self.service(),
            operation: operation.name,
            reason,
        }
    }

    fn call<'a>(
        &self,
        operation: Operation,
        method: Method,
        target: &str,
        body: Option<serde_json::Value>,
        idempotency_key: Option<&'a str>,
    ) -> Result<Call<'a>, ClientError> {
        let base = self.inner.base.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}{target}"))
            .map_err(|e| self.invalid_request(operation, e.to_string()))?;
        // An id of `..` would be resolved away by the URL parser and aim the call elsewhere.
        let built_path = target.split('?').next().unwrap_or_default();
        if !url.path().ends_with(built_path) {
            return Err(
                self.invalid_request(operation, "an id would change the request path".into())
            );
        }
        // Sign what goes on the request line: the URL parser may have normalised the text.
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Call {
            operation,
            method,
            url,
            target,
            body,
            idempotency_key,
        })
    }

    /// Sends `call` with its retries. Waiting on the peer holds the request's database deadline
    /// back ([`deadline::paused`]): the peer has timeouts of its own, and the database work
    /// before and after the call should not lose its time to it.
    #[tracing::instrument(skip_all, fields(peer = self.service(), operation = call.operation.name))]
    async fn send(&self, call: &Call<'_>) -> Result<PeerResponse, ClientError> {
        deadline::paused(self.send_retrying(call)).await
    }

    async fn send_retrying(&self, call: &Call<'_>) -> Result<PeerResponse, ClientError> {
        let ctx = propagation::current();
        let retryable = call.operation.kind == Kind::Read || call.idempotency_key.is_some();
        let policy = self.inner.options.retry;
        if !retryable || policy.max_times == 0 {
            return self.attempt(call, &ctx).await;
        }
        (|| self.attempt(call, &ctx))
            .retry(retry::backoff(&policy))
            .when(ClientError::is_retryable)
            .adjust(|error, proposed| retry::next_delay(error, proposed, policy.max_delay))
            .notify(|error, delay| {
                metrics::counter!(
                    "client_retries_total",
                    "client" => self.inner.peer.label(),
                    "operation" => call.operation.name
                )
                .increment(1);
                tracing::info!(error = %error, delay_ms = delay.as_millis() as u64, "retrying peer call");
            })
            .await
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        ctx: &RequestContext,
    ) -> Result<PeerResponse, ClientError> {
        let (service, operation) = (self.service(), call.operation.name);
        let request = self.signed_request(call, ctx)?;
        let started = Instant::now();
        let outcome = self
            .inner
            .breakers
            .call(operation, request)
            .await
            .ok_or_else(|| {
                self.invalid_request(call.operation, "operation has no breaker".into())
            })?;
        let result = match outcome {
            Ok(response) if response.status.is_success() => Ok(response),
            Ok(response) => Err(ClientError::Status {
                service,
                operation,
                status: response.status.as_u16(),
                retry_after: response.retry_after,
                body: PeerBody::new(response.body),
            }),
            Err(CircuitBreakerError::OpenCircuit) => {
                Err(ClientError::BreakerOpen { service, operation })
            }
            Err(CircuitBreakerError::Inner(TransportError::Timeout(after))) => {
                Err(ClientError::Timeout {
                    service,
                    operation,
                    after,
                })
            }
            Err(CircuitBreakerError::Inner(TransportError::Http(source))) => {
                Err(ClientError::Unreachable {
                    service,
                    operation,
                    source,
                })
            }
            Err(CircuitBreakerError::Inner(TransportError::TooLarge)) => {
                Err(ClientError::InvalidResponse {
                    service,
                    operation,
                    reason: "answer body too large".into(),
                })
            }
        };
        let outcome_label = match &result {
            Ok(_) => "ok",
            Err(ClientError::Status { .. }) => "status",
            Err(ClientError::Timeout { .. }) => "timeout",
            Err(ClientError::Unreachable { .. }) => "unreachable",
            Err(ClientError::BreakerOpen { .. }) => "breaker_open",
            Err(_) => "invalid",
        };
        metrics::counter!(
            "client_requests_total",
            "client" => self.inner.peer.label(),
            "operation" => operation,
            "outcome" => outcome_label
        )
        .increment(1);
        metrics::histogram!(
            "client_request_duration_seconds",
            "client" => self.inner.peer.label(),
            "operation" => operation
        )
        .record(started.elapsed().as_secs_f64());
        result
    }

    /// Builds one attempt's request: context headers, a new child span, fresh hmac-v1 headers.
    fn signed_request(
        &self,
        call: &Call<'_>,
        ctx: &RequestContext,
    ) -> Result<reqwest::Request, ClientError> {
        let invalid = |reason: String| self.invalid_request(call.operation, reason);
        let trace = propagation::child_trace(ctx);
        let mut headers = propagation::headers(ctx, &trace);
        let key = self
            .inner
            .keys
            .signing_key(self.service())
            .ok_or_else(|| invalid("no signing key".into()))?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (name, value) in signing::v1_headers(
            key,
            &self.inner.caller,
            call.method.as_str(),
            &call.target,
            now_ms,
        ) {
            let value = HeaderValue::from_str(&value).map_err(|e| invalid(e.to_string()))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        if let Some(key) = call.idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|e| invalid(e.to_string()))?;
            headers.insert(HeaderName::from_static("idempotency-key"), value);
        }
        let mut builder = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(headers);
        if let Some(body) = &call.body {
            builder = builder.json(body);
        }
        builder.build().map_err(|e| invalid(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(
        &self,
        operation: Operation,
        response: &PeerResponse,
    ) -> Result<T, ClientError> {
        serde_json::from_slice(&response.body).map_err(|e| ClientError::InvalidResponse {
            service: self.service(),
            operation: operation.name,
            reason: e.to_string(),
        })
    }
}

/// Percent-encodes an id for use as one path segment, so an id can never add path segments
/// or a query to the request target.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(segment("pi_123-abc"), "pi_123-abc");
        assert_eq!(segment("../x?y=1"), "..%2Fx%3Fy%3D1");
    }
}
