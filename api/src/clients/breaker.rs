//! One circuit breaker per operation (tower-resilience), with its state exported as the gauge
//! `client_breaker_state{client, operation}`: 0 closed, 1 open, 2 half-open.
//!
//! Per operation, not per peer: a broken `getPrices` must not stop `initiateRefund`. A breaker
//! counts transport errors, timeouts, 5xx and 429 as failures; other 4xx mean the peer is up
//! and the request was wrong, so they do not count. After `consecutive_failures` failures in a
//! row it opens, and calls fail fast with [`ClientError::BreakerOpen`](super::ClientError)
//! without reaching the peer. After `open_for` the next call is let through as a probe
//! (half-open): success closes the breaker, failure opens it again. The open-to-half-open move
//! happens when that probe arrives, so the gauge shows "open" until then.

use std::collections::HashMap;
use std::sync::Arc;

use tower::ServiceExt;
use tower_resilience::circuitbreaker::{
    CircuitBreaker, CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
    FailureClassifier,
};

use super::error::ClientConfigError;
use super::options::BreakerPolicy;
use super::transport::{PeerResponse, Transport, TransportError};

/// Counts what says "the peer is unwell": no answer, 5xx, or 429.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerFailure;

impl FailureClassifier<PeerResponse, TransportError> for PeerFailure {
    fn classify(&self, result: &Result<PeerResponse, TransportError>) -> bool {
        match result {
            Ok(r) => r.status.is_server_error() || r.status.as_u16() == 429,
            Err(_) => true,
        }
    }
}

/// What a breaker lets through: the transport's answer or error, or "open".
pub type Guarded = Result<PeerResponse, CircuitBreakerError<TransportError>>;

struct Breaker {
    service: CircuitBreaker<Transport, PeerFailure>,
    handle: CircuitBreakerHandle<PeerFailure>,
}

/// The breakers of one client, one per operation, fixed at construction.
#[derive(Clone)]
pub struct Breakers {
    by_operation: Arc<HashMap<&'static str, Breaker>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut states: Vec<_> = self
            .by_operation
            .iter()
            .map(|(op, b)| (*op, b.handle.state()))
            .collect();
        states.sort_by_key(|(op, _)| *op);
        f.debug_map().entries(states).finish()
    }
}

/// A breaker's state, as tests and health reports see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast without reaching the peer.
    Open,
    /// One probe call is let through to see whether the peer recovered.
    HalfOpen,
}

impl From<CircuitState> for BreakerState {
    fn from(state: CircuitState) -> Self {
        match state {
            CircuitState::Closed => Self::Closed,
            CircuitState::Open => Self::Open,
            CircuitState::HalfOpen => Self::HalfOpen,
        }
    }
}

fn gauge_value(state: CircuitState) -> f64 {
    match state {
        CircuitState::Closed => 0.0,
        CircuitState::Open => 1.0,
        CircuitState::HalfOpen => 2.0,
    }
}

impl Breakers {
    /// A breaker for each of `operations` of the client labelled `client`, each in front of
    /// `transport`.
    ///
    /// # Errors
    /// [`ClientConfigError::Breaker`] when tower-resilience refuses the policy.
    pub fn new(
        client: &'static str,
        operations: &[&'static str],
        policy: BreakerPolicy,
        transport: &Transport,
    ) -> Result<Self, ClientConfigError> {
        let mut by_operation = HashMap::new();
        for &operation in operations {
            let (layer, handle) = CircuitBreakerLayer::builder()
                .name(format!("{client}.{operation}"))
                .consecutive_failures(policy.consecutive_failures)
                .wait_duration_in_open(policy.open_for)
                .permitted_calls_in_half_open(1)
                .on_state_transition(move |from, to| {
                    metrics::gauge!("client_breaker_state", "client" => client, "operation" => operation)
                        .set(gauge_value(to));
                    tracing::warn!(client, operation, ?from, ?to, "circuit breaker changed state");
                })
                .failure_classifier_type(PeerFailure)
                .build_with_handle()
                .map_err(|e| ClientConfigError::Breaker(e.to_string()))?;
            metrics::gauge!("client_breaker_state", "client" => client, "operation" => operation)
                .set(gauge_value(CircuitState::Closed));
            let service = layer.layer_fn(transport.clone());
            by_operation.insert(operation, Breaker { service, handle });
        }
        Ok(Self {
            by_operation: Arc::new(by_operation),
        })
    }

    /// Sends `request` through the breaker of `operation`; `None` for an operation this client
    /// does not have (a bug, reported by the caller).
    pub async fn call(&self, operation: &str, request: reqwest::Request) -> Option<Guarded> {
        let breaker = self.by_operation.get(operation)?;
        Some(breaker.service.clone().oneshot(request).await)
    }

    /// The breaker state of `operation`, if the client has it.
    pub fn state(&self, operation: &str) -> Option<BreakerState> {
        self.by_operation
            .get(operation)
            .map(|b| b.handle.state().into())
    }
}
