//! The `orders` projection as replay rebuilds it: the live projector's own writer
//! (`crate::orders::writer`) run into replay's copies of the tables, with its row cache
//! carried from one batch to the next.

use sqlx::PgConnection;

use super::tables::TableSet;
use super::{BatchRebuild, BatchWriter, BoxFuture, Carried, Rebuildable};
use crate::error::ProjectionError;
use crate::feed::DecodedEvent;
use crate::orders::writer::{apply_batch, RowCache, TABLES};
use crate::orders::ORDERS_PROJECTION;

/// Replays the `orders` projection (`order_read`, `order_item_read` and their archives).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersRebuild;

impl Rebuildable for OrdersRebuild {
    fn name(&self) -> &'static str {
        ORDERS_PROJECTION
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    fn aggregate_column(&self) -> &'static str {
        "order_id"
    }

    fn writer(&self) -> Box<dyn BatchWriter + '_> {
        Box::new(Carried::new(self))
    }
}

impl BatchRebuild for OrdersRebuild {
    /// The rows the last batches of a build wrote.
    type Carry = RowCache;

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
        carry: &'a mut RowCache,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        Box::pin(apply_batch(conn, set, events, Some(carry)))
    }
}
