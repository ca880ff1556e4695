//! Typed configuration, read once from the environment (and flags, which win).
//!
//! Development defaults make `just run` work on a fresh machine; production refuses weak
//! secrets and plain-HTTP peers at start-up instead of failing later.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where the service runs; decides how strict start-up checks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Test,
    Production,
}

/// The secret every existing service uses in development; refused in production.
pub const DEV_SECRET: &str = "dev-internal-secret-change-me";

/// All settings of `order-service`. Each field documents its variable in `--help`.
#[derive(Clone, Args)]
pub struct Settings {
    /// Postgres connection string; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_service"
    )]
    pub database_url: String,

    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// NATS server with JetStream.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Address the HTTP server binds; port 0 picks a free port.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// This service's name, used when it signs outgoing requests.
    #[arg(long, env = "SERVICE_NAME", default_value = "order-service")]
    pub service_name: String,

    /// development, test or production.
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
    pub app_env: AppEnv,

    /// Shared HMAC secret of the platform's internal calls.
    #[arg(long, env = "INTERNAL_SERVICE_SECRET", hide_env_values = true)]
    pub internal_service_secret: Option<String>,

    /// The previous shared secret, still accepted during a rotation.
    #[arg(long, env = "INTERNAL_SERVICE_SECRET_PREVIOUS", hide_env_values = true)]
    pub internal_service_secret_previous: Option<String>,

    /// Per-service keys: `payment-service=KEY|PREVIOUS,ticket-service=KEY`.
    #[arg(long, env = "SERVICE_KEYS", hide_env_values = true)]
    pub service_keys: Option<String>,

    /// Known callers, comma-separated.
    #[arg(
        long,
        env = "ALLOWED_INTERNAL_SERVICES",
        default_value = "payment-service,ticket-service,event-service,blockchain-service,api-gateway"
    )]
    pub allowed_internal_services: String,

    /// Per-route caller overrides: `orders.items=blockchain-service|ticket-service;jobs=api-gateway`.
    #[arg(long, env = "ROUTE_CALLERS")]
    pub route_callers: Option<String>,

    /// payment-service base URL.
    #[arg(
        long,
        env = "PAYMENT_SERVICE_URL",
        default_value = "http://tickettoken-payment:3006"
    )]
    pub payment_service_url: String,

    /// ticket-service base URL.
    #[arg(
        long,
        env = "TICKET_SERVICE_URL",
        default_value = "http://tickettoken-ticket:3004"
    )]
    pub ticket_service_url: String,

    /// event-service base URL.
    #[arg(
        long,
        env = "EVENT_SERVICE_URL",
        default_value = "http://tickettoken-event:3003"
    )]
    pub event_service_url: String,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "REQUEST_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub request_body_limit: usize,

    /// Seconds a request may take before it is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Seconds given to in-flight work on SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

impl Settings {
    /// The shared secret, falling back to the development one outside production.
    pub fn shared_secret(&self) -> String {
        match (&self.internal_service_secret, self.app_env) {
            (Some(s), _) => s.clone(),
            (None, AppEnv::Production) => String::new(),
            (None, _) => DEV_SECRET.to_owned(),
        }
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Settings for tests and tools: every default, with the given database.
    pub fn for_tests(database_url: &str) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        let mut s = Wrapper::parse_from(["order-service"]).settings;
        s.database_url = database_url.to_owned();
        s.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.app_env = AppEnv::Test;
        s
    }
}

impl std::fmt::Debug for Settings {
    // Hand-written so that secrets can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("nats_url", &self.nats_url)
            .field("http_addr", &self.http_addr)
            .field("service_name", &self.service_name)
            .field("app_env", &self.app_env)
            .field("internal_service_secret", &"[redacted]")
            .field("allowed_internal_services", &self.allowed_internal_services)
            .field("route_callers", &self.route_callers)
            .field("payment_service_url", &self.payment_service_url)
            .field("ticket_service_url", &self.ticket_service_url)
            .field("event_service_url", &self.event_service_url)
            .finish_non_exhaustive()
    }
}

/// Hides a password in a connection URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |i| scheme + 3 + i);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_output() {
        let mut s = Settings::for_tests("postgres://user:hunter2@db:5432/x");
        s.internal_service_secret = Some("super-secret-value-that-is-long-enough".into());
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("super-secret"), "{text}");
    }
}
