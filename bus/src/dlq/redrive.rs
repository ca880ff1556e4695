//! Redrive: parked messages back to their original subject, in their order's queue order.
//!
//! Per message: republish (fresh `Nats-Msg-Id` derived from the DLQ sequence, body and
//! application headers untouched, `Dlq-Redrive-Of` set), await the broker's ack, then delete it
//! from the dead-letter stream. A crash in between republishes it again on the next redrive;
//! the inbox drops the second copy by its `id` once the first was handled.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::headers as h;
use super::list::ParkedMessage;
use super::stream::broker;
use super::DeadLetters;
use crate::error::BusError;

/// What to redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveTarget {
    /// The message with this DLQ sequence. When it holds an order, the order's whole queue is
    /// redriven, because its messages only pass the hold in order.
    Message(u64),
    /// Every parked message of one order.
    Order(Uuid),
    /// Everything parked.
    All,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// DLQ sequences republished, in the order they were sent.
    pub republished: Vec<u64>,
    /// Orders whose holds now wait for their redriven messages.
    pub orders: BTreeSet<Uuid>,
    /// Hold rows whose message was already gone from the dead-letter stream.
    pub missing: Vec<u64>,
}

impl DeadLetters {
    /// Redrives `target`.
    ///
    /// # Errors
    /// [`BusError::Broker`] or [`BusError::Database`]; messages republished before the error
    /// stay republished, and redriving again is safe.
    #[tracing::instrument(skip(self), err)]
    pub async fn redrive(&self, target: RedriveTarget) -> Result<RedriveReport, BusError> {
        let mut report = RedriveReport::default();
        match target {
            RedriveTarget::Order(order) => self.redrive_order(order, &mut report).await?,
            RedriveTarget::Message(seq) => match self.holds.get(seq).await? {
                Some(row) => self.redrive_order(row.order_id, &mut report).await?,
                None => {
                    if self.redrive_one(seq).await? {
                        report.republished.push(seq);
                    } else {
                        return Err(BusError::Broker(format!(
                            "no parked message {seq} in {}",
                            self.config.stream
                        )));
                    }
                }
            },
            RedriveTarget::All => {
                let mut orders = Vec::new();
                for row in self.holds.all().await? {
                    if !orders.contains(&row.order_id) {
                        orders.push(row.order_id);
                    }
                }
                for order in orders {
                    self.redrive_order(order, &mut report).await?;
                }
                for parked in self.list().await? {
                    // Parked while this redrive ran: it waits behind its order's queue.
                    if self.holds.get(parked.dlq_seq).await?.is_some() {
                        continue;
                    }
                    if self.redrive_one(parked.dlq_seq).await? {
                        report.republished.push(parked.dlq_seq);
                    }
                }
            }
        }
        metrics::counter!("dlq_redriven_total").increment(report.republished.len() as u64);
        tracing::info!(
            republished = report.republished.len(),
            orders = report.orders.len(),
            "redrove parked messages"
        );
        Ok(report)
    }

    /// Deletes one parked message for good (a poison message nothing will fix) and releases
    /// its hold row. Messages of the same order parked behind it stay parked until they are
    /// redriven. Returns what was discarded.
    ///
    /// # Errors
    /// [`BusError::Broker`] when there is no such message or the stream cannot be changed,
    /// [`BusError::Database`] when the hold row cannot be released.
    #[tracing::instrument(skip(self), err)]
    pub async fn discard(&self, dlq_seq: u64) -> Result<ParkedMessage, BusError> {
        let Some(parked) = self.get(dlq_seq).await? else {
            return Err(BusError::Broker(format!(
                "no parked message {dlq_seq} in {}",
                self.config.stream
            )));
        };
        self.stream()
            .await?
            .delete_message(dlq_seq)
            .await
            .map_err(broker)?;
        self.holds.forget(dlq_seq).await?;
        metrics::counter!("dlq_discarded_total").increment(1);
        tracing::warn!(order.id = ?parked.order_id, error = %parked.error, "discarded a parked message");
        Ok(parked)
    }

    /// Marks the order's queue as redriving, then republishes it head first.
    async fn redrive_order(&self, order: Uuid, report: &mut RedriveReport) -> Result<(), BusError> {
        let queue = self.holds.start_redrive(order).await?;
        // A reservation's message is not in the dead-letter stream: it is still being
        // redelivered from its own stream, and parks (or succeeds) by itself.
        for row in queue.into_iter().filter(|r| !r.is_reservation()) {
            if self.redrive_one(row.seq()).await? {
                report.republished.push(row.seq());
            } else if !row.redriving {
                // Gone from the stream without a redrive (purged by hand): nothing can release
                // this row any more, so drop it rather than hold the order forever.
                tracing::warn!(dlq.seq = row.dlq_seq, order.id = %order, "parked message vanished; releasing its hold");
                self.holds.forget(row.seq()).await?;
                report.missing.push(row.seq());
            }
            // A row already redriving whose message is gone is in flight: its handling
            // releases it.
        }
        report.orders.insert(order);
        Ok(())
    }

    /// Republishes one parked message and deletes it from the dead-letter stream; `false`
    /// when it is not there (already redriven).
    async fn redrive_one(&self, dlq_seq: u64) -> Result<bool, BusError> {
        let Some(parked) = self.get(dlq_seq).await? else {
            return Ok(false);
        };
        self.republish(&parked).await?;
        let stream = self.stream().await?;
        stream.delete_message(dlq_seq).await.map_err(broker)?;
        Ok(true)
    }

    async fn republish(&self, parked: &ParkedMessage) -> Result<(), BusError> {
        let mut headers = h::carried(Some(&parked.headers));
        headers.insert(
            h::NATS_MSG_ID,
            format!("redrive.{}.{}", self.config.stream, parked.dlq_seq),
        );
        headers.insert(h::NATS_EXPECTED_STREAM, self.config.events_stream.as_str());
        headers.insert(h::REDRIVE_OF, parked.dlq_seq.to_string());
        let ack = self
            .jetstream
            .publish_with_headers(parked.subject.clone(), headers, parked.payload.clone())
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        tracing::info!(
            dlq.seq = parked.dlq_seq,
            stream.seq = ack.sequence,
            subject = %parked.subject,
            "redrove a parked message"
        );
        Ok(())
    }
}
