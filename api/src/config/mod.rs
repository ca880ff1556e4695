//! Typed configuration, read once from the environment (and flags, which win).
//!
//! Development defaults make `just run` work on a fresh machine; production refuses weak
//! secrets and plain-HTTP peers at start-up instead of failing later.
//!
//! [`Settings`] is one group per part of the service, each in its own module with what it
//! builds next to it: [`HttpSettings`] (listener and request limits), [`DatabaseSettings`]
//! (primary, pool, read standby), [`ReadModelSettings`] (projectors, read waits),
//! [`NatsSettings`] (connection, credential, TLS), [`StreamSettings`] (events and dead-letter
//! streams), [`RelaySettings`], [`InboundSettings`], [`AuthSettings`] (secrets and caller
//! policy), [`PeerSettings`] (peer URLs, timeouts, retry and breaker), [`RefundSettings`] and
//! [`JobSettings`]. Every password, key, secret and URL that may carry one is a
//! [`SecretString`], so `Debug` (and so any log line) never shows it.
//!
//! Settings depend on the bus's configuration types and on the clients' and jobs' policy types
//! they build; nothing here reads the environment after start-up. They must not depend on the
//! HTTP adapter or the application layer (`crate::app` is handed what it needs, never
//! `Settings`).

mod auth;
mod database;
mod http;
mod inbound;
mod jobs;
mod nats;
mod peers;
mod read_model;
mod relay;
mod streams;

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

pub use auth::AuthSettings;
pub use database::DatabaseSettings;
pub use http::HttpSettings;
pub use inbound::InboundSettings;
pub use jobs::JobSettings;
pub use nats::NatsSettings;
pub use peers::{PeerSettings, RefundSettings};
pub use read_model::ReadModelSettings;
pub use relay::RelaySettings;
pub use streams::StreamSettings;

/// Where the service runs; decides how strict start-up checks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Test,
    Production,
}

/// The secret every existing service uses in development; refused in production, and off a
/// loopback `HTTP_ADDR` in any environment.
pub const DEV_SECRET: &str = "dev-internal-secret-change-me";

/// Variables that look like settings of this service but are not read, each with the name that
/// is. Start-up refuses them: a deployment that sets one would otherwise run without what it
/// meant to configure (per-service keys, here), and nothing would say so.
pub const MISNAMED_SETTINGS: &[(&str, &str)] = &[("INTERNAL_SERVICE_KEYS", "SERVICE_KEYS")];

/// Settings refused before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable from [`MISNAMED_SETTINGS`] is set.
    #[error("{set} is set, but this service reads {read}: rename it")]
    Misnamed {
        /// The name found in the environment.
        set: &'static str,
        /// The name this service reads.
        read: &'static str,
    },
}

/// Refuses an environment that sets a variable from [`MISNAMED_SETTINGS`]; `names` are the
/// environment's variable names.
///
/// # Errors
/// [`ConfigError::Misnamed`] for the first such variable.
pub fn refuse_misnamed<K: AsRef<std::ffi::OsStr>>(
    names: impl IntoIterator<Item = K>,
) -> Result<(), ConfigError> {
    for name in names {
        let name = name.as_ref();
        if let Some((set, read)) = MISNAMED_SETTINGS.iter().find(|(set, _)| name == *set) {
            return Err(ConfigError::Misnamed { set, read });
        }
    }
    Ok(())
}

/// All settings of `order-service`, one group per part of the service. Each field documents
/// its variable in `--help`, under its group's heading.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// development, test or production.
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
    pub app_env: AppEnv,

    /// This service's name, used when it signs outgoing requests.
    #[arg(long, env = "SERVICE_NAME", default_value = "order-service")]
    pub service_name: String,

    /// Seconds given to in-flight work on SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub http: HttpSettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub read_model: ReadModelSettings,

    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub streams: StreamSettings,

    #[command(flatten)]
    pub relay: RelaySettings,

    #[command(flatten)]
    pub inbound: InboundSettings,

    #[command(flatten)]
    pub auth: AuthSettings,

    #[command(flatten)]
    pub peers: PeerSettings,

    #[command(flatten)]
    pub refunds: RefundSettings,

    #[command(flatten)]
    pub jobs: JobSettings,
}

impl Settings {
    /// The shared secret, falling back to the development one outside production.
    pub fn shared_secret(&self) -> SecretString {
        self.auth.shared_secret(self.app_env)
    }

    /// The NATS connection's credential and TLS settings.
    pub fn nats_security(&self) -> order_bus::connect::NatsSecurity {
        self.nats.security(self.nats_inbox_prefix())
    }

    /// The subject prefix of this service's reply inboxes, `_INBOX_<SERVICE_NAME>`: the
    /// permission model lets each user subscribe to its own prefix only.
    pub fn nats_inbox_prefix(&self) -> String {
        format!("_INBOX_{}", self.service_name)
    }

    /// The production rule for the NATS connection (TLS and a credential, unless
    /// NATS_ALLOW_INSECURE=true, which is logged as a warning). Nothing outside production.
    ///
    /// # Errors
    /// When production would connect without TLS or a credential.
    pub fn check_nats_production(&self) -> Result<(), order_bus::connect::ConnectError> {
        if self.app_env != AppEnv::Production {
            return Ok(());
        }
        self.nats.check_production(&self.nats_security())
    }

    /// The outbox relay's configuration.
    pub fn relay_config(&self) -> order_bus::RelayConfig {
        self.relay.config(&self.streams)
    }

    /// The subscriber configuration of one inbound family.
    pub fn subscriber_config(
        &self,
        family: order_bus::inbound::Family,
    ) -> order_bus::inbound::SubscriberConfig {
        self.inbound.subscriber_config(family, &self.streams)
    }

    /// Whether inbound payments are checked with payment-service before they confirm.
    pub fn verify_inbound_payments(&self) -> bool {
        self.inbound.verify_payments(self.app_env)
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
        s.database.url = database_url.into();
        s.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.app_env = AppEnv::Test;
        // Inbound consumers share durable names; a test opts in with its own stream and prefix.
        s.inbound.enabled = false;
        // Tests drive the relay with `run_once`; an in-app relay would race them for the lock.
        s.relay.enabled = false;
        // Tests drive jobs with `run_once` or their own runners; in-app jobs would race them.
        s.jobs.enabled = false;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misnamed_settings_are_refused() {
        assert_eq!(refuse_misnamed(["PATH", "SERVICE_KEYS"]), Ok(()));
        assert_eq!(
            refuse_misnamed(["PATH", "INTERNAL_SERVICE_KEYS"]),
            Err(ConfigError::Misnamed {
                set: "INTERNAL_SERVICE_KEYS",
                read: "SERVICE_KEYS"
            })
        );
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let mut s = Settings::for_tests("postgres://user:hunter2@db:5432/x");
        s.auth.secret = Some("super-secret-value-that-is-long-enough".into());
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("super-secret"), "{text}");
    }

    /// Every secret the settings hold, set to a marker: none reaches `{:?}`, while the parts
    /// around them (hosts, user names) still do.
    #[test]
    fn no_secret_shows_in_debug_output() {
        let mut s = Settings::for_tests("postgres://user:pg-secret-1@db:5432/x");
        s.database.read_url = Some("postgres://ro:pg-secret-2@standby:5432/x".into());
        s.nats.url =
            "nats://svc:nats-secret-1@nats-a:4222,nats://svc:nats-secret-1@nats-b:4222".into();
        s.nats.user = Some("order-service".into());
        s.nats.password = Some("nats-secret-2".into());
        s.auth.secret = Some("hmac-secret-1".into());
        s.auth.secret_previous = Some("hmac-secret-2".into());
        s.auth.service_keys = Some("payment-service=key-secret-1|key-secret-2".into());
        let text = format!("{s:?}");
        for secret in [
            "pg-secret-1",
            "pg-secret-2",
            "nats-secret-1",
            "nats-secret-2",
            "hmac-secret-1",
            "hmac-secret-2",
            "key-secret-1",
            "key-secret-2",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for shown in [
            "db:5432",
            "standby:5432",
            "nats-a:4222",
            "nats-b:4222",
            "order-service",
        ] {
            assert!(text.contains(shown), "{shown} missing from {text}");
        }
    }

    /// Grouping the settings kept every variable and flag: the variables are exactly these,
    /// each one's flag is its name in kebab case, and `--help` shows the variable's name as the
    /// flag's value.
    #[test]
    fn variables_and_flags_are_unchanged() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        let mut expected = vec![
            "DATABASE_URL",
            "DB_MAX_CONNECTIONS",
            "READ_DATABASE_URL",
            "NATS_URL",
            "NATS_CREDS_FILE",
            "NATS_NKEY_SEED_FILE",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TLS_CA_FILE",
            "NATS_TLS_CERT_FILE",
            "NATS_TLS_KEY_FILE",
            "NATS_REQUIRE_TLS",
            "NATS_ALLOW_INSECURE",
            "NATS_STREAM",
            "NATS_SUBJECT_PREFIX",
            "NATS_CREATE_STREAM",
            "NATS_DUPLICATE_WINDOW_SECS",
            "NATS_STREAM_REPLICAS",
            "NATS_STREAM_MAX_AGE_HOURS",
            "NATS_STREAM_MAX_BYTES",
            "RELAY_ENABLED",
            "RELAY_BATCH_SIZE",
            "RELAY_POLL_MS",
            "RELAY_GATHER_MS",
            "RELAY_PUBLISH_TIMEOUT_SECS",
            "RELAY_MAX_BACKOFF_SECS",
            "RELAY_READY_MAX_BACKLOG",
            "HTTP_ADDR",
            "SERVICE_NAME",
            "APP_ENV",
            "INTERNAL_SERVICE_SECRET",
            "INTERNAL_SERVICE_SECRET_PREVIOUS",
            "SERVICE_KEYS",
            "ALLOWED_INTERNAL_SERVICES",
            "ROUTE_CALLERS",
            "PAYMENT_SERVICE_URL",
            "TICKET_SERVICE_URL",
            "EVENT_SERVICE_URL",
            "PAYMENT_SERVICE_TIMEOUT_MS",
            "TICKET_SERVICE_TIMEOUT_MS",
            "EVENT_SERVICE_TIMEOUT_MS",
            "CLIENT_RETRY_MAX_TIMES",
            "CLIENT_RETRY_MIN_DELAY_MS",
            "CLIENT_RETRY_MAX_DELAY_MS",
            "CLIENT_BREAKER_FAILURES",
            "CLIENT_BREAKER_OPEN_MS",
            "REFUND_RETRY_EVERY_SECS",
            "REFUND_RETRY_GRACE_SECS",
            "REQUEST_BODY_LIMIT",
            "REQUEST_TIMEOUT_SECS",
            "REQUEST_DB_DEADLINE_MS",
            "HEADER_READ_TIMEOUT_SECS",
            "MAX_HEADER_BYTES",
            "SHUTDOWN_TIMEOUT_SECS",
            "READ_WAIT_MS",
            "READ_MAX_LAG_MS",
            "PROJECTION_POLL_MS",
            "PROJECTION_GATHER_MS",
            "PROJECTION_BATCH_SIZE",
            "INBOUND_ENABLED",
            "DLQ_STREAM",
            "DLQ_STREAM_MAX_AGE_HOURS",
            "DLQ_STREAM_MAX_BYTES",
            "INBOUND_ACK_WAIT_MS",
            "INBOUND_BACKOFF_MS",
            "INBOUND_VERIFY_PAYMENTS",
            "INBOUND_MAX_DELIVER",
            "INBOUND_BATCH_SIZE",
            "INBOUND_MAX_PAYLOAD_BYTES",
            "INBOUND_POLL_MS",
            "INBOX_RETENTION_HOURS",
            "JOBS_ENABLED",
            "JOB_BATCH_SIZE",
            "JOB_EXPIRATION_INTERVAL_SECS",
            "JOB_REMINDER_INTERVAL_SECS",
            "JOB_REMINDER_WINDOW_SECS",
            "JOB_RECONCILIATION_INTERVAL_SECS",
            "JOB_RECONCILIATION_AFTER_MINUTES",
            "JOB_ARCHIVING_INTERVAL_SECS",
            "JOB_ARCHIVE_AFTER_DAYS",
            "JOB_EVENT_REMINDER_INTERVAL_SECS",
            "JOB_EVENT_REMINDER_WINDOW_HOURS",
            "JOB_BREAKER_FAILURES",
            "JOB_BREAKER_COOLDOWN_SECS",
        ];
        expected.sort_unstable();
        let command = Wrapper::command();
        let mut seen = Vec::new();
        for arg in command.get_arguments() {
            let env = arg
                .get_env()
                .and_then(|e| e.to_str())
                .unwrap_or_else(|| panic!("{} has no variable", arg.get_id()));
            assert_eq!(
                arg.get_long(),
                Some(env.to_lowercase().replace('_', "-").as_str()),
                "flag of {env}"
            );
            if let Some(names) = arg.get_value_names() {
                assert_eq!(names, [env], "value name of {env}");
            }
            seen.push(env.to_owned());
        }
        seen.sort_unstable();
        assert_eq!(seen, expected);
    }
}
