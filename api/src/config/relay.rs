//! The outbox relay's settings: whether it runs here, its pace, and when readiness gives up on
//! it.

use std::time::Duration;

use clap::Args;

use super::StreamSettings;

/// How the outbox relay publishes the event feed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Outbox relay")]
pub struct RelaySettings {
    /// Run the outbox relay in this process; across replicas one leads and the rest stand by.
    #[arg(
        id = "relay_enabled",
        long = "relay-enabled",
        env = "RELAY_ENABLED", value_name = "RELAY_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// Events the relay publishes per round (pipelined, then acked together).
    #[arg(
        id = "relay_batch_size",
        long = "relay-batch-size",
        env = "RELAY_BATCH_SIZE",
        value_name = "RELAY_BATCH_SIZE",
        default_value_t = 500
    )]
    pub batch_size: i64,

    /// Milliseconds between feed polls of a caught-up relay. Commits made by this replica wake
    /// it at once; this bounds the publish delay of commits made by other replicas.
    #[arg(
        id = "relay_poll_ms",
        long = "relay-poll-ms",
        env = "RELAY_POLL_MS",
        value_name = "RELAY_POLL_MS",
        default_value_t = 20
    )]
    pub poll_ms: u64,

    /// Milliseconds the relay waits, after publishing a round while more commits landed, before
    /// its next round, so that those commits are published together instead of a round each.
    /// A bound on the delay it adds under load; a lone commit is published at once.
    #[arg(
        id = "relay_gather_ms",
        long = "relay-gather-ms",
        env = "RELAY_GATHER_MS",
        value_name = "RELAY_GATHER_MS",
        default_value_t = 5
    )]
    pub gather_ms: u64,

    /// Seconds to wait for JetStream's publish acks before a round counts as failed.
    #[arg(
        id = "relay_publish_timeout_secs",
        long = "relay-publish-timeout-secs",
        env = "RELAY_PUBLISH_TIMEOUT_SECS",
        value_name = "RELAY_PUBLISH_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub publish_timeout_secs: u64,

    /// Longest pause, in seconds, between relay retries while NATS is unreachable.
    #[arg(
        id = "relay_max_backoff_secs",
        long = "relay-max-backoff-secs",
        env = "RELAY_MAX_BACKOFF_SECS",
        value_name = "RELAY_MAX_BACKOFF_SECS",
        default_value_t = 30
    )]
    pub max_backoff_secs: u64,

    /// Readiness fails while more committed events than this wait for the relay.
    #[arg(
        id = "relay_ready_max_backlog",
        long = "relay-ready-max-backlog",
        env = "RELAY_READY_MAX_BACKLOG",
        value_name = "RELAY_READY_MAX_BACKLOG",
        default_value_t = 10_000
    )]
    pub ready_max_backlog: i64,
}

impl RelaySettings {
    /// The relay's configuration over the events stream of `streams`.
    pub fn config(&self, streams: &StreamSettings) -> order_bus::RelayConfig {
        let mut config = order_bus::RelayConfig::new(&streams.events, &streams.subject_prefix);
        config.stream = streams.events_spec();
        config.ensure_stream = streams.create;
        config.batch_size = self.batch_size.max(1);
        config.idle_poll = Duration::from_millis(self.poll_ms.max(1));
        config.gather = Duration::from_millis(self.gather_ms);
        config.max_backoff = Duration::from_secs(self.max_backoff_secs.max(1));
        config
    }

    /// How long the relay waits for publish acks.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_secs(self.publish_timeout_secs.max(1))
    }
}
