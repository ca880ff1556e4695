//! Malformed input is a 4xx with the JSON error body and a message that says what was wrong;
//! never a 500. A command the order's state forbids is a 409 that says why.

use order_tests::helpers::assert_error_body;
use order_tests::{json_of, order_body, spawn_app, v1_headers, Auth};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Asserts the status and the normative error body; returns its message.
fn assert_refused(status: u16, body: &Value, expected_status: u16, reason: &str) -> String {
    assert_eq!(status, expected_status, "{body}");
    assert_error_body(body, reason)
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_create_bodies_are_400_with_a_reason(pool: PgPool) {
    let app = spawn_app(pool).await;
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut b = order_body();
        patch(&mut b);
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "wrong type",
            with(&|b| b["items"] = json!("many")),
            "invalid JSON body",
        ),
        (
            "unknown field",
            with(&|b| b["discountCents"] = json!(5)),
            "unknown field `discountCents`",
        ),
        (
            "quantity 0",
            with(&|b| b["items"][0]["quantity"] = json!(0)),
            "quantity must be between 1 and 50, got 0",
        ),
        (
            "quantity 51",
            with(&|b| b["items"][0]["quantity"] = json!(51)),
            "got 51",
        ),
        (
            "negative quantity",
            with(&|b| b["items"][0]["quantity"] = json!(-3)),
            "got -3",
        ),
        (
            "negative price",
            with(&|b| b["items"][0]["unitPriceCents"] = json!(-1)),
            "unitPriceCents must not be negative",
        ),
        (
            "negative fees",
            with(&|b| b["feesCents"] = json!(-1)),
            "feesCents must not be negative",
        ),
        (
            "unknown currency",
            with(&|b| b["currency"] = json!("XYZ")),
            "unknown currency 'XYZ'",
        ),
        (
            "lower-case currency",
            with(&|b| b["currency"] = json!("usd")),
            "unknown currency",
        ),
        (
            "no items",
            with(&|b| b["items"] = json!([])),
            "at least one item",
        ),
        (
            "bad event id",
            with(&|b| b["eventId"] = json!("not-a-uuid")),
            "invalid JSON body",
        ),
        (
            "float price",
            with(&|b| b["items"][0]["unitPriceCents"] = json!(12.5)),
            "invalid JSON body",
        ),
        (
            "missing field",
            with(&|b| {
                b.as_object_mut().unwrap().remove("currency");
            }),
            "missing field `currency`",
        ),
        (
            "expiry too long",
            with(&|b| b["expiresInSeconds"] = json!(999_999)),
            "expiresInSeconds",
        ),
        (
            "price over the bound",
            with(&|b| b["items"][0]["unitPriceCents"] = json!(1_000_000_000_000_001_i64)),
            "items[0].unitPriceCents must be at most 1000000000000000",
        ),
        (
            "NUL in a text",
            with(&|b| b["userId"] = json!("user\u{0}1")),
            "userId must not contain U+0000",
        ),
        (
            "tax over the bound",
            with(&|b| b["taxCents"] = json!(i64::MAX)),
            "taxCents must be at most",
        ),
    ];
    for (name, body, expected) in cases {
        let (status, answer) = json_of(app.post("/api/v1/orders", &body).await).await;
        let message = assert_refused(status, &answer, 400, "Bad Request");
        assert!(message.contains(expected), "{name}: {message}");
    }
}

/// What the OpenAPI document calls valid is accepted: integers written with a zero fraction
/// (JSON Schema's `integer` includes `2.0`), the largest amounts of the stated bounds on the
/// most lines (no overflow within them), and texts measured in characters, not bytes.
#[sqlx::test(migrations = "../migrations")]
async fn what_the_document_calls_valid_is_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut body = order_body();
    body["items"][0]["quantity"] = json!(2.0);
    body["items"][0]["unitPriceCents"] = json!(5000.0);
    body["feesCents"] = json!(250.0);
    body["expiresInSeconds"] = json!(600.0);
    let (status, created) = json_of(app.post("/api/v1/orders", &body).await).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["order"]["subtotalCents"], 17_500);
    let id = created["order"]["id"].as_str().expect("id").to_owned();
    let total = created["order"]["totalCents"].as_i64().expect("total");

    let max = 1_000_000_000_000_000_i64;
    let mut largest = order_body();
    largest["items"] = json!(vec![
        json!({"ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e",
               "quantity": 50, "unitPriceCents": max});
        100
    ]);
    largest["feesCents"] = json!(max);
    largest["taxCents"] = json!(max);
    let (status, answer) = json_of(app.post("/api/v1/orders", &largest).await).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["order"]["totalCents"], 5002 * max);

    // 255 and 500 two-byte characters: within the document's maxLength, over it in bytes.
    let confirm = json!({"paymentIntentId": "é".repeat(255), "amountCents": total as f64});
    let (status, answer) = json_of(
        app.send(
            Method::POST,
            &format!("/api/v1/orders/{id}/confirm"),
            Auth::v1("payment-service"),
            &[],
            Some(&confirm),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = json_of(
        app.post(
            &format!(
                "/api/v1/orders/{}/cancel",
                app.create_order().await["id"].as_str().unwrap()
            ),
            &json!({"reason": "é".repeat(500)}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = json_of(
        app.post(
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({"reason": "é".repeat(501)}),
        )
        .await,
    )
    .await;
    assert_refused(status, &answer, 400, "Bad Request");
    // U+0000 is refused up front: the events' jsonb cannot store it.
    let (status, answer) = json_of(
        app.post(
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({"reason": "a\u{0}b"}),
        )
        .await,
    )
    .await;
    let message = assert_refused(status, &answer, 400, "Bad Request");
    assert!(message.contains("U+0000"), "{message}");
}

#[sqlx::test(migrations = "../migrations")]
async fn malformed_json_and_wrong_content_type_are_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let raw = |content_type: &'static str, body: &'static str| {
        let mut req = app
            .client
            .post(format!("{}/api/v1/orders", app.address))
            .header("content-type", content_type)
            .header("x-tenant-id", "tenant-a")
            .body(body);
        for (k, v) in v1_headers("api-gateway", "POST", "/api/v1/orders") {
            req = req.header(k, v);
        }
        req.send()
    };
    let (status, body) = json_of(raw("application/json", "{\"userId\": ").await.unwrap()).await;
    assert!(assert_refused(status, &body, 400, "Bad Request").contains("invalid JSON body"));
    let (status, body) = json_of(raw("text/plain", "{}").await.unwrap()).await;
    assert!(assert_refused(status, &body, 400, "Bad Request").contains("content-type"));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_body_over_the_limit_is_413_with_the_error_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut body = order_body();
    body["padding"] = json!("x".repeat(200 * 1024));
    let (status, answer) = json_of(app.post("/api/v1/orders", &body).await).await;
    let message = assert_refused(status, &answer, 413, "Payload Too Large");
    assert!(message.contains("larger than the limit"), "{message}");
}

#[sqlx::test(migrations = "../migrations")]
async fn create_without_a_tenant_is_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let resp = app
        .send(
            Method::POST,
            "/api/v1/orders",
            Auth::v1("api-gateway"),
            &[],
            Some(&order_body()),
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert!(assert_refused(status, &body, 400, "Bad Request").contains("X-Tenant-ID"));
}

#[sqlx::test(migrations = "../migrations")]
async fn path_ids_that_are_not_uuids_are_400_and_unknown_orders_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = json_of(
        app.post("/api/v1/orders/not-a-uuid/reserve", &json!({}))
            .await,
    )
    .await;
    assert!(assert_refused(status, &body, 400, "Bad Request").contains("not a UUID"));
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = json_of(
        app.post(&format!("/api/v1/orders/{unknown}/reserve"), &json!({}))
            .await,
    )
    .await;
    assert_refused(status, &body, 404, "Not Found");
    let (status, body) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{unknown}/events"))
            .await,
    )
    .await;
    assert_refused(status, &body, 404, "Not Found");
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_command_bodies_are_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    let cases = [
        (
            "confirm",
            json!({"paymentIntentId": "", "amountCents": 1}),
            "paymentIntentId",
        ),
        (
            "confirm",
            json!({"paymentIntentId": "pi", "amountCents": "lots"}),
            "invalid JSON body",
        ),
        (
            "cancel",
            json!({"reason": "   "}),
            "reason must be 1 to 500 characters",
        ),
        ("cancel", json!({}), "missing field `reason`"),
        ("reserve", json!({"hold": 5}), "unknown field `hold`"),
        (
            "refunds",
            json!({"amountCents": 10}),
            "missing field `reason`",
        ),
        ("tickets", json!({"tickets": []}), "between 1 and 500"),
        (
            "tickets",
            json!({"tickets": [{"itemId": "x", "ticketId": "t"}]}),
            "invalid JSON body",
        ),
    ];
    for (route, body, expected) in cases {
        let (status, answer) = json_of(
            app.post(&format!("/api/v1/orders/{id}/{route}"), &body)
                .await,
        )
        .await;
        let message = assert_refused(status, &answer, 400, "Bad Request");
        assert!(message.contains(expected), "{route} {body}: {message}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn commands_the_state_forbids_are_409_saying_why(pool: PgPool) {
    let app = spawn_app(pool).await;
    let id = app.create_order().await["id"].as_str().unwrap().to_owned();
    let post = |route: &str, body: Value| {
        let path = format!("/api/v1/orders/{id}/{route}");
        let app = &app;
        async move { json_of(app.post_keyed(&path, "key-1", &body).await).await }
    };
    let (status, body) = post("refunds", json!({"reason": "x"})).await;
    assert!(assert_refused(status, &body, 409, "Conflict")
        .contains("cannot refund an order that is PENDING"));
    let (status, body) = post(
        "confirm",
        json!({"paymentIntentId": "pi", "amountCents": 1}),
    )
    .await;
    assert!(
        assert_refused(status, &body, 409, "Conflict").contains("does not match the order total")
    );
    post("cancel", json!({"reason": "bye"})).await;
    let (status, body) = post(
        "confirm",
        json!({"paymentIntentId": "pi", "amountCents": 17870}),
    )
    .await;
    assert!(assert_refused(status, &body, 409, "Conflict")
        .contains("cannot confirm an order that is CANCELLED"));
    let (status, body) = post("reserve", json!({})).await;
    assert!(assert_refused(status, &body, 409, "Conflict").contains("CANCELLED"));
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_routes_and_methods_answer_the_json_error_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = json_of(app.send(Method::GET, "/nope", Auth::None, &[], None).await).await;
    assert_refused(status, &body, 404, "Not Found");
    let (status, body) = json_of(
        app.send(Method::DELETE, "/health/live", Auth::None, &[], None)
            .await,
    )
    .await;
    assert_refused(status, &body, 405, "Method Not Allowed");
}

/// A client that sends its whole body before it reads the answer (Node's fetch without
/// `Expect: 100-continue`, most HTTP libraries) must still read the 413: the service reads and
/// discards the rest of an oversized body, up to a bound, instead of closing the connection
/// under the client's writes.
#[sqlx::test(migrations = "../migrations")]
async fn an_oversized_body_sent_whole_still_gets_its_413(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app(pool).await;
    let body = vec![b' '; 8 * 1024 * 1024];
    let path = "/api/v1/orders";
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-tenant-id: tenant-a\r\n",
        body.len()
    );
    for (k, v) in v1_headers("api-gateway", "POST", path) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&body)
        .await
        .expect("the whole body is taken, not cut off with a reset");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer in time")
    .expect("the answer is readable");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"requestId\""),
        "the contract's body: {answer}"
    );
}
