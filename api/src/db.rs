//! Postgres: the pool, creating the database when missing, and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// Every migration in `migrations/`, compiled into the binary so deploys cannot drift.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connects a pool. Acquiring fails after 5 s instead of hanging, so a database outage answers
/// 503 quickly.
///
/// Connections are not pinged before each use (sqlx's default): the ping is a round trip per
/// query, a third of a create's database time. A connection broken by a database restart
/// fails its next query instead; that request answers 503 (an outage, see `app::AppError::from_sqlx`),
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
