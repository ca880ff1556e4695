//! The reliability scenarios of docs/reliability.md (R1–R3, R6–R11) against real `order-service`
//! processes; the harness and the scenarios are in `order_tests::soak`.
//!
//! Here they run in their short form, as part of `just test`. `just soak` runs the same tests
//! with `SOAK=full`: the durations and counts. Each needs the binary built first
//! (`cargo build -p order-api --bin order-service`; both recipes do it).

use order_tests::soak::cluster::{Cluster, ClusterSpec};
use order_tests::soak::{scenarios, tag, Scale};
use sqlx::Connection;

async fn run(scenario: impl std::future::Future<Output = anyhow::Result<()>>) {
    if let Err(e) = scenario.await {
        panic!("{e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r1_kill_9_under_load_loses_nothing() {
    run(scenarios::r1(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r2_broker_outage_keeps_commands_and_drains() {
    run(scenarios::r2(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r3_database_outage_answers_503_and_recovers() {
    run(scenarios::r3(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r6_concurrent_confirms_confirm_once() {
    run(scenarios::r6(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r7_inbound_duplicates_and_poison() {
    run(scenarios::r7(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r8_leaders_fail_over_within_5_s() {
    run(scenarios::r8(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r9_feed_under_24_writers() {
    run(scenarios::r9(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r10_nats_cluster_node_loss() {
    run(order_tests::soak::topology::r10(Scale::from_env())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_r11_standby_reads() {
    run(order_tests::soak::topology::r11(Scale::from_env())).await;
}

/// A scenario whose start-up fails after it made its database (here NATS is unreachable)
/// removes it again, so a failed run leaves nothing on the shared servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_a_failed_start_leaves_no_database_behind() {
    let t = tag();
    let mut spec = ClusterSpec::new(1);
    spec.tag = Some(t.clone());
    // Nothing listens on port 1: the connection is refused at once.
    spec.nats_url = Some("nats://127.0.0.1:1".to_owned());
    let Err(err) = Cluster::start(spec).await else {
        panic!("start-up succeeded without NATS");
    };
    assert!(format!("{err:#}").contains("NATS"), "{err:#}");
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("Postgres");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(format!("soak_{t}"))
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(left, 0, "the database soak_{t} was left behind");
}
