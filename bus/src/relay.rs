//! The transactional outbox relay: committed events from the feed to JetStream, exactly once
//! after deduplication, in sequence order per order (docs/contract.md §7, invariants 3 and 4).
//!
//! One round ([`Relay::run_once`]):
//! 1. confirm leadership (a session advisory lock, see [`order_projections::postgres::leader`]); standbys stop here;
//! 2. read a batch from the commit-safe feed after the relay's checkpoint as stored, in one
//!    statement on the lock's own connection, which is also what confirms step 1 for a leader:
//!    a caught-up round is that read and step 5's save, on one backend (plus a lookup of the
//!    tenant for events that do not carry it). The batch after a full one (a backlog) is read
//!    ahead, from where this one ends, by a task of its own on a connection the relay keeps
//!    while it has work (see `Reader`), while this one is sent; the next round uses it only if
//!    the checkpoint, loaded on the lock's connection, is still where that read started;
//! 3. map each event to its envelope and validate the payload against its schema; the first
//!    event that fails stops the batch there (the events before it still go out) and the round
//!    ends with an error: it is never skipped;
//! 4. publish the batch in waves, each with `Nats-Msg-Id` = the event id: wave k holds each
//!    order's k-th event of the batch and is sent pipelined (every publish sent, then every ack
//!    awaited) before the next wave goes out, and the first wave with a failure ends the
//!    round's publishing. No order ever has two unacknowledged publishes in flight, so an
//!    event whose publish failed cannot be overtaken by a later event of its order. A batch
//!    with one event per order, the usual case, is a single wave;
//! 5. move the checkpoint past the longest run of acknowledged events from the start of the
//!    batch (in feed order), through the lock's own connection (so a relay that lost the lock
//!    cannot write).
//!
//! A crash anywhere before step 5 repeats the batch; JetStream drops the repeats inside its
//! duplicate window. Commands never wait for any of this: they only write Postgres, so a NATS
//! outage grows the backlog ([`lag`], `relay_backlog`) instead of failing requests.

use std::collections::{BTreeSet, HashMap};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::{
    ContextBuilder, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use order_domain::ORDER_AGGREGATE_TYPE;
use order_projections::error::is_statement_only;
use order_projections::feed::{self, Lag, RawBatch, RawEvent, ReadFrom};
use order_projections::postgres::{CommitSignal, HeldConnection, LeaderLock, DEFAULT_GATHER};
use order_projections::{checkpoint, FeedPosition, ProjectionError};
use rand::Rng;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::encode::{self, Inspected};
use crate::error::BusError;
use crate::stream::{ensure_stream, StreamSpec, DEFAULT_DUPLICATE_WINDOW, DEFAULT_STREAM};
use crate::subjects::Subjects;

/// The relay's checkpoint name in `feed_checkpoints`, and its leader-lock name.
pub const RELAY_CONSUMER: &str = "relay";

/// Longest a round's read on the leader lock's connection may take before the connection is
/// presumed dead and the lead given up (see [`LeaderLock::confirm_within`]). Far above any
/// batch read: the bound is for a connection that never answers, not for a slow read, which
/// must be left to finish (given up, its backend would go on holding the lock until it did,
/// and the next leader would start the same read again).
const READ_LIMIT: Duration = Duration::from_secs(300);

/// Largest batch a round publishes. Every publish of a batch holds one of the JetStream
/// context's in-flight ack permits (5,000 by default) until the acks are awaited, so a larger
/// batch would wait for permits that only its own acks can free.
pub const MAX_BATCH: i64 = 2_000;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Checkpoint and leader-lock name; one relay per name is active per database.
    pub consumer: String,
    /// The stream publishes must land in (sent as `Nats-Expected-Stream`).
    pub stream: StreamSpec,
    /// Subject prefix (empty in production).
    pub subjects: Subjects,
    /// Create or update the stream before the first publish (and after it disappears).
    pub ensure_stream: bool,
    /// Events per round (capped at [`MAX_BATCH`]).
    pub batch_size: i64,
    /// Pause after a round that found nothing.
    pub idle_poll: Duration,
    /// With a wake-up signal, the pause after a round that did work, when more commits landed
    /// during it, so that they are published together
    /// ([`CommitWatch::after_work`](order_projections::postgres::CommitWatch::after_work)).
    pub gather: Duration,
    /// Pause between leadership attempts while another replica leads.
    pub standby_poll: Duration,
    /// Longest pause between retries after errors.
    pub max_backoff: Duration,
    /// How often the backlog gauge is refreshed.
    pub backlog_every: Duration,
}

impl RelayConfig {
    /// Defaults for stream `stream` and subject prefix `prefix`.
    pub fn new(stream: &str, prefix: &str) -> Self {
        let subjects = Subjects::new(prefix);
        Self {
            consumer: RELAY_CONSUMER.to_owned(),
            stream: StreamSpec::events(stream, &subjects, DEFAULT_DUPLICATE_WINDOW),
            subjects,
            ensure_stream: true,
            batch_size: 500,
            idle_poll: Duration::from_millis(100),
            gather: DEFAULT_GATHER,
            standby_poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            backlog_every: Duration::from_secs(5),
        }
    }

    /// Events one round reads: the batch size, capped at [`MAX_BATCH`]. A round that publishes
    /// this many may have left a backlog.
    fn round_limit(&self) -> i64 {
        self.batch_size.clamp(1, MAX_BATCH)
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM, "")
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// This many events were acknowledged by JetStream and the checkpoint moved past them.
    Published(usize),
    /// Nothing new behind the feed's fence.
    Idle,
    /// Another replica holds the leader lock.
    Standby,
}

/// A JetStream context whose publish acks time out after `publish_timeout`, so a dead broker
/// turns into a retried round instead of a stuck one.
pub fn jetstream_context(client: async_nats::Client, publish_timeout: Duration) -> Context {
    ContextBuilder::new().timeout(publish_timeout).build(client)
}

/// The outbox relay. Cheap to share behind an `Arc`; rounds are serialized internally.
pub struct Relay {
    pool: PgPool,
    /// The connection a batch is read ahead through during a backlog (rounds read on the
    /// leader lock's own connection).
    reader: Reader,
    jetstream: Context,
    /// Shared with the task that reads and prepares the next batch.
    config: Arc<RelayConfig>,
    leader: Mutex<LeaderLock>,
    stream_ready: AtomicBool,
    wake: Option<CommitSignal>,
    /// What one round leaves the next.
    round: Mutex<RoundState>,
}

/// What one round leaves the next (behind the relay's `round` mutex, so rounds take turns).
#[derive(Default)]
struct RoundState {
    /// The next batch, read and prepared while the previous one was sent and acknowledged,
    /// kept only once the checkpoint was saved where it starts.
    prefetched: Option<Ahead>,
}

/// The connection the relay reads ahead through while it works through a backlog
/// ([`HeldConnection`]: no pool check after every read). It goes back to the pool after any
/// round that leaves no batch read ahead (caught up, failed, standing by) and when the relay
/// stops: whoever closes the pool (shutdown, a test's teardown) is not kept waiting by a relay
/// that is caught up.
#[derive(Clone)]
struct Reader(HeldConnection);

impl Reader {
    /// [`fetch`] on the held connection, taking one from the pool first if none is held.
    async fn fetch(
        &self,
        config: &RelayConfig,
        after: FeedPosition,
        limit: i64,
    ) -> Result<Batch, BusError> {
        let mut held = self.0.lock().await?;
        let batch = fetch(held.conn(), config, after, limit).await;
        if batch.is_ok() {
            held.keep();
        }
        batch
    }

    /// Gives the connection back to the pool.
    async fn release(&self) {
        self.0.release().await;
    }
}

/// A batch read ahead, and the position it was read after.
struct Ahead {
    after: FeedPosition,
    batch: Batch,
}

/// Events read from the feed and their envelopes, ready to send.
struct Batch {
    /// Where each event read is in the feed (the events themselves are dropped once prepared).
    positions: Vec<FeedPosition>,
    /// Messages for a prefix of `positions`: all of them unless one is refused.
    outgoing: Vec<Ready>,
    /// Why the event after `outgoing` cannot be published.
    refused: Option<BusError>,
}

/// One event's message, serialized while the previous batch's acks came in, so that a round's
/// sends do nothing but hand bytes to the client.
struct Ready {
    /// The envelope's id, for errors.
    id: Uuid,
    /// The order, which decides the event's wave.
    aggregate_id: String,
    subject: async_nats::Subject,
    /// Taken by [`Relay::send`].
    message: PublishMessage,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay over `pool`'s feed publishing through `jetstream`.
    pub fn new(pool: PgPool, jetstream: Context, config: RelayConfig) -> Self {
        let leader = LeaderLock::new(pool.clone(), config.consumer.clone());
        Self {
            reader: Reader(HeldConnection::new(pool.clone())),
            pool,
            jetstream,
            leader: Mutex::new(leader),
            stream_ready: AtomicBool::new(!config.ensure_stream),
            config: Arc::new(config),
            wake: None,
            round: Mutex::new(RoundState::default()),
        }
    }

    /// Wakes the relay when this process commits events, instead of at its next poll: the
    /// usual commit-to-broker delay becomes a round trip rather than half a poll interval.
    #[must_use]
    pub fn with_wake(mut self, signal: CommitSignal) -> Self {
        self.wake = Some(signal);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Whether this relay led in its last round.
    pub async fn is_leader(&self) -> bool {
        self.leader.lock().await.is_leader()
    }

    /// Runs one round (see the module doc).
    ///
    /// # Errors
    /// [`BusError::SchemaViolation`] or [`BusError::Codec`] at an event that cannot be
    /// published (after publishing the ones before it); [`BusError::Broker`] when JetStream
    /// did not acknowledge (the checkpoint moved only past acknowledged events);
    /// [`BusError::Database`]/[`BusError::Feed`] when Postgres failed.
    #[tracing::instrument(name = "relay.round", level = "debug", skip_all, fields(relay = %self.config.consumer))]
    pub async fn run_once(&self) -> Result<RelayOutcome, BusError> {
        let mut round = self.round.lock().await;
        let outcome = self.round(&mut round).await;
        // The read-ahead connection stays only while a backlog is being worked through.
        if round.prefetched.is_none() {
            self.reader.release().await;
        }
        outcome
    }

    /// A round that found another replica leading, its own lock lost (a failed check, a
    /// read that did not answer in time) or the pool closed.
    fn standing_by() -> RelayOutcome {
        metrics::gauge!("relay_is_leader").set(0.0);
        RelayOutcome::Standby
    }

    async fn round(&self, round: &mut RoundState) -> Result<RelayOutcome, BusError> {
        let mut leader = self.leader.lock().await;
        let limit = self.config.round_limit();
        let batch = match round.prefetched.take().filter(|_| leader.is_leader()) {
            // Read during the last round, from where that round saved the checkpoint: loading
            // the checkpoint on the lock's own connection confirms the lead, and the batch is
            // used only if nobody (an operator's reset) moved the checkpoint since.
            Some(ahead) => {
                let consumer = self.config.consumer.clone();
                let stored = leader
                    .confirm_with(move |conn: &mut PgConnection| {
                        Box::pin(async move { checkpoint::load(conn, &consumer).await })
                    })
                    .await;
                match stored {
                    Some(stored) => (stored == ahead.after).then_some(ahead.batch),
                    None => return Ok(Self::standing_by()),
                }
            }
            None => None,
        };
        let batch = match batch {
            Some(batch) => batch,
            None => {
                // `ensure` also gives the lock up once the pool is closed.
                if (!leader.is_leader() || self.pool.is_closed()) && !leader.ensure().await? {
                    return Ok(Self::standing_by());
                }
                // Nothing is read while the stream cannot take it (a broker down at start-up).
                self.ensure_stream_once().await?;
                // One statement on the lock's own connection both confirms the lead (the
                // session, and with it the lock, is still there) and reads after the
                // checkpoint as stored, which is also how a reset by an operator is seen.
                let consumer = self.config.consumer.clone();
                let read = leader
                    .confirm_within(READ_LIMIT, move |conn: &mut PgConnection| {
                        Box::pin(async move {
                            let read =
                                feed::read_raw(conn, ReadFrom::Checkpoint(&consumer), limit).await;
                            match read {
                                Ok(rows) => Ok(Ok(rows)),
                                // The server refused this one statement and the session lives
                                // on (a statement timeout, a cancel): the round's error,
                                // retried with backoff, not a lost lead.
                                Err(ProjectionError::Database(e)) if is_statement_only(&e) => {
                                    Ok(Err(BusError::Database(e)))
                                }
                                // Anything else may have left the session, or this prepared
                                // statement, unusable: a fresh connection next time.
                                Err(e) => Err(e),
                            }
                        })
                    })
                    .await;
                let (Some(rows), Some(conn)) = (read, leader.connection()) else {
                    return Ok(Self::standing_by());
                };
                prepare_batch(conn, &self.config, &rows?).await?
            }
        };
        metrics::gauge!("relay_is_leader").set(1.0);
        let Some(&next_after) = batch.positions.last() else {
            return Ok(RelayOutcome::Idle);
        };
        let started = Instant::now();
        let Batch {
            positions,
            mut outgoing,
            refused,
            ..
        } = batch;
        // While this batch is sent and acknowledged, read and prepare the next one from where
        // this one ends, in a task of its own: on another worker thread, decoding and
        // serializing overlap with the sends instead of taking turns with them. Only after a
        // full batch (a backlog): caught up, it would be a wasted read. It is used only if the
        // next round starts exactly where this one ended, so a partial ack, a failure or
        // another leader in between discards it.
        let prefetch = (refused.is_none() && positions.len() as i64 == limit).then(|| {
            let (reader, config) = (self.reader.clone(), Arc::clone(&self.config));
            AbortOnDropHandle::new(tokio::spawn(async move {
                let batch = reader.fetch(&config, next_after, limit).await?;
                Ok::<_, BusError>(Ahead {
                    after: next_after,
                    batch,
                })
            }))
        });
        let (acked, publish_error) = self.publish(&mut outgoing).await;
        if publish_error.is_some() {
            metrics::counter!("relay_publish_failures_total").increment(1);
        }
        let next = async {
            match prefetch.filter(|_| acked == positions.len()) {
                Some(prefetch) => prefetch.await.ok().and_then(Result::ok),
                None => None,
            }
        };

        if acked > 0 {
            let conn = leader.connection().ok_or_else(|| {
                BusError::Leader("lost leadership before saving the checkpoint".into())
            })?;
            let moved_to = positions[acked - 1];
            let save = checkpoint::save(
                &mut *conn,
                &self.config.consumer,
                moved_to,
                acked as u64,
                checkpoint::Durability::Relaxed,
            );
            let (saved, next) = tokio::join!(save, next);
            saved?;
            // The read ahead starts where this batch ended, which is where the checkpoint now
            // is, since only a batch acknowledged in full keeps it.
            round.prefetched = next.filter(|n| !n.batch.positions.is_empty());
            metrics::counter!("relay_published_total").increment(acked as u64);
            metrics::histogram!("relay_batch_seconds").record(started.elapsed().as_secs_f64());
            tracing::debug!(
                outbox.batch_size = positions.len(),
                outbox.published = acked,
                duration_ms = started.elapsed().as_millis() as u64,
                "relayed a batch"
            );
        }
        if let Some(e) = publish_error.or(refused) {
            return Err(e);
        }
        Ok(RelayOutcome::Published(acked))
    }

    /// Runs rounds until one finds nothing (or stands by); returns the events published.
    ///
    /// # Errors
    /// The first failing round's error.
    pub async fn drain(&self) -> Result<usize, BusError> {
        let mut total = 0;
        while let RelayOutcome::Published(n) = self.run_once().await? {
            total += n;
        }
        Ok(total)
    }

    /// Runs until `stop` is cancelled: straight on while there is a backlog, gathering the
    /// commits that land during a round into the next when woken by a [`CommitSignal`]
    /// ([`CommitWatch::after_work`](order_projections::postgres::CommitWatch::after_work)),
    /// every idle poll when caught up, and with exponential backoff plus jitter after errors
    /// (jitter keeps replicas from hammering a recovering broker in step). Finishes the current
    /// round (acks included) before returning, then releases the leader lock so a standby takes
    /// over at once.
    pub async fn run_until_stopped(&self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        let mut backlog_at: Option<Instant> = None;
        let mut wake = self.wake.as_ref().map(CommitSignal::subscribe);
        loop {
            if let Some(w) = wake.as_mut() {
                w.mark_seen();
            }
            let mut idle = false;
            let mut worked = None;
            let wait = match self.run_once().await {
                Ok(RelayOutcome::Published(n)) => {
                    failures = 0;
                    worked = Some(n as i64 >= self.config.round_limit());
                    Duration::ZERO
                }
                Ok(RelayOutcome::Idle) => {
                    failures = 0;
                    idle = true;
                    self.config.idle_poll
                }
                Ok(RelayOutcome::Standby) => {
                    failures = 0;
                    self.config.standby_poll
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff(failures);
                    if e.is_transient() {
                        tracing::warn!(error = %e, attempt = failures, retry_in_ms = wait.as_millis() as u64, "relay round failed; retrying");
                    } else {
                        tracing::error!(error = %e, attempt = failures, "relay is stopped at an event it cannot publish; fix the event or its schema");
                    }
                    metrics::counter!("relay_errors_total", "transient" => e.is_transient().to_string())
                        .increment(1);
                    wait
                }
            };
            if backlog_at.is_none_or(|at| at.elapsed() >= self.config.backlog_every) {
                backlog_at = Some(Instant::now());
                match lag(&self.pool, &self.config.consumer).await {
                    Ok(l) => {
                        metrics::gauge!("relay_backlog").set(l.events_behind as f64);
                        metrics::gauge!("relay_lag_seconds").set(l.seconds_behind);
                    }
                    Err(e) => tracing::debug!(error = %e, "could not measure the relay backlog"),
                }
            }
            if let (Some(full), Some(w)) = (worked, wake.as_mut()) {
                // Biased: after a full batch the pause is ready at once, and a stop must win.
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = w.after_work(full, self.config.gather, self.config.idle_poll) => {}
                }
                continue;
            }
            if wait.is_zero() {
                if stop.is_cancelled() {
                    break;
                }
                continue;
            }
            let pause = async {
                match wake.as_mut() {
                    Some(w) if idle => w.idle_wait(wait).await,
                    _ if failures > 0 => self.back_off(wait).await,
                    _ => tokio::time::sleep(wait).await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = pause => {}
            }
        }
        self.shutdown().await;
    }

    /// Releases leadership (if held) so that a standby takes over without waiting.
    pub async fn shutdown(&self) {
        self.reader.release().await;
        if let Err(e) = self.leader.lock().await.release().await {
            tracing::warn!(error = %e, "could not release the relay's leader lock cleanly");
        }
        metrics::gauge!("relay_is_leader").set(0.0);
    }

    /// `min(max_backoff, poll × 2^(n-1))`, then a random point in its upper half.
    /// Sleeps `wait` after a failed round, but ends early once a lost broker connection is
    /// back: the backoff is there not to hammer a broker that is down, and a reconnected
    /// client is the broker saying it is up. Without this, a backlog waited out the rest of a
    /// backoff of up to `max_backoff` after the outage ended.
    async fn back_off(&self, wait: Duration) {
        const CHECK_EVERY: Duration = Duration::from_millis(50);
        if self.connected().is_ok() {
            tokio::time::sleep(wait).await;
            return;
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            tokio::time::sleep(CHECK_EVERY.min(deadline - Instant::now())).await;
            if self.connected().is_ok() {
                tracing::info!("NATS is reachable again; the relay resumes");
                return;
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self.config.idle_poll.max(Duration::from_millis(100));
        let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let capped = exp.min(self.config.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(rand::thread_rng().gen::<f64>())
    }

    async fn ensure_stream_once(&self) -> Result<(), BusError> {
        if !self.stream_ready.load(Ordering::Acquire) {
            // Without a connection the stream requests would only wait out their timeout.
            self.connected()?;
            ensure_stream(&self.jetstream, &self.config.stream).await?;
            self.stream_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Publishes the batch in waves (see [`waves`]), each sent pipelined and all its acks
    /// awaited before the next is sent; stops after the first wave with a failure. Returns how
    /// many events from the start of the batch were acknowledged in an unbroken run, and the
    /// first failure. Only that run counts: the checkpoint is a single position, and events
    /// acknowledged past a gap are re-sent (and deduplicated) anyway.
    async fn publish(&self, batch: &mut [Ready]) -> (usize, Option<BusError>) {
        let mut acked = vec![false; batch.len()];
        let mut duplicates = 0u64;
        let mut failure = None;
        for wave in waves(batch.iter().map(|r| r.aggregate_id.as_str())) {
            let (pending, send_failure) = self.send(batch, &wave).await;
            let acks =
                futures::future::join_all(pending.into_iter().map(IntoFuture::into_future)).await;
            for (&i, ack) in wave.iter().zip(acks) {
                match ack {
                    Ok(ack) if ack.duplicate => {
                        match self.check_duplicate(&batch[i], ack.sequence).await {
                            Ok(()) => {
                                acked[i] = true;
                                duplicates += 1;
                            }
                            Err(e) => {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                    Ok(_) => acked[i] = true,
                    Err(e) => {
                        failure.get_or_insert_with(|| self.publish_error(&batch[i], &e));
                    }
                }
            }
            failure = failure.or(send_failure);
            if failure.is_some() {
                break;
            }
        }
        metrics::counter!("relay_duplicates_total").increment(duplicates);
        (acked.iter().take_while(|&&a| a).count(), failure)
    }

    /// A "duplicate" acknowledgement means the stream already holds a message with this
    /// `Nats-Msg-Id` inside its duplicate window. Normally that is this message, re-sent after a
    /// failure. But the window covers every subject of the stream, and event ids are derived
    /// from the order id and sequence, so anyone who can publish on the stream (any subject)
    /// can take an id first, and the real event would be dropped without a word. So the stored
    /// message is read back: on this event's subject it is a re-send; on any other subject, or
    /// gone, it fails the round (the relay retries, and succeeds once the window has passed), is
    /// logged as an error and counted in `relay_foreign_duplicates_total`.
    async fn check_duplicate(&self, ready: &Ready, sequence: u64) -> Result<(), BusError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let broker = |e: &dyn std::fmt::Display| {
            BusError::Broker(format!("cannot check the duplicate of {}: {e}", ready.id))
        };
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream.name)
            .await
            .map_err(|e| broker(&e))?;
        let stored = match stream.get_raw_message(sequence).await {
            Ok(stored) => stored,
            // Deleted or purged inside the window: the event is not in the stream, so it is not
            // published; the retry goes through once the window has passed.
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                return Err(BusError::Broker(format!(
                    "event {} was refused as a duplicate of stream message {sequence}, which is \
                     gone; retrying once the duplicate window has passed",
                    ready.id
                )))
            }
            Err(e) => return Err(broker(&e)),
        };
        // The subject decides: only this service may publish on `order.>` (deploy/nats/), and a
        // re-send after a deploy that changed the encoding has another body for the same event.
        if stored.subject == ready.subject {
            return Ok(());
        }
        metrics::counter!("relay_foreign_duplicates_total").increment(1);
        tracing::error!(
            event.id = %ready.id,
            subject = %ready.subject,
            stored.subject = %stored.subject,
            stored.sequence = sequence,
            "another message holds this event's Nats-Msg-Id in the stream's duplicate window; \
             the event is retried until the window has passed"
        );
        Err(BusError::Broker(format!(
            "event {} was refused as a duplicate of stream message {sequence} on {}, which is \
             not this event",
            ready.id, stored.subject
        )))
    }

    /// Sends the events of `wave` (indices into `batch`) pipelined, stopping at the first
    /// message that cannot be sent; returns the pending acks, in order, and that failure.
    async fn send(
        &self,
        batch: &mut [Ready],
        wave: &[usize],
    ) -> (Vec<PublishAckFuture>, Option<BusError>) {
        // Publishing into a disconnected client would queue messages that go out after the
        // reconnect, behind the ones lost with the old socket: fail the round instead.
        if let Err(e) = self.connected() {
            return (vec![], Some(e));
        }
        let mut pending = Vec::with_capacity(wave.len());
        for &i in wave {
            let ready = &mut batch[i];
            let message = std::mem::take(&mut ready.message);
            match self
                .jetstream
                .send_publish(ready.subject.clone(), message)
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(e) => return (pending, Some(self.publish_error(ready, &e))),
            }
        }
        (pending, None)
    }

    /// Fails unless the NATS connection is up right now.
    fn connected(&self) -> Result<(), BusError> {
        match self.jetstream.client().connection_state() {
            State::Connected => Ok(()),
            other => Err(BusError::Broker(format!(
                "NATS is {}",
                format!("{other:?}").to_lowercase()
            ))),
        }
    }

    fn publish_error(&self, ready: &Ready, e: &PublishError) -> BusError {
        if e.kind() == PublishErrorKind::StreamNotFound {
            // Re-create it next round if allowed (someone deleted it, or start-up raced NATS).
            self.stream_ready
                .store(!self.config.ensure_stream, Ordering::Release);
        }
        BusError::Broker(format!(
            "publish of {} to {} failed: {e}",
            ready.id, ready.subject
        ))
    }
}

/// Splits a batch into waves: wave k holds the indices of each order's k-th event in the
/// batch, in batch order. Sending one wave only after the previous one is acknowledged keeps
/// every order down to one unacknowledged publish at a time; a batch with one event per order
/// is one wave.
pub(crate) fn waves<'a>(aggregate_ids: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut events_of: HashMap<&str, usize> = HashMap::new();
    for (i, id) in aggregate_ids.into_iter().enumerate() {
        let k = events_of.entry(id).or_default();
        if *k == waves.len() {
            waves.push(Vec::new());
        }
        waves[*k].push(i);
        *k += 1;
    }
    waves
}

/// Reads up to `limit` events after `after` and prepares their messages.
async fn fetch(
    conn: &mut PgConnection,
    config: &RelayConfig,
    after: FeedPosition,
    limit: i64,
) -> Result<Batch, BusError> {
    let rows = feed::read_raw_after(&mut *conn, after, limit).await?;
    prepare_batch(conn, config, &rows).await
}

/// The events of `rows`, ready to send (an order's tenant, when its events do not carry it, is
/// looked up on `conn`).
async fn prepare_batch(
    conn: &mut PgConnection,
    config: &RelayConfig,
    rows: &RawBatch,
) -> Result<Batch, BusError> {
    let events = rows.events().collect::<Result<Vec<_>, _>>()?;
    let positions = events.iter().map(|e| e.position).collect();
    let (outgoing, refused) = prepare(conn, config, events).await?;
    Ok(Batch {
        positions,
        outgoing,
        refused,
    })
}

/// Messages for `events` up to (not including) the first one that cannot be published, and
/// the reason that one cannot.
async fn prepare(
    conn: &mut PgConnection,
    config: &RelayConfig,
    events: Vec<RawEvent<'_>>,
) -> Result<(Vec<Ready>, Option<BusError>), BusError> {
    let (encoded, refused) = encode_events(conn, &config.subjects, events).await?;
    if refused.is_some() {
        metrics::counter!("relay_schema_violations_total").increment(1);
    }
    let outgoing = encoded
        .into_iter()
        .map(|m| Ready {
            id: m.id,
            aggregate_id: m.aggregate_id,
            subject: m.subject.into(),
            message: PublishMessage::build()
                .payload(m.body)
                .headers(m.headers)
                .expected_stream(&config.stream.name),
        })
        .collect();
    Ok((outgoing, refused))
}

/// One event's message exactly as the relay publishes it, and where the event is in the feed.
/// The paged feed read and `order-service republish` send these same bytes.
#[derive(Debug, Clone)]
pub struct FeedMessage {
    pub position: FeedPosition,
    /// The envelope's id, also its `Nats-Msg-Id`.
    pub id: Uuid,
    pub aggregate_id: String,
    /// The integration type, e.g. `order.created`.
    pub event_type: String,
    /// The envelope's `tenantId`.
    pub tenant_id: String,
    /// The full (prefixed) subject.
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    /// The envelope as JSON.
    pub body: bytes::Bytes,
}

/// Encodes `events` (read from the feed) as the relay publishes them, under `subjects`, up to
/// (not including) the first one that cannot be published, and the reason that one cannot.
///
/// # Errors
/// [`BusError::Feed`] when the tenant lookup fails.
pub async fn encode_events(
    conn: &mut PgConnection,
    subjects: &Subjects,
    events: Vec<RawEvent<'_>>,
) -> Result<(Vec<FeedMessage>, Option<BusError>), BusError> {
    let mut inspected = Vec::with_capacity(events.len());
    let mut refused = None;
    for event in events {
        match encode::inspect(event) {
            Ok(i) => inspected.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let tenants = order_tenants(conn, &inspected).await?;
    let mut encoded = Vec::with_capacity(inspected.len());
    for event in &inspected {
        let tenant = tenants.get(event.aggregate_id()).map(String::as_str);
        let message = event.encode(subjects, tenant).and_then(|out| {
            Ok(FeedMessage {
                position: event.position(),
                body: out.body()?,
                headers: out.headers(),
                id: out.envelope.id,
                aggregate_id: out.envelope.aggregate_id,
                event_type: out.envelope.event_type,
                tenant_id: out.envelope.tenant_id,
                subject: out.subject,
            })
        });
        match message {
            Ok(m) => encoded.push(m),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    Ok((encoded, refused))
}

/// The messages the relay sends for up to `limit` events after `after` (subject, headers and
/// body, to `config`'s stream and subjects), stopping before the first it would refuse, and
/// where the read ended. For comparisons that must publish exactly the relay's bytes, such as
/// the benchmark's raw-publish baseline.
///
/// # Errors
/// As [`Relay::run_once`] for Postgres.
pub async fn messages_after(
    pool: &PgPool,
    config: &RelayConfig,
    after: FeedPosition,
    limit: i64,
) -> Result<
    (
        Vec<(async_nats::Subject, PublishMessage)>,
        Option<FeedPosition>,
    ),
    BusError,
> {
    let batch = fetch(&mut *pool.acquire().await?, config, after, limit).await?;
    let end = batch.positions.last().copied();
    let messages = batch
        .outgoing
        .into_iter()
        .map(|r| (r.subject, r.message))
        .collect();
    Ok((messages, end))
}

/// How far the relay named `consumer` is behind the feed (for readiness and metrics).
///
/// # Errors
/// [`BusError::Feed`] when Postgres fails.
pub async fn lag(pool: &PgPool, consumer: &str) -> Result<Lag, BusError> {
    Ok(feed::lag(pool, consumer).await?)
}

/// The tenant each order of the batch was created under, for events whose payload does not
/// carry one: read once per batch from the orders' `OrderCreated` events.
async fn order_tenants(
    conn: &mut PgConnection,
    events: &[Inspected<'_>],
) -> Result<HashMap<String, String>, BusError> {
    let mut tenants = HashMap::new();
    for e in events {
        if let Some(t) = e.payload_tenant() {
            tenants.insert(e.aggregate_id().to_owned(), t.to_owned());
        }
    }
    let missing: Vec<&str> = events
        .iter()
        .map(Inspected::aggregate_id)
        .filter(|id| !tenants.contains_key(*id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok(tenants);
    }
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT aggregate_id,
                COALESCE(payload->'OrderCreated'->>'tenantId', metadata->>'tenantId')
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND event_type = 'OrderCreated'",
    )
    .bind(ORDER_AGGREGATE_TYPE)
    .bind(&missing)
    .fetch_all(conn)
    .await?;
    tenants.extend(rows.into_iter().filter_map(|(id, t)| t.map(|t| (id, t))));
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::waves;

    #[test]
    fn one_event_per_order_is_one_wave() {
        assert_eq!(waves(["a", "b", "c"]), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn wave_k_holds_each_orders_kth_event_in_batch_order() {
        // a1 b1 a2 c1 a3 b2 d1
        let batch = ["a", "b", "a", "c", "a", "b", "d"];
        assert_eq!(
            waves(batch),
            vec![vec![0, 1, 3, 6], vec![2, 5], vec![4]],
            "an order's later event is in a later wave even when it comes first in the feed"
        );
    }

    #[test]
    fn every_event_is_in_exactly_one_wave_and_no_wave_repeats_an_order() {
        let batch = ["x", "x", "y", "x", "z", "y", "y", "x"];
        let split = waves(batch);
        let mut all: Vec<usize> = split.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..batch.len()).collect::<Vec<_>>());
        for wave in &split {
            assert!(wave.windows(2).all(|w| w[0] < w[1]), "{wave:?}");
            let mut orders: Vec<&str> = wave.iter().map(|&i| batch[i]).collect();
            orders.sort_unstable();
            orders.dedup();
            assert_eq!(orders.len(), wave.len(), "{wave:?}");
        }
    }

    #[test]
    fn an_empty_batch_has_no_waves() {
        assert!(waves([]).is_empty());
    }
}
