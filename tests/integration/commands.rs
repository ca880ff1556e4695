//! The command path end to end: HTTP in, events in Postgres, the aggregate's state out.

use futures::future::join_all;
use order_tests::helpers::event_types;
use order_tests::peers::Peers;
use order_tests::{json_of, order_body, spawn_app, spawn_app_with, Auth};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn create_reserve_confirm_refund_walks_the_life_cycle(pool: PgPool) {
    // Refunds ask payment-, ticket- and event-service first; these answer "go ahead".
    let peers = Peers::start().await;
    let app = spawn_app_with(pool.clone(), |s| peers.configure(s)).await;
    let order = app.create_order().await;
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["subtotalCents"], 17500);
    assert_eq!(order["totalCents"], 17870);
    assert_eq!(order["tenantId"], "tenant-a");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["version"], 1);
    assert!(order["orderNumber"].as_str().unwrap().starts_with("ORD-"));

    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{id}/reserve"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["order"]["status"].clone()),
        (200, json!("RESERVED"))
    );

    let confirm = json!({"paymentIntentId": "pi_1", "amountCents": 17870, "expectedVersion": 2});
    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{id}/confirm"), &confirm)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "PAID");
    assert_eq!(body["order"]["paymentIntentId"], "pi_1");
    assert!(body["order"]["paidAt"].is_string());

    let refund = json!({"amountCents": 5000, "reason": "customer request"});
    let (status, body) = json_of(
        app.post_keyed(&format!("/api/v1/orders/{id}/refunds"), "refund-1", &refund)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "PARTIALLY_REFUNDED");
    assert_eq!(body["order"]["refundedCents"], 5000);

    let (status, body) = json_of(
        app.post_keyed(
            &format!("/api/v1/orders/{id}/refunds"),
            "refund-2",
            &json!({"reason": "rest"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "REFUNDED");
    assert_eq!(body["order"]["refundedCents"], 17870);

    assert_eq!(
        event_types(&pool, &id).await,
        [
            "OrderCreated",
            "OrderReserved",
            "OrderConfirmed",
            "RefundRequested",
            "OrderRefunded",
            "RefundRequested",
            "OrderRefunded"
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_history_lists_every_event_with_metadata(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/orders/{id}/cancel"),
        &json!({"reason": "changed my mind"}),
    )
    .await;
    let resp = app
        .send(
            Method::GET,
            &format!("/api/v1/orders/{id}/events"),
            Auth::v1("payment-service"),
            &[("x-request-id", "req-history-1")],
            None,
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["orderId"], id.as_str());
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["sequence"], 1);
    assert_eq!(events[0]["type"], "OrderCreated");
    assert_eq!(events[0]["version"], "2.0");
    assert_eq!(events[0]["payload"]["totalCents"], 17870);
    assert_eq!(events[0]["metadata"]["tenantId"], "tenant-a");
    assert_eq!(events[0]["metadata"]["actor"], "api-gateway");
    assert_eq!(events[1]["type"], "OrderCancelled");
    assert_eq!(events[1]["payload"]["reason"], "changed my mind");
    assert!(events[1]["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_idempotent_create_answers_the_first_answer_again(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let headers = [("x-tenant-id", "tenant-a"), ("idempotency-key", "key-123")];
    let send = |body: Value| {
        let app = &app;
        async move {
            json_of(
                app.send(
                    Method::POST,
                    "/api/v1/orders",
                    Auth::v1("api-gateway"),
                    &headers,
                    Some(&body),
                )
                .await,
            )
            .await
        }
    };
    let (s1, first) = send(order_body()).await;
    assert_eq!(s1, 201, "{first}");
    let id = first["order"]["id"].as_str().unwrap().to_owned();
    // The order moves on; a repeat still gets the answer the first request got.
    app.post(&format!("/api/v1/orders/{id}/reserve"), &json!({}))
        .await;
    let (s2, second) = send(order_body()).await;
    assert_eq!(s2, 201);
    assert_eq!(second, first);

    let mut other = order_body();
    other["feesCents"] = json!(999);
    let (s3, body) = send(other).await;
    assert_eq!(s3, 422, "{body}");
    assert_eq!(body["error"], "Unprocessable Entity");

    // The key lives in the event store, so a restarted service remembers it.
    let restarted = spawn_app(pool.clone()).await;
    let (s4, again) = json_of(
        restarted
            .send(
                Method::POST,
                "/api/v1/orders",
                Auth::v1("api-gateway"),
                &headers,
                Some(&order_body()),
            )
            .await,
    )
    .await;
    assert_eq!((s4, again), (201, first));
    assert_eq!(
        event_types(&pool, &id).await,
        ["OrderCreated", "OrderReserved"]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_idempotent_creates_make_one_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let headers = [("x-tenant-id", "tenant-a"), ("idempotency-key", "race-key")];
    let body = order_body();
    let answers = join_all((0..10).map(|_| async {
        json_of(
            app.send(
                Method::POST,
                "/api/v1/orders",
                Auth::v1("api-gateway"),
                &headers,
                Some(&body),
            )
            .await,
        )
        .await
    }))
    .await;
    let first = &answers[0].1;
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
        assert_eq!(body, first);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn fifty_concurrent_confirms_record_one_confirmation(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{id}/confirm");
    let body = json!({"paymentIntentId": "pi_same", "amountCents": 17870});
    let answers =
        join_all((0..50).map(|_| async { json_of(app.post(&path, &body).await).await })).await;
    for (status, body) in &answers {
        assert_eq!(
            *status, 200,
            "a retried confirm with the same intent is not an error: {body}"
        );
        assert_eq!(body["order"]["status"], "PAID");
        assert_eq!(body["order"]["version"], 2);
    }
    let types = event_types(&pool, &id).await;
    assert_eq!(types.iter().filter(|t| *t == "OrderConfirmed").count(), 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_confirms_with_different_intents_have_one_winner(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{id}/confirm");
    let answers = join_all((0..20).map(|i| {
        let path = path.clone();
        let app = &app;
        async move {
            let body = json!({"paymentIntentId": format!("pi_{i}"), "amountCents": 17870});
            json_of(app.post(&path, &body).await).await
        }
    }))
    .await;
    let winners = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(winners, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["error"], "Conflict");
    }
    let types = event_types(&pool, &id).await;
    assert_eq!(types, ["OrderCreated", "OrderConfirmed"]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stale_expected_version_is_a_conflict(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/v1/orders/{id}/reserve"), &json!({}))
        .await;
    let body = json!({"paymentIntentId": "pi_1", "amountCents": 17870, "expectedVersion": 1});
    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{id}/confirm"), &body)
            .await,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        body["message"],
        "expected version 1 but the order is at version 2"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn another_tenant_cannot_see_or_change_an_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (
            Method::POST,
            format!("/api/v1/orders/{id}/cancel"),
            Some(json!({"reason": "x"})),
        ),
        (Method::GET, format!("/api/v1/orders/{id}/events"), None),
    ] {
        let resp = app
            .send(
                method,
                &path,
                Auth::v1("api-gateway"),
                &[("x-tenant-id", "tenant-b")],
                body.as_ref(),
            )
            .await;
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "Not Found");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stored_first_version_order_is_upcast_on_load(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let v1 = json!({"OrderCreated": {
        "orderId": id,
        "userId": "u-legacy",
        "eventId": "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b",
        "currency": "USD",
        "items": [{"ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e", "quantity": 2, "unitPriceCents": 5000}],
        "totalCents": 10250,
        "expiresAt": "2999-01-01T00:00:00Z",
        "createdAt": "2026-01-01T00:00:00Z"
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, 1, 'OrderCreated', '1.0', $2, $3)",
    )
    .bind(id)
    .bind(&v1)
    .bind(json!({"tenantId": "tenant-a"}))
    .execute(&pool)
    .await
    .unwrap();

    // Loading it for a command goes through the upcaster...
    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{id}/reserve"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "RESERVED");
    assert_eq!(body["order"]["tenantId"], "tenant-a");
    assert_eq!(body["order"]["subtotalCents"], 10000);
    assert_eq!(body["order"]["feesCents"], 250);
    assert_eq!(body["order"]["totalCents"], 10250);
    assert_eq!(body["order"]["orderNumber"], "ORD-20260101-3F4A5B");
    // ...and so does the history, which reports the current version.
    let (_, history) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
            .await,
    )
    .await;
    assert_eq!(history["events"][0]["version"], "2.0");
    assert_eq!(history["events"][0]["payload"]["subtotalCents"], 10000);
    // ...and so does the orders projector, which decodes the stored text straight into
    // domain events.
    order_tests::helpers::project(&pool).await;
    let row: (String, String, i64, i64, i64) = sqlx::query_as(
        "SELECT status, tenant_id, subtotal_cents, fees_cents, total_cents
           FROM order_read WHERE order_id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        ("RESERVED".into(), "tenant-a".into(), 10000, 250, 10250)
    );
    // The stored row itself is never rewritten.
    let stored: String = sqlx::query_scalar("SELECT event_version FROM events WHERE sequence = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "1.0");
}

#[sqlx::test(migrations = "../migrations")]
async fn tickets_are_recorded_once_against_their_items(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/orders/{id}/confirm"),
        &json!({"paymentIntentId": "pi", "amountCents": 17870}),
    )
    .await;
    let (_, history) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
            .await,
    )
    .await;
    let item = history["events"][0]["payload"]["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"tickets": [{"itemId": item, "ticketId": "tkt_1"}, {"itemId": item, "ticketId": "tkt_2"}]});
    let (status, first) = json_of(
        app.post(&format!("/api/v1/orders/{id}/tickets"), &body)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["order"]["ticketCount"], 2);
    let (status, again) = json_of(
        app.post(&format!("/api/v1/orders/{id}/tickets"), &body)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        again["order"]["version"], first["order"]["version"],
        "a redelivery changes nothing"
    );
    let third = json!({"tickets": [{"itemId": item, "ticketId": "tkt_3"}]});
    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{id}/tickets"), &third)
            .await,
    )
    .await;
    assert_eq!(status, 409, "the line has quantity 2: {body}");
}

#[sqlx::test(migrations = "../migrations")]
async fn health_endpoints_need_no_signature(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = json_of(
        app.send(Method::GET, "/health/live", Auth::None, &[], None)
            .await,
    )
    .await;
    assert_eq!((status, body["status"].clone()), (200, json!("ok")));
    let (status, body) = json_of(
        app.send(Method::GET, "/health/ready", Auth::None, &[], None)
            .await,
    )
    .await;
    assert_eq!(body["checks"]["postgres"]["status"], "ok", "{body}");
    assert!(status == 200 || status == 503, "{status}");
}
