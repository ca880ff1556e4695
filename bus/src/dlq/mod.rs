//! The dead-letter stream `ORDER_SERVICE_DLQ` (docs/contract.md §6.5): where inbound messages that
//! cannot succeed are parked, listed and redriven from.
//!
//! - A parked message is published to `dlq.order-service.<original subject>` with its body and
//!   headers unchanged plus `Dlq-*` headers: original subject and stream sequence, the error,
//!   the attempt count and the time ([`headers`]). Its `Nats-Msg-Id` is derived from the
//!   original stream sequence, so parking the same delivery twice (a crash before the ack)
//!   stores it once.
//! - If it names an order, the order is held ([`holds`]): later messages of that order are
//!   parked behind it until a redrive.
//! - A redrive ([`DeadLetters::redrive`]) republishes parked messages to their original subject
//!   in queue order, with a fresh `Nats-Msg-Id` (so the broker's duplicate window does not drop
//!   them) and the body untouched (so the inbox still recognises real duplicates by `id`), then
//!   deletes them from the dead-letter stream. The hold ends as the redriven messages are
//!   handled; one that fails again is parked again in its old place.
//!
//! The stream captures `dlq.order-service.<prefix><family>.>` for each inbound family, never
//! `dlq.order-service.>`: a test's stream (prefix `t7f3a.`) must not overlap the production one
//! on a shared server, and JetStream refuses overlapping streams.

pub mod headers;
pub mod holds;
mod list;
mod park;
mod redrive;
mod stream;

use std::time::Duration;

use async_nats::jetstream::Context;
use sqlx::PgPool;

pub use holds::{HoldRow, Holds};
pub use list::ParkedMessage;
pub use park::Parcel;
pub use redrive::{RedriveReport, RedriveTarget};

use crate::subjects::Subjects;

/// The production dead-letter stream.
pub const DEFAULT_DLQ_STREAM: &str = "ORDER_SERVICE_DLQ";

/// The root of every dead-letter subject.
pub const DLQ_ROOT: &str = "dlq.order-service";

/// The dead-letter subject of `original` (which already carries any prefix).
pub fn dlq_subject(original: &str) -> String {
    format!("{DLQ_ROOT}.{original}")
}

/// Where parked messages go and where redrives send them back.
#[derive(Debug, Clone)]
pub struct DlqConfig {
    /// The dead-letter stream's name.
    pub stream: String,
    /// The inbound subject prefix (empty in production).
    pub subjects: Subjects,
    /// The events stream redriven messages must land in.
    pub events_stream: String,
    /// Duplicate window of the dead-letter stream: covers a re-park after a crash.
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// Create the stream when missing (and add missing subjects, and set the limits).
    pub ensure_stream: bool,
    /// Age past which parked messages are dropped; zero (the default) for no limit. A parked
    /// message holds its order until it is redriven or discarded, so one that aged out would
    /// leave the order held with nothing left to redrive.
    pub max_age: Duration,
    /// Size past which new parks are refused ([`DEFAULT_DLQ_MAX_BYTES`] by default,
    /// [`crate::stream::NO_BYTE_LIMIT`] for none). Refused, not making room: a refused park is
    /// logged as an error and the message redelivered to try again, while dropping the oldest
    /// parked message would lose it without a word.
    pub max_bytes: i64,
}

/// The default size limit of the dead-letter stream: 1 GiB.
pub const DEFAULT_DLQ_MAX_BYTES: i64 = 1024 * 1024 * 1024;

impl DlqConfig {
    /// Defaults for stream `stream`, prefix `prefix` and events stream `events_stream`.
    pub fn new(stream: &str, prefix: &str, events_stream: &str) -> Self {
        Self {
            stream: stream.to_owned(),
            subjects: Subjects::new(prefix),
            events_stream: events_stream.to_owned(),
            duplicate_window: crate::stream::DEFAULT_DUPLICATE_WINDOW,
            replicas: 1,
            ensure_stream: true,
            max_age: Duration::ZERO,
            max_bytes: DEFAULT_DLQ_MAX_BYTES,
        }
    }

    /// The subjects the dead-letter stream captures, one wildcard per inbound family.
    pub fn stream_subjects(&self) -> Vec<String> {
        crate::inbound::Family::ALL
            .iter()
            .map(|f| dlq_subject(&self.subjects.prefixed(&format!("{}.>", f.as_str()))))
            .collect()
    }
}

/// Parks, lists and redrives messages of one dead-letter stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    jetstream: Context,
    config: DlqConfig,
    holds: Holds,
}

impl DeadLetters {
    /// The dead-letter stream of `config`, with its holds in `pool`.
    pub fn new(jetstream: Context, pool: PgPool, config: DlqConfig) -> Self {
        let holds = Holds::new(pool, &config.stream);
        Self {
            jetstream,
            config,
            holds,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DlqConfig {
        &self.config
    }

    /// The per-order holds.
    pub fn holds(&self) -> &Holds {
        &self.holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dlq_subject_keeps_the_original_one() {
        assert_eq!(
            dlq_subject("t7f3a.payment.succeeded"),
            "dlq.order-service.t7f3a.payment.succeeded"
        );
        let c = DlqConfig::new(DEFAULT_DLQ_STREAM, "", "TICKETTOKEN_EVENTS");
        assert_eq!(
            c.stream_subjects(),
            [
                "dlq.order-service.payment.>",
                "dlq.order-service.dispute.>",
                "dlq.order-service.ticket.>"
            ]
        );
    }
}
