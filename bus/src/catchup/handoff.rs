//! Catch-up, then live, for a subscriber that needs the order history from the start when the
//! stream no longer holds it (a new reporting service, a search index, one that lost its state).
//!
//! The handoff, which [`CatchUp`] carries out and docs/contract.md §6.6 describes for other
//! languages:
//!
//! 1. Note the stream's last sequence `S` **before** reading any page.
//! 2. Page `GET /internal/events` from the start until a page says `caughtUp`.
//! 3. Consume the stream from `S + 1` (a consumer with `DeliverPolicy::ByStartSequence`).
//! 4. Handle an event only if its `sequenceNumber` is above the last one handled for its
//!    order, and mark it handled only once handling succeeded; acknowledge the rest as
//!    duplicates. The live consumer has one unacknowledged message at a time, so a redelivery
//!    is never overtaken by the order's next event. The marks live in memory: a subscriber that
//!    restarts mid-handoff starts again from step 1 (or keeps the marks in its own store).
//!
//! Why nothing is lost: the relay publishes an event only once it is behind the feed's fence,
//! so every message at or below `S` was readable by the pages, which all started after `S`
//! was noted; everything published later is at `S + 1` or after. Why nothing is doubled or
//! reordered: the pages and the stream overlap (events committed while paging are in both),
//! and both give each order's events in sequence order, so a per-order high-water mark drops
//! exactly the overlap (the same test as deduplicating on the envelope `id`, which is derived
//! from the order and the sequence, in memory per order rather than per event).
//!
//! Paging must finish within the stream's `max_age`, or `S + 1` may be gone when step 3 starts.

use std::collections::HashMap;
use std::future::Future;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;

use super::cursor::FeedCursor;
use super::page::FeedPage;
use crate::envelope::Envelope;
use crate::error::BusError;

/// The state of one subscriber's handoff from the feed's pages to the live stream.
#[derive(Debug, Clone)]
pub struct CatchUp {
    start_sequence: u64,
    last: HashMap<String, i64>,
    delivered: u64,
    duplicates: u64,
}

impl CatchUp {
    /// Step 1: notes the stream's last sequence now. Call it before the first page.
    ///
    /// # Errors
    /// [`BusError::Broker`] when the stream cannot be read.
    pub async fn begin(jetstream: &Context, stream: &str) -> Result<Self, BusError> {
        let broker = |e: &dyn std::fmt::Display| BusError::Broker(e.to_string());
        let mut stream = jetstream.get_stream(stream).await.map_err(|e| broker(&e))?;
        let info = stream.info().await.map_err(|e| broker(&e))?;
        Ok(Self::after_sequence(info.state.last_sequence))
    }

    /// A handoff whose live part starts after stream sequence `sequence`.
    pub fn after_sequence(sequence: u64) -> Self {
        Self {
            start_sequence: sequence,
            last: HashMap::new(),
            delivered: 0,
            duplicates: 0,
        }
    }

    /// The stream sequence the live part starts after.
    pub fn start_sequence(&self) -> u64 {
        self.start_sequence
    }

    /// Step 4: whether the event `sequence` of `order` is new (handle it) or a duplicate
    /// (acknowledge it and move on). It changes nothing: call [`CatchUp::processed`] once the
    /// event is handled, so that an event whose handling failed, and comes back, is still new.
    pub fn is_new(&mut self, order: &str, sequence: i64) -> bool {
        let new = self.last.get(order).is_none_or(|last| sequence > *last);
        if !new {
            self.duplicates += 1;
        }
        new
    }

    /// Records that the event `sequence` of `order` has been handled.
    pub fn processed(&mut self, order: &str, sequence: i64) {
        let last = self.last.entry(order.to_owned()).or_insert(0);
        if sequence > *last {
            *last = sequence;
            self.delivered += 1;
        }
    }

    /// Events handled so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Events dropped as already delivered.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Step 2: pages with `fetch` from the start until a page is caught up, handing each new
    /// event to `deliver`. Returns the cursor after the last page.
    ///
    /// # Errors
    /// The first error of `fetch`.
    pub async fn backfill<F, Fut, E>(
        &mut self,
        mut fetch: F,
        mut deliver: impl FnMut(Envelope),
    ) -> Result<FeedCursor, E>
    where
        F: FnMut(FeedCursor) -> Fut,
        Fut: Future<Output = Result<FeedPage, E>>,
    {
        let mut cursor = FeedCursor::default();
        loop {
            let page = fetch(cursor).await?;
            for event in page.events {
                if self.is_new(&event.aggregate_id, event.sequence_number) {
                    let (order, sequence) = (event.aggregate_id.clone(), event.sequence_number);
                    deliver(event);
                    self.processed(&order, sequence);
                }
            }
            cursor = page.next;
            if page.caught_up {
                return Ok(cursor);
            }
        }
    }

    /// Step 3: the live consumer's configuration: the durable `name` (a subscriber may only
    /// create consumers named after itself under deploy/nats/), every message after the noted
    /// sequence on `filter_subject` (for example `order.>`; use the same types as the pages),
    /// acknowledged one by one, one unacknowledged message at a time so that a redelivery
    /// cannot be overtaken by the order's next event.
    pub fn live_consumer(&self, name: &str, filter_subject: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(name.to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: self.start_sequence + 1,
            },
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 1,
            filter_subject: filter_subject.to_owned(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_orders_events_pass_once_in_sequence_order() {
        let mut c = CatchUp::after_sequence(41);
        let live = c.live_consumer("reporting", "order.>");
        assert_eq!(
            live.deliver_policy,
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
        assert_eq!(live.max_ack_pending, 1);
        let handle = |c: &mut CatchUp, order: &str, seq: i64| {
            let new = c.is_new(order, seq);
            if new {
                c.processed(order, seq);
            }
            new
        };
        assert!(handle(&mut c, "a", 1));
        assert!(handle(&mut c, "a", 2));
        assert!(handle(&mut c, "b", 1));
        assert!(!handle(&mut c, "a", 2), "the overlap is dropped");
        assert!(!handle(&mut c, "a", 1));
        assert!(handle(&mut c, "a", 3));
        assert_eq!((c.delivered(), c.duplicates()), (4, 2));
    }

    #[test]
    fn an_event_whose_handling_failed_is_still_new_when_it_comes_back() {
        let mut c = CatchUp::after_sequence(0);
        assert!(c.is_new("a", 1));
        // Handling failed: not marked; the redelivery is new.
        assert!(c.is_new("a", 1));
        c.processed("a", 1);
        assert!(!c.is_new("a", 1));
    }
}
