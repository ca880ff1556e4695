//! The inbound consumers' settings: whether they run here, redelivery and parking, and how long
//! handled message ids are remembered.

use std::time::Duration;

use clap::Args;
use order_bus::inbound::{Family, SubscriberConfig};

use super::{AppEnv, StreamSettings};

/// How the payment, dispute and ticket consumers read their messages.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Inbound consumers")]
pub struct InboundSettings {
    /// Run the payment, dispute and ticket consumers in this process (replicas share each
    /// durable consumer).
    #[arg(
        id = "inbound_enabled",
        long = "inbound-enabled",
        env = "INBOUND_ENABLED", value_name = "INBOUND_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// Milliseconds an inbound delivery may stay unacknowledged before it is redelivered.
    #[arg(
        id = "inbound_ack_wait_ms",
        long = "inbound-ack-wait-ms",
        env = "INBOUND_ACK_WAIT_MS",
        value_name = "INBOUND_ACK_WAIT_MS",
        default_value_t = 30_000
    )]
    pub ack_wait_ms: u64,

    /// Delays in ms before retry 1, 2, … of an inbound message after a transient failure
    /// (comma-separated; the last one repeats).
    #[arg(
        id = "inbound_backoff_ms",
        long = "inbound-backoff-ms",
        env = "INBOUND_BACKOFF_MS",
        value_name = "INBOUND_BACKOFF_MS",
        value_delimiter = ',',
        default_value = "1000,5000,30000,120000,300000"
    )]
    pub backoff_ms: Vec<u64>,

    /// Check every `payment.succeeded` with payment-service (`getPaymentStatus`: succeeded, same
    /// order, amount and currency) before it confirms an order. Unset: on in production, off
    /// otherwise.
    #[arg(
        id = "inbound_verify_payments",
        long = "inbound-verify-payments",
        env = "INBOUND_VERIFY_PAYMENTS",
        value_name = "INBOUND_VERIFY_PAYMENTS"
    )]
    pub verify_payments: Option<bool>,

    /// Attempts at an inbound message before it is parked as "retries used up".
    #[arg(
        id = "inbound_max_deliver",
        long = "inbound-max-deliver",
        env = "INBOUND_MAX_DELIVER",
        value_name = "INBOUND_MAX_DELIVER",
        default_value_t = 10
    )]
    pub max_deliver: i64,

    /// Inbound messages fetched per round.
    #[arg(
        id = "inbound_batch_size",
        long = "inbound-batch-size",
        env = "INBOUND_BATCH_SIZE",
        value_name = "INBOUND_BATCH_SIZE",
        default_value_t = 50
    )]
    pub batch_size: usize,

    /// Largest inbound message body in bytes; bigger ones are parked unread.
    #[arg(
        id = "inbound_max_payload_bytes",
        long = "inbound-max-payload-bytes",
        env = "INBOUND_MAX_PAYLOAD_BYTES", value_name = "INBOUND_MAX_PAYLOAD_BYTES",
        default_value_t = 64 * 1024
    )]
    pub max_payload_bytes: usize,

    /// Milliseconds between polls of an idle inbound consumer.
    #[arg(
        id = "inbound_poll_ms",
        long = "inbound-poll-ms",
        env = "INBOUND_POLL_MS",
        value_name = "INBOUND_POLL_MS",
        default_value_t = 250
    )]
    pub poll_ms: u64,

    /// Hours a handled message id stays in the inbox; far longer than the stream's duplicate
    /// window, so a late re-publish of the same id is still recognised.
    #[arg(
        id = "inbox_retention_hours",
        long = "inbox-retention-hours",
        env = "INBOX_RETENTION_HOURS",
        value_name = "INBOX_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub inbox_retention_hours: u64,
}

impl InboundSettings {
    /// The subscriber configuration of one inbound family, on the streams of `streams`.
    pub fn subscriber_config(&self, family: Family, streams: &StreamSettings) -> SubscriberConfig {
        let mut c = SubscriberConfig::new(family, &streams.events, &streams.subject_prefix);
        c.ack_wait = Duration::from_millis(self.ack_wait_ms.max(1));
        if !self.backoff_ms.is_empty() {
            c.backoff = self
                .backoff_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
        }
        c.max_deliver = self.max_deliver.max(1);
        c.batch_size = self.batch_size.max(1);
        c.max_payload_bytes = self.max_payload_bytes;
        c.idle_poll = Duration::from_millis(self.poll_ms.max(1));
        c.replicas = streams.replicas();
        c
    }

    /// How long handled inbound ids are kept.
    pub fn inbox_retention(&self) -> Duration {
        Duration::from_secs(self.inbox_retention_hours.max(1).saturating_mul(3600))
    }

    /// Whether inbound payments are checked with payment-service before they confirm.
    pub fn verify_payments(&self, env: AppEnv) -> bool {
        self.verify_payments.unwrap_or(env == AppEnv::Production)
    }
}
