//! The transactional outbox relay against a real JetStream (docs/contract.md §§6 and 7): every
//! committed event reaches the stream exactly once after deduplication, in order per order,
//! through crashes, broker outages and leader changes; nothing that breaks its schema does.
//!
//! Each test uses its own stream and subject prefix on the shared NATS (or its own nats-server
//! when it stops the broker), deletes the stream at the end, and drives the relay with
//! `run_once` until the feed is empty, never by sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use order_api::app::AppError;
use order_bus::envelope::event_id;
use order_bus::relay::{self, jetstream_context};
use order_bus::{BusError, Relay, RelayConfig, RelayOutcome, RELAY_CONSUMER};
use order_domain::commands::{CompleteRefund, RefundFacts, RequestRefund};
use order_domain::OrderCommand;
use order_projections::checkpoint::{self, Durability};
use order_projections::postgres::leader::holder;
use order_projections::FeedPosition;
use order_tests::helpers::{drain_relay, nats_url, wait_visible};
use order_tests::{json_of, order_body, spawn_app, spawn_app_with, Auth, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A stream name and subject prefix no other test uses.
fn unique_names() -> (String, String) {
    let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
    (
        format!("RELAY_T_{}", tag.to_uppercase()),
        format!("t{tag}."),
    )
}

/// Deletes the test's stream when the test ends, even when it fails, so the shared server
/// does not collect streams. Drop cannot await, so it uses a short-lived runtime of its own.
struct StreamGuard {
    url: String,
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(&url);
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await
                {
                    let js = async_nats::jetstream::new(client);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&name)).await;
                }
            });
        })
        .join();
    }
}

/// A test's NATS side: client, JetStream context, its stream and prefix.
struct Bus {
    js: Context,
    stream: String,
    prefix: String,
    _guard: StreamGuard,
}

impl Bus {
    async fn connect(url: &str) -> Self {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(url)
            .await
            .expect("NATS answers (set NATS_URL)");
        Self::with_client(url, client)
    }

    fn with_client(url: &str, client: async_nats::Client) -> Self {
        let (stream, prefix) = unique_names();
        Self {
            js: jetstream_context(client, Duration::from_secs(2)),
            _guard: StreamGuard {
                url: url.to_owned(),
                name: stream.clone(),
            },
            stream,
            prefix,
        }
    }

    fn config(&self) -> RelayConfig {
        let mut config = RelayConfig::new(&self.stream, &self.prefix);
        // Small batches, so every test crosses batch boundaries.
        config.batch_size = 4;
        config
    }

    fn relay(&self, pool: &PgPool) -> Relay {
        Relay::new(pool.clone(), self.js.clone(), self.config())
    }

    async fn message_count(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    /// Everything in the stream, read by a real pull consumer from the start.
    async fn read_all(&self) -> Vec<Received> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .expect("stream exists");
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut received = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .messages()
                .await
                .expect("fetch");
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.expect("message");
                received.push(Received {
                    subject: message.subject.to_string(),
                    headers: message.headers.clone().unwrap_or_default(),
                    envelope: serde_json::from_slice(&message.payload).expect("JSON envelope"),
                });
                message.ack().await.expect("ack");
                got += 1;
            }
            if got == 0 {
                return received;
            }
        }
    }
}

/// One message as a subscriber sees it.
#[derive(Debug)]
struct Received {
    subject: String,
    headers: HeaderMap,
    envelope: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// The ids every committed event must be published under.
async fn committed_ids(pool: &PgPool) -> HashSet<String> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT aggregate_type, aggregate_id, sequence FROM events")
            .fetch_all(pool)
            .await
            .expect("events");
    rows.iter()
        .map(|(t, id, seq)| event_id(t, id, *seq).to_string())
        .collect()
}

/// Asserts the stream holds every committed event exactly once, each order's events in
/// sequence order, with `Nats-Msg-Id` equal to the envelope id.
async fn assert_exactly_once_in_order(bus: &Bus, pool: &PgPool) -> Vec<Received> {
    let received = bus.read_all().await;
    let expected = committed_ids(pool).await;
    let ids: Vec<String> = received
        .iter()
        .map(|r| r.envelope["id"].as_str().expect("id").to_owned())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a message was delivered twice");
    assert_eq!(
        unique, expected,
        "published ids differ from committed events"
    );
    assert_eq!(bus.message_count().await, expected.len() as u64);
    let mut per_order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &received {
        assert_eq!(r.header("Nats-Msg-Id"), r.envelope["id"].as_str());
        let subject_type = r
            .subject
            .strip_prefix(&bus.prefix)
            .expect("prefixed subject");
        assert_eq!(Some(subject_type), r.envelope["type"].as_str());
        per_order
            .entry(
                r.envelope["aggregateId"]
                    .as_str()
                    .expect("aggregateId")
                    .to_owned(),
            )
            .or_default()
            .push(
                r.envelope["sequenceNumber"]
                    .as_i64()
                    .expect("sequenceNumber"),
            );
    }
    for (order, seqs) in per_order {
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "order {order} arrived out of sequence");
    }
    received
}

/// Creates an order as api-gateway for tenant-a with a known request id and trace.
async fn create_traced_order(app: &TestApp, request_id: &str) -> String {
    let resp = app
        .send(
            Method::POST,
            "/api/v1/orders",
            Auth::v1("api-gateway"),
            &[
                ("x-tenant-id", "tenant-a"),
                ("x-request-id", request_id),
                ("traceparent", TRACEPARENT),
            ],
            Some(&order_body()),
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 201, "{body}");
    body["order"]["id"].as_str().expect("order id").to_owned()
}

/// Sets the relay's stored checkpoint to `to`, as an operator moving it, or a crash that lost
/// its last save, would leave it.
async fn move_relay_checkpoint(pool: &PgPool, to: FeedPosition) {
    checkpoint::save(pool, RELAY_CONSUMER, to, 0, Durability::Flushed)
        .await
        .unwrap();
}

async fn post_ok(app: &TestApp, path: &str, body: Value) {
    let (status, answer) = json_of(app.post(path, &body).await).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
}

/// Requests and completes a refund straight through the store (no payment-service involved),
/// with metadata that names no tenant, so the relay must look the order's tenant up.
async fn refund(app: &TestApp, order_id: &str, amount_cents: i64) {
    let id: Uuid = order_id.parse().expect("uuid");
    let refund_id = Uuid::new_v4();
    let meta = HashMap::from([("correlationId".to_owned(), "refund-job".to_owned())]);
    let ok = |_: &order_domain::Order| Ok::<(), AppError>(());
    app.state
        .store
        .execute(id, &meta, ok, || {
            OrderCommand::RequestRefund(RequestRefund {
                refund_id,
                amount_cents: Some(amount_cents),
                reason: "customer request".into(),
                facts: RefundFacts::default(),
                now: Utc::now(),
            })
        })
        .await
        .expect("refund requested");
    app.state
        .store
        .execute(id, &meta, ok, || {
            OrderCommand::CompleteRefund(CompleteRefund {
                refund_id,
                now: Utc::now(),
            })
        })
        .await
        .expect("refund completed");
}

/// create → reserve → confirm → refund on the first order, create → cancel on the second,
/// create → reserve on the third.
async fn scripted_run(app: &TestApp) -> Vec<String> {
    let a = create_traced_order(app, "req-relay-a").await;
    let b = create_traced_order(app, "req-relay-b").await;
    let c = create_traced_order(app, "req-relay-c").await;
    post_ok(app, &format!("/api/v1/orders/{a}/reserve"), json!({})).await;
    post_ok(app, &format!("/api/v1/orders/{c}/reserve"), json!({})).await;
    post_ok(
        app,
        &format!("/api/v1/orders/{a}/confirm"),
        json!({"paymentIntentId": "pi_relay", "amountCents": 17870}),
    )
    .await;
    post_ok(
        app,
        &format!("/api/v1/orders/{b}/cancel"),
        json!({"reason": "changed mind"}),
    )
    .await;
    refund(app, &a, 5000).await;
    vec![a, b, c]
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_publishes_every_event_exactly_once_in_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);
    let orders = scripted_run(&app).await;

    let published = drain_relay(&relay, &pool).await;
    let committed = committed_ids(&pool).await.len();
    assert_eq!(published, committed);
    assert_eq!(
        committed, 9,
        "3 created, 2 reserved, 1 confirmed, 1 cancelled, 2 for the refund"
    );
    let received = assert_exactly_once_in_order(&bus, &pool).await;

    // Nothing more to do: another round publishes nothing.
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Idle);
    assert_eq!(bus.message_count().await, committed as u64);

    // One order.created envelope, field by field (the example of docs/contract.md §6.2).
    let a = &orders[0];
    let created = received
        .iter()
        .find(|r| r.envelope["aggregateId"] == a.as_str() && r.envelope["sequenceNumber"] == 1)
        .expect("order.created of the first order");
    let e = &created.envelope;
    let id = event_id("Order", a, 1).to_string();
    assert_eq!(created.subject, format!("{}order.created", bus.prefix));
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["type"], "order.created");
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["idempotencyKey"], format!("order.created:{a}:1"));
    assert_eq!(e["sequenceNumber"], 1);
    assert_eq!(e["aggregateId"], a.as_str());
    assert_eq!(e["aggregateType"], "Order");
    assert_eq!(e["tenantId"], "tenant-a");
    assert_eq!(e["correlationId"], "req-relay-a");
    assert_eq!(e["causationId"], "req-relay-a");
    let ts = e["timestamp"].as_str().expect("timestamp");
    assert_eq!(ts.len(), "2026-11-28T19:30:00.123Z".len(), "{ts}");
    assert!(ts.ends_with('Z'), "{ts}");
    let created_at: DateTime<Utc> = e["payload"]["createdAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ts,
        created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let payload = &e["payload"];
    assert!(
        payload.get("OrderCreated").is_none(),
        "payload carries no enum tag"
    );
    assert_eq!(payload["orderId"], a.as_str());
    assert_eq!(payload["tenantId"], "tenant-a");
    assert_eq!(payload["currency"], "USD");
    assert_eq!(payload["subtotalCents"], 17500);
    assert_eq!(payload["feesCents"], 250);
    assert_eq!(payload["taxCents"], 120);
    assert_eq!(payload["totalCents"], 17870);
    assert_eq!(payload["items"].as_array().map(Vec::len), Some(2));
    assert!(payload["orderNumber"].as_str().unwrap().starts_with("ORD-"));
    assert_eq!(created.header("Nats-Msg-Id"), Some(id.as_str()));
    assert_eq!(created.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(created.header("content-type"), Some("application/json"));
    let keys: HashSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    let expected_keys: HashSet<&str> = [
        "id",
        "type",
        "version",
        "idempotencyKey",
        "sequenceNumber",
        "aggregateId",
        "aggregateType",
        "tenantId",
        "timestamp",
        "correlationId",
        "causationId",
        "payload",
    ]
    .into();
    assert_eq!(keys, expected_keys);

    // The refund's events name no tenant in their metadata; the order's tenant is used.
    let refunded = received
        .iter()
        .find(|r| r.envelope["type"] == "order.refunded")
        .expect("order.refunded");
    assert_eq!(refunded.envelope["tenantId"], "tenant-a");
    assert_eq!(refunded.envelope["correlationId"], "refund-job");
    assert_eq!(
        refunded.envelope["causationId"], refunded.envelope["id"],
        "no causation in metadata falls back to the event id"
    );
    let types: HashSet<&str> = received
        .iter()
        .filter_map(|r| r.envelope["type"].as_str())
        .collect();
    for t in [
        "order.created",
        "order.reserved",
        "order.confirmed",
        "order.cancelled",
        "order.refund_requested",
        "order.refunded",
    ] {
        assert!(types.contains(t), "{t} missing from {types:?}");
    }
    relay.shutdown().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_crash_between_publish_and_checkpoint_is_deduplicated(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);

    create_traced_order(&app, "req-1").await;
    create_traced_order(&app, "req-2").await;
    drain_relay(&relay, &pool).await;
    let before = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();

    scripted_run(&app).await;
    let second = drain_relay(&relay, &pool).await;
    let count = bus.message_count().await;
    assert_eq!(count, committed_ids(&pool).await.len() as u64);

    // The crash: the second batch was published, but its checkpoint never got saved.
    move_relay_checkpoint(&pool, before).await;
    let restarted = bus.relay(&pool);
    relay.shutdown().await;
    let republished = drain_relay(&restarted, &pool).await;
    assert_eq!(
        republished, second,
        "the restart re-sends everything after the checkpoint"
    );
    assert_eq!(
        bus.message_count().await,
        count,
        "the broker dropped every re-send"
    );
    assert_exactly_once_in_order(&bus, &pool).await;
    restarted.shutdown().await;
}

/// A leader reads after its checkpoint as stored, not as it last saved it (see
/// `Relay::run_once`), so that an operator who moves it back on a running relay gets the
/// events re-sent.
#[sqlx::test(migrations = "../migrations")]
async fn a_running_leader_follows_a_checkpoint_moved_under_it(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);

    create_traced_order(&app, "req-1").await;
    drain_relay(&relay, &pool).await;
    let before = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();
    scripted_run(&app).await;
    let second = drain_relay(&relay, &pool).await;
    assert!(second > 0);
    let after = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();
    let count = bus.message_count().await;

    // The same relay, still leading, after an operator moved its checkpoint back.
    move_relay_checkpoint(&pool, before).await;
    assert_eq!(
        drain_relay(&relay, &pool).await,
        second,
        "the relay re-sends from the stored checkpoint, not from the one it remembered"
    );
    assert_eq!(
        checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap(),
        after
    );
    assert_eq!(
        bus.message_count().await,
        count,
        "the broker dropped the re-sends"
    );
    assert_exactly_once_in_order(&bus, &pool).await;
    relay.shutdown().await;
}

/// A batch read ahead during a backlog starts where the relay last saved its checkpoint; an
/// operator who moves the checkpoint before the next round must win over it.
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_read_ahead_is_dropped_when_the_checkpoint_moved_under_it(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let mut config = bus.config();
    config.batch_size = 1;
    let relay = Relay::new(pool.clone(), bus.js.clone(), config);
    for i in 1..=3 {
        create_traced_order(&app, &format!("req-{i}")).await;
    }
    wait_visible(&pool).await;
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    let first = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();

    // The second event has been read ahead; the checkpoint goes back to the start.
    move_relay_checkpoint(&pool, FeedPosition::default()).await;
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    assert_eq!(
        checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap(),
        first,
        "the round re-sent the first event from the stored checkpoint, not the one read ahead"
    );
    assert_eq!(drain_relay(&relay, &pool).await, 2);
    assert_eq!(
        bus.message_count().await,
        3,
        "the broker dropped the re-send"
    );
    assert_exactly_once_in_order(&bus, &pool).await;
    relay.shutdown().await;
}

/// A read that fails on a healthy session (here cancelled, as a statement timeout would) is
/// the round's error, retried with backoff, not a lost lead: the relay keeps its lock and
/// relays on at the next round.
#[sqlx::test(migrations = "../migrations")]
async fn a_failed_read_on_the_lock_connection_is_an_error_and_keeps_the_lead(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Idle);
    let leader_pid = holder(&pool, RELAY_CONSUMER)
        .await
        .unwrap()
        .expect("the relay leads");
    create_traced_order(&app, "req-1").await;
    wait_visible(&pool).await;

    // The read waits behind a lock on the checkpoints, and is cancelled there.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE feed_checkpoints IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let cancel = async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                 WHERE pid = $1 AND wait_event_type = 'Lock')",
            )
            .bind(leader_pid)
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
            .bind(leader_pid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(cancelled);
    };
    let (round, ()) = tokio::join!(relay.run_once(), cancel);
    blocker.rollback().await.unwrap();
    let err = round.expect_err("a cancelled read fails the round");
    assert!(matches!(err, BusError::Database(_)), "{err}");
    assert!(
        err.is_transient(),
        "retried, not reported as bad data: {err}"
    );
    assert!(relay.is_leader().await, "the lock is kept");
    assert_eq!(
        holder(&pool, RELAY_CONSUMER).await.unwrap(),
        Some(leader_pid)
    );
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    assert_eq!(bus.message_count().await, 1);
    relay.shutdown().await;
}

/// A read that fails in a way that would repeat on the same connection (here a migration
/// changed a column's type under the statement prepared there: "cached plan must not change
/// result type") gives the lead up with the connection, and the next round relays on a fresh
/// one instead of failing on the old one for ever.
#[sqlx::test(migrations = "../migrations")]
async fn a_read_that_would_fail_again_on_its_connection_costs_the_connection(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Idle);
    let first_pid = holder(&pool, RELAY_CONSUMER).await.unwrap();
    sqlx::query("ALTER TABLE events ALTER COLUMN event_version TYPE varchar(64)")
        .execute(&pool)
        .await
        .unwrap();
    create_traced_order(&app, "req-1").await;
    wait_visible(&pool).await;

    assert_eq!(
        relay.run_once().await.unwrap(),
        RelayOutcome::Standby,
        "the round gives the lead up with its connection"
    );
    assert!(!relay.is_leader().await);
    // The old session ends as the server notices its closed socket; until then the lock is
    // still taken.
    let published = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match relay.run_once().await.unwrap() {
                RelayOutcome::Standby => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other,
            }
        }
    })
    .await
    .expect("the relay leads again");
    assert_eq!(published, RelayOutcome::Published(1));
    assert_ne!(holder(&pool, RELAY_CONSUMER).await.unwrap(), first_pid);
    assert_eq!(bus.message_count().await, 1);
    relay.shutdown().await;
}

/// A caught-up relay reads on its leader lock's own connection, the one statement that also
/// confirms its lead, and takes nothing from the pool. Only while it works through a backlog
/// does it keep a second connection, to read the next batch while this one is sent, and it
/// gives that back once a read ahead finds nothing, so that closing the pool is not kept
/// waiting.
#[sqlx::test(migrations = "../migrations")]
async fn relay_reads_on_its_lock_connection_and_keeps_a_second_only_through_a_backlog(
    pool: PgPool,
) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    // A pool of the relay's own, so that the app's connections do not count. The lock's
    // connection is detached from it, so what is in use is the read-ahead connection.
    let relay_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("second pool");
    let mut config = bus.config();
    config.batch_size = 1;
    let relay = Relay::new(relay_pool.clone(), bus.js.clone(), config);
    let in_use = || relay_pool.size() - relay_pool.num_idle() as u32;

    // Caught up: a batch smaller than the limit is read on the lock's connection alone.
    let mut config = bus.config();
    config.batch_size = 10;
    let caught_up = Relay::new(relay_pool.clone(), bus.js.clone(), config);
    create_traced_order(&app, "req-1").await;
    wait_visible(&pool).await;
    assert_eq!(
        caught_up.run_once().await.unwrap(),
        RelayOutcome::Published(1)
    );
    assert_eq!(
        in_use(),
        0,
        "no pool connection for a round that found no backlog"
    );
    caught_up.shutdown().await;

    // A backlog of three with batches of one (the same checkpoint: the first order is out):
    // each full batch reads the next one ahead.
    for i in 2..=4 {
        create_traced_order(&app, &format!("req-{i}")).await;
    }
    wait_visible(&pool).await;
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    assert_eq!(
        in_use(),
        1,
        "the read-ahead connection is kept through the backlog"
    );
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Published(1));
    // The last read ahead found nothing. The return to the pool (with sqlx's check of the
    // connection) runs on a task of its own.
    wait_until("the read-ahead connection is back in the pool", || {
        in_use() == 0
    })
    .await;
    assert_eq!(relay.run_once().await.unwrap(), RelayOutcome::Idle);
    assert_eq!(in_use(), 0);

    // A pool closed while the relay leads: the next round stands by, and nothing waits on it.
    let (_, round) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(relay_pool.close(), relay.run_once())
    })
    .await
    .expect("the pool closes while the relay leads");
    assert_eq!(round.unwrap(), RelayOutcome::Standby);
    assert!(
        !relay.is_leader().await,
        "the lock's session ends with the pool"
    );
    let released = async {
        while holder(&pool, RELAY_CONSUMER).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("the server ends the lock's session");
    assert_eq!(bus.message_count().await, 4);
    assert_exactly_once_in_order(&bus, &pool).await;
    relay.shutdown().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_waits_out_a_broker_outage_and_loses_nothing(pool: PgPool) {
    let mut server = NatsServer::start();
    // The application talks to this broker too: commands must not need it.
    let app = spawn_app_with(pool.clone(), |s| s.nats.url = server.url().into()).await;
    let client = app.state.nats.clone().expect("the app has a NATS client");
    wait_until("the app connects to NATS", || {
        client.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    let bus = Bus::with_client(&server.url(), client.clone());
    let relay = bus.relay(&pool);

    create_traced_order(&app, "req-before").await;
    assert_eq!(drain_relay(&relay, &pool).await, 1);
    let published_before = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();

    server.stop();
    wait_until("the client notices the outage", || {
        client.connection_state() != async_nats::connection::State::Connected
    })
    .await;

    // Commands only write Postgres: they succeed while the broker is gone.
    let a = create_traced_order(&app, "req-during-1").await;
    create_traced_order(&app, "req-during-2").await;
    post_ok(&app, &format!("/api/v1/orders/{a}/reserve"), json!({})).await;
    wait_visible(&pool).await;
    let err = relay.run_once().await.expect_err("no broker, no publish");
    assert!(matches!(err, BusError::Broker(_)), "{err}");
    assert!(err.is_transient());
    assert_eq!(
        checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap(),
        published_before,
        "the checkpoint did not move"
    );
    let lag = relay::lag(&pool, RELAY_CONSUMER).await.unwrap();
    assert_eq!(lag.events_behind + lag.events_fenced, 3, "{lag:?}");

    server.restart();
    wait_until("the client reconnects", || {
        client.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    assert_eq!(drain_relay(&relay, &pool).await, 3, "the backlog drains");
    assert_exactly_once_in_order(&bus, &pool).await;
    relay.shutdown().await;
}

/// A publish that fails in the middle of a batch while later publishes of the same orders
/// succeed must not put an order's later event on the stream before its earlier one. Here the
/// stream does not take `order.reserved` yet, so those publishes find no stream while the
/// `order.created` and `order.confirmed` around them land; a broker that drops the connection
/// mid-batch fails a batch in the same shape, only not on demand.
#[sqlx::test(migrations = "../migrations")]
async fn relay_keeps_each_orders_sequence_when_a_publish_mid_batch_fails(pool: PgPool) {
    let server = NatsServer::start();
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&server.url()).await;
    let mut config = bus.config();
    // One batch holds every event below.
    config.batch_size = 50;
    config.ensure_stream = false;
    let full = config.stream.config();
    let mut partial = full.clone();
    partial.subjects = ["order.created", "order.confirmed"]
        .map(|s| format!("{}{s}", bus.prefix))
        .to_vec();
    bus.js.create_stream(partial).await.expect("stream");
    let relay = Relay::new(pool.clone(), bus.js.clone(), config);

    // Feed order: three orders' created, their reserved, a fourth order's created, then the
    // three confirmed. The fourth order's event comes after the failing ones in the feed.
    let mut orders = Vec::new();
    for name in ["a", "b", "c"] {
        orders.push(create_traced_order(&app, &format!("req-seq-{name}")).await);
    }
    for order in &orders {
        post_ok(&app, &format!("/api/v1/orders/{order}/reserve"), json!({})).await;
    }
    create_traced_order(&app, "req-seq-late").await;
    for order in &orders {
        post_ok(
            &app,
            &format!("/api/v1/orders/{order}/confirm"),
            json!({"paymentIntentId": "pi_seq", "amountCents": 17870}),
        )
        .await;
    }
    wait_visible(&pool).await;

    let err = relay
        .run_once()
        .await
        .expect_err("order.reserved has no stream yet");
    assert!(matches!(err, BusError::Broker(_)), "{err}");
    let lag = relay::lag(&pool, RELAY_CONSUMER).await.unwrap();
    assert_eq!(
        lag.events_behind, 7,
        "the checkpoint moved past the three order.created before the first failure only"
    );

    bus.js
        .update_stream(full)
        .await
        .expect("the stream takes every subject");
    drain_relay(&relay, &pool).await;
    assert_published_in_sequence(&bus.read_all().await);
    assert_exactly_once_in_order(&bus, &pool).await;
    relay.shutdown().await;
}

/// Asserts that each order's events reached the stream in sequence order with no gaps, as a
/// subscriber that drops repeats by envelope id sees them.
fn assert_published_in_sequence(received: &[Received]) {
    let mut seen = HashSet::new();
    let mut per_order: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in received {
        if !seen.insert(r.envelope["id"].as_str().expect("id")) {
            continue;
        }
        per_order
            .entry(r.envelope["aggregateId"].as_str().expect("aggregateId"))
            .or_default()
            .push(
                r.envelope["sequenceNumber"]
                    .as_i64()
                    .expect("sequenceNumber"),
            );
    }
    for (order, seqs) in per_order {
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "order {order}: sequence numbers in the order they reached the stream"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_standby_takes_over_when_the_leader_dies(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let first = bus.relay(&pool);
    let second = bus.relay(&pool);

    create_traced_order(&app, "req-1").await;
    create_traced_order(&app, "req-2").await;
    wait_visible(&pool).await;
    assert!(matches!(
        first.run_once().await.unwrap(),
        RelayOutcome::Published(_)
    ));
    assert_eq!(second.run_once().await.unwrap(), RelayOutcome::Standby);
    drain_relay(&first, &pool).await;
    assert_eq!(second.run_once().await.unwrap(), RelayOutcome::Standby);
    assert_eq!(bus.message_count().await, 2);

    // Kill the leader's lock session, as a crashed process or a dropped connection would.
    let a = create_traced_order(&app, "req-3").await;
    post_ok(&app, &format!("/api/v1/orders/{a}/reserve"), json!({})).await;
    let leader = holder(&pool, RELAY_CONSUMER)
        .await
        .unwrap()
        .expect("someone holds the relay's lock");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(leader)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    wait_for_lock_release(&pool).await;

    assert_eq!(
        drain_relay(&second, &pool).await,
        2,
        "the standby publishes the rest"
    );
    assert_eq!(
        first.run_once().await.unwrap(),
        RelayOutcome::Standby,
        "the old leader notices it lost its session"
    );
    assert_eq!(first.run_once().await.unwrap(), RelayOutcome::Standby);
    assert!(!first.is_leader().await);

    // A clean hand-over: the new leader shuts down and the old one carries on at once.
    create_traced_order(&app, "req-4").await;
    second.shutdown().await;
    assert_eq!(drain_relay(&first, &pool).await, 1);
    assert_exactly_once_in_order(&bus, &pool).await;
    first.shutdown().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_stops_at_an_event_that_breaks_its_schema(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);

    let good = create_traced_order(&app, "req-good").await;
    // A stored OrderReserved without its expiresAt: the published contract requires it.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, 2, 'OrderReserved', '1.0',
                 '{\"OrderReserved\": {\"occurredAt\": \"2026-11-28T19:30:00Z\"}}', '{}')",
    )
    .bind(&good)
    .execute(&pool)
    .await
    .unwrap();
    create_traced_order(&app, "req-after").await;
    wait_visible(&pool).await;

    let err = loop {
        match relay.run_once().await {
            Ok(RelayOutcome::Published(_)) => continue,
            Ok(other) => panic!("the relay went past the bad event: {other:?}"),
            Err(e) => break e,
        }
    };
    let BusError::SchemaViolation {
        event_type, reason, ..
    } = &err
    else {
        panic!("expected a schema violation, got {err}");
    };
    assert_eq!(event_type, "order.reserved v1.0");
    assert!(reason.contains("expiresAt"), "{reason}");
    assert!(!err.is_transient());

    // Everything before it went out; nothing at or after it did, and retries stay stopped.
    assert_eq!(bus.message_count().await, 1);
    let stopped_at = checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            relay.run_once().await,
            Err(BusError::SchemaViolation { .. })
        ));
    }
    assert_eq!(
        checkpoint::load(&pool, RELAY_CONSUMER).await.unwrap(),
        stopped_at
    );
    assert_eq!(bus.message_count().await, 1);
    let lag = relay::lag(&pool, RELAY_CONSUMER).await.unwrap();
    assert_eq!(lag.events_behind + lag.events_fenced, 2, "{lag:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn relay_stream_is_created_then_brought_up_to_date() {
    use async_nats::jetstream::stream::{Config, StorageType};
    use order_bus::stream::StreamOutcome;

    let bus = Bus::connect(&nats_url()).await;
    let spec = bus.config().stream;

    // An older deployment's stream: one subject family, a short window, an operator's extra.
    let extra = format!("{}audit.>", bus.prefix);
    bus.js
        .create_stream(Config {
            name: bus.stream.clone(),
            subjects: vec![format!("{}order.>", bus.prefix), extra.clone()],
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("old stream");
    assert_eq!(
        order_bus::ensure_stream(&bus.js, &spec).await.unwrap(),
        StreamOutcome::Updated
    );
    let mut stream = bus.js.get_stream(&bus.stream).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    for subject in spec.subjects.iter().chain([&extra]) {
        assert!(
            config.subjects.contains(subject),
            "{subject} missing: {:?}",
            config.subjects
        );
    }
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(
        order_bus::ensure_stream(&bus.js, &spec).await.unwrap(),
        StreamOutcome::Unchanged
    );

    // Missing altogether: created.
    bus.js.delete_stream(&bus.stream).await.unwrap();
    assert_eq!(
        order_bus::ensure_stream(&bus.js, &spec).await.unwrap(),
        StreamOutcome::Created
    );

    // Memory storage cannot be changed in place: refused, not silently accepted.
    bus.js.delete_stream(&bus.stream).await.unwrap();
    bus.js
        .create_stream(Config {
            name: bus.stream.clone(),
            subjects: spec.subjects.clone(),
            storage: StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        order_bus::ensure_stream(&bus.js, &spec).await,
        Err(BusError::StreamMismatch(_))
    ));
}

#[tokio::test]
async fn relay_schema_folder_is_in_sync_with_the_event_types() {
    let problems =
        order_bus::schema::out_of_sync(std::path::Path::new(order_bus::schema::SCHEMA_DIR))
            .expect("schema folder readable");
    assert!(
        problems.is_empty(),
        "run `UPDATE_SCHEMAS=1 cargo test -p order-bus schema` to regenerate:\n{}",
        problems.join("\n")
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_contract_is_served_as_asyncapi_without_auth(pool: PgPool) {
    let app = spawn_app(pool).await;
    let resp = app
        .send(Method::GET, "/asyncapi.json", Auth::None, &[], None)
        .await;
    let (status, doc) = json_of(resp).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["asyncapi"], "3.0.0");
    for subject in [
        "order.created",
        "order.reserved",
        "order.confirmed",
        "order.cancelled",
        "order.expired",
        "order.refunded",
        "order.failed",
        "order.archived",
    ] {
        assert_eq!(doc["channels"][subject]["address"], subject);
    }
    assert!(doc["components"]["schemas"]["OrderCreated"]["properties"]["totalCents"].is_object());
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_backlog_shows_in_readiness(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), |s| s.relay.ready_max_backlog = 1).await;
    let bus = Bus::connect(&nats_url()).await;
    let relay = bus.relay(&pool);

    create_traced_order(&app, "req-1").await;
    let body = wait_for_backlog(&app, 1).await;
    assert_eq!(body["checks"]["relay"]["status"], "ok", "{body}");

    create_traced_order(&app, "req-2").await;
    let body = wait_for_backlog(&app, 2).await;
    assert_eq!(body["checks"]["relay"]["status"], "failing", "{body}");
    assert_eq!(body["status"], "not ready");

    drain_relay(&relay, &pool).await;
    let body = wait_for_backlog(&app, 0).await;
    assert_eq!(body["checks"]["relay"]["status"], "ok", "{body}");
    relay.shutdown().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_worker_in_the_app_publishes_on_its_own(pool: PgPool) {
    let (bus, app) = app_with_relay(pool).await;
    let order = create_traced_order(&app, "req-worker").await;
    // The worker creates the stream and publishes.
    wait_for_published(&bus, 1).await;
    let received = bus.read_all().await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].envelope["aggregateId"], order.as_str());
    assert_eq!(received[0].subject, format!("{}order.created", bus.prefix));
}

#[sqlx::test(migrations = "../migrations")]
async fn relay_worker_is_woken_by_a_commit_not_its_poll(pool: PgPool) {
    let bus = Bus::connect(&nats_url()).await;
    let (stream, prefix) = (bus.stream.clone(), bus.prefix.clone());
    let app = spawn_app_with(pool.clone(), move |s| {
        s.relay.enabled = true;
        s.streams.events = stream;
        s.streams.subject_prefix = prefix;
        // One poll a minute: only the commit signal can deliver within the deadline below.
        s.relay.poll_ms = 60_000;
    })
    .await;
    // The relay's first round creates the stream; once it exists, the relay is idle.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bus.js.get_stream(&bus.stream).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the relay never created its stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=3_u64 {
        create_traced_order(&app, &format!("req-wake-{n}")).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = bus.js.get_stream(&bus.stream).await.expect("stream");
            if s.info().await.map(|i| i.state.messages).unwrap_or(0) >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "event {n} was not relayed within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(bus.read_all().await.len(), 3);
}

/// Polls readiness until the relay backlog reads `n` (other tests' transactions can hold the
/// feed's fence for a moment, so the count may trail the commits briefly).
async fn wait_for_backlog(app: &TestApp, n: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = app
            .send(Method::GET, "/health/ready", Auth::None, &[], None)
            .await;
        let (status, body) = json_of(resp).await;
        if body["checks"]["relay"]["backlog"] == n {
            assert_eq!(status == 200, body["status"] == "ready", "{body}");
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "backlog never reached {n}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a condition with a deadline: for states that change asynchronously (a socket
/// closing), where there is nothing to await.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until Postgres has released the relay's advisory lock (a terminated backend exits
/// asynchronously).
async fn wait_for_lock_release(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(pool, RELAY_CONSUMER).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the killed leader's lock was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private nats-server with JetStream on a free port, for tests that stop the broker.
/// Killed (and its store removed) on drop, so a failing test leaves nothing running.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("relay-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("store dir");
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store directory, and waits until it accepts.
    fn restart(&mut self) {
        let child = Command::new(order_tests::soak::procs::nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (install it or put it on PATH)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The events and dead-letter streams are created with retention limits from the settings
/// (defaults: a week and 10 GiB for events; no age limit, 1 GiB and new parks refused when full
/// for the dead letters), never unbounded.
#[sqlx::test(migrations = "../migrations")]
async fn relay_streams_are_created_with_retention_limits(pool: PgPool) {
    use async_nats::jetstream::stream::DiscardPolicy;

    let tag = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut settings = order_api::config::Settings::for_tests("postgres://unused");
    settings.streams.events = format!("LIMITS_{tag}");
    settings.streams.dlq = format!("LIMITS_DLQ_{tag}");
    settings.streams.subject_prefix = format!("limits{tag}.");
    let js = async_nats::jetstream::new(
        async_nats::connect(nats_url())
            .await
            .expect("NATS answers (set NATS_URL)"),
    );

    order_bus::ensure_stream(&js, &settings.relay_config().stream)
        .await
        .expect("events stream");
    let mut dlq_config = settings.streams.dlq_config();
    dlq_config.ensure_stream = true;
    order_bus::dlq::DeadLetters::new(js.clone(), pool, dlq_config)
        .ensure_stream()
        .await
        .expect("dead-letter stream");
    let limits = |name: String| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(&name).await.expect("stream");
            let config = stream.info().await.expect("info").config.clone();
            js.delete_stream(&name).await.expect("cleanup");
            (config.max_age, config.max_bytes, config.discard)
        }
    };
    let events = limits(settings.streams.events.clone()).await;
    let dead_letters = limits(settings.streams.dlq.clone()).await;
    assert_eq!(
        events,
        (
            Duration::from_secs(7 * 24 * 3600),
            10 * 1024 * 1024 * 1024,
            DiscardPolicy::Old
        )
    );
    assert_eq!(
        dead_letters,
        (Duration::ZERO, 1024 * 1024 * 1024, DiscardPolicy::New)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_subscribe_command_reads_an_orders_events_as_published(pool: PgPool) {
    let (bus, app) = app_with_relay(pool).await;
    let order = create_traced_order(&app, "req-subscribe").await;
    let other = create_traced_order(&app, "req-subscribe-other").await;
    post_ok(
        &app,
        &format!("/api/v1/orders/{order}/cancel"),
        json!({"reason": "changed my mind"}),
    )
    .await;

    // The worker creates the stream on its first round.
    wait_for_published(&bus, 3).await;
    let id = Uuid::parse_str(&order).expect("uuid");
    let lines = order_api::cli::subscribe(
        &app.state.settings,
        Some(id),
        2,
        Duration::from_secs(15),
        false,
    )
    .await
    .expect("subscribe");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{}order.created", bus.prefix)),
        "{lines:?}"
    );
    assert!(lines[0].contains("  seq 1 "), "{lines:?}");
    assert!(lines[1].contains("  seq 2 "), "{lines:?}");
    assert!(
        lines[1].starts_with(&format!("{}order.cancelled", bus.prefix)),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(&other)),
        "another order's events"
    );

    let json = order_api::cli::subscribe(
        &app.state.settings,
        Some(id),
        1,
        Duration::from_secs(15),
        true,
    )
    .await
    .expect("subscribe --json");
    let envelope: Value = serde_json::from_str(&json[0]).expect("an envelope");
    assert_eq!(envelope["aggregateId"], order.as_str());
    assert_eq!(envelope["type"], "order.created");
}

/// An app whose own relay worker publishes into a stream and prefix of this test's.
async fn app_with_relay(pool: PgPool) -> (Bus, TestApp) {
    let bus = Bus::connect(&nats_url()).await;
    let (stream, prefix) = (bus.stream.clone(), bus.prefix.clone());
    let app = spawn_app_with(pool, move |s| {
        s.relay.enabled = true;
        s.streams.events = stream;
        s.streams.subject_prefix = prefix;
        s.relay.poll_ms = 5;
    })
    .await;
    (bus, app)
}

/// Waits (bounded) until the test's stream holds at least `n` messages.
async fn wait_for_published(bus: &Bus, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = bus.js.get_stream(&bus.stream).await {
            if s.info().await.map(|i| i.state.messages).unwrap_or(0) >= n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the in-app relay published fewer than {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
