//! How a subscriber consumes: its consumer's settings (ack wait, backoff, max deliver) and the
//! limits it applies to messages.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

use super::family::Family;
use crate::subjects::Subjects;

/// Extra deliveries the server allows past [`SubscriberConfig::max_deliver`]. Attempts beyond
/// `max_deliver` skip the handler and only park the message, so a message whose last attempt
/// neither succeeded nor failed (the process crashed, or parking itself failed because the
/// broker or database was down) still ends up in the dead-letter stream instead of being
/// silently abandoned by the consumer.
pub const PARKING_DELIVERIES: i64 = 3;

/// Settings of one family's subscriber.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub family: Family,
    /// The events stream to consume (`TICKETTOKEN_EVENTS` in production).
    pub stream: String,
    /// Subject prefix (empty in production).
    pub subjects: Subjects,
    /// Durable consumer name.
    pub durable: String,
    /// How long a delivery may stay unacknowledged before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Delay before retry *n* (1-based, the last entry repeats) after a transient failure.
    /// Also sent to the server as the consumer's `backoff`, floored at `ack_wait`, so that a
    /// delivery lost in a crash is retried on the same schedule.
    pub backoff: Vec<Duration>,
    /// Attempts at handling a message before it is parked as "retries used up".
    pub max_deliver: i64,
    /// Messages fetched per round.
    pub batch_size: usize,
    /// Largest body accepted; bigger ones are parked unread.
    pub max_payload_bytes: usize,
    /// Pause of [`Subscriber::run_until_stopped`](super::Subscriber::run_until_stopped) after
    /// a round that found nothing.
    pub idle_poll: Duration,
    /// Longest pause between rounds after errors (broker unreachable).
    pub max_error_backoff: Duration,
    /// Replicas of the durable consumer's state on a JetStream cluster (its delivered and
    /// acknowledged positions): the events stream's replica count, so that losing a node loses
    /// neither the stream nor where each consumer stands in it.
    pub replicas: usize,
}

impl SubscriberConfig {
    /// Production defaults for `family` on `stream` under `prefix`.
    pub fn new(family: Family, stream: &str, prefix: &str) -> Self {
        Self {
            family,
            stream: stream.to_owned(),
            subjects: Subjects::new(prefix),
            durable: family.durable_name(),
            ack_wait: Duration::from_secs(30),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(300),
            ],
            max_deliver: 10,
            batch_size: 50,
            max_payload_bytes: 64 * 1024,
            idle_poll: Duration::from_millis(250),
            max_error_backoff: Duration::from_secs(30),
            replicas: 1,
        }
    }

    /// The delay before the retry that follows attempt `attempt` (1-based).
    pub fn retry_delay(&self, attempt: u64) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(self.ack_wait)
    }

    /// The durable pull consumer: one filter subject, explicit acks, every message from the
    /// start of the stream on first creation.
    pub fn consumer_config(&self) -> pull::Config {
        let max_deliver = self.max_deliver.max(1);
        // Once a backoff is set, nats-server (2.9, checked) replaces ack_wait with backoff[0]
        // and redelivers an unacknowledged delivery n after backoff[n-1]; it also requires fewer
        // backoff entries than max_deliver. So the list is floored at ack_wait (a slow handler
        // keeps its full ack wait) and cut to fit.
        let limit = usize::try_from(max_deliver + PARKING_DELIVERIES - 1).unwrap_or(usize::MAX);
        let backoff: Vec<Duration> = self
            .backoff
            .iter()
            .take(limit)
            .map(|d| (*d).max(self.ack_wait))
            .collect();
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(format!(
                "order-service: inbound {} messages",
                self.family.as_str()
            )),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: max_deliver + PARKING_DELIVERIES,
            filter_subject: self.family.filter_subject(&self.subjects),
            backoff,
            max_ack_pending: 1_000,
            num_replicas: self.replicas.max(1),
            ..pull::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_has_one_filter_and_room_to_park() {
        let c = SubscriberConfig::new(Family::Dispute, "S", "p").consumer_config();
        assert_eq!(c.filter_subject, "p.dispute.*");
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.max_deliver, 10 + PARKING_DELIVERIES);
        assert!(c.backoff.iter().all(|d| *d >= Duration::from_secs(30)));
        assert_eq!(c.durable_name.as_deref(), Some("order-service-dispute"));
        assert_eq!(c.num_replicas, 1);
        let mut replicated = SubscriberConfig::new(Family::Payment, "S", "p");
        replicated.replicas = 3;
        assert_eq!(replicated.consumer_config().num_replicas, 3);
    }

    #[test]
    fn retry_delays_follow_the_backoff_and_repeat_the_last() {
        let mut c = SubscriberConfig::new(Family::Payment, "S", "");
        c.backoff = vec![Duration::from_millis(10), Duration::from_millis(20)];
        assert_eq!(c.retry_delay(1), Duration::from_millis(10));
        assert_eq!(c.retry_delay(2), Duration::from_millis(20));
        assert_eq!(c.retry_delay(9), Duration::from_millis(20));
        c.backoff.clear();
        assert_eq!(c.retry_delay(1), c.ack_wait);
    }

    #[test]
    fn a_long_backoff_is_cut_below_the_delivery_limit() {
        let mut c = SubscriberConfig::new(Family::Payment, "S", "");
        c.max_deliver = 1;
        c.backoff = vec![Duration::from_secs(1); 10];
        let cfg = c.consumer_config();
        assert!(cfg.backoff.len() < usize::try_from(cfg.max_deliver).unwrap_or(0));
    }
}
