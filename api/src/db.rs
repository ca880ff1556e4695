//! Postgres: the pool, creating the database when missing, and the embedded migrations.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard};

/// Every migration in `migrations/`, compiled into the binary so deploys cannot drift.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connects a pool. Acquiring fails after 5 s instead of hanging, so a database outage answers
/// 503 quickly.
///
/// Connections are not pinged before each use (sqlx's default): the ping is a round trip per
/// query, a third of a create's database time. A connection broken by a database restart
/// fails its next query instead; that request answers 503 (an outage, see `store::sqlx_error`),
/// sqlx drops the connection, and the next request gets a fresh one.
///
/// # Errors
/// When the URL is malformed. Connections are opened lazily, so an unreachable server is not
/// an error here.
pub fn pool(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url).context("invalid DATABASE_URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// One pool connection kept across the statements of a single long-lived user: a batcher
/// ([`crate::batch`]), which runs one statement at a time for as long as the service runs.
///
/// sqlx 0.8 checks every connection it takes back into the pool with a round trip (a `Sync`,
/// and a wait for Postgres's `ReadyForQuery`: `Floating::return_to_pool`), so a statement run
/// on the pool costs two round trips and two wake-ups of its backend. Held, the connection
/// skips that check, and the same backend serves every batch. After a failed statement the
/// connection goes back to the pool, which checks it or closes it, and the next statement
/// takes another. It counts against the pool's size like any connection in use, so its user
/// gives it back whenever it goes idle ([`HeldConnection::release`]): `PgPool::close` waits
/// for every connection in use, and the service closes its pool on shutdown.
#[derive(Debug, Clone)]
pub struct HeldConnection {
    pool: PgPool,
    slot: Arc<Mutex<Option<PoolConnection<Postgres>>>>,
}

/// The held connection, locked for one statement (see [`HeldConnection::lock`]).
#[derive(Debug)]
pub struct HeldGuard<'a> {
    slot: MutexGuard<'a, Option<PoolConnection<Postgres>>>,
}

impl HeldConnection {
    /// Holds nothing yet: the first [`HeldConnection::lock`] takes a connection from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            slot: Arc::new(Mutex::new(None)),
        }
    }

    /// The held connection, taken from the pool first if none is held.
    ///
    /// # Errors
    /// When no connection can be had from the pool (the database is down, or the pool is
    /// exhausted for its acquire timeout).
    pub async fn lock(&self) -> Result<HeldGuard<'_>, sqlx::Error> {
        let mut slot = self.slot.lock().await;
        if slot.is_none() {
            *slot = Some(self.pool.acquire().await?);
        }
        Ok(HeldGuard { slot })
    }

    /// Gives the connection back to the pool, if one is held: for a batcher gone idle
    /// ([`crate::batch::Batcher::on_idle`]), so that closing the pool does not wait for it.
    pub async fn release(&self) {
        self.slot.lock().await.take();
    }

    /// [`HeldConnection::release`] as a batcher's idle hook, with the idle time it is meant
    /// for: long against the gaps between batches under load, short against a pool's close.
    pub fn idle_hook(
        &self,
    ) -> (
        Duration,
        impl Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    ) {
        let held = self.clone();
        let hook = move || {
            let held = held.clone();
            Box::pin(async move { held.release().await })
                as Pin<Box<dyn Future<Output = ()> + Send>>
        };
        (HELD_IDLE, hook)
    }
}

/// How long a batcher keeps its [`HeldConnection`] without a batch to run.
const HELD_IDLE: Duration = Duration::from_millis(50);

impl HeldGuard<'_> {
    /// The connection to run a statement on.
    pub fn conn(&mut self) -> &mut PgConnection {
        // `lock` only hands out a guard over a filled slot, and only `release` empties it.
        self.slot.as_mut().expect("a held connection")
    }

    /// Gives the connection back to the pool, which checks it before reuse: for after an
    /// error, which may have left it broken or mid-protocol.
    pub fn release(mut self) {
        self.slot.take();
    }
}

/// Creates the database if missing, then applies pending migrations.
///
/// # Errors
/// When Postgres is unreachable or a migration fails.
pub async fn create_and_migrate(database_url: &str) -> anyhow::Result<()> {
    if !Postgres::database_exists(database_url)
        .await
        .context("cannot reach Postgres to check the database")?
    {
        tracing::info!("creating the database");
        Postgres::create_database(database_url)
            .await
            .context("failed to create the database")?;
    }
    let pool = pool(database_url, 2)?;
    MIGRATOR
        .run(&pool)
        .await
        .context("failed to apply migrations")?;
    pool.close().await;
    Ok(())
}
