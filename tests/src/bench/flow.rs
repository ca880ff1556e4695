//! How fast a command's effect reaches the read side and the bus (B5 and B7).
//!
//! Both drive creates on a fixed schedule (open loop, like [`super::load::open_loop`]) and note,
//! per order, the instant its HTTP answer arrived. B5 then watches `order_read` from a separate
//! connection; B7 watches a real JetStream consumer on the service's stream. Each lag counts
//! from the answer, so it is what a caller that just got its 201 would wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use reqwest::Client;
use serde_json::Value;
use sqlx::Connection;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::stats::Latencies;
use crate::{order_body, v1_headers};

/// Longest wait, after the last create, for the stragglers to show up.
const SETTLE: Duration = Duration::from_secs(5);

/// What one lag run measured.
#[derive(Debug, Clone, Default)]
pub struct LagRun {
    /// Command latencies from each request's send (open loop).
    pub commands: Latencies,
    /// Lag from each create's answer to its effect (read-model row, or subscriber receipt).
    pub lag: Latencies,
    /// Creates that failed.
    pub errors: u64,
    /// Orders created whose effect was not seen within [`SETTLE`] after the run.
    pub missing: u64,
    /// Effects seen before the create's answer arrived (recorded as ~0).
    pub early: u64,
}

/// One create that succeeded: its order id and when its answer arrived.
type Created = (Uuid, Instant);

/// Sends creates at `rate` per second for `duration`, reporting each created order on `tx`.
async fn create_at_rate(
    base: &str,
    rate: f64,
    duration: Duration,
    tx: mpsc::UnboundedSender<Created>,
) -> (Latencies, u64) {
    crate::install_crypto();
    let client = Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client builds");
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate).max(1.0) as u64;
    let started = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        let url = format!("{base}/api/v1/orders");
        let tx = tx.clone();
        handles.push(tokio::spawn(async move {
            // From the send, like `load::open_loop` (see there why not from `due`).
            let sent = Instant::now();
            let mut req = client
                .post(url)
                .header("x-tenant-id", "bench")
                .json(&order_body());
            for (k, v) in v1_headers("api-gateway", "POST", "/api/v1/orders") {
                req = req.header(k, v);
            }
            let resp = req.send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body: Value = resp.json().await.ok()?;
            let answered = Instant::now();
            let latency = answered - sent;
            let id = body["order"]["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())?;
            let _ = tx.send((id, answered));
            Some(latency)
        }));
    }
    drop(tx);
    let mut latencies = Latencies::default();
    let mut errors = 0;
    for h in handles {
        match h.await.ok().flatten() {
            Some(l) => latencies.record(l),
            None => errors += 1,
        }
    }
    (latencies, errors)
}

/// B5: creates at `rate` for `duration`; after each answer, polls `order_read` every `poll` on
/// its own connection until the order's row is there.
///
/// # Errors
/// When the database cannot be reached.
pub async fn read_model_lag(
    base: &str,
    db_url: &str,
    rate: f64,
    duration: Duration,
    poll: Duration,
) -> anyhow::Result<LagRun> {
    let mut conn = sqlx::PgConnection::connect(db_url).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Created>();
    let watcher = tokio::spawn(async move {
        let mut run = LagRun::default();
        let mut pending: HashMap<Uuid, Instant> = HashMap::new();
        let mut senders_done = false;
        let mut settle_by: Option<Instant> = None;
        // Bounded: the creates end after `duration`, and stragglers get SETTLE at most.
        loop {
            loop {
                match rx.try_recv() {
                    Ok((id, at)) => {
                        pending.insert(id, at);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        senders_done = true;
                        break;
                    }
                }
            }
            if senders_done {
                let by = *settle_by.get_or_insert_with(|| Instant::now() + SETTLE);
                if pending.is_empty() || Instant::now() >= by {
                    break;
                }
            }
            if !pending.is_empty() {
                let ids: Vec<Uuid> = pending.keys().copied().collect();
                let found: Vec<Uuid> =
                    sqlx::query_scalar("SELECT order_id FROM order_read WHERE order_id = ANY($1)")
                        .bind(&ids)
                        .fetch_all(&mut conn)
                        .await?;
                // The row was visible by the time this answer arrived: an upper bound.
                let seen = Instant::now();
                for id in found {
                    if let Some(answered) = pending.remove(&id) {
                        run.lag.record(seen.saturating_duration_since(answered));
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
        run.missing = pending.len() as u64;
        conn.close().await.ok();
        Ok::<_, sqlx::Error>(run)
    });
    let (commands, errors) = create_at_rate(base, rate, duration, tx).await;
    let mut run = watcher.await??;
    run.commands = commands;
    run.errors = errors;
    Ok(run)
}

/// B7: subscribes to `<prefix>order.created` on `stream` with an ordered JetStream consumer
/// (new messages only), then creates at `rate` for `duration`; the lag of each order is its
/// envelope's receipt minus its create's answer.
///
/// # Errors
/// When NATS or the stream cannot be reached.
pub async fn subscriber_lag(
    base: &str,
    nats_url: &str,
    stream: &str,
    prefix: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<LagRun> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}order.created"),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let subscriber = tokio::spawn(async move {
        let mut received: HashMap<Uuid, Instant> = HashMap::new();
        let hard_stop = Instant::now() + duration + SETTLE + Duration::from_secs(5);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                () = tokio::time::sleep_until(hard_stop.into()) => break,
                next = messages.next() => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        // The ordered consumer recreates itself after a hiccup: keep reading.
                        Some(Err(_)) => continue,
                        None => break,
                    };
                    let at = Instant::now();
                    let id = serde_json::from_slice::<Value>(&message.payload)
                        .ok()
                        .and_then(|v| v["aggregateId"].as_str().and_then(|s| Uuid::parse_str(s).ok()));
                    if let Some(id) = id {
                        received.entry(id).or_insert(at);
                    }
                }
            }
        }
        received
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<Created>();
    let (commands, errors) = create_at_rate(base, rate, duration, tx).await;
    let mut created = Vec::new();
    while let Ok(c) = rx.try_recv() {
        created.push(c);
    }
    // Give the relay time to publish the last ones, then stop listening.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    let mut received = subscriber.await?;
    if created.iter().any(|(id, _)| !received.contains_key(id)) {
        // Stragglers: listen once more, bounded.
        received = straggle(&js, stream, prefix, received, &created).await;
    }

    let mut run = LagRun {
        commands,
        errors,
        ..LagRun::default()
    };
    for (id, answered) in &created {
        match received.get(id) {
            Some(at) if at < answered => {
                run.early += 1;
                run.lag.record(Duration::ZERO);
            }
            Some(at) => run.lag.record(at.duration_since(*answered)),
            None => run.missing += 1,
        }
    }
    Ok(run)
}

/// Reads the stream's `order.created` from the start for up to [`SETTLE`], adding receipts of
/// orders not yet seen (their lag then includes the wait, which is what a subscriber saw).
async fn straggle(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    mut received: HashMap<Uuid, Instant>,
    created: &[Created],
) -> HashMap<Uuid, Instant> {
    let Ok(s) = js.get_stream(stream).await else {
        return received;
    };
    let Ok(consumer) = s
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}order.created"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    else {
        return received;
    };
    let Ok(mut messages) = consumer.messages().await else {
        return received;
    };
    let wanted: std::collections::HashSet<Uuid> = created
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !received.contains_key(id))
        .collect();
    let mut left = wanted.len();
    let deadline = Instant::now() + SETTLE;
    while left > 0 {
        let next = tokio::time::timeout_at(deadline.into(), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let at = Instant::now();
        let id = serde_json::from_slice::<Value>(&message.payload)
            .ok()
            .and_then(|v| {
                v["aggregateId"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
            });
        if let Some(id) = id.filter(|id| wanted.contains(id)) {
            if received.insert(id, at).is_none() {
                left -= 1;
            }
        }
    }
    received
}
