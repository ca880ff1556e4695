//! Typed configuration, read once from the environment (and flags, which win).
//!
//! Development defaults make `just run` work on a fresh machine; production refuses weak
//! secrets and plain-HTTP peers at start-up instead of failing later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

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

    /// A streaming standby of DATABASE_URL for the four `/internal` queries (optional; up to
    /// DB_MAX_CONNECTIONS connections). Everything that writes stays on the primary; when the
    /// standby is unreachable the primary answers the reads.
    #[arg(long, env = "READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// NATS server with JetStream; a comma-separated list for a cluster (the client picks one and
    /// fails over to the others).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// A `.creds` file (user JWT and nkey seed) this service presents to NATS.
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// A file holding the user nkey seed (`SU…`) this service presents to NATS.
    #[arg(long, env = "NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,

    /// User name for NATS user/password auth (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,

    /// Password for NATS user/password auth (with NATS_USER).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// PEM file of the CA that signed the NATS servers' certificates; implies TLS.
    #[arg(long, env = "NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for servers that verify clients (with NATS_TLS_KEY_FILE).
    #[arg(long, env = "NATS_TLS_CERT_FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,

    /// PEM private key of NATS_TLS_CERT_FILE.
    #[arg(long, env = "NATS_TLS_KEY_FILE")]
    pub nats_tls_key_file: Option<PathBuf>,

    /// Refuse a NATS server that does not offer TLS.
    #[arg(long, env = "NATS_REQUIRE_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub nats_require_tls: bool,

    /// Accept, in production, a NATS connection without TLS or without a credential (logged
    /// as a warning at start-up). Anyone who can publish `payment.succeeded` on such a broker
    /// can confirm orders.
    #[arg(long, env = "NATS_ALLOW_INSECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub nats_allow_insecure: bool,

    /// JetStream stream the outbox relay publishes into.
    #[arg(long, env = "NATS_STREAM", default_value = "TICKETTOKEN_EVENTS")]
    pub nats_stream: String,

    /// Prefix of every published subject: empty in production; tests isolate subjects with it.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "")]
    pub nats_subject_prefix: String,

    /// Create the stream when missing (and add missing subjects when present) before the
    /// relay's first publish.
    #[arg(long, env = "NATS_CREATE_STREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub nats_create_stream: bool,

    /// The stream's duplicate window, in seconds: re-sends of one event id inside it are
    /// dropped by JetStream.
    #[arg(long, env = "NATS_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub nats_duplicate_window_secs: u64,

    /// Replicas of the events and dead-letter streams and of the inbound durable consumers (1 on
    /// a single server, 3 on a three-node JetStream cluster); an existing stream is moved to it.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1)]
    pub nats_stream_replicas: usize,

    /// Hours an event stays in the events stream when this service creates or updates it (0:
    /// no limit). Keep it at most INBOX_RETENTION_HOURS: a message the stream can still
    /// redeliver is then still in the inbox, and is recognised rather than applied twice.
    #[arg(long, env = "NATS_STREAM_MAX_AGE_HOURS", default_value_t = 168)]
    pub nats_stream_max_age_hours: u64,

    /// Bytes the events stream may hold (0: no limit); past it the oldest events are dropped.
    #[arg(long, env = "NATS_STREAM_MAX_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub nats_stream_max_bytes: u64,

    /// Run the outbox relay in this process; across replicas one leads and the rest stand by.
    #[arg(long, env = "RELAY_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay_enabled: bool,

    /// Events the relay publishes per round (pipelined, then acked together).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500)]
    pub relay_batch_size: i64,

    /// Milliseconds between feed polls of a caught-up relay. Commits made by this replica wake
    /// it at once; this bounds the publish delay of commits made by other replicas.
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 20)]
    pub relay_poll_ms: u64,

    /// Seconds to wait for JetStream's publish acks before a round counts as failed.
    #[arg(long, env = "RELAY_PUBLISH_TIMEOUT_SECS", default_value_t = 5)]
    pub relay_publish_timeout_secs: u64,

    /// Longest pause, in seconds, between relay retries while NATS is unreachable.
    #[arg(long, env = "RELAY_MAX_BACKOFF_SECS", default_value_t = 30)]
    pub relay_max_backoff_secs: u64,

    /// Readiness fails while more committed events than this wait for the relay.
    #[arg(long, env = "RELAY_READY_MAX_BACKLOG", default_value_t = 10_000)]
    pub relay_ready_max_backlog: i64,

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

    /// Per-service keys: `payment-service=KEY|PREVIOUS,ticket-service=KEY`. (Start-up refuses
    /// `INTERNAL_SERVICE_KEYS`, which is not read.)
    #[arg(long, env = "SERVICE_KEYS", hide_env_values = true)]
    pub service_keys: Option<String>,

    /// Known callers, comma-separated.
    #[arg(
        long,
        env = "ALLOWED_INTERNAL_SERVICES",
        default_value = "payment-service,ticket-service,event-service,blockchain-service,api-gateway"
    )]
    pub allowed_internal_services: String,

    /// Per-route caller overrides, `route=service|service;...`, for example
    /// `orders.confirm=payment-service;jobs=api-gateway`. Routes: orders.read, orders.items,
    /// orders.create, orders.reserve, orders.confirm, orders.cancel, orders.refunds,
    /// orders.tickets, orders.events, events.feed, jobs.
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

    /// Milliseconds a call to payment-service may take, per attempt.
    #[arg(long, env = "PAYMENT_SERVICE_TIMEOUT_MS", default_value_t = 10_000)]
    pub payment_service_timeout_ms: u64,

    /// Milliseconds a call to ticket-service may take, per attempt.
    #[arg(long, env = "TICKET_SERVICE_TIMEOUT_MS", default_value_t = 10_000)]
    pub ticket_service_timeout_ms: u64,

    /// Milliseconds a call to event-service may take, per attempt.
    #[arg(long, env = "EVENT_SERVICE_TIMEOUT_MS", default_value_t = 10_000)]
    pub event_service_timeout_ms: u64,

    /// Retries of a retryable outgoing call after its first attempt (0 disables retries).
    #[arg(long, env = "CLIENT_RETRY_MAX_TIMES", default_value_t = 3)]
    pub client_retry_max_times: usize,

    /// First retry delay of outgoing calls, in ms; it doubles per retry, with 30 % jitter.
    #[arg(long, env = "CLIENT_RETRY_MIN_DELAY_MS", default_value_t = 200)]
    pub client_retry_min_delay_ms: u64,

    /// Longest delay between two retries of an outgoing call, in ms.
    #[arg(long, env = "CLIENT_RETRY_MAX_DELAY_MS", default_value_t = 5_000)]
    pub client_retry_max_delay_ms: u64,

    /// Consecutive failures of one peer operation that open its circuit breaker.
    #[arg(long, env = "CLIENT_BREAKER_FAILURES", default_value_t = 5)]
    pub client_breaker_failures: usize,

    /// Milliseconds an open breaker fails fast before it lets one probe call through.
    #[arg(long, env = "CLIENT_BREAKER_OPEN_MS", default_value_t = 30_000)]
    pub client_breaker_open_ms: u64,

    /// Seconds between two passes of the refund retry loop.
    #[arg(long, env = "REFUND_RETRY_EVERY_SECS", default_value_t = 15)]
    pub refund_retry_every_secs: u64,

    /// Seconds a requested refund is left to its own request before the retry loop takes it
    /// over; longer than the request timeout, so the two rarely overlap.
    #[arg(long, env = "REFUND_RETRY_GRACE_SECS", default_value_t = 60)]
    pub refund_retry_grace_secs: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "REQUEST_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub request_body_limit: usize,

    /// Seconds a request may take before it is answered 408. It runs from the end of the
    /// headers, so it also cuts off a body that trickles in too slowly.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Milliseconds a request may spend on the database in all, from its arrival: pool waits,
    /// batch queues, statements and retries of every call it makes share this one deadline
    /// (time spent waiting on peer services does not count). Past it the request answers 503
    /// with Retry-After. Keep it well below REQUEST_TIMEOUT_SECS and the callers' own timeouts,
    /// so that during a database outage they hear back instead of giving up.
    #[arg(long, env = "REQUEST_DB_DEADLINE_MS", default_value_t = 5_000)]
    pub request_db_deadline_ms: u64,

    /// Seconds an HTTP/1 client has to send a request's complete headers (counted from the
    /// first read, so an idle keep-alive connection is closed after it too). Without it a
    /// client sending headers byte by byte (slowloris) holds a connection forever. 0 disables.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub header_read_timeout_secs: u64,

    /// Largest request head (request line and headers) in bytes; a larger one is answered 431
    /// and the connection closed. The default matches Node's, which the platform's other
    /// services run on; values below 8192 are raised to 8192 (hyper's minimum buffer).
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Seconds given to in-flight work on SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// Longest wait, in ms, of a query with `minVersion` for the read model to reach that
    /// version before answering 503 with Retry-After.
    #[arg(long, env = "READ_WAIT_MS", default_value_t = 2_000)]
    pub read_wait_ms: u64,

    /// Largest replication lag, in ms, at which the standby of READ_DATABASE_URL still serves
    /// reads; beyond it the primary answers them until the standby catches up.
    #[arg(long, env = "READ_MAX_LAG_MS", default_value_t = 5_000)]
    pub read_max_lag_ms: u64,

    /// Milliseconds between two polls of the feed by an idle projector. Commits made by this
    /// replica wake it at once; this bounds the read-model lag of commits made by other
    /// replicas.
    #[arg(long, env = "PROJECTION_POLL_MS", default_value_t = 50)]
    pub projection_poll_ms: u64,

    /// Events a projector applies per transaction.
    #[arg(long, env = "PROJECTION_BATCH_SIZE", default_value_t = 500)]
    pub projection_batch_size: i64,

    /// Run the payment, dispute and ticket consumers in this process (replicas share each
    /// durable consumer).
    #[arg(long, env = "INBOUND_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub inbound_enabled: bool,

    /// Dead-letter stream of inbound messages that cannot be applied.
    #[arg(long, env = "DLQ_STREAM", default_value = "ORDER_SERVICE_DLQ")]
    pub dlq_stream: String,

    /// Hours a parked message stays in the dead-letter stream (0, the default: no limit). A
    /// parked message holds its order until it is redriven or discarded; one that aged out
    /// would leave its order held with nothing to redrive.
    #[arg(long, env = "DLQ_STREAM_MAX_AGE_HOURS", default_value_t = 0)]
    pub dlq_stream_max_age_hours: u64,

    /// Bytes the dead-letter stream may hold (0: no limit). When it is full, new parks are
    /// refused (logged as errors, the message redelivered to try again) rather than older
    /// parked messages dropped.
    #[arg(long, env = "DLQ_STREAM_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub dlq_stream_max_bytes: u64,

    /// Milliseconds an inbound delivery may stay unacknowledged before it is redelivered.
    #[arg(long, env = "INBOUND_ACK_WAIT_MS", default_value_t = 30_000)]
    pub inbound_ack_wait_ms: u64,

    /// Delays in ms before retry 1, 2, … of an inbound message after a transient failure
    /// (comma-separated; the last one repeats).
    #[arg(
        long,
        env = "INBOUND_BACKOFF_MS",
        value_delimiter = ',',
        default_value = "1000,5000,30000,120000,300000"
    )]
    pub inbound_backoff_ms: Vec<u64>,

    /// Check every `payment.succeeded` with payment-service (`getPaymentStatus`: succeeded, same
    /// order, amount and currency) before it confirms an order. Unset: on in production, off
    /// otherwise.
    #[arg(long, env = "INBOUND_VERIFY_PAYMENTS")]
    pub inbound_verify_payments: Option<bool>,

    /// Attempts at an inbound message before it is parked as "retries used up".
    #[arg(long, env = "INBOUND_MAX_DELIVER", default_value_t = 10)]
    pub inbound_max_deliver: i64,

    /// Inbound messages fetched per round.
    #[arg(long, env = "INBOUND_BATCH_SIZE", default_value_t = 50)]
    pub inbound_batch_size: usize,

    /// Largest inbound message body in bytes; bigger ones are parked unread.
    #[arg(long, env = "INBOUND_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub inbound_max_payload_bytes: usize,

    /// Milliseconds between polls of an idle inbound consumer.
    #[arg(long, env = "INBOUND_POLL_MS", default_value_t = 250)]
    pub inbound_poll_ms: u64,

    /// Hours a handled message id stays in the inbox; far longer than the stream's duplicate
    /// window, so a late re-publish of the same id is still recognised.
    #[arg(long, env = "INBOX_RETENTION_HOURS", default_value_t = 168)]
    pub inbox_retention_hours: u64,

    /// Run the scheduled jobs (docs/contract.md §8) in this process. Every replica may run them:
    /// each job has its own leader lock, so one replica at a time runs a given job.
    #[arg(long, env = "JOBS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub jobs_enabled: bool,

    /// Orders one job run looks at, at most: a run's work is bounded, never "all rows".
    #[arg(long, env = "JOB_BATCH_SIZE", default_value_t = 100)]
    pub job_batch_size: i64,

    /// Seconds between runs of the expiration job (open orders past their expiry).
    #[arg(long, env = "JOB_EXPIRATION_INTERVAL_SECS", default_value_t = 30)]
    pub job_expiration_interval_secs: u64,

    /// Seconds between runs of the reminder job (open orders about to expire).
    #[arg(long, env = "JOB_REMINDER_INTERVAL_SECS", default_value_t = 60)]
    pub job_reminder_interval_secs: u64,

    /// An open order expiring within this many seconds gets its one reminder.
    #[arg(long, env = "JOB_REMINDER_WINDOW_SECS", default_value_t = 300)]
    pub job_reminder_window_secs: u64,

    /// Seconds between runs of the reconciliation job (tickets, refunds, relay lag).
    #[arg(long, env = "JOB_RECONCILIATION_INTERVAL_SECS", default_value_t = 300)]
    pub job_reconciliation_interval_secs: u64,

    /// A paid order still without tickets this many minutes after payment is reconciled.
    #[arg(long, env = "JOB_RECONCILIATION_AFTER_MINUTES", default_value_t = 10)]
    pub job_reconciliation_after_minutes: u32,

    /// Seconds between runs of the archiving job.
    #[arg(long, env = "JOB_ARCHIVING_INTERVAL_SECS", default_value_t = 3600)]
    pub job_archiving_interval_secs: u64,

    /// A terminal order (cancelled, expired, failed, refunded) untouched for this many days
    /// leaves the hot read model for the archive tables.
    #[arg(long, env = "JOB_ARCHIVE_AFTER_DAYS", default_value_t = 30)]
    pub job_archive_after_days: u32,

    /// Seconds between runs of the event reminder job.
    #[arg(long, env = "JOB_EVENT_REMINDER_INTERVAL_SECS", default_value_t = 600)]
    pub job_event_reminder_interval_secs: u64,

    /// A paid order whose event starts within this many hours gets its one event reminder.
    #[arg(long, env = "JOB_EVENT_REMINDER_WINDOW_HOURS", default_value_t = 24)]
    pub job_event_reminder_window_hours: u32,

    /// Consecutive failed runs of one job that open its circuit breaker (runs are skipped).
    #[arg(long, env = "JOB_BREAKER_FAILURES", default_value_t = 3)]
    pub job_breaker_failures: u32,

    /// Seconds an open job breaker skips runs before it lets one probe run through.
    #[arg(long, env = "JOB_BREAKER_COOLDOWN_SECS", default_value_t = 300)]
    pub job_breaker_cooldown_secs: u64,
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

    /// The NATS connection's credential and TLS settings.
    pub fn nats_security(&self) -> order_bus::connect::NatsSecurity {
        order_bus::connect::NatsSecurity {
            creds_file: self.nats_creds_file.clone(),
            nkey_seed_file: self.nats_nkey_seed_file.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone().map(secrecy::SecretString::from),
            tls_ca_file: self.nats_tls_ca_file.clone(),
            tls_cert_file: self.nats_tls_cert_file.clone(),
            tls_key_file: self.nats_tls_key_file.clone(),
            require_tls: self.nats_require_tls,
            inbox_prefix: Some(self.nats_inbox_prefix()),
        }
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
        if let Some(missing) = self
            .nats_security()
            .check_production(&self.nats_url, self.nats_allow_insecure)?
        {
            tracing::warn!(
                missing,
                "NATS_ALLOW_INSECURE=true: connecting to NATS without {missing}; anyone who can \
                 publish payment.succeeded on this broker can confirm orders"
            );
        }
        Ok(())
    }

    /// The outbox relay's configuration.
    pub fn relay_config(&self) -> order_bus::RelayConfig {
        let mut config = order_bus::RelayConfig::new(&self.nats_stream, &self.nats_subject_prefix);
        config.stream.duplicate_window =
            Duration::from_secs(self.nats_duplicate_window_secs.max(1));
        config.stream.replicas = self.nats_stream_replicas.max(1);
        config.stream.max_age = hours(self.nats_stream_max_age_hours);
        config.stream.max_bytes = byte_limit(self.nats_stream_max_bytes);
        config.ensure_stream = self.nats_create_stream;
        config.batch_size = self.relay_batch_size.max(1);
        config.idle_poll = Duration::from_millis(self.relay_poll_ms.max(1));
        config.max_backoff = Duration::from_secs(self.relay_max_backoff_secs.max(1));
        config
    }

    /// How long the relay waits for publish acks.
    pub fn relay_publish_timeout(&self) -> Duration {
        Duration::from_secs(self.relay_publish_timeout_secs.max(1))
    }

    /// The subscriber configuration of one inbound family.
    pub fn subscriber_config(
        &self,
        family: order_bus::inbound::Family,
    ) -> order_bus::inbound::SubscriberConfig {
        let mut c = order_bus::inbound::SubscriberConfig::new(
            family,
            &self.nats_stream,
            &self.nats_subject_prefix,
        );
        c.ack_wait = Duration::from_millis(self.inbound_ack_wait_ms.max(1));
        if !self.inbound_backoff_ms.is_empty() {
            c.backoff = self
                .inbound_backoff_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
        }
        c.max_deliver = self.inbound_max_deliver.max(1);
        c.batch_size = self.inbound_batch_size.max(1);
        c.max_payload_bytes = self.inbound_max_payload_bytes;
        c.idle_poll = Duration::from_millis(self.inbound_poll_ms.max(1));
        c.replicas = self.nats_stream_replicas.max(1);
        c
    }

    /// The dead-letter stream's configuration.
    pub fn dlq_config(&self) -> order_bus::dlq::DlqConfig {
        crate::consumers::dlq_config(self)
    }

    /// How long handled inbound ids are kept.
    pub fn inbox_retention(&self) -> Duration {
        Duration::from_secs(self.inbox_retention_hours.max(1).saturating_mul(3600))
    }

    /// The request timeout as a duration.
    /// Whether inbound payments are checked with payment-service before they confirm.
    pub fn verify_inbound_payments(&self) -> bool {
        self.inbound_verify_payments
            .unwrap_or(self.app_env == AppEnv::Production)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The request database deadline as a duration (at least 1 ms).
    pub fn request_db_deadline(&self) -> Duration {
        Duration::from_millis(self.request_db_deadline_ms.max(1))
    }

    /// The HTTP/1 header read timeout, `None` when disabled with 0.
    pub fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_secs > 0)
            .then(|| Duration::from_secs(self.header_read_timeout_secs))
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
        // Inbound consumers share durable names; a test opts in with its own stream and prefix.
        s.inbound_enabled = false;
        // Tests drive the relay with `run_once`; an in-app relay would race them for the lock.
        s.relay_enabled = false;
        // Tests drive jobs with `run_once` or their own runners; in-app jobs would race them.
        s.jobs_enabled = false;
        s
    }
}

impl std::fmt::Debug for Settings {
    // Hand-written so that secrets can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field(
                "read_database_url",
                &self.read_database_url.as_deref().map(redact_url),
            )
            .field("nats_url", &order_bus::connect::redacted(&self.nats_url))
            .field("nats_stream", &self.nats_stream)
            .field("nats_subject_prefix", &self.nats_subject_prefix)
            .field("relay_enabled", &self.relay_enabled)
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

/// A JetStream age limit from hours; zero stays zero, JetStream's "no limit".
pub(crate) fn hours(hours: u64) -> Duration {
    Duration::from_secs(hours.saturating_mul(3600))
}

/// A JetStream size limit from bytes; zero is "no limit".
pub(crate) fn byte_limit(bytes: u64) -> i64 {
    match bytes {
        0 => order_bus::stream::NO_BYTE_LIMIT,
        b => i64::try_from(b).unwrap_or(i64::MAX),
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
        s.internal_service_secret = Some("super-secret-value-that-is-long-enough".into());
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("super-secret"), "{text}");
    }
}
