//! The JetStream streams this service publishes into and parks messages in: names, subject
//! prefix, replicas and limits, and the specifications built from them.

use std::time::Duration;

use clap::Args;
use order_bus::dlq::DlqConfig;
use order_bus::stream::StreamSpec;
use order_bus::Subjects;

/// The events stream and the dead-letter stream of inbound messages.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Streams")]
pub struct StreamSettings {
    /// JetStream stream the outbox relay publishes into.
    #[arg(
        id = "nats_stream",
        long = "nats-stream",
        env = "NATS_STREAM",
        value_name = "NATS_STREAM",
        default_value = "TICKETTOKEN_EVENTS"
    )]
    pub events: String,

    /// Prefix of every published subject: empty in production; tests isolate subjects with it.
    #[arg(
        id = "nats_subject_prefix",
        long = "nats-subject-prefix",
        env = "NATS_SUBJECT_PREFIX",
        value_name = "NATS_SUBJECT_PREFIX",
        default_value = ""
    )]
    pub subject_prefix: String,

    /// Create the stream when missing (and add missing subjects when present) before the
    /// relay's first publish.
    #[arg(
        id = "nats_create_stream",
        long = "nats-create-stream",
        env = "NATS_CREATE_STREAM", value_name = "NATS_CREATE_STREAM",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create: bool,

    /// The stream's duplicate window, in seconds: re-sends of one event id inside it are
    /// dropped by JetStream.
    #[arg(
        id = "nats_duplicate_window_secs",
        long = "nats-duplicate-window-secs",
        env = "NATS_DUPLICATE_WINDOW_SECS",
        value_name = "NATS_DUPLICATE_WINDOW_SECS",
        default_value_t = 120
    )]
    pub duplicate_window_secs: u64,

    /// Replicas of the events and dead-letter streams and of the inbound durable consumers (1 on
    /// a single server, 3 on a three-node JetStream cluster); an existing stream is moved to it.
    #[arg(
        id = "nats_stream_replicas",
        long = "nats-stream-replicas",
        env = "NATS_STREAM_REPLICAS",
        value_name = "NATS_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: usize,

    /// Hours an event stays in the events stream when this service creates or updates it (0:
    /// no limit). Keep it at most INBOX_RETENTION_HOURS: a message the stream can still
    /// redeliver is then still in the inbox, and is recognised rather than applied twice.
    #[arg(
        id = "nats_stream_max_age_hours",
        long = "nats-stream-max-age-hours",
        env = "NATS_STREAM_MAX_AGE_HOURS",
        value_name = "NATS_STREAM_MAX_AGE_HOURS",
        default_value_t = 168
    )]
    pub max_age_hours: u64,

    /// Bytes the events stream may hold (0: no limit); past it the oldest events are dropped.
    #[arg(
        id = "nats_stream_max_bytes",
        long = "nats-stream-max-bytes",
        env = "NATS_STREAM_MAX_BYTES", value_name = "NATS_STREAM_MAX_BYTES",
        default_value_t = 10 * 1024 * 1024 * 1024
    )]
    pub max_bytes: u64,

    /// Dead-letter stream of inbound messages that cannot be applied.
    #[arg(
        id = "dlq_stream",
        long = "dlq-stream",
        env = "DLQ_STREAM",
        value_name = "DLQ_STREAM",
        default_value = "ORDER_SERVICE_DLQ"
    )]
    pub dlq: String,

    /// Hours a parked message stays in the dead-letter stream (0, the default: no limit). A
    /// parked message holds its order until it is redriven or discarded; one that aged out
    /// would leave its order held with nothing to redrive.
    #[arg(
        id = "dlq_stream_max_age_hours",
        long = "dlq-stream-max-age-hours",
        env = "DLQ_STREAM_MAX_AGE_HOURS",
        value_name = "DLQ_STREAM_MAX_AGE_HOURS",
        default_value_t = 0
    )]
    pub dlq_max_age_hours: u64,

    /// Bytes the dead-letter stream may hold (0: no limit). When it is full, new parks are
    /// refused (logged as errors, the message redelivered to try again) rather than older
    /// parked messages dropped.
    #[arg(
        id = "dlq_stream_max_bytes",
        long = "dlq-stream-max-bytes",
        env = "DLQ_STREAM_MAX_BYTES", value_name = "DLQ_STREAM_MAX_BYTES",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub dlq_max_bytes: u64,
}

impl StreamSettings {
    /// The duplicate window, at least a second.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs.max(1))
    }

    /// Replicas, at least one.
    pub fn replicas(&self) -> usize {
        self.replicas.max(1)
    }

    /// The events stream's specification, the one the relay and the consumers both ensure.
    pub fn events_spec(&self) -> StreamSpec {
        let subjects = Subjects::new(&self.subject_prefix);
        let mut spec = StreamSpec::events(&self.events, &subjects, self.duplicate_window());
        spec.replicas = self.replicas();
        spec.max_age = hours(self.max_age_hours);
        spec.max_bytes = byte_limit(self.max_bytes);
        spec
    }

    /// The dead-letter stream's configuration; its stream settings follow the events stream's.
    pub fn dlq_config(&self) -> DlqConfig {
        let mut c = DlqConfig::new(&self.dlq, &self.subject_prefix, &self.events);
        c.duplicate_window = self.duplicate_window();
        c.replicas = self.replicas();
        c.ensure_stream = self.create;
        c.max_age = hours(self.dlq_max_age_hours);
        c.max_bytes = byte_limit(self.dlq_max_bytes);
        c
    }
}

/// A JetStream age limit from hours; zero stays zero, JetStream's "no limit".
fn hours(hours: u64) -> Duration {
    Duration::from_secs(hours.saturating_mul(3600))
}

/// A JetStream size limit from bytes; zero is "no limit".
fn byte_limit(bytes: u64) -> i64 {
    match bytes {
        0 => order_bus::stream::NO_BYTE_LIMIT,
        b => i64::try_from(b).unwrap_or(i64::MAX),
    }
}
