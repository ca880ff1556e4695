//! The read side's settings: how the projectors keep the read model up to date, and how long a
//! query waits for it.

use std::time::Duration;

use clap::Args;

/// The projectors' pace and the reads' patience.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Read model")]
pub struct ReadModelSettings {
    /// Longest wait, in ms, of a query with `minVersion` for the read model to reach that
    /// version before answering 503 with Retry-After.
    #[arg(
        id = "read_wait_ms",
        long = "read-wait-ms",
        env = "READ_WAIT_MS",
        value_name = "READ_WAIT_MS",
        default_value_t = 2_000
    )]
    pub wait_ms: u64,

    /// Largest replication lag, in ms, at which the standby of READ_DATABASE_URL still serves
    /// reads (at least 1000); beyond it the primary answers them until the standby catches up.
    #[arg(
        id = "read_max_lag_ms",
        long = "read-max-lag-ms",
        env = "READ_MAX_LAG_MS",
        value_name = "READ_MAX_LAG_MS",
        default_value_t = 5_000
    )]
    pub max_lag_ms: u64,

    /// Milliseconds between two polls of the feed by an idle projector. Commits made by this
    /// replica wake it at once; this bounds the read-model lag of commits made by other
    /// replicas.
    #[arg(
        id = "projection_poll_ms",
        long = "projection-poll-ms",
        env = "PROJECTION_POLL_MS",
        value_name = "PROJECTION_POLL_MS",
        default_value_t = 50
    )]
    pub projection_poll_ms: u64,

    /// Milliseconds a projector waits, after applying a batch while more commits landed, before
    /// its next batch, so that those commits are applied together instead of a transaction
    /// each. A bound on the read-model lag it adds under load; a lone commit is applied at once.
    #[arg(
        id = "projection_gather_ms",
        long = "projection-gather-ms",
        env = "PROJECTION_GATHER_MS",
        value_name = "PROJECTION_GATHER_MS",
        default_value_t = 5
    )]
    pub projection_gather_ms: u64,

    /// Events a projector applies per transaction.
    #[arg(
        id = "projection_batch_size",
        long = "projection-batch-size",
        env = "PROJECTION_BATCH_SIZE",
        value_name = "PROJECTION_BATCH_SIZE",
        default_value_t = 500
    )]
    pub projection_batch_size: i64,
}

impl ReadModelSettings {
    /// The longest wait for the read model.
    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms)
    }

    /// The largest lag of a standby that serves reads.
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms)
    }

    /// A projector's gather pause under load.
    pub fn projection_gather(&self) -> Duration {
        Duration::from_millis(self.projection_gather_ms)
    }

    /// An idle projector's poll interval, never zero.
    pub fn projection_poll(&self) -> Duration {
        Duration::from_millis(self.projection_poll_ms.max(1))
    }
}
