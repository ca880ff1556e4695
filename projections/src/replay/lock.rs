//! The replay lock: one rebuild of a projection at a time, across replicas.

use super::*;

/// A projection's replay lock: a session advisory lock held by a connection of its own, so it
/// lasts exactly as long as the rebuild's process (a crash or a kill closes the connection and
/// frees it) and never leaks into a pooled connection.
#[derive(Debug)]
pub struct ReplayLock {
    conn: PgConnection,
    projection: String,
}

impl ReplayLock {
    /// Takes the replay lock of `projection` without waiting.
    ///
    /// # Errors
    /// [`ProjectionError::RebuildRunning`] when another session holds it;
    /// [`ProjectionError::Database`] when Postgres cannot be reached.
    pub async fn acquire(pool: &PgPool, projection: &str) -> Result<Self, ProjectionError> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let key = replay_lock_key(projection);
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            let pid: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_locks
                  WHERE locktype = 'advisory' AND granted AND objsubid = 1
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND ((classid::int8 << 32) | objid::int8) = hashtextextended($1, 0)
                  LIMIT 1",
            )
            .bind(&key)
            .fetch_optional(&mut conn)
            .await?;
            let _ = conn.close().await;
            return Err(ProjectionError::RebuildRunning {
                projection: projection.to_owned(),
                pid,
            });
        }
        Ok(Self {
            conn,
            projection: projection.to_owned(),
        })
    }

    /// The Postgres backend pid holding the lock (what a refused rebuild reports).
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the lock's connection is gone.
    pub async fn pid(&mut self) -> Result<i32, ProjectionError> {
        Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Releases the lock and closes its connection.
    ///
    /// # Errors
    /// [`ProjectionError::Database`] when the connection fails; the server frees the lock
    /// when the connection ends anyway.
    pub async fn release(mut self) -> Result<(), ProjectionError> {
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(replay_lock_key(&self.projection))
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }
}

fn replay_lock_key(projection: &str) -> String {
    format!("replay:{projection}")
}
