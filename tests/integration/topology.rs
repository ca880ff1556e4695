//! The production topology on loopback: a three-node JetStream cluster started from
//! `deploy/nats/cluster.conf` (`order_tests::soak::nats_cluster`, and `scripts/nats-cluster.sh`
//! for people).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use order_bus::inbound::Family;
use order_tests::soak::cluster::{Cluster, ClusterSpec};
use order_tests::soak::nats_cluster::{placement, NatsCluster};
use order_tests::soak::poll_until;

/// Whether `pid` runs: it exists and is not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last parenthesis.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// With `NATS_STREAM_REPLICAS=3` and all three URLs, the service puts the events stream, the
/// dead-letter stream and every inbound durable consumer on all three nodes, publishes through
/// the cluster, and the nodes are gone once the harness is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_replicates_its_streams_and_consumers_on_three_nodes() {
    let nats = NatsCluster::start(3).expect("three nats-server nodes");
    nats.wait_ready(Duration::from_secs(60))
        .await
        .expect("JetStream cluster ready");
    let pids: Vec<u32> = nats.nodes.iter().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 3);
    assert!(nats.urls().split(',').count() == 3, "{}", nats.urls());

    let mut spec = ClusterSpec::new(1);
    spec.inbound = true;
    spec.nats_url = Some(nats.urls());
    spec.stream_replicas = 3;
    let cluster = Cluster::start(spec).await.expect("service starts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    let all = vec!["n0".to_owned(), "n1".to_owned(), "n2".to_owned()];
    for stream in [&cluster.stream, &cluster.dlq] {
        let p = placement(&cluster.js, stream).await.expect("stream info");
        assert_eq!(p.replicas, 3, "{stream}: {p:?}");
        assert_eq!(p.peers, all, "{stream} is not on every node: {p:?}");
        assert!(p.leader.is_some(), "{stream} has no leader");
    }
    for family in [Family::Payment, Family::Dispute, Family::Ticket] {
        let durable = family.durable_name();
        let info = poll_until(Duration::from_secs(30), || async {
            let stream = cluster.js.get_stream(&cluster.stream).await.ok()?;
            let mut consumer: PullConsumer = stream.get_consumer(&durable).await.ok()?;
            let info = consumer.info().await.ok().cloned()?;
            // A new replicated consumer answers before its group has elected a leader.
            info.cluster
                .as_ref()
                .is_some_and(|c| c.leader.is_some())
                .then_some(info)
        })
        .await
        .unwrap_or_else(|| panic!("the {durable} consumer was not created"));
        assert_eq!(info.config.num_replicas, 3, "{durable}");
        let cluster_info = info.cluster.expect("clustered consumer");
        assert!(cluster_info.leader.is_some(), "{durable} has no leader");
        assert_eq!(
            cluster_info.replicas.len(),
            2,
            "{durable}: {cluster_info:?}"
        );
    }

    // A command's events reach the replicated stream through the relay.
    let client = order_tests::soak::load::client();
    let counters = order_tests::soak::load::Counters::default();
    let created = order_tests::soak::load::post(
        &client,
        &counters,
        &cluster.urls()[0],
        "/api/v1/orders",
        &order_tests::order_body(),
    )
    .await
    .expect("create answers 2xx");
    let id = created["order"]["id"].as_str().expect("id").to_owned();
    let published = poll_until(Duration::from_secs(30), || async {
        let mut s = cluster.js.get_stream(&cluster.stream).await.ok()?;
        (s.info().await.ok()?.state.messages >= 1).then_some(())
    })
    .await;
    assert!(published.is_some(), "order {id} was not published");

    drop(cluster);
    drop(nats);
    for pid in pids {
        assert!(!alive(pid), "nats-server pid {pid} still runs");
    }
}

/// `scripts/nats-cluster.sh` starts three healthy nodes, prints the comma-separated NATS_URL,
/// kills and restarts one, and stops them all by their pid files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_and_stops_three_nodes_by_pid() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-cluster.sh");
    let dir = order_tests::soak::procs::ScratchDir::new("nats-cluster-script");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .arg(&dir.path)
            .output()
            .expect("the script runs");
        assert!(
            out.status.success(),
            "nats-cluster.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = run(&["start"]);
    let url = started
        .lines()
        .find_map(|l| l.strip_prefix("NATS_URL="))
        .expect("the NATS_URL line")
        .to_owned();
    assert_eq!(url.split(',').count(), 3, "{url}");
    let pid = |n: usize| -> u32 {
        std::fs::read_to_string(dir.path.join(format!("n{n}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    };
    let pids: Vec<u32> = (0..3).map(pid).collect();
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    // Every node answers as one cluster: a three-replica stream can be placed.
    let client = async_nats::connect(order_tests::soak::nats_servers(&url))
        .await
        .expect("connects");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SCRIPT_PROBE".into(),
        subjects: vec!["script.probe".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("a three-replica stream");

    run(&["kill", "1"]);
    assert!(!alive(pids[1]), "node 1 survived kill");
    run(&["restart", "1"]);
    let restarted = pid(1);
    assert!(alive(restarted));

    run(&["stop"]);
    for p in [pids[0], restarted, pids[2]] {
        assert!(!alive(p), "pid {p} still runs after stop");
    }
}

/// An events stream created with one replica (a single server's setting) is moved to three
/// when the service starts with `NATS_STREAM_REPLICAS=3` on the cluster; so is the dead-letter
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_single_replica_stream_is_moved_to_three() {
    let nats = NatsCluster::start(3).expect("three nats-server nodes");
    nats.wait_ready(Duration::from_secs(60))
        .await
        .expect("JetStream cluster ready");
    let js = nats.connect().await.expect("connects");
    let t = order_tests::soak::tag().to_uppercase();
    let mut settings = order_api::config::Settings::for_tests("postgres://unused");
    settings.streams.events = format!("MOVE_{t}");
    settings.streams.subject_prefix = format!("m{t}.");
    settings.streams.dlq = format!("MOVE_DLQ_{t}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://unused@127.0.0.1:1/unused")
        .expect("a lazy pool");
    let ensure = |settings: order_api::config::Settings| {
        let (js, pool) = (js.clone(), pool.clone());
        async move {
            order_bus::ensure_stream(&js, &settings.relay_config().stream)
                .await
                .expect("events stream");
            let mut dlq = settings.streams.dlq_config();
            dlq.ensure_stream = true;
            order_bus::dlq::DeadLetters::new(js, pool, dlq)
                .ensure_stream()
                .await
                .expect("dead-letter stream");
        }
    };
    ensure(settings.clone()).await;
    for stream in [&settings.streams.events, &settings.streams.dlq] {
        let p = placement(&js, stream).await.expect("info");
        assert_eq!((p.replicas, p.peers.len()), (1, 1), "{stream}: {p:?}");
    }
    settings.streams.replicas = 3;
    ensure(settings.clone()).await;
    for stream in [&settings.streams.events, &settings.streams.dlq] {
        let moved = poll_until(Duration::from_secs(30), || async {
            let p = placement(&js, stream).await.ok()?;
            (p.replicas == 3 && p.peers.len() == 3).then_some(p)
        })
        .await;
        assert!(moved.is_some(), "{stream} was not moved to three replicas");
    }
    // The streams go with the private cluster.
}
