//! By-id order reads (`GET /internal/orders/{orderId}`), batched across concurrent requests.
//!
//! payment-service reads orders by id far more than anything else, and each read is one
//! primary-key lookup whose cost is nearly all per statement (see [`order_projections::postgres::batch`]). So the
//! lookups of concurrent requests go to the hot read model as one `= ANY($1)` statement, one
//! batch at a time. Anything that batch cannot answer exactly as
//! [`order_projections::queries::order`] would goes to that function itself, on its own:
//! - an id the hot table lacks (the archive, or no order at all);
//! - an order of another tenant than the caller's (the tenant rule stays in one place);
//! - every id of a batch whose statement failed, so each caller gets its own error.
//!
//! The answer is the same as the unbatched lookup's: both read the latest committed row, and
//! a `minVersion` read polls through here as before.

use std::collections::HashMap;

use order_projections::postgres::batch::{self, BatchFuture, Batcher};
use order_projections::postgres::HeldConnection;
use order_projections::queries;
use order_projections::view::OrderView;
use order_projections::ProjectionError;
use sqlx::PgPool;
use uuid::Uuid;

/// Most ids looked up by one statement.
const MAX_BATCH: usize = 128;

/// By-id order reads over the service's pool. Cheap to clone (clones share the batcher).
#[derive(Debug, Clone)]
pub struct OrderLookup {
    pool: PgPool,
    batcher: Batcher<Uuid, Option<OrderView>>,
}

impl OrderLookup {
    /// Lookups over `pool`, whose database holds the read models.
    pub fn new(pool: PgPool) -> Self {
        let held = HeldConnection::new(pool.clone());
        let (idle, release) = batch::idle_hook(&held);
        let batcher = Batcher::new(MAX_BATCH, "order_lookup_batch_size", move |ids| {
            Box::pin(hot_batch(held.clone(), ids)) as BatchFuture<_>
        })
        .on_idle(idle, release);
        Self { pool, batcher }
    }

    /// One order, or `None` when it does not exist or belongs to another tenant than `tenant`:
    /// exactly [`queries::order`]'s answer.
    ///
    /// # Errors
    /// As for [`queries::order`].
    pub async fn order(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<OrderView>, ProjectionError> {
        if let Some(Some(view)) = self.batcher.submit(id).await {
            if tenant.is_none_or(|t| view.tenant_id == t) {
                return Ok(Some(view));
            }
        }
        queries::order(&self.pool, id, tenant).await
    }

    /// Batch statements sent so far.
    pub fn batches(&self) -> u64 {
        self.batcher.batches()
    }
}

/// The hot rows of a batch's ids, read on the batcher's own connection
/// ([`HeldConnection`]), one answer per id in order (an id listed twice gets the row
/// twice). A failed statement answers `None` for every id, which sends each caller to the
/// unbatched lookup.
async fn hot_batch(held: HeldConnection, ids: Vec<Uuid>) -> Vec<Option<OrderView>> {
    let found = match held.lock().await {
        Ok(mut conn) => {
            let found = queries::hot_orders(conn.conn(), &ids).await;
            if found.is_ok() {
                conn.keep();
            }
            found
        }
        Err(e) => Err(e.into()),
    };
    match found {
        Ok(views) => {
            let found: HashMap<Uuid, OrderView> = views.into_iter().map(|v| (v.id, v)).collect();
            ids.iter().map(|id| found.get(id).cloned()).collect()
        }
        Err(e) => {
            tracing::debug!(error = %e, ids = ids.len(), "batched order lookup failed; looking up each order on its own");
            vec![None; ids.len()]
        }
    }
}
