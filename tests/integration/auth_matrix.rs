//! Service authentication through the running application (docs/contract.md §4): every refusal
//! with its status, and nothing in the body that tells an attacker which check failed.

use order_tests::{
    json_of, nonce, now_ms, order_body, sign_v1, sign_v2, spawn_app, Auth, TestApp, SECRET,
};
use reqwest::Method;
use serde_json::Value;
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
