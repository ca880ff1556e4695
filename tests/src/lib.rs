//! Test helpers shared by the integration suite: a running application per test on its own
//! fresh database, a client that signs every request like the platform's other services, and
//! builders for common bodies.
//!
//! The signer here is written independently of the server's verifier (straight
//! from docs/contract.md §4), so a bug shared by both cannot hide.
//!
//! Besides this root ([`TestApp`], signing, bodies): [`helpers`] holds the small helpers the
//! integration modules share (NATS URL, projecting, the error body), [`per_event`] the
//! per-event `orders` projector the batched writer is checked against, [`peers`] fake peer
//! services, [`fixtures`] stored-event fixtures, and [`bench`](mod@bench) and [`soak`] the
//! benchmark and reliability harnesses. It must not be a dependency of any service crate.

use std::sync::Once;

use hmac::{Hmac, Mac};
use order_api::config::Settings;
use order_api::startup::{AppState, Application};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;

pub mod bench;
pub mod fixtures;
pub mod helpers;
pub mod peers;
pub mod per_event;
pub mod soak;

/// The development secret every service uses locally (and the vectors use).
pub const SECRET: &str = "dev-internal-secret-change-me";

static CRYPTO: Once = Once::new();

/// Installs the one rustls provider (ring) the workspace uses.
pub fn install_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A running application and what a test needs to talk to it.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub pool: PgPool,
    pub state: AppState,
    pub client: reqwest::Client,
    /// Dropped with the `TestApp` (at the end of the test), it starts the application's
    /// graceful shutdown: its workers release their leader locks, whose connections are not
    /// the pool's, before `#[sqlx::test]` drops the database (which fails while any session is
    /// still connected, leaving the database behind). `None` where the test stops the
    /// application itself.
    pub stop_on_drop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Starts the application on a free port over `pool` (a fresh, migrated database from
/// `#[sqlx::test]`).
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |_| {}).await
}

/// [`spawn_app`] with settings adjusted first.
pub async fn spawn_app_with(pool: PgPool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    install_crypto();
    let mut settings = Settings::for_tests("postgres://unused");
    if let Ok(url) = std::env::var("NATS_URL") {
        settings.nats.url = url.into();
    }
    adjust(&mut settings);
    let app = Application::build_with_pool(settings, pool.clone())
        .await
        .expect("application builds");
    let port = app.port();
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        // An error here is the sender dropped: the test is over.
        let _ = stopped.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        pool,
        state,
        stop_on_drop: Some(stop),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client builds"),
    }
}

/// Current time in milliseconds, as the signing schemes want it.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// hmac-v1 signature over `service:timestamp:nonce:METHOD:url`.
pub fn sign_v1(
    secret: &str,
    service: &str,
    ts: &str,
    nonce: &str,
    method: &str,
    url: &str,
) -> String {
    hmac_hex(secret, &format!("{service}:{ts}:{nonce}:{method}:{url}"))
}

/// hmac-v2 signature over `service:timestamp:url`.
pub fn sign_v2(secret: &str, service: &str, ts: &str, url: &str) -> String {
    hmac_hex(secret, &format!("{service}:{ts}:{url}"))
}

fn hmac_hex(secret: &str, text: &str) -> String {
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
        .expect("any key length works");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A fresh random nonce: 16 bytes in hex.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// How a test request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    V1 {
        service: String,
    },
    V2 {
        service: String,
    },
    /// Raw headers, for attack cases.
    Raw(Vec<(String, String)>),
    None,
}

impl Auth {
    /// hmac-v1 as `service`.
    pub fn v1(service: &str) -> Self {
        Self::V1 {
            service: service.to_owned(),
        }
    }
    /// hmac-v2 as `service`.
    pub fn v2(service: &str) -> Self {
        Self::V2 {
            service: service.to_owned(),
        }
    }
}

/// The hmac-v1 headers for one request.
pub fn v1_headers(service: &str, method: &str, url: &str) -> Vec<(String, String)> {
    let ts = now_ms().to_string();
    let n = nonce();
    let sig = sign_v1(SECRET, service, &ts, &n, method, url);
    vec![
        ("x-service-name".into(), service.into()),
        ("x-request-timestamp".into(), ts),
        ("x-request-nonce".into(), n),
        ("x-internal-auth".into(), sig),
    ]
}

/// The hmac-v2 headers for one request.
pub fn v2_headers(service: &str, url: &str) -> Vec<(String, String)> {
    let ts = now_ms().to_string();
    let sig = sign_v2(SECRET, service, &ts, url);
    vec![
        ("x-internal-service".into(), service.into()),
        ("x-internal-timestamp".into(), ts),
        ("x-internal-signature".into(), sig),
    ]
}

impl TestApp {
    /// Sends a request to `path` (path and query, as signed) with the given auth, extra headers
    /// and JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.address));
        let auth_headers = match auth {
            Auth::V1 { service } => v1_headers(&service, method.as_str(), path),
            Auth::V2 { service } => v2_headers(&service, path),
            Auth::Raw(h) => h,
            Auth::None => vec![],
        };
        for (k, v) in auth_headers {
            req = req.header(k, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.expect("request reaches the app")
    }

    /// A signed POST for tenant `tenant-a`, as the caller the route is open to by default
    /// ([`default_caller`]).
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.post_as(default_caller(path), path, body).await
    }

    /// [`Self::post`] with `Idempotency-Key: key`.
    pub async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> Response {
        self.send(
            Method::POST,
            path,
            Auth::v1(default_caller(path)),
            &[("x-tenant-id", "tenant-a"), ("idempotency-key", key)],
            Some(body),
        )
        .await
    }

    /// A signed POST as `service` for tenant `tenant-a`.
    pub async fn post_as(&self, service: &str, path: &str, body: &Value) -> Response {
        self.send(
            Method::POST,
            path,
            Auth::v1(service),
            &[("x-tenant-id", "tenant-a")],
            Some(body),
        )
        .await
    }

    /// A signed GET as `service`.
    pub async fn get_as(&self, service: &str, path: &str) -> Response {
        self.send(Method::GET, path, Auth::v1(service), &[], None)
            .await
    }

    /// Creates an order from [`order_body`] and returns its JSON `order` object.
    pub async fn create_order(&self) -> Value {
        let resp = self.post("/api/v1/orders", &order_body()).await;
        assert_eq!(resp.status(), 201, "create failed");
        let body: Value = resp.json().await.expect("JSON");
        body["order"].clone()
    }
}

/// The caller a command route is open to by default: payment-service confirms, ticket-service
/// records tickets, api-gateway sends the rest.
pub fn default_caller(path: &str) -> &'static str {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if path.ends_with("/confirm") {
        "payment-service"
    } else if path.ends_with("/tickets") {
        "ticket-service"
    } else {
        "api-gateway"
    }
}

/// A valid create body: two lines (2 × 50.00 and 1 × 75.00) plus fees and tax.
pub fn order_body() -> Value {
    json!({
        "userId": "3c9d2e1f-0a8b-4c7d-9e6f-5a4b3c2d1e0f",
        "eventId": "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b",
        "currency": "USD",
        "items": [
            {"ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e", "quantity": 2, "unitPriceCents": 5000},
            {"ticketTypeId": "8a7f6e5d-4c3b-4a2f-9e1d-0c9b8a7f6e5d", "quantity": 1, "unitPriceCents": 7500}
        ],
        "feesCents": 250,
        "taxCents": 120
    })
}

/// Reads a response as JSON, panicking with the status and text otherwise.
pub async fn json_of(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}
