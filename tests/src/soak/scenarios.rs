//! The reliability scenarios (docs/reliability.md). Each returns `Ok` only when every figure meets its bar; the
//! figures are printed (and written by [`super::report`]) before the verdict, so a failing run
//! still shows what it measured.
//!
//! Sleeps here pace the fault schedule (how long load runs before a kill, how long an outage
//! lasts); every wait for a state uses [`poll_until`] with a deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use order_bus::RELAY_CONSUMER;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use uuid::Uuid;

use super::cluster::{Cluster, ClusterSpec};
use super::load::{self, Load};
use super::procs::{PrivateNats, PrivatePostgres};
use super::verify::{self, BusCheck};
use super::{poll_until, report, Scale};

/// The bus figures every scenario prints.
fn bus_figures(b: &BusCheck) -> Vec<(&'static str, Value)> {
    vec![
        ("events", json!(b.stored)),
        ("on_nats", json!(b.unique)),
        ("dup", json!(b.duplicates)),
        ("missing", json!(b.missing)),
        ("reordered", json!(b.reordered)),
    ]
}

/// Which replica leads `lock` according to its own `/metrics` (`leader_is_leader{lock=...} 1`).
async fn leader_of(cluster: &Cluster, lock: &str) -> Option<usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let needle = format!("leader_is_leader{{lock=\"{lock}\"}} 1");
    for (i, url) in cluster.urls().iter().enumerate() {
        if !cluster.replicas[i].is_started() {
            continue;
        }
        if let Ok(r) = client.get(format!("{url}/metrics")).send().await {
            if let Ok(text) = r.text().await {
                if text.lines().any(|l| l.trim() == needle) {
                    return Some(i);
                }
            }
        }
    }
    None
}

/// Messages in the scenario's stream.
async fn stream_messages(cluster: &Cluster) -> anyhow::Result<u64> {
    let mut stream = cluster.js.get_stream(&cluster.stream).await?;
    Ok(stream.info().await?.state.messages)
}

/// Waits for the relay to publish everything, then checks the bus and the store against the
/// acknowledged commands.
async fn settle_and_check(
    cluster: &Cluster,
    acked: &[load::Acked],
) -> anyhow::Result<(usize, BusCheck)> {
    verify::wait_caught_up(&cluster.pool, RELAY_CONSUMER, Duration::from_secs(60))
        .await
        .ok_or_else(|| anyhow::anyhow!("the relay did not catch up within 60 s"))?;
    let missing = verify::missing_acked(&cluster.pool, acked).await?;
    let bus =
        verify::bus_check(&cluster.js, &cluster.stream, &cluster.prefix, &cluster.pool).await?;
    Ok((missing, bus))
}

/// R1: kill -9 a replica repeatedly under mixed command load (every other kill hits the relay
/// leader, so the relay dies between publish and checkpoint). Every acknowledged command is in
/// the store, every event is on NATS once and in order per order, and the read model equals a
/// replay from scratch.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r1(scale: Scale) -> anyhow::Result<()> {
    let kills = scale.pick(2, 5);
    let between = scale.secs(3.0, 8.0);
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let load = Load::start(cluster.urls(), scale.pick(6, 12));
    let mut leader_kills = 0;
    for k in 0..kills {
        tokio::time::sleep(between).await;
        let leader = if k % 2 == 0 {
            leader_of(&cluster, RELAY_CONSUMER).await
        } else {
            None
        };
        leader_kills += usize::from(leader.is_some());
        let victim = leader.unwrap_or(k % cluster.replicas.len());
        cluster.replicas[victim].kill();
        // Down for a moment under load, then back on the same port.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.replicas[victim].start().await?;
    }
    tokio::time::sleep(between).await;
    let result = load.stop().await;
    let (missing, bus) = settle_and_check(&cluster, &result.acked).await?;
    let differences = verify::replay_differences(&cluster.pool).await?;
    let mut figures = vec![
        ("kills", json!(kills)),
        ("relay_leader_kills", json!(leader_kills)),
        ("commands_ok", json!(result.totals.ok)),
        ("commands_failed", json!(result.totals.failed())),
        ("acked_missing_in_store", json!(missing)),
    ];
    figures.extend(bus_figures(&bus));
    figures.push(("read_model_equal", json!(differences == 0)));
    report("R1", scale, &figures);
    ensure!(result.totals.ok > 0, "no command succeeded");
    ensure!(leader_kills > 0, "the relay leader was never found to kill");
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(bus.is_exact(), "the bus differs from the store: {bus:?}");
    ensure!(
        differences == 0,
        "the read model differs from a replay by {differences} rows"
    );
    Ok(())
}

/// R2: the broker is down for a while under load. Commands keep succeeding, the relay's backlog
/// drains soon after the broker is back, and nothing is lost.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r2(scale: Scale) -> anyhow::Result<()> {
    let outage = scale.secs(4.0, 30.0);
    let mut nats = PrivateNats::start()?;
    // The service's own settings: the relay ends its backoff as soon as the NATS client has
    // reconnected, so its 30 s maximum backoff does not delay the drain
    // (`SOAK_RELAY_MAX_BACKOFF_SECS` overrides it, to measure another setting).
    let mut spec = ClusterSpec::new(2);
    let backoff = std::env::var("SOAK_RELAY_MAX_BACKOFF_SECS").unwrap_or_else(|_| "default".into());
    if backoff != "default" {
        spec = spec.with("RELAY_MAX_BACKOFF_SECS", &backoff);
    }
    spec.nats_url = Some(nats.url());
    let cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let load = Load::start(cluster.urls(), 4);
    tokio::time::sleep(scale.secs(2.0, 5.0)).await;

    nats.stop();
    let before = load.snapshot();
    tokio::time::sleep(outage).await;
    let during = load.snapshot().since(&before);
    let backlog = order_projections::feed::lag(&cluster.pool, RELAY_CONSUMER)
        .await?
        .events_behind;
    nats.restart()?;
    let restarted = Instant::now();
    // Drained: every event committed before the restart is published, i.e. the relay's oldest
    // unread event is younger than the restart (the load keeps adding new ones meanwhile).
    let drain = poll_until(Duration::from_secs(30), || async {
        let lag = order_projections::feed::lag(&cluster.pool, RELAY_CONSUMER)
            .await
            .ok()?;
        let since = restarted.elapsed();
        (lag.events_behind == 0 || lag.seconds_behind < since.as_secs_f64()).then_some(since)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;
    let (missing, bus) = settle_and_check(&cluster, &result.acked).await?;
    let drain_s = drain.map(|d| d.as_secs_f64());
    let mut figures = vec![
        ("outage_s", json!(outage.as_secs_f64())),
        ("relay_max_backoff_s", json!(backoff)),
        ("ok_during_outage", json!(during.ok)),
        ("failed_during_outage", json!(during.failed())),
        ("backlog_at_restart", json!(backlog)),
        ("drain_s", json!(drain_s)),
        ("commands_ok", json!(result.totals.ok)),
        ("acked_missing_in_store", json!(missing)),
    ];
    figures.extend(bus_figures(&bus));
    report("R2", scale, &figures);
    ensure!(during.ok > 0, "no command succeeded during the outage");
    ensure!(
        during.failed() == 0,
        "{} commands failed during the outage: {during:?}",
        during.failed()
    );
    ensure!(backlog > 0, "no backlog built up: the outage did not bite");
    ensure!(
        drain_s.is_some_and(|d| d <= 10.0),
        "the backlog did not drain within 10 s: {drain_s:?}"
    );
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(bus.is_exact(), "the bus differs from the store: {bus:?}");
    Ok(())
}

/// R3: Postgres is stopped and restarted under load. Meanwhile requests get 503 with the JSON
/// error body (never a 500, never a dropped connection); afterwards every replica serves
/// commands again within 5 s, without a restart.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r3(scale: Scale) -> anyhow::Result<()> {
    let outage = scale.secs(7.0, 15.0);
    let mut pg = PrivatePostgres::start()?;
    let mut spec = ClusterSpec::new(2);
    spec.admin_url = Some(pg.url("postgres"));
    let mut cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let load = Load::start(cluster.urls(), 4);
    tokio::time::sleep(scale.secs(2.0, 5.0)).await;

    let before = load.snapshot();
    pg.stop("fast")?;
    tokio::time::sleep(outage).await;
    let during = load.snapshot().since(&before);
    pg.restart()?;
    let restarted = Instant::now();
    // Recovered: each replica answers a command with a 2xx again.
    let client = load::client();
    let probe = load::Counters::default();
    let mut recovery = Duration::ZERO;
    for url in cluster.urls() {
        let took = poll_until(Duration::from_secs(30), || async {
            load::post(
                &client,
                &probe,
                &url,
                "/api/v1/orders",
                &crate::order_body(),
            )
            .await
            .map(|_| restarted.elapsed())
        })
        .await;
        recovery = recovery.max(took.unwrap_or(Duration::MAX));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = load.stop().await;
    let crashed = cluster
        .replicas
        .iter_mut()
        .map(|r| r.starts() != 1 || !r.is_running())
        .filter(|&crashed| crashed)
        .count();
    let (missing, bus) = settle_and_check(&cluster, &result.acked).await?;
    let recovery_s = (recovery != Duration::MAX).then_some(recovery.as_secs_f64());
    let mut figures = vec![
        ("outage_s", json!(outage.as_secs_f64())),
        ("during_503_json", json!(during.unavailable)),
        ("during_500", json!(during.internal)),
        ("during_other_5xx", json!(during.other_5xx)),
        ("during_no_answer", json!(during.transport)),
        ("during_ok", json!(during.ok)),
        ("recovery_s", json!(recovery_s)),
        ("crashed_replicas", json!(crashed)),
        ("commands_ok", json!(result.totals.ok)),
        ("acked_missing_in_store", json!(missing)),
    ];
    figures.extend(bus_figures(&bus));
    report("R3", scale, &figures);
    if during.internal + during.other_5xx > 0 {
        eprintln!("{}", cluster.replicas[0].log_tail(40));
    }
    ensure!(
        during.unavailable > 0,
        "no 503 during the outage: {during:?}"
    );
    ensure!(
        during.internal == 0 && during.other_5xx == 0 && during.transport == 0,
        "answers other than 503 during the outage: {during:?}"
    );
    ensure!(crashed == 0, "{crashed} replicas crashed");
    ensure!(
        recovery_s.is_some_and(|r| r <= 5.0),
        "not recovered within 5 s: {recovery_s:?}"
    );
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(bus.is_exact(), "the bus differs from the store: {bus:?}");
    Ok(())
}

/// Sends `n` confirms of `order` at once (released together by a barrier), spread over the
/// replicas; `intent(i)` gives each its payment intent. Returns the count per status.
async fn concurrent_confirms(
    urls: &[String],
    order: Uuid,
    total: i64,
    n: usize,
    intent: impl Fn(usize) -> String,
) -> BTreeMap<u16, usize> {
    let client = load::client();
    let barrier = Arc::new(Barrier::new(n));
    let path = format!("/api/v1/orders/{order}/confirm");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, barrier) = (client.clone(), barrier.clone());
            let url = format!("{}{path}", urls[i % urls.len()]);
            let headers = crate::v1_headers("payment-service", "POST", &path);
            let body = json!({"paymentIntentId": intent(i), "amountCents": total});
            tokio::spawn(async move {
                let mut req = client.post(url).header("x-tenant-id", "soak").json(&body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                barrier.wait().await;
                req.send().await.map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap_or(0)).or_default() += 1;
    }
    statuses
}

/// R6: 100 concurrent confirms of one order across three replicas give exactly one
/// `OrderConfirmed`, both when they repeat one payment intent (all succeed, idempotently) and
/// when each brings its own (one wins, the rest are refused with 409).
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r6(scale: Scale) -> anyhow::Result<()> {
    let n = 100;
    let cluster = Cluster::start(ClusterSpec::new(3).with("DB_MAX_CONNECTIONS", 10)).await?;
    let urls = cluster.urls();
    let client = load::client();
    let counters = load::Counters::default();
    let create = || async {
        let answer = load::post(
            &client,
            &counters,
            &urls[0],
            "/api/v1/orders",
            &crate::order_body(),
        )
        .await
        .ok_or_else(|| anyhow::anyhow!("create failed"))?;
        let id = Uuid::parse_str(answer["order"]["id"].as_str().unwrap_or_default())?;
        anyhow::Ok((
            id,
            answer["order"]["totalCents"].as_i64().unwrap_or_default(),
        ))
    };
    let (same, total) = create().await?;
    let (distinct, _) = create().await?;
    let same_statuses = concurrent_confirms(&urls, same, total, n, |_| "pi_same".into()).await;
    let distinct_statuses =
        concurrent_confirms(&urls, distinct, total, n, |i| format!("pi_{i}")).await;
    let same_confirmed = verify::confirmed_events(&cluster.pool, same).await?;
    let distinct_confirmed = verify::confirmed_events(&cluster.pool, distinct).await?;
    let count = |s: &BTreeMap<u16, usize>, f: fn(u16) -> bool| {
        s.iter()
            .filter(|(k, _)| f(**k))
            .map(|(_, v)| v)
            .sum::<usize>()
    };
    let statuses = |s: &BTreeMap<u16, usize>| {
        s.iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    report(
        "R6",
        scale,
        &[
            ("confirms", json!(n)),
            ("replicas", json!(urls.len())),
            ("same_intent_statuses", json!(statuses(&same_statuses))),
            ("same_intent_confirmed_events", json!(same_confirmed)),
            (
                "distinct_intent_statuses",
                json!(statuses(&distinct_statuses)),
            ),
            (
                "distinct_intent_confirmed_events",
                json!(distinct_confirmed),
            ),
        ],
    );
    ensure!(
        same_confirmed == 1,
        "{same_confirmed} OrderConfirmed (same intent)"
    );
    ensure!(
        distinct_confirmed == 1,
        "{distinct_confirmed} OrderConfirmed (distinct intents)"
    );
    for s in [&same_statuses, &distinct_statuses] {
        ensure!(
            count(s, |k| k >= 500 || k == 0) == 0,
            "server errors or dropped requests: {s:?}"
        );
    }
    ensure!(
        count(&same_statuses, |k| (200..300).contains(&k)) >= 1,
        "no confirm with the same intent succeeded: {same_statuses:?}"
    );
    ensure!(
        count(&distinct_statuses, |k| (200..300).contains(&k)) == 1,
        "not exactly one confirm with its own intent succeeded: {distinct_statuses:?}"
    );
    Ok(())
}

/// R7: duplicates and poison on the inbound subjects, consumed by two replicas sharing the
/// durable consumers. Each message id has one effect; poison is parked on the dead-letter
/// stream; a message parked because its order did not exist yet is redriven once the order
/// exists, and then takes effect.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r7(scale: Scale) -> anyhow::Result<()> {
    let orders = scale.pick(20, 200);
    let copies = 3;
    let mut spec = ClusterSpec::new(2)
        .with("INBOUND_BACKOFF_MS", 100)
        .with("INBOUND_MAX_DELIVER", 3)
        .with("INBOUND_POLL_MS", 50);
    spec.inbound = true;
    let cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = load::client();
    let counters = load::Counters::default();
    let urls = cluster.urls();
    let mut created = Vec::new();
    for i in 0..orders {
        let answer = load::post(
            &client,
            &counters,
            &urls[i % urls.len()],
            "/api/v1/orders",
            &crate::order_body(),
        )
        .await
        .ok_or_else(|| anyhow::anyhow!("create failed"))?;
        created.push((
            Uuid::parse_str(answer["order"]["id"].as_str().unwrap_or_default())?,
            answer["order"]["totalCents"].as_i64().unwrap_or_default(),
        ));
    }
    let publish = |subject: &str, body: Vec<u8>| {
        let mut headers = async_nats::HeaderMap::new();
        // A fresh broker-level id per copy, so JetStream stores every duplicate and the
        // service itself has to recognise them.
        headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string());
        let js = cluster.js.clone();
        let subject = format!("{}{subject}", cluster.prefix);
        async move {
            js.publish_with_headers(subject, headers, body.into())
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    let paid = |id: String, order: Uuid, total: i64| {
        json!({"id": id, "type": "payment.succeeded",
               "payload": {"orderId": order, "paymentIntentId": format!("pi_{order}"),
                           "amountCents": total, "currency": "USD"}})
        .to_string()
        .into_bytes()
    };
    for _ in 0..copies {
        for (order, total) in &created {
            publish(
                "payment.succeeded",
                paid(format!("msg-{order}"), *order, *total),
            )
            .await?;
        }
    }
    // Poison: not JSON, no id, nothing taken, and an order that does not exist yet (the
    // redrive case). An amount that does not match is not poison: it must not confirm the
    // order, and is rejected with its refund requested instead of parked.
    let mismatch_order = {
        let answer = load::post(
            &client,
            &counters,
            &urls[0],
            "/api/v1/orders",
            &crate::order_body(),
        )
        .await
        .ok_or_else(|| anyhow::anyhow!("create failed"))?;
        Uuid::parse_str(answer["order"]["id"].as_str().unwrap_or_default())?
    };
    let later = Uuid::new_v4();
    publish("payment.succeeded", b"{not json".to_vec()).await?;
    publish(
        "payment.succeeded",
        json!({"type": "payment.succeeded", "payload": {"orderId": created[1].0}})
            .to_string()
            .into_bytes(),
    )
    .await?;
    publish(
        "payment.succeeded",
        paid("msg-nothing".into(), Uuid::new_v4(), 0),
    )
    .await?;
    publish(
        "payment.succeeded",
        paid("msg-mismatch".into(), mismatch_order, 1),
    )
    .await?;
    publish("payment.succeeded", paid("msg-later".into(), later, 10_370)).await?;
    let poison = 4;

    let parked = || async {
        let out = cluster.cli(&["dlq", "list", "--json"]).await.ok()?;
        Some(
            out.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>(),
        )
    };
    let all_confirmed = poll_until(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT aggregate_id) FROM events WHERE event_type = 'OrderConfirmed'",
        )
        .fetch_one(&cluster.pool)
        .await
        .ok()?;
        (n as usize >= orders).then_some(())
    })
    .await
    .is_some();
    let parked_now = poll_until(Duration::from_secs(60), || async {
        let list = parked().await?;
        (list.len() >= poison).then_some(list)
    })
    .await
    .unwrap_or_default();
    // Every delivery handled (acked or parked): only then can a double effect no longer
    // appear.
    let durable = order_bus::inbound::Family::Payment.durable_name();
    let drained = poll_until(Duration::from_secs(60), || async {
        let stream = cluster.js.get_stream(&cluster.stream).await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&durable).await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .is_some();
    let mut effects = 0;
    let mut doubled = 0;
    for (order, _) in &created {
        let n = verify::confirmed_events(&cluster.pool, *order).await?;
        effects += n;
        doubled += usize::from(n > 1);
    }
    let mismatch_confirmed = verify::confirmed_events(&cluster.pool, mismatch_order).await?;

    // Redrive: the order now exists, so its parked payment takes effect.
    let store = order_api::app::store::OrderStore::new(cluster.pool.clone());
    create_with_id(&store, later).await?;
    let redrive = cluster
        .cli(&["dlq", "redrive", "--order", &later.to_string()])
        .await?;
    let redriven = poll_until(Duration::from_secs(30), || async {
        let n = verify::confirmed_events(&cluster.pool, later).await.ok()?;
        (n == 1).then_some(())
    })
    .await
    .is_some();
    let parked_after = parked().await.unwrap_or_default();
    report(
        "R7",
        scale,
        &[
            ("orders", json!(orders)),
            ("deliveries", json!(orders * copies)),
            ("effects", json!(effects)),
            ("doubled", json!(doubled)),
            ("poison_sent", json!(poison)),
            ("parked", json!(parked_now.len())),
            ("mismatch_confirmed", json!(mismatch_confirmed)),
            ("redriven_effect", json!(redriven)),
            ("parked_after_redrive", json!(parked_after.len())),
        ],
    );
    ensure!(drained, "the payment consumer did not drain");
    ensure!(
        all_confirmed,
        "not every order was confirmed by its payment message"
    );
    ensure!(
        effects as usize == orders && doubled == 0,
        "{effects} effects for {orders} ids"
    );
    ensure!(
        parked_now.len() == poison,
        "{} parked, {poison} poison sent: {parked_now:?}",
        parked_now.len()
    );
    ensure!(
        mismatch_confirmed == 0,
        "a mismatched amount confirmed an order"
    );
    ensure!(redriven, "the redriven message had no effect ({redrive})");
    ensure!(
        parked_after.len() == poison - 1,
        "{} still parked after the redrive",
        parked_after.len()
    );
    Ok(())
}

/// Creates order `id` through the command path (for a message that arrived before its order).
async fn create_with_id(store: &order_api::app::store::OrderStore, id: Uuid) -> anyhow::Result<()> {
    use order_domain::commands::CreateOrder;
    use order_domain::values::{Currency, NewLineItem};
    use order_domain::OrderCommand;
    let event_id = Uuid::new_v4();
    let item = Uuid::new_v4();
    let now = chrono::Utc::now();
    store
        .execute(
            id,
            &std::collections::HashMap::new(),
            |_| Ok(()),
            || {
                OrderCommand::CreateOrder(CreateOrder {
                    order_id: id,
                    order_number: format!("ORD-{}", &id.simple().to_string()[..8]),
                    tenant_id: "soak".into(),
                    user_id: "user-1".into(),
                    event_id,
                    currency: Currency::parse("USD").expect("USD is a currency"),
                    items: vec![NewLineItem {
                        id: item,
                        ticket_type_id: event_id,
                        quantity: 2,
                        unit_price_cents: 5_000,
                    }],
                    fees_cents: 250,
                    tax_cents: 120,
                    expires_at: now + chrono::Duration::minutes(15),
                    event_starts_at: None,
                    now,
                })
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("create {id}: {e}"))?;
    Ok(())
}

/// The replica leading `lock`, once one does.
async fn find_leader(cluster: &Cluster, lock: &str) -> anyhow::Result<usize> {
    poll_until(Duration::from_secs(30), || leader_of(cluster, lock))
        .await
        .ok_or_else(|| anyhow::anyhow!("no replica leads {lock}"))
}

/// How long after `killed` another replica than `victim` leads `lock`.
async fn takeover(
    cluster: &Cluster,
    lock: &str,
    victim: usize,
    killed: Instant,
) -> anyhow::Result<Duration> {
    poll_until(Duration::from_secs(30), || async {
        leader_of(cluster, lock).await.filter(|&i| i != victim)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("nobody took {lock} over within 30 s"))?;
    Ok(killed.elapsed())
}

/// R8: three replicas; kill the relay leader, then the leader of the expiration job. Another
/// replica takes each over within 5 s (for the relay, measured to its first publish), and the
/// bus still has every event once and in order per order.
///
/// # Errors
/// When a figure misses or the world cannot be set up.
pub async fn r8(scale: Scale) -> anyhow::Result<()> {
    let mut spec = ClusterSpec::new(3).with("JOB_EXPIRATION_INTERVAL_SECS", 1);
    spec.jobs = true;
    let mut cluster = Cluster::start(spec).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let load = Load::start(cluster.urls(), 4);
    tokio::time::sleep(scale.secs(2.0, 10.0)).await;

    let relay_victim = find_leader(&cluster, RELAY_CONSUMER).await?;
    cluster.replicas[relay_victim].kill();
    let killed = Instant::now();
    let at_kill = stream_messages(&cluster).await?;
    let relay_lock = takeover(&cluster, RELAY_CONSUMER, relay_victim, killed).await?;
    // The first publish after the kill that only a new leader can have made: the stream grew
    // past its size at the kill, and another replica holds the lock.
    let first_publish = poll_until(Duration::from_secs(30), || async {
        (stream_messages(&cluster).await.ok()? > at_kill).then(|| killed.elapsed())
    })
    .await
    .map(|d| d.max(relay_lock).as_secs_f64());
    cluster.replicas[relay_victim].start().await?;
    tokio::time::sleep(scale.secs(2.0, 10.0)).await;

    let job_lock = "job:expiration";
    let job_victim = find_leader(&cluster, job_lock).await?;
    cluster.replicas[job_victim].kill();
    let job_takeover = takeover(&cluster, job_lock, job_victim, Instant::now()).await?;
    cluster.replicas[job_victim].start().await?;
    tokio::time::sleep(scale.secs(2.0, 10.0)).await;
    let result = load.stop().await;
    let (missing, bus) = settle_and_check(&cluster, &result.acked).await?;
    let mut figures = vec![
        ("relay_lock_takeover_s", json!(relay_lock.as_secs_f64())),
        ("relay_first_publish_s", json!(first_publish)),
        ("job_takeover_s", json!(job_takeover.as_secs_f64())),
        ("commands_ok", json!(result.totals.ok)),
        ("acked_missing_in_store", json!(missing)),
    ];
    figures.extend(bus_figures(&bus));
    report("R8", scale, &figures);
    ensure!(
        first_publish.is_some_and(|s| s <= 5.0),
        "the relay took over after {first_publish:?} s"
    );
    ensure!(
        job_takeover <= Duration::from_secs(5),
        "the job took over after {job_takeover:?}"
    );
    ensure!(missing == 0, "{missing} acknowledged commands lost");
    ensure!(bus.is_exact(), "the bus differs from the store: {bus:?}");
    Ok(())
}

/// R9: the commit-safe feed with 24 writers committing after random delays: the fenced reader
/// misses nothing and reads every order in sequence order.
///
/// # Errors
/// When a figure misses or the database cannot be set up.
pub async fn r9(scale: Scale) -> anyhow::Result<()> {
    let writers = 24;
    let duration = scale.secs(5.0, 60.0);
    let cluster = Cluster::start(ClusterSpec::new(0)).await?;
    let run = super::feed::run(&cluster.db_url, writers, duration, 15).await?;
    report(
        "R9",
        scale,
        &[
            ("writers", json!(writers)),
            ("duration_s", json!(duration.as_secs_f64())),
            ("written", json!(run.written)),
            ("read", json!(run.read)),
            ("missed", json!(run.missed)),
            ("doubled", json!(run.doubled)),
            ("out_of_order", json!(run.out_of_order)),
            ("settle_s", json!(run.settle.as_secs_f64())),
        ],
    );
    ensure!(run.written > 0, "nothing was written");
    ensure!(
        run.missed == 0 && run.doubled == 0 && run.out_of_order == 0 && run.read == run.written,
        "the feed failed: {run:?}"
    );
    Ok(())
}
