//! One commit per signed command: the request's replay key is recorded by the statement that
//! appends the command's events (docs/contract.md §4.4). Each test shows a rule that must hold
//! whichever way the key is settled, by the append or by the nonce batcher: a replay is a 401
//! and appends nothing, whatever its body; copies racing on two replicas are accepted once; a
//! refused or malformed command still spends its key; a failing nonce store is never a pass.

use futures::future::join_all;
use order_tests::{json_of, order_body, spawn_app, v1_headers, v2_headers, Auth, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

type Headers = Vec<(String, String)>;

async fn send(app: &TestApp, path: &str, headers: &Headers, body: &Value) -> (u16, Value) {
    let response = app
        .send(
            Method::POST,
            path,
            Auth::Raw(headers.clone()),
            &[("x-tenant-id", "tenant-a")],
            Some(body),
        )
        .await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[track_caller]
fn assert_replay_refused(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "Invalid service credentials", "{body}");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn events_of(pool: &PgPool, order: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(order)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A second replica on the same database: nothing but Postgres is shared.
async fn replica(pool: &PgPool) -> TestApp {
    let pool_b = PgPool::connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("second pool");
    spawn_app(pool_b).await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_create_is_refused_and_appends_nothing(pool: PgPool) {
    let a = spawn_app(pool.clone()).await;
    let b = replica(&pool).await;
    let create = "/api/v1/orders";
    for headers in [
        v1_headers("api-gateway", "POST", create),
        v2_headers("api-gateway", create),
    ] {
        let (status, body) = send(&a, create, &headers, &order_body()).await;
        assert_eq!(status, 201, "{body}");
        let events = count(&pool, "SELECT count(*) FROM events").await;
        // Without an Idempotency-Key each create is a new order: only the key stops it.
        for app in [&a, &b] {
            let (status, body) = send(app, create, &headers, &order_body()).await;
            assert_replay_refused(status, &body);
        }
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, events);
    }
}

/// The replays here would append if they got through: their first use was refused before any
/// append (a malformed body, the domain's refusal), so only the key stops them.
#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_command_is_refused_even_where_its_first_use_appended_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("id");
    let total = order["totalCents"].clone();

    // Reserve: first a malformed body (400), then the same credentials with a good one.
    let reserve = format!("/api/v1/orders/{id}/reserve");
    let headers = v1_headers("api-gateway", "POST", &reserve);
    let (status, body) = send(&app, &reserve, &headers, &json!({"expiresInSeconds": 0})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(&app, &reserve, &headers, &json!({})).await;
    assert_replay_refused(status, &body);
    assert_eq!(
        events_of(&pool, id).await,
        1,
        "the replayed reserve appended"
    );

    // Confirm: first refused by the order (another amount, 409), then the right amount.
    let confirm = format!("/api/v1/orders/{id}/confirm");
    let headers = v2_headers("payment-service", &confirm);
    let wrong = json!({"paymentIntentId": "pi_1", "amountCents": 1});
    let (status, body) = send(&app, &confirm, &headers, &wrong).await;
    assert_eq!(status, 409, "{body}");
    let right = json!({"paymentIntentId": "pi_1", "amountCents": total});
    let (status, body) = send(&app, &confirm, &headers, &right).await;
    assert_replay_refused(status, &body);
    assert_eq!(
        events_of(&pool, id).await,
        1,
        "the replayed confirm appended"
    );

    // Fresh credentials go through once; their replay (a retry the order would accept as
    // already satisfied) is still refused.
    let headers = v1_headers("payment-service", "POST", &confirm);
    let (status, body) = send(&app, &confirm, &headers, &right).await;
    assert_eq!(
        (status, &body["order"]["status"]),
        (200, &json!("PAID")),
        "{body}"
    );
    let (status, body) = send(&app, &confirm, &headers, &right).await;
    assert_replay_refused(status, &body);
    assert_eq!(events_of(&pool, id).await, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_copies_of_one_signed_command_are_accepted_once(pool: PgPool) {
    let a = spawn_app(pool.clone()).await;
    let b = replica(&pool).await;
    let apps = [&a, &b];

    let create = "/api/v1/orders";
    let headers = v2_headers("api-gateway", create);
    let body = order_body();
    let copies = (0..8).map(|i| send(apps[i % 2], create, &headers, &body));
    let mut statuses: Vec<u16> = join_all(copies).await.into_iter().map(|(s, _)| s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 401, 401, 401, 401, 401, 401, 401]);
    let orders = count(&pool, "SELECT count(DISTINCT aggregate_id) FROM events").await;
    assert_eq!(orders, 1);

    let id = a.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let cancel = format!("/api/v1/orders/{id}/cancel");
    let headers = v1_headers("api-gateway", "POST", &cancel);
    let body = json!({"reason": "duplicate"});
    let copies = (0..8).map(|i| send(apps[i % 2], &cancel, &headers, &body));
    let mut statuses: Vec<u16> = join_all(copies).await.into_iter().map(|(s, _)| s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401, 401, 401]);
    assert_eq!(events_of(&pool, &id).await, 2);
}

/// A create with `Idempotency-Key: order-1`.
async fn keyed(app: &TestApp, headers: Headers) -> (u16, Value) {
    let response = app
        .send(
            Method::POST,
            "/api/v1/orders",
            Auth::Raw(headers),
            &[("x-tenant-id", "tenant-a"), ("idempotency-key", "order-1")],
            Some(&order_body()),
        )
        .await;
    json_of(response).await
}

/// A repeat of an Idempotency-Key appends nothing and answers the first answer: its own
/// credentials are spent all the same.
#[sqlx::test(migrations = "../migrations")]
async fn an_idempotent_repeat_spends_its_credentials(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let create = "/api/v1/orders";
    let (status, first) = keyed(&app, v1_headers("api-gateway", "POST", create)).await;
    assert_eq!(status, 201, "{first}");
    let repeat = v1_headers("api-gateway", "POST", create);
    let (status, again) = keyed(&app, repeat.clone()).await;
    assert_eq!(
        (status, &again["order"]["id"]),
        (201, &first["order"]["id"])
    );
    let (status, body) = keyed(&app, repeat).await;
    assert_replay_refused(status, &body);
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failing_nonce_store_fails_commands_closed(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id = app.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    sqlx::query("DROP TABLE auth_nonces")
        .execute(&pool)
        .await
        .expect("drop");
    let create = "/api/v1/orders";
    let (status, body) = send(
        &app,
        create,
        &v1_headers("api-gateway", "POST", create),
        &order_body(),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    // Appending nothing (a malformed body) does not make it a pass either.
    let reserve = format!("/api/v1/orders/{id}/reserve");
    let headers = v1_headers("api-gateway", "POST", &reserve);
    let (status, body) = send(&app, &reserve, &headers, &json!({"expiresInSeconds": 0})).await;
    assert_eq!(status, 500, "{body}");
    let (status, body) = send(
        &app,
        &reserve,
        &v2_headers("api-gateway", &reserve),
        &json!({}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 1);
}
