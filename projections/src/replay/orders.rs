//! The `orders` projection as replay rebuilds it: the live projector's own writer
//! ([`crate::orders::writer`]) run into replay's copies of the tables, with its row cache
//! carried from one batch to the next.

use sqlx::PgConnection;

use super::tables::TableSet;
use super::{BoxFuture, Carry, Rebuildable};
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

    fn carry(&self) -> Carry {
        Box::new(RowCache::default())
    }

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        set: TableSet,
        events: &'a [DecodedEvent],
        carry: Option<&'a mut Carry>,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        let cache = carry.and_then(|c| c.downcast_mut::<RowCache>());
        Box::pin(async move {
            let written = apply_batch(conn, set, events, cache, None).await?;
            Ok(written.rows)
        })
    }
}
