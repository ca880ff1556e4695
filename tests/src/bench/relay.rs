//! B6: how fast the outbox relay drains a backlog, against pipelined raw JetStream publishes of
//! the same envelopes.
//!
//! The relay runs in-process ([`order_bus::Relay`], the code `serve` runs) with its own
//! checkpoint, against a backlog of valid `OrderCreated` events inserted by SQL: copies of a
//! real stored event with fresh order ids, so they pass the relay's schema validation. The
//! baseline publishes the very messages the relay builds (same bodies and headers, `Nats-Msg-Id`
//! included, on the same subjects under another prefix) into a second stream, every publish
//! sent before its ack is awaited. Both streams are fresh per round and deleted afterwards.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use order_bus::relay::{self, jetstream_context};
use order_bus::stream::DEFAULT_DUPLICATE_WINDOW;
use order_bus::{ensure_stream, Relay, RelayConfig, StreamSpec, Subjects};
use order_projections::{checkpoint, feed};
use sqlx::PgPool;

/// The in-process relay's checkpoint and leader-lock name (apart from the service's `relay`).
pub const BENCH_RELAY: &str = "bench_relay";

/// Events per relay round: the service's default `RELAY_BATCH_SIZE`.
pub const RELAY_BATCH: i64 = 500;

/// What one B6 round measured.
#[derive(Debug, Clone, Copy)]
pub struct DrainRun {
    pub events: usize,
    pub relay_per_second: f64,
    pub raw_per_second: f64,
}

/// Moves the bench relay's checkpoint to the end of the feed, so that only the backlog this
/// module inserts is drained (the run's earlier events are the service's relay's business).
async fn checkpoint_at_end(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO feed_checkpoints (consumer, transaction_id, global_position)
         SELECT $1, transaction_id, global_position FROM events
          ORDER BY transaction_id DESC, global_position DESC LIMIT 1
         ON CONFLICT (consumer) DO UPDATE
            SET transaction_id = EXCLUDED.transaction_id,
                global_position = EXCLUDED.global_position",
    )
    .bind(BENCH_RELAY)
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts `n` copies of a stored `OrderCreated` event, each with a fresh order id, in one
/// transaction.
async fn insert_backlog(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let done = sqlx::query(
        "WITH template AS (
             SELECT aggregate_type, event_type, event_version, payload, metadata FROM events
              WHERE event_type = 'OrderCreated' LIMIT 1)
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT t.aggregate_type, ids.id::text, 1, t.event_type, t.event_version,
                jsonb_set(t.payload, '{OrderCreated,orderId}', to_jsonb(ids.id::text)),
                t.metadata
           FROM template t,
                (SELECT gen_random_uuid() AS id FROM generate_series(1, $1::int)) ids",
    )
    .bind(i32::try_from(n)?)
    .execute(pool)
    .await?;
    ensure!(
        done.rows_affected() == n as u64,
        "no OrderCreated event to copy: the backlog needs at least one created order"
    );
    Ok(())
}

/// One B6 round with a backlog of `n` events; `tag` makes its streams and subjects unique.
///
/// The service's own relay must not run against this database meanwhile (it would compete for
/// the CPU, not for the events: it has its own checkpoint).
///
/// # Errors
/// When Postgres or NATS fail, or the relay does not publish exactly the backlog.
pub async fn drain_round(
    pool: &PgPool,
    nats_url: &str,
    tag: &str,
    n: usize,
) -> anyhow::Result<DrainRun> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream_context(client, Duration::from_secs(10));
    let relay_stream = format!("{tag}_RELAY");
    let raw_stream = format!("{tag}_RAW");
    let relay_subjects = Subjects::new(&format!("{}.r.", tag.to_lowercase()));
    let raw_subjects = Subjects::new(&format!("{}.b.", tag.to_lowercase()));
    let result = async {
        for (name, subjects) in [
            (&relay_stream, &relay_subjects),
            (&raw_stream, &raw_subjects),
        ] {
            ensure_stream(
                &js,
                &StreamSpec::events(name, subjects, DEFAULT_DUPLICATE_WINDOW),
            )
            .await?;
        }
        checkpoint_at_end(pool).await?;
        let start = checkpoint::load(pool, BENCH_RELAY).await?;
        insert_backlog(pool, n).await?;

        // The relay, as `serve` configures it by default, apart from its name and stream.
        let mut config = RelayConfig::new(&relay_stream, relay_subjects.prefix());
        config.consumer = BENCH_RELAY.to_owned();
        config.ensure_stream = false;
        config.batch_size = RELAY_BATCH;
        let relay = Relay::new(pool.clone(), js.clone(), config);
        let t0 = Instant::now();
        let drained = relay.drain().await;
        let relay_secs = t0.elapsed().as_secs_f64();
        relay.shutdown().await;
        let drained = drained?;
        ensure!(
            drained == n,
            "the relay published {drained} events of a backlog of {n}"
        );

        // The same messages, built untimed, for the baseline.
        let messages = messages(pool, start, n, &raw_stream, &raw_subjects).await?;
        let raw_secs = publish_pipelined(&js, messages).await?;
        Ok(DrainRun {
            events: n,
            relay_per_second: n as f64 / relay_secs,
            raw_per_second: n as f64 / raw_secs,
        })
    }
    .await;
    for name in [&relay_stream, &raw_stream] {
        let _ = js.delete_stream(name).await;
    }
    result
}

/// The messages the relay sends for the `n` events after `start`, to `stream` under
/// `subjects`' prefix: the very bytes and headers it published.
async fn messages(
    pool: &PgPool,
    mut after: feed::FeedPosition,
    n: usize,
    stream: &str,
    subjects: &Subjects,
) -> anyhow::Result<Vec<(async_nats::Subject, PublishMessage)>> {
    let config = RelayConfig::new(stream, subjects.prefix());
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (batch, end) = relay::messages_after(pool, &config, after, 2_000).await?;
        let Some(end) = end else { break };
        after = end;
        out.extend(batch);
    }
    out.truncate(n);
    ensure!(
        out.len() == n,
        "the feed holds {} of the {n} backlog events",
        out.len()
    );
    Ok(out)
}

/// Publishes every message without waiting (acks are awaited by a second task as they come,
/// which frees the context's in-flight permits), then waits for the last ack; returns seconds.
async fn publish_pipelined(
    js: &Context,
    messages: Vec<(async_nats::Subject, PublishMessage)>,
) -> anyhow::Result<f64> {
    let n = messages.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acks = tokio::spawn(async move {
        let mut ok = 0usize;
        while let Some(ack) = rx.recv().await {
            let ack: async_nats::jetstream::context::PublishAckFuture = ack;
            if ack.await.is_ok() {
                ok += 1;
            }
        }
        ok
    });
    let t0 = Instant::now();
    for (subject, message) in messages {
        let ack = js
            .send_publish(subject, message)
            .await
            .context("raw publish")?;
        let _ = tx.send(ack);
    }
    drop(tx);
    let ok = acks.await?;
    let secs = t0.elapsed().as_secs_f64();
    ensure!(ok == n, "{ok} of {n} raw publishes acknowledged");
    Ok(secs)
}
