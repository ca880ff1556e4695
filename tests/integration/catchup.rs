//! History for event-stream subscribers (docs/contract.md §6.6): the paged read
//! `GET /internal/events`, the catch-up-then-live handoff with a real subscriber, and
//! `order-service republish`, against real Postgres and NATS with a stream per test.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use order_api::cli::RepublishArgs;
use order_bus::catchup::{CatchUp, FeedPage, Republish, RepublishFilter};
use order_bus::relay::jetstream_context;
use order_bus::{Envelope, Relay, RelayConfig, Subjects, RELAY_CONSUMER};
use order_tests::helpers::{drain_relay, nats_url, wait_visible};
use order_tests::{json_of, order_body, spawn_app, Auth, TestApp};
use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This test's stream and prefix on the shared server, deleted when dropped.
struct TestStream {
    js: Context,
    name: String,
    prefix: String,
    /// Other streams the test made (republish targets).
    extra: Vec<String>,
}

impl TestStream {
    async fn new() -> Self {
        let tag = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let client = async_nats::connect(nats_url()).await.expect("NATS is up");
        Self {
            js: jetstream_context(client, Duration::from_secs(5)),
            name: format!("CATCHUP_{}", tag.to_uppercase()),
            prefix: format!("c{tag}."),
            extra: Vec::new(),
        }
    }

    fn relay(&self, pool: &PgPool) -> Relay {
        let mut config = RelayConfig::new(&self.name, &self.prefix);
        config.batch_size = 5;
        Relay::new(pool.clone(), self.js.clone(), config)
    }

    /// Everything on `subject_filter` in `stream` from `start` (1 = the first message).
    async fn read(&self, stream: &str, filter: &str, start: u64) -> Vec<jetstream::Message> {
        let consumer = self
            .js
            .get_stream(stream)
            .await
            .expect("stream exists")
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::None,
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut all = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .expect("fetch");
            let before = all.len();
            while let Some(m) = batch.next().await {
                all.push(m.expect("message"));
            }
            if all.len() == before {
                return all;
            }
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let mut names = std::mem::take(&mut self.extra);
        names.push(self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = jetstream::new(client);
                    for name in names {
                        let _ = js.delete_stream(&name).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Creates an order for `tenant` and cancels every other one, so orders have one or two
/// events. Returns the order id.
async fn order_with_history(app: &TestApp, tenant: &str, cancel: bool) -> Uuid {
    let resp = app
        .send(
            Method::POST,
            "/api/v1/orders",
            Auth::v1("api-gateway"),
            &[("x-tenant-id", tenant)],
            Some(&order_body()),
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["order"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    if cancel {
        let resp = app
            .send(
                Method::POST,
                &format!("/api/v1/orders/{id}/cancel"),
                Auth::v1("api-gateway"),
                &[("x-tenant-id", tenant)],
                Some(&json!({"reason": "changed mind"})),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    id
}

/// One signed page read as event-service.
async fn page(app: &TestApp, query: &str, tenant: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant-id", t)).into_iter().collect();
    let resp = app
        .send(
            Method::GET,
            &format!("/internal/events{query}"),
            Auth::v1("event-service"),
            &headers,
            None,
        )
        .await;
    json_of(resp).await
}

/// Every committed event as (order, sequence).
async fn committed(pool: &PgPool) -> HashSet<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>("SELECT aggregate_id, sequence FROM events")
        .fetch_all(pool)
        .await
        .expect("events")
        .into_iter()
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_late_subscriber_backfills_then_goes_live_with_every_event_once_in_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let bus = TestStream::new().await;
    let relay = bus.relay(&pool);
    for i in 0..12 {
        order_with_history(&app, "tenant-a", i % 2 == 0).await;
    }
    drain_relay(&relay, &pool).await;
    // Retention dropped everything published so far: the stream no longer has the history.
    let mut stream = bus.js.get_stream(&bus.name).await.expect("stream");
    stream.purge().await.expect("purge");
    assert_eq!(stream.info().await.expect("info").state.messages, 0);

    // Step 1, then orders keep arriving and being published while the subscriber pages.
    let mut catch_up = CatchUp::begin(&bus.js, &bus.name).await.expect("begin");
    let mut delivered: Vec<Envelope> = Vec::new();
    let mut cursor = order_bus::catchup::FeedCursor::default();
    let mut pages = 0;
    loop {
        order_with_history(&app, "tenant-a", pages % 2 == 1).await;
        drain_relay(&relay, &pool).await;
        let (status, body) = page(&app, &format!("?after={cursor}&limit=4"), None).await;
        assert_eq!(status, 200, "{body}");
        let page: FeedPage = serde_json::from_value(body).expect("a page");
        for event in page.events {
            if catch_up.is_new(&event.aggregate_id, event.sequence_number) {
                catch_up.processed(&event.aggregate_id, event.sequence_number);
                delivered.push(event);
            }
        }
        cursor = page.next;
        pages += 1;
        if page.caught_up {
            break;
        }
        assert!(pages < 100, "never caught up");
    }
    // More after the pages, then live from S + 1.
    for _ in 0..3 {
        order_with_history(&app, "tenant-a", true).await;
    }
    drain_relay(&relay, &pool).await;
    let live_filter = format!("{}order.>", bus.prefix);
    let consumer = bus
        .js
        .get_stream(&bus.name)
        .await
        .expect("stream")
        .create_consumer(catch_up.live_consumer("reporting", &live_filter))
        .await
        .expect("live consumer");
    let expected = committed(&pool).await;
    let mut messages = consumer.messages().await.expect("pull");
    while delivered.len() < expected.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "live stream went quiet at {} of {}",
                    delivered.len(),
                    expected.len()
                )
            })
            .expect("a message")
            .expect("readable");
        let event: Envelope = serde_json::from_slice(&message.payload).expect("envelope");
        if catch_up.is_new(&event.aggregate_id, event.sequence_number) {
            catch_up.processed(&event.aggregate_id, event.sequence_number);
            delivered.push(event);
        }
        message.ack().await.expect("ack");
    }

    let got: Vec<(String, i64)> = delivered
        .iter()
        .map(|e| (e.aggregate_id.clone(), e.sequence_number))
        .collect();
    let unique: HashSet<(String, i64)> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "an event was delivered twice");
    assert_eq!(
        unique, expected,
        "delivered events differ from committed ones"
    );
    let mut per_order: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (order, seq) in &got {
        per_order.entry(order).or_default().push(*seq);
    }
    for (order, seqs) in per_order {
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, want, "order {order} out of sequence");
    }
    assert!(
        catch_up.duplicates() > 0,
        "the pages and the stream did not overlap, so the handoff was not exercised"
    );
    eprintln!(
        "handoff: {} events in {pages} pages and live, {} duplicates dropped",
        catch_up.delivered(),
        catch_up.duplicates()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_paged_read_and_the_relay_agree_byte_for_byte(pool: PgPool) {
    // The relay publishes under the test's prefix and the read builds envelopes under the
    // app's (none): envelopes do not carry the prefix, so the bytes must agree either way.
    let app = spawn_app(pool.clone()).await;
    let bus = TestStream::new().await;
    for i in 0..5 {
        order_with_history(&app, "tenant-a", i % 2 == 0).await;
    }
    drain_relay(&bus.relay(&pool), &pool).await;
    let published = bus
        .read(&bus.name, &format!("{}order.>", bus.prefix), 1)
        .await;
    let relayed: BTreeMap<String, Vec<u8>> = published
        .iter()
        .map(|m| {
            let e: Envelope = serde_json::from_slice(&m.payload).expect("envelope");
            (e.id.to_string(), m.payload.to_vec())
        })
        .collect();
    // Read the pages as raw JSON: each item's text must be the relay's bytes.
    let mut paged = BTreeMap::new();
    let mut after = "0".to_owned();
    loop {
        let resp = app
            .send(
                Method::GET,
                &format!("/internal/events?after={after}&limit=3"),
                Auth::v1("payment-service"),
                &[],
                None,
            )
            .await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("body");
        let page: FeedPage<Box<RawValue>> = serde_json::from_str(&text).expect("a page");
        for raw in &page.events {
            let e: Envelope = serde_json::from_str(raw.get()).expect("envelope");
            paged.insert(e.id.to_string(), raw.get().as_bytes().to_vec());
        }
        after = page.next.to_string();
        if page.caught_up {
            break;
        }
    }
    assert_eq!(paged.len(), committed(&pool).await.len());
    assert_eq!(
        paged, relayed,
        "a paged envelope differs from the published one"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_read_is_scoped_tenant_filtered_and_checks_its_parameters(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let a = order_with_history(&app, "tenant-a", true).await;
    let b = order_with_history(&app, "tenant-b", false).await;
    wait_visible(&pool).await;

    let resp = app
        .send(
            Method::GET,
            "/internal/events",
            Auth::v1("api-gateway"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 403, "api-gateway is not a subscriber");

    let (status, all) = page(&app, "", None).await;
    assert_eq!(status, 200);
    assert_eq!(all["events"].as_array().expect("events").len(), 3);
    assert_eq!(all["caughtUp"], true);

    let (_, only_b) = page(&app, "", Some("tenant-b")).await;
    let ids: Vec<&str> = only_b["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["aggregateId"].as_str().expect("aggregateId"))
        .collect();
    assert_eq!(
        ids,
        vec![b.to_string().as_str()],
        "another tenant's events leaked"
    );
    assert!(only_b["events"]
        .as_array()
        .expect("events")
        .iter()
        .all(|e| e["tenantId"] == "tenant-b"));

    let (_, cancelled) = page(&app, "?types=order.cancelled", None).await;
    let events = cancelled["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["aggregateId"], a.to_string());
    assert_eq!(events[0]["type"], "order.cancelled");

    // Pages of one continue where the last one stopped, then report caught up.
    let (_, first) = page(&app, "?limit=1", None).await;
    assert_eq!(first["caughtUp"], false);
    let next = first["next"].as_str().expect("next");
    let (_, second) = page(&app, &format!("?limit=2&after={next}"), None).await;
    assert_eq!(second["events"][0], all["events"][1]);
    let (_, end) = page(
        &app,
        &format!("?after={}", second["next"].as_str().expect("next")),
        None,
    )
    .await;
    assert_eq!(end["events"], json!([]));
    assert_eq!(end["caughtUp"], true);

    for bad in [
        "?after=12",
        "?after=1-x",
        "?after=-1-2",
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?types=order.bogus",
        "?types=",
    ] {
        let (status, body) = page(&app, bad, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn republish_stops_and_resumes_without_duplicates_and_leaves_the_relay_alone(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut bus = TestStream::new().await;
    for i in 0..9 {
        order_with_history(&app, "tenant-a", i % 3 == 0).await;
    }
    let events = committed(&pool).await.len();
    wait_visible(&pool).await;
    let target = format!("{}BACKFILL", bus.name);
    let prefix = format!("{}backfill.", bus.prefix);
    bus.extra.push(target.clone());

    // The CLI checks its flags and creates the target stream; the relay's prefix is refused.
    let mut settings = (*app.state.settings).clone();
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("database name");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    settings.database.url = format!("{server}/{db}").into();
    let mut args = RepublishArgs {
        subject_prefix: String::new(),
        stream: Some(target.clone()),
        from_position: "0".into(),
        since: None,
        order: None,
        types: vec![],
        name: None,
        restart: false,
        batch_size: 4,
    };
    let err = order_api::cli::republish(&settings, &args)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--subject-prefix"), "{err}");
    // Under the events stream's own subjects, live subscribers would get the copies.
    args.subject_prefix = "order.backfill.".into();
    let err = order_api::cli::republish(&settings, &args)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("must not fall in the events stream"),
        "{err}"
    );
    args.subject_prefix = prefix.clone();
    args.types = vec!["order.bogus".into()];
    let err = order_api::cli::republish(&settings, &args)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("order.bogus"), "{err}");
    args.types = vec![];
    args.name = Some("stopped-run".into());
    args.from_position = "1-x".into();
    assert!(order_api::cli::republish(&settings, &args).await.is_err());

    // A run stopped after its second batch, as Ctrl-C stops it, then a second run.
    let mut stream_spec =
        order_bus::StreamSpec::events(&target, &Subjects::new(&prefix), Duration::from_secs(120));
    stream_spec.subjects = vec![format!("{prefix}order.>")];
    order_bus::ensure_stream(&bus.js, &stream_spec)
        .await
        .expect("target stream");
    let job = Republish {
        pool: pool.clone(),
        jetstream: bus.js.clone(),
        subjects: Subjects::new(&prefix),
        name: "resumed".into(),
        filter: RepublishFilter::default(),
        batch_size: 4,
    };
    let stop = CancellationToken::new();
    let first = job
        .run(Default::default(), &stop, |r| {
            if r.scanned >= 8 {
                stop.cancel();
            }
        })
        .await
        .expect("first run");
    assert_eq!(first.published, 8, "{first:?}");
    let second = job
        .run(Default::default(), &CancellationToken::new(), |_| {})
        .await
        .expect("second run");
    assert_eq!(second.started_after, first.ended_after, "it did not resume");
    assert_eq!(first.published + second.published, events as u64);
    let copies = bus.read(&target, &format!("{prefix}order.>"), 1).await;
    let ids: HashSet<String> = copies
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .expect("Nats-Msg-Id")
                .to_string()
        })
        .collect();
    assert_eq!(copies.len(), events, "a message was published twice");
    assert_eq!(ids.len(), events);
    // A third run, restarted from the start, is absorbed by the duplicate window.
    job.reset().await.expect("reset");
    let again = job
        .run(Default::default(), &CancellationToken::new(), |_| {})
        .await
        .expect("re-run");
    assert_eq!(again.duplicates, events as u64, "{again:?}");
    assert_eq!(
        bus.read(&target, &format!("{prefix}order.>"), 1)
            .await
            .len(),
        events
    );
    // Only one order, by the filter.
    let one: Uuid = sqlx::query_scalar::<_, String>("SELECT aggregate_id FROM events LIMIT 1")
        .fetch_one(&pool)
        .await
        .expect("an order")
        .parse()
        .expect("uuid");
    let only = Republish {
        name: "one-order".into(),
        filter: RepublishFilter {
            order: Some(one.to_string()),
            ..RepublishFilter::default()
        },
        ..job.clone()
    };
    let report = only
        .run(Default::default(), &CancellationToken::new(), |_| {})
        .await
        .expect("filtered run");
    let of_one: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(one.to_string())
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(report.published, of_one as u64);
    // The relay never ran and its checkpoint was never written.
    let relay_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feed_checkpoints WHERE consumer = $1")
            .bind(RELAY_CONSUMER)
            .fetch_one(&pool)
            .await
            .expect("checkpoints");
    assert_eq!(relay_rows, 0);
    // The CLI end to end into its own stream.
    args.from_position = "0".into();
    args.name = Some("cli".into());
    order_api::cli::republish(&settings, &args)
        .await
        .expect("the CLI runs");
    let cli_copies = bus.read(&target, &format!("{prefix}order.>"), 1).await;
    assert_eq!(
        cli_copies.len(),
        events,
        "the CLI's copies were not absorbed as duplicates"
    );
    let saved: i64 = sqlx::query_scalar(
        "SELECT events_total FROM feed_checkpoints WHERE consumer = 'republish:cli'",
    )
    .fetch_one(&pool)
    .await
    .expect("the CLI's checkpoint");
    assert_eq!(saved, events as i64);
}
