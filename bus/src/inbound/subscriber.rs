//! The subscriber loop of one family: fetch a batch, decide each message, ack.
//!
//! Per message, in this order:
//! 1. parse it ([`parse`]); a message that cannot be parsed is parked;
//! 2. the inbox: an `id` already handled is acked as a duplicate;
//! 3. the order's hold: while an earlier message of the order is parked, this one is parked
//!    behind it (a message republished by a redrive passes once everything before it in the
//!    order's queue was handled, and waits while those are still in flight);
//! 4. the handler; success records the `id` in the inbox (and releases the message's own hold
//!    row, if it was redriven) in one transaction, then acks;
//! 5. a permanent failure parks the message; a transient one is NAKed with the configured
//!    backoff, and parked as "retries used up" on its last attempt.
//!
//! Within a batch, once a message of an order is retried, the order's later messages in that
//! batch are retried too instead of overtaking it. Ordering per order holds within one
//! consumer; replicas of the same consumer share its messages, so two replicas can still
//! interleave one order's messages (the aggregate's natural keys keep that safe).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Context, Message};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::SubscriberConfig;
use super::handler::{HandleError, InboundHandler, MessageContext};
use super::inbox::Inbox;
use super::message::{parse, InboundMessage};
use crate::dlq::holds::provisional_key;
use crate::dlq::{headers, DeadLetters, Parcel};
use crate::error::BusError;
use crate::stream::{ensure_stream, StreamSpec};

/// Longest wait for the next message of a fetched batch before the round gives up on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to the messages of one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Handled and acknowledged.
    pub processed: usize,
    /// Already in the inbox; acknowledged without handling.
    pub duplicates: usize,
    /// Parked in the dead-letter stream, then acknowledged.
    pub parked: usize,
    /// NAKed for a later retry.
    pub retried: usize,
}

impl BatchReport {
    /// Every message the round touched; 0 when the consumer was idle.
    pub fn handled(&self) -> usize {
        self.processed + self.duplicates + self.parked + self.retried
    }

    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Processed => self.processed += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Parked => self.parked += 1,
            Outcome::Retried => self.retried += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Processed,
    Duplicate,
    Parked,
    Retried,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Parked => "parked",
            Self::Retried => "retried",
        }
    }
}

/// What the inbox and the order's hold say about a parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Already handled; release its own hold row (by hold key), if it has one.
    Duplicate { release: Option<i64> },
    /// Handle it; `mine` is its own hold row's key when it heads its queue (a redrive, or a
    /// redelivery after parking it failed).
    Proceed { mine: Option<i64> },
    /// Park it behind `blocker`, taking the place of `replaces`.
    HeldBehind { blocker: i64, replaces: Option<i64> },
    /// Messages before it are being redriven and not handled yet: retry later.
    Wait { head: i64, replaces: Option<i64> },
}

/// One family's durable pull consumer with its handler.
pub struct Subscriber<H> {
    jetstream: Context,
    pool: PgPool,
    config: SubscriberConfig,
    events_stream: Option<StreamSpec>,
    dead_letters: DeadLetters,
    inbox: Inbox,
    handler: H,
    consumer: Mutex<Option<PullConsumer>>,
}

impl<H> std::fmt::Debug for Subscriber<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<H: InboundHandler> Subscriber<H> {
    /// A subscriber over `jetstream`, recording its inbox in `pool` and parking in
    /// `dead_letters`. Nothing is created until the first round (or [`Self::ensure`]).
    pub fn new(
        jetstream: Context,
        pool: PgPool,
        config: SubscriberConfig,
        dead_letters: DeadLetters,
        handler: H,
    ) -> Self {
        Self {
            jetstream,
            inbox: Inbox::new(pool.clone()),
            pool,
            config,
            events_stream: None,
            dead_letters,
            handler,
            consumer: Mutex::new(None),
        }
    }

    /// Also creates (or updates) the events stream before creating the consumer.
    #[must_use]
    pub fn with_events_stream(mut self, spec: StreamSpec) -> Self {
        self.events_stream = Some(spec);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &SubscriberConfig {
        &self.config
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Creates what the subscriber needs (the events stream when configured, the dead-letter
    /// stream, the durable consumer) and returns the consumer. Safe to call repeatedly: an
    /// existing consumer is updated to the configuration.
    ///
    /// # Errors
    /// [`BusError::Broker`] when JetStream refuses or is unreachable.
    pub async fn ensure(&self) -> Result<PullConsumer, BusError> {
        let mut slot = self.consumer.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        if let Some(spec) = &self.events_stream {
            ensure_stream(&self.jetstream, spec).await?;
        }
        self.dead_letters.ensure_stream().await?;
        let stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(broker)?;
        let consumer = stream
            .create_consumer(self.config.consumer_config())
            .await
            .map_err(broker)?;
        tracing::info!(
            family = %self.config.family,
            durable = %self.config.durable,
            stream = %self.config.stream,
            "inbound consumer ready"
        );
        *slot = Some(consumer.clone());
        Ok(consumer)
    }

    /// One round: fetches what is available (up to the batch size, without waiting), decides
    /// and acknowledges each message.
    ///
    /// # Errors
    /// [`BusError::Broker`] when the fetch fails; per-message failures are never errors here
    /// (they are retried or parked).
    #[tracing::instrument(skip_all, fields(family = %self.config.family), err(level = "warn"))]
    pub async fn run_once(&self) -> Result<BatchReport, BusError> {
        let consumer = self.ensure().await?;
        let mut batch = match consumer
            .fetch()
            .max_messages(self.config.batch_size.max(1))
            .messages()
            .await
        {
            Ok(b) => b,
            Err(e) => {
                // The consumer or stream may be gone; look it up again next round.
                self.consumer.lock().await.take();
                return Err(broker(e));
            }
        };
        let mut report = BatchReport::default();
        let mut deferred = HashSet::new();
        loop {
            let item = match tokio::time::timeout(FETCH_TIMEOUT, batch.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("fetch stalled; ending the round");
                    break;
                }
            };
            let msg = match item {
                Ok(m) => m,
                Err(e) if report.handled() > 0 => {
                    tracing::warn!(error = %e, "fetch ended early");
                    break;
                }
                Err(e) => return Err(broker(e)),
            };
            let outcome = self.process(&msg, &mut deferred).await;
            metrics::counter!(
                "inbound_messages_total",
                "family" => self.config.family.as_str(),
                "outcome" => outcome.label()
            )
            .increment(1);
            report.add(outcome);
        }
        Ok(report)
    }

    /// Runs rounds until `stop` is cancelled, pausing when idle and backing off on errors.
    pub async fn run_until_stopped(&self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let pause = match self.run_once().await {
                Ok(r) if r.handled() > 0 => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    self.config.idle_poll
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = error_backoff(failures, self.config.max_error_backoff);
                    tracing::warn!(family = %self.config.family, error = %e, retry_in = ?pause, "inbound round failed");
                    pause
                }
            };
            if stop.is_cancelled() {
                return;
            }
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(subject = %msg.subject, stream.seq, msg.id, order.id))]
    async fn process(&self, msg: &Message, deferred: &mut HashSet<Uuid>) -> Outcome {
        let ctx = match self.context_of(msg) {
            Ok(ctx) => ctx,
            Err(e) => {
                // Not a JetStream delivery (no ack subject): nothing to ack or park.
                tracing::error!(error = %e, "message without delivery info; ignored");
                return Outcome::Retried;
            }
        };
        let span = tracing::Span::current();
        span.record("stream.seq", ctx.stream_sequence);
        let prefix = self.config.subjects.prefix();
        let subject_type = ctx.subject.strip_prefix(prefix).unwrap_or(&ctx.subject);
        let parsed = parse(
            self.config.family,
            subject_type,
            &msg.payload,
            self.config.max_payload_bytes,
        );
        let message = match parsed {
            Ok(m) => m,
            Err(e) => {
                let parcel = self.parcel(msg, &ctx, &e.reason, e.message_id.as_deref(), e.order_id);
                return self.park(msg, &ctx, parcel).await;
            }
        };
        span.record("msg.id", message.id.as_str());
        span.record("order.id", tracing::field::display(message.order_id));

        if deferred.contains(&message.order_id) {
            return self
                .retry_or_park(
                    msg,
                    &ctx,
                    &message,
                    "an earlier message of this order is being retried",
                    None,
                    deferred,
                )
                .await;
        }
        let admission = match self.admit(&message, &ctx).await {
            Ok(a) => a,
            Err(e) => {
                let reason = format!("cannot check the inbox or the order's hold: {e}");
                return self
                    .retry_or_park(msg, &ctx, &message, &reason, None, deferred)
                    .await;
            }
        };
        match admission {
            Admission::Duplicate { release } => {
                if let Some(seq) = release {
                    if let Err(e) = self.release(seq).await {
                        let reason = format!("cannot release the hold row: {e}");
                        return self
                            .retry_or_park(msg, &ctx, &message, &reason, None, deferred)
                            .await;
                    }
                }
                tracing::debug!("duplicate message; already handled");
                self.ack(msg).await;
                Outcome::Duplicate
            }
            Admission::HeldBehind { blocker, replaces } => {
                // A reservation's message is still being parked: it has no DLQ sequence yet.
                let reason = match u64::try_from(blocker) {
                    Ok(seq) => format!(
                        "held behind {seq}: order {} has an earlier message parked in the dead-letter stream",
                        message.order_id
                    ),
                    Err(_) => format!(
                        "held behind stream sequence {}: order {} has an earlier message being parked",
                        blocker.unsigned_abs(),
                        message.order_id
                    ),
                };
                let mut parcel = self.parcel(
                    msg,
                    &ctx,
                    &reason,
                    Some(&message.id),
                    Some(message.order_id),
                );
                parcel.held_behind = u64::try_from(blocker).ok();
                parcel.replaces = replaces;
                self.park(msg, &ctx, parcel).await
            }
            Admission::Wait { head, replaces } => {
                let reason = format!(
                    "waiting for the redrive of {head} on order {}",
                    message.order_id
                );
                self.retry_or_park(msg, &ctx, &message, &reason, replaces, deferred)
                    .await
            }
            Admission::Proceed { mine } => self.apply(msg, &ctx, &message, mine, deferred).await,
        }
    }

    async fn apply(
        &self,
        msg: &Message,
        ctx: &MessageContext,
        message: &InboundMessage,
        mine: Option<i64>,
        deferred: &mut HashSet<Uuid>,
    ) -> Outcome {
        if ctx.attempt > self.max_attempts() {
            // Its last attempt ended without an outcome (a crash, or parking failed): no more
            // tries, only parking.
            let reason = format!(
                "retries used up: {} deliveries, the last without an outcome",
                ctx.attempt
            );
            let mut parcel =
                self.parcel(msg, ctx, &reason, Some(&message.id), Some(message.order_id));
            parcel.replaces = mine;
            return self.park(msg, ctx, parcel).await;
        }
        match self.handler.handle(message, ctx).await {
            Ok(()) => match self.finish(message, ctx, mine).await {
                Ok(()) => {
                    self.ack(msg).await;
                    Outcome::Processed
                }
                Err(e) => {
                    // The effect is stored; the redelivery finds it through the natural keys.
                    let reason = format!("handled, but the inbox could not record it: {e}");
                    self.retry_or_park(msg, ctx, message, &reason, mine, deferred)
                        .await
                }
            },
            Err(HandleError::Permanent(reason)) => {
                let mut parcel =
                    self.parcel(msg, ctx, &reason, Some(&message.id), Some(message.order_id));
                parcel.replaces = mine;
                self.park(msg, ctx, parcel).await
            }
            Err(HandleError::Transient(reason)) => {
                self.retry_or_park(msg, ctx, message, &reason, mine, deferred)
                    .await
            }
        }
    }

    /// Checks the inbox and the order's queue of parked messages.
    async fn admit(&self, m: &InboundMessage, ctx: &MessageContext) -> Result<Admission, BusError> {
        let family = self.config.family;
        let queue = self
            .dead_letters
            .holds()
            .queue(m.order_id, Some(family))
            .await?;
        // Its own row: the redrive's, or the reservation an earlier failed parking left.
        let reservation = provisional_key(ctx.stream_sequence);
        let mine = queue.iter().position(|r| {
            (r.redriving && ctx.redrive_of == Some(r.seq()) && !r.is_reservation())
                || r.dlq_seq == reservation
        });
        if self.inbox.contains(family, &m.id).await? {
            return Ok(Admission::Duplicate {
                release: mine.map(|i| queue[i].dlq_seq),
            });
        }
        let Some(head) = queue.first() else {
            return Ok(Admission::Proceed { mine: None });
        };
        Ok(match mine {
            Some(0) => Admission::Proceed {
                mine: Some(head.dlq_seq),
            },
            Some(i) => match queue[..i].iter().find(|r| !r.redriving) {
                Some(blocker) => Admission::HeldBehind {
                    blocker: blocker.dlq_seq,
                    replaces: Some(queue[i].dlq_seq),
                },
                None => Admission::Wait {
                    head: head.dlq_seq,
                    replaces: Some(queue[i].dlq_seq),
                },
            },
            None => match queue.iter().find(|r| !r.redriving) {
                Some(blocker) => Admission::HeldBehind {
                    blocker: blocker.dlq_seq,
                    replaces: None,
                },
                None => Admission::Wait {
                    head: head.dlq_seq,
                    replaces: None,
                },
            },
        })
    }

    /// Records the message as done and releases its own hold row, atomically.
    async fn finish(
        &self,
        message: &InboundMessage,
        ctx: &MessageContext,
        mine: Option<i64>,
    ) -> Result<(), BusError> {
        let mut tx = self.pool.begin().await?;
        Inbox::record(
            &mut tx,
            self.config.family,
            &message.id,
            &ctx.subject,
            Some(message.order_id),
            ctx.stream_sequence,
        )
        .await?;
        if let Some(key) = mine {
            self.dead_letters.holds().release(&mut tx, key).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, key: i64) -> Result<(), BusError> {
        let mut conn = self.pool.acquire().await?;
        self.dead_letters.holds().release(&mut conn, key).await
    }

    /// NAKs with the backoff for this attempt, or parks once the attempts are used up.
    async fn retry_or_park(
        &self,
        msg: &Message,
        ctx: &MessageContext,
        message: &InboundMessage,
        reason: &str,
        replaces: Option<i64>,
        deferred: &mut HashSet<Uuid>,
    ) -> Outcome {
        if ctx.attempt >= self.max_attempts() {
            let reason = format!("retries used up after {} attempts: {reason}", ctx.attempt);
            let mut parcel =
                self.parcel(msg, ctx, &reason, Some(&message.id), Some(message.order_id));
            parcel.replaces = replaces;
            let outcome = self.park(msg, ctx, parcel).await;
            if outcome == Outcome::Retried {
                deferred.insert(message.order_id);
            }
            return outcome;
        }
        deferred.insert(message.order_id);
        let delay = self.config.retry_delay(ctx.attempt);
        tracing::info!(attempt = ctx.attempt, retry_in = ?delay, reason, "inbound message will be retried");
        self.nak(msg, delay).await;
        Outcome::Retried
    }

    async fn park(&self, msg: &Message, ctx: &MessageContext, mut parcel: Parcel<'_>) -> Outcome {
        if parcel.order_id.is_some() && parcel.replaces.is_none() {
            // A redriven message parked again takes its own earlier row's place; otherwise
            // that row would look "in flight" forever.
            parcel.replaces = ctx.redrive_of.and_then(|seq| i64::try_from(seq).ok());
        }
        match self.dead_letters.park(&parcel).await {
            Ok(_) => {
                self.ack(msg).await;
                Outcome::Parked
            }
            Err(e) => {
                // Not acked: it comes back and parking is tried again (the extra deliveries
                // past max_deliver exist for this).
                let delay = self.config.retry_delay(ctx.attempt);
                tracing::error!(error = %e, retry_in = ?delay, "cannot park a message; it will be redelivered");
                self.nak(msg, delay).await;
                Outcome::Retried
            }
        }
    }

    fn parcel<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a MessageContext,
        error: &'a str,
        message_id: Option<&'a str>,
        order_id: Option<Uuid>,
    ) -> Parcel<'a> {
        Parcel {
            subject: &ctx.subject,
            payload: msg.payload.clone(),
            headers: msg.headers.as_ref(),
            stream: &self.config.stream,
            stream_sequence: ctx.stream_sequence,
            attempts: ctx.attempt,
            error,
            message_id,
            order_id,
            family: Some(self.config.family),
            held_behind: None,
            replaces: None,
        }
    }

    fn context_of(&self, msg: &Message) -> Result<MessageContext, BusError> {
        let info = msg.info().map_err(|e| BusError::Codec(e.to_string()))?;
        let headers = msg.headers.as_ref();
        Ok(MessageContext {
            subject: msg.subject.to_string(),
            stream_sequence: info.stream_sequence,
            attempt: u64::try_from(info.delivered).unwrap_or(1).max(1),
            traceparent: headers::get(headers, "traceparent"),
            redrive_of: headers::get(headers, headers::REDRIVE_OF).and_then(|v| v.parse().ok()),
        })
    }

    fn max_attempts(&self) -> u64 {
        u64::try_from(self.config.max_deliver.max(1)).unwrap_or(1)
    }

    async fn ack(&self, msg: &Message) {
        // A lost ack only means a redelivery, which the inbox answers as a duplicate.
        if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
    }

    async fn nak(&self, msg: &Message, delay: Duration) {
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the message is redelivered after the ack wait");
        }
    }
}

fn error_backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(200);
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(max)
}

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(5);
        assert_eq!(error_backoff(1, max), Duration::from_millis(200));
        assert_eq!(error_backoff(2, max), Duration::from_millis(400));
        assert_eq!(error_backoff(30, max), max);
    }

    #[test]
    fn the_report_counts_every_outcome() {
        let mut r = BatchReport::default();
        for o in [
            Outcome::Processed,
            Outcome::Parked,
            Outcome::Retried,
            Outcome::Duplicate,
        ] {
            r.add(o);
        }
        assert_eq!(r.handled(), 4);
    }
}
