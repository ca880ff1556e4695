//! One pool connection kept across the statements of a single long-lived user: the API's
//! batchers, which run one statement at a time for as long as the service runs, the creates
//! sent alone (one at a time by construction), the relay's feed reads while it has a backlog,
//! and a projection runner's batches (one transaction each) while they find work.
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
//! takes another. It counts against the pool's size like any connection in use, so it goes
//! back whenever its user is idle: `PgPool::close` waits for every connection in use. Either
//! the user says so ([`HeldConnection::release`]), or the connection is made to go back by
//! itself after a spell without a statement ([`HeldConnection::released_when_idle`]), for a
//! user with no moment of its own at which to say it.
//!
//! Depends on sqlx and tokio only.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard};

/// The kept connection, shared by clones (see the module doc).
#[derive(Debug, Clone)]
pub struct HeldConnection {
    pool: PgPool,
    slot: Arc<Mutex<Slot>>,
    /// Set: the connection goes back to the pool once it has not been kept for this long.
    idle: Option<Duration>,
}

/// What the lock guards.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<PoolConnection<Postgres>>,
    /// Statements kept so far: the idle watch compares it across its wait.
    kept: u64,
    /// Whether an idle watch is running (at most one is).
    watched: bool,
}

/// The held connection, taken for one statement or one transaction (see
/// [`HeldConnection::lock`]). Dropped
/// without [`HeldGuard::keep`], its connection goes back to the pool.
#[derive(Debug)]
pub struct HeldGuard<'a> {
    slot: MutexGuard<'a, Slot>,
    conn: PoolConnection<Postgres>,
    owner: &'a HeldConnection,
}

impl HeldConnection {
    /// Holds nothing yet: the first [`HeldConnection::lock`] takes a connection from `pool`.
    /// Its user gives it back with [`HeldConnection::release`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            slot: Arc::default(),
            idle: None,
        }
    }

    /// Like [`HeldConnection::new`], but the connection goes back to the pool by itself once
    /// no statement has been kept on it for between `idle` and twice that. A watch task runs
    /// from the first statement kept until it has given the connection back (or found it gone).
    pub fn released_when_idle(pool: PgPool, idle: Duration) -> Self {
        Self {
            idle: Some(idle),
            ..Self::new(pool)
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
        if self.pool.is_closed() {
            // As a pool checkout would answer: nothing new starts once closing has begun.
            slot.conn = None;
            return Err(sqlx::Error::PoolClosed);
        }
        let conn = match slot.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(HeldGuard {
            slot,
            conn,
            owner: self,
        })
    }

    /// Gives the connection back to the pool, if one is held: for a user gone idle, so that
    /// closing the pool does not wait for it.
    pub async fn release(&self) {
        self.slot.lock().await.conn.take();
    }
}

impl HeldGuard<'_> {
    /// The connection to run a statement on.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Keeps the connection for the next statement: call it once Postgres has answered the
    /// statement to its end (an error answer included, outside an explicit transaction), not
    /// after one cut short. A connection [released when idle](HeldConnection::released_when_idle)
    /// that would need a watch started outside a tokio runtime goes back to the pool instead.
    pub fn keep(self) {
        let Self {
            mut slot,
            conn,
            owner,
        } = self;
        if let Some(idle) = owner.idle.filter(|_| !slot.watched) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            slot.watched = true;
            runtime.spawn(release_when_idle(
                Arc::downgrade(&owner.slot),
                idle,
                slot.kept + 1,
            ));
        }
        slot.conn = Some(conn);
        slot.kept += 1;
    }
}

/// The idle watch: every `idle`, gives the connection back if nothing was kept since the last
/// look (`seen` statements kept), and ends. Ends at its next look once every
/// [`HeldConnection`] clone is gone (the last one dropped the connection). Decides under the
/// lock, as `keep` does, so a connection kept while the watch ends starts a new one.
async fn release_when_idle(slot: Weak<Mutex<Slot>>, idle: Duration, mut seen: u64) {
    loop {
        tokio::time::sleep(idle).await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let mut slot = slot.lock().await;
        if slot.kept == seen {
            slot.conn = None;
            slot.watched = false;
            return;
        }
        seen = slot.kept;
    }
}

#[cfg(test)]
mod tests {
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

    fn in_use(pool: &PgPool) -> u32 {
        pool.size() - pool.num_idle() as u32
    }

    /// Waits up to 10 s for the pool to have no connection in use.
    async fn all_back(pool: &PgPool) -> bool {
        for _ in 0..200 {
            if in_use(pool) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[sqlx::test(migrations = false)]
    async fn a_connection_released_when_idle_serves_a_run_of_statements_then_goes_back_by_itself(
        pool: PgPool,
    ) {
        let held = HeldConnection::released_when_idle(pool.clone(), Duration::from_millis(500));
        let mut first = None;
        for _ in 0..5 {
            let mut guard = held.lock().await.unwrap();
            let pid = backend(&mut guard).await;
            assert_eq!(*first.get_or_insert(pid), pid, "one backend for the run");
            guard.keep();
        }
        assert_eq!(in_use(&pool), 1, "kept between statements");
        assert!(all_back(&pool).await, "given back once idle");

        // Used again, it is watched again: a second idle spell gives it back too.
        let mut guard = held.lock().await.unwrap();
        backend(&mut guard).await;
        guard.keep();
        assert_eq!(in_use(&pool), 1, "kept again");
        assert!(all_back(&pool).await, "given back after the second spell");
        tokio::time::timeout(Duration::from_secs(10), pool.close())
            .await
            .expect("nothing held, so the pool closes at once");
    }

    #[sqlx::test(migrations = false)]
    async fn a_watched_connection_goes_back_when_its_owner_is_dropped(pool: PgPool) {
        let held = HeldConnection::released_when_idle(pool.clone(), Duration::from_secs(3600));
        let mut guard = held.lock().await.unwrap();
        backend(&mut guard).await;
        guard.keep();
        assert_eq!(in_use(&pool), 1, "kept");
        drop(held);
        assert!(
            all_back(&pool).await,
            "the watch does not keep the connection alive"
        );
    }

    #[sqlx::test(migrations = false)]
    async fn once_the_pool_is_closing_a_held_connection_is_given_back_not_used(pool: PgPool) {
        let held = HeldConnection::released_when_idle(pool.clone(), Duration::from_secs(3600));
        let mut guard = held.lock().await.unwrap();
        backend(&mut guard).await;
        guard.keep();
        let closing = tokio::spawn({
            let pool = pool.clone();
            async move { pool.close().await }
        });
        while !pool.is_closed() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(held.lock().await, Err(sqlx::Error::PoolClosed)));
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect("the held connection went back, so the close ends")
            .unwrap();
    }
}
