//! How one client behaves: its per-attempt timeout, its retry policy and its breakers' policy.
//! [`crate::config::PeerSettings::client_options`] builds them from settings; tests build
//! their own.

use std::time::Duration;

/// Retries of one call: exponential backoff from `min_delay`, doubling up to `max_delay`,
/// each delay jittered by ±30 %, at most `max_times` retries after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_times: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// When an operation's breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures in a row (transport errors, timeouts, 5xx, 429) that open the breaker.
    pub consecutive_failures: usize,
    /// How long an open breaker fails fast before it lets one probe call through (half-open).
    pub open_for: Duration,
}

/// Everything one client needs besides its URL and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Per attempt, covering connect, request and the whole response body.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
}

/// The peers this service calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Payment,
    Ticket,
    Event,
}

impl Peer {
    /// The peer's service name, as it appears in errors and in its own allowlists.
    pub fn service(self) -> &'static str {
        match self {
            Self::Payment => "payment-service",
            Self::Ticket => "ticket-service",
            Self::Event => "event-service",
        }
    }

    /// The metric label of the client.
    pub fn label(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Ticket => "ticket",
            Self::Event => "event",
        }
    }

    /// The setting that holds the peer's base URL (named in start-up errors).
    pub fn url_setting(self) -> &'static str {
        match self {
            Self::Payment => "PAYMENT_SERVICE_URL",
            Self::Ticket => "TICKET_SERVICE_URL",
            Self::Event => "EVENT_SERVICE_URL",
        }
    }
}
