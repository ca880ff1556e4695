//! The settings of request authentication: the shared secret and per-service keys (secrets, in
//! and out), and which callers may reach which routes.

use clap::Args;
use secrecy::SecretString;

use super::{AppEnv, DEV_SECRET};

/// Who may call this service, and the keys that sign calls both ways.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthSettings {
    /// Shared HMAC secret of the platform's internal calls.
    #[arg(
        id = "internal_service_secret",
        long = "internal-service-secret",
        env = "INTERNAL_SERVICE_SECRET",
        value_name = "INTERNAL_SERVICE_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<SecretString>,

    /// The previous shared secret, still accepted during a rotation.
    #[arg(
        id = "internal_service_secret_previous",
        long = "internal-service-secret-previous",
        env = "INTERNAL_SERVICE_SECRET_PREVIOUS",
        value_name = "INTERNAL_SERVICE_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub secret_previous: Option<SecretString>,

    /// Per-service keys: `payment-service=KEY|PREVIOUS,ticket-service=KEY`. (Start-up refuses
    /// `INTERNAL_SERVICE_KEYS`, which is not read.)
    #[arg(long, env = "SERVICE_KEYS", hide_env_values = true)]
    pub service_keys: Option<SecretString>,

    /// Known callers, comma-separated.
    #[arg(
        id = "allowed_internal_services",
        long = "allowed-internal-services",
        env = "ALLOWED_INTERNAL_SERVICES",
        value_name = "ALLOWED_INTERNAL_SERVICES",
        default_value = "payment-service,ticket-service,event-service,blockchain-service,api-gateway"
    )]
    pub allowed_services: String,

    /// Per-route caller overrides, `route=service|service;...`, for example
    /// `orders.confirm=payment-service;jobs=api-gateway`. Routes: orders.read, orders.items,
    /// orders.create, orders.reserve, orders.confirm, orders.cancel, orders.refunds,
    /// orders.tickets, orders.events, events.feed, jobs.
    #[arg(long, env = "ROUTE_CALLERS")]
    pub route_callers: Option<String>,
}

impl AuthSettings {
    /// The shared secret, falling back to the development one outside production (and to
    /// nothing, which key validation refuses, in production).
    pub fn shared_secret(&self, env: AppEnv) -> SecretString {
        match (&self.secret, env) {
            (Some(s), _) => s.clone(),
            (None, AppEnv::Production) => SecretString::from(""),
            (None, _) => SecretString::from(DEV_SECRET),
        }
    }
}
