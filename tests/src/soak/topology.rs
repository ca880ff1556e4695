//! The scenarios of the production topology (docs/reliability.md, docs/scaling.md):
//! - R10: a three-node JetStream cluster loses its stream leader, then a follower, under mixed
//!   load (commands over HTTP, payments and disputes consumed from the stream).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
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
    nats.wait_ready(Duration::from_secs(30)).await?;
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
    let before = placement(&cluster.js, &cluster.stream).await?;
    let old_leader = before
        .leader
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the events stream has no leader: {before:?}"))?;
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
    nats.restart(victim)?;
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
    let bus =
        verify::bus_check(&cluster.js, &cluster.stream, &cluster.prefix, &cluster.pool).await?;
    let log = log.lock().await;
    let (lost, doubled, not_in_inbox) = inbound_effects(&cluster.pool, &log.acked).await?;
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
    ensure!(drained, "the inbound consumers did not drain");
    ensure!(
        lost == 0 && doubled == 0 && not_in_inbox == 0,
        "inbound: {lost} lost, {doubled} applied twice, {not_in_inbox} not in the inbox"
    );
    Ok(())
}
