//! Leader election on a Postgres session advisory lock, for work that must run on exactly one
//! replica at a time (the relay; scheduled jobs reuse it under their own names).
//!
//! The lock lives on a dedicated connection detached from the pool: a session lock taken on a
//! pooled connection would follow that connection back into the pool and be "held" by whatever
//! borrows it next. Leadership is re-checked every round with a keepalive on that connection,
//! and a dead connection means leadership is lost, because Postgres releases a session lock
//! when its session ends, and another replica may already hold it. Work that must be fenced
//! (the relay's checkpoint) is written *through* [`LeaderLock::connection`], so a replica that
//! lost the lock cannot write after the fact.
//!
//! Do not run this through PgBouncer in transaction mode: session locks need a real session.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use sqlx::{Connection, PgConnection, PgPool};

/// Why leadership could not be checked or given up.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// No connection could be opened, or a lock statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The lock attempt did not answer in time.
    #[error("leader lock: {0}")]
    Timeout(String),
}

/// A statement run on the lock's own connection ([`LeaderLock::confirm_with`]).
pub type LockQuery<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// How long a keepalive or lock attempt may take before the connection is presumed dead.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One named leadership, held or not.
pub struct LeaderLock {
    name: String,
    pool: PgPool,
    conn: Option<PgConnection>,
    held: bool,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("name", &self.name)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// The text hashed into the advisory-lock key of leadership `name`.
fn lock_key(name: &str) -> String {
    format!("leader:{name}")
}

/// The backend pid currently holding leadership `name` on the pool's database, if any: for
/// status pages ("who leads?") and for operators who need to end a stuck leader's session.
///
/// # Errors
/// [`LeaderError::Database`] when the query fails.
pub async fn holder(pool: &PgPool, name: &str) -> Result<Option<i32>, LeaderError> {
    // A bigint advisory key shows in pg_locks split into classid (high half) and objid (low
    // half), with objsubid = 1.
    let pid = sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
    )
    .bind(lock_key(name))
    .fetch_optional(pool)
    .await?;
    Ok(pid)
}

impl LeaderLock {
    /// A lock named `name`; replicas using the same name (on the same database) elect one
    /// leader. Nothing is taken until [`Self::ensure`].
    pub fn new(pool: PgPool, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pool,
            conn: None,
            held: false,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the last [`Self::ensure`] found this instance leading.
    pub fn is_leader(&self) -> bool {
        self.held
    }

    /// Confirms leadership (keepalive on the lock's connection) or tries to take it. Returns
    /// whether this instance leads now. A failed keepalive drops the connection and reports
    /// `false`: another replica may take over at once, so this one must stop.
    ///
    /// # Errors
    /// [`LeaderError::Database`] when no connection can be opened or the lock query fails.
    pub async fn ensure(&mut self) -> Result<bool, LeaderError> {
        if self.pool.is_closed() {
            // The application is shutting down (or a test is tearing its database down): the
            // detached connection would otherwise outlive the pool and keep the database busy.
            if self.conn.is_some() {
                self.release().await?;
            }
            return Ok(false);
        }
        if self.held {
            let alive = match self.conn.as_mut() {
                Some(conn) => matches!(
                    tokio::time::timeout(
                        CHECK_TIMEOUT,
                        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *conn)
                    )
                    .await,
                    Ok(Ok(1))
                ),
                None => false,
            };
            if alive {
                return Ok(true);
            }
            tracing::warn!(leader = %self.name, "lost the leader lock's connection; standing down");
            self.lost();
            return Ok(false);
        }
        let key = self.key();
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => {
                let mut conn = self.pool.acquire().await?.detach();
                sqlx::query("SELECT set_config('application_name', $1, false)")
                    .bind(format!("leader:{}", self.name))
                    .execute(&mut conn)
                    .await?;
                self.conn.insert(conn)
            }
        };
        let attempt = tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut *conn),
        )
        .await;
        match attempt {
            Ok(Ok(held)) => {
                self.held = held;
                if held {
                    tracing::info!(leader = %self.name, "took the leader lock");
                }
                metrics::gauge!("leader_is_leader", "lock" => self.name.clone()).set(if held {
                    1.0
                } else {
                    0.0
                });
                Ok(held)
            }
            Ok(Err(e)) => {
                self.lost();
                Err(e.into())
            }
            Err(_) => {
                self.lost();
                Err(LeaderError::Timeout(format!(
                    "lock attempt for {} took longer than {CHECK_TIMEOUT:?}",
                    self.name
                )))
            }
        }
    }

    /// What [`LeaderLock::ensure`] does for a leader, with `query` in place of its `SELECT 1`:
    /// any statement that succeeds on the lock's own connection proves the session, and with
    /// it the lock, is still there. A leader that needs a statement each round anyway saves a
    /// round trip this way.
    ///
    /// `Some` with the query's result while leading. `None` when this replica does not lead,
    /// and, as with the keepalive, when the query fails or takes longer than the check's
    /// limit: leadership is given up (the connection is dropped with its session) and the next
    /// [`LeaderLock::ensure`] tries again from scratch. Also `None`, with leadership given up,
    /// once the pool is closed.
    pub async fn confirm_with<T, E: std::fmt::Display>(
        &mut self,
        query: impl for<'c> FnOnce(&'c mut PgConnection) -> LockQuery<'c, T, E>,
    ) -> Option<T> {
        self.confirm_within(CHECK_TIMEOUT, query).await
    }

    /// [`LeaderLock::confirm_with`] for a query that may take up to `limit`, such as a read
    /// of a batch. A query whose failures need not all cost the lead (the server refusing a
    /// statement on a live session: a statement timeout, a cancel) returns those inside its
    /// `Ok` value and only the others (a connection gone) as its error. A query given up at
    /// `limit` leaves its backend running, with the lock, until the server notices the closed
    /// socket: `limit` is for a connection that does not answer at all.
    pub async fn confirm_within<T, E: std::fmt::Display>(
        &mut self,
        limit: Duration,
        query: impl for<'c> FnOnce(&'c mut PgConnection) -> LockQuery<'c, T, E>,
    ) -> Option<T> {
        if self.pool.is_closed() {
            // The detached connection must not outlive the pool: dropping it ends the session
            // and its lock (`ensure` unlocks first; there is no time for a statement here).
            if self.conn.is_some() {
                self.lost();
            }
            return None;
        }
        if !self.held {
            return None;
        }
        let conn = self.conn.as_mut()?;
        match tokio::time::timeout(limit, query(conn)).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => {
                tracing::warn!(leader = %self.name, error = %e, "the leader lock's connection failed; standing down")
            }
            Err(_) => {
                tracing::warn!(leader = %self.name, "the leader lock's connection did not answer in {limit:?}; standing down")
            }
        }
        self.lost();
        None
    }

    /// The lock-holding connection, while leading: writes that must not happen after losing
    /// leadership go through it.
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        if self.held {
            self.conn.as_mut()
        } else {
            None
        }
    }

    /// Gives up leadership and closes the connection, so a standby can take over at once
    /// instead of after the session times out.
    ///
    /// # Errors
    /// When the unlock or close fails; the lock is released with the session either way.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let was_held = std::mem::take(&mut self.held);
        if let Some(mut conn) = self.conn.take() {
            if was_held {
                sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .bind(self.key())
                    .execute(&mut conn)
                    .await?;
                tracing::info!(leader = %self.name, "released the leader lock");
            }
            conn.close().await?;
        }
        metrics::gauge!("leader_is_leader", "lock" => self.name.clone()).set(0.0);
        Ok(())
    }

    fn key(&self) -> String {
        lock_key(&self.name)
    }

    fn lost(&mut self) {
        self.held = false;
        // Dropping the connection closes its socket; the server ends the session and with it
        // any lock the session still had.
        self.conn = None;
        metrics::gauge!("leader_is_leader", "lock" => self.name.clone()).set(0.0);
    }
}
