//! The service never logs a secret, a signature or a nonce (docs/contract.md §4), checked on the
//! log output itself rather than on the code that writes it.
//!
//! The test installs a subscriber at `trace` for every crate (far more than production's
//! `info`, so a leak at any level shows) that writes into a buffer, as the thread's default:
//! `#[sqlx::test]` runs a current-thread runtime, so the app's tasks all run on this thread
//! and their events all land in the buffer. It then sends good requests under both schemes,
//! failed ones (bad signature, replay, unknown caller), and one that fails internally (the
//! nonce table dropped), and searches the output for every credential it sent.

use std::io::Write;
use std::sync::{Arc, Mutex};

use order_tests::{nonce, now_ms, order_body, sign_v1, sign_v2, spawn_app_with, Auth, TestApp};
use reqwest::Method;
use sqlx::PgPool;
use tracing_subscriber::fmt::MakeWriter;

/// A secret distinct from the development one, so a hit cannot come from a constant.
const LOG_SECRET: &str = "log-test-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0";

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer")).into_owned()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

type Headers = Vec<(String, String)>;

fn v1(service: &str, method: &str, url: &str) -> Headers {
    let ts = now_ms().to_string();
    let n = nonce();
    let sig = sign_v1(LOG_SECRET, service, &ts, &n, method, url);
    vec![
        ("x-service-name".into(), service.into()),
        ("x-request-timestamp".into(), ts),
        ("x-request-nonce".into(), n),
        ("x-internal-auth".into(), sig),
    ]
}

fn v2(service: &str, url: &str) -> Headers {
    let ts = now_ms().to_string();
    let sig = sign_v2(LOG_SECRET, service, &ts, url);
    vec![
        ("x-internal-service".into(), service.into()),
        ("x-internal-timestamp".into(), ts),
        ("x-internal-signature".into(), sig),
    ]
}

/// Sends the request and remembers its credentials.
async fn call(
    app: &TestApp,
    sent: &mut Vec<String>,
    method: Method,
    path: &str,
    headers: Headers,
    with_body: bool,
) -> u16 {
    for (name, value) in &headers {
        if matches!(
            name.as_str(),
            "x-internal-auth" | "x-internal-signature" | "x-request-nonce"
        ) {
            sent.push(value.clone());
        }
    }
    let body = order_body();
    app.send(
        method,
        path,
        Auth::Raw(headers),
        &[("x-tenant-id", "tenant-a"), ("x-request-id", "log-check")],
        with_body.then_some(&body),
    )
    .await
    .status()
    .as_u16()
}

#[sqlx::test(migrations = "../migrations")]
async fn log_lines_hold_no_secret_signature_or_nonce(pool: PgPool) {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app_with(pool.clone(), |s| {
        s.auth.secret = Some(LOG_SECRET.into());
    })
    .await;
    let create = "/api/v1/orders";
    let mut sent = Vec::new();

    // Good requests under both schemes.
    let h = v1("api-gateway", "POST", create);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        201
    );
    let h = v2("api-gateway", create);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        201
    );

    // Failures: a tampered signature, a replay, an unknown caller, an expired timestamp.
    let mut h = v1("api-gateway", "POST", create);
    let last = if h[3].1.ends_with('0') { '1' } else { '0' };
    h[3].1 = format!("{}{last}", &h[3].1[..63]);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        401
    );
    let h = v2("api-gateway", create);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h.clone(), true).await,
        201
    );
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        401
    );
    let h = v1("evil-service", "POST", create);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        403
    );

    // An internal error on the auth path itself: the nonce store is gone.
    sqlx::query("DROP TABLE auth_nonces")
        .execute(&pool)
        .await
        .expect("drop");
    let h = v1("api-gateway", "POST", create);
    assert_eq!(
        call(&app, &mut sent, Method::POST, create, h, true).await,
        500
    );

    let logs = buffer.text();
    // The capture works: the rejections and the internal error were logged, at debug and
    // error level, with the request id.
    assert!(
        logs.contains("service request rejected"),
        "no rejection was logged; capture broken?\n{logs}"
    );
    assert!(
        logs.contains("request failed with an internal error") && logs.contains("log-check"),
        "the internal error was not logged with its request id\n{logs}"
    );
    assert!(!logs.contains(LOG_SECRET), "a log line holds the secret");
    assert!(
        !logs.contains(order_tests::SECRET),
        "a log line holds the dev secret"
    );
    // A nonce and a signature from each of the four v1 requests, a signature from each of the
    // three v2 requests.
    assert_eq!(sent.len(), 11, "credentials recorded");
    for credential in &sent {
        assert!(
            !logs.contains(credential.as_str()),
            "a log line holds a credential the test sent: {credential}"
        );
    }
}
