//! The checks every scenario shares, each returning figures rather than panicking, so a
//! scenario can print all of them before it asserts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use futures::StreamExt;
use order_projections::replay::{self, NoProgress, Rebuild, RebuildOptions};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::load::Acked;
use super::poll_until;

/// Acked commands whose events are not in the store: the order's highest stored sequence is
/// below the version the command answered.
///
/// # Errors
/// When the query fails.
pub async fn missing_acked(pool: &PgPool, acked: &[Acked]) -> anyhow::Result<usize> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, max(sequence) FROM events WHERE aggregate_type = 'Order'
          GROUP BY aggregate_id",
    )
    .fetch_all(pool)
    .await?;
    let stored: HashMap<String, i64> = rows.into_iter().collect();
    Ok(acked
        .iter()
        .filter(|a| {
            stored
                .get(&a.order.to_string())
                .is_none_or(|&max| max < a.version as i64)
        })
        .count())
}

/// Events of the Order aggregate in the store.
///
/// # Errors
/// When the query fails.
pub async fn stored_events(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Order'")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until the reader `consumer` (the relay's, or a projection's) has read every committed
/// event, and gives how long that took; `None` when it has not within `within`.
pub async fn wait_caught_up(pool: &PgPool, consumer: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    poll_until(within, || async {
        match order_projections::feed::lag(pool, consumer).await {
            Ok(lag) if lag.events_behind == 0 && lag.events_fenced == 0 => Some(()),
            _ => None,
        }
    })
    .await
    .map(|()| started.elapsed())
}

/// What a deduplicating subscriber of `order.>` saw, against the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusCheck {
    /// Events in the store.
    pub stored: usize,
    /// Messages in the stream.
    pub messages: usize,
    /// Distinct envelope ids.
    pub unique: usize,
    /// Messages whose id was seen before (dropped by the subscriber).
    pub duplicates: usize,
    /// Orders whose deduplicated sequence numbers were not 1, 2, 3, ... in arrival order.
    pub reordered: usize,
    /// Stored events that never arrived.
    pub missing: usize,
    /// Arrived events the store does not have.
    pub extra: usize,
}

impl BusCheck {
    /// Every event once, in order, nothing else.
    pub fn is_exact(&self) -> bool {
        self.unique == self.stored && self.reordered == 0 && self.missing == 0 && self.extra == 0
    }
}

/// Reads every `order.>` message of `stream` from the start with a fresh pull consumer, as a
/// subscriber that deduplicates on the envelope `id` would, and compares with the store.
///
/// # Errors
/// When the stream or the store cannot be read, or a message is not an envelope.
pub async fn bus_check(
    js: &Context,
    stream: &str,
    prefix: &str,
    pool: &PgPool,
) -> anyhow::Result<BusCheck> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: format!("{prefix}order.>"),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut check = BusCheck::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    let mut bad_orders: HashSet<String> = HashSet::new();
    let mut arrived: HashSet<(String, i64)> = HashSet::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            got += 1;
            check.messages += 1;
            let envelope: Value = serde_json::from_slice(&message.payload)?;
            let id = envelope["id"].as_str().unwrap_or_default().to_owned();
            if !seen.insert(id) {
                check.duplicates += 1;
                continue;
            }
            let order = envelope["aggregateId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let seq = envelope["sequenceNumber"].as_i64().unwrap_or(-1);
            let expected = next_seq.entry(order.clone()).or_insert(1);
            if seq != *expected {
                bad_orders.insert(order.clone());
            }
            *expected = seq + 1;
            arrived.insert((order, seq));
        }
        if got == 0 {
            break;
        }
    }
    check.unique = seen.len();
    check.reordered = bad_orders.len();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_id, sequence FROM events WHERE aggregate_type = 'Order'")
            .fetch_all(pool)
            .await?;
    check.stored = rows.len();
    let stored: HashSet<(String, i64)> = rows.into_iter().collect();
    check.missing = stored.difference(&arrived).count();
    check.extra = arrived.difference(&stored).count();
    Ok(check)
}

/// Rebuilds every projection from the first event into shadow tables and compares them with
/// the live ones (after the live projector has caught up); gives the differing rows (0: equal).
/// The shadows are abandoned; nothing is swapped.
///
/// # Errors
/// When the projector does not catch up within 30 s or the rebuild fails.
pub async fn replay_differences(pool: &PgPool) -> anyhow::Result<i64> {
    let mut differences = 0;
    for spec in replay::registry() {
        wait_caught_up(pool, spec.name(), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("projection {} did not catch up", spec.name()))?;
        let options = RebuildOptions {
            batch_size: 500,
            restart: true,
        };
        let mut rebuild = Rebuild::start(pool, *spec, options).await?;
        rebuild
            .build(&NoProgress, &CancellationToken::new())
            .await?;
        let comparison = rebuild.compare(5).await?;
        if !comparison.is_identical() {
            eprintln!("{}: replay differs: {comparison:?}", spec.name());
        }
        differences += comparison.differences();
        rebuild.abandon().await?;
    }
    Ok(differences)
}

/// How many `OrderConfirmed` events order `id` has.
///
/// # Errors
/// When the query fails.
pub async fn confirmed_events(pool: &PgPool, id: Uuid) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE aggregate_type = 'Order' AND aggregate_id = $1 AND event_type = 'OrderConfirmed'",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await?)
}
