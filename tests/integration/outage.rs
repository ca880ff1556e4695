//! A database outage under mixed load: Postgres (a private server, as in the R3 soak scenario)
//! is stopped while commands, signed by-id reads and `minVersion` reads are in flight. Every
//! request must be answered within the request's database deadline plus a small margin, and
//! every answer must be a success or the contract's 503: the JSON error body with
//! `Retry-After` (or, for a `minVersion` beyond the order's version, the contract's 409). Never
//! a hang, never a dropped connection, never another error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use order_tests::soak::procs::PrivatePostgres;
use order_tests::{default_caller, order_body, spawn_app, v1_headers, TestApp};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Scheduling, the HTTP round trip and the error answer itself, on a busy test machine.
const MARGIN: Duration = Duration::from_secs(1);

/// Long enough that requests queue behind others that are already waiting on the database.
const OUTAGE: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Read,
    MinVersionRead,
}

#[derive(Debug)]
enum Outcome {
    Ok,
    /// 503 with the JSON error body and Retry-After.
    Unavailable,
    /// Anything else: another status, a 503 without the body or the header.
    Other(u16, String),
    /// No answer: a timeout or a dropped connection.
    NoAnswer(String),
}

#[derive(Debug)]
struct Sent {
    kind: Kind,
    what: String,
    took: Duration,
    outcome: Outcome,
}

impl Sent {
    fn describe(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Ok => "2xx".to_owned(),
            Outcome::Unavailable => "503 with the error body and Retry-After".to_owned(),
            Outcome::Other(status, body) => format!("{status} {body}"),
            Outcome::NoAnswer(error) => format!("no answer: {error}"),
        };
        format!("{} after {:?}: {outcome}", self.what, self.took)
    }
}

type Log = Arc<Mutex<Vec<Sent>>>;

struct Load {
    client: Client,
    base: String,
    log: Log,
}

impl Load {
    /// Sends one signed request, records how it went, and returns the JSON body of a 2xx.
    async fn send(
        &self,
        kind: Kind,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<Value> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-tenant-id", "tenant-a");
        let service = if kind == Kind::Command {
            default_caller(path)
        } else {
            "payment-service"
        };
        for (k, v) in v1_headers(service, method.as_str(), path) {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = Instant::now();
        let answered = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                match resp.text().await {
                    Ok(text) => Ok((status, retry_after, text)),
                    Err(e) => Err(format!("{e:?}")),
                }
            }
            Err(e) => Err(format!("{e:?}")),
        };
        let took = started.elapsed();
        let (outcome, value) = match answered {
            Err(e) => (Outcome::NoAnswer(e), None),
            Ok((status, retry_after, text)) => {
                let parsed: Option<Value> = serde_json::from_str(&text).ok();
                match status {
                    200..=299 => (Outcome::Ok, parsed),
                    // A version beyond the event store's is 409 at once (docs/contract.md §3.2);
                    // deciding that reads the database too, so it is timed like the rest.
                    409 if kind == Kind::MinVersionRead
                        && parsed.as_ref().is_some_and(is_error_body) =>
                    {
                        (Outcome::Ok, None)
                    }
                    503 if retry_after && parsed.as_ref().is_some_and(is_error_body) => {
                        (Outcome::Unavailable, None)
                    }
                    _ => (Outcome::Other(status, text), None),
                }
            }
        };
        self.log.lock().unwrap().push(Sent {
            kind,
            what: format!("{method} {path}"),
            took,
            outcome,
        });
        value
    }
}

/// The contract's error body: `{"error", "message", "requestId"}`, all strings.
fn is_error_body(v: &Value) -> bool {
    ["error", "message", "requestId"]
        .iter()
        .all(|k| v.get(k).is_some_and(Value::is_string))
}

fn version_of(answer: &Value) -> Option<(String, u64)> {
    let order = &answer["order"];
    Some((order["id"].as_str()?.to_owned(), order["version"].as_u64()?))
}

/// create → reserve → confirm, over and over.
async fn commands(load: Arc<Load>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Some(created) = load
            .send(
                Kind::Command,
                Method::POST,
                "/api/v1/orders",
                Some(&order_body()),
            )
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some((id, _)) = version_of(&created) else {
            continue;
        };
        let total = created["order"]["totalCents"].as_i64().unwrap_or_default();
        let steps = [
            ("reserve", json!({})),
            (
                "confirm",
                json!({"paymentIntentId": format!("pi_{id}"), "amountCents": total}),
            ),
        ];
        for (command, body) in steps {
            let path = format!("/api/v1/orders/{id}/{command}");
            if load
                .send(Kind::Command, Method::POST, &path, Some(&body))
                .await
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
        }
    }
}

/// Signed by-id reads of the seeded orders; with `min_version`, at the version each was seeded
/// at (satisfied at once while the database is up) or one beyond (which the event store does
/// not hold either: 409 once the store is asked, 503 when it cannot be).
async fn reads(
    load: Arc<Load>,
    seeded: Arc<Vec<(String, u64)>>,
    kind: Kind,
    stop: CancellationToken,
) {
    let mut turn = 0_usize;
    while !stop.is_cancelled() {
        turn += 1;
        let (id, version) = &seeded[turn % seeded.len()];
        let path = match kind {
            Kind::MinVersionRead => {
                format!(
                    "/internal/orders/{id}?minVersion={}",
                    version + (turn % 2) as u64
                )
            }
            _ => format!("/internal/orders/{id}"),
        };
        if load.send(kind, Method::GET, &path, None).await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start_app(pg: &PrivatePostgres) -> TestApp {
    let url = pg.url("postgres");
    order_api::db::create_and_migrate(&url)
        .await
        .expect("the private database migrates");
    // The service's own pool, with its acquire timeout.
    let pool = order_api::db::pool(&url, 16).expect("pool");
    spawn_app(pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_answers_every_request_in_time_with_a_success_or_the_contracts_503() {
    let mut pg = PrivatePostgres::start().expect("a private Postgres starts");
    let app = start_app(&pg).await;
    // The default: what a deployment that sets nothing gets.
    let deadline = app.state.settings.http.request_db_deadline();
    let load = Arc::new(Load {
        client: Client::builder()
            // Well past the deadline: a request that hangs is measured, not cut short.
            .timeout(deadline * 4)
            .build()
            .expect("client"),
        base: app.address.clone(),
        log: Log::default(),
    });

    // Orders to read, each in the read model at the version its last command answered.
    let mut seeded = Vec::new();
    for _ in 0..4 {
        let created = load
            .send(
                Kind::Command,
                Method::POST,
                "/api/v1/orders",
                Some(&order_body()),
            )
            .await
            .expect("create before the outage");
        let (id, version) = version_of(&created).expect("order");
        let path = format!("/internal/orders/{id}?minVersion={version}");
        load.send(Kind::MinVersionRead, Method::GET, &path, None)
            .await
            .expect("the read model has the seeded order");
        seeded.push((id, version));
    }
    let seeded = Arc::new(seeded);

    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(tokio::spawn(commands(load.clone(), stop.clone())));
        for kind in [Kind::Read, Kind::MinVersionRead] {
            workers.push(tokio::spawn(reads(
                load.clone(),
                seeded.clone(),
                kind,
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop("fast").expect("Postgres stops");
    tokio::time::sleep(OUTAGE).await;
    pg.restart().expect("Postgres starts again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for w in workers {
        w.await.expect("worker");
    }

    let log = std::mem::take(&mut *load.log.lock().unwrap());
    let bound = deadline + MARGIN;
    let mut bad: Vec<&Sent> = log
        .iter()
        .filter(|s| {
            s.took > bound || matches!(s.outcome, Outcome::Other(..) | Outcome::NoAnswer(_))
        })
        .collect();
    bad.sort_by_key(|s| std::cmp::Reverse(s.took));
    let slowest = log.iter().map(|s| s.took).max().unwrap_or_default();
    let count = |kind: Kind, unavailable: bool| {
        log.iter()
            .filter(|s| s.kind == kind && matches!(s.outcome, Outcome::Unavailable) == unavailable)
            .count()
    };
    println!(
        "outage: {} requests, slowest {slowest:?}; 503/other per kind: commands {}/{}, reads {}/{}, \
         minVersion reads {}/{}; {} over {bound:?} or not the contract's answer",
        log.len(),
        count(Kind::Command, true),
        count(Kind::Command, false),
        count(Kind::Read, true),
        count(Kind::Read, false),
        count(Kind::MinVersionRead, true),
        count(Kind::MinVersionRead, false),
        bad.len(),
    );
    assert!(
        bad.is_empty(),
        "{} of {} requests answered late (over {bound:?}) or not with a success or the \
         contract's 503; the worst:\n{}",
        bad.len(),
        log.len(),
        bad.iter()
            .take(10)
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for kind in [Kind::Command, Kind::Read, Kind::MinVersionRead] {
        assert!(
            count(kind, true) > 0,
            "no {kind:?} was in flight during the outage (no 503)"
        );
    }
    // And the service recovered without a restart.
    let created = load
        .send(
            Kind::Command,
            Method::POST,
            "/api/v1/orders",
            Some(&order_body()),
        )
        .await;
    assert!(created.is_some(), "no command succeeded after the restart");
}
