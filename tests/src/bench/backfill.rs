//! B10: how fast a subscriber backfills history, against the feed's raw read rate.
//!
//! Over the events the run's earlier phases wrote, each round reads the whole feed three ways:
//!
//! * **the baseline**: [`order_projections::feed::read_raw_after`] in batches of 1,000 on one
//!   connection, keeping the rows and doing nothing else, which is the least any reader pays;
//! * **the paged HTTP read**: signed `GET /internal/events?limit=1000` as event-service until
//!   `caughtUp`, over loopback from the running service, each page parsed as JSON;
//! * **`republish`**: [`order_bus::catchup::Republish`] into a fresh stream of its own (the
//!   encoder, the publish with acks, the checkpoint per batch), deleted afterwards.
//!
//! Each rate is events per second over the same range; the ratios are the two paths' rates
//! divided by the baseline's.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use order_bus::catchup::{FeedPage, Republish, RepublishFilter};
use order_bus::relay::jetstream_context;
use order_bus::stream::DEFAULT_DUPLICATE_WINDOW;
use order_bus::{ensure_stream, StreamSpec, Subjects};
use order_projections::{feed, FeedPosition};
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Events per page and per raw read.
pub const PAGE: i64 = 1_000;

/// What one B10 round measured.
#[derive(Debug, Clone, Copy)]
pub struct BackfillRun {
    pub events: u64,
    pub raw_per_second: f64,
    pub http_per_second: f64,
    pub republish_per_second: f64,
}

/// Reads the whole feed in batches and returns the events read and the rate.
async fn raw_read(pool: &PgPool) -> anyhow::Result<(u64, f64)> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let (mut after, mut events) = (FeedPosition::default(), 0u64);
    loop {
        let batch = feed::read_raw_after(&mut *conn, after, PAGE).await?;
        let Some(last) = batch.events().last() else {
            break;
        };
        after = last?.position;
        events += batch.len() as u64;
    }
    Ok((events, events as f64 / started.elapsed().as_secs_f64()))
}

/// Pages `base_url`'s `/internal/events` to the end; returns the events and the rate.
async fn http_read(base_url: &str) -> anyhow::Result<(u64, f64)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (mut after, mut events) = ("0".to_owned(), 0u64);
    loop {
        let path = format!("/internal/events?after={after}&limit={PAGE}");
        let mut request = client.get(format!("{base_url}{path}"));
        for (name, value) in crate::v1_headers("event-service", "GET", &path) {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        ensure!(
            response.status() == 200,
            "page answered {}",
            response.status()
        );
        let page: FeedPage<Box<RawValue>> = serde_json::from_slice(&response.bytes().await?)?;
        events += page.events.len() as u64;
        after = page.next.to_string();
        if page.caught_up {
            break;
        }
    }
    Ok((events, events as f64 / started.elapsed().as_secs_f64()))
}

/// One round over everything in the feed; `tag` names the round's stream and checkpoint.
///
/// # Errors
/// When Postgres, NATS or the service fail, or the three reads disagree on the count.
pub async fn round(
    pool: &PgPool,
    base_url: &str,
    nats_url: &str,
    tag: &str,
) -> anyhow::Result<BackfillRun> {
    let (events, raw_per_second) = raw_read(pool).await?;
    let (paged, http_per_second) = http_read(base_url).await?;
    let client = async_nats::connect(nats_url).await.context("NATS")?;
    let jetstream = jetstream_context(client, Duration::from_secs(10));
    let subjects = Subjects::new(&format!("{}.", tag.to_lowercase()));
    let mut spec = StreamSpec::events(tag, &subjects, DEFAULT_DUPLICATE_WINDOW);
    spec.subjects = vec![subjects.prefixed("order.>")];
    ensure_stream(&jetstream, &spec).await?;
    let job = Republish {
        pool: pool.clone(),
        jetstream: jetstream.clone(),
        subjects,
        name: tag.to_owned(),
        filter: RepublishFilter::default(),
        batch_size: 500,
    };
    let started = Instant::now();
    let report = job
        .run(Default::default(), &CancellationToken::new(), |_| {})
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let _ = jetstream.delete_stream(tag).await;
    job.reset().await?;
    let report = report?;
    ensure!(
        paged == events && report.published == events,
        "the feed has {events} events, the pages {paged}, republish {}",
        report.published
    );
    Ok(BackfillRun {
        events,
        raw_per_second,
        http_per_second,
        republish_per_second: report.published as f64 / seconds,
    })
}
