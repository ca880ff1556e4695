//! Outgoing service clients (docs/contract.md §5) against real peer servers that verify every
//! signature and nonce: headers, retries, breakers, fallbacks and fail-closed reads, and the
//! production transport rules.

use std::time::Duration;

use order_api::app::context::RequestContext;
use order_api::clients::propagation;
use order_api::clients::{
    BreakerState, ClientConfigError, ClientError, EventStatus, RefundInstruction, RefundStatus,
    ServiceClients,
};
use order_api::config::{AppEnv, Settings};
use order_api::error::ApiError;
use order_api::startup::Application;
use order_tests::install_crypto;
use order_tests::peers::{unreachable_url, Peer, Received, Reply};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";

/// Settings with short timeouts and backoffs, and breakers that stay out of the way unless a
/// test tightens them.
fn fast_settings() -> Settings {
    let mut s = Settings::for_tests("postgres://unused");
    s.peers.payment_timeout_ms = 300;
    s.peers.ticket_timeout_ms = 300;
    s.peers.event_timeout_ms = 300;
    s.peers.retry_max_times = 3;
    s.peers.retry_min_delay_ms = 20;
    s.peers.retry_max_delay_ms = 200;
    s.peers.breaker_failures = 100;
    s.peers.breaker_open_ms = 300;
    s
}

fn clients(adjust: impl FnOnce(&mut Settings)) -> ServiceClients {
    install_crypto();
    let mut s = fast_settings();
    adjust(&mut s);
    ServiceClients::from_settings(&s).expect("clients build")
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn assert_signed_and_traced(r: &Received, ctx: &RequestContext) {
    assert_eq!(
        r.rejected, None,
        "the peer refused {}: {:?}",
        r.target, r.rejected
    );
    assert_eq!(r.header("x-service-name"), "order-service");
    let ts: i64 = r
        .header("x-request-timestamp")
        .parse()
        .expect("timestamp in ms");
    assert!(
        (order_tests::now_ms() - ts).abs() < 60_000,
        "timestamp {ts} is not now"
    );
    assert!(
        is_lower_hex(r.header("x-request-nonce"), 32),
        "nonce: 16 random bytes in hex"
    );
    assert!(
        is_lower_hex(r.header("x-internal-auth"), 64),
        "signature: lowercase hex SHA-256"
    );
    assert_eq!(r.header("x-request-id"), ctx.request_id);
    assert_eq!(r.header("x-trace-id"), ctx.trace_id);
    assert_eq!(
        r.header("x-tenant-id"),
        ctx.tenant_id.as_deref().unwrap_or("")
    );
    assert_eq!(r.header("x-user-id"), ctx.user_id.as_deref().unwrap_or(""));
    let parts: Vec<&str> = r.header("traceparent").split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {}", r.header("traceparent"));
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", INCOMING_TRACE, "01"),
        "a child of the incoming trace"
    );
    assert!(is_lower_hex(parts[2], 16));
    assert_ne!(parts[2], INCOMING_PARENT, "the call is a new span");
    assert_eq!(
        r.header("x-span-id"),
        parts[2],
        "X-Span-ID is the call's span"
    );
}

fn request_context() -> RequestContext {
    RequestContext {
        request_id: "req-42".into(),
        trace_id: INCOMING_TRACE.into(),
        traceparent: Some(format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-01")),
        tenant_id: Some("tenant-a".into()),
        user_id: Some("user-7".into()),
    }
}

#[tokio::test]
async fn every_request_is_signed_over_its_target_and_carries_the_request_context() {
    let (ticket, event, payment) = (
        Peer::start().await,
        Peer::start().await,
        Peer::start().await,
    );
    let (event_id, ticket_type) = (Uuid::new_v4(), Uuid::new_v4());
    ticket.on(
        "GET",
        "/internal/ticket-types/availability",
        vec![Reply::ok(
            json!({"availability": [{"ticketTypeId": ticket_type, "available": 7}]}),
        )],
    );
    event.on(
        "GET",
        &format!("/internal/events/{event_id}"),
        vec![Reply::ok(json!({"id": event_id, "status": "postponed"}))],
    );
    let refund_id = Uuid::new_v4();
    payment.on(
        "POST",
        "/internal/refunds",
        vec![Reply::refund("succeeded")],
    );
    let c = clients(|s| {
        s.peers.ticket_url = ticket.url.clone();
        s.peers.event_url = event.url.clone();
        s.peers.payment_url = payment.url.clone();
    });
    let ctx = request_context();
    let instruction = RefundInstruction {
        refund_id,
        order_id: Uuid::new_v4(),
        payment_intent_id: "pi_1".into(),
        amount_cents: 500,
        currency: "USD".into(),
        reason: "changed plans".into(),
    };
    let (available, info, receipt) = propagation::scope(ctx.clone(), async {
        (
            c.ticket.check_availability(event_id, &[ticket_type]).await,
            c.event.get_event(event_id).await,
            c.payment.initiate_refund(&instruction).await,
        )
    })
    .await;
    assert_eq!(available.len(), 1);
    assert_eq!(available[0].available, 7);
    assert_eq!(
        (info.status, info.fallback),
        (EventStatus::Postponed, false)
    );
    assert_eq!(
        receipt.expect("refund accepted").status,
        RefundStatus::Succeeded
    );

    let got = ticket.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].target,
        format!(
            "/internal/ticket-types/availability?eventId={event_id}&ticketTypeIds={ticket_type}"
        ),
        "the query string is sent, and the peer verified the signature over it"
    );
    let refunds = payment.received();
    assert_eq!(refunds[0].header("idempotency-key"), refund_id.to_string());
    assert_eq!(
        refunds[0].body.as_ref().expect("JSON body")["refundId"],
        refund_id.to_string()
    );
    let all: Vec<Received> = got
        .into_iter()
        .chain(event.received())
        .chain(refunds)
        .collect();
    for r in &all {
        assert_signed_and_traced(r, &ctx);
    }
    let spans: std::collections::HashSet<&str> =
        all.iter().map(|r| r.header("x-span-id")).collect();
    assert_eq!(spans.len(), all.len(), "each call has its own span");
}

#[tokio::test]
async fn a_call_outside_any_request_still_carries_fresh_ids() {
    let event = Peer::start().await;
    let event_id = Uuid::new_v4();
    event.on(
        "GET",
        &format!("/internal/events/{event_id}"),
        vec![Reply::ok(json!({"id": event_id, "status": "scheduled"}))],
    );
    let c = clients(|s| s.peers.event_url = event.url.clone());
    assert_eq!(
        c.event.get_event(event_id).await.status,
        EventStatus::Scheduled
    );
    let r = &event.received()[0];
    assert_eq!(r.rejected, None);
    assert!(Uuid::parse_str(r.header("x-request-id")).is_ok());
    let parts: Vec<&str> = r.header("traceparent").split('-').collect();
    assert!(is_lower_hex(parts[1], 32) && is_lower_hex(parts[2], 16));
    assert_eq!(r.header("x-trace-id"), parts[1]);
    assert!(
        !r.headers.contains_key("x-tenant-id"),
        "no tenant is invented"
    );
}

#[tokio::test]
async fn the_test_peer_refuses_a_replayed_nonce() {
    install_crypto();
    let peer = Peer::start().await;
    peer.on("GET", "/internal/events/x", vec![Reply::ok(json!({}))]);
    let headers = order_tests::v1_headers("order-service", "GET", "/internal/events/x");
    let http = reqwest::Client::new();
    let mut statuses = vec![];
    for _ in 0..2 {
        let mut req = http.get(format!("{}/internal/events/x", peer.url));
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        statuses.push(req.send().await.expect("peer answers").status().as_u16());
    }
    assert_eq!(statuses, [200, 401]);
    assert_eq!(peer.received()[1].rejected, Some("replayed nonce"));
}

#[tokio::test]
async fn reads_are_retried_with_jittered_exponential_backoff_on_503() {
    let payment = Peer::start().await;
    let path = "/internal/payments/pi_9/status";
    payment.on(
        "GET",
        path,
        vec![
            Reply::status(503),
            Reply::status(503),
            Reply::ok(
                json!({"paymentIntentId": "pi_9", "status": "succeeded", "refundable": true}),
            ),
        ],
    );
    let c = clients(|s| {
        s.peers.payment_url = payment.url.clone();
        s.peers.retry_min_delay_ms = 50;
        s.peers.retry_max_delay_ms = 1_000;
    });
    let status = c.payment.get_payment_status("pi_9").await;
    assert!(status.refundable && !status.fallback, "{status:?}");
    let hits = payment.hits(path);
    assert_eq!(hits.len(), 3, "two retries, then the answer");
    assert!(
        hits.iter().all(|h| h.rejected.is_none()),
        "each attempt is signed anew"
    );
    // Delays are 50 ms then 100 ms, each ±30 %: never shorter than 70 % of the nominal delay.
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(35),
        "first gap {:?}",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(70),
        "second gap {:?} (the delay doubles)",
        gaps[1]
    );
}

#[tokio::test]
async fn reads_are_retried_after_a_timeout() {
    let ticket = Peer::start().await;
    let order_id = Uuid::new_v4();
    let path = format!("/internal/orders/{order_id}/tickets");
    let list = json!({"orderId": order_id, "tickets": [{"id": "tkt_1", "status": "valid"}]});
    ticket.on(
        "GET",
        &path,
        vec![
            Reply::ok(list.clone()).after(Duration::from_millis(800)),
            Reply::ok(list),
        ],
    );
    let c = clients(|s| {
        s.peers.ticket_url = ticket.url.clone();
        s.peers.ticket_timeout_ms = 150;
    });
    let tickets = c
        .ticket
        .get_tickets_for_order(order_id)
        .await
        .expect("the retry answers");
    assert_eq!(tickets.len(), 1);
    assert_eq!(
        ticket.hits(&path).len(),
        2,
        "the slow attempt timed out and was retried"
    );
}

#[tokio::test]
async fn a_write_is_retried_only_with_an_idempotency_key() {
    let payment = Peer::start().await;
    let path = "/internal/payments/intents";
    payment.on("POST", path, vec![Reply::status(503)]);
    let c = clients(|s| s.peers.payment_url = payment.url.clone());
    let intent = order_api::clients::payment::NewPaymentIntent {
        order_id: Uuid::new_v4(),
        amount_cents: 1000,
        currency: "USD".into(),
    };
    let err = c
        .payment
        .create_payment_intent(&intent, None)
        .await
        .expect_err("503 is an error");
    assert_eq!(err.status(), Some(503));
    assert_eq!(
        payment.hits(path).len(),
        1,
        "a write without an idempotency key is sent once"
    );

    let err = c
        .payment
        .confirm_payment("pi_2", None)
        .await
        .expect_err("nothing scripted: 404");
    assert_eq!(err.status(), Some(404));

    payment.on(
        "POST",
        path,
        vec![
            Reply::status(503),
            Reply::ok(json!({"paymentIntentId": "pi_new", "status": "requires_confirmation"})),
        ],
    );
    let created = c
        .payment
        .create_payment_intent(&intent, Some("intent-for-order-1"))
        .await
        .expect("retried to success");
    assert_eq!(created.payment_intent_id, "pi_new");
    let hits = payment.hits(path);
    assert_eq!(hits.len(), 3, "one attempt before, two now");
    assert!(hits[1..]
        .iter()
        .all(|h| h.header("idempotency-key") == "intent-for-order-1"));
}

#[tokio::test]
async fn initiate_refund_is_retried_under_the_refund_id_as_idempotency_key() {
    let payment = Peer::start().await;
    payment.on(
        "POST",
        "/internal/refunds",
        vec![
            Reply::status(502),
            Reply::status(504),
            Reply::refund("succeeded"),
        ],
    );
    let c = clients(|s| s.peers.payment_url = payment.url.clone());
    let refund_id = Uuid::new_v4();
    let receipt = c
        .payment
        .initiate_refund(&RefundInstruction {
            refund_id,
            order_id: Uuid::new_v4(),
            payment_intent_id: "pi_1".into(),
            amount_cents: 100,
            currency: "USD".into(),
            reason: "r".into(),
        })
        .await
        .expect("third attempt succeeds");
    assert_eq!(
        (receipt.refund_id, receipt.status),
        (refund_id, RefundStatus::Succeeded)
    );
    let hits = payment.hits("/internal/refunds");
    assert_eq!(hits.len(), 3);
    assert!(hits
        .iter()
        .all(|h| h.header("idempotency-key") == refund_id.to_string()));
    let nonces: std::collections::HashSet<&str> =
        hits.iter().map(|h| h.header("x-request-nonce")).collect();
    assert_eq!(nonces.len(), 3, "a fresh nonce per attempt");
}

#[tokio::test]
async fn only_transient_failures_are_retried() {
    let ticket = Peer::start().await;
    ticket.on("GET", "/internal/tickets/t500", vec![Reply::status(500)]);
    ticket.on("GET", "/internal/tickets/t404", vec![Reply::status(404)]);
    ticket.on(
        "GET",
        "/internal/tickets/t429",
        vec![Reply::status(429).retry_after(60)],
    );
    ticket.on(
        "GET",
        "/internal/tickets/t429ok",
        vec![
            Reply::status(429).retry_after(0),
            Reply::ok(json!({"id": "t429ok", "status": "valid"})),
        ],
    );
    let c = clients(|s| s.peers.ticket_url = ticket.url.clone());
    for (id, status) in [("t500", 500), ("t404", 404), ("t429", 429)] {
        let err = c.ticket.get_ticket(id).await.expect_err("an error status");
        assert_eq!(err.status(), Some(status));
        assert_eq!(
            ticket.hits(&format!("/internal/tickets/{id}")).len(),
            1,
            "{status} is not retried (a Retry-After beyond the largest delay ends retries)"
        );
    }
    let t = c
        .ticket
        .get_ticket("t429ok")
        .await
        .expect("429 with a short Retry-After is retried");
    assert_eq!(t.id, "t429ok");
    assert_eq!(ticket.hits("/internal/tickets/t429ok").len(), 2);
}

#[tokio::test]
async fn a_breaker_opens_fails_fast_half_opens_and_closes() {
    let ticket = Peer::start().await;
    let path = "/internal/tickets/t1";
    ticket.on("GET", path, vec![Reply::status(503)]);
    ticket.on(
        "GET",
        "/internal/tickets/t1/transfer-status",
        vec![Reply::ok(json!({"ticketId": "t1", "transferred": false}))],
    );
    let c = clients(|s| {
        s.peers.ticket_url = ticket.url.clone();
        s.peers.retry_max_times = 0;
        s.peers.breaker_failures = 3;
        s.peers.breaker_open_ms = 300;
    });
    let state = || c.ticket.peer().breaker_state("getTicket");
    assert_eq!(state(), Some(BreakerState::Closed));
    for _ in 0..3 {
        let err = c.ticket.get_ticket("t1").await.expect_err("503");
        assert_eq!(err.status(), Some(503));
    }
    assert_eq!(state(), Some(BreakerState::Open));

    let err = c.ticket.get_ticket("t1").await.expect_err("open breaker");
    assert!(
        matches!(
            err,
            ClientError::BreakerOpen {
                operation: "getTicket",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        ticket.hits(path).len(),
        3,
        "an open breaker fails fast without calling the peer"
    );
    assert_eq!(ApiError::from(err).status(), 503);
    assert!(
        c.ticket
            .check_ticket_not_transferred("t1")
            .await
            .expect("own breaker, closed"),
        "breakers are per operation"
    );

    // After the wait, one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        c.ticket
            .get_ticket("t1")
            .await
            .expect_err("probe fails")
            .status(),
        Some(503)
    );
    assert_eq!(state(), Some(BreakerState::Open));
    assert!(matches!(
        c.ticket.get_ticket("t1").await,
        Err(ClientError::BreakerOpen { .. })
    ));
    assert_eq!(ticket.hits(path).len(), 4);

    // After the next wait the probe succeeds (slowly): half-open while it runs, then closed.
    tokio::time::sleep(Duration::from_millis(350)).await;
    ticket.on(
        "GET",
        path,
        vec![Reply::ok(json!({"id": "t1", "status": "valid"})).after(Duration::from_millis(150))],
    );
    let probe = tokio::spawn({
        let c = c.clone();
        async move { c.ticket.get_ticket("t1").await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(state(), Some(BreakerState::HalfOpen));
    assert!(
        matches!(
            c.ticket.get_ticket("t1").await,
            Err(ClientError::BreakerOpen { .. })
        ),
        "half-open lets one probe through at a time"
    );
    assert_eq!(
        probe.await.expect("probe task").expect("probe succeeds").id,
        "t1"
    );
    assert_eq!(state(), Some(BreakerState::Closed));
    c.ticket.get_ticket("t1").await.expect("closed again");
    assert_eq!(ticket.hits(path).len(), 6);
}

#[tokio::test]
async fn reads_with_a_safe_default_fall_back() {
    let (payment, ticket) = (Peer::start().await, Peer::start().await);
    payment.on(
        "GET",
        "/internal/payments/pi_1/status",
        vec![Reply::status(500)],
    );
    ticket.on(
        "GET",
        "/internal/ticket-types/availability",
        vec![Reply::status(503)],
    );
    ticket.on(
        "GET",
        "/internal/ticket-types/prices",
        vec![Reply::ok(json!({"unexpected": true}))],
    );
    let down = unreachable_url().await;
    let c = clients(|s| {
        s.peers.payment_url = payment.url.clone();
        s.peers.ticket_url = ticket.url.clone();
        s.peers.event_url = down.clone();
    });
    let status = c.payment.get_payment_status("pi_1").await;
    assert!(
        !status.refundable && status.fallback,
        "payment status fails closed: {status:?}"
    );
    assert!(c
        .ticket
        .check_availability(Uuid::new_v4(), &[Uuid::new_v4()])
        .await
        .is_empty());
    assert!(
        c.ticket.get_prices(&[Uuid::new_v4()]).await.is_empty(),
        "an unreadable answer falls back too"
    );
    let event_id = Uuid::new_v4();
    let event = c.event.get_event(event_id).await;
    assert_eq!(
        (event.id, event.status, event.fallback),
        (event_id, EventStatus::Unknown, true)
    );
    assert!(
        !event.cancelled_or_postponed(),
        "the safe default widens nothing"
    );
}

#[tokio::test]
async fn security_critical_reads_and_writes_fail_explicitly() {
    let payment = Peer::start().await;
    payment.on(
        "POST",
        "/internal/payments/intents",
        vec![Reply::status(500)],
    );
    payment.on(
        "POST",
        "/internal/payments/pi_1/confirm",
        vec![Reply::status(500)],
    );
    payment.on("POST", "/internal/refunds", vec![Reply::status(500)]);
    let down = unreachable_url().await;
    let c = clients(|s| {
        s.peers.payment_url = payment.url.clone();
        s.peers.ticket_url = down.clone();
    });
    let unreachable = [
        c.ticket.get_ticket("t1").await.map(|_| ()),
        c.ticket
            .check_ticket_not_transferred("t1")
            .await
            .map(|_| ()),
        c.ticket
            .get_tickets_for_order(Uuid::new_v4())
            .await
            .map(|_| ()),
    ];
    for result in unreachable {
        let err = result.expect_err("no fallback");
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert_eq!(ApiError::from(err).status(), 503);
    }
    let intent = order_api::clients::payment::NewPaymentIntent {
        order_id: Uuid::new_v4(),
        amount_cents: 1,
        currency: "USD".into(),
    };
    let refund = RefundInstruction {
        refund_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        payment_intent_id: "pi_1".into(),
        amount_cents: 1,
        currency: "USD".into(),
        reason: "r".into(),
    };
    let failed = [
        c.payment
            .create_payment_intent(&intent, Some("k"))
            .await
            .map(|_| ()),
        c.payment
            .confirm_payment("pi_1", Some("k"))
            .await
            .map(|_| ()),
        c.payment.initiate_refund(&refund).await.map(|_| ()),
    ];
    for result in failed {
        let err = result.expect_err("writes never fall back");
        assert_eq!(err.status(), Some(500));
        let api = ApiError::from(err);
        assert_eq!(api.status(), 502);
        assert!(
            api.to_string()
                .starts_with("payment-service answered 500 to "),
            "{api}"
        );
    }
}

fn production_settings() -> Settings {
    let mut s = fast_settings();
    s.app_env = AppEnv::Production;
    s.auth.secret = Some("0123456789abcdef0123456789abcdef-prod".into());
    s.peers.payment_url = "https://payments.internal".into();
    s.peers.ticket_url = "https://tickets.internal".into();
    s.peers.event_url = "https://events.internal".into();
    s
}

#[tokio::test]
async fn production_requires_https_peers() {
    install_crypto();
    ServiceClients::from_settings(&production_settings()).expect("https peers are fine");
    let mut s = production_settings();
    s.peers.ticket_url = "http://tickets.internal".into();
    let err = ServiceClients::from_settings(&s).expect_err("plain HTTP refused");
    assert!(
        matches!(
            err,
            ClientConfigError::InsecureUrl {
                setting: "TICKET_SERVICE_URL"
            }
        ),
        "{err:?}"
    );
    let mut dev = s.clone();
    dev.app_env = AppEnv::Development;
    ServiceClients::from_settings(&dev).expect("plain HTTP is fine outside production");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_service_does_not_start_in_production_with_a_plain_http_peer(pool: PgPool) {
    install_crypto();
    let mut s = production_settings();
    s.peers.payment_url = "http://tickettoken-payment:3006".into();
    let err = Application::build_with_pool(s, pool)
        .await
        .expect_err("start-up refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("PAYMENT_SERVICE_URL must use https://"),
        "{text}"
    );
}
