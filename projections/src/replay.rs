//! Replay: rebuilding a projection from the events while the service keeps serving it.
//!
//! A rebuild never touches the live tables until the very end:
//!
//! 1. [`Rebuild::start`] takes the projection's **replay lock** (a session advisory lock on a
//!    connection of its own, `replay:<name>`), so only one rebuild of a projection runs at a
//!    time; a second is refused with [`ProjectionError::RebuildRunning`], naming the pid that
//!    holds it. It then creates **shadow** copies of the live tables (see [`TableSet`]), or
//!    keeps the ones an interrupted rebuild left, with their own checkpoint `<name>@shadow`.
//! 2. [`Rebuild::build`] reads the commit-safe feed from the shadow's checkpoint and writes the
//!    shadow tables batch by batch, each batch and its checkpoint in one transaction, so an
//!    interrupted build resumes where it stopped. It chases the live projector's checkpoint and
//!    stops there: the two copies then describe the same events.
//! 3. [`Rebuild::compare`] compares them in one repeatable-read snapshot (live rows and the live
//!    checkpoint as of one instant, the shadow caught up to exactly that checkpoint): row counts
//!    and a checksum per table, and the differing rows when they disagree. The live projector
//!    keeps running meanwhile.
//! 4. [`Rebuild::swap`] swaps them in one transaction: it takes the live projector's batch lock
//!    (the same advisory lock [`crate::runner::ProjectionRunner`] takes, so the live projector
//!    pauses between two batches), catches the shadow up to the live checkpoint, renames the live
//!    tables to `…__old` (kept for [`rollback`]) and the shadow tables to the live names, and
//!    moves the checkpoints. Queries see the old rows or the new ones, never a mix.
//!
//! [`rebuild_aggregate`] rebuilds one aggregate's rows in place instead, [`rollback`] swaps
//! the previous tables back, and [`clean`] drops the copies replay keeps.
//!
//! A rebuild reads events and writes read-model tables and their checkpoints, nothing else: it
//! never moves the outbox relay's checkpoint or any job's, and it publishes and commands
//! nothing, so replaying an event never repeats its side effects.
//!
//! Projections that can be rebuilt implement [`Rebuildable`] and are listed in [`registry`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use order_domain::ORDER_AGGREGATE_TYPE;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::checkpoint::{self, Durability};
use crate::error::ProjectionError;
use crate::feed::{read_decoded_after, transaction_id, DecodedEvent, FeedPosition};
use crate::runner::lock_key;

mod aggregate;
mod build;
mod compare;
mod lock;
mod orders;
mod rollback;
mod tables;

pub use compare::{ColumnDiff, DiffKind, RowDiff, TableComparison};
pub use orders::OrdersRebuild;
use tables::Shape;
pub use tables::TableSet;

/// Events per transaction while building: large enough that most orders' rows are written once
/// per batch rather than once per event, small enough that an interrupted batch costs little
/// (a fraction of a second) and the batches in flight stay small (three of them, read ahead,
/// folding and writing: a few tens of MB).
///
/// Each order's row is written once per batch that holds some of its events, so the writes
/// shrink as batches grow. `just bench B4` (1M events, histories spread over 25k events each) on
/// 2 cores: 73k events/s at 10k per batch, 91k at 20k, 105k at 30k. (Before the row cache and
/// the decoded feed, 50k was slower than 10k: each batch then read its orders back.)
pub const DEFAULT_BATCH_SIZE: i64 = 30_000;

/// How long a swap or rollback waits for the table locks (queries in flight) before giving up,
/// rather than queueing every new query behind it.
const LOCK_TIMEOUT: &str = "10s";

/// A boxed future, so that [`Rebuildable`] can be used as a trait object in the registry.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A projection that replay can rebuild.
///
/// Its rows must depend on its events alone, and its writer must give exactly the rows its
/// live projector gives, applied to any copy of its tables.
pub trait Rebuildable: Send + Sync + fmt::Debug {
    /// The live projector's name: its checkpoint and batch-lock key.
    fn name(&self) -> &'static str;

    /// The live tables, parents before the tables that reference them.
    fn tables(&self) -> &'static [&'static str];

    /// The column that holds the aggregate id in every table, for per-aggregate rebuilds.
    fn aggregate_column(&self) -> &'static str;

    /// A writer with an empty carry, for one build or one catch-up (usually
    /// `Box::new(Carried::new(self))` over the projection's [`BatchRebuild`]).
    fn writer(&self) -> Box<dyn BatchWriter + '_>;
}

/// How a projection writes a batch into a copy of its tables, and what it keeps from one batch
/// of a build to the next.
pub trait BatchRebuild: Send + Sync {
    /// What a build keeps from one batch to the next (for `orders`: the rows the last batches
    /// wrote, so that a history spanning batches is not read back from the shadow). A build
    /// starts from the default and drops it when it stops or fails, so it only ever describes
    /// committed rows of the one copy that build writes.
    type Carry: Default + Send;

    /// Applies `events` (in feed order) to the copy `set` of the tables, inside the caller's
    /// transaction; idempotent per event like the live projector. Returns rows written.
    /// `carry`'s rows stand for the table's, and the batch's own go into it.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
        carry: &'a mut Self::Carry,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>>;
}

/// A [`BatchRebuild`] with its carry, as replay drives it: the caller must drop the writer if
/// a batch's transaction does not commit.
pub trait BatchWriter: Send {
    /// Applies `events` to the copy `set` (see [`BatchRebuild::apply_batch`]).
    fn apply_batch<'a>(
        &'a mut self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
    ) -> BoxFuture<'a, Result<u64, ProjectionError>>;
}

/// A projection's [`BatchRebuild`] together with its typed carry.
#[derive(Debug)]
pub struct Carried<'p, P: BatchRebuild> {
    projection: &'p P,
    carry: P::Carry,
}

impl<'p, P: BatchRebuild> Carried<'p, P> {
    /// A writer of `projection` with an empty carry.
    pub fn new(projection: &'p P) -> Self {
        Self {
            projection,
            carry: P::Carry::default(),
        }
    }
}

impl<P: BatchRebuild> BatchWriter for Carried<'_, P> {
    fn apply_batch<'a>(
        &'a mut self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        self.projection
            .apply_batch(conn, set, events, &mut self.carry)
    }
}

static REGISTRY: &[&dyn Rebuildable] = &[&OrdersRebuild];

/// Every projection that can be rebuilt.
pub fn registry() -> &'static [&'static dyn Rebuildable] {
    REGISTRY
}

/// The registered projection called `name`.
///
/// # Errors
/// [`ProjectionError::UnknownProjection`] when none is.
pub fn find(name: &str) -> Result<&'static dyn Rebuildable, ProjectionError> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| ProjectionError::UnknownProjection {
            name: name.to_owned(),
            known: REGISTRY
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The checkpoint consumer of a copy of the projection's tables.
pub fn consumer(projection: &str, set: TableSet) -> String {
    match set {
        TableSet::Live => projection.to_owned(),
        TableSet::Shadow => format!("{projection}@shadow"),
        TableSet::Old => format!("{projection}@old"),
        TableSet::Swap => format!("{projection}@swap"),
    }
}

/// Receives a build's progress (the CLI draws a bar with it).
pub trait ReplayProgress: Send + Sync {
    /// A build of `projection` starts, with `total` events known to be left.
    fn start(&self, projection: &str, total: u64);
    /// More events became due while building (the live projector moved on).
    fn set_total(&self, total: u64);
    /// A batch of `events` was committed.
    fn advance(&self, events: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ReplayProgress for NoProgress {
    fn start(&self, _projection: &str, _total: u64) {}
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _events: u64) {}
}

pub use aggregate::{rebuild_aggregate, AggregateRebuild};
pub use build::{Built, Comparison, Rebuild, RebuildOptions, Swapped};
pub use lock::ReplayLock;
pub use rollback::{clean, rollback, RolledBack};

#[cfg(test)]
mod tests {
    use super::aggregate::row_changes;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registry_finds_orders_and_names_the_known_ones_otherwise() {
        assert_eq!(find("orders").map(|p| p.name()).ok(), Some("orders"));
        let err = find("nope").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown projection 'nope' (known: orders)")
        );
    }

    #[test]
    fn each_copy_has_its_own_checkpoint() {
        assert_eq!(consumer("orders", TableSet::Live), "orders");
        assert_eq!(consumer("orders", TableSet::Shadow), "orders@shadow");
        assert_eq!(consumer("orders", TableSet::Old), "orders@old");
    }

    #[test]
    fn a_refused_rebuild_names_the_pid() {
        let e = ProjectionError::RebuildRunning {
            projection: "orders".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "a rebuild of orders is already running (pid 42)"
        );
    }

    #[test]
    fn changes_pair_rows_by_key() {
        let columns = vec!["id".to_owned(), "v".to_owned()];
        let keys = vec!["id".to_owned()];
        let before = vec![json!({"id": 1, "v": "a"}), json!({"id": 2, "v": "b"})];
        let after = vec![
            json!({"id": 2, "v": "b"}),
            json!({"id": 1, "v": "z"}),
            json!({"id": 3, "v": "c"}),
        ];
        let changes = row_changes("t", &columns, &keys, &before, &after);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].columns(), vec!["v"]);
        assert_eq!(changes[1].kind, DiffKind::OnlyRebuilt);
    }
}
