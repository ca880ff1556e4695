//! The refund saga end to end (docs/contract.md §5): HTTP in, facts from real peer servers that
//! verify every signature, `initiateRefund` under the refund id, the outcome in the event
//! store, and the retry loop that finishes refunds left half-way.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use order_api::app::refund::{RefundRetrier, RefundSaga, RetryPass};
use order_domain::commands::{RefundFacts, RequestRefund};
use order_domain::OrderCommand;
use order_tests::helpers::{event_types, metrics_text};
use order_tests::peers::{unreachable_url, Peers, Reply};
use order_tests::{json_of, order_body, spawn_app_with, Auth, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const EVENT_ID: &str = "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b";
const TOTAL: i64 = 17870;
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// An app pointed at `peers`, with short client timeouts and backoffs; the background retry
/// loop is left to its first pass only, so tests drive [`RefundRetrier::run_once`] themselves.
async fn app(
    pool: PgPool,
    peers: &Peers,
    adjust: impl FnOnce(&mut order_api::config::Settings),
) -> TestApp {
    spawn_app_with(pool, |s| {
        peers.configure(s);
        s.peers.payment_timeout_ms = 300;
        s.peers.ticket_timeout_ms = 300;
        s.peers.event_timeout_ms = 300;
        s.peers.retry_max_times = 2;
        s.peers.retry_min_delay_ms = 10;
        s.peers.retry_max_delay_ms = 100;
        s.refunds.retry_every_secs = 3_600;
        adjust(s);
    })
    .await
}

/// A retry loop that takes refunds at once (no grace period).
fn retrier(app: &TestApp) -> RefundRetrier {
    RefundRetrier::new(
        app.pool.clone(),
        RefundSaga::new(app.state.store.clone(), app.state.clients.clone()),
        Duration::ZERO,
    )
}

/// Runs the retry loop until a pass does work. A refund becomes visible to the loop's
/// projector only once no older transaction anywhere in the cluster is still open (the
/// commit-safe feed's fence), which concurrent tests can delay by a few milliseconds; so this
/// polls, with a bound, instead of assuming the first pass sees it.
async fn first_pass_with_work(retrier: &RefundRetrier) -> RetryPass {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pass = retrier.run_once().await.expect("retry pass");
        if pass.did_work() {
            return pass;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry loop never saw the refund"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creates and pays an order (intent `pi_1`), records `tickets` on it, and scripts the peers
/// for it. Returns the order id.
async fn paid_order(app: &TestApp, peers: &Peers, tickets: &[&str], body: Value) -> String {
    let resp = app.post("/api/v1/orders", &body).await;
    let (status, created) = json_of(resp).await;
    assert_eq!(status, 201, "{created}");
    let id = created["order"]["id"].as_str().expect("id").to_owned();
    let confirm = json!({"paymentIntentId": "pi_1", "amountCents": TOTAL});
    let (status, paid) = json_of(
        app.post(&format!("/api/v1/orders/{id}/confirm"), &confirm)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{paid}");
    if !tickets.is_empty() {
        let (_, history) = json_of(
            app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
                .await,
        )
        .await;
        let item = history["events"][0]["payload"]["items"][0]["id"].clone();
        let list: Vec<Value> = tickets
            .iter()
            .map(|t| json!({"itemId": item, "ticketId": t}))
            .collect();
        let (status, body) = json_of(
            app.post(
                &format!("/api/v1/orders/{id}/tickets"),
                &json!({"tickets": list}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    peers.order(&id, EVENT_ID, tickets);
    id
}

async fn refund(app: &TestApp, id: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let traceparent = format!("00-{TRACE}-b7ad6b7169203331-01");
    // Without a key of its own, each call is a new refund, under a fresh key.
    let fresh = Uuid::new_v4().to_string();
    let headers = vec![
        ("x-tenant-id", "tenant-a"),
        ("traceparent", traceparent.as_str()),
        ("idempotency-key", key.unwrap_or(&fresh)),
    ];
    let resp = app
        .send(
            Method::POST,
            &format!("/api/v1/orders/{id}/refunds"),
            Auth::v1("api-gateway"),
            &headers,
            Some(&body),
        )
        .await;
    json_of(resp).await
}

fn refund_calls(peers: &Peers) -> usize {
    peers.payment.hits("/internal/refunds").len()
}

fn all_verified(peers: &Peers) {
    for peer in [&peers.payment, &peers.ticket, &peers.event] {
        for r in peer.received() {
            assert_eq!(r.rejected, None, "{} refused {}", peer.url, r.target);
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_gathers_the_facts_then_completes_under_its_idempotency_key(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &["tkt_1", "tkt_2"], order_body()).await;

    let (status, body) = refund(
        &app,
        &id,
        json!({"amountCents": 5000, "reason": "customer request"}),
        Some("r-1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "PARTIALLY_REFUNDED");
    assert_eq!(body["order"]["refundedCents"], 5000);
    assert_eq!(body["refund"]["status"], "completed");
    let refund_id = body["refund"]["id"].as_str().expect("refund id").to_owned();

    // The facts: payment status, the order's tickets and each ticket's transfer status, the event.
    assert_eq!(
        peers.payment.hits("/internal/payments/pi_1/status").len(),
        1
    );
    assert_eq!(
        peers
            .ticket
            .hits(&format!("/internal/orders/{id}/tickets"))
            .len(),
        1
    );
    for t in ["tkt_1", "tkt_2"] {
        assert_eq!(
            peers
                .ticket
                .hits(&format!("/internal/tickets/{t}/transfer-status"))
                .len(),
            1
        );
    }
    assert_eq!(
        peers
            .event
            .hits(&format!("/internal/events/{EVENT_ID}"))
            .len(),
        1
    );
    let calls = peers.payment.hits("/internal/refunds");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("idempotency-key"), refund_id);
    let sent = calls[0].body.clone().expect("JSON body");
    assert_eq!(sent["refundId"], refund_id);
    assert_eq!(sent["orderId"], id);
    assert_eq!(sent["paymentIntentId"], "pi_1");
    assert_eq!(sent["amountCents"], 5000);
    assert_eq!(sent["currency"], "USD");
    assert_eq!(calls[0].header("x-tenant-id"), "tenant-a");
    assert!(
        calls[0]
            .header("traceparent")
            .starts_with(&format!("00-{TRACE}-")),
        "child of the incoming trace"
    );
    all_verified(&peers);

    // The same request again resumes the same, finished refund: no second payout.
    let (status, again) = refund(
        &app,
        &id,
        json!({"amountCents": 5000, "reason": "customer request"}),
        Some("r-1"),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["refund"]["id"], refund_id);
    assert_eq!(again["order"]["refundedCents"], 5000);
    assert_eq!(refund_calls(&peers), 1);
    assert_eq!(
        event_types(&pool, &id).await[3..],
        ["RefundRequested", "OrderRefunded"]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_orders_own_rules_refuse_before_any_call_goes_out(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let unpaid = app.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, body) = refund(&app, &unpaid, json!({"reason": "r"}), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot refund"),
        "{body}"
    );

    let paid = paid_order(&app, &peers, &[], order_body()).await;
    let before: usize = [&peers.payment, &peers.ticket, &peers.event]
        .iter()
        .map(|p| p.received().len())
        .sum();
    let (status, body) = refund(
        &app,
        &paid,
        json!({"amountCents": TOTAL + 1, "reason": "r"}),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // Another tenant's order does not exist for this caller.
    let resp = app
        .send(
            Method::POST,
            &format!("/api/v1/orders/{paid}/refunds"),
            Auth::v1("api-gateway"),
            &[
                ("x-tenant-id", "tenant-b"),
                ("idempotency-key", "other-tenant"),
            ],
            Some(&json!({"reason": "r"})),
        )
        .await;
    assert_eq!(resp.status(), 404);
    let after: usize = [&peers.payment, &peers.ticket, &peers.event]
        .iter()
        .map(|p| p.received().len())
        .sum();
    assert_eq!(after, before, "no peer was asked");

    let (status, body) = refund(&app, &paid, json!({"reason": "everything"}), None).await;
    assert_eq!(
        (status, body["order"]["status"].clone()),
        (200, json!("REFUNDED")),
        "{body}"
    );
    let before = peers.payment.received().len();
    let (status, body) = refund(&app, &paid, json!({"reason": "again"}), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        peers.payment.received().len(),
        before,
        "nothing left: refused at once"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_is_refused_when_a_ticket_was_transferred(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &["tkt_1", "tkt_2"], order_body()).await;
    peers.ticket.on(
        "GET",
        "/internal/tickets/tkt_2/transfer-status",
        vec![Reply::ok(json!({"ticketId": "tkt_2", "transferred": true}))],
    );
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["message"],
        "refund refused: ticket tkt_2 was transferred"
    );
    assert_eq!(refund_calls(&peers), 0);
    assert!(
        !event_types(&pool, &id)
            .await
            .contains(&"RefundRequested".to_owned()),
        "nothing recorded"
    );
    all_verified(&peers);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_is_refused_when_the_ticket_service_is_down(pool: PgPool) {
    let peers = Peers::start().await;
    let down = unreachable_url().await;
    let app = app(pool.clone(), &peers, |s| s.peers.ticket_url = down).await;
    let id = paid_order(&app, &peers, &["tkt_1"], order_body()).await;
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(status, 409, "fail closed: {body}");
    assert_eq!(
        body["message"],
        "refund refused: cannot verify the order's tickets: ticket-service is unreachable (getTicketsForOrder)"
    );
    assert_eq!(refund_calls(&peers), 0);
    assert!(!event_types(&pool, &id)
        .await
        .contains(&"RefundRequested".to_owned()));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_is_refused_when_payment_service_cannot_confirm_it_is_refundable(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    peers.payment.on(
        "GET",
        "/internal/payments/pi_1/status",
        vec![Reply::status(503)],
    );
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["message"],
        "refund refused: payment-service could not confirm that the payment is refundable"
    );
    peers.payment.on(
        "GET",
        "/internal/payments/pi_1/status",
        vec![Reply::ok(
            json!({"paymentIntentId": "pi_1", "status": "disputed", "refundable": false}),
        )],
    );
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not refundable (status 'disputed')"),
        "{body}"
    );
    assert_eq!(refund_calls(&peers), 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn after_the_event_started_only_a_cancelled_or_postponed_event_is_refundable(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let mut body = order_body();
    body["eventStartsAt"] = json!((Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    let id = paid_order(&app, &peers, &[], body).await;
    let event_path = format!("/internal/events/{EVENT_ID}");

    let (status, answer) =
        refund(&app, &id, json!({"amountCents": 100, "reason": "r"}), None).await;
    assert_eq!(status, 409, "scheduled and started: {answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already started"),
        "{answer}"
    );

    peers.event.on("GET", &event_path, vec![Reply::status(503)]);
    let (status, answer) =
        refund(&app, &id, json!({"amountCents": 100, "reason": "r"}), None).await;
    assert_eq!(
        status, 409,
        "event-service's fallback widens nothing: {answer}"
    );

    peers.event.on(
        "GET",
        &event_path,
        vec![Reply::ok(json!({"id": EVENT_ID, "status": "cancelled"}))],
    );
    let (status, answer) =
        refund(&app, &id, json!({"amountCents": 100, "reason": "r"}), None).await;
    assert_eq!(status, 200, "a cancelled event is refundable: {answer}");
}

#[sqlx::test(migrations = "../migrations")]
async fn payment_service_failing_leaves_the_refund_requested_and_the_loop_finishes_it(
    pool: PgPool,
) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;

    // Slower than the timeout: 503, the refund stays requested.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded").after(Duration::from_secs(2))],
    );
    let (status, body) = refund(
        &app,
        &id,
        json!({"amountCents": 1000, "reason": "r"}),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.starts_with("payment-service did not answer initiateRefund in time; refund "),
        "{message}"
    );
    assert!(
        message.ends_with("is recorded as requested and will be retried automatically"),
        "{message}"
    );
    assert_eq!(
        refund_calls(&peers),
        3,
        "a write with an idempotency key is retried"
    );

    // Answering 500: 502, still requested.
    peers
        .payment
        .on("POST", "/internal/refunds", vec![Reply::status(500)]);
    let (status, body) = refund(
        &app,
        &id,
        json!({"amountCents": 1000, "reason": "r"}),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("payment-service answered 500 to initiateRefund; refund "));
    assert_eq!(
        event_types(&pool, &id).await.last().map(String::as_str),
        Some("RefundRequested")
    );

    // payment-service recovers; the loop finishes the refund, under the same idempotency key.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded")],
    );
    let retrier = retrier(&app);
    let pass = first_pass_with_work(&retrier).await;
    assert_eq!((pass.claimed, pass.settled), (1, 1));
    assert!(
        !retrier.run_once().await.expect("pass").did_work(),
        "nothing left"
    );
    let keys: Vec<String> = peers
        .payment
        .hits("/internal/refunds")
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "one refund, one key: {keys:?}"
    );
    let (_, view) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
            .await,
    )
    .await;
    let last = view["events"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["type"], "OrderRefunded", "{view}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_left_requested_by_a_crash_is_completed_by_the_retry_loop(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    let order_id = Uuid::parse_str(&id).expect("uuid");

    // The crash: RefundRequested is recorded, and the process dies before calling payment-service.
    let refund_id = Uuid::now_v7();
    let metadata = HashMap::from([
        ("requestId".to_owned(), "req-crashed".to_owned()),
        ("traceId".to_owned(), TRACE.to_owned()),
        ("tenantId".to_owned(), "tenant-a".to_owned()),
    ]);
    app.state
        .store
        .execute(
            order_id,
            &metadata,
            |_| Ok(()),
            || {
                OrderCommand::RequestRefund(RequestRefund {
                    refund_id,
                    amount_cents: None,
                    reason: "requested before the crash".into(),
                    facts: RefundFacts::default(),
                    now: Utc::now(),
                })
            },
        )
        .await
        .expect("refund requested");
    assert_eq!(refund_calls(&peers), 0);

    let retrier = retrier(&app);
    let pass = first_pass_with_work(&retrier).await;
    assert_eq!((pass.claimed, pass.settled), (1, 1));

    let calls = peers.payment.hits("/internal/refunds");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].rejected, None);
    assert_eq!(calls[0].header("idempotency-key"), refund_id.to_string());
    assert_eq!(calls[0].body.as_ref().expect("body")["amountCents"], TOTAL);
    assert_eq!(calls[0].header("x-tenant-id"), "tenant-a");
    assert_eq!(
        calls[0].header("x-trace-id"),
        TRACE,
        "the retry correlates with the original request"
    );

    let order = app
        .state
        .store
        .load(order_id)
        .await
        .expect("load")
        .expect("order");
    assert_eq!(order.status, order_domain::OrderStatus::Refunded);
    assert_eq!(order.refunded_cents, TOTAL);
    assert!(
        !retrier.run_once().await.expect("pass").did_work(),
        "nothing left to finish"
    );
    assert!(order_projections::refund_saga::pending(&pool)
        .await
        .expect("pending")
        .is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_the_provider_refuses_is_recorded_as_failed(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    peers
        .payment
        .on("POST", "/internal/refunds", vec![Reply::refund("failed")]);
    let (status, body) = refund(&app, &id, json!({"amountCents": 1000, "reason": "r"}), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("scripted failed"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is recorded as failed"),
        "{body}"
    );

    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund_refused("scripted refusal")],
    );
    let (status, body) = refund(&app, &id, json!({"amountCents": 1000, "reason": "r"}), None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(refund_calls(&peers), 2, "a refusal is not retried");
    assert_eq!(
        event_types(&pool, &id).await[1..],
        [
            "OrderConfirmed",
            "RefundRequested",
            "RefundFailed",
            "RefundRequested",
            "RefundFailed"
        ]
    );

    // The failed amounts were released: the whole total can still be refunded.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded")],
    );
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(
        (status, body["order"]["refundedCents"].clone()),
        (200, json!(TOTAL)),
        "{body}"
    );
}

/// payment-service answers `answer` to `initiateRefund`, which is no verdict on the refund: the
/// refund stays requested with its amount reserved, the caller hears that it will be retried,
/// and once payment-service answers, one pass of the retry loop completes it, once, under the
/// same idempotency key. `alert` is the `refunds_unsettled_total` reason the answer raises.
async fn a_refund_stays_requested_until_the_retry_settles_it(
    pool: PgPool,
    answer: Reply,
    alert: Option<&str>,
) {
    let code = answer.status;
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    let order_id = Uuid::parse_str(&id).expect("uuid");
    peers.payment.on("POST", "/internal/refunds", vec![answer]);

    let (status, body) = refund(
        &app,
        &id,
        json!({"amountCents": 1000, "reason": "r"}),
        Some("k-1"),
    )
    .await;
    let types = event_types(&pool, &id).await;
    assert!(
        !types.iter().any(|t| t == "RefundFailed"),
        "a {code} is not a refusal: {types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("RefundRequested"),
        "{types:?}"
    );
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "payment-service answered {code} to initiateRefund; refund "
        )),
        "{message}"
    );
    assert!(
        message.ends_with("is recorded as requested and will be retried automatically"),
        "{message}"
    );

    // The amount stays reserved: the whole total is more than is left to refund.
    let order = app
        .state
        .store
        .load(order_id)
        .await
        .expect("load")
        .expect("order");
    assert_eq!(order.refundable_cents(), TOTAL - 1000);
    let refund_id = order.refunds[0].refund_id.to_string();
    let calls_before = refund_calls(&peers);
    let (status, body) = refund(
        &app,
        &id,
        json!({"amountCents": TOTAL, "reason": "all"}),
        None,
    )
    .await;
    assert_eq!(status, 409, "1000 is reserved: {body}");
    assert_eq!(refund_calls(&peers), calls_before, "refused at once");

    if let Some(reason) = alert {
        let text = metrics_text(&app).await;
        let series = format!("refunds_unsettled_total{{reason=\"{reason}\"}}");
        assert!(text.contains(&series), "no {series} in:\n{text}");
    }

    // payment-service answers; the loop completes the refund once, under the same key.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded")],
    );
    let calls_before = refund_calls(&peers);
    let retrier = retrier(&app);
    let pass = first_pass_with_work(&retrier).await;
    assert_eq!((pass.claimed, pass.settled), (1, 1));
    assert!(
        !retrier.run_once().await.expect("pass").did_work(),
        "nothing left"
    );
    let keys: Vec<String> = peers
        .payment
        .hits("/internal/refunds")
        .iter()
        .map(|c| c.header("idempotency-key").to_owned())
        .collect();
    assert_eq!(keys.len(), calls_before + 1, "one call by the loop");
    assert!(
        keys.iter().all(|k| *k == refund_id),
        "one refund, one key: {keys:?}"
    );
    let types = event_types(&pool, &id).await;
    assert_eq!(
        types[1..],
        ["OrderConfirmed", "RefundRequested", "OrderRefunded"]
    );
    let order = app
        .state
        .store
        .load(order_id)
        .await
        .expect("load")
        .expect("order");
    assert_eq!(order.refunded_cents, 1000);
    assert_eq!(order.refundable_cents(), TOTAL - 1000);
    all_verified(&peers);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_answered_401_stays_requested_raises_an_alert_and_is_retried(pool: PgPool) {
    a_refund_stays_requested_until_the_retry_settles_it(
        pool,
        Reply::status(401),
        Some("unauthorized"),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_answered_403_stays_requested_raises_an_alert_and_is_retried(pool: PgPool) {
    a_refund_stays_requested_until_the_retry_settles_it(
        pool,
        Reply::status(403),
        Some("forbidden"),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_answered_404_stays_requested_raises_an_alert_and_is_retried(pool: PgPool) {
    a_refund_stays_requested_until_the_retry_settles_it(
        pool,
        Reply::status(404),
        Some("not_found"),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refund_answered_409_while_in_flight_stays_requested_and_is_retried(pool: PgPool) {
    a_refund_stays_requested_until_the_retry_settles_it(pool, Reply::status(409), None).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn only_a_422_that_refuses_this_very_refund_records_it_as_failed(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    let order_id = Uuid::parse_str(&id).expect("uuid");
    let ask = || json!({"amountCents": 1000, "reason": "r"});
    let still_requested = |status: u16, body: &Value| {
        assert_eq!(status, 502, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .ends_with("is recorded as requested and will be retried automatically"),
            "{body}"
        );
    };

    // A 422 with only an error body (a reused idempotency key, a validation error) says
    // nothing about whether the refund was paid.
    peers
        .payment
        .on("POST", "/internal/refunds", vec![Reply::status(422)]);
    let (status, body) = refund(&app, &id, ask(), Some("k-1")).await;
    let types = event_types(&pool, &id).await;
    assert!(!types.iter().any(|t| t == "RefundFailed"), "{types:?}");
    still_requested(status, &body);
    let text = metrics_text(&app).await;
    assert!(
        text.contains("refunds_unsettled_total{reason=\"rejected\"}"),
        "{text}"
    );

    // A refusal of another refund is no verdict on this one.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply {
            status: 422,
            ..Reply::ok(json!({"refundId": Uuid::now_v7(), "status": "failed", "reason": "no"}))
        }],
    );
    let (status, body) = refund(&app, &id, ask(), Some("k-1")).await;
    still_requested(status, &body);
    // Nor is a 400 that looks like a refusal: the request was not understood.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply {
            status: 400,
            ..Reply::refund_refused("malformed")
        }],
    );
    let (status, body) = refund(&app, &id, ask(), Some("k-1")).await;
    still_requested(status, &body);
    assert_eq!(
        event_types(&pool, &id).await[1..],
        ["OrderConfirmed", "RefundRequested"]
    );

    // This refund's receipt with status failed, in a 422: payment-service refuses it.
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund_refused("the card account is closed")],
    );
    let (status, body) = refund(&app, &id, ask(), Some("k-1")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .split("; refund ")
            .next(),
        Some("payment-service did not refund: the card account is closed"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("is recorded as failed"),
        "{body}"
    );
    assert_eq!(
        refund_calls(&peers),
        4,
        "no answer here is retried in the call"
    );
    assert_eq!(
        event_types(&pool, &id).await[1..],
        ["OrderConfirmed", "RefundRequested", "RefundFailed"]
    );
    let order = app
        .state
        .store
        .load(order_id)
        .await
        .expect("load")
        .expect("order");
    assert_eq!(order.refundable_cents(), TOTAL, "the amount is released");
    // The loop may still see the refund as requested for a moment (the feed's fence), but it
    // finds it settled and asks payment-service nothing.
    retrier(&app).run_once().await.expect("pass");
    assert_eq!(refund_calls(&peers), 4, "a refused refund is not retried");
    assert_eq!(
        event_types(&pool, &id).await.last().map(String::as_str),
        Some("RefundFailed")
    );
    all_verified(&peers);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_pending_refund_answers_202_and_the_loop_settles_it(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("pending"), Reply::refund("succeeded")],
    );
    let (status, body) = refund(&app, &id, json!({"reason": "r"}), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["refund"]["status"], "requested");
    assert_eq!(body["order"]["status"], "PAID");

    let pass = first_pass_with_work(&retrier(&app)).await;
    assert_eq!((pass.claimed, pass.settled), (1, 1));
    let order = app
        .state
        .store
        .load(Uuid::parse_str(&id).expect("uuid"))
        .await
        .expect("load")
        .expect("order");
    assert_eq!(order.status, order_domain::OrderStatus::Refunded);
}

#[sqlx::test(migrations = "../migrations")]
async fn with_the_default_peers_a_partial_then_a_full_refund_go_through(pool: PgPool) {
    // `Peers::start()` alone, as other suites use it: no per-order scripting.
    let peers = Peers::start().await;
    let app = spawn_app_with(pool.clone(), |s| peers.configure(s)).await;
    let id = app.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let confirm = json!({"paymentIntentId": "pi_77", "amountCents": TOTAL});
    let (status, _) = json_of(
        app.post(&format!("/api/v1/orders/{id}/confirm"), &confirm)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json_of(
        app.post_keyed(
            &format!("/api/v1/orders/{id}/refunds"),
            "refund-a",
            &json!({"amountCents": 5000, "reason": "a"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["order"]["status"].clone()),
        (200, json!("PARTIALLY_REFUNDED")),
        "{body}"
    );
    let (status, body) = json_of(
        app.post_keyed(
            &format!("/api/v1/orders/{id}/refunds"),
            "refund-rest",
            &json!({"reason": "rest"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["order"]["refundedCents"].clone()),
        (200, json!(TOTAL)),
        "{body}"
    );
    assert_eq!(refund_calls(&peers), 2);
    all_verified(&peers);
}

/// payment-service's refusal text is its own, of any size: what reaches the 502 answer and the
/// `RefundFailed` event is cut to about 200 characters.
#[sqlx::test(migrations = "../migrations")]
async fn a_long_refusal_reason_is_cut_in_the_answer_and_the_event(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    let long = format!("declined: {}", "x".repeat(20_000));
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund_refused(&long)],
    );
    let (status, body) = refund(&app, &id, json!({"amountCents": 1000, "reason": "r"}), None).await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("declined: xxx"), "{message}");
    assert!(
        message.chars().count() < 400,
        "{} characters",
        message.len()
    );

    let reason: String = sqlx::query_scalar(
        "SELECT COALESCE(payload -> 'RefundFailed' ->> 'reason', payload ->> 'reason') FROM events \
         WHERE aggregate_id = $1 AND event_type = 'RefundFailed'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .expect("RefundFailed event");
    assert!(reason.starts_with("declined: xxx"), "{reason}");
    assert!(
        reason.chars().count() <= 201,
        "{} characters",
        reason.chars().count()
    );
}

/// `Idempotency-Key` is required: without it a retried request would start another refund. The
/// refusal comes before anything is recorded or any call goes out.
#[sqlx::test(migrations = "../migrations")]
async fn a_refund_without_an_idempotency_key_is_422(pool: PgPool) {
    let peers = Peers::start().await;
    let app = app(pool.clone(), &peers, |_| {}).await;
    let id = paid_order(&app, &peers, &[], order_body()).await;
    peers.payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded")],
    );
    let resp = app
        .send(
            Method::POST,
            &format!("/api/v1/orders/{id}/refunds"),
            Auth::v1("api-gateway"),
            &[("x-tenant-id", "tenant-a")],
            Some(&json!({"amountCents": 1000, "reason": "r"})),
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "Unprocessable Entity", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Idempotency-Key is required"),
        "{body}"
    );
    assert_eq!(refund_calls(&peers), 0);
    assert_eq!(event_types(&pool, &id).await[1..], ["OrderConfirmed"]);
}
