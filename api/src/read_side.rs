//! Where the four `/internal` queries read: a streaming Postgres standby when
//! `READ_DATABASE_URL` is set, the primary otherwise. Everything else (commands, the
//! projector, the relay, jobs, the inbox, the nonce store, and the event-store check behind
//! `minVersion`'s 404 and 409) stays on the primary.
//!
//! A standby is behind the primary by its replication lag, so a read there may answer an older
//! version of an order. `minVersion` keeps read-your-writes honest as before: the route reads
//! again until the standby has replayed that version, for up to `READ_WAIT_MS`, then answers
//! 503 with `Retry-After` (app/queries.rs). A read without it may be as old as the lag.
//!
//! When the standby fails a read, that read is served by the primary, and while the failure is
//! an outage (unreachable, shutting down) the standby is left alone for [`STANDBY_RETRY`]
//! before it is tried again; meanwhile every read goes to the primary. Each read the primary
//! serves in the standby's place counts in `read_standby_fallbacks_total`, and
//! `read_standby_available` is 0 from the standby's outage until a read succeeds there again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use order_projections::view::OrderView;
use order_projections::ProjectionError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::lookup::OrderLookup;

/// How long a standby that had an outage is left alone before a read tries it again.
pub const STANDBY_RETRY: Duration = Duration::from_secs(5);

/// How long a read waits for a standby connection: short, since the primary can answer
/// instead (the primary's pool waits 5 s, as it has nowhere else to go).
const STANDBY_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Standby {
    pool: PgPool,
    orders: OrderLookup,
    /// Until when the standby is left alone after an outage.
    resting_until: Mutex<Option<Instant>>,
    /// Whether its last read succeeded (or none failed yet): `read_standby_available`.
    available: AtomicBool,
}

impl Standby {
    /// A read succeeded here: available again if it was not.
    fn answered(&self) {
        if !self.available.swap(true, Ordering::AcqRel) {
            tracing::info!("the read standby answers again; reading from it");
            metrics::gauge!("read_standby_available").set(1.0);
        }
    }
}

/// The pools the `/internal` queries read from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadSide {
    primary: PgPool,
    primary_orders: OrderLookup,
    standby: Option<std::sync::Arc<Standby>>,
}

impl ReadSide {
    /// Reads on the primary (`primary`, with its by-id lookup `primary_orders`), and on the
    /// standby at `standby_url` when one is given (connected lazily, `max_connections` at
    /// most).
    ///
    /// # Errors
    /// When `standby_url` is not a valid Postgres URL.
    pub fn new(
        primary: PgPool,
        primary_orders: OrderLookup,
        standby_url: Option<&str>,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let standby = match standby_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let options: PgConnectOptions = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid READ_DATABASE_URL: {e}"))?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .min_connections(0)
                    .acquire_timeout(STANDBY_ACQUIRE_TIMEOUT)
                    .test_before_acquire(false)
                    .connect_lazy_with(options.application_name("order-service-reads"));
                metrics::gauge!("read_standby_available").set(1.0);
                metrics::counter!("read_standby_fallbacks_total").increment(0);
                Some(std::sync::Arc::new(Standby {
                    orders: OrderLookup::new(pool.clone()),
                    pool,
                    resting_until: Mutex::new(None),
                    available: AtomicBool::new(true),
                }))
            }
        };
        Ok(Self {
            primary,
            primary_orders,
            standby,
        })
    }

    /// Whether a standby is configured.
    pub fn has_standby(&self) -> bool {
        self.standby.is_some()
    }

    /// `GET /internal/orders/{id}`: the order, batched by id (see [`OrderLookup`]).
    ///
    /// # Errors
    /// As [`OrderLookup::order`] on the primary.
    pub async fn order(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<OrderView>, ProjectionError> {
        if let Some(standby) = self.usable_standby() {
            match standby.orders.order(id, tenant).await {
                Ok(found) => {
                    standby.answered();
                    return Ok(found);
                }
                Err(e) => self.fell_back(standby, &e),
            }
        }
        self.primary_orders.order(id, tenant).await
    }

    /// Runs `query` on the standby when it is usable, else (or when it fails there) on the
    /// primary.
    ///
    /// # Errors
    /// As `query` on the primary.
    pub async fn read<T, F, Fut>(&self, query: F) -> Result<T, ProjectionError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, ProjectionError>>,
    {
        if let Some(standby) = self.usable_standby() {
            match query(standby.pool.clone()).await {
                Ok(found) => {
                    standby.answered();
                    return Ok(found);
                }
                Err(e) => self.fell_back(standby, &e),
            }
        }
        query(self.primary.clone()).await
    }

    /// The standby, unless none is configured or it is resting after an outage (then the read
    /// is counted as a fallback).
    fn usable_standby(&self) -> Option<&Standby> {
        let standby = self.standby.as_deref()?;
        let mut resting = standby
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *resting {
            Some(until) if Instant::now() < until => {
                metrics::counter!("read_standby_fallbacks_total").increment(1);
                None
            }
            Some(_) => {
                // Rested: try it again (a failure rests it again at once).
                *resting = None;
                Some(standby)
            }
            None => Some(standby),
        }
    }

    /// The standby failed a read: count it, and rest the standby when it was an outage.
    fn fell_back(&self, standby: &Standby, e: &ProjectionError) {
        metrics::counter!("read_standby_fallbacks_total").increment(1);
        if e.is_transient() {
            let mut resting = standby
                .resting_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if standby.available.swap(false, Ordering::AcqRel) {
                tracing::warn!(error = %e, retry_in_s = STANDBY_RETRY.as_secs(), "the read standby is unavailable; reading from the primary");
            }
            *resting = Some(Instant::now() + STANDBY_RETRY);
            metrics::gauge!("read_standby_available").set(0.0);
        } else {
            tracing::warn!(error = %e, "a read failed on the standby; reading it from the primary");
        }
    }
}
