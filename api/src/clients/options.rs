//! How one client behaves: its per-attempt timeout, its retry policy and its breakers' policy.
//! [`ClientOptions::for_peer`] reads them from [`Settings`]; tests build their own.

use std::time::Duration;

use crate::config::Settings;

use super::error::ClientConfigError;

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

    /// The peer's base URL in `settings`.
    pub fn url(self, settings: &Settings) -> &str {
        match self {
            Self::Payment => &settings.payment_service_url,
            Self::Ticket => &settings.ticket_service_url,
            Self::Event => &settings.event_service_url,
        }
    }

    fn timeout_ms(self, settings: &Settings) -> (u64, &'static str) {
        match self {
            Self::Payment => (
                settings.payment_service_timeout_ms,
                "PAYMENT_SERVICE_TIMEOUT_MS",
            ),
            Self::Ticket => (
                settings.ticket_service_timeout_ms,
                "TICKET_SERVICE_TIMEOUT_MS",
            ),
            Self::Event => (
                settings.event_service_timeout_ms,
                "EVENT_SERVICE_TIMEOUT_MS",
            ),
        }
    }
}

impl ClientOptions {
    /// The options of the client for `peer`.
    ///
    /// # Errors
    /// A zero timeout, breaker threshold or breaker wait, which would break every call.
    pub fn for_peer(settings: &Settings, peer: Peer) -> Result<Self, ClientConfigError> {
        let (timeout_ms, timeout_setting) = peer.timeout_ms(settings);
        let nonzero = |value: u64, setting: &'static str| {
            if value == 0 {
                Err(ClientConfigError::Zero { setting })
            } else {
                Ok(value)
            }
        };
        nonzero(timeout_ms, timeout_setting)?;
        nonzero(
            settings.client_breaker_failures as u64,
            "CLIENT_BREAKER_FAILURES",
        )?;
        nonzero(settings.client_breaker_open_ms, "CLIENT_BREAKER_OPEN_MS")?;
        Ok(Self {
            timeout: Duration::from_millis(timeout_ms),
            retry: RetryPolicy {
                max_times: settings.client_retry_max_times,
                min_delay: Duration::from_millis(settings.client_retry_min_delay_ms),
                max_delay: Duration::from_millis(
                    settings
                        .client_retry_max_delay_ms
                        .max(settings.client_retry_min_delay_ms),
                ),
            },
            breaker: BreakerPolicy {
                consecutive_failures: settings.client_breaker_failures,
                open_for: Duration::from_millis(settings.client_breaker_open_ms),
            },
        })
    }
}
