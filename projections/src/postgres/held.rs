//! One pool connection kept across the statements of a single long-lived user: the API's
//! batchers, which run one statement at a time for as long as the service runs, and the relay's
//! feed reads while it has a backlog.
//!
//! sqlx 0.8 checks every connection it takes back into the pool with a round trip (a `Sync`,
//! and a wait for Postgres's `ReadyForQuery`: `Floating::return_to_pool`), so a statement run
//! on the pool costs two round trips and two wake-ups of its backend. Held, the connection
//! skips that check, and the same backend serves every statement.
//!
//! The connection is out of its slot while a statement runs on it, and goes back only when
//! its user says the statement finished ([`HeldGuard::keep`]). After a failed statement, and
//! after one cut short (its future dropped half-way through the protocol, as when a task is
//! aborted), it goes back to the pool instead, which checks it or closes it; the next statement
//! takes another. It counts against the pool's size like any connection in use, so its user
//! gives it back whenever it goes idle ([`HeldConnection::release`]): `PgPool::close` waits
//! for every connection in use.
//!
//! Depends on sqlx and tokio only.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard};

/// The kept connection, shared by clones (see the module doc).
#[derive(Debug, Clone)]
pub struct HeldConnection {
    pool: PgPool,
    slot: Arc<Mutex<Option<PoolConnection<Postgres>>>>,
}

/// The held connection, taken for one statement (see [`HeldConnection::lock`]). Dropped
/// without [`HeldGuard::keep`], its connection goes back to the pool.
#[derive(Debug)]
pub struct HeldGuard<'a> {
    slot: MutexGuard<'a, Option<PoolConnection<Postgres>>>,
    conn: PoolConnection<Postgres>,
}

impl HeldConnection {
    /// Holds nothing yet: the first [`HeldConnection::lock`] takes a connection from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            slot: Arc::new(Mutex::new(None)),
        }
    }

    /// The held connection, taken from the pool first if none is held; other users wait until
    /// this guard is gone.
    ///
    /// # Errors
    /// When no connection can be had from the pool (the database is down, or the pool is
    /// exhausted for its acquire timeout).
    pub async fn lock(&self) -> Result<HeldGuard<'_>, sqlx::Error> {
        let mut slot = self.slot.lock().await;
        let conn = match slot.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(HeldGuard { slot, conn })
    }

    /// Gives the connection back to the pool, if one is held: for a user gone idle, so that
    /// closing the pool does not wait for it.
    pub async fn release(&self) {
        self.slot.lock().await.take();
    }
}

impl HeldGuard<'_> {
    /// The connection to run a statement on.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Keeps the connection for the next statement: call it once the statement has finished
    /// without error.
    pub fn keep(mut self) {
        *self.slot = Some(self.conn);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn backend(guard: &mut HeldGuard<'_>) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(guard.conn())
            .await
            .expect("pid")
    }

    #[sqlx::test(migrations = false)]
    async fn a_kept_connection_serves_the_next_statement_and_an_unkept_one_goes_back(pool: PgPool) {
        let held = HeldConnection::new(pool.clone());
        let mut guard = held.lock().await.unwrap();
        let first = backend(&mut guard).await;
        guard.keep();
        assert_eq!(pool.size() - pool.num_idle() as u32, 1, "kept, so in use");
        let mut guard = held.lock().await.unwrap();
        assert_eq!(backend(&mut guard).await, first, "the same backend again");

        // A statement cut short mid-protocol: its guard is dropped unkept.
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            sqlx::query("SELECT pg_sleep(1)").execute(guard.conn()),
        )
        .await;
        assert!(cut.is_err(), "the sleep was cut short");
        drop(guard);
        let mut guard = held.lock().await.unwrap();
        assert_ne!(
            backend(&mut guard).await,
            first,
            "not the connection left half-way through its statement"
        );
        guard.keep();

        held.release().await;
        tokio::time::timeout(Duration::from_secs(10), pool.close())
            .await
            .expect("released, so the pool closes at once");
    }
}
