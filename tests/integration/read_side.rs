//! The read side: the `orders` projector and the four `/internal` query routes
//! (docs/contract.md §3.2).
//!
//! Tests drive the projector to a known point with `catch_up` instead of sleeping. The
//! application's own projector worker runs too; batches are locked and idempotent, so the two
//! never disagree. Orders whose history needs a clock in the past are written through the
//! command path (`OrderStore::execute`) with commands that carry that time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use order_api::app::store::OrderStore;
use order_domain::commands::*;
use order_domain::events::OrderCreated;
use order_domain::values::{DisputeOutcome, IssuedTicket, NewLineItem};
use order_domain::{Currency, Order, OrderCommand, OrderEvent, OrderStatus};
use order_projections::{
    checkpoint, feed::DecodedEvent, orders, queries, OrderView, OrdersProjector, ProjectionError,
    ProjectionRunner, Projector, RunOnce, ORDERS_PROJECTION,
};
use order_tests::helpers::{assert_error_body, project};
use order_tests::{json_of, spawn_app, spawn_app_with, Auth, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The keys of the normative order object.
const ORDER_KEYS: [&str; 20] = [
    "createdAt",
    "currency",
    "eventId",
    "expiresAt",
    "feesCents",
    "id",
    "orderNumber",
    "paidAt",
    "paymentIntentId",
    "refundedCents",
    "refundsLocked",
    "status",
    "subtotalCents",
    "taxCents",
    "tenantId",
    "ticketCount",
    "totalCents",
    "updatedAt",
    "userId",
    "version",
];

// ---------------------------------------------------------------------------------------------
// helpers

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

async fn get(app: &TestApp, service: &str, path: &str) -> (u16, Value) {
    json_of(app.get_as(service, path).await).await
}

async fn get_for_tenant(app: &TestApp, service: &str, tenant: &str, path: &str) -> (u16, Value) {
    json_of(
        app.send(
            Method::GET,
            path,
            Auth::v1(service),
            &[("x-tenant-id", tenant)],
            None,
        )
        .await,
    )
    .await
}

/// Writes orders through the command path with chosen clocks.
struct Script {
    store: OrderStore,
    base: DateTime<Utc>,
}

impl Script {
    fn new(pool: &PgPool) -> Self {
        Self {
            store: OrderStore::new(pool.clone()),
            base: Utc::now(),
        }
    }

    /// `minutes` from the start of the test (negative: in the past).
    fn at(&self, minutes: i64) -> DateTime<Utc> {
        self.base + TimeDelta::minutes(minutes)
    }

    async fn run(&self, id: Uuid, command: OrderCommand) -> Order {
        self.store
            .execute(id, &HashMap::new(), |_| Ok(()), || command.clone())
            .await
            .unwrap_or_else(|e| panic!("command on {id} failed: {e}"))
            .order
    }

    /// Creates an order of `lines` (quantity, unit price) for `tenant` at `created` (minutes),
    /// expiring at `expires` (minutes).
    async fn create(&self, tenant: &str, lines: &[(u32, i64)], created: i64, expires: i64) -> Uuid {
        let id = Uuid::new_v4();
        self.run(
            id,
            OrderCommand::CreateOrder(CreateOrder {
                order_id: id,
                order_number: format!("ORD-T-{}", &id.simple().to_string()[..6]),
                tenant_id: tenant.into(),
                user_id: "user-1".into(),
                event_id: Uuid::new_v4(),
                currency: Currency::parse("USD").expect("currency"),
                items: lines
                    .iter()
                    .map(|&(quantity, unit_price_cents)| NewLineItem {
                        id: Uuid::new_v4(),
                        ticket_type_id: Uuid::new_v4(),
                        quantity,
                        unit_price_cents,
                    })
                    .collect(),
                fees_cents: 0,
                tax_cents: 0,
                expires_at: self.at(expires),
                event_starts_at: Some(self.at(60 * 24)),
                now: self.at(created),
            }),
        )
        .await;
        id
    }

    async fn confirm(&self, id: Uuid, at: i64) -> Order {
        let total = self
            .store
            .load(id)
            .await
            .expect("load")
            .expect("exists")
            .total_cents;
        self.run(
            id,
            OrderCommand::ConfirmOrder(ConfirmOrder {
                payment_intent_id: format!("pi_{}", &id.simple().to_string()[..8]),
                amount_cents: total,
                expected_version: None,
                now: self.at(at),
            }),
        )
        .await
    }

    async fn tickets(&self, id: Uuid, at: i64, per_item: &[usize]) -> Order {
        let order = self.store.load(id).await.expect("load").expect("exists");
        let already = order.tickets.len();
        let mut tickets = Vec::new();
        for (item, &n) in order.items.iter().zip(per_item) {
            for _ in 0..n {
                tickets.push(IssuedTicket {
                    item_id: item.id,
                    ticket_id: format!(
                        "tkt-{}-{}",
                        &id.simple().to_string()[..6],
                        already + tickets.len()
                    ),
                });
            }
        }
        self.run(
            id,
            OrderCommand::RecordTickets(RecordTickets {
                tickets,
                now: self.at(at),
            }),
        )
        .await
    }

    async fn refund(&self, id: Uuid, at: i64, amount: Option<i64>, complete: bool) -> Uuid {
        let refund_id = Uuid::new_v4();
        self.run(
            id,
            OrderCommand::RequestRefund(RequestRefund {
                refund_id,
                amount_cents: amount,
                reason: "customer asked".into(),
                facts: RefundFacts::default(),
                now: self.at(at),
            }),
        )
        .await;
        let finish = if complete {
            OrderCommand::CompleteRefund(CompleteRefund {
                refund_id,
                now: self.at(at),
            })
        } else {
            OrderCommand::FailRefund(FailRefund {
                refund_id,
                reason: "card closed".into(),
                now: self.at(at),
            })
        };
        self.run(id, finish).await;
        refund_id
    }
}

/// Every row of both read-model tables, as JSON, in a stable order.
/// Events the orders projector has applied, by its checkpoint.
async fn projected_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT events_total FROM feed_checkpoints WHERE consumer = $1")
        .bind(ORDERS_PROJECTION)
        .fetch_one(pool)
        .await
        .expect("checkpoint")
}

async fn read_model_rows(pool: &PgPool) -> (Vec<Value>, Vec<Value>) {
    // Archived orders move to the archive tables; the read model is both.
    let orders = sqlx::query_scalar(
        "SELECT to_jsonb(o) FROM (SELECT * FROM order_read UNION ALL SELECT * FROM order_read_archive) o
          ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .expect("orders");
    let items = sqlx::query_scalar(
        "SELECT to_jsonb(i) FROM (SELECT * FROM order_item_read UNION ALL SELECT * FROM order_item_read_archive) i
          ORDER BY order_id, position",
    )
    .fetch_all(pool)
    .await
    .expect("items");
    (orders, items)
}

/// The read model of `id` equals what the aggregate says, object and ticket ids alike.
async fn assert_matches_aggregate(pool: &PgPool, store: &OrderStore, id: Uuid) {
    let order = store.load(id).await.expect("load").expect("exists");
    let expected = serde_json::to_value(OrderView::from_aggregate(&order)).expect("json");
    let detail = queries::order_detail(pool, id, None)
        .await
        .expect("query")
        .expect("projected");
    assert_eq!(
        serde_json::to_value(&detail.order).expect("json"),
        expected,
        "order {id}"
    );
    let mut tickets: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for t in &order.tickets {
        tickets
            .entry(t.item_id)
            .or_default()
            .push(t.ticket_id.clone());
    }
    assert_eq!(detail.items.len(), order.items.len());
    for (read, item) in detail.items.iter().zip(&order.items) {
        assert_eq!(read.id, item.id);
        assert_eq!(read.quantity, item.quantity);
        assert_eq!(read.unit_price_cents, item.unit_price_cents);
        assert_eq!(
            read.ticket_ids,
            tickets.remove(&item.id).unwrap_or_default(),
            "item {}",
            item.id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GET /internal/orders/{orderId}

#[sqlx::test(migrations = "../migrations")]
async fn the_order_route_answers_the_normative_order_object(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let created = app.create_order().await;
    let id = created["id"].as_str().expect("id").to_owned();
    project(&pool).await;

    let (status, body) = get(&app, "payment-service", &format!("/internal/orders/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["order"]);
    assert_eq!(keys(&body["order"]), ORDER_KEYS);
    // The read model answers exactly what the command answered.
    assert_eq!(body["order"], created);
    assert_eq!(body["order"]["status"], "PENDING");
    assert_eq!(body["order"]["version"], 1);
    assert_eq!(body["order"]["tenantId"], "tenant-a");
    assert_eq!(body["order"]["totalCents"], 2 * 5000 + 7500 + 250 + 120);
    assert!(body["order"]["paidAt"].is_null());

    let (status, confirmed) = json_of(
        app.post(
            &format!("/api/v1/orders/{id}/confirm"),
            &json!({"paymentIntentId": "pi_read_1", "amountCents": created["totalCents"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{confirmed}");
    project(&pool).await;
    let (status, body) = get(&app, "payment-service", &format!("/internal/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["order"], confirmed["order"]);
    assert_eq!(body["order"]["status"], "PAID");
    assert_eq!(body["order"]["version"], 2);
    assert_eq!(body["order"]["paymentIntentId"], "pi_read_1");
    let paid_at = body["order"]["paidAt"].as_str().expect("paidAt is set");
    assert!(
        paid_at.ends_with('Z') && DateTime::parse_from_rfc3339(paid_at).is_ok(),
        "{paid_at}"
    );
}

// ---------------------------------------------------------------------------------------------
// GET /internal/orders/{orderId}/items

#[sqlx::test(migrations = "../migrations")]
async fn the_items_route_lists_items_with_their_ticket_ids(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let created = app.create_order().await;
    let id = created["id"].as_str().expect("id").to_owned();
    let resp = app
        .post(
            &format!("/api/v1/orders/{id}/confirm"),
            &json!({"paymentIntentId": "pi_items", "amountCents": created["totalCents"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    project(&pool).await;

    let path = format!("/internal/orders/{id}/items");
    let (status, body) = get(&app, "blockchain-service", &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["items", "orderId"]);
    assert_eq!(body["orderId"], id.as_str());
    let items = body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 2);
    for item in &items {
        assert_eq!(
            keys(item),
            [
                "id",
                "quantity",
                "ticketIds",
                "ticketTypeId",
                "unitPriceCents"
            ]
        );
        assert_eq!(item["ticketIds"], json!([]));
    }
    // Items come in the order they were placed.
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(items[0]["unitPriceCents"], 5000);
    assert_eq!(
        items[0]["ticketTypeId"],
        "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e"
    );
    assert_eq!(items[1]["quantity"], 1);
    assert_eq!(items[1]["unitPriceCents"], 7500);

    let (first, second) = (items[0]["id"].clone(), items[1]["id"].clone());
    let resp = app
        .post(
            &format!("/api/v1/orders/{id}/tickets"),
            &json!({"tickets": [
                {"itemId": first, "ticketId": "tkt-1"},
                {"itemId": second, "ticketId": "tkt-3"},
                {"itemId": first, "ticketId": "tkt-2"}
            ]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    project(&pool).await;

    let (status, body) = get(&app, "ticket-service", &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"orderId": id, "items": [
            {"id": first, "ticketTypeId": items[0]["ticketTypeId"], "quantity": 2, "unitPriceCents": 5000, "ticketIds": ["tkt-1", "tkt-2"]},
            {"id": second, "ticketTypeId": items[1]["ticketTypeId"], "quantity": 1, "unitPriceCents": 7500, "ticketIds": ["tkt-3"]}
        ]})
    );
    let (_, order) = get(&app, "payment-service", &format!("/internal/orders/{id}")).await;
    assert_eq!(order["order"]["ticketCount"], 3);
    assert_eq!(order["order"]["version"], 3);
}

// ---------------------------------------------------------------------------------------------
// GET /internal/orders/{orderId}/for-payment

#[sqlx::test(migrations = "../migrations")]
async fn for_payment_answers_the_payment_view_of_an_open_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let created = app.create_order().await;
    let id = created["id"].as_str().expect("id").to_owned();
    project(&pool).await;
    let (_, items) = get(
        &app,
        "blockchain-service",
        &format!("/internal/orders/{id}/items"),
    )
    .await;
    let items = items["items"].as_array().expect("items").clone();

    let (status, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}/for-payment"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "order": {
                "id": id,
                "orderNumber": created["orderNumber"],
                "totalCents": 17_870,
                "currency": "USD",
                "status": "PENDING",
                "paymentIntentId": null,
                "expiresAt": created["expiresAt"],
                "version": 1
            },
            "items": [
                {"id": items[0]["id"], "ticketTypeId": items[0]["ticketTypeId"], "quantity": 2, "unitPriceCents": 5000},
                {"id": items[1]["id"], "ticketTypeId": items[1]["ticketTypeId"], "quantity": 1, "unitPriceCents": 7500}
            ],
            "paymentContext": {
                "itemCount": 2,
                "ticketCount": 0,
                "canProcessPayment": true,
                "isExpired": false,
                "validationErrors": []
            }
        })
    );

    // A reserved order can still be paid; its version moved on.
    let resp = app
        .post(&format!("/api/v1/orders/{id}/reserve"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    project(&pool).await;
    let (_, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}/for-payment"),
    )
    .await;
    assert_eq!(body["order"]["status"], "RESERVED");
    assert_eq!(body["order"]["version"], 2);
    assert_eq!(body["paymentContext"]["canProcessPayment"], true);
}

#[sqlx::test(migrations = "../migrations")]
async fn for_payment_reports_every_validation_reason(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let s = Script::new(&pool);

    // Still PENDING, but past its expiry.
    let lapsed = s.create("tenant-a", &[(1, 1000)], -30, -10).await;
    // Cancelled.
    let cancelled = s.create("tenant-a", &[(1, 1000)], -5, 10).await;
    s.run(
        cancelled,
        OrderCommand::CancelOrder(CancelOrder {
            reason: "changed mind".into(),
            now: s.at(-4),
        }),
    )
    .await;
    // Expired by the expiry job.
    let expired = s.create("tenant-a", &[(1, 1000)], -30, -10).await;
    s.run(
        expired,
        OrderCommand::ExpireOrder(ExpireOrder { now: s.at(-1) }),
    )
    .await;
    // Paid.
    let paid = s.create("tenant-a", &[(1, 1000)], -5, 10).await;
    s.confirm(paid, -4).await;
    // Free tickets: nothing to charge.
    let free = s.create("tenant-a", &[(2, 0)], -5, 10).await;
    // No items: the domain refuses to create one, so this is a stored event written by hand
    // (an import, or a bug in an older version).
    let empty = Uuid::new_v4();
    let event = OrderEvent::OrderCreated(OrderCreated {
        order_id: empty,
        order_number: "ORD-EMPTY".into(),
        tenant_id: "tenant-a".into(),
        user_id: "user-1".into(),
        event_id: Uuid::new_v4(),
        currency: Currency::parse("USD").expect("currency"),
        items: vec![],
        subtotal_cents: 0,
        fees_cents: 500,
        tax_cents: 0,
        total_cents: 500,
        expires_at: s.at(10),
        event_starts_at: None,
        created_at: s.at(-1),
    });
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, 1, 'OrderCreated', '2.0', $2, '{}')",
    )
    .bind(empty.to_string())
    .bind(serde_json::to_value(&event).expect("json"))
    .execute(&pool)
    .await
    .expect("insert");
    project(&pool).await;

    let cases = [
        (lapsed, json!(["ORDER_EXPIRED"]), true, 1),
        (cancelled, json!(["INVALID_STATUS"]), false, 1),
        (expired, json!(["ORDER_EXPIRED", "INVALID_STATUS"]), true, 1),
        (paid, json!(["ALREADY_PAID"]), false, 1),
        (free, json!(["ZERO_TOTAL"]), false, 1),
        (empty, json!(["NO_ITEMS"]), false, 0),
    ];
    for (id, reasons, is_expired, item_count) in cases {
        let (status, body) = get(
            &app,
            "payment-service",
            &format!("/internal/orders/{id}/for-payment"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let ctx = &body["paymentContext"];
        assert_eq!(ctx["validationErrors"], reasons, "order {id}: {body}");
        assert_eq!(ctx["canProcessPayment"], false, "{body}");
        assert_eq!(ctx["isExpired"], is_expired, "{body}");
        assert_eq!(ctx["itemCount"], item_count, "{body}");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(item_count));
    }
    let (_, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{paid}/for-payment"),
    )
    .await;
    assert_eq!(body["order"]["status"], "PAID");
    assert!(body["order"]["paymentIntentId"].is_string());
}

// ---------------------------------------------------------------------------------------------
// GET /internal/orders/without-tickets

#[sqlx::test(migrations = "../migrations")]
async fn without_tickets_filters_by_age_status_tickets_and_tenant(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let s = Script::new(&pool);

    let old_paid = s.create("tenant-a", &[(2, 1000)], -60, 15).await;
    s.confirm(old_paid, -20).await;
    let old_with_tickets = s.create("tenant-a", &[(2, 1000)], -60, 15).await;
    s.confirm(old_with_tickets, -25).await;
    s.tickets(old_with_tickets, -24, &[1]).await;
    let fresh_paid = s.create("tenant-a", &[(1, 1000)], -3, 15).await;
    s.confirm(fresh_paid, -1).await;
    let refunded = s.create("tenant-a", &[(1, 1000)], -60, 15).await;
    s.confirm(refunded, -30).await;
    s.refund(refunded, -25, None, true).await;
    let pending = s.create("tenant-a", &[(1, 1000)], -60, 15).await;
    let other_tenant = s.create("tenant-b", &[(1, 1000)], -60, 15).await;
    s.confirm(other_tenant, -15).await;
    project(&pool).await;

    let ids = |body: &Value| -> Vec<String> {
        body["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|o| o["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let s_ = |u: Uuid| u.to_string();

    // Defaults: PAID, paid at least 5 minutes ago, no tickets; oldest payment first.
    let (status, body) = get(&app, "payment-service", "/internal/orders/without-tickets").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["count", "criteria", "orders"]);
    assert_eq!(
        body["criteria"],
        json!({"minutesOld": 5, "status": "PAID", "limit": 100})
    );
    assert_eq!(ids(&body), [s_(old_paid), s_(other_tenant)]);
    assert_eq!(body["count"], 2);
    assert_eq!(keys(&body["orders"][0]), ORDER_KEYS);
    assert_eq!(body["orders"][0]["ticketCount"], 0);

    // Age.
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?minutesOld=0",
    )
    .await;
    assert_eq!(ids(&body), [s_(old_paid), s_(other_tenant), s_(fresh_paid)]);
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?minutesOld=18",
    )
    .await;
    assert_eq!(ids(&body), [s_(old_paid)]);
    assert_eq!(body["criteria"]["minutesOld"], 18);

    // Status (case-insensitive, echoed in its wire form).
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?status=REFUNDED",
    )
    .await;
    assert_eq!(ids(&body), [s_(refunded)]);
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?status=refunded",
    )
    .await;
    assert_eq!(ids(&body), [s_(refunded)]);
    assert_eq!(body["criteria"]["status"], "REFUNDED");
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?status=PENDING&minutesOld=0",
    )
    .await;
    assert!(
        !ids(&body).contains(&s_(pending)),
        "an unpaid order has no paid time"
    );

    // Tenant.
    let (_, body) = get_for_tenant(
        &app,
        "payment-service",
        "tenant-a",
        "/internal/orders/without-tickets",
    )
    .await;
    assert_eq!(ids(&body), [s_(old_paid)]);
    let (_, body) = get_for_tenant(
        &app,
        "payment-service",
        "tenant-b",
        "/internal/orders/without-tickets",
    )
    .await;
    assert_eq!(ids(&body), [s_(other_tenant)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn without_tickets_caps_the_limit_and_refuses_bad_parameters(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let s = Script::new(&pool);
    for at in [-30, -20, -10] {
        let id = s.create("tenant-a", &[(1, 1000)], -60, 15).await;
        s.confirm(id, at).await;
    }
    project(&pool).await;

    let (status, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?limit=1000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["criteria"]["limit"], 500);
    assert_eq!(body["count"], 3);
    let (_, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?limit=2",
    )
    .await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["orders"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["criteria"]["limit"], 2);
    // Numbers too large for 64 bits saturate: capped, or older than any payment.
    let (status, body) = get(
        &app,
        "payment-service",
        "/internal/orders/without-tickets?limit=99999999999999999999&minutesOld=99999999999999",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["criteria"]["limit"], 500);
    assert_eq!(body["criteria"]["minutesOld"], u32::MAX);
    assert_eq!(body["count"], 0);

    for query in [
        "minutesOld=-1",
        "minutesOld=abc",
        "minutesOld=1.5",
        "minutesOld=",
        "limit=-5",
        "limit=ten",
        "limit=0",
        "limit=%2B5",
        "status=SHIPPED",
        "status=",
    ] {
        let (status, body) = get(
            &app,
            "payment-service",
            &format!("/internal/orders/without-tickets?{query}"),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_error_body(&body, "Bad Request");
    }
}

// ---------------------------------------------------------------------------------------------
// every route: tenants, callers, ids

#[sqlx::test(migrations = "../migrations")]
async fn another_tenants_order_is_not_found_on_every_route(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = app.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    project(&pool).await;

    for (service, path) in [
        ("payment-service", format!("/internal/orders/{id}")),
        ("blockchain-service", format!("/internal/orders/{id}/items")),
        (
            "payment-service",
            format!("/internal/orders/{id}/for-payment"),
        ),
    ] {
        let (status, body) = get_for_tenant(&app, service, "tenant-b", &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_error_body(&body, "Not Found");
        let (status, _) = get_for_tenant(&app, service, "tenant-a", &path).await;
        assert_eq!(status, 200, "{path} for its own tenant");
        let (status, _) = get(&app, service, &path).await;
        assert_eq!(status, 200, "{path} without a tenant");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_lookup_by_id_prefers_the_hot_row_and_falls_back_to_the_archive(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id: Uuid = app.create_order().await["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    project(&pool).await;
    let status_of = |order: Option<OrderView>| order.map(|o| o.status);
    let on_this_order = |sql: &'static str| sqlx::query(sql).bind(id).execute(&pool);

    let quantities = |detail: Option<queries::OrderDetail>| {
        detail.map(|d| {
            (
                d.order.status,
                d.items.iter().map(|i| i.quantity).collect::<Vec<_>>(),
            )
        })
    };
    let hot = queries::order_detail(&pool, id, None).await.expect("query");
    let (_, hot_quantities) = quantities(hot).expect("the order");
    assert!(!hot_quantities.is_empty());
    let archived_quantities: Vec<u32> = hot_quantities.iter().map(|q| q + 10).collect();

    // In both tables (a rebuild that left the archive behind): the hot rows answer.
    for sql in [
        "INSERT INTO order_read_archive SELECT * FROM order_read WHERE order_id = $1",
        "UPDATE order_read_archive SET status = 'CANCELLED' WHERE order_id = $1",
        "INSERT INTO order_item_read_archive SELECT * FROM order_item_read WHERE order_id = $1",
        "UPDATE order_item_read_archive SET quantity = quantity + 10 WHERE order_id = $1",
    ] {
        on_this_order(sql).await.expect(sql);
    }
    let order = queries::order(&pool, id, Some("tenant-a"))
        .await
        .expect("query");
    assert_eq!(status_of(order), Some(OrderStatus::Pending));
    let detail = queries::order_detail(&pool, id, Some("tenant-a"))
        .await
        .expect("query");
    assert_eq!(
        quantities(detail),
        Some((OrderStatus::Pending, hot_quantities))
    );

    // Only in the archive: the archive answers, to its own tenant only.
    on_this_order("DELETE FROM order_read WHERE order_id = $1")
        .await
        .expect("hot row gone");
    let order = queries::order(&pool, id, Some("tenant-a"))
        .await
        .expect("query");
    assert_eq!(status_of(order), Some(OrderStatus::Cancelled));
    let order = queries::order(&pool, id, None).await.expect("query");
    assert_eq!(status_of(order), Some(OrderStatus::Cancelled));
    assert!(queries::order(&pool, id, Some("tenant-b"))
        .await
        .expect("query")
        .is_none());
    // The detail likewise, with the archive's items.
    let detail = queries::order_detail(&pool, id, Some("tenant-a"))
        .await
        .expect("query");
    assert_eq!(
        quantities(detail),
        Some((OrderStatus::Cancelled, archived_quantities))
    );
    assert!(queries::order_detail(&pool, id, Some("tenant-b"))
        .await
        .expect("query")
        .is_none());
    assert!(queries::order_detail(&pool, Uuid::new_v4(), None)
        .await
        .expect("query")
        .is_none());
    assert!(queries::order(&pool, Uuid::new_v4(), None)
        .await
        .expect("query")
        .is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_lookups_by_id_are_batched_and_answer_as_the_unbatched_lookup(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let order = app.create_order().await;
        ids.push(
            order["id"]
                .as_str()
                .and_then(|s| s.parse::<Uuid>().ok())
                .expect("id"),
        );
    }
    project(&pool).await;
    // One order only in the archive, one stale archive copy behind a hot row, one unknown id.
    for (sql, id) in [
        (
            "INSERT INTO order_read_archive SELECT * FROM order_read WHERE order_id = $1",
            ids[0],
        ),
        ("DELETE FROM order_read WHERE order_id = $1", ids[0]),
        (
            "INSERT INTO order_read_archive SELECT * FROM order_read WHERE order_id = $1",
            ids[1],
        ),
        (
            "UPDATE order_read_archive SET status = 'CANCELLED' WHERE order_id = $1",
            ids[1],
        ),
    ] {
        sqlx::query(sql).bind(id).execute(&pool).await.expect(sql);
    }
    ids.push(Uuid::new_v4());

    let lookup = order_api::lookup::OrderLookup::new(pool.clone());
    // Every id for every tenant view, three times over, all at once.
    let asks: Vec<(Uuid, Option<&str>)> = (0..3)
        .flat_map(|_| ids.iter())
        .flat_map(|id| [None, Some("tenant-a"), Some("tenant-b")].map(|t| (*id, t)))
        .collect();
    let batched = futures::future::join_all(asks.iter().map(|(id, t)| lookup.order(*id, *t))).await;
    let mut found = 0;
    for ((id, tenant), answer) in asks.iter().zip(batched) {
        let answer = answer.expect("batched lookup");
        let alone = queries::order(&pool, *id, *tenant).await.expect("lookup");
        assert_eq!(answer, alone, "order {id} for tenant {tenant:?}");
        found += usize::from(answer.is_some());
    }
    // Six orders, each visible without a tenant and to tenant-a, three times.
    assert_eq!(found, 6 * 2 * 3);
    let statements = lookup.batches();
    assert!(
        statements < asks.len() as u64 / 4,
        "{} concurrent lookups took {statements} batch statements",
        asks.len()
    );

    // A batch whose statement cannot run: each caller gets its own error, none a wrong answer.
    let closed = PgPool::connect_with((*pool.connect_options()).clone())
        .await
        .expect("second pool");
    closed.close().await;
    let lookup = order_api::lookup::OrderLookup::new(closed);
    let answers = futures::future::join_all(ids.iter().map(|id| lookup.order(*id, None))).await;
    for answer in answers {
        assert!(
            matches!(answer, Err(ProjectionError::Database(_))),
            "{answer:?}"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn each_route_refuses_callers_outside_its_policy(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = app.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    project(&pool).await;

    let order = format!("/internal/orders/{id}");
    let items = format!("/internal/orders/{id}/items");
    let payment = format!("/internal/orders/{id}/for-payment");
    let without = "/internal/orders/without-tickets".to_owned();
    let cases = [
        ("blockchain-service", &order, 403),
        ("ticket-service", &order, 403),
        ("payment-service", &order, 200),
        ("blockchain-service", &payment, 403),
        ("payment-service", &payment, 200),
        ("blockchain-service", &without, 403),
        ("api-gateway", &without, 403),
        ("payment-service", &without, 200),
        ("payment-service", &items, 403),
        ("blockchain-service", &items, 200),
        ("ticket-service", &items, 200),
    ];
    for (service, path, expected) in cases {
        let (status, body) = get(&app, service, path).await;
        assert_eq!(status, expected, "{service} on {path}: {body}");
        if expected == 403 {
            assert_error_body(&body, "Forbidden");
        }
    }
    for path in [&order, &items, &payment, &without] {
        let (status, body) =
            json_of(app.send(Method::GET, path, Auth::None, &[], None).await).await;
        assert_eq!(status, 401, "unsigned {path}");
        assert_error_body(&body, "Unauthorized");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn malformed_ids_are_400_and_unknown_ids_404(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let unknown = Uuid::new_v4();
    for (service, suffix) in [
        ("payment-service", ""),
        ("blockchain-service", "/items"),
        ("payment-service", "/for-payment"),
    ] {
        let (status, body) = get(
            &app,
            service,
            &format!("/internal/orders/not-a-uuid{suffix}"),
        )
        .await;
        assert_eq!(status, 400, "{suffix}: {body}");
        assert_error_body(&body, "Bad Request");
        let (status, body) = get(
            &app,
            service,
            &format!("/internal/orders/{unknown}{suffix}"),
        )
        .await;
        assert_eq!(status, 404, "{suffix}: {body}");
        assert_error_body(&body, "Not Found");
        // minVersion=0 asks for nothing: an unknown order is 404 at once, not a 503 after
        // the read wait (2 s by default).
        let started = std::time::Instant::now();
        let (status, body) = get(
            &app,
            service,
            &format!("/internal/orders/{unknown}{suffix}?minVersion=0"),
        )
        .await;
        assert_eq!(status, 404, "{suffix} minVersion=0: {body}");
        assert_error_body(&body, "Not Found");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{suffix} minVersion=0 waited {:?}",
            started.elapsed()
        );
        let (status, body) = get(
            &app,
            service,
            &format!("/internal/orders/{unknown}{suffix}?minVersion=-1"),
        )
        .await;
        assert_eq!(status, 400, "{suffix}: {body}");
        assert_error_body(&body, "Bad Request");
    }
    // `without-tickets` is a route of its own, never an order id.
    let (status, body) = get(&app, "payment-service", "/internal/orders/without-tickets").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 0);
}

// ---------------------------------------------------------------------------------------------
// read-your-writes

#[sqlx::test(migrations = "../migrations")]
async fn min_version_reads_wait_for_the_projector(pool: PgPool) {
    // A slow projector (one poll every 300 ms), so a read right after a command is usually
    // behind and has to wait for the background worker; nothing here drives it by hand.
    let app = spawn_app_with(pool.clone(), |s| {
        s.read_model.projection_poll_ms = 300;
        s.read_model.wait_ms = 5_000;
    })
    .await;
    let created = app.create_order().await;
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}?minVersion=1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"], created);

    let (_, confirmed) = json_of(
        app.post(
            &format!("/api/v1/orders/{id}/confirm"),
            &json!({"paymentIntentId": "pi_ryw", "amountCents": created["totalCents"]}),
        )
        .await,
    )
    .await;
    let version = confirmed["order"]["version"].as_u64().expect("version");
    assert_eq!(version, 2);
    let (status, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}/for-payment?minVersion={version}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["version"], 2);
    assert_eq!(body["order"]["status"], "PAID");
    assert_eq!(
        body["paymentContext"]["validationErrors"],
        json!(["ALREADY_PAID"])
    );
    let (status, body) = get(
        &app,
        "blockchain-service",
        &format!("/internal/orders/{id}/items?minVersion={version}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_commit_wakes_the_projector_long_before_its_poll(pool: PgPool) {
    // The projector polls only once a minute, so a read that is answered within the 20 s wait
    // proves it was woken by the commit itself.
    let app = spawn_app_with(pool.clone(), |s| {
        s.read_model.projection_poll_ms = 60_000;
        s.read_model.wait_ms = 20_000;
    })
    .await;
    for n in 1..=3 {
        let created = app.create_order().await;
        let id = created["id"].as_str().expect("id").to_owned();
        let started = std::time::Instant::now();
        let (status, body) = get(
            &app,
            "payment-service",
            &format!("/internal/orders/{id}?minVersion=1"),
        )
        .await;
        assert_eq!(status, 200, "order {n}: {body}");
        assert_eq!(body["order"], created);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "order {n} was read only after {:?}",
            started.elapsed()
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_version_the_read_model_does_not_reach_is_503_with_retry_after(pool: PgPool) {
    // The event store holds versions the read model does not have: the test holds the
    // projection's lock (as a replay does), so the app's projector stands by.
    let app = spawn_app_with(pool.clone(), |s| s.read_model.wait_ms = 100).await;
    let s = Script::new(&pool);
    let behind = s.create("tenant-a", &[(1, 1000)], -1, 15).await;
    project(&pool).await;
    let mut lock = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("projection:{ORDERS_PROJECTION}"))
        .execute(&mut *lock)
        .await
        .expect("projection lock");
    let unseen = s.create("tenant-a", &[(1, 1000)], -1, 15).await;
    s.run(
        behind,
        OrderCommand::ReserveOrder(ReserveOrder {
            expires_at: s.at(30),
            now: s.at(0),
        }),
    )
    .await;

    for (service, path) in [
        (
            "payment-service",
            format!("/internal/orders/{unseen}?minVersion=1"),
        ),
        (
            "payment-service",
            format!("/internal/orders/{behind}?minVersion=2"),
        ),
        (
            "blockchain-service",
            format!("/internal/orders/{behind}/items?minVersion=2"),
        ),
        (
            "payment-service",
            format!("/internal/orders/{behind}/for-payment?minVersion=2"),
        ),
    ] {
        let started = std::time::Instant::now();
        let resp = app.get_as(service, &path).await;
        assert_eq!(resp.status(), 503, "{path}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1"),
            "{path}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{path} answered before the wait bound"
        );
        let (_, body) = json_of(resp).await;
        assert_error_body(&body, "Service Unavailable");
    }
    let id = behind;
    // A version already reached answers at once.
    let (status, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}?minVersion=1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &app,
        "payment-service",
        &format!("/internal/orders/{id}?minVersion=abc"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error_body(&body, "Bad Request");
}

/// `minVersion` waits only for what is pending: an order the event store does not hold (for
/// this tenant) is 404, and a version beyond the one it holds 409, both at once rather than a
/// 503 after the wait.
#[sqlx::test(migrations = "../migrations")]
async fn min_version_on_nothing_pending_answers_at_once(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), |s| s.read_model.wait_ms = 5_000).await;
    let s = Script::new(&pool);
    let id = s.create("tenant-a", &[(1, 1000)], -1, 15).await;
    project(&pool).await;
    let unknown = Uuid::new_v4();
    for suffix in ["", "/items", "/for-payment"] {
        let service = if suffix == "/items" {
            "blockchain-service"
        } else {
            "payment-service"
        };
        for (path, tenant, status, error) in [
            (
                format!("/internal/orders/{unknown}{suffix}?minVersion=1"),
                None,
                404,
                "Not Found",
            ),
            (
                format!("/internal/orders/{id}{suffix}?minVersion=1"),
                Some("tenant-b"),
                404,
                "Not Found",
            ),
            (
                format!("/internal/orders/{id}{suffix}?minVersion=2"),
                None,
                409,
                "Conflict",
            ),
            (
                format!("/internal/orders/{id}{suffix}?minVersion=2"),
                Some("tenant-a"),
                409,
                "Conflict",
            ),
        ] {
            let started = std::time::Instant::now();
            let (got, body) = match tenant {
                Some(t) => get_for_tenant(&app, service, t, &path).await,
                None => get(&app, service, &path).await,
            };
            assert_eq!(got, status, "{path} as {tenant:?}: {body}");
            assert_error_body(&body, error);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{path} waited {:?}",
                started.elapsed()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the projector: crashes, replays, rebuilds

/// The real projector, failing once on its `fail_at`-th event (1-based), after the events
/// before it in the batch were written: a crash between read-model writes and the checkpoint.
#[derive(Debug)]
struct FailOnce {
    seen: AtomicUsize,
    fail_at: usize,
}

impl Projector for FailOnce {
    type Event = DecodedEvent;

    fn name(&self) -> &str {
        ORDERS_PROJECTION
    }

    /// Writes the events before the failing one (the whole batch if it holds none), then
    /// fails.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[DecodedEvent],
    ) -> Result<(), ProjectionError> {
        let seen = self.seen.fetch_add(events.len(), Ordering::SeqCst);
        let failing = (seen < self.fail_at && self.fail_at <= seen + events.len())
            .then(|| self.fail_at - seen - 1);
        let Some(k) = failing else {
            return OrdersProjector.apply_batch(conn, events).await;
        };
        OrdersProjector
            .apply_batch(&mut *conn, &events[..k])
            .await?;
        Err(ProjectionError::Handler("injected crash".into()))
    }
}

/// A history over several orders: 3 orders × 6 events.
async fn paid_orders_with_tickets_and_refunds(s: &Script) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = s.create("tenant-a", &[(2, 1000), (1, 500)], -60, 15).await;
        s.confirm(id, -50).await;
        s.tickets(id, -49, &[1, 0]).await;
        s.tickets(id, -48, &[1, 1]).await;
        s.refund(id, -40, Some(300), true).await;
        ids.push(id);
    }
    ids
}

#[sqlx::test(migrations = "../migrations")]
async fn a_crash_mid_batch_loses_and_doubles_nothing(pool: PgPool) {
    let s = Script::new(&pool);
    let ids = paid_orders_with_tickets_and_refunds(&s).await;
    let total_events = 3 * 6;
    // Open transactions anywhere on the shared server hold the feed's fence back; wait until
    // every event is readable so that batch sizes below are exact.
    let visible = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = order_projections::feed::read_after(&pool, Default::default(), 100)
                .await
                .expect("feed")
                .len();
            if n >= total_events {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("events become visible");
    assert_eq!(visible, total_events);

    let runner = ProjectionRunner::new(
        pool.clone(),
        FailOnce {
            seen: AtomicUsize::new(0),
            fail_at: 8,
        },
        5,
    );
    assert_eq!(
        runner.run_once().await.expect("first batch"),
        RunOnce::Processed(5)
    );
    let failed = runner.run_once().await;
    assert!(
        matches!(failed, Err(ProjectionError::Handler(_))),
        "{failed:?}"
    );

    // The failed batch left nothing behind: the rows and the checkpoint are those of batch one.
    let applied: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(last_sequence), 0)::bigint FROM order_read")
            .fetch_one(&pool)
            .await
            .expect("sum");
    assert_eq!(applied, 5);
    assert_eq!(projected_events(&pool).await, 5);

    // Running again (the injected failure is spent) finishes the job exactly once.
    let rest = tokio::time::timeout(Duration::from_secs(30), runner.catch_up())
        .await
        .expect("in time")
        .expect("catch up");
    assert_eq!(5 + rest, total_events);
    for id in &ids {
        assert_matches_aggregate(&pool, &s.store, *id).await;
    }

    // Replaying every event over the existing rows changes nothing.
    let before = read_model_rows(&pool).await;
    checkpoint::reset(&pool, ORDERS_PROJECTION)
        .await
        .expect("reset checkpoint");
    project(&pool).await;
    assert_eq!(read_model_rows(&pool).await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_from_scratch_equals_the_live_read_model(pool: PgPool) {
    let s = Script::new(&pool);
    let mut ids = paid_orders_with_tickets_and_refunds(&s).await;

    // Reserved, paid, ticketed, reminded about the event.
    let a = s.create("tenant-a", &[(2, 5000), (1, 7500)], -60, 15).await;
    s.run(
        a,
        OrderCommand::ReserveOrder(ReserveOrder {
            expires_at: s.at(30),
            now: s.at(-55),
        }),
    )
    .await;
    s.confirm(a, -50).await;
    s.tickets(a, -49, &[2, 1]).await;
    s.run(
        a,
        OrderCommand::SendEventReminder(SendEventReminder { now: s.at(-10) }),
    )
    .await;
    // Disputed and won, refunded in two parts with a failed attempt between, then archived.
    let b = s.create("tenant-b", &[(1, 10_000)], -60, 15).await;
    s.confirm(b, -50).await;
    let open = |now| {
        OrderCommand::OpenDispute(OpenDispute {
            dispute_id: "dp_won".into(),
            amount_cents: Some(10_000),
            reason: Some("fraudulent".into()),
            now,
        })
    };
    s.run(b, open(s.at(-45))).await;
    s.run(
        b,
        OrderCommand::UpdateDispute(UpdateDispute {
            dispute_id: "dp_won".into(),
            status: "under_review".into(),
            now: s.at(-44),
        }),
    )
    .await;
    s.run(
        b,
        OrderCommand::CloseDispute(CloseDispute {
            dispute_id: "dp_won".into(),
            outcome: DisputeOutcome::Won,
            now: s.at(-43),
        }),
    )
    .await;
    s.refund(b, -40, Some(4_000), true).await;
    s.refund(b, -39, None, false).await;
    s.refund(b, -38, None, true).await;
    s.run(
        b,
        OrderCommand::ArchiveOrder(ArchiveOrder { now: s.at(-1) }),
    )
    .await;
    // Disputed and lost: refunds stay locked.
    let c = s.create("tenant-a", &[(1, 2_000)], -60, 15).await;
    s.confirm(c, -50).await;
    s.run(
        c,
        OrderCommand::OpenDispute(OpenDispute {
            dispute_id: "dp_lost".into(),
            amount_cents: None,
            reason: None,
            now: s.at(-45),
        }),
    )
    .await;
    s.run(
        c,
        OrderCommand::CloseDispute(CloseDispute {
            dispute_id: "dp_lost".into(),
            outcome: DisputeOutcome::Lost,
            now: s.at(-40),
        }),
    )
    .await;
    // Cancelled, then archived.
    let d = s.create("tenant-a", &[(1, 2_000)], -60, 15).await;
    s.run(
        d,
        OrderCommand::CancelOrder(CancelOrder {
            reason: "duplicate".into(),
            now: s.at(-59),
        }),
    )
    .await;
    s.run(
        d,
        OrderCommand::ArchiveOrder(ArchiveOrder { now: s.at(-1) }),
    )
    .await;
    // Reminded, then expired.
    let e = s.create("tenant-a", &[(3, 1_500)], -30, -10).await;
    s.run(
        e,
        OrderCommand::SendReminder(SendReminder { now: s.at(-15) }),
    )
    .await;
    s.run(e, OrderCommand::ExpireOrder(ExpireOrder { now: s.at(-5) }))
        .await;
    // A failed payment, then the order failed.
    let f = s.create("tenant-a", &[(1, 2_000)], -10, 15).await;
    s.run(
        f,
        OrderCommand::RecordPaymentFailure(RecordPaymentFailure {
            payment_intent_id: "pi_declined".into(),
            reason: "card declined".into(),
            now: s.at(-9),
        }),
    )
    .await;
    s.run(
        f,
        OrderCommand::FailOrder(FailOrder {
            reason: "fraud check".into(),
            now: s.at(-8),
        }),
    )
    .await;
    ids.extend([a, b, c, d, e, f]);

    project(&pool).await;
    let live = read_model_rows(&pool).await;
    assert_eq!(live.0.len(), ids.len());
    for id in &ids {
        assert_matches_aggregate(&pool, &s.store, *id).await;
    }

    let applied = tokio::time::timeout(Duration::from_secs(30), orders::rebuild(&pool, 4))
        .await
        .expect("in time")
        .expect("rebuild");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(applied as i64, events);
    let rebuilt = read_model_rows(&pool).await;
    assert_eq!(rebuilt.0, live.0, "order_read differs after a rebuild");
    assert_eq!(rebuilt.1, live.1, "order_item_read differs after a rebuild");
}

/// A runner woken by commits that is asked to stop while it works through a backlog stops
/// after the batch in hand: the pause after a full batch is ready at once, and the stop must
/// still win over it.
#[sqlx::test(migrations = "../migrations")]
async fn a_stopped_runner_with_a_backlog_applies_one_batch_and_returns(pool: PgPool) {
    let s = Script::new(&pool);
    paid_orders_with_tickets_and_refunds(&s).await;
    order_tests::helpers::wait_visible(&pool).await;

    let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, 5).with_wake(
        order_projections::postgres::CommitSignal::new(),
        order_projections::postgres::DEFAULT_GATHER,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    // 18 events in batches of five: each start applies the batch in hand, full, and stops.
    for applied in [5_i64, 10, 15] {
        tokio::time::timeout(
            Duration::from_secs(30),
            runner.run_until_stopped(Duration::from_secs(10), stop.clone()),
        )
        .await
        .expect("returns once the batch in hand is applied");
        assert_eq!(
            projected_events(&pool).await,
            applied,
            "a stopped runner went on past its batch"
        );
    }
}
