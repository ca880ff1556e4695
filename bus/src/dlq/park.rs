//! Parking: one message into the dead-letter stream, and its order on hold.

use async_nats::HeaderMap;
use bytes::Bytes;
use uuid::Uuid;

use super::headers::{self as h, one_line};
use super::stream::broker;
use super::{dlq_subject, DeadLetters};
use crate::error::BusError;
use crate::inbound::Family;

/// Everything known about a message that is being parked.
#[derive(Debug, Clone)]
pub struct Parcel<'a> {
    /// The subject it was consumed from.
    pub subject: &'a str,
    pub payload: Bytes,
    pub headers: Option<&'a HeaderMap>,
    /// The stream and sequence it was consumed from.
    pub stream: &'a str,
    pub stream_sequence: u64,
    /// Its delivery count.
    pub attempts: u64,
    /// Why it is parked.
    pub error: &'a str,
    pub message_id: Option<&'a str>,
    /// Its order, which is then held behind it.
    pub order_id: Option<Uuid>,
    /// The family it was consumed from: the hold covers that family's later messages.
    pub family: Option<Family>,
    /// The DLQ sequence of the message it is parked behind.
    pub held_behind: Option<u64>,
    /// The hold key of the same message's earlier parking (a DLQ sequence when it was
    /// redriven, a reservation when an earlier attempt to park it failed): the new row takes
    /// that place in the order's queue.
    pub replaces: Option<i64>,
}

/// Tries to move a reservation onto its DLQ sequence before giving up on a park whose publish
/// was acknowledged: a park that fails here is redelivered and, past the duplicate window,
/// published a second time.
const SETTLE_TRIES: u32 = 3;

impl DeadLetters {
    async fn settle(&self, stream_sequence: u64, dlq_seq: u64) -> Result<(), BusError> {
        let mut tries = 1;
        loop {
            match self.holds.settle(stream_sequence, dlq_seq).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < SETTLE_TRIES => {
                    tracing::warn!(error = %e, dlq.seq = dlq_seq, "cannot settle a hold; retrying");
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Holds its order, then publishes the message to `dlq.order-service.<subject>` and moves
    /// the hold onto the message's DLQ sequence. The hold comes first so that a publish that
    /// fails leaves the order held while the message is redelivered. Parking the same delivery
    /// again stores nothing new (same `Nats-Msg-Id` inside the duplicate window, same hold
    /// row).
    ///
    /// # Errors
    /// [`BusError::Broker`] when the publish is not acknowledged, [`BusError::Database`] when
    /// the hold cannot be recorded. The caller must not ack the original then.
    #[tracing::instrument(skip_all, fields(subject = %parcel.subject, stream.seq = parcel.stream_sequence), err)]
    pub async fn park(&self, parcel: &Parcel<'_>) -> Result<u64, BusError> {
        let error = one_line(parcel.error);
        let mut headers = h::carried(parcel.headers);
        headers.insert(
            h::NATS_MSG_ID,
            format!("park.{}.{}", parcel.stream, parcel.stream_sequence),
        );
        headers.insert(h::NATS_EXPECTED_STREAM, self.config.stream.as_str());
        headers.insert(h::ORIGINAL_SUBJECT, parcel.subject);
        headers.insert(h::ORIGINAL_STREAM, parcel.stream);
        headers.insert(h::STREAM_SEQUENCE, parcel.stream_sequence.to_string());
        headers.insert(h::ERROR, error.as_str());
        headers.insert(h::ATTEMPTS, parcel.attempts.to_string());
        headers.insert(
            h::PARKED_AT,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        if let Some(order) = parcel.order_id {
            headers.insert(h::ORDER_ID, order.to_string());
        }
        if let Some(id) = parcel.message_id {
            headers.insert(h::MESSAGE_ID, one_line(id));
        }
        if let Some(seq) = parcel.held_behind {
            headers.insert(h::HELD_BEHIND, seq.to_string());
        }
        if let Some(order) = parcel.order_id {
            self.holds
                .reserve(
                    parcel.stream_sequence,
                    order,
                    parcel.family,
                    &error,
                    parcel.replaces,
                )
                .await?;
        }
        let ack = self
            .jetstream
            .publish_with_headers(dlq_subject(parcel.subject), headers, parcel.payload.clone())
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        if parcel.order_id.is_some() {
            self.settle(parcel.stream_sequence, ack.sequence).await?;
        }
        metrics::counter!("dlq_parked_total").increment(1);
        tracing::warn!(
            dlq.seq = ack.sequence,
            order.id = ?parcel.order_id,
            attempts = parcel.attempts,
            error = %error,
            "parked an inbound message in the dead-letter stream"
        );
        Ok(ack.sequence)
    }
}
