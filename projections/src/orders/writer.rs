//! The `orders` projection's writer: a batch of events into the order tables of any copy
//! ([`TableSet`]), the live projector's and replay's alike.
//!
//! Writing one event at a time (a statement or two per event) is far too slow to replay
//! millions and holds the feed's fence too long for the live projector. Here a batch's events
//! are folded per order in memory, starting from the rows already in the target tables, and
//! every touched row is written once with a multi-row upsert whose columns are bound as arrays.
//! The fold mirrors a per-event application statement for statement (the same [`change_of`]
//! mapping, the same `last_sequence` guard, the same "first insert wins" for a repeated
//! `OrderCreated`, the same move of an archived order's rows to the archive tables); the replay
//! tests compare it row for row with the per-event reference in the tests crate
//! (`order_tests::per_event`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use order_domain::events::OrderCreated;
use order_domain::{OrderEvent, OrderStatus};
use sqlx::postgres::{PgArguments, PgHasArrayType, PgRow};
use sqlx::{Arguments, Encode, PgConnection, Postgres, Row, Type};
use uuid::Uuid;

use super::change_of;
use crate::copies::TableSet;
use crate::error::ProjectionError;
use crate::feed::DecodedEvent;

const ORDERS: &str = "order_read";
const ITEMS: &str = "order_item_read";
const ARCHIVED_ORDERS: &str = "order_read_archive";
const ARCHIVED_ITEMS: &str = "order_item_read_archive";

/// The live tables of the `orders` projection, parents first: the hot tables (migration 0101)
/// and the archive tables archived orders move to (migration 0500).
pub(crate) const TABLES: &[&str] = &[ORDERS, ITEMS, ARCHIVED_ORDERS, ARCHIVED_ITEMS];

/// Orders per generation of [`RowCache`]: it holds up to twice this many orders' rows (a few
/// hundred bytes each), the orders of the last several batches.
const CACHE_GENERATION: usize = 50_000;

/// The rows the last batches of a build wrote, as they are now in the shadow: an order whose
/// history spans batches (most do, as its events arrive minutes apart) is then folded on from
/// memory instead of being read back. Two generations bound it: when the newer fills up, it
/// becomes the older and the old older is dropped. Archived orders are not kept (they have no
/// hot row; a miss reads the table and finds none, as before).
#[derive(Debug, Default)]
pub struct RowCache {
    recent: HashMap<Uuid, Box<OrderState>>,
    older: HashMap<Uuid, Box<OrderState>>,
}

impl RowCache {
    fn take(&mut self, order_id: &Uuid) -> Option<Box<OrderState>> {
        self.recent
            .remove(order_id)
            .or_else(|| self.older.remove(order_id))
    }

    /// Keeps `state` as written: nothing of it is dirty any more.
    fn keep(&mut self, mut state: Box<OrderState>) {
        if state.archived_now {
            return;
        }
        if self.recent.len() >= CACHE_GENERATION {
            self.older = std::mem::take(&mut self.recent);
        }
        state.row_dirty = false;
        state.items_dirty.iter_mut().for_each(|d| *d = false);
        self.recent.insert(state.row.order_id, state);
    }
}

/// One `order_read` row.
#[derive(Debug, Clone, PartialEq)]
struct OrderRow {
    order_id: Uuid,
    order_number: String,
    tenant_id: String,
    user_id: String,
    event_id: Uuid,
    status: String,
    subtotal_cents: i64,
    fees_cents: i64,
    tax_cents: i64,
    total_cents: i64,
    currency: String,
    payment_intent_id: Option<String>,
    expires_at: DateTime<Utc>,
    event_starts_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    refunded_cents: i64,
    refunds_locked: bool,
    item_count: i32,
    ticket_count: i32,
    archived: bool,
    last_sequence: i64,
}

/// One `order_item_read` row.
#[derive(Debug, Clone, PartialEq)]
struct ItemRow {
    item_id: Uuid,
    position: i32,
    ticket_type_id: Uuid,
    quantity: i32,
    unit_price_cents: i64,
    ticket_ids: Vec<String>,
}

/// An order as the batch folds it: its rows, and which of them need writing.
#[derive(Debug, Clone)]
struct OrderState {
    row: OrderRow,
    items: Vec<ItemRow>,
    row_dirty: bool,
    items_dirty: Vec<bool>,
    /// `OrderArchived` was applied in this batch: the rows, as they were then, move to the
    /// archive tables, and later events find no hot row to update.
    archived_now: bool,
}

impl OrderState {
    /// The rows the live projector inserts for `OrderCreated`.
    fn created(e: &OrderCreated, sequence: i64) -> Self {
        let mut items = Vec::with_capacity(e.items.len());
        let mut seen = HashSet::with_capacity(e.items.len());
        for (position, item) in e.items.iter().enumerate() {
            // `ON CONFLICT (order_id, item_id) DO NOTHING`: the first of a repeated id wins,
            // and positions count every listed item.
            if seen.insert(item.id) {
                items.push(ItemRow {
                    item_id: item.id,
                    position: i32::try_from(position).unwrap_or(i32::MAX),
                    ticket_type_id: item.ticket_type_id,
                    quantity: i32::try_from(item.quantity).unwrap_or(i32::MAX),
                    unit_price_cents: item.unit_price_cents,
                    ticket_ids: Vec::new(),
                });
            }
        }
        let items_dirty = vec![true; items.len()];
        Self {
            row: OrderRow {
                order_id: e.order_id,
                order_number: e.order_number.clone(),
                tenant_id: e.tenant_id.clone(),
                user_id: e.user_id.clone(),
                event_id: e.event_id,
                status: OrderStatus::Pending.as_str().to_owned(),
                subtotal_cents: e.subtotal_cents,
                fees_cents: e.fees_cents,
                tax_cents: e.tax_cents,
                total_cents: e.total_cents,
                currency: e.currency.as_str().to_owned(),
                payment_intent_id: None,
                expires_at: e.expires_at,
                event_starts_at: e.event_starts_at,
                created_at: e.created_at,
                updated_at: e.created_at,
                paid_at: None,
                refunded_cents: 0,
                refunds_locked: false,
                item_count: i32::try_from(e.items.len()).unwrap_or(i32::MAX),
                ticket_count: 0,
                archived: false,
                last_sequence: sequence,
            },
            items,
            row_dirty: true,
            items_dirty,
            archived_now: false,
        }
    }

    /// The live projector's guarded `UPDATE`, then its ticket append or its move to the
    /// archive.
    fn apply(&mut self, sequence: i64, event: &OrderEvent) {
        if self.archived_now || self.row.last_sequence >= sequence {
            return;
        }
        let c = change_of(event);
        let row = &mut self.row;
        row.last_sequence = sequence;
        row.updated_at = c.occurred_at;
        if let Some(status) = c.status {
            status.as_str().clone_into(&mut row.status);
        }
        if let Some(at) = c.expires_at {
            row.expires_at = at;
        }
        if let Some(intent) = c.payment_intent_id {
            row.payment_intent_id = Some(intent);
        }
        if let Some(at) = c.paid_at {
            row.paid_at = Some(at);
        }
        if let Some(cents) = c.refunded_cents {
            row.refunded_cents = cents;
        }
        if let Some(locked) = c.refunds_locked {
            row.refunds_locked = locked;
        }
        row.ticket_count = row.ticket_count.saturating_add(c.tickets_added);
        row.archived |= c.archived;
        self.row_dirty = true;
        if let OrderEvent::TicketsIssued(issued) = event {
            for ticket in &issued.tickets {
                if let Some(at) = self.items.iter().position(|i| i.item_id == ticket.item_id) {
                    self.items[at].ticket_ids.push(ticket.ticket_id.clone());
                    self.items_dirty[at] = true;
                }
            }
        }
        if let OrderEvent::OrderArchived(_) = event {
            self.archived_now = true;
        }
    }
}

/// Folds `events` (feed order) into the tables of `set` and writes each touched row once.
///
/// With a `cache`, the orders it holds are taken from it rather than read back, and every order
/// the batch touched goes into it afterwards.
pub(crate) async fn apply_batch(
    conn: &mut PgConnection,
    set: TableSet,
    events: &[DecodedEvent],
    mut cache: Option<&mut RowCache>,
) -> Result<u64, ProjectionError> {
    let mut ids = Vec::new();
    let mut cached = Vec::new();
    let mut seen = HashSet::new();
    for event in events {
        // An order whose first event here is its creation has no row yet: the target tables
        // hold the rows of the events up to their checkpoint, and `OrderCreated` comes first
        // in an order's history. Only the others are read back (or found in the cache).
        if seen.insert(event.order_id) {
            if let Some(state) = cache.as_deref_mut().and_then(|c| c.take(&event.order_id)) {
                cached.push(state);
            } else if !matches!(event.event, OrderEvent::OrderCreated(_)) {
                ids.push(event.order_id);
            }
        }
    }
    // A batch of creations only (the usual live batch) reads and deletes nothing by key.
    let keyed = events
        .iter()
        .any(|e| !matches!(e.event, OrderEvent::OrderCreated(_)));
    let previous = if keyed {
        Some(plan_for_keyed_access(conn).await?)
    } else {
        None
    };
    let mut orders = load(conn, set, &ids).await?;
    orders.extend(cached.into_iter().map(|state| (state.row.order_id, state)));
    for DecodedEvent {
        order_id,
        sequence,
        event,
        ..
    } in events
    {
        match (orders.entry(*order_id), event) {
            (Entry::Vacant(slot), OrderEvent::OrderCreated(created)) => {
                slot.insert(Box::new(OrderState::created(created, *sequence)));
            }
            // `ON CONFLICT (order_id) DO NOTHING`. (After `OrderArchived` moved the row, the live
            // insert would succeed; but `OrderCreated` is an order's first event, so it never
            // follows its archiving.)
            (Entry::Occupied(_), OrderEvent::OrderCreated(_)) => {}
            (Entry::Occupied(mut state), other) => state.get_mut().apply(*sequence, other),
            // An order whose creation this projection never saw: the live `UPDATE` matches no
            // row either.
            (Entry::Vacant(_), _) => {
                tracing::debug!(order.id = %order_id, event.sequence = sequence, "event skipped: no row to update");
            }
        }
    }
    let written = write(conn, set, orders.values().map(AsRef::as_ref)).await?;
    if let Some(previous) = previous {
        restore_planner(conn, &previous).await?;
    }
    if let Some(cache) = cache {
        orders.into_values().for_each(|state| cache.keep(state));
    }
    Ok(written)
}

/// The planner settings [`plan_for_keyed_access`] changed, as they were.
#[derive(Debug)]
struct PlannerSettings {
    enable_seqscan: String,
    jit: String,
}

/// Steers the planner, for the rest of the batch, to what every statement of a batch is: a
/// few thousand rows read, upserted or deleted by key in tables of up to millions.
///
/// * No sequential scans. A shadow table is new, so it has no statistics until something
///   analyzes it (and autovacuum may be off or behind), and even with them the planner prices
///   `order_id = ANY($1)` with thousands of random keys as a full scan. That full scan of a
///   growing table made every batch slower than the last: on 1M events, the row reads alone
///   went from 0.1 s to 1.3 s per batch (the build's rate fell from about 35k to 11k events/s).
///   Index lookups keep a batch's cost proportional to the batch.
/// * No JIT: these statements run in milliseconds, but a (mis)estimated cost above
///   `jit_above_cost` compiles each one first, which costs more than it saves.
///
/// `SET LOCAL`-scoped (through `set_config(..., true)`), and put back by [`restore_planner`],
/// so the caller's later statements in the same transaction (a compare's checksums, which do
/// want full scans) plan as before. Returns the previous values.
async fn plan_for_keyed_access(
    conn: &mut PgConnection,
) -> Result<PlannerSettings, ProjectionError> {
    let row = sqlx::query(
        "SELECT current_setting('enable_seqscan') AS enable_seqscan, current_setting('jit') AS jit,
                set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(PlannerSettings {
        enable_seqscan: row.try_get("enable_seqscan")?,
        jit: row.try_get("jit")?,
    })
}

/// Puts back the settings [`plan_for_keyed_access`] changed.
async fn restore_planner(
    conn: &mut PgConnection,
    previous: &PlannerSettings,
) -> Result<(), ProjectionError> {
    sqlx::query("SELECT set_config('enable_seqscan', $1, true), set_config('jit', $2, true)")
        .bind(&previous.enable_seqscan)
        .bind(&previous.jit)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

const ORDER_COLUMNS: &str = "order_id, order_number, tenant_id, user_id, event_id, status, \
    subtotal_cents, fees_cents, tax_cents, total_cents, currency, payment_intent_id, expires_at, \
    event_starts_at, created_at, updated_at, paid_at, refunded_cents, refunds_locked, item_count, \
    ticket_count, archived, last_sequence";

/// The rows of `ids` already in the tables of `set`.
async fn load(
    conn: &mut PgConnection,
    set: TableSet,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Box<OrderState>>, ProjectionError> {
    let mut orders = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(orders);
    }
    let rows = sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS} FROM {} WHERE order_id = ANY($1)",
        set.quoted(ORDERS)
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(orders);
    }
    for row in &rows {
        let row = order_row(row)?;
        orders.insert(
            row.order_id,
            Box::new(OrderState {
                row,
                items: Vec::new(),
                row_dirty: false,
                items_dirty: Vec::new(),
                archived_now: false,
            }),
        );
    }
    let found: Vec<Uuid> = orders.keys().copied().collect();
    let items = sqlx::query(&format!(
        "SELECT order_id, item_id, position, ticket_type_id, quantity, unit_price_cents, ticket_ids
           FROM {} WHERE order_id = ANY($1) ORDER BY order_id, position",
        set.quoted(ITEMS)
    ))
    .bind(&found)
    .fetch_all(&mut *conn)
    .await?;
    for item in &items {
        let order_id: Uuid = item.try_get("order_id")?;
        if let Some(state) = orders.get_mut(&order_id) {
            state.items.push(ItemRow {
                item_id: item.try_get("item_id")?,
                position: item.try_get("position")?,
                ticket_type_id: item.try_get("ticket_type_id")?,
                quantity: item.try_get("quantity")?,
                unit_price_cents: item.try_get("unit_price_cents")?,
                ticket_ids: item.try_get("ticket_ids")?,
            });
            state.items_dirty.push(false);
        }
    }
    Ok(orders)
}

fn order_row(r: &PgRow) -> Result<OrderRow, sqlx::Error> {
    Ok(OrderRow {
        order_id: r.try_get("order_id")?,
        order_number: r.try_get("order_number")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        event_id: r.try_get("event_id")?,
        status: r.try_get("status")?,
        subtotal_cents: r.try_get("subtotal_cents")?,
        fees_cents: r.try_get("fees_cents")?,
        tax_cents: r.try_get("tax_cents")?,
        total_cents: r.try_get("total_cents")?,
        currency: r.try_get("currency")?,
        payment_intent_id: r.try_get("payment_intent_id")?,
        expires_at: r.try_get("expires_at")?,
        event_starts_at: r.try_get("event_starts_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        paid_at: r.try_get("paid_at")?,
        refunded_cents: r.try_get("refunded_cents")?,
        refunds_locked: r.try_get("refunds_locked")?,
        item_count: r.try_get("item_count")?,
        ticket_count: r.try_get("ticket_count")?,
        archived: r.try_get("archived")?,
        last_sequence: r.try_get("last_sequence")?,
    })
}

/// Column arrays for one multi-row `order_read` upsert.
#[derive(Debug, Default)]
struct OrderColumns {
    order_id: Vec<Uuid>,
    order_number: Vec<String>,
    tenant_id: Vec<String>,
    user_id: Vec<String>,
    event_id: Vec<Uuid>,
    status: Vec<String>,
    subtotal_cents: Vec<i64>,
    fees_cents: Vec<i64>,
    tax_cents: Vec<i64>,
    total_cents: Vec<i64>,
    currency: Vec<String>,
    payment_intent_id: Vec<Option<String>>,
    expires_at: Vec<DateTime<Utc>>,
    event_starts_at: Vec<Option<DateTime<Utc>>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    paid_at: Vec<Option<DateTime<Utc>>>,
    refunded_cents: Vec<i64>,
    refunds_locked: Vec<bool>,
    item_count: Vec<i32>,
    ticket_count: Vec<i32>,
    archived: Vec<bool>,
    last_sequence: Vec<i64>,
}

impl OrderColumns {
    fn push(&mut self, r: &OrderRow) {
        self.order_id.push(r.order_id);
        self.order_number.push(r.order_number.clone());
        self.tenant_id.push(r.tenant_id.clone());
        self.user_id.push(r.user_id.clone());
        self.event_id.push(r.event_id);
        self.status.push(r.status.clone());
        self.subtotal_cents.push(r.subtotal_cents);
        self.fees_cents.push(r.fees_cents);
        self.tax_cents.push(r.tax_cents);
        self.total_cents.push(r.total_cents);
        self.currency.push(r.currency.clone());
        self.payment_intent_id.push(r.payment_intent_id.clone());
        self.expires_at.push(r.expires_at);
        self.event_starts_at.push(r.event_starts_at);
        self.created_at.push(r.created_at);
        self.updated_at.push(r.updated_at);
        self.paid_at.push(r.paid_at);
        self.refunded_cents.push(r.refunded_cents);
        self.refunds_locked.push(r.refunds_locked);
        self.item_count.push(r.item_count);
        self.ticket_count.push(r.ticket_count);
        self.archived.push(r.archived);
        self.last_sequence.push(r.last_sequence);
    }
}

/// Column arrays for one multi-row `order_item_read` upsert. Ticket ids travel flattened
/// (`ticket_item[k]` is the index of the item row that `ticket_id[k]` belongs to), because a
/// Postgres array of arrays must be rectangular.
#[derive(Debug, Default)]
struct ItemColumns {
    order_id: Vec<Uuid>,
    item_id: Vec<Uuid>,
    position: Vec<i32>,
    ticket_type_id: Vec<Uuid>,
    quantity: Vec<i32>,
    unit_price_cents: Vec<i64>,
    ticket_item: Vec<i32>,
    ticket_id: Vec<String>,
}

impl ItemColumns {
    fn push(&mut self, order_id: Uuid, item: &ItemRow) {
        let index = i32::try_from(self.order_id.len()).unwrap_or(i32::MAX);
        self.order_id.push(order_id);
        self.item_id.push(item.item_id);
        self.position.push(item.position);
        self.ticket_type_id.push(item.ticket_type_id);
        self.quantity.push(item.quantity);
        self.unit_price_cents.push(item.unit_price_cents);
        for ticket in &item.ticket_ids {
            self.ticket_item.push(index);
            self.ticket_id.push(ticket.clone());
        }
    }
}

/// Writes the dirty rows, orders before their items (which reference them): the hot tables'
/// rows as upserts; for orders archived in this batch, their rows as of `OrderArchived` into
/// the archive tables (`ON CONFLICT DO NOTHING`, like the live move) and out of the hot ones.
/// Returns the number of rows written.
async fn write(
    conn: &mut PgConnection,
    set: TableSet,
    orders: impl Iterator<Item = &OrderState>,
) -> Result<u64, ProjectionError> {
    let mut rows = 0;
    for (sql, binds) in Dirty::collect(orders).statements(set)? {
        let written: i64 = sqlx::query_scalar_with(&sql, binds.0)
            .fetch_one(&mut *conn)
            .await?;
        rows += written;
    }
    Ok(u64::try_from(rows).unwrap_or_default())
}

/// One statement's bound arguments, numbered `$1`, `$2`… in the order they are added.
#[derive(Default)]
struct Binds(PgArguments);

impl Binds {
    /// Binds `values` and answers the SQL expression for them as a `ty[]` array.
    fn array<T>(&mut self, values: &[T], ty: &str) -> Result<String, ProjectionError>
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType,
    {
        self.0
            .add(values)
            .map_err(|e| ProjectionError::Handler(format!("cannot bind a {ty} column: {e}")))?;
        Ok(format!("${}::{ty}[]", self.0.len()))
    }
}

/// A batch's rows to write, by table.
#[derive(Debug, Default)]
struct Dirty {
    hot: OrderColumns,
    hot_items: ItemColumns,
    archived: OrderColumns,
    archived_items: ItemColumns,
}

impl Dirty {
    fn collect<'s>(orders: impl Iterator<Item = &'s OrderState>) -> Self {
        let mut d = Self::default();
        for state in orders {
            if state.archived_now {
                d.archived.push(&state.row);
                for item in &state.items {
                    d.archived_items.push(state.row.order_id, item);
                }
                continue;
            }
            if state.row_dirty {
                d.hot.push(&state.row);
            }
            for (item, dirty) in state.items.iter().zip(&state.items_dirty) {
                if *dirty {
                    d.hot_items.push(state.row.order_id, item);
                }
            }
        }
        d
    }

    /// The statements, in order, each answering one row: the number of rows it wrote.
    fn statements(&self, set: TableSet) -> Result<Vec<(String, Binds)>, ProjectionError> {
        let mut out = Vec::new();
        if !self.archived.order_id.is_empty() {
            for table in [ITEMS, ORDERS] {
                let mut p = Binds::default();
                let ids = p.array(&self.archived.order_id, "uuid")?;
                let sql = format!(
                    "WITH d AS (DELETE FROM {} WHERE order_id = ANY({ids}) RETURNING 1)
                     SELECT count(*) FROM d",
                    set.quoted(table)
                );
                out.push((sql, p));
            }
        }
        let upserts = [
            (ORDERS, ITEMS, &self.hot, &self.hot_items, true),
            (
                ARCHIVED_ORDERS,
                ARCHIVED_ITEMS,
                &self.archived,
                &self.archived_items,
                false,
            ),
        ];
        for (orders, items, o, i, update) in upserts {
            let mut p = Binds::default();
            let tables = (set.quoted(orders), set.quoted(items));
            if let Some(sql) = upsert_sql((&tables.0, &tables.1), o, i, update, &mut p)? {
                out.push((sql, p));
            }
        }
        Ok(out)
    }
}

/// One multi-row insert into an order table from `arrays` ([`OrderColumns::arrays`]); on a
/// conflict, every column is overwritten (`update`) or the existing row is kept.
fn orders_sql(table: &str, arrays: &[String], update: bool) -> String {
    let on_conflict = if update {
        "DO UPDATE SET
             order_number = EXCLUDED.order_number, tenant_id = EXCLUDED.tenant_id,
             user_id = EXCLUDED.user_id, event_id = EXCLUDED.event_id,
             status = EXCLUDED.status, subtotal_cents = EXCLUDED.subtotal_cents,
             fees_cents = EXCLUDED.fees_cents, tax_cents = EXCLUDED.tax_cents,
             total_cents = EXCLUDED.total_cents, currency = EXCLUDED.currency,
             payment_intent_id = EXCLUDED.payment_intent_id, expires_at = EXCLUDED.expires_at,
             event_starts_at = EXCLUDED.event_starts_at, created_at = EXCLUDED.created_at,
             updated_at = EXCLUDED.updated_at, paid_at = EXCLUDED.paid_at,
             refunded_cents = EXCLUDED.refunded_cents, refunds_locked = EXCLUDED.refunds_locked,
             item_count = EXCLUDED.item_count, ticket_count = EXCLUDED.ticket_count,
             archived = EXCLUDED.archived, last_sequence = EXCLUDED.last_sequence"
    } else {
        "DO NOTHING"
    };
    format!(
        "INSERT INTO {table} ({ORDER_COLUMNS})
         SELECT * FROM unnest({})
         ON CONFLICT (order_id) {on_conflict}",
        arrays.join(", ")
    )
}

impl OrderColumns {
    /// The columns as SQL array expressions, in [`ORDER_COLUMNS`]' order.
    fn arrays(&self, p: &mut Binds) -> Result<Vec<String>, ProjectionError> {
        Ok(vec![
            p.array(&self.order_id, "uuid")?,
            p.array(&self.order_number, "text")?,
            p.array(&self.tenant_id, "text")?,
            p.array(&self.user_id, "text")?,
            p.array(&self.event_id, "uuid")?,
            p.array(&self.status, "text")?,
            p.array(&self.subtotal_cents, "int8")?,
            p.array(&self.fees_cents, "int8")?,
            p.array(&self.tax_cents, "int8")?,
            p.array(&self.total_cents, "int8")?,
            p.array(&self.currency, "text")?,
            p.array(&self.payment_intent_id, "text")?,
            p.array(&self.expires_at, "timestamptz")?,
            p.array(&self.event_starts_at, "timestamptz")?,
            p.array(&self.created_at, "timestamptz")?,
            p.array(&self.updated_at, "timestamptz")?,
            p.array(&self.paid_at, "timestamptz")?,
            p.array(&self.refunded_cents, "int8")?,
            p.array(&self.refunds_locked, "bool")?,
            p.array(&self.item_count, "int4")?,
            p.array(&self.ticket_count, "int4")?,
            p.array(&self.archived, "bool")?,
            p.array(&self.last_sequence, "int8")?,
        ])
    }
}

/// One multi-row insert into an item table from `a` ([`ItemColumns::arrays`]), like
/// [`orders_sql`].
fn items_sql(table: &str, a: &[String], update: bool) -> String {
    let on_conflict = if update {
        "DO UPDATE SET
             position = EXCLUDED.position, ticket_type_id = EXCLUDED.ticket_type_id,
             quantity = EXCLUDED.quantity, unit_price_cents = EXCLUDED.unit_price_cents,
             ticket_ids = EXCLUDED.ticket_ids"
    } else {
        "DO NOTHING"
    };
    format!(
        "INSERT INTO {table} (order_id, item_id, position, ticket_type_id, quantity,
                              unit_price_cents, ticket_ids)
         SELECT u.order_id, u.item_id, u.position, u.ticket_type_id, u.quantity,
                u.unit_price_cents, COALESCE(t.ids, '{{}}')
           FROM unnest({}, {}, {}, {}, {}, {})
                WITH ORDINALITY AS u(order_id, item_id, position, ticket_type_id, quantity,
                                     unit_price_cents, ord)
           LEFT JOIN (SELECT x.item, array_agg(x.ticket_id ORDER BY x.ord) AS ids
                        FROM unnest({}, {}) WITH ORDINALITY AS x(item, ticket_id, ord)
                       GROUP BY x.item) t ON t.item = u.ord - 1
         ON CONFLICT (order_id, item_id) {on_conflict}",
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    )
}

impl ItemColumns {
    /// The columns as SQL array expressions, in [`items_sql`]' order.
    fn arrays(&self, p: &mut Binds) -> Result<Vec<String>, ProjectionError> {
        Ok(vec![
            p.array(&self.order_id, "uuid")?,
            p.array(&self.item_id, "uuid")?,
            p.array(&self.position, "int4")?,
            p.array(&self.ticket_type_id, "uuid")?,
            p.array(&self.quantity, "int4")?,
            p.array(&self.unit_price_cents, "int8")?,
            p.array(&self.ticket_item, "int4")?,
            p.array(&self.ticket_id, "text")?,
        ])
    }
}

/// One statement that upserts `o` into the order table and `i` into its item table (two
/// data-modifying CTEs when both have rows; the items' foreign keys are checked at its end,
/// when their orders are in) and answers the number of rows written; `None` when neither has
/// rows.
fn upsert_sql(
    tables: (&str, &str),
    o: &OrderColumns,
    i: &ItemColumns,
    update: bool,
    p: &mut Binds,
) -> Result<Option<String>, ProjectionError> {
    let mut parts = Vec::new();
    if !o.order_id.is_empty() {
        parts.push(("o", orders_sql(tables.0, &o.arrays(p)?, update)));
    }
    if !i.order_id.is_empty() {
        parts.push(("i", items_sql(tables.1, &i.arrays(p)?, update)));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let ctes: Vec<String> = parts
        .iter()
        .map(|(name, sql)| format!("{name} AS ({sql} RETURNING 1)"))
        .collect();
    let counts: Vec<String> = parts
        .iter()
        .map(|(name, _)| format!("(SELECT count(*) FROM {name})"))
        .collect();
    Ok(Some(format!(
        "WITH {} SELECT {}",
        ctes.join(", "),
        counts.join(" + ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_domain::events::{OrderConfirmed, TicketsIssued};
    use order_domain::values::{IssuedTicket, LineItem};
    use order_domain::Currency;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + min * 60, 0).unwrap_or_default()
    }

    fn created(items: &[Uuid]) -> OrderCreated {
        OrderCreated {
            order_id: Uuid::from_u128(1),
            order_number: "ORD-1".into(),
            tenant_id: "t".into(),
            user_id: "u".into(),
            event_id: Uuid::from_u128(2),
            currency: Currency::parse("USD").expect("a known currency"),
            items: items
                .iter()
                .map(|id| LineItem {
                    id: *id,
                    ticket_type_id: Uuid::from_u128(3),
                    quantity: 2,
                    unit_price_cents: 100,
                })
                .collect(),
            subtotal_cents: 200,
            fees_cents: 0,
            tax_cents: 0,
            total_cents: 200,
            expires_at: at(15),
            event_starts_at: None,
            created_at: at(0),
        }
    }

    fn state_of(id: u128) -> Box<OrderState> {
        let mut e = created(&[Uuid::from_u128(10)]);
        e.order_id = Uuid::from_u128(id);
        Box::new(OrderState::created(&e, 1))
    }

    #[test]
    fn the_row_cache_keeps_two_generations_clean_and_no_archived_order() {
        let mut cache = RowCache::default();
        cache.keep(state_of(1));
        let mut archived = state_of(2);
        archived.archived_now = true;
        cache.keep(archived);
        // A kept state was written: nothing of it is dirty any more.
        let first = cache.take(&Uuid::from_u128(1)).expect("kept");
        assert!(!first.row_dirty && first.items_dirty.iter().all(|d| !d));
        assert!(cache.take(&Uuid::from_u128(1)).is_none(), "taken out");
        assert!(
            cache.take(&Uuid::from_u128(2)).is_none(),
            "archived: no hot row"
        );

        // Filling one generation moves it to the older one; filling the next drops it.
        let generation = CACHE_GENERATION as u128;
        for id in 100..100 + generation {
            cache.keep(state_of(id));
        }
        cache.keep(state_of(1));
        assert!(
            cache.take(&Uuid::from_u128(100)).is_some(),
            "older still answers"
        );
        for id in 1_000_000..1_000_000 + generation {
            cache.keep(state_of(id));
        }
        assert!(
            cache.take(&Uuid::from_u128(101)).is_none(),
            "two generations back"
        );
        assert!(cache.take(&Uuid::from_u128(1)).is_some());
        assert!(cache.recent.len() + cache.older.len() <= 2 * CACHE_GENERATION);
    }

    #[test]
    fn a_repeated_item_id_keeps_the_first_and_counts_every_position() {
        let a = Uuid::from_u128(10);
        let b = Uuid::from_u128(11);
        let s = OrderState::created(&created(&[a, a, b]), 1);
        let got: Vec<(Uuid, i32)> = s.items.iter().map(|i| (i.item_id, i.position)).collect();
        assert_eq!(got, vec![(a, 0), (b, 2)]);
        assert_eq!(s.row.item_count, 3);
    }

    #[test]
    fn an_event_at_or_below_the_row_sequence_changes_nothing() {
        let mut s = OrderState::created(&created(&[Uuid::from_u128(10)]), 1);
        let confirm = OrderEvent::OrderConfirmed(OrderConfirmed {
            payment_intent_id: "pi".into(),
            amount_cents: 200,
            occurred_at: at(2),
        });
        s.apply(2, &confirm);
        let after = s.row.clone();
        s.apply(2, &confirm);
        s.apply(1, &confirm);
        assert_eq!(s.row, after);
        assert_eq!(s.row.status, "PAID");
        assert_eq!(s.row.paid_at, Some(at(2)));
    }

    #[test]
    fn an_archived_order_takes_no_later_event() {
        let mut s = OrderState::created(&created(&[Uuid::from_u128(10)]), 1);
        s.apply(
            2,
            &OrderEvent::OrderArchived(order_domain::events::OrderArchived {
                final_status: OrderStatus::Cancelled,
                occurred_at: at(5),
            }),
        );
        assert!(s.archived_now);
        assert!(s.row.archived);
        let archived = s.row.clone();
        s.apply(
            3,
            &OrderEvent::OrderConfirmed(OrderConfirmed {
                payment_intent_id: "pi".into(),
                amount_cents: 200,
                occurred_at: at(6),
            }),
        );
        assert_eq!(s.row, archived);
    }

    #[test]
    fn tickets_for_unknown_items_count_but_attach_nowhere() {
        let item = Uuid::from_u128(10);
        let mut s = OrderState::created(&created(&[item]), 1);
        s.apply(
            2,
            &OrderEvent::TicketsIssued(TicketsIssued {
                tickets: vec![
                    IssuedTicket {
                        item_id: item,
                        ticket_id: "t1".into(),
                    },
                    IssuedTicket {
                        item_id: Uuid::from_u128(99),
                        ticket_id: "t2".into(),
                    },
                ],
                ticket_count: 2,
                occurred_at: at(3),
            }),
        );
        assert_eq!(s.row.ticket_count, 2);
        assert_eq!(s.items[0].ticket_ids, vec!["t1".to_owned()]);
    }
}
