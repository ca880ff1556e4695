//! Prometheus metrics (docs/contract.md §3.4): the process-wide recorder, `GET /metrics`, and the
//! HTTP RED middleware.
//!
//! Every crate of the workspace emits through the `metrics` facade (`counter!`, `gauge!`,
//! `histogram!`); this module installs the one recorder that collects them and renders them in
//! the Prometheus text format. Series emitted before [`install`] runs are dropped by the facade,
//! so [`crate::startup::Application::build_with_pool`] installs it first thing.
//!
//! Histograms whose name ends in `_seconds` are exported as real Prometheus histograms (with
//! `_bucket` series, [`LATENCY_BUCKETS`]) rather than the exporter's default summaries, so that
//! latencies can be aggregated across replicas.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The Prometheus text exposition format version scrapers expect.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder drains histogram samples into their buckets. The exporter's
/// `install_recorder` leaves this to the caller; without it histograms grow without bound.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bucket bounds, in seconds, of every `*_seconds` histogram: 5 ms up to 10 s, which covers a
/// fast read as well as a command that waits out a peer's timeout.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label of requests no route matched: their raw paths would make unbounded label values.
const UNMATCHED: &str = "unmatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle. Later calls return the
/// same handle, so tests that build many applications in one process do not panic on a second
/// install. If another recorder was installed first (by an embedding program), the series go
/// there and `/metrics` renders an empty, still valid, page; that is logged once.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS);
        let builder = match builder {
            Ok(b) => b,
            Err(e) => {
                // Only an empty bucket list fails here, and LATENCY_BUCKETS is a non-empty
                // constant; keep summaries rather than refuse to start.
                tracing::warn!(error = %e, "histogram buckets refused; exporting summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = ::metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics stays empty");
        }
        spawn_upkeep(handle.clone());
        register_alerted_series();
        handle
    })
}

/// Creates at zero the counters that the alert rules and the dashboard in `deploy/` watch but
/// that only their first event would create otherwise: a fresh replica then exports every name
/// the rules read, and a rate over them is 0 rather than "no data".
fn register_alerted_series() {
    for reason in ["store_error", "store_deadline"] {
        ::metrics::counter!("order_auth_rejections_total", "reason" => reason).increment(0);
    }
    for transient in ["true", "false"] {
        ::metrics::counter!("relay_errors_total", "transient" => transient).increment(0);
    }
    for call in ["command", "read", "nonce"] {
        ::metrics::counter!("request_db_deadline_exceeded_total", "call" => call).increment(0);
    }
    for name in [
        "dlq_parked_total",
        "relay_published_total",
        "relay_duplicates_total",
        "relay_foreign_duplicates_total",
    ] {
        ::metrics::counter!(name).increment(0);
    }
}

/// Runs upkeep on a plain thread: it must outlive any one Tokio runtime (each `#[sqlx::test]`
/// has its own), and it only takes a lock and folds samples, which never blocks for long.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start metrics upkeep; histograms grow until rendered");
    }
}

/// `GET /metrics`: every series in the Prometheus text format.
///
/// Unauthenticated, like `/health/*`: Prometheus scrapes it from inside the cluster, where the
/// HMAC schemes of service-to-service calls do not fit a scraper, and it carries counts and
/// latencies only, never ids, tenants or payloads (route labels are templates, not paths).
/// Keep it off the public ingress.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
            body = String, content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn render() -> Response {
    let handle = install();
    // Rendering also folds pending samples, so a scrape right after a burst sees it.
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        handle.render(),
    )
        .into_response()
}

/// HTTP RED middleware: `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}`. `route` is the matched route template
/// (`/api/v1/orders/{id}/confirm`), never the raw path, so an order id never becomes a label
/// value; requests no route matched share the label `unmatched`. Installed with
/// `Router::layer`, where axum has already put [`MatchedPath`] in the request's extensions.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |m| m.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "route" => route.clone(),
    )
    .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(
        "http_requests_total",
        "method" => method,
        "route" => route,
        "status" => status,
    )
    .increment(1);
    response
}

/// The method as a label value; extension methods share `OTHER`, so a client cannot mint label
/// values at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
