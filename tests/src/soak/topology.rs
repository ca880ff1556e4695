//! The scenarios of the production topology (docs/reliability.md, docs/scaling.md):
//! - R10: a three-node JetStream cluster loses its stream leader, then a follower, under mixed
//!   load (commands over HTTP, payments and disputes consumed from the stream).
//! - R11: `/internal` reads served by a streaming Postgres standby, which stops midway.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use async_nats::jetstream;
use order_bus::inbound::Family;
use order_bus::RELAY_CONSUMER;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cluster::{Cluster, ClusterSpec};
use super::load::{self, Acked, Counters};
use super::nats_cluster::{leader_of, placement, NatsCluster};
use super::verify::{self, BusCheck};
use super::{poll_until, report, Scale};

/// An inbound message the cluster acknowledged (so it must take effect exactly once).
#[derive(Debug, Clone)]
struct Sent {
    order: Uuid,
    family: Family,
    id: String,
}

/// What the publishers of inbound messages saw.
#[derive(Debug, Default)]
struct InboundLog {
    acked: Vec<Sent>,
    /// Publishes that got no acknowledgement within their retries (not required to apply).
    unacked: u64,
    /// Publish attempts that failed and were retried (the same `Nats-Msg-Id` each time).
    retried: u64,
}

/// Publishes `body` on `subject` with `Nats-Msg-Id` = `id`, retrying the same id for up to
/// 20 s while the cluster elects a leader; true once acknowledged.
async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    id: &str,
    body: Vec<u8>,
    log: &Mutex<InboundLog>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers, body.clone().into())
                .await?
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(6), attempt).await {
            Ok(Ok(())) => return true,
            _ if Instant::now() >= deadline => {
                log.lock().await.unacked += 1;
                return false;
            }
            _ => {
                log.lock().await.retried += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One worker of the mixed load: create and reserve over HTTP (round robin over the replicas),
/// then the payment arrives as `payment.succeeded` on the stream, and every third order is
/// disputed with `dispute.created`.
#[allow(clippy::too_many_arguments)]
async fn mixed_worker(
    index: usize,
    urls: Arc<Vec<String>>,
    js: jetstream::Context,
    prefix: String,
    counters: Arc<Counters>,
    log: Arc<Mutex<InboundLog>>,
    stop: CancellationToken,
) -> Vec<Acked> {
    let client = load::client();
    let mut acked = Vec::new();
    let mut turn = index;
    let mut flow = 0_u64;
    while !stop.is_cancelled() {
        flow += 1;
        turn += 1;
        let url = &urls[turn % urls.len()];
        let Some(created) = load::post(
            &client,
            &counters,
            url,
            "/api/v1/orders",
            &crate::order_body(),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let order = &created["order"];
        let (Some(id), Some(version), Some(total)) = (
            order["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
            order["version"].as_u64(),
            order["totalCents"].as_i64(),
        ) else {
            continue;
        };
        acked.push(Acked { order: id, version });
        turn += 1;
        let path = format!("/api/v1/orders/{id}/reserve");
        let Some(reserved) = load::post(
            &client,
            &counters,
            &urls[turn % urls.len()],
            &path,
            &json!({}),
        )
        .await
        else {
            continue;
        };
        if let Some(v) = reserved["order"]["version"].as_u64() {
            acked.push(Acked {
                order: id,
                version: v,
            });
        }
        let pay_id = format!("pay-{id}");
        let paid = json!({"id": pay_id, "type": "payment.succeeded",
            "payload": {"orderId": id, "paymentIntentId": format!("pi_{id}"),
                        "amountCents": total, "currency": "USD"}});
        if publish_acked(
            &js,
            format!("{prefix}payment.succeeded"),
            &pay_id,
            paid.to_string().into_bytes(),
            &log,
        )
        .await
        {
            log.lock().await.acked.push(Sent {
                order: id,
                family: Family::Payment,
                id: pay_id,
            });
        }
        if flow.is_multiple_of(3) {
            let dispute_id = format!("dsp-{id}");
            let disputed = json!({"id": dispute_id, "type": "dispute.created",
                "payload": {"orderId": id, "disputeId": format!("dp_{id}"),
                            "amountCents": total, "reason": "fraudulent"}});
            if publish_acked(
                &js,
                format!("{prefix}dispute.created"),
                &dispute_id,
                disputed.to_string().into_bytes(),
                &log,
            )
            .await
            {
                log.lock().await.acked.push(Sent {
                    order: id,
                    family: Family::Dispute,
                    id: dispute_id,
                });
            }
        }
    }
    acked
}

/// The relay's checkpoint: the feed position of the last event it had acknowledged.
async fn relay_position(pool: &PgPool) -> Option<i64> {
    order_projections::checkpoint::load(pool, RELAY_CONSUMER)
        .await
        .ok()
        .map(|p| p.global_position)
}

/// How long after `from` the relay's checkpoint moves past where it is at `from`; `None` when
/// it has not within `within`.
async fn relay_resumes(pool: &PgPool, from: Instant, within: Duration) -> Option<Duration> {
    let start = relay_position(pool).await?;
    poll_until(within, || async {
        (relay_position(pool).await? > start).then(|| from.elapsed())
    })
    .await
}

/// Until every inbound consumer has nothing pending nor unacknowledged.
async fn inbound_drained(cluster: &Cluster, within: Duration) -> bool {
    poll_until(within, || async {
        let stream = cluster.js.get_stream(&cluster.stream).await.ok()?;
        for family in [Family::Payment, Family::Dispute] {
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(&family.durable_name()).await.ok()?;
            let info = consumer.info().await.ok()?;
            if info.num_pending != 0 || info.num_ack_pending != 0 {
                return None;
            }
        }
        Some(())
    })
    .await
    .is_some()
}

/// Effects of the acknowledged inbound messages: (lost, applied twice), and the inbox rows
/// missing for them.
async fn inbound_effects(pool: &PgPool, sent: &[Sent]) -> anyhow::Result<(usize, usize, usize)> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, count(*) FROM events
          WHERE aggregate_type = 'Order' AND event_type IN ('OrderConfirmed', 'DisputeOpened')
          GROUP BY aggregate_id, event_type",
    )
    .fetch_all(pool)
    .await?;
    let effects: HashMap<(String, String), i64> = rows
        .into_iter()
        .map(|(order, kind, n)| ((order, kind), n))
        .collect();
    let inbox: HashSet<String> = sqlx::query_scalar::<_, String>("SELECT message_id FROM inbox")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let (mut lost, mut doubled, mut not_in_inbox) = (0, 0, 0);
    for s in sent {
        let kind = match s.family {
            Family::Payment => "OrderConfirmed",
            _ => "DisputeOpened",
        };
        match effects.get(&(s.order.to_string(), kind.to_owned())) {
            None => lost += 1,
            Some(&n) if n > 1 => doubled += 1,
            Some(_) => {}
        }
        not_in_inbox += usize::from(!inbox.contains(&s.id));
    }
    Ok((lost, doubled, not_in_inbox))
}

/// [`verify::bus_check`], tried again (up to five times, 3 s apart) when a JetStream request
/// times out: on a loaded machine a request can land while the cluster still moves a group's
/// leadership after the restarts.
async fn bus_check_patiently(cluster: &Cluster) -> anyhow::Result<BusCheck> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match verify::bus_check(&cluster.js, &cluster.stream, &cluster.prefix, &cluster.pool).await
        {
            Ok(check) => return Ok(check),
            Err(e) if attempt < 5 => {
                eprintln!("R10: reading the stream back failed ({e:#}); trying again");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e.context("reading the events stream back")),
        }
    }
}

fn bus_figures(b: &BusCheck) -> Vec<(&'static str, Value)> {
    vec![
        ("events", json!(b.stored)),
        ("on_nats", json!(b.unique)),
        ("dup", json!(b.duplicates)),
        ("missing", json!(b.missing)),
        ("reordered", json!(b.reordered)),
    ]
}

/// R10: a three-node JetStream cluster, the streams and consumers with three replicas, two
/// service replicas given all three URLs. Under mixed load, `kill -9` the events stream's
/// leader node, wait, restart it, then kill a follower. Every acknowledged command is in the
/// store; every event is in the stream once and in per-order sequence order; every
/// acknowledged inbound message took effect exactly once; the relay publishes again within
/// 10 s of the new leader's election.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r10(scale: Scale) -> anyhow::Result<()> {
    let warmup = scale.secs(3.0, 10.0);
    let between = scale.secs(3.0, 15.0);
    let mut nats = NatsCluster::start(3)?;
    nats.wait_ready(Duration::from_secs(60)).await?;
    let mut spec = ClusterSpec::new(2)
        .with("INBOUND_BACKOFF_MS", 200)
        .with("INBOUND_POLL_MS", 50)
        .with("INBOUND_VERIFY_PAYMENTS", false);
    spec.inbound = true;
    spec.nats_url = Some(nats.urls());
    spec.stream_replicas = 3;
    let cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let log = Arc::new(Mutex::new(InboundLog::default()));
    let urls = Arc::new(cluster.urls());
    let workers: Vec<_> = (0..scale.pick(4, 8))
        .map(|w| {
            tokio::spawn(mixed_worker(
                w,
                urls.clone(),
                cluster.js.clone(),
                cluster.prefix.clone(),
                counters.clone(),
                log.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(warmup).await;

    // 1. The events stream's leader dies.
    let old_leader = leader_of(&cluster.js, &cluster.stream, Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("the events stream has no leader"))?;
    let victim = nats
        .index_of(&old_leader)
        .ok_or_else(|| anyhow::anyhow!("unknown leader {old_leader}"))?;
    nats.kill(victim);
    let killed = Instant::now();
    let elected = poll_until(Duration::from_secs(30), || async {
        placement(&cluster.js, &cluster.stream)
            .await
            .ok()?
            .leader
            .filter(|l| *l != old_leader)
    })
    .await;
    let election = killed.elapsed();
    let new_leader = elected.ok_or_else(|| anyhow::anyhow!("no new leader within 30 s"))?;
    let elected_at = Instant::now();
    let resume = relay_resumes(&cluster.pool, elected_at, Duration::from_secs(30)).await;
    tokio::time::sleep(between).await;

    // 2. It comes back (same ports, same store) and catches up as a follower.
    nats.restart(victim)
        .context("restarting the killed leader")?;
    let rejoined = poll_until(Duration::from_secs(60), || async {
        let p = placement(&cluster.js, &cluster.stream).await.ok()?;
        (p.peers.len() == 3 && p.peers.contains(&old_leader)).then_some(())
    })
    .await
    .is_some();
    tokio::time::sleep(between).await;

    // 3. A follower dies: the leader keeps its quorum, the relay should not even notice.
    let leader_now = leader_of(&cluster.js, &cluster.stream, Duration::from_secs(30))
        .await
        .unwrap_or_default();
    let follower = (0..nats.nodes.len())
        .find(|&i| nats.nodes[i].name != leader_now)
        .unwrap_or(0);
    let follower_name = nats.nodes[follower].name.clone();
    nats.kill(follower);
    let follower_killed = Instant::now();
    let after_follower =
        relay_resumes(&cluster.pool, follower_killed, Duration::from_secs(30)).await;
    tokio::time::sleep(between).await;
    // Back before the checks: with a node down, JetStream may place the checks' own ephemeral
    // consumer on it, and their reads then time out.
    nats.restart(follower)
        .context("restarting the killed follower")?;
    let follower_rejoined = poll_until(Duration::from_secs(60), || async {
        let p = placement(&cluster.js, &cluster.stream).await.ok()?;
        (p.peers.len() == 3 && p.peers.contains(&follower_name)).then_some(())
    })
    .await
    .is_some();

    stop.cancel();
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap_or_default());
    }
    let totals = counters.snapshot();
    verify::wait_caught_up(&cluster.pool, RELAY_CONSUMER, Duration::from_secs(60))
        .await
        .ok_or_else(|| anyhow::anyhow!("the relay did not catch up within 60 s"))?;
    let drained = inbound_drained(&cluster, Duration::from_secs(90)).await;
    let missing = verify::missing_acked(&cluster.pool, &acked).await?;
    let bus = bus_check_patiently(&cluster).await?;
    let log = log.lock().await;
    let (lost, doubled, not_in_inbox) = inbound_effects(&cluster.pool, &log.acked)
        .await
        .context("the inbound effects")?;
    let payments = log
        .acked
        .iter()
        .filter(|s| s.family == Family::Payment)
        .count();
    let resume_s = resume.map(|d| d.as_secs_f64());
    let mut figures = vec![
        ("killed_leader", json!(old_leader)),
        ("new_leader", json!(new_leader)),
        ("election_s", json!(election.as_secs_f64())),
        ("relay_resume_after_election_s", json!(resume_s)),
        ("leader_rejoined", json!(rejoined)),
        ("killed_follower", json!(follower_name)),
        ("follower_rejoined", json!(follower_rejoined)),
        (
            "relay_publish_after_follower_kill_s",
            json!(after_follower.map(|d| d.as_secs_f64())),
        ),
        ("commands_ok", json!(totals.ok)),
        ("commands_failed", json!(totals.failed())),
        ("acked_missing_in_store", json!(missing)),
    ];
    figures.extend(bus_figures(&bus));
    figures.extend([
        ("inbound_acked", json!(log.acked.len())),
        ("inbound_payments", json!(payments)),
        ("inbound_disputes", json!(log.acked.len() - payments)),
        ("inbound_publish_retries", json!(log.retried)),
        ("inbound_unacked", json!(log.unacked)),
        ("inbound_lost", json!(lost)),
        ("inbound_applied_twice", json!(doubled)),
        ("inbound_not_in_inbox", json!(not_in_inbox)),
        ("inbound_drained", json!(drained)),
    ]);
    report("R10", scale, &figures);
    if !bus.is_exact() || lost > 0 || resume_s.is_none_or(|r| r > 10.0) {
        eprintln!(
            "R10 logs: {} and {}",
            cluster.log_dir().display(),
            nats.dir().display()
        );
    }
    ensure!(totals.ok > 0, "no command succeeded");
    ensure!(!log.acked.is_empty(), "no inbound message was acknowledged");
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(bus.is_exact(), "the bus differs from the store: {bus:?}");
    ensure!(
        bus.duplicates == 0,
        "{} events are in the stream twice",
        bus.duplicates
    );
    ensure!(
        resume_s.is_some_and(|r| r <= 10.0),
        "the relay resumed {resume_s:?} s after the election"
    );
    ensure!(
        rejoined,
        "the killed leader did not rejoin the stream's peers"
    );
    ensure!(
        after_follower.is_some(),
        "the relay stopped after a follower died"
    );
    ensure!(
        follower_rejoined,
        "the killed follower did not rejoin the stream's peers"
    );
    ensure!(drained, "the inbound consumers did not drain");
    ensure!(
        lost == 0 && doubled == 0 && not_in_inbox == 0,
        "inbound: {lost} lost, {doubled} applied twice, {not_in_inbox} not in the inbox"
    );
    Ok(())
}

/// What the read-back load of R11 saw.
#[derive(Debug, Default)]
struct ReadLog {
    /// `minVersion` reads that answered 2xx.
    ok: u64,
    /// 2xx answers with an older version than asked: read-your-writes broken.
    stale: u64,
    /// The documented 503: JSON error body and `Retry-After`.
    unavailable: u64,
    /// Anything else: another status, a 503 without its body or header, no answer.
    other: u64,
    /// Microseconds each answered read took (its wait for the standby included).
    waits_us: Vec<u64>,
}

impl ReadLog {
    fn add(&mut self, other: &Self) {
        self.ok += other.ok;
        self.stale += other.stale;
        self.unavailable += other.unavailable;
        self.other += other.other;
        self.waits_us.extend(&other.waits_us);
    }
}

/// A signed GET as payment-service; gives the status, whether a 503 is the documented one, the
/// body, and how long it took.
async fn signed_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> Option<(u16, bool, Value)> {
    let mut req = client.get(format!("{base}{path}"));
    for (k, v) in crate::v1_headers("payment-service", "GET", path) {
        req = req.header(k, v);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let documented = status == 503 && retry_after && load::is_error_body(&body);
    Some((status, documented, body))
}

/// Reads order `id` back with `minVersion=version` through `path` (the order or its
/// for-payment view) and records the outcome.
async fn read_back(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    version: u64,
    log: &mut ReadLog,
) {
    let started = Instant::now();
    let answer = signed_get(client, base, &format!("{path}?minVersion={version}")).await;
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match answer {
        Some((200, _, body)) => {
            log.ok += 1;
            log.waits_us.push(took);
            let seen = body["order"]["version"].as_u64().unwrap_or(0);
            log.stale += u64::from(seen < version);
        }
        Some((503, true, _)) => {
            log.unavailable += 1;
            log.waits_us.push(took);
        }
        _ => log.other += 1,
    }
}

/// One worker of R11: create, reserve, confirm over HTTP, each answer's `version` read back at
/// once from `/internal` with `minVersion`, alternating the order and its for-payment view, on
/// the replicas in turn.
async fn read_back_worker(
    index: usize,
    urls: Arc<Vec<String>>,
    counters: Arc<Counters>,
    phase: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
) -> (Vec<Acked>, [ReadLog; 2]) {
    let client = load::client();
    let mut acked = Vec::new();
    let mut logs = [ReadLog::default(), ReadLog::default()];
    let mut turn = index;
    while !stop.is_cancelled() {
        let mut id = None;
        let mut total = 0;
        for step in ["create", "reserve", "confirm"] {
            turn += 1;
            let base = &urls[turn % urls.len()];
            let (path, body) = match (step, id) {
                ("create", _) => ("/api/v1/orders".to_owned(), crate::order_body()),
                ("reserve", Some(id)) => (format!("/api/v1/orders/{id}/reserve"), json!({})),
                (_, Some(id)) => (
                    format!("/api/v1/orders/{id}/confirm"),
                    json!({"paymentIntentId": format!("pi_{id}"), "amountCents": total}),
                ),
                _ => break,
            };
            let answer = load::post(&client, &counters, base, &path, &body).await;
            let Some(order) = answer.as_ref().map(|a| &a["order"]) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            };
            let (Some(oid), Some(version)) = (
                order["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
                order["version"].as_u64(),
            ) else {
                break;
            };
            id = Some(oid);
            total = order["totalCents"].as_i64().unwrap_or(total);
            acked.push(Acked {
                order: oid,
                version,
            });
            turn += 1;
            let read_base = &urls[turn % urls.len()];
            let view = if turn.is_multiple_of(2) {
                format!("/internal/orders/{oid}")
            } else {
                format!("/internal/orders/{oid}/for-payment")
            };
            let p = phase.load(std::sync::atomic::Ordering::SeqCst).min(1);
            read_back(&client, read_base, &view, version, &mut logs[p]).await;
        }
    }
    (acked, logs)
}

/// The `pct`th percentile of `values` (0 when empty).
fn percentile(values: &mut [u64], pct: usize) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = (values.len() * pct).div_ceil(100).max(1) - 1;
    values[rank.min(values.len() - 1)]
}

/// The sum over the replicas of an unlabelled series on their `/metrics`.
async fn metric_sum(cluster: &Cluster, name: &str) -> f64 {
    let client = load::client();
    let mut sum = 0.0;
    for url in cluster.urls() {
        if let Ok(resp) = client.get(format!("{url}/metrics")).send().await {
            let page = resp.text().await.unwrap_or_default();
            sum += page
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    sum
}

/// R11: a private primary and a hot standby made from it with `pg_basebackup -R`; two
/// replicas with `READ_DATABASE_URL` on the standby. Every command's answer `version` is read
/// back at once from `/internal` with `minVersion`. No read answers an older version than it
/// asked for, and nothing but 2xx and the documented 503 comes back; the share of 503s and the
/// p99 wait are printed. Midway the standby is stopped: reads move to the primary, still with
/// nothing but 2xx and the documented 503, and the fallbacks are counted.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r11(scale: Scale) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let before_stop = scale.secs(6.0, 30.0);
    let after_stop = scale.secs(5.0, 20.0);
    // The projector commits its batches asynchronously (feed checkpoints, `Durability::Relaxed`),
    // and a standby sees a commit only once the primary's WAL writer has flushed it: every
    // `wal_writer_delay` (200 ms by default) when no synchronous commit flushes it first. With a
    // read standby the primary runs with 10 ms (docs/operations.md); `SOAK_WAL_WRITER_DELAY`
    // measures another value.
    let wal_writer_delay =
        std::env::var("SOAK_WAL_WRITER_DELAY").unwrap_or_else(|_| "10ms".to_owned());
    let primary = super::procs::PrivatePostgres::start_with(&[&format!(
        "wal_writer_delay={wal_writer_delay}"
    )])?;
    let mut standby = primary.start_standby()?;
    let tag = super::tag();
    let db = format!("soak_{tag}");
    let mut spec = ClusterSpec::new(2).with("READ_DATABASE_URL", standby.url(&db));
    spec.admin_url = Some(primary.url("postgres"));
    spec.tag = Some(tag);
    let cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let phase = Arc::new(AtomicUsize::new(0));
    let urls = Arc::new(cluster.urls());
    let workers: Vec<_> = (0..scale.pick(4, 8))
        .map(|w| {
            tokio::spawn(read_back_worker(
                w,
                urls.clone(),
                counters.clone(),
                phase.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(before_stop / 2).await;
    // The standby really serves the reads, and how far it is behind the primary.
    let reads_on_standby: i64 = {
        let standby_pool = order_api::db::pool(&standby.url(&db), 1)?;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'order-service-reads'",
        )
        .fetch_one(&standby_pool)
        .await?;
        standby_pool.close().await;
        n
    };
    let replay_lag_ms: Option<f64> = sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM max(replay_lag)) * 1000)::float8 FROM pg_stat_replication",
    )
    .fetch_one(&cluster.pool)
    .await?;
    tokio::time::sleep(before_stop / 2).await;

    let fallbacks_before = metric_sum(&cluster, "read_standby_fallbacks_total").await;
    phase.store(1, Ordering::SeqCst);
    standby.stop("fast")?;
    tokio::time::sleep(after_stop).await;
    let fallbacks = metric_sum(&cluster, "read_standby_fallbacks_total").await - fallbacks_before;
    let available_while_down = metric_sum(&cluster, "read_standby_available").await;

    stop.cancel();
    let mut acked = Vec::new();
    let (mut with_standby, mut without) = (ReadLog::default(), ReadLog::default());
    for w in workers {
        let (a, [one, two]) = w.await.unwrap_or_default();
        acked.extend(a);
        with_standby.add(&one);
        without.add(&two);
    }
    let totals = counters.snapshot();
    let missing = verify::missing_acked(&cluster.pool, &acked).await?;
    let share = |l: &ReadLog| {
        let answered = l.ok + l.unavailable + l.other;
        if answered == 0 {
            0.0
        } else {
            l.unavailable as f64 / answered as f64
        }
    };
    let (share_before, share_after) = (share(&with_standby), share(&without));
    let ms = |l: &mut ReadLog, pct| percentile(&mut l.waits_us, pct) as f64 / 1000.0;
    let (p50_before_ms, p99_before_ms) = (ms(&mut with_standby, 50), ms(&mut with_standby, 99));
    let (p50_after_ms, p99_after_ms) = (ms(&mut without, 50), ms(&mut without, 99));
    report(
        "R11",
        scale,
        &[
            ("primary_wal_writer_delay", json!(wal_writer_delay)),
            ("commands_ok", json!(totals.ok)),
            ("commands_failed", json!(totals.failed())),
            ("acked_missing_in_store", json!(missing)),
            ("standby_sessions", json!(reads_on_standby)),
            ("standby_replay_lag_ms", json!(replay_lag_ms)),
            ("standby_reads_ok", json!(with_standby.ok)),
            ("standby_reads_503", json!(with_standby.unavailable)),
            ("standby_503_share", json!(share_before)),
            ("standby_read_p50_ms", json!(p50_before_ms)),
            ("standby_read_p99_ms", json!(p99_before_ms)),
            ("standby_fallbacks", json!(fallbacks_before)),
            ("standby_stale", json!(with_standby.stale)),
            ("standby_other", json!(with_standby.other)),
            ("stopped_reads_ok", json!(without.ok)),
            ("stopped_reads_503", json!(without.unavailable)),
            ("stopped_503_share", json!(share_after)),
            ("stopped_read_p50_ms", json!(p50_after_ms)),
            ("stopped_read_p99_ms", json!(p99_after_ms)),
            ("stopped_stale", json!(without.stale)),
            ("stopped_other", json!(without.other)),
            ("fallbacks_counted", json!(fallbacks)),
            (
                "standby_available_gauge_while_stopped",
                json!(available_while_down),
            ),
        ],
    );
    ensure!(totals.ok > 0, "no command succeeded");
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(reads_on_standby > 0, "no read session on the standby");
    ensure!(
        with_standby.ok > 0,
        "no read answered while the standby ran"
    );
    ensure!(
        with_standby.stale == 0 && without.stale == 0,
        "reads older than asked: {} with the standby, {} without",
        with_standby.stale,
        without.stale
    );
    ensure!(
        with_standby.other == 0 && without.other == 0,
        "answers other than 2xx and the documented 503: {} with the standby, {} without",
        with_standby.other,
        without.other
    );
    ensure!(without.ok > 0, "no read answered after the standby stopped");
    ensure!(fallbacks > 0.0, "no fallback to the primary was counted");
    ensure!(
        available_while_down == 0.0,
        "read_standby_available stayed {available_while_down} with the standby stopped"
    );
    Ok(())
}
