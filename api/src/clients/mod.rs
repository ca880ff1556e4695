//! Outgoing service clients (docs/contract.md §5): the one way this service asks payment-service,
//! ticket-service and event-service for facts and actions.
//!
//! [`ServiceClients::from_settings`] builds the three clients on one `reqwest::Client` (one
//! connection pool, rustls with the ring provider, TLS 1.2 or newer, certificates verified; in
//! production only `https://` base URLs are accepted). Every request goes through
//! [`peer::PeerClient`]: correlation headers and a child `traceparent`, an hmac-v1 signature
//! with a fresh nonce over the path and query sent, the operation's circuit breaker, a
//! per-attempt timeout, and backon retries with ±30 % jitter for reads and for writes that
//! carry an idempotency key, only on connect errors, timeouts, 429, 502, 503 and 504.
//!
//! # The contract this service expects from its peers
//!
//! Every request carries `X-Service-Name`, `X-Request-Timestamp`, `X-Request-Nonce`,
//! `X-Internal-Auth` (hmac-v1, docs/contract.md §4), `X-Request-ID`, `X-Trace-ID`, `X-Span-ID`,
//! `traceparent`, and `X-Tenant-ID` / `X-User-ID` when known. Answers are JSON, camelCase.
//!
//! | client | operation | request | 2xx answer | on failure |
//! |---|---|---|---|---|
//! | payment | `createPaymentIntent` | `POST /internal/payments/intents` `{orderId, amountCents, currency}` | `{paymentIntentId, status, clientSecret?}` | error |
//! | payment | `confirmPayment` | `POST /internal/payments/{paymentIntentId}/confirm` `{paymentIntentId}` | `{paymentIntentId, status}` | error |
//! | payment | `initiateRefund` | `POST /internal/refunds` `{refundId, orderId, paymentIntentId, amountCents, currency, reason}`, `Idempotency-Key: <refundId>` | `{refundId, status: "succeeded" \| "pending" \| "failed", reason?}` | error |
//! | payment | `getPaymentStatus` | `GET /internal/payments/{paymentIntentId}/status` | `{paymentIntentId, status, refundable}` | `refundable: false` |
//! | ticket | `getTicket` | `GET /internal/tickets/{ticketId}` | `{id, orderId?, status, ownerId?, transferred}` | error |
//! | ticket | `checkTicketNotTransferred` | `GET /internal/tickets/{ticketId}/transfer-status` | `{ticketId, transferred}` | error |
//! | ticket | `getTicketsForOrder` | `GET /internal/orders/{orderId}/tickets` | `{orderId, tickets: [ticket]}` | error |
//! | ticket | `checkAvailability` | `GET /internal/ticket-types/availability?eventId=&ticketTypeIds=a,b` | `{availability: [{ticketTypeId, available}]}` | `[]` |
//! | ticket | `getPrices` | `GET /internal/ticket-types/prices?ticketTypeIds=a,b` | `{prices: [{ticketTypeId, priceCents, currency}]}` | `[]` |
//! | event | `getEvent` | `GET /internal/events/{eventId}` | `{id, status: "scheduled" \| "cancelled" \| "postponed" \| "completed", startsAt?}` | status unknown |
//!
//! A peer's 4xx other than 408 and 429 is a definite refusal and is never retried; 5xx, 429 and
//! no answer count against the operation's breaker.
//!
//! # Layout
//! - [`peer`]: the call wrapper; [`transport`]: the timed exchange under the breaker;
//!   [`breaker`]: one breaker per operation and the `client_breaker_state` gauge;
//!   [`retry`]: backoff and jitter; [`propagation`]: correlation headers and `traceparent`.
//! - [`payment`], [`ticket`], [`event`]: the typed clients and their fallbacks.
//! - [`options`]: timeouts, retry and breaker policies from settings; [`error`]: the errors.

pub mod breaker;
pub mod error;
pub mod event;
pub mod options;
pub mod payment;
pub mod peer;
pub mod propagation;
pub mod retry;
pub mod ticket;
pub mod transport;

use std::sync::Once;

use reqwest::Url;
use secrecy::ExposeSecret;

pub use breaker::BreakerState;
pub use error::{ClientConfigError, ClientError, PeerBody};
pub use event::{EventClient, EventInfo, EventStatus};
pub use options::{BreakerPolicy, ClientOptions, Peer, RetryPolicy};
pub use payment::{PaymentClient, PaymentStatus, RefundInstruction, RefundReceipt, RefundStatus};
pub use peer::PeerClient;
pub use ticket::{Ticket, TicketClient};

use crate::auth::KeyRing;
use crate::config::{AppEnv, Settings};

static CRYPTO: Once = Once::new();

/// Installs ring as the process's rustls provider (crates notes, trap 7). `main` does it first
/// thing; doing it here as well means no code path can build a client without one (reqwest
/// would fail). Later calls, and an already installed provider, are fine.
pub fn install_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The three clients, sharing one connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceClients {
    pub payment: PaymentClient,
    pub ticket: TicketClient,
    pub event: EventClient,
}

impl ServiceClients {
    /// Builds every client from settings: base URLs, timeouts, retry and breaker policies, and
    /// the key each peer is signed for (`INTERNAL_SERVICE_SECRET` or its `SERVICE_KEYS` entry).
    ///
    /// # Errors
    /// A URL that is not http(s), a plain-HTTP URL in production, a missing signing key, a zero
    /// timeout or breaker setting, or an HTTP client that cannot be built.
    pub fn from_settings(settings: &Settings) -> Result<Self, ClientConfigError> {
        let keys = KeyRing::from_config(
            Some(settings.shared_secret().expose_secret()),
            settings
                .auth
                .secret_previous
                .as_ref()
                .map(ExposeSecret::expose_secret),
            settings
                .auth
                .service_keys
                .as_ref()
                .map(ExposeSecret::expose_secret),
        )
        .map_err(ClientConfigError::Keys)?;
        let production = settings.app_env == AppEnv::Production;
        let http = http_client(production)?;
        let build = |peer: Peer, operations| {
            let base = base_url(peer, settings.peers.url(peer), production)?;
            let options = settings.peers.client_options(peer)?;
            PeerClient::new(
                peer,
                base,
                &settings.service_name,
                keys.clone(),
                http.clone(),
                options,
                operations,
            )
        };
        Ok(Self {
            payment: PaymentClient::new(build(Peer::Payment, payment::OPERATIONS)?),
            ticket: TicketClient::new(build(Peer::Ticket, ticket::OPERATIONS)?),
            event: EventClient::new(build(Peer::Event, event::OPERATIONS)?),
        })
    }
}

/// The shared HTTP client: rustls (ring), TLS 1.2 or newer, certificates and host names
/// verified (reqwest's defaults, never relaxed here), no redirects (a signature covers one
/// target), and HTTPS only in production.
fn http_client(production: bool) -> Result<reqwest::Client, ClientConfigError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .https_only(production)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("order-service/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientConfigError::Http)
}

/// Parses a peer's base URL; in production anything but `https://` is refused.
fn base_url(peer: Peer, raw: &str, production: bool) -> Result<Url, ClientConfigError> {
    let setting = peer.url_setting();
    let url = Url::parse(raw.trim()).map_err(|e| ClientConfigError::InvalidUrl {
        setting,
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => {}
        "http" if !production => {}
        "http" => return Err(ClientConfigError::InsecureUrl { setting }),
        other => {
            return Err(ClientConfigError::InvalidUrl {
                setting,
                reason: format!("scheme '{other}' is not http or https"),
            })
        }
    }
    if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
        return Err(ClientConfigError::InvalidUrl {
            setting,
            reason: "a base URL has a host and no query or fragment".into(),
        });
    }
    Ok(url)
}
