//! One kind of load against a service that is already running, for profiling it with `perf`
//! while nothing else of the bench runs (the bench's own phases are too short to sample).
//!
//! ```sh
//! cargo run --release -p order-tests --example load -- http://127.0.0.1:8080 read 10 ids.txt
//! RATE=200 cargo run --release -p order-tests --example load -- URL read 10 ids.txt
//! ```
//!
//! Kinds: `live` (unsigned `/health/live`), `jobs` (signed `/internal/jobs`), `create` (signed
//! `POST /api/v1/orders`) and `read` (signed `GET /internal/orders/{id}`, ids one per line in
//! the file given). `CLIENTS` closed-loop clients (32 unless set), or an open loop at `RATE`
//! requests/s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use order_tests::bench::load::{closed_loop, open_loop, Target};
use reqwest::Method;

/// Closed-loop clients unless `CLIENTS` says otherwise.
const CLIENTS: usize = 32;

fn target(kind: &str, ids: &[String], i: u64) -> Target {
    let signed = |path: String, service: &str, tenant: Option<&str>| Target {
        method: Method::GET,
        path,
        body: None,
        signed_as: Some(service.into()),
        tenant: tenant.map(Into::into),
        v2: false,
    };
    match kind {
        "live" => Target {
            signed_as: None,
            ..signed("/health/live".into(), "", None)
        },
        "jobs" => signed("/internal/jobs".into(), "api-gateway", None),
        "create" => Target {
            method: Method::POST,
            body: Some(order_tests::order_body()),
            ..signed("/api/v1/orders".into(), "api-gateway", Some("bench"))
        },
        _ => signed(
            format!("/internal/orders/{}", ids[(i as usize) % ids.len()]),
            "payment-service",
            Some("bench"),
        ),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    order_tests::install_crypto();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, kind, seconds, rest @ ..] = args.as_slice() else {
        bail!("usage: load URL live|jobs|create|read SECONDS [IDS_FILE]");
    };
    if !matches!(kind.as_str(), "live" | "jobs" | "create" | "read") {
        bail!("unknown kind {kind}: live, jobs, create or read");
    }
    let seconds: u64 = seconds.parse().context("SECONDS must be a whole number")?;
    let ids: Vec<String> = match rest.first() {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {file}"))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => vec![],
    };
    if kind == "read" && ids.is_empty() {
        bail!("`read` needs a file of order ids, one per line");
    }
    let ids = Arc::new(ids);
    let kind = kind.clone();
    let make = Arc::new(move |i| target(&kind, &ids, i));
    let duration = Duration::from_secs(seconds);
    let run = match std::env::var("RATE").ok() {
        Some(rate) => {
            let rate = rate.parse().context("RATE must be requests per second")?;
            open_loop(url, rate, duration, make).await
        }
        None => {
            let clients = match std::env::var("CLIENTS") {
                Ok(n) => n.parse().context("CLIENTS must be a whole number")?,
                Err(_) => CLIENTS,
            };
            closed_loop(url, clients, duration, make).await
        }
    };
    println!(
        "{:.0}/s, {} errors, p50 {:.2} ms, p99 {:.2} ms",
        run.per_second,
        run.errors,
        run.latencies.ms(0.5),
        run.latencies.ms(0.99)
    );
    Ok(())
}
