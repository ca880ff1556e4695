//! Mixed command load over HTTP, signed like a peer service: each worker walks orders through
//! create → reserve → confirm (three in four) or cancel, sending each request to the next
//! replica in turn, so a killed replica only costs the requests that were in flight on it.
//!
//! Every command that got a 2xx is recorded with the order version it answered, which is what
//! the checks hold the store to. Failures are classified, because the scenarios care about how
//! a command failed (a 503 with the JSON error body is the contract during an outage; a 500 is
//! not).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{order_body, v1_headers};

/// A command that got a 2xx: its order and the version it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub order: Uuid,
    pub version: u64,
}

/// Live counters of a load run.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    /// 4xx answers (a lost race is 409; the state machine refuses nothing else in this load).
    pub refused: AtomicU64,
    /// 503 with the normative JSON error body.
    pub unavailable: AtomicU64,
    /// 500 answers.
    pub internal: AtomicU64,
    /// Other 5xx, or a 5xx without the JSON error body.
    pub other_5xx: AtomicU64,
    /// No answer: connection refused or reset (a killed replica), or a timeout.
    pub transport: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ok: u64,
    pub refused: u64,
    pub unavailable: u64,
    pub internal: u64,
    pub other_5xx: u64,
    pub transport: u64,
}

impl Snapshot {
    /// Every request that did not get a 2xx.
    pub fn failed(&self) -> u64 {
        self.refused + self.unavailable + self.internal + self.other_5xx + self.transport
    }

    /// The change from `earlier` to `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            ok: self.ok - earlier.ok,
            refused: self.refused - earlier.refused,
            unavailable: self.unavailable - earlier.unavailable,
            internal: self.internal - earlier.internal,
            other_5xx: self.other_5xx - earlier.other_5xx,
            transport: self.transport - earlier.transport,
        }
    }
}

impl Counters {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Snapshot {
            ok: g(&self.ok),
            refused: g(&self.refused),
            unavailable: g(&self.unavailable),
            internal: g(&self.internal),
            other_5xx: g(&self.other_5xx),
            transport: g(&self.transport),
        }
    }
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    stop: CancellationToken,
    workers: Vec<JoinHandle<Vec<Acked>>>,
    pub counters: Arc<Counters>,
}

/// What a finished load did.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub acked: Vec<Acked>,
    pub totals: Snapshot,
}

/// The HTTP client of the load: per-request timeout above the service's 5 s pool-acquire
/// timeout, so an outage shows as the service's 503 rather than as a client timeout.
pub fn client() -> Client {
    crate::install_crypto();
    Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(32)
        .build()
        .expect("HTTP client builds")
}

enum Answer {
    Ok(Value),
    Failed,
}

/// Sends one signed POST and classifies the answer into `counters`.
pub async fn post(
    client: &Client,
    counters: &Counters,
    base: &str,
    path: &str,
    body: &Value,
) -> Option<Value> {
    match post_inner(client, counters, base, path, body).await {
        Answer::Ok(v) => Some(v),
        Answer::Failed => None,
    }
}

async fn post_inner(
    client: &Client,
    counters: &Counters,
    base: &str,
    path: &str,
    body: &Value,
) -> Answer {
    let mut req = client
        .post(format!("{base}{path}"))
        .header("x-tenant-id", "soak")
        .json(body);
    for (k, v) in v1_headers(crate::default_caller(path), "POST", path) {
        req = req.header(k, v);
    }
    let Ok(resp) = req.send().await else {
        counters.transport.fetch_add(1, Ordering::SeqCst);
        return Answer::Failed;
    };
    let status = resp.status().as_u16();
    let Ok(text) = resp.text().await else {
        counters.transport.fetch_add(1, Ordering::SeqCst);
        return Answer::Failed;
    };
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let counter = match status {
        200..=299 => {
            counters.ok.fetch_add(1, Ordering::SeqCst);
            return parsed.map_or(Answer::Failed, Answer::Ok);
        }
        400..=499 => &counters.refused,
        503 if parsed.as_ref().is_some_and(is_error_body) => &counters.unavailable,
        500 => &counters.internal,
        _ => &counters.other_5xx,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    Answer::Failed
}

/// The normative error body: `{"error", "message", "requestId"}`.
pub fn is_error_body(v: &Value) -> bool {
    ["error", "message", "requestId"]
        .iter()
        .all(|k| v.get(k).is_some_and(Value::is_string))
}

fn answered(answer: &Value) -> Option<(Acked, i64)> {
    let order = &answer["order"];
    let id = Uuid::parse_str(order["id"].as_str()?).ok()?;
    Some((
        Acked {
            order: id,
            version: order["version"].as_u64()?,
        },
        order["totalCents"].as_i64()?,
    ))
}

impl Load {
    /// Starts `workers` workers against `urls` (round robin per request).
    pub fn start(urls: Vec<String>, workers: usize) -> Self {
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let urls = Arc::new(urls);
        let client = client();
        let workers = (0..workers)
            .map(|w| {
                let (stop, counters, urls, client) =
                    (stop.clone(), counters.clone(), urls.clone(), client.clone());
                tokio::spawn(async move { worker(w, &urls, &client, &counters, &stop).await })
            })
            .collect();
        Self {
            stop,
            workers,
            counters,
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// Stops the workers (each finishes the request it is in) and gathers what they recorded.
    pub async fn stop(self) -> LoadResult {
        self.stop.cancel();
        let mut acked = Vec::new();
        for w in self.workers {
            acked.extend(w.await.unwrap_or_default());
        }
        LoadResult {
            acked,
            totals: self.counters.snapshot(),
        }
    }
}

async fn worker(
    index: usize,
    urls: &[String],
    client: &Client,
    counters: &Counters,
    stop: &CancellationToken,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut turn = index;
    let mut next_url = || {
        turn += 1;
        urls[turn % urls.len()].clone()
    };
    let mut flow = 0_u64;
    while !stop.is_cancelled() {
        flow += 1;
        let Some(created) = post(
            client,
            counters,
            &next_url(),
            "/api/v1/orders",
            &order_body(),
        )
        .await
        else {
            // A dead replica or an outage: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some((first, total)) = answered(&created) else {
            continue;
        };
        acked.push(first);
        let id = first.order;
        let last = if flow.is_multiple_of(4) {
            ("cancel", json!({"reason": "soak"}))
        } else {
            (
                "confirm",
                json!({"paymentIntentId": format!("pi_{id}"), "amountCents": total}),
            )
        };
        for (command, body) in [("reserve", json!({})), last] {
            if stop.is_cancelled() {
                break;
            }
            let path = format!("/api/v1/orders/{id}/{command}");
            match post(client, counters, &next_url(), &path, &body).await {
                Some(answer) => {
                    if let Some((a, _)) = answered(&answer) {
                        acked.push(a);
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
            }
        }
    }
    acked
}
