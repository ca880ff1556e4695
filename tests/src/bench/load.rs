//! The load generator: real HTTP requests, each signed with hmac-v1 like a peer service.
//!
//! Closed loop (each client sends its next request when the last one answered) measures
//! throughput. Open loop (requests start on a fixed schedule, whatever the answers) measures
//! latency without coordinated omission: a request's latency counts from when it was due, so a
//! stall shows up in every request it delayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::Value;

use super::stats::Latencies;
use crate::{v1_headers, v2_headers};

/// One request the generator can send.
#[derive(Debug, Clone)]
pub struct Target {
    pub method: Method,
    /// Path and query, as signed.
    pub path: String,
    pub body: Option<Value>,
    /// `None`: unsigned (a baseline route).
    pub signed_as: Option<String>,
    pub tenant: Option<String>,
    /// Sign with hmac-v2 instead of v1.
    pub v2: bool,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadRun {
    pub ok: u64,
    pub errors: u64,
    pub per_second: f64,
    pub latencies: Latencies,
    /// Open loop only: how late each send was against its schedule.
    pub schedule_lag: Latencies,
}

async fn send(client: &Client, base: &str, t: &Target) -> bool {
    let mut req = client.request(t.method.clone(), format!("{base}{}", t.path));
    if let Some(service) = &t.signed_as {
        let headers = if t.v2 {
            v2_headers(service, &t.path)
        } else {
            v1_headers(service, t.method.as_str(), &t.path)
        };
        for (k, v) in headers {
            req = req.header(k, v);
        }
    }
    if let Some(tenant) = &t.tenant {
        req = req.header("x-tenant-id", tenant);
    }
    if let Some(b) = &t.body {
        req = req.json(b);
    }
    match req.send().await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let _ = resp.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

/// Runs `clients` closed-loop clients for `duration`, each sending `make(i)` in turn.
pub async fn closed_loop(
    base: &str,
    clients: usize,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> Target + Send + Sync>,
) -> LoadRun {
    let client = http_client(clients);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let base = base.to_owned();
            let make = make.clone();
            tokio::spawn(async move {
                let mut run = LoadRun::default();
                let mut i = c as u64;
                while Instant::now() < deadline {
                    let t = make(i);
                    i += clients as u64;
                    let t0 = Instant::now();
                    if send(&client, &base, &t).await {
                        run.ok += 1;
                        run.latencies.record(t0.elapsed());
                    } else {
                        run.errors += 1;
                    }
                }
                run
            })
        })
        .collect();
    let mut total = LoadRun::default();
    for t in tasks {
        let r = t.await.unwrap_or_default();
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies.merge(&r.latencies);
    }
    total.per_second = total.ok as f64 / started.elapsed().as_secs_f64();
    total
}

/// Sends `rate` requests per second on a fixed schedule for `duration`, each from its own
/// task, so that a slow answer never delays the next send (no coordinated omission).
///
/// Latency counts from the moment the task sends, not from the scheduled time: tokio's timer
/// has a 1 ms granularity and on a loaded 2-core machine fires up to a few ms late, which the
/// first version of this bench charged to the service (an unsigned no-op route measured 2 ms
/// at p50 that way, against 0.1 ms sent back to back). How late the generator was is kept in
/// [`LoadRun::schedule_lag`] and reported, so a generator that fell behind is visible.
pub async fn open_loop(
    base: &str,
    rate: u32,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> Target + Send + Sync>,
) -> LoadRun {
    let client = http_client(64);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = tokio::time::Instant::now();
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        let base = base.to_owned();
        let t = make(i);
        handles.push(tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let ok = send(&client, &base, &t).await;
            (ok, sent.elapsed(), sent - due)
        }));
    }
    let mut run = LoadRun::default();
    for h in handles {
        if let Ok((ok, latency, late)) = h.await {
            run.schedule_lag.record(late);
            if ok {
                run.ok += 1;
                run.latencies.record(latency);
            } else {
                run.errors += 1;
            }
        }
    }
    run.per_second = run.ok as f64 / started.elapsed().as_secs_f64();
    run
}

fn http_client(connections: usize) -> Client {
    crate::install_crypto();
    Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client builds")
}
