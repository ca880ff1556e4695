//! The settings of the peer services this one calls (payment, ticket, event): where they are,
//! how long a call may take, and the retry and breaker policies, with the clients' options
//! built from them.

use std::time::Duration;

use clap::Args;

use crate::clients::error::ClientConfigError;
use crate::clients::options::{BreakerPolicy, ClientOptions, Peer, RetryPolicy};

/// Where the peers are and how calls to them are retried and guarded.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Peer services")]
pub struct PeerSettings {
    /// payment-service base URL.
    #[arg(
        id = "payment_service_url",
        long = "payment-service-url",
        env = "PAYMENT_SERVICE_URL",
        value_name = "PAYMENT_SERVICE_URL",
        default_value = "http://tickettoken-payment:3006"
    )]
    pub payment_url: String,

    /// ticket-service base URL.
    #[arg(
        id = "ticket_service_url",
        long = "ticket-service-url",
        env = "TICKET_SERVICE_URL",
        value_name = "TICKET_SERVICE_URL",
        default_value = "http://tickettoken-ticket:3004"
    )]
    pub ticket_url: String,

    /// event-service base URL.
    #[arg(
        id = "event_service_url",
        long = "event-service-url",
        env = "EVENT_SERVICE_URL",
        value_name = "EVENT_SERVICE_URL",
        default_value = "http://tickettoken-event:3003"
    )]
    pub event_url: String,

    /// Milliseconds a call to payment-service may take, per attempt.
    #[arg(
        id = "payment_service_timeout_ms",
        long = "payment-service-timeout-ms",
        env = "PAYMENT_SERVICE_TIMEOUT_MS",
        value_name = "PAYMENT_SERVICE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub payment_timeout_ms: u64,

    /// Milliseconds a call to ticket-service may take, per attempt.
    #[arg(
        id = "ticket_service_timeout_ms",
        long = "ticket-service-timeout-ms",
        env = "TICKET_SERVICE_TIMEOUT_MS",
        value_name = "TICKET_SERVICE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub ticket_timeout_ms: u64,

    /// Milliseconds a call to event-service may take, per attempt.
    #[arg(
        id = "event_service_timeout_ms",
        long = "event-service-timeout-ms",
        env = "EVENT_SERVICE_TIMEOUT_MS",
        value_name = "EVENT_SERVICE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub event_timeout_ms: u64,

    /// Retries of a retryable outgoing call after its first attempt (0 disables retries).
    #[arg(
        id = "client_retry_max_times",
        long = "client-retry-max-times",
        env = "CLIENT_RETRY_MAX_TIMES",
        value_name = "CLIENT_RETRY_MAX_TIMES",
        default_value_t = 3
    )]
    pub retry_max_times: usize,

    /// First retry delay of outgoing calls, in ms; it doubles per retry, with 30 % jitter.
    #[arg(
        id = "client_retry_min_delay_ms",
        long = "client-retry-min-delay-ms",
        env = "CLIENT_RETRY_MIN_DELAY_MS",
        value_name = "CLIENT_RETRY_MIN_DELAY_MS",
        default_value_t = 200
    )]
    pub retry_min_delay_ms: u64,

    /// Longest delay between two retries of an outgoing call, in ms.
    #[arg(
        id = "client_retry_max_delay_ms",
        long = "client-retry-max-delay-ms",
        env = "CLIENT_RETRY_MAX_DELAY_MS",
        value_name = "CLIENT_RETRY_MAX_DELAY_MS",
        default_value_t = 5_000
    )]
    pub retry_max_delay_ms: u64,

    /// Consecutive failures of one peer operation that open its circuit breaker.
    #[arg(
        id = "client_breaker_failures",
        long = "client-breaker-failures",
        env = "CLIENT_BREAKER_FAILURES",
        value_name = "CLIENT_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub breaker_failures: usize,

    /// Milliseconds an open breaker fails fast before it lets one probe call through.
    #[arg(
        id = "client_breaker_open_ms",
        long = "client-breaker-open-ms",
        env = "CLIENT_BREAKER_OPEN_MS",
        value_name = "CLIENT_BREAKER_OPEN_MS",
        default_value_t = 30_000
    )]
    pub breaker_open_ms: u64,
}

impl PeerSettings {
    /// The peer's base URL.
    pub fn url(&self, peer: Peer) -> &str {
        match peer {
            Peer::Payment => &self.payment_url,
            Peer::Ticket => &self.ticket_url,
            Peer::Event => &self.event_url,
        }
    }

    /// The peer's per-attempt timeout, with the setting that holds it.
    fn timeout_ms(&self, peer: Peer) -> (u64, &'static str) {
        match peer {
            Peer::Payment => (self.payment_timeout_ms, "PAYMENT_SERVICE_TIMEOUT_MS"),
            Peer::Ticket => (self.ticket_timeout_ms, "TICKET_SERVICE_TIMEOUT_MS"),
            Peer::Event => (self.event_timeout_ms, "EVENT_SERVICE_TIMEOUT_MS"),
        }
    }

    /// The options of the client for `peer`.
    ///
    /// # Errors
    /// A zero timeout, breaker threshold or breaker wait, which would break every call.
    pub fn client_options(&self, peer: Peer) -> Result<ClientOptions, ClientConfigError> {
        let (timeout_ms, timeout_setting) = self.timeout_ms(peer);
        let nonzero = |value: u64, setting: &'static str| {
            if value == 0 {
                Err(ClientConfigError::Zero { setting })
            } else {
                Ok(value)
            }
        };
        nonzero(timeout_ms, timeout_setting)?;
        nonzero(self.breaker_failures as u64, "CLIENT_BREAKER_FAILURES")?;
        nonzero(self.breaker_open_ms, "CLIENT_BREAKER_OPEN_MS")?;
        Ok(ClientOptions {
            timeout: Duration::from_millis(timeout_ms),
            retry: RetryPolicy {
                max_times: self.retry_max_times,
                min_delay: Duration::from_millis(self.retry_min_delay_ms),
                max_delay: Duration::from_millis(
                    self.retry_max_delay_ms.max(self.retry_min_delay_ms),
                ),
            },
            breaker: BreakerPolicy {
                consecutive_failures: self.breaker_failures,
                open_for: Duration::from_millis(self.breaker_open_ms),
            },
        })
    }
}

/// The refund saga's retry loop.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Refund retries")]
pub struct RefundSettings {
    /// Seconds between two passes of the refund retry loop.
    #[arg(
        id = "refund_retry_every_secs",
        long = "refund-retry-every-secs",
        env = "REFUND_RETRY_EVERY_SECS",
        value_name = "REFUND_RETRY_EVERY_SECS",
        default_value_t = 15
    )]
    pub retry_every_secs: u64,

    /// Seconds a requested refund is left to its own request before the retry loop takes it
    /// over; longer than the request timeout, so the two rarely overlap.
    #[arg(
        id = "refund_retry_grace_secs",
        long = "refund-retry-grace-secs",
        env = "REFUND_RETRY_GRACE_SECS",
        value_name = "REFUND_RETRY_GRACE_SECS",
        default_value_t = 60
    )]
    pub retry_grace_secs: u64,
}
