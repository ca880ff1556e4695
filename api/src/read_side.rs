//! Where the four `/internal` queries read: a streaming Postgres standby when
//! `READ_DATABASE_URL` is set, the primary otherwise. Everything else (commands, the
//! projector, the relay, jobs, the inbox, the nonce store, and the event-store check behind
//! `minVersion`'s 404 and 409) stays on the primary.
//!
//! A standby is behind the primary by its replication lag, so a read there may answer an older
//! version of an order. `minVersion` keeps read-your-writes honest: the route reads again until
//! the version is there, from the standby for the first half of `READ_WAIT_MS` and from the
//! primary for the rest, then answers 503 with `Retry-After` (app/queries.rs). A read without
//! it may be as old as the lag, which is kept under `READ_MAX_LAG_MS`.
//!
//! Queries succeeding is not enough to trust a standby: one that stopped replaying, was
//! promoted, or belongs to another cluster answers every query, with old or foreign data. So
//! the standby is used only while the last [`ReadSide::probe_once`] (every
//! [`STANDBY_PROBE_EVERY`], run by a worker) found it in recovery, of the primary's cluster
//! and database, and at most `READ_MAX_LAG_MS` behind. The lag is measured against the
//! primary's WAL position: the probe notes the primary's position each time, and the standby is
//! as far behind as the oldest noted position it has not replayed yet; an idle primary thus
//! never makes a healthy standby look late, and a standby cut off from a busy primary looks
//! later with every probe.
//!
//! A read the standby fails is served by the primary. A failure that says the standby is gone
//! (unreachable, refused, shutting down, too slow to answer within
//! [`STANDBY_QUERY_TIMEOUT`], or an error of a kind a healthy standby does not give) also takes
//! it out of use until a probe finds it healthy again; only the probe brings it back, so while
//! it is out no request pays for trying it. A read that only found the standby's pool busy, or
//! that lost a recovery conflict, is served by the primary and changes nothing else.
//! `read_standby_fallbacks_total` counts the reads the primary served in the standby's place,
//! `read_standby_available` is 1 while the standby is in use, and `read_standby_lag_seconds`
//! is the last lag measured.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use order_projections::view::OrderView;
use order_projections::ProjectionError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::lookup::OrderLookup;

/// How often the standby's health and lag are checked.
pub const STANDBY_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Longest a read waits for the standby before the primary answers it instead: a standby that
/// takes longer (a blackholed connection, a statement stuck behind a replayed lock) is treated
/// as gone, rather than spending the request's whole database deadline on it.
pub const STANDBY_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How many of the primary's WAL positions are kept for the lag: ten minutes of probes.
const MAX_NOTED_POSITIONS: usize = 600;

/// How long a read waits for a standby connection: short, since the primary can answer
/// instead (the primary's pool waits 5 s, as it has nowhere else to go).
const STANDBY_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// Which server a read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The standby while it is in use, else the primary.
    Standby,
    /// The primary, whatever the standby's state.
    Primary,
}

/// Why the standby is not in use; logged once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    /// Not probed yet: the primary answers until the first probe.
    Unchecked,
    /// In use.
    Healthy,
    /// Out of use, for the reason given.
    Out(String),
}

#[derive(Debug)]
struct Standby {
    pool: PgPool,
    orders: OrderLookup,
    health: Mutex<Health>,
    /// The primary's WAL positions noted by recent probes, oldest first.
    primary_positions: Mutex<VecDeque<(Instant, u64)>>,
}

impl Standby {
    fn in_use(&self) -> bool {
        *lock(&self.health) == Health::Healthy
    }

    /// Moves to `next`, logging and setting the gauge on a change (under the lock, so the
    /// gauge always shows the state last set).
    fn set(&self, next: Health) {
        let mut health = lock(&self.health);
        if *health == next {
            return;
        }
        match &next {
            Health::Healthy => tracing::info!("the read standby is healthy; reading from it"),
            Health::Out(why) => {
                tracing::warn!(reason = %why, "the read standby is out of use; reading from the primary");
            }
            Health::Unchecked => {}
        }
        metrics::gauge!("read_standby_available").set(if next == Health::Healthy {
            1.0
        } else {
            0.0
        });
        *health = next;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pools the `/internal` queries read from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadSide {
    primary: PgPool,
    primary_orders: OrderLookup,
    standby: Option<std::sync::Arc<Standby>>,
    max_lag: Duration,
}

impl ReadSide {
    /// Reads on the primary (`primary`, with its by-id lookup `primary_orders`), and on the
    /// standby at `standby_url` when one is given (connected lazily, `max_connections` at
    /// most), while it is at most `max_lag` behind.
    ///
    /// # Errors
    /// When `standby_url` is not a valid Postgres URL.
    pub fn new(
        primary: PgPool,
        primary_orders: OrderLookup,
        standby_url: Option<&str>,
        max_connections: u32,
        max_lag: Duration,
    ) -> anyhow::Result<Self> {
        let standby = match standby_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let options: PgConnectOptions = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid READ_DATABASE_URL: {e}"))?;
                // The server ends a statement the client has stopped waiting for.
                let statement_timeout = (2 * STANDBY_QUERY_TIMEOUT).as_millis().to_string();
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .min_connections(0)
                    .acquire_timeout(STANDBY_ACQUIRE_TIMEOUT)
                    .test_before_acquire(false)
                    .connect_lazy_with(
                        options
                            .application_name("order-service-reads")
                            .options([("statement_timeout", statement_timeout.as_str())]),
                    );
                metrics::gauge!("read_standby_available").set(0.0);
                metrics::gauge!("read_standby_lag_seconds").set(0.0);
                metrics::counter!("read_standby_fallbacks_total").increment(0);
                Some(std::sync::Arc::new(Standby {
                    orders: OrderLookup::new(pool.clone()),
                    pool,
                    health: Mutex::new(Health::Unchecked),
                    primary_positions: Mutex::new(VecDeque::new()),
                }))
            }
        };
        Ok(Self {
            primary,
            primary_orders,
            standby,
            max_lag,
        })
    }

    /// Whether a standby is configured.
    pub fn has_standby(&self) -> bool {
        self.standby.is_some()
    }

    /// Whether reads go to the standby now.
    pub fn standby_in_use(&self) -> bool {
        self.standby.as_deref().is_some_and(Standby::in_use)
    }

    /// `GET /internal/orders/{id}`: the order, batched by id (see [`OrderLookup`]).
    ///
    /// # Errors
    /// As [`OrderLookup::order`] on the primary.
    pub async fn order(
        &self,
        from: ReadFrom,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<OrderView>, ProjectionError> {
        if let Some(standby) = self.usable_standby(from) {
            match attempt(standby.orders.order(id, tenant)).await {
                Ok(found) => return Ok(found),
                Err(failure) => fell_back(standby, &failure),
            }
        }
        self.primary_orders.order(id, tenant).await
    }

    /// Runs `query` on the standby when `from` allows it and it is in use, else (or when it
    /// fails there) on the primary.
    ///
    /// # Errors
    /// As `query` on the primary.
    pub async fn read<T, F, Fut>(&self, from: ReadFrom, query: F) -> Result<T, ProjectionError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, ProjectionError>>,
    {
        if let Some(standby) = self.usable_standby(from) {
            match attempt(query(standby.pool.clone())).await {
                Ok(found) => return Ok(found),
                Err(failure) => fell_back(standby, &failure),
            }
        }
        query(self.primary.clone()).await
    }

    /// The standby, when one is configured, `from` allows it, and it is in use; a read that
    /// wanted it and did not get it counts as a fallback.
    fn usable_standby(&self, from: ReadFrom) -> Option<&Standby> {
        let standby = self.standby.as_deref()?;
        if from == ReadFrom::Primary {
            return None;
        }
        if standby.in_use() {
            Some(standby)
        } else {
            metrics::counter!("read_standby_fallbacks_total").increment(1);
            None
        }
    }

    /// Checks the standby once: reachable, in recovery, of the primary's cluster and database,
    /// and at most the configured lag behind. Puts it in use or out of use accordingly.
    /// Returns whether it is in use afterwards (`false` without a standby).
    pub async fn probe_once(&self) -> bool {
        let Some(standby) = self.standby.as_deref() else {
            return false;
        };
        match self.check(standby).await {
            Ok(lag) => {
                metrics::gauge!("read_standby_lag_seconds").set(lag.as_secs_f64());
                if lag > self.max_lag {
                    standby.set(Health::Out(format!(
                        "replication lag {:.1} s exceeds READ_MAX_LAG_MS",
                        lag.as_secs_f64()
                    )));
                } else {
                    standby.set(Health::Healthy);
                }
            }
            Err(why) => standby.set(Health::Out(why)),
        }
        standby.in_use()
    }

    /// The standby's lag, or why it cannot be used.
    async fn check(&self, standby: &Standby) -> Result<Duration, String> {
        let probe = "SELECT pg_is_in_recovery(), \
                            coalesce(pg_last_wal_replay_lsn(), '0/0')::text, \
                            (SELECT system_identifier FROM pg_control_system())::text, \
                            current_database()::text";
        let (in_recovery, replayed, system, database): (bool, String, String, String) =
            match tokio::time::timeout(
                STANDBY_QUERY_TIMEOUT,
                sqlx::query_as(probe).fetch_one(&standby.pool),
            )
            .await
            {
                Ok(Ok(row)) => row,
                Ok(Err(e)) => return Err(format!("unreachable or failing: {e}")),
                Err(_) => return Err("did not answer within 1 s".to_owned()),
            };
        if !in_recovery {
            return Err("READ_DATABASE_URL is not a standby (pg_is_in_recovery() is false)".into());
        }
        let primary: Result<(String, String, String), _> = sqlx::query_as(
            "SELECT pg_current_wal_lsn()::text, \
                    (SELECT system_identifier FROM pg_control_system())::text, \
                    current_database()::text",
        )
        .fetch_one(&self.primary)
        .await;
        let now = Instant::now();
        let mut noted = lock(&standby.primary_positions);
        match primary {
            Ok((position, primary_system, primary_database)) => {
                if system != primary_system || database != primary_database {
                    return Err(format!(
                        "READ_DATABASE_URL is not a standby of DATABASE_URL (cluster {system} \
                         database {database}, primary's cluster {primary_system} database \
                         {primary_database})"
                    ));
                }
                noted.push_back((now, parse_lsn(&position)?));
            }
            // The primary is unreachable: nothing changes there either, so the lag is judged
            // on the positions already noted.
            Err(e) => tracing::debug!(error = %e, "no primary WAL position for the standby's lag"),
        }
        let replayed = parse_lsn(&replayed)?;
        // Positions the standby has replayed say nothing more; keep the first one not yet
        // replayed (the lag is its age) and those after it.
        while noted.front().is_some_and(|&(_, at)| at <= replayed) {
            noted.pop_front();
        }
        // Bounded memory however long the standby stays behind. Dropping the oldest makes
        // the lag read younger than it is, but only once it is far beyond any sane limit.
        while noted.len() > MAX_NOTED_POSITIONS {
            noted.pop_front();
        }
        Ok(noted
            .front()
            .map_or(Duration::ZERO, |&(at, _)| now.duration_since(at)))
    }

    /// Closes the standby's pool (the primary's is the service's own), waiting at most 1 s:
    /// a standby that hangs must not hold up shutdown.
    pub async fn close(&self) {
        if let Some(standby) = self.standby.as_deref() {
            let _ = tokio::time::timeout(Duration::from_secs(1), standby.pool.close()).await;
        }
    }
}

/// A WAL position (`X/Y`, hex) as a number.
fn parse_lsn(text: &str) -> Result<u64, String> {
    let (high, low) = text
        .split_once('/')
        .ok_or_else(|| format!("unexpected WAL position {text:?}"))?;
    let part = |s: &str| u64::from_str_radix(s, 16).map_err(|e| format!("WAL position: {e}"));
    Ok((part(high)? << 32) | part(low)?)
}

/// Why a standby read did not answer.
enum Failure {
    /// The standby's pool had no connection free in time: the standby is fine, only busy.
    Busy,
    /// The standby is gone or not what it should be.
    Gone(String),
    /// This read lost a recovery conflict (or a similar one-off); the standby is fine.
    Once(String),
}

/// Runs one standby read within [`STANDBY_QUERY_TIMEOUT`], classifying its failure.
async fn attempt<T>(read: impl Future<Output = Result<T, ProjectionError>>) -> Result<T, Failure> {
    match tokio::time::timeout(STANDBY_QUERY_TIMEOUT, read).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(ProjectionError::Database(sqlx::Error::PoolTimedOut))) => Err(Failure::Busy),
        Ok(Err(ProjectionError::Database(sqlx::Error::Database(db))))
            // serialization_failure and deadlock_detected: how a hot standby cancels a query
            // that holds up replay.
            if db.code().is_some_and(|c| matches!(&*c, "40001" | "40P01")) =>
        {
            Err(Failure::Once(db.to_string()))
        }
        Ok(Err(e)) => Err(Failure::Gone(e.to_string())),
        Err(_) => Err(Failure::Gone(format!(
            "a read took longer than {} ms",
            STANDBY_QUERY_TIMEOUT.as_millis()
        ))),
    }
}

/// The standby failed a read: count the fallback, and take it out of use when it is gone.
fn fell_back(standby: &Standby, failure: &Failure) {
    metrics::counter!("read_standby_fallbacks_total").increment(1);
    match failure {
        Failure::Busy => {
            tracing::debug!("the read standby's pool is busy; reading from the primary")
        }
        Failure::Once(e) => {
            tracing::warn!(error = %e, "a read failed on the standby; reading it from the primary");
        }
        Failure::Gone(e) => standby.set(Health::Out(e.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn wal_positions_order_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Ok(0));
        assert_eq!(parse_lsn("1/0"), Ok(1 << 32));
        assert_eq!(parse_lsn("0/1D75140"), Ok(0x1D7_5140));
        assert!(parse_lsn("16/B374D848").unwrap() > parse_lsn("16/374D848").unwrap());
        assert!(parse_lsn("nonsense").is_err());
        assert!(parse_lsn("0/xyz").is_err());
    }
}
