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
    /// Orders created whose effect was not seen within `SETTLE` after the run.
    pub missing: u64,
    /// Effects seen before the create's answer arrived (recorded as ~0).
    pub early: u64,
    /// B7 only, the lag in two parts, by the stream's own timestamp of each message: from the
    /// create's answer to JetStream storing the event (the relay's part), and from there to
    /// the subscriber's receipt (the broker's delivery and the subscriber's own wake-up). Wall
    /// clock on both sides of one machine.
    pub to_stream: Latencies,
    pub from_stream: Latencies,
}

/// Nanoseconds since the Unix epoch, to compare with JetStream's message timestamps.
fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A nonnegative span of nanoseconds (a clock read on the other side may come out ahead).
fn span(from_ns: i128, to_ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(to_ns - from_ns).unwrap_or(0))
}

/// When the subscriber got an order's event, and when JetStream stored it.
#[derive(Debug, Clone, Copy)]
struct Receipt {
    at: Instant,
    at_ns: i128,
    /// 0 when the message carried no JetStream metadata.
    stored_ns: i128,
}

impl Receipt {
    /// The receipt of `message`, now, with the order id of its envelope (`None` if it has
    /// none).
    fn of(message: &async_nats::jetstream::Message) -> Option<(Uuid, Self)> {
        let receipt = Self {
            at: Instant::now(),
            at_ns: wall_ns(),
            stored_ns: message
                .info()
                .map_or(0, |i| i.published.unix_timestamp_nanos()),
        };
        let envelope = serde_json::from_slice::<Value>(&message.payload).ok()?;
        let id = Uuid::parse_str(envelope["aggregateId"].as_str()?).ok()?;
        Some((id, receipt))
    }
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
    // The subscriber runs on a thread of its own, with its own runtime and NATS connection,
    // as a subscribing service would run in a process of its own: on the bench's runtime, its
    // receipts queued behind the create tasks of the load it measures, which added several ms
    // to the tail of a lag that is the service's to answer for.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (nats, stream_name, filter) = (
        nats_url.to_owned(),
        stream.to_owned(),
        format!("{prefix}order.created"),
    );
    std::thread::Builder::new()
        .name("bench-subscriber".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let subscribed = async {
                    let client = async_nats::connect(&nats).await?;
                    let consumer = async_nats::jetstream::new(client)
                        .get_stream(&stream_name)
                        .await?
                        .create_consumer(pull::OrderedConfig {
                            filter_subject: filter,
                            deliver_policy: DeliverPolicy::New,
                            ..Default::default()
                        })
                        .await?;
                    anyhow::Ok(consumer.messages().await?)
                };
                let mut messages = match subscribed.await {
                    Ok(messages) => {
                        let _ = ready_tx.send(Ok(()));
                        messages
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut received: HashMap<Uuid, Receipt> = HashMap::new();
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
                            if let Some((id, receipt)) = Receipt::of(&message) {
                                received.entry(id).or_insert(receipt);
                            }
                        }
                    }
                }
                let _ = done_tx.send(received);
            });
        })?;
    ready_rx.await??;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);

    let (tx, mut rx) = mpsc::unbounded_channel::<Created>();
    let (commands, errors) = create_at_rate(base, rate, duration, tx).await;
    let mut created = Vec::new();
    while let Ok(c) = rx.try_recv() {
        created.push(c);
    }
    // Give the relay time to publish the last ones, then stop listening.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    let mut received = done_rx.await?;
    if created.iter().any(|(id, _)| !received.contains_key(id)) {
        // Stragglers: listen once more, bounded.
        received = straggle(&js, stream, prefix, received, &created).await;
    }

    let mut run = LagRun {
        commands,
        errors,
        ..LagRun::default()
    };
    // The answers' instants on the wall clock, for the two parts of the lag.
    let (now, now_ns) = (Instant::now(), wall_ns());
    for (id, answered) in &created {
        let Some(receipt) = received.get(id) else {
            run.missing += 1;
            continue;
        };
        if receipt.at < *answered {
            run.early += 1;
            run.lag.record(Duration::ZERO);
        } else {
            run.lag.record(receipt.at.duration_since(*answered));
        }
        if receipt.stored_ns > 0 {
            let answered_ns = now_ns - now.duration_since(*answered).as_nanos() as i128;
            run.to_stream.record(span(answered_ns, receipt.stored_ns));
            run.from_stream
                .record(span(receipt.stored_ns, receipt.at_ns));
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
    mut received: HashMap<Uuid, Receipt>,
    created: &[Created],
) -> HashMap<Uuid, Receipt> {
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
        let Some((id, receipt)) = Receipt::of(&message) else {
            continue;
        };
        if wanted.contains(&id) && received.insert(id, receipt).is_none() {
            left -= 1;
        }
    }
    received
}
