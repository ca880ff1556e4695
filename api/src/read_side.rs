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
//! the standby is used only while the last [`ReadSide::probe_once`] (at start-up, then every
//! [`STANDBY_PROBE_EVERY`], run by a worker on a connection of its own) found it in recovery,
//! of the primary's cluster and database, and at most `READ_MAX_LAG_MS` behind. The lag is
//! measured against the primary's WAL: each probe notes the primary's flushed position, and
//! the standby is at most as far behind as the age of the newest noted position it has
//! replayed. An idle primary thus never makes a sound standby look late; a standby cut off
//! from the primary, or from which the primary cannot be reached, looks later with every
//! probe; and one whose lag is not known yet (none of the positions replayed) is not used.
//!
//! A read the standby fails is served by the primary. A failure that says the standby is gone
//! (unreachable, refused, shutting down, too slow to answer within
//! [`STANDBY_QUERY_TIMEOUT`], or an error of a kind a sound standby does not give) also takes
//! it out of use until a probe finds it sound again; only the probe brings it back, so while
//! it is out no request pays for trying it. A read that only found every standby connection
//! taken, or that lost a recovery conflict, is served by the primary and changes nothing else.
//! `read_standby_fallbacks_total` counts the reads the primary served in the standby's place,
//! `read_standby_available` is 1 while the standby is in use, and `read_standby_lag_seconds`
//! is the last lag measured (NaN while it is not known).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Most primary WAL positions kept for the lag: ten minutes of probes.
const MAX_NOTED_POSITIONS: usize = 600;

/// How long a read waits for a standby connection: short, since the primary can answer
/// instead (the primary's pool waits 5 s, as it has nowhere else to go), and short enough for
/// a read that needs two connections to finish within [`STANDBY_QUERY_TIMEOUT`].
const STANDBY_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);

/// Which server a read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The standby while it is in use, else the primary.
    Standby,
    /// The primary, whatever the standby's state.
    Primary,
}

/// Whether the standby is in use; a change is logged once.
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
    /// The reads' connections.
    pool: PgPool,
    /// The probe's own connection, so that busy reads cannot make a sound standby look gone.
    probe_pool: PgPool,
    orders: OrderLookup,
    health: Mutex<Health>,
    /// Bumped each time a read takes the standby out of use: a probe that started before
    /// does not put it back.
    outs: AtomicU64,
    /// The primary's WAL positions noted by probes, oldest first: the newest one the standby
    /// has replayed, and those after it.
    primary_positions: Mutex<VecDeque<(Instant, u64)>>,
}

impl Standby {
    fn in_use(&self) -> bool {
        *lock(&self.health) == Health::Healthy
    }

    /// Moves to `next`, logging and setting the gauge when it changes between in use and out
    /// of use (under the lock, so the gauge always shows the state last set).
    fn set(&self, next: Health) {
        let mut health = lock(&self.health);
        let was_in_use = *health == Health::Healthy;
        let now_in_use = next == Health::Healthy;
        let first = *health == Health::Unchecked;
        *health = next;
        if was_in_use == now_in_use && !first {
            return;
        }
        match &*health {
            Health::Healthy => tracing::info!("the read standby is sound; reading from it"),
            Health::Out(why) => {
                tracing::warn!(reason = %why, "the read standby is out of use; reading from the primary");
            }
            Health::Unchecked => {}
        }
        metrics::gauge!("read_standby_available").set(if now_in_use { 1.0 } else { 0.0 });
    }

    /// A read found the standby gone.
    fn gone(&self, why: String) {
        self.outs.fetch_add(1, Ordering::AcqRel);
        self.set(Health::Out(why));
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
    /// When `standby_url` is not a valid Postgres URL, or `max_lag` is shorter than
    /// [`STANDBY_PROBE_EVERY`] (the lag is measured to about one probe interval).
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
                anyhow::ensure!(
                    max_lag >= STANDBY_PROBE_EVERY,
                    "READ_MAX_LAG_MS must be at least {} with a READ_DATABASE_URL",
                    STANDBY_PROBE_EVERY.as_millis()
                );
                let options: PgConnectOptions = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid READ_DATABASE_URL: {e}"))?;
                // The server ends a statement the client has stopped waiting for.
                let statement_timeout = (2 * STANDBY_QUERY_TIMEOUT).as_millis().to_string();
                let options = options
                    .application_name("order-service-reads")
                    .options([("statement_timeout", statement_timeout.as_str())]);
                let pool_of = |size: u32| {
                    PgPoolOptions::new()
                        .max_connections(size)
                        .min_connections(0)
                        .acquire_timeout(STANDBY_ACQUIRE_TIMEOUT)
                        .test_before_acquire(false)
                        .connect_lazy_with(options.clone())
                };
                let pool = pool_of(max_connections.max(1));
                metrics::gauge!("read_standby_available").set(0.0);
                metrics::gauge!("read_standby_lag_seconds").set(0.0);
                metrics::counter!("read_standby_fallbacks_total").increment(0);
                Some(std::sync::Arc::new(Standby {
                    orders: OrderLookup::new(pool.clone()),
                    pool,
                    probe_pool: pool_of(1),
                    health: Mutex::new(Health::Unchecked),
                    outs: AtomicU64::new(0),
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
            match attempt(standby, standby.orders.order(id, tenant)).await {
                Ok(found) => return Ok(found),
                Err(failure) => fell_back(standby, failure),
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
            match attempt(standby, query(standby.pool.clone())).await {
                Ok(found) => return Ok(found),
                Err(failure) => fell_back(standby, failure),
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
    /// and at most the configured lag behind. Puts it in use or out of use accordingly, except
    /// that it does not put back a standby a read took out of use meanwhile. Returns whether
    /// it is in use afterwards (`false` without a standby).
    pub async fn probe_once(&self) -> bool {
        let Some(standby) = self.standby.as_deref() else {
            return false;
        };
        let outs = standby.outs.load(Ordering::Acquire);
        match self.check(standby).await {
            Ok(lag) if lag > self.max_lag => standby.set(Health::Out(format!(
                "replication lag over READ_MAX_LAG_MS ({} ms)",
                self.max_lag.as_millis()
            ))),
            Ok(_) if standby.outs.load(Ordering::Acquire) != outs => {}
            Ok(_) => standby.set(Health::Healthy),
            Err(why) => standby.set(Health::Out(why)),
        }
        standby.in_use()
    }

    /// The standby's lag, or why it cannot be used. The lag is an upper bound: the age of
    /// the newest primary position the standby is known to have replayed. Without one (the
    /// first probe of a standby that is behind) the lag is unknown, and the standby unused.
    async fn check(&self, standby: &Standby) -> Result<Duration, String> {
        // The primary first, so that a standby that keeps up has replayed the position by the
        // time it is asked. The flush position: WAL past it is not streamed yet.
        let primary = bounded(
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT pg_current_wal_flush_lsn()::text, \
                        (SELECT system_identifier FROM pg_control_system())::text, \
                        current_database()::text",
            )
            .fetch_one(&self.primary),
        )
        .await;
        let noted_at = Instant::now();
        let mut replayed = None;
        // A standby that keeps up replays the noted position within milliseconds; a few short
        // looks spare it a whole probe interval of measured lag.
        for look in 0..5 {
            if look > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (in_recovery, position, system, database): (bool, String, String, String) =
                bounded(
                    sqlx::query_as(
                        "SELECT pg_is_in_recovery(), \
                                coalesce(pg_last_wal_replay_lsn(), '0/0')::text, \
                                (SELECT system_identifier FROM pg_control_system())::text, \
                                current_database()::text",
                    )
                    .fetch_one(&standby.probe_pool),
                )
                .await
                .map_err(|e| format!("unreachable or failing: {e}"))?;
            if !in_recovery {
                return Err(
                    "READ_DATABASE_URL is not a standby (pg_is_in_recovery() is false)".into(),
                );
            }
            let position = parse_lsn(&position)?;
            replayed = Some(position);
            match &primary {
                Ok((at, primary_system, primary_database)) => {
                    if system != *primary_system || database != *primary_database {
                        return Err(format!(
                            "READ_DATABASE_URL is not a standby of DATABASE_URL (cluster {system} \
                             database {database}, the primary's cluster {primary_system} \
                             database {primary_database})"
                        ));
                    }
                    if position >= parse_lsn(at)? {
                        break;
                    }
                }
                // Nothing to wait for: the lag is judged on the positions noted before.
                Err(e) => {
                    tracing::debug!(error = %e, "no primary WAL position for the standby's lag");
                    break;
                }
            }
        }
        let replayed = replayed.unwrap_or_default();
        let mut noted = lock(&standby.primary_positions);
        if let Ok((at, _, _)) = &primary {
            noted.push_back((noted_at, parse_lsn(at)?));
        }
        // Keep the newest position replayed (the lag is its age) and those after it.
        while noted.get(1).is_some_and(|&(_, at)| at <= replayed) {
            noted.pop_front();
        }
        // Bounded memory however long the standby stays behind; dropping positions after the
        // newest replayed one can only make the lag read longer.
        while noted.len() > MAX_NOTED_POSITIONS {
            noted.remove(1);
        }
        let lag = match noted.front() {
            Some(&(at, position)) if position <= replayed => noted_at.duration_since(at),
            _ => {
                metrics::gauge!("read_standby_lag_seconds").set(f64::NAN);
                return Err("has not replayed any primary position noted so far".into());
            }
        };
        metrics::gauge!("read_standby_lag_seconds").set(lag.as_secs_f64());
        Ok(lag)
    }

    /// Closes the standby's pools (the primary's is the service's own), waiting at most 1 s:
    /// a standby that hangs must not hold up shutdown.
    pub async fn close(&self) {
        if let Some(standby) = self.standby.as_deref() {
            let closing = async {
                tokio::join!(standby.pool.close(), standby.probe_pool.close());
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        }
    }
}

/// A probe statement, bounded by [`STANDBY_QUERY_TIMEOUT`].
async fn bounded<T>(query: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
    match tokio::time::timeout(STANDBY_QUERY_TIMEOUT, query).await {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            STANDBY_QUERY_TIMEOUT.as_millis()
        )),
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
async fn attempt<T>(
    standby: &Standby,
    read: impl Future<Output = Result<T, ProjectionError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(STANDBY_QUERY_TIMEOUT, read).await {
        Ok(Ok(found)) => Ok(found),
        // sqlx also answers `PoolTimedOut` when it kept failing to open a connection (refused,
        // starting up): only a pool whose every connection is taken is merely busy.
        Ok(Err(ProjectionError::Database(sqlx::Error::PoolTimedOut)))
            if standby.pool.size() >= standby.pool.options().get_max_connections()
                && standby.pool.num_idle() == 0 =>
        {
            Err(Failure::Busy)
        }
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
fn fell_back(standby: &Standby, failure: Failure) {
    metrics::counter!("read_standby_fallbacks_total").increment(1);
    match failure {
        Failure::Busy => {
            tracing::debug!("the read standby's pool is busy; reading from the primary");
        }
        Failure::Once(e) => {
            tracing::warn!(error = %e, "a read failed on the standby; reading it from the primary");
        }
        Failure::Gone(e) => standby.gone(e),
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
