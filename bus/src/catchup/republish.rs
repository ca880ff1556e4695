//! `order-service republish`: re-publishes a range of the feed under another subject prefix
//! (and so into the stream that captures it), for a consumer's backfill.
//!
//! Each message is the relay's (same body, same `Nats-Msg-Id`), so a consumer that
//! deduplicates on the envelope `id` sees each event once however often a range is re-sent.
//! Progress is a checkpoint of its own, `republish:<name>` in `feed_checkpoints`, saved after
//! every acknowledged batch: a run stopped at any point (Ctrl-C, a crash) resumes after the last
//! acknowledged batch, and the relay's checkpoint is never read or written. Batches go in waves
//! (one unacknowledged message per order at a time), as the relay's do, so a failed publish
//! cannot put an order's later event ahead of an earlier one.

use std::collections::BTreeSet;

use async_nats::jetstream::Context;
use chrono::{DateTime, Utc};
use order_projections::checkpoint::{self, Durability};
use order_projections::{feed, FeedPosition};
use sqlx::PgPool;

use super::cursor::FeedCursor;
use crate::error::BusError;
use crate::relay::{encode_events, waves, FeedMessage};
use crate::subjects::Subjects;

/// Which events of the feed to re-publish.
#[derive(Debug, Clone, Default)]
pub struct RepublishFilter {
    /// Only events recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this order's events.
    pub order: Option<String>,
    /// Only these integration types; empty: all.
    pub types: BTreeSet<String>,
}

impl RepublishFilter {
    fn wants(&self, m: &FeedMessage, recorded_at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|t| recorded_at >= t)
            && self.order.as_ref().is_none_or(|o| *o == m.aggregate_id)
            && (self.types.is_empty() || self.types.contains(&m.event_type))
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepublishReport {
    /// Where the run started (after), resumed from the checkpoint or `--from-position`.
    pub started_after: FeedCursor,
    /// Feed events read.
    pub scanned: u64,
    /// Messages published and acknowledged.
    pub published: u64,
    /// Of those, the ones the stream recognised as duplicates inside its window.
    pub duplicates: u64,
    /// Where the run stopped (after).
    pub ended_after: FeedCursor,
}

/// A re-publication into `subjects` (which must differ from the relay's).
#[derive(Debug, Clone)]
pub struct Republish {
    pub pool: PgPool,
    pub jetstream: Context,
    /// The target prefix.
    pub subjects: Subjects,
    /// The checkpoint's name (`republish:<name>`).
    pub name: String,
    pub filter: RepublishFilter,
    pub batch_size: i64,
}

impl Republish {
    /// The checkpoint's key in `feed_checkpoints`.
    pub fn checkpoint_name(&self) -> String {
        format!("republish:{}", self.name)
    }

    /// The position the next run starts after: the checkpoint if one was saved, else `from`.
    ///
    /// # Errors
    /// [`BusError::Feed`] when Postgres fails.
    pub async fn start(&self, from: FeedCursor) -> Result<FeedCursor, BusError> {
        let saved = checkpoint::load(&self.pool, &self.checkpoint_name()).await?;
        Ok(if saved == FeedPosition::default() {
            from
        } else {
            FeedCursor(saved)
        })
    }

    /// Forgets the checkpoint, so the next run starts from `--from-position` again.
    ///
    /// # Errors
    /// [`BusError::Feed`] when Postgres fails.
    pub async fn reset(&self) -> Result<(), BusError> {
        checkpoint::reset(&self.pool, &self.checkpoint_name()).await?;
        Ok(())
    }

    /// Runs from the checkpoint (or `from`) to the end of the feed as it stands, calling
    /// `progress(scanned, published)` after every batch, until done or `stop` resolves
    /// (checked between batches: an acknowledged batch is always checkpointed).
    ///
    /// # Errors
    /// [`BusError::Broker`] when a publish is not acknowledged (the checkpoint stays at the
    /// last acknowledged batch); [`BusError::Feed`] when Postgres fails.
    pub async fn run(
        &self,
        from: FeedCursor,
        stop: &tokio_util::sync::CancellationToken,
        mut progress: impl FnMut(&RepublishReport),
    ) -> Result<RepublishReport, BusError> {
        let started_after = self.start(from).await?;
        let mut report = RepublishReport {
            started_after,
            ended_after: started_after,
            ..RepublishReport::default()
        };
        let name = self.checkpoint_name();
        let mut conn = self.pool.acquire().await?;
        while !stop.is_cancelled() {
            let rows =
                feed::read_raw_after(&mut *conn, report.ended_after.0, self.batch_size).await?;
            let read = rows.events().collect::<Result<Vec<_>, _>>()?;
            if read.is_empty() {
                break;
            }
            let recorded: Vec<_> = read.iter().map(|e| e.recorded_at).collect();
            let count = read.len();
            let (messages, refused) = encode_events(&mut conn, &self.subjects, read).await?;
            let Some(last) = messages.last().map(|m| m.position) else {
                return Err(refused.unwrap_or_else(|| {
                    BusError::Codec("the feed returned events but none was encoded".into())
                }));
            };
            let chosen: Vec<FeedMessage> = messages
                .into_iter()
                .zip(recorded)
                .filter(|(m, at)| self.filter.wants(m, *at))
                .map(|(m, _)| m)
                .collect();
            let (published, duplicates) = self.publish(chosen).await?;
            checkpoint::save(&mut *conn, &name, last, published, Durability::Flushed).await?;
            report.scanned += count as u64;
            report.published += published;
            report.duplicates += duplicates;
            report.ended_after = FeedCursor(last);
            progress(&report);
            // Stopped at an event that cannot be published (as the relay is): what came
            // before it is out and checkpointed; say why the run ends here.
            if let Some(e) = refused {
                return Err(e);
            }
            if i64::try_from(count).unwrap_or(i64::MAX) < self.batch_size {
                break;
            }
        }
        Ok(report)
    }

    /// Publishes `messages` in waves and waits for every acknowledgement.
    async fn publish(&self, messages: Vec<FeedMessage>) -> Result<(u64, u64), BusError> {
        let broker = |m: &FeedMessage, e: &dyn std::fmt::Display| {
            BusError::Broker(format!("publish of {} to {} failed: {e}", m.id, m.subject))
        };
        let (mut published, mut duplicates) = (0, 0);
        for wave in waves(messages.iter().map(|m| m.aggregate_id.as_str())) {
            let mut acks = Vec::with_capacity(wave.len());
            for &i in &wave {
                let m = &messages[i];
                let ack = self
                    .jetstream
                    .publish_with_headers(m.subject.clone(), m.headers.clone(), m.body.clone())
                    .await
                    .map_err(|e| broker(m, &e))?;
                acks.push((i, ack));
            }
            for (i, ack) in acks {
                let ack = ack.await.map_err(|e| broker(&messages[i], &e))?;
                published += 1;
                if ack.duplicate {
                    duplicates += 1;
                }
            }
        }
        Ok((published, duplicates))
    }
}
