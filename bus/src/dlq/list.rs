//! Reading the dead-letter stream: what is parked, why, and for how long.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::headers as h;
use super::stream::broker;
use super::{DeadLetters, DLQ_ROOT};
use crate::error::BusError;

/// One parked message as stored in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct ParkedMessage {
    /// Its sequence in the dead-letter stream: the id `dlq redrive --id` takes.
    pub dlq_seq: u64,
    /// The subject it was consumed from, where a redrive sends it back.
    pub subject: String,
    /// Its sequence in the events stream when it was parked.
    pub stream_sequence: Option<u64>,
    pub order_id: Option<Uuid>,
    pub message_id: Option<String>,
    pub error: String,
    pub attempts: Option<u64>,
    pub parked_at: DateTime<Utc>,
    pub held_behind: Option<u64>,
    pub payload: Bytes,
    pub headers: HeaderMap,
}

impl ParkedMessage {
    /// Reads the `Dlq-*` headers of a stored message. A message someone published to the
    /// dead-letter subjects by hand still lists, with what can be derived from its subject.
    pub fn from_stream(msg: StreamMessage) -> Self {
        let headers = Some(&msg.headers);
        let subject = h::get(headers, h::ORIGINAL_SUBJECT).unwrap_or_else(|| {
            let s = msg.subject.as_str();
            s.strip_prefix(DLQ_ROOT)
                .and_then(|r| r.strip_prefix('.'))
                .unwrap_or(s)
                .to_owned()
        });
        let parked_at = h::get(headers, h::PARKED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| DateTime::from_timestamp(msg.time.unix_timestamp(), 0))
            .unwrap_or_else(Utc::now);
        Self {
            dlq_seq: msg.sequence,
            subject,
            stream_sequence: h::get(headers, h::STREAM_SEQUENCE).and_then(|v| v.parse().ok()),
            order_id: h::get(headers, h::ORDER_ID).and_then(|v| Uuid::parse_str(&v).ok()),
            message_id: h::get(headers, h::MESSAGE_ID),
            error: h::get(headers, h::ERROR).unwrap_or_else(|| "(no error recorded)".to_owned()),
            attempts: h::get(headers, h::ATTEMPTS).and_then(|v| v.parse().ok()),
            parked_at,
            held_behind: h::get(headers, h::HELD_BEHIND).and_then(|v| v.parse().ok()),
            payload: msg.payload,
            headers: msg.headers,
        }
    }
}

impl DeadLetters {
    pub(super) async fn stream(&self) -> Result<Stream, BusError> {
        self.jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(broker)
    }

    /// Whether the dead-letter stream exists (it is created with the first subscriber).
    ///
    /// # Errors
    /// [`BusError::Broker`] when JetStream cannot answer.
    pub async fn stream_exists(&self) -> Result<bool, BusError> {
        match self.jetstream.get_stream(&self.config.stream).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
                Ok(false)
            }
            Err(e) => Err(broker(e)),
        }
    }

    /// One parked message; `None` when the sequence was redriven (deleted) or never existed.
    ///
    /// # Errors
    /// [`BusError::Broker`] when the stream cannot be read.
    pub async fn get(&self, dlq_seq: u64) -> Result<Option<ParkedMessage>, BusError> {
        let stream = self.stream().await?;
        match stream.get_raw_message(dlq_seq).await {
            Ok(m) => Ok(Some(ParkedMessage::from_stream(m))),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(broker(e)),
        }
    }

    /// Every parked message, oldest first.
    ///
    /// # Errors
    /// [`BusError::Broker`] when the stream cannot be read.
    pub async fn list(&self) -> Result<Vec<ParkedMessage>, BusError> {
        let stream = self.stream().await?;
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            // "The first message at or after `next` on any subject": skips deleted sequences in
            // one request each, on nats-server 2.9 without direct gets.
            match stream.get_first_raw_message_by_subject(">", next).await {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(ParkedMessage::from_stream(m));
                }
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(e) => return Err(broker(e)),
            }
        }
        Ok(out)
    }
}
