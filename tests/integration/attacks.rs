//! The attack matrix: requests an attacker (or a broken peer) can send, each through the real
//! server over real HTTP, each refused with the status docs/contract.md §§3.1 and 4 prescribe, and
//! none answered with a body that leaks anything (no secret, no signature or nonce it was sent,
//! no internal error text, no stack).
//!
//! Two replicas share one database, as in production, so a replay accepted on one and
//! refused on the other proves the nonce store is shared. Connection-level attacks (oversized
//! heads, slowloris on headers and on the body) talk over a raw `TcpStream`, with the header
//! read timeout and the request timeout set short so the test proves the cut-off instead of
//! waiting for production values.
//!
//! All cases run in one test and every result is collected before anything is asserted, so a
//! failure shows the whole table (`--no-capture` prints it on success too).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use order_tests::{nonce, now_ms, order_body, sign_v1, sign_v2, spawn_app_with, TestApp};
use order_tests::{Auth, SECRET};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header read timeout of the apps under attack.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Request timeout of the apps under attack.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a loaded 2-core machine on top of a configured timeout.
const SLACK: Duration = Duration::from_secs(2);

type Headers = Vec<(String, String)>;

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status with the JSON error body (`error`, `message`, `requestId`); with a message
    /// when given.
    Refused(u16, Option<&'static str>),
    /// A success: the control cases that prove the setup would accept a good request.
    Accepted(u16),
    /// hyper refuses before the router: one of these statuses with no JSON body, or the
    /// connection reset before the answer could be read. Either way the server lives on.
    HeadRefused(&'static [u16]),
    /// The connection closed (or a 408) within this long of the first byte.
    CutOff(Duration),
    /// A 200, then the idle keep-alive connection closed within this long of the first byte.
    AnsweredThenClosed(Duration),
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Self::Refused(s, Some(m)) => format!("{s} \"{m}\""),
            Self::Refused(s, None) => format!("{s}"),
            Self::Accepted(s) => format!("{s} (control)"),
            Self::HeadRefused(s) => format!("{s:?} or reset"),
            Self::CutOff(d) => format!("closed ≤ {}ms", d.as_millis()),
            Self::AnsweredThenClosed(d) => format!("200, closed ≤ {}ms", d.as_millis()),
        }
    }
}

/// What a case got.
#[derive(Debug, Default)]
struct Got {
    status: Option<u16>,
    body: String,
    /// The server closed or reset the connection.
    closed: bool,
    elapsed: Duration,
}

impl Got {
    fn describe(&self) -> String {
        let what = match (self.status, self.closed) {
            (Some(s), true) => format!("{s}, closed"),
            (Some(s), false) => format!("{s}"),
            (None, true) => "closed, no answer".to_owned(),
            (None, false) => "no answer".to_owned(),
        };
        format!("{what} in {}ms", self.elapsed.as_millis())
    }
}

struct Row {
    case: &'static str,
    expected: String,
    got: String,
    failure: Option<String>,
}

/// Text that must never be in an answer: internal error text and stack traces.
const INTERNAL_MARKERS: [&str; 12] = [
    "sqlx",
    "database",
    "postgres",
    "relation",
    "panicked",
    "backtrace",
    "stack",
    ".rs:",
    "src/",
    "hmac",
    "anyhow",
    "Caused by",
];

#[derive(Default)]
struct Matrix {
    rows: Vec<Row>,
}

impl Matrix {
    /// Records one case. `sent` holds the credentials the request carried (signatures and
    /// nonces); none may come back in the body.
    fn check(&mut self, case: &'static str, expect: Expect, got: &Got, sent: &[String]) {
        let failure = verdict(&expect, got, sent).err();
        self.rows.push(Row {
            case,
            expected: expect.describe(),
            got: got.describe(),
            failure,
        });
    }

    fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:<26} {:<26} result",
            "case", "expected", "got"
        );
        for r in &self.rows {
            let result = r.failure.as_deref().unwrap_or("ok");
            let _ = writeln!(
                out,
                "{:<34} {:<26} {:<26} {result}",
                r.case, r.expected, r.got
            );
        }
        out
    }
}

fn verdict(expect: &Expect, got: &Got, sent: &[String]) -> Result<(), String> {
    let lower = got.body.to_lowercase();
    if got.body.contains(SECRET) {
        return Err("body holds the secret".into());
    }
    if let Some(s) = sent
        .iter()
        .find(|s| s.len() >= 8 && got.body.contains(s.as_str()))
    {
        return Err(format!("body echoes a credential it was sent: {s}"));
    }
    // A control's body is an order, free text included; the markers apply to refusals.
    let refusal = !matches!(expect, Expect::Accepted(_));
    if let Some(m) = INTERNAL_MARKERS
        .iter()
        .find(|m| refusal && lower.contains(&m.to_lowercase()))
    {
        return Err(format!("body holds internal text `{m}`: {}", got.body));
    }
    match *expect {
        Expect::Accepted(status) => {
            if got.status != Some(status) {
                return Err(format!("wanted {status}: {}", got.body));
            }
        }
        Expect::Refused(status, message) => {
            if got.status != Some(status) {
                return Err(format!("wanted {status}: {}", got.body));
            }
            error_body(&got.body, status, message)?;
        }
        Expect::HeadRefused(statuses) => match got.status {
            Some(s) if statuses.contains(&s) => {
                if !got.body.is_empty() && serde_json::from_str::<Value>(&got.body).is_err() {
                    return Err(format!("unexpected body: {}", got.body));
                }
            }
            None if got.closed => {}
            _ => return Err(format!("neither {statuses:?} nor a reset")),
        },
        Expect::AnsweredThenClosed(within) => {
            if got.status != Some(200) || !got.closed || got.elapsed > within {
                return Err("the idle connection stayed open".into());
            }
        }
        Expect::CutOff(within) => {
            if got.elapsed > within {
                return Err(format!("kept open {}ms", got.elapsed.as_millis()));
            }
            match got.status {
                None if got.closed => {}
                Some(408) => error_body(&got.body, 408, None)?,
                _ => return Err("not cut off".into()),
            }
        }
    }
    Ok(())
}

/// The normative error body, exactly: `{"error", "message", "requestId"}`.
fn error_body(body: &str, status: u16, message: Option<&str>) -> Result<(), String> {
    let v: Value = serde_json::from_str(body).map_err(|_| format!("not JSON: {body}"))?;
    let Some(obj) = v.as_object() else {
        return Err(format!("not an object: {body}"));
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["error", "message", "requestId"] {
        return Err(format!("keys {keys:?}"));
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default();
    if v["error"] != reason {
        return Err(format!("error is {} not {reason}", v["error"]));
    }
    if let Some(m) = message {
        if v["message"] != m {
            return Err(format!("message is {}", v["message"]));
        }
    }
    Ok(())
}

// ---- requests -------------------------------------------------------------------------------

fn v1_signed(service: &str, ts: i64, nonce: &str, method: &str, url: &str) -> Headers {
    let ts = ts.to_string();
    let sig = sign_v1(SECRET, service, &ts, nonce, method, url);
    vec![
        ("x-service-name".into(), service.into()),
        ("x-request-timestamp".into(), ts),
        ("x-request-nonce".into(), nonce.into()),
        ("x-internal-auth".into(), sig),
    ]
}

fn v2_signed(service: &str, ts: i64, url: &str) -> Headers {
    let ts = ts.to_string();
    let sig = sign_v2(SECRET, service, &ts, url);
    vec![
        ("x-internal-service".into(), service.into()),
        ("x-internal-timestamp".into(), ts),
        ("x-internal-signature".into(), sig),
    ]
}

/// `headers` with `name` set to `value` (added when missing).
fn with(mut headers: Headers, name: &str, value: &str) -> Headers {
    headers.retain(|(k, _)| k != name);
    headers.push((name.to_owned(), value.to_owned()));
    headers
}

fn without(mut headers: Headers, name: &str) -> Headers {
    headers.retain(|(k, _)| k != name);
    headers
}

fn value_of(headers: &Headers, name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The credentials in `headers`, for the leak check.
fn credentials(headers: &Headers) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "x-internal-auth" | "x-internal-signature" | "x-request-nonce"
            )
        })
        .map(|(_, v)| v.clone())
        .collect()
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: Headers,
    tenant: Option<&str>,
    body: Option<&Value>,
) -> Got {
    let extra: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant-id", t)).into_iter().collect();
    let started = Instant::now();
    let response = app
        .send(method, path, Auth::Raw(headers), &extra, body)
        .await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Got {
        status: Some(status),
        body,
        closed: false,
        elapsed: started.elapsed(),
    }
}

/// Writes `head` (and `body`) on a fresh connection, then reads until the server answers and
/// closes, or `patience` runs out. A write the server cut short counts as closed.
async fn raw(app: &TestApp, head: &[u8], body: &[u8], patience: Duration) -> Got {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let mut got = Got::default();
    if stream.write_all(head).await.is_err() || stream.write_all(body).await.is_err() {
        got.closed = true;
    }
    read_answer(&mut stream, &mut got, started, patience).await;
    got
}

/// Reads what the server sends until it closes or `patience` (from `started`) runs out.
async fn read_answer(stream: &mut TcpStream, got: &mut Got, started: Instant, patience: Duration) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = patience.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                got.closed = true;
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    got.elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    got.status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    if let Some((_, body)) = text.split_once("\r\n\r\n") {
        got.body = body.to_owned();
    }
}

/// A request head with the given headers, `Connection: close`.
fn head(method: &str, path: &str, headers: &[(String, String)], extra: &str) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    h.push_str(extra);
    h.push_str("\r\n");
    h.into_bytes()
}

/// Slowloris on the head: sends `start`, then one more byte every 250 ms, and stops when the
/// server closes (or after 15 s, a failure).
async fn dribble(app: &TestApp, start: &[u8]) -> Got {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let mut got = Got::default();
    if stream.write_all(start).await.is_err() {
        got.closed = true;
    }
    let mut buf = [0u8; 4096];
    let mut answer = Vec::new();
    while !got.closed && started.elapsed() < Duration::from_secs(15) {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => got.closed = true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if stream.write_all(b"a").await.is_err() {
                    got.closed = true;
                }
            }
        }
    }
    got.elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    got.status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    if let Some((_, body)) = text.split_once("\r\n\r\n") {
        got.body = body.to_owned();
    }
    got
}

async fn app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |s| {
        s.http.header_read_timeout_secs = HEADER_TIMEOUT.as_secs();
        s.http.request_timeout_secs = REQUEST_TIMEOUT.as_secs();
    })
    .await
}

/// Waits until the projector shows `order` to its own tenant, so that a 404 for another tenant
/// cannot come from a read model that is merely behind.
async fn visible_to_owner(app: &TestApp, order: &str) {
    let path = format!("/internal/orders/{order}");
    for _ in 0..100 {
        let got = send(
            app,
            Method::GET,
            &path,
            v1_signed("payment-service", now_ms(), &nonce(), "GET", &path),
            Some("tenant-a"),
            None,
        )
        .await;
        if got.status == Some(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {order} never reached the read model");
}

#[sqlx::test(migrations = "../migrations")]
async fn attack_matrix(pool: PgPool) {
    // Replica B gets its own pool on the same database: nothing but Postgres is shared.
    let pool_b = PgPool::connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("second pool");
    let a = app(pool).await;
    let b = app(pool_b).await;
    let order = a.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let other_order = a.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    visible_to_owner(&a, &order).await;

    let events = format!("/api/v1/orders/{order}/events");
    let read = format!("/internal/orders/{order}");
    let cancel = format!("/api/v1/orders/{order}/cancel");
    let mut m = Matrix::default();

    // -- controls: the setup accepts a good request under each scheme --------------------
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check(
        "control_v1_accepted",
        Expect::Accepted(200),
        &got,
        &credentials(&h),
    );
    let h = v2_signed("payment-service", now_ms(), &read);
    let got = send(&b, Method::GET, &read, h.clone(), Some("tenant-a"), None).await;
    m.check(
        "control_v2_accepted",
        Expect::Accepted(200),
        &got,
        &credentials(&h),
    );

    // -- the signature binds method, path, query, timestamp and service --------------------
    let generic = Expect::Refused(401, Some("Invalid service credentials"));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", &events);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("tampered_method", generic, &got, &credentials(&h));

    let signed = format!("/api/v1/orders/{other_order}/events");
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &signed);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("tampered_path", generic, &got, &credentials(&h));

    let h = v2_signed(
        "payment-service",
        now_ms(),
        "/internal/orders/without-tickets?limit=5",
    );
    let got = send(
        &a,
        Method::GET,
        "/internal/orders/without-tickets?limit=500",
        h.clone(),
        None,
        None,
    )
    .await;
    m.check("tampered_query", generic, &got, &credentials(&h));

    let ts = now_ms();
    let h = v1_signed("api-gateway", ts, &nonce(), "GET", &events);
    let h = with(h, "x-request-timestamp", &(ts + 1).to_string());
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("tampered_timestamp", generic, &got, &credentials(&h));

    let h = v1_signed("payment-service", now_ms(), &nonce(), "GET", &events);
    let h = with(h, "x-service-name", "api-gateway");
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("tampered_service_name", generic, &got, &credentials(&h));

    // -- replays, on one replica and across two sharing the database ------------------------
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let first = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check(
        "replay_v1_first_use",
        Expect::Accepted(200),
        &first,
        &credentials(&h),
    );
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("replay_v1_same_replica", generic, &got, &credentials(&h));

    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let first = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check(
        "replay_v1_accepted_on_a",
        Expect::Accepted(200),
        &first,
        &credentials(&h),
    );
    let got = send(&b, Method::GET, &events, h.clone(), None, None).await;
    m.check("replay_v1_across_replicas", generic, &got, &credentials(&h));

    let h = v2_signed("payment-service", now_ms(), &read);
    let first = send(&b, Method::GET, &read, h.clone(), None, None).await;
    m.check(
        "replay_v2_accepted_on_b",
        Expect::Accepted(200),
        &first,
        &credentials(&h),
    );
    let got = send(&a, Method::GET, &read, h.clone(), None, None).await;
    m.check("replay_v2_across_replicas", generic, &got, &credentials(&h));
    let upper = value_of(&h, "x-internal-signature").to_uppercase();
    let got = send(
        &b,
        Method::GET,
        &read,
        with(h.clone(), "x-internal-signature", &upper),
        None,
        None,
    )
    .await;
    m.check(
        "replay_v2_uppercased",
        generic,
        &got,
        std::slice::from_ref(&upper),
    );

    // Neither scheme signs the body (docs/contract.md §4), so what stops a tampered body is that
    // its captured credentials are single-use: a changed body under used credentials fails.
    let create = "/api/v1/orders";
    let h = v2_signed("api-gateway", now_ms(), create);
    let first = send(
        &a,
        Method::POST,
        create,
        h.clone(),
        Some("tenant-a"),
        Some(&order_body()),
    )
    .await;
    m.check(
        "tampered_body_first_use",
        Expect::Accepted(201),
        &first,
        &credentials(&h),
    );
    let mut tampered = order_body();
    tampered["items"][0]["unitPriceCents"] = json!(1);
    let got = send(
        &b,
        Method::POST,
        create,
        h.clone(),
        Some("tenant-a"),
        Some(&tampered),
    )
    .await;
    m.check("tampered_body_replayed", generic, &got, &credentials(&h));

    // -- the time window --------------------------------------------------------------------
    let expired = Expect::Refused(401, Some("Request timestamp expired"));
    let h = v1_signed(
        "api-gateway",
        now_ms() - 6 * 60_000,
        &nonce(),
        "GET",
        &events,
    );
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("stale_timestamp", expired, &got, &credentials(&h));
    let h = v2_signed("api-gateway", now_ms() + 6 * 60_000, &events);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("future_timestamp", expired, &got, &credentials(&h));

    // -- callers and tenants ----------------------------------------------------------------
    let forbidden = Expect::Refused(403, Some("Service not authorized"));
    let h = v1_signed("evil-service", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("unknown_caller", forbidden, &got, &credentials(&h));
    let h = v1_signed("blockchain-service", now_ms(), &nonce(), "GET", &read);
    let got = send(&a, Method::GET, &read, h.clone(), None, None).await;
    m.check("wrong_route_for_caller", forbidden, &got, &credentials(&h));

    let h = v1_signed("payment-service", now_ms(), &nonce(), "GET", &read);
    let got = send(&a, Method::GET, &read, h.clone(), Some("tenant-b"), None).await;
    m.check(
        "cross_tenant_read",
        Expect::Refused(404, None),
        &got,
        &credentials(&h),
    );
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), Some("tenant-b"), None).await;
    m.check(
        "cross_tenant_history",
        Expect::Refused(404, None),
        &got,
        &credentials(&h),
    );
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", &cancel);
    let got = send(
        &a,
        Method::POST,
        &cancel,
        h.clone(),
        Some("tenant-b"),
        Some(&json!({"reason": "not yours"})),
    )
    .await;
    m.check(
        "cross_tenant_command",
        Expect::Refused(404, None),
        &got,
        &credentials(&h),
    );

    // -- bypass values and malformed credentials --------------------------------------------
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-auth", "temp-signature"),
        None,
        None,
    )
    .await;
    m.check("bypass_temp_signature_v1", generic, &got, &credentials(&h));
    let h = v2_signed("api-gateway", now_ms(), &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-signature", "temp-signature"),
        None,
        None,
    )
    .await;
    m.check("bypass_temp_signature_v2", generic, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-auth", ""),
        None,
        None,
    )
    .await;
    m.check("empty_signature", generic, &got, &credentials(&h));
    let got = send(&a, Method::GET, &events, vec![], None, None).await;
    m.check("missing_all_headers", generic, &got, &[]);
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        without(h.clone(), "x-request-nonce"),
        None,
        None,
    )
    .await;
    m.check("missing_nonce", generic, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let sig = value_of(&h, "x-internal-auth");
    let bad_hex = format!("{}zz", &sig[..62]);
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-auth", &bad_hex),
        None,
        None,
    )
    .await;
    m.check("malformed_signature_hex", generic, &got, &credentials(&h));
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-auth", &sig[..63]),
        None,
        None,
    )
    .await;
    m.check("short_signature", generic, &got, &credentials(&h));
    let long = format!("{sig}00");
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-internal-auth", &long),
        None,
        None,
    )
    .await;
    m.check("long_signature", generic, &got, &credentials(&h));
    let mut twice = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    twice.push(("x-service-name".into(), "payment-service".into()));
    let got = send(&a, Method::GET, &events, twice.clone(), None, None).await;
    m.check(
        "duplicated_service_header",
        generic,
        &got,
        &credentials(&twice),
    );
    // A `:` in the nonce would let fields shift in the signed text; it is refused outright.
    let h = v1_signed("api-gateway", now_ms(), "n1:GET", "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), None, None).await;
    m.check("nonce_with_separator", generic, &got, &credentials(&h));

    // -- oversized input ----------------------------------------------------------------------
    let pad = "a".repeat(64 * 1024);
    let got = raw(
        &a,
        &head("GET", "/health/live", &[], &format!("X-Pad: {pad}\r\n")),
        b"",
        SLACK,
    )
    .await;
    m.check(
        "oversized_header_64k",
        Expect::HeadRefused(&[431]),
        &got,
        &[],
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let got = raw(&a, &head("GET", "/health/live", &[], &many), b"", SLACK).await;
    m.check("too_many_headers", Expect::HeadRefused(&[431]), &got, &[]);

    let mut big = order_body();
    big["userId"] = json!("u".repeat(70 * 1024));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", create);
    let got = send(
        &a,
        Method::POST,
        create,
        h.clone(),
        Some("tenant-a"),
        Some(&big),
    )
    .await;
    m.check(
        "oversized_body",
        Expect::Refused(413, None),
        &got,
        &credentials(&h),
    );

    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", create);
    let declared = head(
        "POST",
        create,
        &h,
        "X-Tenant-ID: tenant-a\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n",
    );
    let got = raw(&a, &declared, b"{", SLACK).await;
    m.check(
        "oversized_body_declared",
        Expect::Refused(413, None),
        &got,
        &credentials(&h),
    );

    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", create);
    let chunked = head(
        "POST",
        create,
        &h,
        "X-Tenant-ID: tenant-a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    let mut body = Vec::new();
    for _ in 0..20 {
        body.extend_from_slice(format!("1000\r\n{}\r\n", " ".repeat(0x1000)).as_bytes());
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let got = raw(&a, &chunked, &body, REQUEST_TIMEOUT + SLACK).await;
    m.check(
        "oversized_body_chunked",
        Expect::Refused(413, None),
        &got,
        &credentials(&h),
    );

    // -- slow clients ---------------------------------------------------------------------------
    let cut_off = Expect::CutOff(HEADER_TIMEOUT + SLACK);
    let got = dribble(
        &a,
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    )
    .await;
    m.check("slowloris_headers", cut_off, &got, &[]);
    let got = raw(&a, b"", b"", Duration::from_secs(10)).await;
    m.check("slowloris_idle_connection", cut_off, &got, &[]);

    // After one answer, a keep-alive connection waits for the next head under the same timer.
    let keep_alive = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let got = raw(&a, keep_alive, b"", Duration::from_secs(10)).await;
    m.check(
        "idle_keep_alive_connection",
        Expect::AnsweredThenClosed(HEADER_TIMEOUT + SLACK),
        &got,
        &[],
    );

    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", create);
    let slow_body = head(
        "POST",
        create,
        &h,
        "X-Tenant-ID: tenant-a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n",
    );
    let got = raw(&a, &slow_body, b"{\"userId\":", Duration::from_secs(10)).await;
    m.check(
        "slowloris_body",
        Expect::CutOff(REQUEST_TIMEOUT + SLACK),
        &got,
        &credentials(&h),
    );

    // -- the server survived all of it, on both replicas ------------------------------------------
    for (case, replica) in [("alive_after_attacks_a", &a), ("alive_after_attacks_b", &b)] {
        let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
        let got = send(replica, Method::GET, &events, h.clone(), None, None).await;
        m.check(case, Expect::Accepted(200), &got, &credentials(&h));
    }
    // No cross-tenant or tampered request changed the order: it is still pending, unreserved.
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h, None, None).await;
    let history: Value = serde_json::from_str(&got.body).expect("history");
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();

    // Replica B's own pool would keep the test database busy when it is dropped.
    b.pool.close().await;

    let report = m.report();
    println!("{report}");
    let failures: Vec<&Row> = m.rows.iter().filter(|r| r.failure.is_some()).collect();
    assert!(failures.is_empty(), "attack matrix failures:\n{report}");
    assert!(
        m.rows.len() >= 20,
        "the matrix shrank to {} cases",
        m.rows.len()
    );
    assert_eq!(types, ["OrderCreated"], "an attack changed the order");
}

/// The answer to a present but invalid `X-Tenant-ID`.
const TENANT_REFUSED: &str = "X-Tenant-ID must be sent once, as 1 to 128 visible ASCII characters";

/// A present `X-Tenant-ID` is one valid value or the request is refused. Read as "no tenant", a
/// malformed value would lift the tenant scoping: with a 300-character value a caller could
/// read and cancel another tenant's order.
#[sqlx::test(migrations = "../migrations")]
async fn a_malformed_tenant_id_is_refused_never_read_as_no_tenant(pool: PgPool) {
    let a = app(pool).await;
    let order = a.create_order().await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    visible_to_owner(&a, &order).await;
    let events = format!("/api/v1/orders/{order}/events");
    let read = format!("/internal/orders/{order}");
    let cancel = format!("/api/v1/orders/{order}/cancel");
    let refused = Expect::Refused(400, Some(TENANT_REFUSED));
    let long = "t".repeat(300);
    let mut m = Matrix::default();

    // The attack: another tenant's order, read and cancelled with an over-long tenant.
    let h = v1_signed("payment-service", now_ms(), &nonce(), "GET", &read);
    let got = send(&a, Method::GET, &read, h.clone(), Some(&long), None).await;
    m.check("tenant_300_chars_read", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), Some(&long), None).await;
    m.check("tenant_300_chars_history", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", &cancel);
    let got = send(
        &a,
        Method::POST,
        &cancel,
        h.clone(),
        Some(&long),
        Some(&json!({"reason": "not yours"})),
    )
    .await;
    m.check("tenant_300_chars_cancel", refused, &got, &credentials(&h));

    // Each other malformed shape, on the history.
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), Some(""), None).await;
    m.check("tenant_blank", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), Some("tenant a"), None).await;
    m.check("tenant_inner_space", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = raw(
        &a,
        &head("GET", &events, &h, "X-Tenant-ID: t\u{e9}nant-a\r\n"),
        b"",
        SLACK,
    )
    .await;
    m.check("tenant_non_ascii", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        with(h.clone(), "x-tenant-id", "tenant-b"),
        Some("tenant-a"),
        None,
    )
    .await;
    m.check("tenant_sent_twice", refused, &got, &credentials(&h));
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "POST", "/api/v1/orders");
    let got = send(
        &a,
        Method::POST,
        "/api/v1/orders",
        h.clone(),
        Some(&long),
        Some(&order_body()),
    )
    .await;
    m.check("tenant_300_chars_create", refused, &got, &credentials(&h));

    // Controls: the longest valid tenant is another tenant (404), the owner sees its order.
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(
        &a,
        Method::GET,
        &events,
        h.clone(),
        Some(&long[..128]),
        None,
    )
    .await;
    m.check(
        "tenant_128_chars_is_another_tenant",
        Expect::Refused(404, None),
        &got,
        &credentials(&h),
    );
    let h = v1_signed("api-gateway", now_ms(), &nonce(), "GET", &events);
    let got = send(&a, Method::GET, &events, h.clone(), Some("tenant-a"), None).await;
    m.check(
        "tenant_owner_reads",
        Expect::Accepted(200),
        &got,
        &credentials(&h),
    );
    let history: Value = serde_json::from_str(&got.body).unwrap_or_default();
    let types: Vec<&str> = history["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();

    let report = m.report();
    println!("{report}");
    assert!(
        m.rows.iter().all(|r| r.failure.is_none()),
        "tenant header failures:\n{report}"
    );
    assert_eq!(
        types,
        ["OrderCreated"],
        "a malformed tenant changed the order"
    );
}
