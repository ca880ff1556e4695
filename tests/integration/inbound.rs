//! Inbound events end to end against real NATS and Postgres: the effect of each message type,
//! exactly-once under redelivery and re-publish, the dead-letter stream for every bad input, retried
//! outages, per-order holds with ordered redrive, and the `dlq` CLI.
//!
//! Each test has its own events stream, dead-letter stream and subject prefix (deleted at the
//! end, even when the test fails), and drives the consumers round by round with `run_once`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use chrono::Utc;
use futures::StreamExt;
use order_api::app::messages::OrderInboundHandler;
use order_api::app::store::OrderStore;
use order_api::config::Settings;
use order_bus::dlq::{DeadLetters, ParkedMessage, RedriveTarget};
use order_bus::inbound::{
    BatchReport, Family, HandleError, InboundHandler, InboundMessage, Inbox, MessageContext,
    Subscriber,
};
use order_domain::commands::CreateOrder;
use order_domain::values::{Currency, NewLineItem};
use order_domain::{Order, OrderCommand, OrderStatus};
use order_tests::helpers::nats_url;
use order_tests::{spawn_app_with, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

mod model;

/// 2 × 50.00 + 2.50 fees + 1.20 tax.
const TOTAL: i64 = 10_370;

/// Deletes the test's streams when dropped, also when the test panics.
struct Cleanup {
    streams: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let streams = std::mem::take(&mut self.streams);
        let url = nats_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(url).await {
                    let js = jetstream::new(client);
                    for s in streams {
                        let _ = js.delete_stream(&s).await;
                    }
                }
            });
        })
        .join();
    }
}

/// One test's application, streams and publisher.
struct Harness {
    app: TestApp,
    js: Context,
    prefix: String,
    settings: Settings,
    _cleanup: Cleanup,
}

impl Harness {
    /// A running app with unique stream names and prefix, quick retries, and both streams
    /// created up front.
    async fn new(pool: PgPool, adjust: impl FnOnce(&mut Settings)) -> Self {
        let tag = format!("{:08x}", rand::random::<u32>());
        let prefix = format!("t{tag}");
        let stream = format!("INBOUND_{tag}");
        let dlq = format!("DLQ_{tag}");
        let cleanup = Cleanup {
            streams: vec![stream.clone(), dlq.clone()],
        };
        let app = spawn_app_with(pool, |s| {
            s.streams.events = stream.clone();
            s.streams.subject_prefix = prefix.clone();
            s.streams.dlq = dlq.clone();
            s.relay.enabled = false;
            s.inbound.backoff_ms = vec![50];
            s.inbound.max_deliver = 3;
            s.inbound.ack_wait_ms = 5_000;
            adjust(s);
        })
        .await;
        let settings = (*app.state.settings).clone();
        let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS is up"));
        order_bus::ensure_stream(&js, &settings.relay_config().stream)
            .await
            .expect("events stream");
        let mut dlq_config = settings.streams.dlq_config();
        dlq_config.ensure_stream = true;
        DeadLetters::new(js.clone(), app.pool.clone(), dlq_config)
            .ensure_stream()
            .await
            .expect("dead-letter stream");
        Self {
            app,
            js,
            prefix,
            settings,
            _cleanup: cleanup,
        }
    }

    fn store(&self) -> &OrderStore {
        &self.app.state.store
    }

    fn handler(&self) -> OrderInboundHandler {
        OrderInboundHandler::new(self.store().clone())
    }

    fn subscriber(&self, family: Family) -> Subscriber<OrderInboundHandler> {
        self.subscriber_with(family, self.handler())
    }

    fn subscriber_with<H: InboundHandler>(&self, family: Family, handler: H) -> Subscriber<H> {
        order_api::consumers::subscriber(
            &self.settings,
            family,
            self.js.clone(),
            self.app.pool.clone(),
            handler,
        )
    }

    fn dead_letters(&self) -> DeadLetters {
        order_api::consumers::dead_letters(&self.settings, self.js.clone(), self.app.pool.clone())
    }

    /// Publishes raw bytes on `subject` (unprefixed) and returns the stream sequence.
    async fn publish_raw(&self, subject: &str, body: Vec<u8>, headers: HeaderMap) -> u64 {
        self.js
            .publish_with_headers(format!("{}.{subject}", self.prefix), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("publish ack")
            .sequence
    }

    /// Publishes a message with a fresh `Nats-Msg-Id`.
    async fn publish(&self, body: &Value) -> u64 {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", Uuid::new_v4().to_string());
        let subject = body["type"].as_str().expect("type").to_owned();
        self.publish_raw(&subject, body.to_string().into_bytes(), h)
            .await
    }

    async fn order(&self, id: Uuid) -> Order {
        self.store()
            .load(id)
            .await
            .expect("load")
            .expect("order exists")
    }

    async fn parked(&self) -> Vec<ParkedMessage> {
        self.dead_letters().list().await.expect("list the DLQ")
    }

    async fn holds(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dlq_holds")
            .fetch_one(&self.app.pool)
            .await
            .expect("count holds")
    }

    /// Settings for calling the CLI functions: this test's database by URL.
    async fn cli_settings(&self) -> Settings {
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&self.app.pool)
            .await
            .expect("database name");
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let (server, _) = base.rsplit_once('/').expect("URL with a database");
        let mut s = self.settings.clone();
        s.database.url = format!("{server}/{db}").into();
        s
    }
}

/// Creates an order with a chosen id through the command path: one line of 2 × 50.00.
async fn create_stored_order(store: &OrderStore, id: Uuid) -> Order {
    create_order_with_item(store, id, Uuid::new_v4()).await
}

fn paid(id: &str, order: Uuid, intent: &str, amount: i64) -> Value {
    json!({"id": id, "type": "payment.succeeded",
           "payload": {"orderId": order, "paymentIntentId": intent, "amountCents": amount, "currency": "USD"}})
}

/// Runs rounds until `done` holds for the accumulated report, for at most 15 s. Retries wait
/// for their NAK delay (50 ms here), so this polls briefly instead of sleeping a fixed time.
async fn run_until<H: InboundHandler>(
    sub: &Subscriber<H>,
    done: impl Fn(&BatchReport) -> bool,
) -> BatchReport {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut total = BatchReport::default();
    loop {
        let r = sub.run_once().await.expect("round");
        total.processed += r.processed;
        total.duplicates += r.duplicates;
        total.parked += r.parked;
        total.retried += r.retried;
        if done(&total) {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; so far {total:?}"
        );
        if r.handled() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn event_types(history: &[order_api::app::store::StoredEvent]) -> Vec<&str> {
    history.iter().map(|e| e.event_type.as_str()).collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn payment_messages_confirm_or_record_failures_with_the_message_as_cause(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let a = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let b = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);

    let mut headers = HeaderMap::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    headers.insert("traceparent", traceparent);
    h.publish_raw(
        "payment.succeeded",
        paid("msg-paid-a", a, "pi_a", TOTAL)
            .to_string()
            .into_bytes(),
        headers,
    )
    .await;
    h.publish(&json!({"id": "msg-failed-b", "type": "payment.failed",
                      "payload": {"orderId": b, "paymentIntentId": "pi_b1", "reason": "card_declined"}}))
        .await;

    let r = payments.run_once().await.expect("round");
    assert_eq!((r.processed, r.parked, r.retried), (2, 0, 0), "{r:?}");
    assert_eq!(payments.run_once().await.expect("idle round").handled(), 0);

    let order_a = h.order(a).await;
    assert_eq!(order_a.status, OrderStatus::Paid);
    assert_eq!(order_a.payment_intent_id.as_deref(), Some("pi_a"));
    let history = h.store().history(a).await.expect("history");
    let confirmed = history.last().expect("an event");
    assert_eq!(confirmed.event_type, "OrderConfirmed");
    assert_eq!(confirmed.metadata["correlationId"], "msg-paid-a");
    assert_eq!(confirmed.metadata["causationId"], "msg-paid-a");
    assert_eq!(confirmed.metadata["traceparent"], traceparent);
    assert_eq!(
        confirmed.metadata["traceId"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let order_b = h.order(b).await;
    assert_eq!(order_b.status, OrderStatus::Pending);
    assert!(order_b.failed_payment_intents.contains("pi_b1"));
    let history = h.store().history(b).await.expect("history");
    assert_eq!(event_types(&history), ["OrderCreated", "PaymentFailed"]);
    assert_eq!(history[1].metadata["correlationId"], "msg-failed-b");
    assert!(h.parked().await.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn dispute_messages_lock_refunds_and_unlock_them_only_when_won(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let won = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let lost = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);
    let disputes = h.subscriber(Family::Dispute);
    h.publish(&paid("p-won", won, "pi_w", TOTAL)).await;
    h.publish(&paid("p-lost", lost, "pi_l", TOTAL)).await;
    assert_eq!(payments.run_once().await.expect("round").processed, 2);

    for (order, tag) in [(won, "w"), (lost, "l")] {
        h.publish(&json!({"id": format!("dc-{tag}"), "type": "dispute.created",
            "payload": {"orderId": order, "disputeId": format!("dp_{tag}"), "amountCents": TOTAL, "reason": "fraudulent"}}))
            .await;
    }
    assert_eq!(disputes.run_once().await.expect("round").processed, 2);
    assert!(h.order(won).await.refunds_locked());
    assert!(h.order(lost).await.refunds_locked());

    h.publish(&json!({"id": "du-w", "type": "dispute.updated",
        "payload": {"orderId": won, "disputeId": "dp_w", "status": "under_review"}}))
        .await;
    h.publish(&json!({"id": "dx-w", "type": "dispute.closed",
        "payload": {"orderId": won, "disputeId": "dp_w", "outcome": "won"}}))
        .await;
    h.publish(&json!({"id": "dx-l", "type": "dispute.closed",
        "payload": {"orderId": lost, "disputeId": "dp_l", "outcome": "lost"}}))
        .await;
    let r = disputes.run_once().await.expect("round");
    assert_eq!((r.processed, r.parked), (3, 0), "{r:?}");

    let w = h.order(won).await;
    assert!(!w.refunds_locked(), "a won dispute unlocks refunds");
    let types = event_types(&h.store().history(won).await.expect("history"))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderConfirmed",
            "DisputeOpened",
            "DisputeUpdated",
            "DisputeClosed"
        ]
    );
    let l = h.order(lost).await;
    assert!(
        l.lost_dispute && l.refunds_locked(),
        "a lost dispute keeps refunds locked"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn ticket_issued_records_tickets_against_line_items(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let order = create_stored_order(h.store(), Uuid::new_v4()).await;
    let (id, item) = (order.id.expect("id"), order.items[0].id);
    h.publish(&paid("p", id, "pi_t", TOTAL)).await;
    assert_eq!(
        h.subscriber(Family::Payment)
            .run_once()
            .await
            .expect("round")
            .processed,
        1
    );

    h.publish(&json!({"id": "t1", "type": "ticket.issued", "payload": {"orderId": id,
        "tickets": [{"itemId": item, "ticketId": "tkt_1"}, {"itemId": item, "ticketId": "tkt_2"}]}}))
        .await;
    let r = h
        .subscriber(Family::Ticket)
        .run_once()
        .await
        .expect("round");
    assert_eq!(r.processed, 1, "{r:?}");
    let tickets: Vec<String> = h
        .order(id)
        .await
        .tickets
        .into_iter()
        .map(|t| t.ticket_id)
        .collect();
    assert_eq!(tickets, ["tkt_1", "tkt_2"]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_redelivery_after_a_crash_before_the_ack_changes_nothing(pool: PgPool) {
    // A short ack wait, so the deliveries the "crashed" process never acked come back soon.
    let h = Harness::new(pool, |s| s.inbound.ack_wait_ms = 300).await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);
    let consumer = payments.ensure().await.expect("consumer");

    // Crash after the effect, before the inbox record and the ack.
    let seq = h.publish(&paid("m-crash-1", id, "pi_c", TOTAL)).await;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let delivery = batch.next().await.expect("a delivery").expect("a message");
    let msg = order_bus::inbound::parse(
        Family::Payment,
        "payment.succeeded",
        &delivery.payload,
        65_536,
    )
    .expect("parses");
    let ctx = MessageContext {
        subject: delivery.subject.to_string(),
        stream_sequence: seq,
        attempt: 1,
        traceparent: None,
        redrive_of: None,
    };
    payments
        .handler()
        .handle(&msg, &ctx)
        .await
        .expect("effect applied");
    drop(batch);
    drop(delivery);
    let version = h.order(id).await.version;

    let r = run_until(&payments, |r| r.handled() > 0).await;
    assert_eq!((r.processed, r.duplicates, r.parked), (1, 0, 0), "{r:?}");
    assert_eq!(
        h.order(id).await.version,
        version,
        "the redelivery changed nothing"
    );

    // Crash after the inbox record, before the ack: the redelivery is a known duplicate.
    let seq = h
        .publish(&json!({"id": "m-crash-2", "type": "payment.failed",
                         "payload": {"orderId": id, "paymentIntentId": "pi_other"}}))
        .await;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let delivery = batch.next().await.expect("a delivery").expect("a message");
    let mut conn = h.app.pool.acquire().await.expect("connection");
    Inbox::record(
        &mut conn,
        Family::Payment,
        "m-crash-2",
        &delivery.subject,
        Some(id),
        seq,
    )
    .await
    .expect("inbox record");
    drop(batch);
    drop(delivery);

    let r = run_until(&payments, |r| r.handled() > 0).await;
    assert_eq!((r.processed, r.duplicates), (0, 1), "{r:?}");
    let history = h.store().history(id).await.expect("history");
    assert_eq!(event_types(&history), ["OrderCreated", "OrderConfirmed"]);
    assert!(h.parked().await.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_id_published_again_under_other_msg_ids_changes_the_order_once(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);
    let disputes = h.subscriber(Family::Dispute);
    h.publish(&paid("pay-1", id, "pi_1", TOTAL)).await;
    h.publish(&paid("pay-1", id, "pi_1", TOTAL)).await;
    let r = payments.run_once().await.expect("round");
    assert_eq!((r.processed, r.duplicates), (1, 1), "{r:?}");

    let open = json!({"id": "d-open", "type": "dispute.created",
        "payload": {"orderId": id, "disputeId": "dp_1"}});
    let review = json!({"id": "d-review", "type": "dispute.updated",
        "payload": {"orderId": id, "disputeId": "dp_1", "status": "under_review"}});
    let respond = json!({"id": "d-respond", "type": "dispute.updated",
        "payload": {"orderId": id, "disputeId": "dp_1", "status": "needs_response"}});
    for m in [&open, &review, &respond] {
        h.publish(m).await;
    }
    assert_eq!(disputes.run_once().await.expect("round").processed, 3);

    // The older update again: the aggregate alone would apply it (the status differs), so only
    // the inbox stops it. Once with another Nats-Msg-Id, once with none.
    h.publish(&review).await;
    h.publish_raw(
        "dispute.updated",
        review.to_string().into_bytes(),
        HeaderMap::new(),
    )
    .await;
    let r = disputes.run_once().await.expect("round");
    assert_eq!((r.processed, r.duplicates), (0, 2), "{r:?}");

    let order = h.order(id).await;
    assert_eq!(
        order.open_disputes.get("dp_1").map(String::as_str),
        Some("needs_response")
    );
    let history = h.store().history(id).await.expect("history");
    assert_eq!(
        event_types(&history),
        [
            "OrderCreated",
            "OrderConfirmed",
            "DisputeOpened",
            "DisputeUpdated",
            "DisputeUpdated"
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn every_bad_input_is_parked_with_a_clear_error_and_the_consumer_keeps_going(pool: PgPool) {
    let h = Harness::new(pool, |s| s.inbound.max_payload_bytes = 4_096).await;
    let known = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let good = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);

    let huge = paid("huge", Uuid::new_v4(), "pi_h", TOTAL);
    let mut huge = huge.as_object().expect("object").clone();
    huge.insert("padding".into(), json!("x".repeat(10_000)));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("payment.succeeded", b"\xff\xfe{{ not json".to_vec(), "not valid JSON"),
        ("payment.succeeded", b"[1, 2, 3]".to_vec(), "wrong shape"),
        (
            "payment.refunded",
            json!({"id": "u1", "type": "payment.refunded", "payload": {"orderId": Uuid::new_v4()}}).to_string().into_bytes(),
            "unknown type 'payment.refunded'",
        ),
        (
            "payment.succeeded",
            json!({"type": "payment.succeeded", "payload": {"orderId": Uuid::new_v4(), "paymentIntentId": "pi", "amountCents": 1}})
                .to_string()
                .into_bytes(),
            "missing `id`",
        ),
        (
            "payment.succeeded",
            json!({"id": "no-order", "type": "payment.succeeded", "payload": {"paymentIntentId": "pi", "amountCents": 1}})
                .to_string()
                .into_bytes(),
            "missing `payload.orderId`",
        ),
        (
            "payment.succeeded",
            paid("unknown-order", Uuid::new_v4(), "pi_u", TOTAL).to_string().into_bytes(),
            "order not found",
        ),
        (
            "payment.succeeded",
            paid("nothing-taken", known, "pi_z", 0).to_string().into_bytes(),
            "`amountCents` must be positive",
        ),
        (
            "payment.succeeded",
            Value::Object(huge).to_string().into_bytes(),
            "exceeds the limit of 4096 bytes",
        ),
    ];
    let mut published = Vec::new();
    for (subject, body, _) in &cases {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        published.push(h.publish_raw(subject, body.clone(), headers).await);
    }
    h.publish(&paid("good", good, "pi_g", TOTAL)).await;

    let r = payments.run_once().await.expect("round");
    assert_eq!(
        (r.parked, r.processed, r.retried),
        (cases.len(), 1, 0),
        "{r:?}"
    );
    assert_eq!(
        h.order(good).await.status,
        OrderStatus::Paid,
        "the consumer kept going"
    );
    assert_eq!(h.order(known).await.status, OrderStatus::Pending);

    let parked = h.parked().await;
    assert_eq!(parked.len(), cases.len());
    let dlq_stream =
        h.js.get_stream(&h.settings.streams.dlq)
            .await
            .expect("DLQ stream");
    for ((p, (subject, body, expected)), seq) in parked.iter().zip(&cases).zip(&published) {
        let original = format!("{}.{subject}", h.prefix);
        assert!(
            p.error.contains(expected),
            "{subject}: '{}' lacks '{expected}'",
            p.error
        );
        assert_eq!(p.subject, original);
        assert_eq!(p.stream_sequence, Some(*seq));
        assert_eq!(p.attempts, Some(1));
        assert_eq!(&p.payload[..], &body[..], "the body is kept as it was");
        assert!(Utc::now() - p.parked_at < chrono::Duration::minutes(1));
        let raw = dlq_stream.get_raw_message(p.dlq_seq).await.expect("raw");
        assert_eq!(
            raw.subject.as_str(),
            format!("dlq.order-service.{original}")
        );
        assert!(
            raw.headers.get("traceparent").is_some(),
            "original headers are kept"
        );
    }
    // Every message whose order id was readable holds its order: the unknown type, the id-less
    // message, the unknown order and the zero amount.
    assert_eq!(h.holds().await, 4);
}

/// Fails the first `failures` calls as the database being down (a real closed pool), then
/// applies messages normally.
struct Outage {
    real: OrderInboundHandler,
    down: OrderInboundHandler,
    failures: AtomicUsize,
    calls: AtomicUsize,
}

impl Outage {
    async fn new(real: OrderInboundHandler, failures: usize) -> Self {
        let closed = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy(&std::env::var("DATABASE_URL").expect("DATABASE_URL"))
            .expect("lazy pool");
        closed.close().await;
        Self {
            real,
            down: OrderInboundHandler::new(OrderStore::new(closed)),
            failures: AtomicUsize::new(failures),
            calls: AtomicUsize::new(0),
        }
    }
}

impl InboundHandler for Outage {
    async fn handle(&self, msg: &InboundMessage, ctx: &MessageContext) -> Result<(), HandleError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let down = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            let e = self
                .down
                .handle(msg, ctx)
                .await
                .expect_err("the database is down");
            assert!(e.is_transient(), "an outage is transient: {e:?}");
            return Err(e);
        }
        self.real.handle(msg, ctx).await
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_database_outage_is_retried_not_parked(pool: PgPool) {
    let h = Harness::new(pool, |s| s.inbound.max_deliver = 5).await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber_with(Family::Payment, Outage::new(h.handler(), 2).await);
    h.publish(&paid("during-outage", id, "pi_o", TOTAL)).await;

    let r = run_until(&payments, |r| r.processed > 0).await;
    assert_eq!((r.retried, r.parked, r.processed), (2, 0, 1), "{r:?}");
    assert_eq!(payments.handler().calls.load(Ordering::SeqCst), 3);
    assert_eq!(h.order(id).await.status, OrderStatus::Paid);
    assert!(h.parked().await.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn an_outage_longer_than_the_retries_parks_the_message_as_retries_used_up(pool: PgPool) {
    let h = Harness::new(pool, |s| s.inbound.max_deliver = 3).await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber_with(Family::Payment, Outage::new(h.handler(), usize::MAX).await);
    h.publish(&paid("never", id, "pi_n", TOTAL)).await;

    let r = run_until(&payments, |r| r.parked > 0).await;
    assert_eq!((r.retried, r.parked), (2, 1), "{r:?}");
    let parked = h.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, Some(3));
    assert!(
        parked[0]
            .error
            .starts_with("retries used up after 3 attempts: the database is unavailable"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].order_id, Some(id));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_parked_order_holds_its_later_messages_and_redrive_replays_them_in_order(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let late = Uuid::new_v4(); // messages arrive before the order exists here
    let other = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);
    let tickets = h.subscriber(Family::Ticket);

    h.publish(&paid("late-pay", late, "pi_late", TOTAL)).await;
    let r = payments.run_once().await.expect("round");
    assert_eq!(r.parked, 1);
    let head = h.parked().await[0].dlq_seq;

    // The order's next message of the same family is parked behind the first...
    h.publish(&json!({"id": "late-fail", "type": "payment.failed",
        "payload": {"orderId": late, "paymentIntentId": "pi_late_0", "reason": "declined"}}))
        .await;
    assert_eq!(payments.run_once().await.expect("round").parked, 1);
    let parked = h.parked().await;
    assert_eq!(
        parked[1].error.split(':').next(),
        Some(format!("held behind {head}").as_str())
    );
    assert_eq!(parked[1].held_behind, Some(head));

    // ...while other orders keep flowing.
    h.publish(&paid("other-pay", other, "pi_other", TOTAL))
        .await;
    assert_eq!(payments.run_once().await.expect("round").processed, 1);
    assert_eq!(h.order(other).await.status, OrderStatus::Paid);

    // The cause goes away (the order arrives), and the operator redrives the head.
    let item = Uuid::new_v4();
    let created = create_order_with_item(h.store(), late, item).await;
    assert_eq!(created.status, OrderStatus::Pending);
    let report = order_api::cli::dlq_redrive(&h.cli_settings().await, RedriveTarget::Message(head))
        .await
        .expect("redrive");
    assert_eq!(report.republished, [head, parked[1].dlq_seq]);
    assert!(
        h.parked().await.is_empty(),
        "redriven messages leave the DLQ"
    );

    // Tickets may not overtake the payment: on an order not paid yet they are retried.
    h.publish(&json!({"id": "late-tickets", "type": "ticket.issued",
        "payload": {"orderId": late, "tickets": [{"itemId": item, "ticketId": "tkt_late"}]}}))
        .await;
    let r = tickets.run_once().await.expect("round");
    assert_eq!((r.retried, r.processed, r.parked), (1, 0, 0), "{r:?}");
    // The redriven payment messages replay in their original order: the confirm, then the
    // failure, which is moot by then.
    let r = run_until(&payments, |r| r.processed >= 2).await;
    assert_eq!(r.parked, 0, "{r:?}");
    let r = run_until(&tickets, |r| r.processed > 0).await;
    assert_eq!(r.parked, 0);

    let order = h.order(late).await;
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.tickets.len(), 1);
    let history = h.store().history(late).await.expect("history");
    assert_eq!(
        event_types(&history),
        ["OrderCreated", "OrderConfirmed", "TicketsIssued"]
    );
    assert_eq!(h.holds().await, 0, "the hold ended with its last message");

    // Released: the order's next message flows normally.
    h.publish(&json!({"id": "late-dispute", "type": "dispute.created",
        "payload": {"orderId": late, "disputeId": "dp_late"}}))
        .await;
    assert_eq!(
        h.subscriber(Family::Dispute)
            .run_once()
            .await
            .expect("round")
            .processed,
        1
    );
}

/// [`create_order`] with a chosen line item id, so that tickets published earlier can point
/// at it.
async fn create_order_with_item(store: &OrderStore, id: Uuid, item: Uuid) -> Order {
    create_order_expiring(store, id, item, chrono::Duration::minutes(15)).await
}

/// [`create_order_with_item`] with a chosen time to expiry.
async fn create_order_expiring(
    store: &OrderStore,
    id: Uuid,
    item: Uuid,
    expires_in: chrono::Duration,
) -> Order {
    let event_id = Uuid::new_v4();
    let now = Utc::now();
    store
        .execute(
            id,
            &HashMap::new(),
            |_| Ok(()),
            || {
                OrderCommand::CreateOrder(CreateOrder {
                    order_id: id,
                    order_number: format!("ORD-{}", &id.simple().to_string()[..8]),
                    tenant_id: "tenant-a".into(),
                    user_id: "user-1".into(),
                    event_id,
                    currency: Currency::parse("USD").expect("USD"),
                    items: vec![NewLineItem {
                        id: item,
                        ticket_type_id: event_id,
                        quantity: 2,
                        unit_price_cents: 5_000,
                    }],
                    fees_cents: 250,
                    tax_cents: 120,
                    expires_at: now + expires_in,
                    event_starts_at: None,
                    now,
                })
            },
        )
        .await
        .expect("order created")
        .order
}

#[sqlx::test(migrations = "../migrations")]
async fn a_redriven_message_that_fails_again_keeps_its_place_until_discarded(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    let payments = h.subscriber(Family::Payment);
    h.publish(&paid("nothing-taken", id, "pi_x", 0)).await;
    h.publish(&paid("right-amount", id, "pi_y", TOTAL)).await;
    assert_eq!(payments.run_once().await.expect("round").parked, 2);
    let before = h.parked().await;

    // Nothing fixed the first one: redriven, it fails again and parks in its old place, and the
    // second is parked behind it again instead of overtaking it.
    let report = h
        .dead_letters()
        .redrive(RedriveTarget::Order(id))
        .await
        .expect("redrive");
    assert_eq!(report.republished.len(), 2);
    let r = payments.run_once().await.expect("round");
    assert_eq!((r.parked, r.processed), (2, 0), "{r:?}");
    let after = h.parked().await;
    assert_eq!(after.len(), 2);
    assert!(
        after[0].error.contains("`amountCents` must be positive"),
        "{}",
        after[0].error
    );
    assert!(after[1]
        .error
        .starts_with(&format!("held behind {}", after[0].dlq_seq)));
    assert!(after
        .iter()
        .all(|p| before.iter().all(|b| b.dlq_seq != p.dlq_seq)));
    let queue = h
        .dead_letters()
        .holds()
        .queue(id, None)
        .await
        .expect("queue");
    let seqs: Vec<u64> = queue.iter().map(|r| r.seq()).collect();
    assert_eq!(seqs, [after[0].dlq_seq, after[1].dlq_seq]);
    assert_eq!(h.order(id).await.status, OrderStatus::Pending);

    // The operator drops the poison message and redrives the rest of the order.
    let settings = h.cli_settings().await;
    let text = order_api::cli::dlq_discard(&settings, after[0].dlq_seq)
        .await
        .expect("discard");
    assert!(text.contains("still has 1 parked message"), "{text}");
    order_api::cli::dlq_redrive(&settings, RedriveTarget::Order(id))
        .await
        .expect("redrive");
    assert_eq!(payments.run_once().await.expect("round").processed, 1);
    assert_eq!(h.order(id).await.status, OrderStatus::Paid);
    assert_eq!(h.holds().await, 0);
    assert!(h.parked().await.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn dlq_list_and_redrive_work_end_to_end_through_the_cli(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let late = Uuid::new_v4();
    let payments = h.subscriber(Family::Payment);
    h.publish_raw("payment.succeeded", b"garbage".to_vec(), HeaderMap::new())
        .await;
    h.publish(&paid("late", late, "pi_late", TOTAL)).await;
    assert_eq!(payments.run_once().await.expect("round").parked, 2);
    let settings = h.cli_settings().await;

    let table = order_api::cli::dlq_list(&settings, false)
        .await
        .expect("list");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("DLQ SEQ") && lines[0].contains("SUBJECT") && lines[0].contains("ORDER")
    );
    assert!(
        lines[0].contains("ATTEMPTS") && lines[0].contains("AGE") && lines[0].contains("ERROR")
    );
    let subject = format!("{}.payment.succeeded", h.prefix);
    assert!(
        lines[1].contains(&subject) && lines[1].contains("not valid JSON"),
        "{table}"
    );
    assert!(
        lines[2].contains(&late.to_string()) && lines[2].contains("order not found"),
        "{table}"
    );
    assert_eq!(lines.last().copied(), Some("2 parked"));
    let json = order_api::cli::dlq_list(&settings, true)
        .await
        .expect("list --json");
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows[1]["orderId"], json!(late));
    assert_eq!(rows[1]["attempts"], 1);

    // The order shows up; `dlq redrive --all` sends both back. The payment now succeeds; the
    // garbage cannot, and is parked again under a new sequence.
    create_stored_order(h.store(), late).await;
    let report = order_api::cli::dlq_redrive(&settings, RedriveTarget::All)
        .await
        .expect("redrive --all");
    assert_eq!(report.republished.len(), 2);
    assert!(order_api::cli::redrive_summary(&report).starts_with("republished 2 message(s)"));
    let r = payments.run_once().await.expect("round");
    assert_eq!((r.processed, r.parked), (1, 1), "{r:?}");
    assert_eq!(h.order(late).await.status, OrderStatus::Paid);

    let table = order_api::cli::dlq_list(&settings, false)
        .await
        .expect("list");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("not valid JSON") && !table.contains(&late.to_string()),
        "{table}"
    );
    let err = order_api::cli::dlq_redrive(&settings, RedriveTarget::Message(9_999))
        .await
        .expect_err("no such message");
    assert!(
        format!("{err:#}").contains("no parked message 9999"),
        "{err:#}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_workers_consume_inbound_messages_when_enabled(pool: PgPool) {
    // The app's own workers: no run_once here, so poll the outcome with a deadline. Stream
    // creation is off so the workers cannot re-create the streams after the test deletes them.
    let h = Harness::new(pool, |s| {
        s.inbound.enabled = true;
        s.streams.create = false;
        s.inbound.poll_ms = 20;
    })
    .await;
    let id = create_stored_order(h.store(), Uuid::new_v4())
        .await
        .id
        .expect("id");
    h.publish(&paid("via-worker", id, "pi_w", TOTAL)).await;
    // Done means recorded in the inbox, which happens right after the effect.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let recorded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = 'via-worker'")
                .fetch_one(&h.app.pool)
                .await
                .expect("inbox");
        if recorded == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the payment consumer did not handle the message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.order(id).await.status, OrderStatus::Paid);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_inbox_purge_keeps_recent_ids(pool: PgPool) {
    let inbox = Inbox::new(pool.clone());
    let mut conn = pool.acquire().await.expect("connection");
    Inbox::record(
        &mut conn,
        Family::Payment,
        "old",
        "payment.succeeded",
        None,
        1,
    )
    .await
    .expect("record");
    Inbox::record(
        &mut conn,
        Family::Payment,
        "new",
        "payment.succeeded",
        None,
        2,
    )
    .await
    .expect("record");
    sqlx::query(
        "UPDATE inbox SET processed_at = now() - interval '8 days' WHERE message_id = 'old'",
    )
    .execute(&pool)
    .await
    .expect("age a row");
    let purged = inbox
        .purge_older_than(Duration::from_secs(7 * 24 * 3600))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert!(inbox
        .contains(Family::Payment, "new")
        .await
        .expect("lookup"));
    assert!(!inbox
        .contains(Family::Payment, "old")
        .await
        .expect("lookup"));
}

// ---------------------------------------------------------------- late, stale, out of order
impl Harness {
    /// A new order's id (see [`create_order`]).
    async fn new_order(&self) -> Uuid {
        create_stored_order(self.store(), Uuid::new_v4())
            .await
            .id
            .expect("id")
    }

    /// The refund retry loop over this app, taking refunds at once.
    fn retrier(&self) -> order_api::app::refund::RefundRetrier {
        order_api::app::refund::RefundRetrier::new(
            self.app.pool.clone(),
            order_api::app::refund::RefundSaga::new(
                self.store().clone(),
                self.app.state.clients.clone(),
            ),
            Duration::ZERO,
        )
    }
}

/// Pays `id` through `payment.succeeded` with intent `pi_paid`.
async fn pay(h: &Harness, id: Uuid) {
    h.publish(&paid(&format!("pay-{id}"), id, "pi_paid", TOTAL))
        .await;
    let r = run_until(&h.subscriber(Family::Payment), |r| r.handled() > 0).await;
    assert_eq!(r.processed, 1, "{r:?}");
    assert_eq!(h.order(id).await.status, OrderStatus::Paid);
}

/// `POST /refunds` for the whole order, as api-gateway.
async fn refund_status(h: &Harness, id: Uuid) -> u16 {
    h.app
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/orders/{id}/refunds"),
            order_tests::Auth::v1("api-gateway"),
            &[("x-tenant-id", "tenant-a"), ("idempotency-key", "refund-1")],
            Some(&json!({"reason": "customer asked"})),
        )
        .await
        .status()
        .as_u16()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stale_payment_failure_is_a_no_op_and_the_dispute_after_it_locks_refunds(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = h.new_order().await;
    pay(&h, id).await;

    // A webhook retry of an older intent's failure, then the chargeback.
    h.publish(&json!({"id": "stale-fail", "type": "payment.failed",
        "payload": {"orderId": id, "paymentIntentId": "pi_older", "reason": "card_declined"}}))
        .await;
    h.publish(&json!({"id": "chargeback", "type": "dispute.created",
        "payload": {"orderId": id, "disputeId": "dp_cb", "amountCents": TOTAL}}))
        .await;
    let r = h
        .subscriber(Family::Payment)
        .run_once()
        .await
        .expect("round");
    assert_eq!((r.processed, r.parked, r.retried), (1, 0, 0), "{r:?}");
    let r = h
        .subscriber(Family::Dispute)
        .run_once()
        .await
        .expect("round");
    assert_eq!((r.processed, r.parked), (1, 0), "{r:?}");

    assert!(h.parked().await.is_empty(), "nothing parked");
    assert_eq!(h.holds().await, 0, "no order held");
    assert!(h.order(id).await.refunds_locked());
    assert_eq!(
        refund_status(&h, id).await,
        409,
        "no refund during a chargeback"
    );
    let history = h.store().history(id).await.expect("history");
    assert_eq!(
        event_types(&history),
        ["OrderCreated", "OrderConfirmed", "DisputeOpened"]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn dispute_messages_in_any_order_lock_refunds_and_park_nothing(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let updated_first = h.new_order().await;
    let closed_first = h.new_order().await;
    pay(&h, updated_first).await;
    pay(&h, closed_first).await;
    let disputes = h.subscriber(Family::Dispute);

    // The update overtakes the creation: refunds lock at the update already.
    h.publish(&json!({"id": "du-1", "type": "dispute.updated",
        "payload": {"orderId": updated_first, "disputeId": "dp_1", "status": "under_review"}}))
        .await;
    assert_eq!(disputes.run_once().await.expect("round").processed, 1);
    assert!(h.order(updated_first).await.refunds_locked());
    assert_eq!(refund_status(&h, updated_first).await, 409);
    h.publish(&json!({"id": "dc-1", "type": "dispute.created",
        "payload": {"orderId": updated_first, "disputeId": "dp_1", "amountCents": TOTAL}}))
        .await;
    assert_eq!(disputes.run_once().await.expect("round").processed, 1);

    // A lost close overtakes the creation: the late creation cannot reopen it.
    h.publish(&json!({"id": "dx-2", "type": "dispute.closed",
        "payload": {"orderId": closed_first, "disputeId": "dp_2", "outcome": "lost"}}))
        .await;
    h.publish(&json!({"id": "dc-2", "type": "dispute.created",
        "payload": {"orderId": closed_first, "disputeId": "dp_2"}}))
        .await;
    let r = disputes.run_once().await.expect("round");
    assert_eq!((r.processed, r.parked), (2, 0), "{r:?}");

    assert!(h.parked().await.is_empty());
    assert_eq!(h.holds().await, 0);
    let a = h.order(updated_first).await;
    assert_eq!(
        a.open_disputes.get("dp_1").map(String::as_str),
        Some("under_review")
    );
    let b = h.order(closed_first).await;
    assert!(b.open_disputes.is_empty() && b.lost_dispute && b.refunds_locked());
    assert_eq!(
        event_types(&h.store().history(closed_first).await.expect("history")),
        [
            "OrderCreated",
            "OrderConfirmed",
            "DisputeOpened",
            "DisputeClosed"
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_payment_that_cannot_confirm_its_order_is_rejected_and_its_money_goes_back(pool: PgPool) {
    let peers = order_tests::peers::Peers::start().await;
    let h = Harness::new(pool, |s| peers.configure(s)).await;
    // Expired by the time its payment arrives (a late webhook, or a NAK backoff).
    let expired = create_order_expiring(
        h.store(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        chrono::Duration::milliseconds(200),
    )
    .await
    .id
    .expect("id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Paid twice: the second capture is a double charge.
    let twice = h.new_order().await;
    pay(&h, twice).await;
    // Paid the wrong amount.
    let short = h.new_order().await;

    h.publish(&paid("late", expired, "pi_late", TOTAL)).await;
    h.publish(&paid("second", twice, "pi_second", TOTAL)).await;
    h.publish(&paid("short", short, "pi_short", TOTAL - 1))
        .await;
    let r = h
        .subscriber(Family::Payment)
        .run_once()
        .await
        .expect("round");
    assert_eq!((r.processed, r.parked, r.retried), (3, 0, 0), "{r:?}");
    assert!(h.parked().await.is_empty());

    for (id, status, intent) in [
        (expired, OrderStatus::Pending, "pi_late"),
        (twice, OrderStatus::Paid, "pi_second"),
        (short, OrderStatus::Pending, "pi_short"),
    ] {
        let order = h.order(id).await;
        assert_eq!(order.status, status);
        assert_eq!(order.rejected_payments.len(), 1);
        assert_eq!(order.rejected_payments[0].payment_intent_id, intent);
        let types = event_types(&h.store().history(id).await.expect("history"))
            .last()
            .map(|t| (*t).to_owned());
        assert_eq!(types.as_deref(), Some("PaymentRejected"));
    }

    // The refund retry loop gives each one back, under its own idempotency key.
    let retrier = h.retrier();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut settled = 0;
    while settled < 3 {
        settled += retrier.run_once().await.expect("retry pass").settled;
        assert!(Instant::now() < deadline, "settled only {settled} of 3");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = peers.payment.hits("/internal/refunds");
    assert_eq!(calls.len(), 3, "one refund call each");
    for (id, intent) in [
        (expired, "pi_late"),
        (twice, "pi_second"),
        (short, "pi_short"),
    ] {
        let refund_id = Order::rejected_payment_refund_id(id, intent);
        let call = calls
            .iter()
            .find(|c| c.header("idempotency-key") == refund_id.to_string())
            .unwrap_or_else(|| panic!("a refund call for {intent}"));
        assert_eq!(call.header("x-tenant-id"), "tenant-a", "the order's tenant");
        let body = call.body.clone().expect("a body");
        assert_eq!(body["paymentIntentId"], intent);
        let history = h.store().history(id).await.expect("history");
        assert_eq!(
            event_types(&history).last().copied(),
            Some("PaymentReturned")
        );
    }
    // The double charge went back; the order's own payment stands.
    let order = h.order(twice).await;
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.refundable_cents(), TOTAL);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_parked_message_holds_only_its_own_family(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = h.new_order().await;
    // A dispute message that can never apply (no dispute id) is parked and holds the order's
    // disputes...
    h.publish(&json!({"id": "bad-dispute", "type": "dispute.created",
        "payload": {"orderId": id, "disputeId": ""}}))
        .await;
    assert_eq!(
        h.subscriber(Family::Dispute)
            .run_once()
            .await
            .expect("round")
            .parked,
        1
    );
    // ...but not its payment, which confirms it.
    h.publish(&paid("pay", id, "pi_1", TOTAL)).await;
    let r = h
        .subscriber(Family::Payment)
        .run_once()
        .await
        .expect("round");
    assert_eq!((r.processed, r.parked), (1, 0), "{r:?}");
    assert_eq!(h.order(id).await.status, OrderStatus::Paid);
    assert_eq!(h.holds().await, 1, "the dispute stays parked");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_id_from_two_families_is_two_messages(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = h.new_order().await;
    // Two producers whose id schemes overlap.
    h.publish(&paid("evt-1", id, "pi_1", TOTAL)).await;
    h.publish(&json!({"id": "evt-1", "type": "dispute.created",
        "payload": {"orderId": id, "disputeId": "dp_1"}}))
        .await;
    let r = h
        .subscriber(Family::Payment)
        .run_once()
        .await
        .expect("round");
    assert_eq!(r.processed, 1, "{r:?}");
    let r = h
        .subscriber(Family::Dispute)
        .run_once()
        .await
        .expect("round");
    assert_eq!((r.processed, r.duplicates), (1, 0), "{r:?}");
    assert!(h.order(id).await.refunds_locked());
}

#[sqlx::test(migrations = "../migrations")]
async fn no_money_goes_back_while_a_dispute_is_open(pool: PgPool) {
    let peers = order_tests::peers::Peers::start().await;
    let h = Harness::new(pool, |s| peers.configure(s)).await;
    let id = h.new_order().await;
    pay(&h, id).await;
    // A second charge, disputed by the buyer: its return must wait for the dispute, or the
    // money could go back twice (once by the refund, once by the chargeback).
    h.publish(&paid("second", id, "pi_second", TOTAL)).await;
    h.publish(&json!({"id": "dc", "type": "dispute.created",
        "payload": {"orderId": id, "disputeId": "dp_second"}}))
        .await;
    run_until(&h.subscriber(Family::Payment), |r| r.processed > 0).await;
    run_until(&h.subscriber(Family::Dispute), |r| r.processed > 0).await;

    let retrier = h.retrier();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pass = retrier.run_once().await.expect("retry pass");
        if pass.did_work() {
            assert_eq!(pass.settled, 0, "a return settled during the dispute");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retry loop never saw the return"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peers.payment.hits("/internal/refunds").is_empty());

    // Won: the return goes out.
    h.publish(&json!({"id": "dx", "type": "dispute.closed",
        "payload": {"orderId": id, "disputeId": "dp_second", "outcome": "won"}}))
        .await;
    run_until(&h.subscriber(Family::Dispute), |r| r.processed > 0).await;
    sqlx::query("UPDATE pending_refunds SET next_attempt_at = now()")
        .execute(&h.app.pool)
        .await
        .expect("due now");
    let deadline = Instant::now() + Duration::from_secs(15);
    while retrier.run_once().await.expect("retry pass").settled == 0 {
        assert!(Instant::now() < deadline, "the return never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(peers.payment.hits("/internal/refunds").len(), 1);
    assert_eq!(
        event_types(&h.store().history(id).await.expect("history"))
            .last()
            .copied(),
        Some("PaymentReturned")
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_message_that_cannot_be_parked_yet_still_holds_its_order(pool: PgPool) {
    let h = Harness::new(pool, |_| {}).await;
    let id = h.new_order().await;
    let payments = h.subscriber(Family::Payment);
    payments
        .run_once()
        .await
        .expect("an idle round creates the consumer");
    // Broker trouble on the dead-letter side: parking cannot publish.
    h.js.delete_stream(&h.settings.streams.dlq)
        .await
        .expect("delete the DLQ stream");

    h.publish(&paid("poison", id, "pi_p", 0)).await;
    let r = payments.run_once().await.expect("round");
    assert_eq!((r.retried, r.parked), (1, 0), "{r:?}");
    assert_eq!(h.holds().await, 1, "the order is held before the publish");

    // A later message of the order may not overtake the one that could not be parked.
    h.publish(&json!({"id": "later", "type": "payment.failed",
        "payload": {"orderId": id, "paymentIntentId": "pi_q", "reason": "declined"}}))
        .await;
    run_until(&payments, |r| r.retried >= 2).await;
    assert_eq!(
        event_types(&h.store().history(id).await.expect("history")),
        ["OrderCreated"],
        "the later message overtook the unparked one"
    );

    // Young reservations survive the stale-reservation purge.
    let purged = h
        .dead_letters()
        .holds()
        .purge_reservations_older_than(Duration::from_secs(3600))
        .await
        .expect("purge");
    assert_eq!(purged, 0);

    // The dead-letter stream is back. A redrive of the order has nothing to republish yet
    // (both messages are still being redelivered from their own stream) and must not fail.
    let mut dlq_config = h.settings.streams.dlq_config();
    dlq_config.ensure_stream = true;
    DeadLetters::new(h.js.clone(), h.app.pool.clone(), dlq_config)
        .ensure_stream()
        .await
        .expect("dead-letter stream");
    let report = h
        .dead_letters()
        .redrive(RedriveTarget::Order(id))
        .await
        .expect("a redrive with reservations only");
    assert!(report.republished.is_empty(), "{report:?}");
    // Both park, in their order, with their own reasons.
    run_until(&payments, |r| r.parked >= 2).await;
    let parked = h.parked().await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    let by_id = |id: &str| {
        parked
            .iter()
            .find(|p| p.message_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} parked: {parked:?}"))
    };
    let (poison, later) = (by_id("poison"), by_id("later"));
    assert!(
        poison.error.contains("`amountCents` must be positive"),
        "{}",
        poison.error
    );
    assert!(later.error.starts_with("held behind"), "{}", later.error);
    // Whichever redelivery parked first, the order's queue keeps the first-held message first.
    let queue = h
        .dead_letters()
        .holds()
        .queue(id, None)
        .await
        .expect("queue");
    let seqs: Vec<u64> = queue.iter().map(|r| r.seq()).collect();
    assert_eq!(seqs, [poison.dlq_seq, later.dlq_seq], "{queue:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_payment_confirms_only_what_payment_service_vouches_for(pool: PgPool) {
    let peers = order_tests::peers::Peers::start().await;
    let h = Harness::new(pool, |s| {
        peers.configure(s);
        s.inbound.max_deliver = 2;
    })
    .await;
    let payments = h.subscriber_with(
        Family::Payment,
        h.handler()
            .verifying_payments(h.app.state.clients.payment.clone()),
    );
    let (genuine, forged, unknown, no_currency) = (
        h.new_order().await,
        h.new_order().await,
        h.new_order().await,
        h.new_order().await,
    );
    let status = |intent: &str, order: Uuid, amount: i64| {
        order_tests::peers::Reply::ok(json!({"paymentIntentId": intent, "status": "succeeded",
            "refundable": true, "orderId": order, "amountCents": amount, "currency": "USD"}))
    };
    peers.payment.on(
        "GET",
        "/internal/payments/pi_genuine/status",
        vec![status("pi_genuine", genuine, TOTAL)],
    );
    // A forged message: payment-service knows the intent, for another order and amount.
    peers.payment.on(
        "GET",
        "/internal/payments/pi_forged/status",
        vec![status("pi_forged", genuine, 1)],
    );
    peers.payment.on(
        "GET",
        "/internal/payments/pi_unknown/status",
        vec![order_tests::peers::Reply::status(404)],
    );

    h.publish(&paid("m-genuine", genuine, "pi_genuine", TOTAL))
        .await;
    h.publish(&paid("m-forged", forged, "pi_forged", TOTAL))
        .await;
    h.publish(&paid("m-unknown", unknown, "pi_unknown", TOTAL))
        .await;
    h.publish(&json!({"id": "m-no-currency", "type": "payment.succeeded",
        "payload": {"orderId": no_currency, "paymentIntentId": "pi_nc", "amountCents": TOTAL}}))
        .await;
    let r = run_until(&payments, |r| r.processed + r.parked >= 4).await;
    assert_eq!((r.processed, r.parked), (1, 3), "{r:?}");

    assert_eq!(h.order(genuine).await.status, OrderStatus::Paid);
    for id in [forged, unknown, no_currency] {
        let order = h.order(id).await;
        assert_eq!(order.status, OrderStatus::Pending, "{id} was confirmed");
        assert!(order.rejected_payments.is_empty(), "no money to give back");
    }
    let parked = h.parked().await;
    let error_of = |id: &str| {
        parked
            .iter()
            .find(|p| p.message_id.as_deref() == Some(id))
            .map(|p| p.error.clone())
            .unwrap_or_else(|| panic!("{id} parked: {parked:?}"))
    };
    assert!(
        error_of("m-forged").contains("payment-service does not confirm this payment"),
        "{parked:?}"
    );
    assert!(
        error_of("m-unknown").starts_with("retries used up"),
        "unverifiable is retried first: {parked:?}"
    );
    assert!(
        error_of("m-no-currency").contains("`payload.currency` must not be empty"),
        "{parked:?}"
    );
}
