//! `just bench [quick] [B6 ...]`: every speed goal as a ratio against this machine's own limits,
//! measured in the same run (method in docs/benchmarks.md). Prints a table and writes
//! `bench-results/latest.json`.
//! Naming goals (`B6`, `B4`...) runs only the phases that measure them, for profiling one.
//!
//! Each ratio is the median over A-B-A-B rounds (baseline, then service, alternating), and the
//! table shows the rounds' spread. Everything runs on loopback and stops by itself.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use order_tests::bench::flow::{read_model_lag, subscriber_lag};
use order_tests::bench::load::{closed_loop, open_loop, Target};
use order_tests::bench::pgbench::{self, PgbenchRun};
use order_tests::bench::relay::drain_round;
use order_tests::bench::replay::ReplayBench;
use order_tests::bench::service::ServiceProcess;
use order_tests::bench::stats::{median, spread};
use order_tests::order_body;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

struct Plan {
    seconds: u32,
    rounds: usize,
    clients: usize,
    open_loop_rate: u32,
    /// Backlog the relay drains per B6 round.
    backlog: usize,
    /// Events B4 rebuilds per round.
    replay_events: u64,
}

struct Row {
    id: &'static str,
    what: String,
    ratios: Vec<f64>,
    goal: &'static str,
    pass: fn(f64) -> bool,
}

/// Orders the service creates before round 1, as many as the baselines' table starts with.
const WARM_UP_ORDERS: u64 = 10_000;
/// How long the warm-up may take before the run stops as broken.
const WARM_UP_LIMIT: Duration = Duration::from_secs(120);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    order_tests::install_crypto();
    let quick = std::env::args().any(|a| a == "quick");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| {
            a.len() >= 2 && a.starts_with('B') && a[1..].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    let wants = |ids: &[&str]| only.is_empty() || ids.iter().any(|id| only.iter().any(|o| o == id));
    let service_phase = wants(&["B1", "B2", "B3", "B5", "B7", "B8", "B9"]);
    let plan = if quick {
        Plan {
            seconds: 3,
            rounds: 3,
            clients: 32,
            open_loop_rate: 50,
            backlog: 20_000,
            replay_events: 100_000,
        }
    } else {
        Plan {
            seconds: 8,
            rounds: 3,
            clients: 32,
            open_loop_rate: 50,
            backlog: 100_000,
            replay_events: 1_000_000,
        }
    };
    let base = std::env::var("BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    // BENCH_DATABASE: another name, so that two runs on one Postgres do not drop each other's.
    let db_name = std::env::var("BENCH_DATABASE").unwrap_or_else(|_| "order_bench".into());
    anyhow::ensure!(
        !db_name.is_empty()
            && db_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "BENCH_DATABASE must be lower-case letters, digits and _"
    );
    let db_url = format!("{base}/{db_name}");
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let work = std::env::temp_dir().join(format!("order-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // A fresh database, migrated like production, plus the baseline's table.
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    order_api::db::create_and_migrate(&db_url).await?;
    let pool = sqlx::PgPool::connect(&db_url).await?;
    sqlx::raw_sql(pgbench::SETUP_SQL).execute(&pool).await?;

    let binary = service_binary()?;
    let stream = format!("BENCH_{}", std::process::id());
    let prefix = format!("bench{}.", std::process::id());
    let env = vec![
        ("DATABASE_URL", db_url.clone()),
        ("NATS_URL", nats_url.clone()),
        ("NATS_STREAM", stream.clone()),
        ("NATS_SUBJECT_PREFIX", prefix.clone()),
        ("APP_ENV", "development".to_owned()),
        // The bench has no peers publishing to it: no inbound consumers on the shared broker.
        ("INBOUND_ENABLED", "false".to_owned()),
    ];
    let service = ServiceProcess::start(&binary, &env, &work.join("service.log")).await?;
    let url = service.base_url.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = service.rss_mib();

    let d = Duration::from_secs(u64::from(plan.seconds));
    let create: Arc<dyn Fn(u64) -> Target + Send + Sync> = Arc::new(|_| Target {
        method: Method::POST,
        path: "/api/v1/orders".into(),
        body: Some(order_body()),
        signed_as: Some("api-gateway".into()),
        tenant: Some("bench".into()),
        v2: false,
    });
    let unsigned_live: Arc<dyn Fn(u64) -> Target + Send + Sync> = Arc::new(|_| Target {
        method: Method::GET,
        path: "/health/live".into(),
        body: None,
        signed_as: None,
        tenant: None,
        v2: false,
    });

    let signed_jobs: Arc<dyn Fn(u64) -> Target + Send + Sync> = Arc::new(|_| Target {
        method: Method::GET,
        path: "/internal/jobs".into(),
        body: None,
        signed_as: Some("api-gateway".into()),
        tenant: None,
        v2: false,
    });

    // Warm-up: the baselines' table starts with 10,000 rows (pgbench::SETUP_SQL), so the
    // service's tables start with as many orders, created through the service, and with the
    // statistics that autovacuum gives a database within its first minute. Without it, round 1
    // measures a fresh database's first minute, in which statements prepared while `events`
    // was nearly empty keep plans made for an empty table (docs/benchmarks.md, "Warm-up").
    if service_phase {
        let started = std::time::Instant::now();
        let (mut warmed, mut failed) = (0, 0);
        while warmed < WARM_UP_ORDERS {
            anyhow::ensure!(
                started.elapsed() < WARM_UP_LIMIT,
                "warm-up: {warmed} creates in {WARM_UP_LIMIT:?} ({failed} failed)"
            );
            let run = closed_loop(&url, 16, Duration::from_secs(1), create.clone()).await;
            (warmed, failed) = (warmed + run.ok, failed + run.errors);
        }
        anyhow::ensure!(failed == 0, "warm-up: {failed} creates failed");
        // The relay and the projector done with the warm-up's events, so that round 1's
        // baseline does not share the machine with them.
        loop {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM feed_checkpoints
                  WHERE global_position < (SELECT max(global_position) FROM events)",
            )
            .fetch_one(&pool)
            .await?;
            if behind == 0 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < WARM_UP_LIMIT,
                "warm-up: the feed's readers did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // What autovacuum does within a database's first minute, so that it does not do it
        // during round 1.
        sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
        eprintln!(
            "warm-up: {warmed} orders created, the feed caught up, tables vacuumed and analyzed \
             ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let warm_up_rss = service.rss_mib().1;

    let mut b1 = vec![];
    let mut b1_one = vec![];
    let mut b2_p50 = vec![];
    let mut b2_p99 = vec![];
    let mut b2_closed = vec![];
    let mut b3 = vec![];
    let mut b8_live = vec![];
    let mut b8_read = vec![];
    let mut b8_jobs = vec![];
    let mut b5 = vec![];
    let mut b7 = vec![];
    let mut b7_rate = f64::NAN;
    // Per round: lag p99, its part up to JetStream, its part after, and the command p99 at
    // that rate (what the lag's tail is compared with in the README).
    let mut b7_parts: [Vec<f64>; 4] = Default::default();
    let mut command_p50 = f64::NAN;
    // The 32-client create rate of the round, for B7's default rate.
    let mut create_rate = 2_000.0;
    let mut raw = vec![];
    for round in 1..=plan.rounds {
        if !service_phase {
            break;
        }
        eprintln!("round {round}/{}", plan.rounds);
        let mut row = serde_json::Map::new();
        row.insert("round".into(), json!(round));
        // B1 and B3 (and B9's peak): create throughput at 32 and 1 clients against pgbench
        // single-row inserts.
        if wants(&["B1", "B3", "B9"]) {
            let pg32 = pgbench::run(
                &db_url,
                pgbench::INSERT,
                plan.clients as u32,
                plan.seconds,
                &work,
            )?;
            let svc32 = closed_loop(&url, plan.clients, d, create.clone()).await;
            let pg1 = pgbench::run(&db_url, pgbench::INSERT, 1, plan.seconds, &work)?;
            let svc1 = closed_loop(&url, 1, d, create.clone()).await;
            b1.push(svc32.per_second / pg32.tps);
            b1_one.push(svc1.per_second / pg1.tps);
            b3.push((svc32.per_second / svc1.per_second) / (pg32.tps / pg1.tps));
            create_rate = svc32.per_second;
            extend(
                &mut row,
                json!({
                    "pgbench_insert_tps_32": pg32.tps, "service_create_per_s_32": svc32.per_second,
                    "service_errors_32": svc32.errors,
                    "pgbench_insert_tps_1": pg1.tps, "service_create_per_s_1": svc1.per_second,
                }),
            );
        }
        // B9 is the high-water mark over the whole run: it is also kept after each phase, so
        // that the phase that set it can be named.
        row.insert("rss_peak_mib_after_b1".into(), json!(service.rss_mib().1));
        // B2: latency at low fixed load (open loop) against pgbench's read-then-insert at the
        // same rate, one client. The same transactions back to back (closed loop) are measured
        // too and reported beside it: that is the latency of a machine kept busy, which an open
        // loop at 50/s never sees, so it is not the goal's baseline.
        if wants(&["B2"]) {
            let pg_lat: PgbenchRun = pgbench::run_at_rate(
                &db_url,
                pgbench::READ_THEN_INSERT,
                plan.open_loop_rate,
                plan.seconds,
                &work,
            )?;
            let pg_closed: PgbenchRun =
                pgbench::run(&db_url, pgbench::READ_THEN_INSERT, 1, plan.seconds, &work)?;
            let svc_lat = open_loop(&url, plan.open_loop_rate, d, create.clone()).await;
            b2_p50.push(svc_lat.latencies.ms(0.5) / pg_lat.latencies.ms(0.5));
            b2_p99.push(svc_lat.latencies.ms(0.99) / pg_lat.latencies.ms(0.99));
            b2_closed.push(svc_lat.latencies.ms(0.5) / pg_closed.latencies.ms(0.5));
            command_p50 = svc_lat.latencies.ms(0.5);
            extend(
                &mut row,
                json!({
                    "pgbench_read_insert_p50_ms": pg_lat.latencies.ms(0.5), "pgbench_read_insert_p99_ms": pg_lat.latencies.ms(0.99),
                    "pgbench_read_insert_closed_loop_p50_ms": pg_closed.latencies.ms(0.5), "pgbench_read_insert_closed_loop_p99_ms": pg_closed.latencies.ms(0.99),
                    "service_open_loop_p50_ms": svc_lat.latencies.ms(0.5), "service_open_loop_p99_ms": svc_lat.latencies.ms(0.99),
                    "service_open_loop_errors": svc_lat.errors,
                    "open_loop_schedule_lag_p99_ms": svc_lat.schedule_lag.ms(0.99),
                }),
            );
        }
        row.insert("rss_peak_mib_after_b2".into(), json!(service.rss_mib().1));
        if wants(&["B8"]) {
            // B8 (second half, unsigned side): the no-DB route, for the signed/unsigned ratio.
            let live = closed_loop(&url, plan.clients, d, unsigned_live.clone()).await;
            b8_live.push(live.per_second);
            let jobs = closed_loop(&url, plan.clients, d, signed_jobs.clone()).await;
            b8_jobs.push(jobs.per_second / live.per_second);
            // B8 (first half): signed reads of orders ÷ pgbench doing the SQL a signed read
            // needs (its nonce insert, then the PK select).
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT order_id::text FROM order_read ORDER BY order_id LIMIT 5000",
            )
            .fetch_all(&pool)
            .await?;
            anyhow::ensure!(!ids.is_empty(), "no orders in the read model to read back");
            let ids = Arc::new(ids);
            let read_by_id: Arc<dyn Fn(u64) -> Target + Send + Sync> = Arc::new(move |i| Target {
                method: Method::GET,
                path: format!("/internal/orders/{}", ids[(i as usize) % ids.len()]),
                body: None,
                signed_as: Some("payment-service".into()),
                tenant: Some("bench".into()),
                v2: false,
            });
            let pg_pk = pgbench::run(
                &db_url,
                pgbench::NONCE_THEN_PK_SELECT,
                plan.clients as u32,
                plan.seconds,
                &work,
            )?;
            let reads = closed_loop(&url, plan.clients, d, read_by_id).await;
            b8_read.push(reads.per_second / pg_pk.tps);
            extend(
                &mut row,
                json!({
                    "unsigned_live_per_s": live.per_second,
                    "signed_jobs_per_s": jobs.per_second, "signed_jobs_errors": jobs.errors,
                    "pgbench_nonce_pk_select_tps_32": pg_pk.tps, "signed_order_reads_per_s_32": reads.per_second,
                    "signed_order_read_errors": reads.errors, "signed_order_read_p50_ms": reads.latencies.ms(0.5),
                }),
            );
        }
        row.insert("rss_peak_mib_after_b8".into(), json!(service.rss_mib().1));
        if wants(&["B5", "B7"]) {
            // B5: read-model lag after each create at low fixed load ÷ that run's command p50.
            let lag = read_model_lag(
                &url,
                &db_url,
                f64::from(plan.open_loop_rate),
                d,
                Duration::from_millis(1),
            )
            .await?;
            b5.push(lag.lag.ms(0.99) / lag.commands.ms(0.5));
            // B7: commit-to-subscriber latency at half this round's create rate (1,000/s when
            // B1 did not run) ÷ low-load command p50. BENCH_B7_RATE fixes the rate instead, so
            // that two builds are compared at equal load.
            b7_rate = std::env::var("BENCH_B7_RATE")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or((create_rate / 2.0).clamp(10.0, 1_000.0));
            let sub = subscriber_lag(&url, &nats_url, &stream, &prefix, b7_rate, d).await?;
            b7.push(sub.lag.ms(0.99) / lag.commands.ms(0.5));
            for (part, value) in b7_parts.iter_mut().zip([
                sub.lag.ms(0.99),
                sub.to_stream.ms(0.99),
                sub.from_stream.ms(0.99),
                sub.commands.ms(0.99),
            ]) {
                part.push(value);
            }
            extend(
                &mut row,
                json!({
                    "b5_rate_per_s": plan.open_loop_rate, "b5_command_p50_ms": lag.commands.ms(0.5),
                    "b5_lag_p50_ms": lag.lag.ms(0.5), "b5_lag_p99_ms": lag.lag.ms(0.99), "b5_samples": lag.lag.count(),
                    "b5_missing": lag.missing, "b5_errors": lag.errors,
                    "b7_rate_per_s": b7_rate, "b7_command_p50_ms": sub.commands.ms(0.5),
                    "b7_command_p99_ms": sub.commands.ms(0.99),
                    "b7_lag_p50_ms": sub.lag.ms(0.5), "b7_lag_p99_ms": sub.lag.ms(0.99), "b7_samples": sub.lag.count(),
                    "b7_missing": sub.missing, "b7_early": sub.early, "b7_errors": sub.errors,
                    "b7_to_stream_p50_ms": sub.to_stream.ms(0.5), "b7_to_stream_p99_ms": sub.to_stream.ms(0.99),
                    "b7_from_stream_p50_ms": sub.from_stream.ms(0.5), "b7_from_stream_p99_ms": sub.from_stream.ms(0.99),
                }),
            );
        }
        row.insert(
            "rss_peak_mib_after_b5_b7".into(),
            json!(service.rss_mib().1),
        );
        raw.push(Value::Object(row));
    }
    if !service_phase && wants(&["B6"]) {
        // B6 copies a stored OrderCreated: make one when the service phase did not.
        closed_loop(&url, 1, Duration::from_millis(200), create.clone()).await;
    }
    // B10: backfilling the feed's history through the paged read and through republish, each
    // ÷ the feed's raw read rate, over the events the phases above wrote (service running).
    let mut b10_http = vec![];
    let mut b10_republish = vec![];
    let mut b10_raw = vec![];
    for round in 1..=plan.rounds {
        if !wants(&["B10"]) {
            break;
        }
        if round == 1 && !service_phase {
            // Something to backfill when the service phase did not write it.
            closed_loop(&url, 8, Duration::from_secs(2), create.clone()).await;
        }
        let tag = format!("BENCH_{}_B10_{round}", std::process::id());
        let r = order_tests::bench::backfill::round(&pool, &url, &nats_url, &tag).await?;
        eprintln!(
            "B10 round {round}/{}: {} events; raw {:.0}/s, HTTP pages {:.0}/s, republish {:.0}/s",
            plan.rounds, r.events, r.raw_per_second, r.http_per_second, r.republish_per_second
        );
        b10_http.push(r.http_per_second / r.raw_per_second);
        b10_republish.push(r.republish_per_second / r.raw_per_second);
        b10_raw.push(
            json!({"round": round, "events": r.events, "raw_read_per_s": r.raw_per_second,
            "http_pages_per_s": r.http_per_second, "republish_per_s": r.republish_per_second,
            "rss_peak_mib_after": service.rss_mib().1}),
        );
    }
    let (_, peak_rss) = service.rss_mib();
    drop(service);

    // B6: the relay drains a backlog in-process (the service is stopped, so nothing competes).
    let mut b6 = vec![];
    let mut b6_raw = vec![];
    for round in 1..=plan.rounds {
        if !wants(&["B6"]) {
            break;
        }
        eprintln!(
            "B6 round {round}/{}: relay drain of {} events",
            plan.rounds, plan.backlog
        );
        let tag = format!("BENCH_{}_B6_{round}", std::process::id());
        let r = drain_round(&pool, &nats_url, &tag, plan.backlog).await?;
        b6.push(r.relay_per_second / r.raw_per_second);
        b6_raw.push(json!({"round": round, "events": r.events, "relay_events_per_s": r.relay_per_second, "raw_publish_per_s": r.raw_per_second}));
    }

    // B4: replay rebuilds the orders projection in-process (the service is stopped, so nothing
    // competes), against a set-based SQL rebuild of the same tables, in a database of its own.
    let mut b4 = vec![];
    let mut b4_rate = vec![];
    let mut b4_baseline_rate = vec![];
    let mut b4_raw = vec![];
    let mut b4_events = plan.replay_events;
    let mut b4_generate_seconds = f64::NAN;
    if wants(&["B4"]) {
        eprintln!("B4: generating {} events", plan.replay_events);
        let (bench, generated) = ReplayBench::setup(&base, plan.replay_events).await?;
        b4_events = bench.events();
        b4_generate_seconds = generated;
        eprintln!("B4: generated in {generated:.1} s");
        for round in 1..=plan.rounds {
            eprintln!(
                "B4 round {round}/{}: SQL rebuild, then replay, of {} events",
                plan.rounds, b4_events
            );
            let r = bench.round().await?;
            eprintln!(
                "B4 round {round}: SQL {:.0} events/s, replay {:.0} events/s (build {:.1} s, then {:.1} s to swap)",
                r.baseline_per_second(),
                r.rebuild_per_second(),
                r.build_seconds,
                r.rebuild_seconds - r.build_seconds
            );
            b4.push(r.rebuild_per_second() / r.baseline_per_second());
            b4_rate.push(r.rebuild_per_second());
            b4_baseline_rate.push(r.baseline_per_second());
            b4_raw.push(json!({
                "round": round, "events": r.events, "rows": r.rows,
                "baseline_seconds": r.baseline_seconds, "baseline_events_per_s": r.baseline_per_second(),
                "rebuild_seconds": r.rebuild_seconds, "rebuild_events_per_s": r.rebuild_per_second(),
                "build_seconds": r.build_seconds, "build_events_per_s": r.build_per_second(),
            }));
        }
        bench.teardown().await?;
    }

    let rows = vec![
        Row {
            id: "B1",
            what: "creates/s (32 clients, hmac-v1) ÷ pgbench insert tps".into(),
            ratios: b1,
            goal: "≥ 0.5",
            pass: |r| r >= 0.5,
        },
        Row {
            id: "B1",
            what: "creates/s (1 client, hmac-v1) ÷ pgbench insert tps (1 client)".into(),
            ratios: b1_one,
            goal: "≥ 0.35",
            pass: |r| r >= 0.35,
        },
        Row {
            id: "B2",
            what: "command p50 (open loop) ÷ pgbench read-then-insert p50 (same rate)".into(),
            ratios: b2_p50,
            goal: "≤ 2",
            pass: |r| r <= 2.0,
        },
        Row {
            id: "B2",
            what: "command p99 (open loop) ÷ pgbench read-then-insert p99 (same rate)".into(),
            ratios: b2_p99,
            goal: "≤ 2",
            pass: |r| r <= 2.0,
        },
        Row {
            id: "B3",
            what: "(creates/s at 32 ÷ at 1) ÷ (pgbench at 32 ÷ at 1)".into(),
            ratios: b3,
            goal: "≥ 0.8",
            pass: |r| r >= 0.8,
        },
        Row {
            id: "B4",
            what: format!("replay rebuild events/s ({b4_events} events) ÷ set-based SQL rebuild"),
            ratios: b4.clone(),
            goal: "≥ 0.5",
            pass: |r| r >= 0.5,
        },
        Row {
            id: "B5",
            what: format!(
                "read-model lag p99 ÷ command p50 ({}/s creates)",
                plan.open_loop_rate
            ),
            ratios: b5,
            goal: "≤ 3",
            pass: |r| r <= 3.0,
        },
        Row {
            id: "B6",
            what: format!(
                "relay drain events/s ({} backlog) ÷ raw pipelined publish",
                plan.backlog
            ),
            ratios: b6,
            goal: "≥ 0.7",
            pass: |r| r >= 0.7,
        },
        Row {
            id: "B7",
            what: format!("commit-to-subscriber p99 ({b7_rate:.0}/s) ÷ command p50"),
            ratios: b7,
            goal: "≤ 3",
            pass: |r| r <= 3.0,
        },
        Row {
            id: "B8",
            what: "signed GET /internal/orders/{id} req/s ÷ pgbench nonce+PK select tps".into(),
            ratios: b8_read,
            goal: "≥ 0.6",
            pass: |r| r >= 0.6,
        },
        Row {
            id: "B8",
            what: "signed GET /internal/jobs ÷ unsigned /health/live req/s".into(),
            ratios: b8_jobs,
            goal: "≥ 0.9",
            pass: |r| r >= 0.9,
        },
        Row {
            id: "B10",
            what: "backfill via GET /internal/events ÷ raw feed read, events/s".into(),
            ratios: b10_http,
            goal: "≥ 0.2",
            pass: |r| r >= 0.2,
        },
        Row {
            id: "B10",
            what: "backfill via republish ÷ raw feed read, events/s".into(),
            ratios: b10_republish,
            goal: "≥ 0.1",
            pass: |r| r >= 0.1,
        },
    ];
    let mut report = vec![];
    println!(
        "\n{:<4} {:<58} {:>8} {:>17} {:>7}",
        "id", "measure", "median", "spread", "goal"
    );
    for row in rows.iter().filter(|r| !r.ratios.is_empty()) {
        let m = median(&row.ratios);
        let (lo, hi) = spread(&row.ratios);
        let verdict = if (row.pass)(m) { "met" } else { "MISSED" };
        println!(
            "{:<4} {:<58} {:>8.3} {:>8.3}..{:<7.3} {:>7} {verdict}",
            row.id, row.what, m, lo, hi, row.goal
        );
        report.push(json!({"id": row.id, "measure": row.what, "median": m, "rounds": row.ratios, "goal": row.goal, "met": (row.pass)(m)}));
    }
    if service_phase {
        println!(
            "{:<4} {:<58} {:>8.1} MiB peak, {:.1} MiB idle {:>7} {}",
            "B9",
            "service RSS (peak over the run)",
            peak_rss,
            idle_rss,
            "≤ 40/20",
            if peak_rss <= 40.0 && idle_rss <= 20.0 {
                "met"
            } else {
                "MISSED"
            }
        );
        println!(
            "command p50 at low load: {command_p50:.2} ms; unsigned /health/live: {:.0} req/s (median)",
            median(&b8_live)
        );
        println!(
            "B2 p50 against pgbench's read-then-insert back to back (closed loop, not the goal's \
             baseline): {:.2} (median)",
            median(&b2_closed)
        );
        let [lag, to_stream, from_stream, commands] = b7_parts.each_ref().map(|v| median(v));
        println!(
            "B7 p99s (median of rounds): lag {lag:.1} ms; its part up to the stream {to_stream:.1} \
             ms, after it {from_stream:.1} ms; command p99 at the same rate {commands:.1} ms"
        );
    }

    if !b4.is_empty() {
        let rate = median(&b4_rate);
        let (lo, hi) = spread(&b4_rate);
        println!(
            "B4 replay: {rate:.0} events/s (spread {lo:.0}..{hi:.0}), SQL rebuild {:.0} events/s; \
             goal ≥ 50000 events/s {}",
            median(&b4_baseline_rate),
            if rate >= 50_000.0 { "met" } else { "MISSED" }
        );
    }

    let env_info = environment(&pool).await;
    let out = json!({
        "mode": if quick { "quick" } else { "full" },
        "seconds_per_measurement": plan.seconds,
        "rounds": plan.rounds,
        "environment": env_info,
        "results": report,
        "rss_mib": {"idle": idle_rss, "peak": peak_rss, "peak_after_warm_up": warm_up_rss},
        "raw": raw,
        "b6_raw": b6_raw,
        "b10_raw": b10_raw,
        "b4": {
            "events": b4_events,
            "generate_seconds": b4_generate_seconds,
            "rebuild_events_per_s": {"median": median(&b4_rate), "rounds": b4_rate},
            "baseline_events_per_s": {"median": median(&b4_baseline_rate), "rounds": b4_baseline_rate},
            "goal_events_per_s": 50_000,
            "rounds": b4_raw,
        },
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("latest.json"), serde_json::to_string_pretty(&out)?)?;
    println!("written: bench-results/latest.json");

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    if let Ok(client) = async_nats::connect(&nats_url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&stream)
            .await;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The release binary next to this benchmark's own executable (`target/release/`), or the one
/// `BENCH_SERVICE_BINARY` names (to compare two builds A-B on one machine).
fn service_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BENCH_SERVICE_BINARY") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("no target directory")?;
    let bin = dir.join("order-service");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p order-api` (just bench does)",
        bin.display()
    );
    Ok(bin)
}

/// What the figures were measured on.
async fn environment(pool: &sqlx::PgPool) -> Value {
    let sh = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mut pg = serde_json::Map::new();
    for setting in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
        "commit_delay",
    ] {
        let v: Option<String> = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
        pg.insert(setting.into(), json!(v));
    }
    let nats = ["nats-server", "/usr/sbin/nats-server"]
        .iter()
        .map(|b| sh(b, &["--version"]))
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "git_sha": sh("git", &["rev-parse", "--short", "HEAD"]),
        "postgres": pg,
        "nats_server": nats,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(str::trim),
        "memory": meminfo.lines().next(),
    })
}

/// Adds `fields` (an object) to a round's raw record.
fn extend(row: &mut serde_json::Map<String, Value>, fields: Value) {
    if let Value::Object(fields) = fields {
        row.extend(fields);
    }
}
