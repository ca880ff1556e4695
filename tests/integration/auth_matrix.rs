//! Service authentication through the running application (docs/contract.md §4): every refusal
//! with its status, and nothing in the body that tells an attacker which check failed.

use order_api::config::{AppEnv, Settings};
use order_api::startup::Application;
use order_tests::{
    json_of, nonce, now_ms, order_body, sign_v1, sign_v2, spawn_app, spawn_app_with, Auth, TestApp,
    SECRET,
};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const PATH: &str = "/api/v1/orders";

fn v1(service: &str, ts: i64, nonce: &str, sig: Option<String>) -> Auth {
    let ts = ts.to_string();
    let sig = sig.unwrap_or_else(|| sign_v1(SECRET, service, &ts, nonce, "POST", PATH));
    Auth::Raw(vec![
        ("x-service-name".into(), service.into()),
        ("x-request-timestamp".into(), ts),
        ("x-request-nonce".into(), nonce.into()),
        ("x-internal-auth".into(), sig),
    ])
}

async fn create(app: &TestApp, auth: Auth) -> (u16, Value) {
    json_of(
        app.send(
            Method::POST,
            PATH,
            auth,
            &[("x-tenant-id", "tenant-a")],
            Some(&order_body()),
        )
        .await,
    )
    .await
}

fn assert_refused(answer: &(u16, Value), status: u16, error: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], error);
    let text = answer.1.to_string();
    assert!(!text.contains(SECRET), "the body leaks the secret");
    assert!(!text.contains("hmac"), "the body names a check: {text}");
}

#[sqlx::test(migrations = "../migrations")]
async fn good_v1_and_v2_requests_are_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(create(&app, Auth::v1("api-gateway")).await.0, 201);
    assert_eq!(create(&app, Auth::v2("api-gateway")).await.0, 201);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_nonce_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let n = nonce();
    let ts = now_ms();
    assert_eq!(create(&app, v1("api-gateway", ts, &n, None)).await.0, 201);
    assert_refused(
        &create(&app, v1("api-gateway", ts, &n, None)).await,
        401,
        "Unauthorized",
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_v2_signature_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ts = now_ms().to_string();
    let headers = vec![
        ("x-internal-service".to_owned(), "api-gateway".to_owned()),
        ("x-internal-timestamp".to_owned(), ts.clone()),
        (
            "x-internal-signature".to_owned(),
            sign_v2(SECRET, "api-gateway", &ts, PATH),
        ),
    ];
    assert_eq!(create(&app, Auth::Raw(headers.clone())).await.0, 201);
    assert_refused(&create(&app, Auth::Raw(headers)).await, 401, "Unauthorized");
}

#[sqlx::test(migrations = "../migrations")]
async fn stale_and_future_timestamps_are_refused_as_expired(pool: PgPool) {
    let app = spawn_app(pool).await;
    for skew in [-6 * 60_000, 6 * 60_000] {
        let answer = create(&app, v1("api-gateway", now_ms() + skew, &nonce(), None)).await;
        assert_refused(&answer, 401, "Unauthorized");
        assert_eq!(answer.1["message"], "Request timestamp expired");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_signatures_are_refused_without_saying_why(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ts = now_ms();
    let n = nonce();
    let good = sign_v1(SECRET, "api-gateway", &ts.to_string(), &n, "POST", PATH);
    let mut tampered = good.clone().into_bytes();
    tampered[0] = if tampered[0] == b'a' { b'b' } else { b'a' };
    let cases = [
        ("tampered", String::from_utf8(tampered).unwrap()),
        ("wrong length", good[..40].to_owned()),
        ("bypass value", "temp-signature".to_owned()),
        ("empty", String::new()),
        (
            "other key",
            sign_v1(
                "another-secret",
                "api-gateway",
                &ts.to_string(),
                &n,
                "POST",
                PATH,
            ),
        ),
        (
            "other path",
            sign_v1(
                SECRET,
                "api-gateway",
                &ts.to_string(),
                &n,
                "POST",
                "/api/v1/orders?x=1",
            ),
        ),
        (
            "other method",
            sign_v1(SECRET, "api-gateway", &ts.to_string(), &n, "GET", PATH),
        ),
    ];
    let mut messages = vec![];
    for (name, sig) in cases {
        let answer = create(&app, v1("api-gateway", ts, &nonce(), Some(sig))).await;
        assert_eq!(answer.0, 401, "{name}: {}", answer.1);
        assert_refused(&answer, 401, "Unauthorized");
        messages.push(answer.1["message"].clone());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "every signature failure reads the same: {messages:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn missing_headers_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_refused(&create(&app, Auth::None).await, 401, "Unauthorized");
    let partial = Auth::Raw(vec![("x-service-name".into(), "api-gateway".into())]);
    assert_refused(&create(&app, partial).await, 401, "Unauthorized");
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_callers_and_callers_on_the_wrong_route_are_forbidden(pool: PgPool) {
    let app = spawn_app(pool).await;
    for service in ["evil-service", "blockchain-service"] {
        let answer = create(&app, Auth::v1(service)).await;
        assert_refused(&answer, 403, "Forbidden");
        assert_eq!(answer.1["message"], "Service not authorized", "{service}");
    }
}

/// Each command is open to its own callers only (the defaults of `ROUTE_CALLERS`): a known
/// caller on a command not open to it gets 403 and changes nothing.
#[sqlx::test(migrations = "../migrations")]
async fn each_command_is_open_to_its_own_callers_only(pool: PgPool) {
    let app = spawn_app(pool).await;
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("id");
    let total = order["totalCents"].clone();
    let command = |route: &str| format!("/api/v1/orders/{id}/{route}");
    let confirm = json!({"paymentIntentId": "pi_scopes", "amountCents": total});
    let some_item = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let tickets = json!({"tickets": [{"itemId": some_item, "ticketId": "tkt_scopes"}]});
    let refund = json!({"reason": "scopes", "amountCents": 1});
    let forbidden = [
        ("confirm", "api-gateway", &confirm),
        ("confirm", "event-service", &confirm),
        ("confirm", "ticket-service", &confirm),
        ("reserve", "payment-service", &json!({})),
        ("reserve", "ticket-service", &json!({})),
        ("cancel", "payment-service", &json!({"reason": "scopes"})),
        ("cancel", "event-service", &json!({"reason": "scopes"})),
        ("tickets", "api-gateway", &tickets),
        ("tickets", "payment-service", &tickets),
        ("refunds", "ticket-service", &refund),
        ("refunds", "event-service", &refund),
    ];
    for (route, service, body) in forbidden {
        let answer = json_of(app.post_as(service, &command(route), body).await).await;
        assert_refused(&answer, 403, "Forbidden");
        assert_eq!(
            answer.1["message"], "Service not authorized",
            "{route} as {service}"
        );
    }
    for service in ["payment-service", "ticket-service", "event-service"] {
        let answer = json_of(app.post_as(service, PATH, &order_body()).await).await;
        assert_refused(&answer, 403, "Forbidden");
    }
    // Nothing above changed the order.
    let history = |service: &'static str| {
        let path = command("events");
        let app = &app;
        async move {
            let resp = app
                .send(
                    Method::GET,
                    &path,
                    Auth::v1(service),
                    &[("x-tenant-id", "tenant-a")],
                    None,
                )
                .await;
            json_of(resp).await
        }
    };
    let (status, events) = history("event-service").await;
    assert_eq!(
        status, 200,
        "the history stays open to event-service: {events}"
    );
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    let item = events["events"][0]["payload"]["items"][0]["id"].clone();
    let tickets = json!({"tickets": [{"itemId": item, "ticketId": "tkt_scopes"}]});

    // The callers each command is open to.
    let ok = |answer: &(u16, Value), what: &str| {
        assert!((200..300).contains(&answer.0), "{what}: {}", answer.1);
    };
    ok(
        &json_of(
            app.post_as("api-gateway", &command("reserve"), &json!({}))
                .await,
        )
        .await,
        "reserve as api-gateway",
    );
    ok(
        &json_of(
            app.post_as("payment-service", &command("confirm"), &confirm)
                .await,
        )
        .await,
        "confirm as payment-service",
    );
    ok(
        &json_of(
            app.post_as("ticket-service", &command("tickets"), &tickets)
                .await,
        )
        .await,
        "tickets as ticket-service",
    );
    ok(&history("api-gateway").await, "history as api-gateway");
}

/// `ROUTE_CALLERS` opens a command to another caller, one command at a time.
#[sqlx::test(migrations = "../migrations")]
async fn route_callers_override_one_command(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.auth.route_callers = Some("orders.confirm=payment-service|api-gateway".into());
    })
    .await;
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("id");
    let confirm = json!({"paymentIntentId": "pi_override", "amountCents": order["totalCents"]});
    let answer = json_of(
        app.post_as(
            "api-gateway",
            &format!("/api/v1/orders/{id}/confirm"),
            &confirm,
        )
        .await,
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let tickets =
        json!({"tickets": [{"itemId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "ticketId": "t"}]});
    let answer = json_of(
        app.post_as(
            "api-gateway",
            &format!("/api/v1/orders/{id}/tickets"),
            &tickets,
        )
        .await,
    )
    .await;
    assert_refused(&answer, 403, "Forbidden");
}

/// hmac-v1 nonces are hex digits, `-` and `_`: anything else is refused like any malformed
/// credential, `/` above all (a nonce holding `/` and `:` could make one signed text valid under
/// both schemes).
#[sqlx::test(migrations = "../migrations")]
async fn nonces_are_hex_dashes_and_underscores_only(pool: PgPool) {
    let app = spawn_app(pool).await;
    for good in [
        nonce(),
        nonce().to_uppercase(),
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned(),
        "abc_def-0123".to_owned(),
    ] {
        let answer = create(&app, v1("api-gateway", now_ms(), &good, None)).await;
        assert_eq!(answer.0, 201, "{good}: {}", answer.1);
    }
    for bad in [
        "/api/v1/orders",
        "ab/cd",
        "abcd+ef",
        "abcd==",
        "YWJjZA",
        "ab.cd",
        "ab cd",
    ] {
        let answer = create(&app, v1("api-gateway", now_ms(), bad, None)).await;
        assert_refused(&answer, 401, "Unauthorized");
        assert_eq!(answer.1["message"], "Invalid service credentials", "{bad}");
    }
}

/// `APP_ENV` defaults to development, where the published development secret is accepted: on
/// an address other hosts can reach, start-up refuses that secret, whatever `APP_ENV` says.
#[sqlx::test(migrations = "../migrations")]
async fn the_development_secret_is_refused_off_loopback(pool: PgPool) {
    order_tests::install_crypto();
    let build = |addr: &str, secret: Option<&str>| {
        let mut s = Settings::for_tests("postgres://unused");
        s.app_env = AppEnv::Development;
        s.http.addr = addr.parse().expect("address");
        s.auth.secret = secret.map(Into::into);
        Application::build_with_pool(s, pool.clone())
    };
    for (addr, secret) in [
        ("0.0.0.0:0", None),
        ("0.0.0.0:0", Some(SECRET)),
        ("[::]:0", None),
    ] {
        let error = build(addr, secret)
            .await
            .expect_err("the development secret off loopback starts");
        let text = format!("{error:#}");
        assert!(
            text.contains("development secret is accepted only on a loopback HTTP_ADDR"),
            "{addr}: {text}"
        );
    }
    // A key of our own on any address, or the development secret on loopback, starts.
    build("0.0.0.0:0", Some("a-key-of-our-own-0123456789abcdef0123"))
        .await
        .expect("own key off loopback");
    build("127.0.0.1:0", None)
        .await
        .expect("development secret on loopback");
}

/// The purge runs on the database's clock while timestamps are checked on each replica's: a
/// nonce whose expiry the database's clock passed a minute ago is still inside the window of a
/// replica whose clock runs two minutes behind, so the purge must keep it (and only drop rows
/// expired for longer than the margin).
#[sqlx::test(migrations = "../migrations")]
async fn the_nonce_purge_keeps_a_margin_for_clock_skew(pool: PgPool) {
    let app = spawn_app(pool).await;
    let nonces = app.state.auth.nonces();
    let now = chrono::Utc::now();
    let a_minute_ago = now - chrono::Duration::minutes(1);
    let long_ago = now - chrono::Duration::hours(1);
    assert!(nonces
        .record("payment-service", "skewed", a_minute_ago)
        .await
        .expect("record"));
    assert!(nonces
        .record("payment-service", "long-gone", long_ago)
        .await
        .expect("record"));
    nonces.purge_expired().await.expect("purge");
    let later = now + chrono::Duration::minutes(5);
    assert!(
        !nonces
            .record("payment-service", "skewed", later)
            .await
            .expect("record"),
        "the purge reopened a replay a lagging replica would accept"
    );
    assert!(
        nonces
            .record("payment-service", "long-gone", later)
            .await
            .expect("record"),
        "rows expired beyond the margin are purged"
    );
}
