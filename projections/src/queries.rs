//! Queries over the order read models (migration 0101): the data behind the four `/internal`
//! routes of docs/contract.md §3.2, already in their wire shapes.
//!
//! Every lookup takes an optional tenant: a caller scoped to a tenant sees another tenant's order
//! as absent, never as forbidden, so ids of other tenants cannot be probed.
//!
//! `validationErrors` of `for-payment` uses these stable codes, in this order:
//! - `ORDER_EXPIRED`: the order is EXPIRED, or still open (PENDING/RESERVED) past its expiry.
//! - `INVALID_STATUS`: the status is CANCELLED, EXPIRED or FAILED (not PENDING or RESERVED, and
//!   not a paid status, which has its own code).
//! - `ALREADY_PAID`: the order is PAID, PARTIALLY_REFUNDED or REFUNDED.
//! - `ZERO_TOTAL`: `totalCents` is zero (or less): there is nothing to charge.
//! - `NO_ITEMS`: the order has no line items.

use chrono::{DateTime, TimeDelta, Utc};
use order_domain::OrderStatus;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::view::{rfc3339, OrderStatusSchema, OrderView};

/// One line item with the tickets issued against it (`/items`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemView {
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub ticket_ids: Vec<String>,
}

/// An order with its items, read in one statement so both come from the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDetail {
    pub order: OrderView,
    pub items: Vec<OrderItemView>,
}

const ORDER_COLUMNS: &str =
    "o.order_id, o.order_number, o.tenant_id, o.user_id, o.event_id, o.status,
       o.subtotal_cents, o.fees_cents, o.tax_cents, o.total_cents, o.currency,
       o.payment_intent_id, o.expires_at, o.created_at, o.updated_at, o.paid_at,
       o.refunded_cents, o.refunds_locked, o.ticket_count, o.last_sequence";

/// Where the by-id lookups look, in turn: the hot tables, then the archive (migration 0500),
/// so an archived order still answers while a live one, what callers ask for nearly always,
/// costs one lookup. The projector keeps an order in one of them, and an order only ever moves
/// from the hot tables to the archive, so one moved between the two lookups is found by the
/// second; should both hold it (a rebuild that left the archive behind), the hot rows answer.
/// Listings read the hot table only.
const HOT_THEN_ARCHIVE: [(&str, &str); 2] = [
    ("order_read", "order_item_read"),
    ("order_read_archive", "order_item_read_archive"),
];

/// `order_read` as stored; converted to [`OrderView`] with checked narrowing.
#[derive(Debug, FromRow)]
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
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    refunded_cents: i64,
    refunds_locked: bool,
    ticket_count: i32,
    last_sequence: i64,
}

impl TryFrom<OrderRow> for OrderView {
    type Error = ProjectionError;

    fn try_from(r: OrderRow) -> Result<Self, Self::Error> {
        let invalid =
            |what: &str| ProjectionError::InvalidRow(format!("order {}: {what}", r.order_id));
        Ok(Self {
            status: OrderStatus::parse(&r.status).ok_or_else(|| invalid("unknown status"))?,
            ticket_count: u32::try_from(r.ticket_count)
                .map_err(|_| invalid("negative ticket count"))?,
            version: u64::try_from(r.last_sequence).map_err(|_| invalid("negative sequence"))?,
            id: r.order_id,
            order_number: r.order_number,
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            event_id: r.event_id,
            subtotal_cents: r.subtotal_cents,
            fees_cents: r.fees_cents,
            tax_cents: r.tax_cents,
            total_cents: r.total_cents,
            currency: r.currency,
            payment_intent_id: r.payment_intent_id,
            expires_at: r.expires_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            paid_at: r.paid_at,
            refunded_cents: r.refunded_cents,
            refunds_locked: r.refunds_locked,
        })
    }
}

fn order_of(row: &PgRow) -> Result<OrderView, ProjectionError> {
    OrderRow::from_row(row)?.try_into()
}

/// One order, or `None` when it does not exist (or belongs to another tenant than `tenant`).
///
/// Looks in the hot table, then, on a miss, in the archive (migration 0500): an archived order
/// still answers, while a live one, what callers ask for nearly always, costs one lookup; an
/// order in both (a rebuild that left the archive behind) answers from the hot table. (Both
/// tables in one statement, a union, measured 9.5–9.9k tps in pgbench at 32 clients, against
/// 12.4–12.8k on the hot table alone and 14.5–16.1k for pgbench's own primary-key select.)
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails; [`ProjectionError::InvalidRow`] for a
/// row this code cannot represent.
#[tracing::instrument(name = "query.order", skip_all, fields(order.id = %id))]
pub async fn order<'e>(
    executor: impl PgExecutor<'e> + Copy,
    id: Uuid,
    tenant: Option<&str>,
) -> Result<Option<OrderView>, ProjectionError> {
    for (orders, _) in HOT_THEN_ARCHIVE {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM {orders} o
              WHERE o.order_id = $1 AND ($2::text IS NULL OR o.tenant_id = $2)"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(tenant)
            .fetch_optional(executor)
            .await?;
        if let Some(row) = row {
            return order_of(&row).map(Some);
        }
    }
    Ok(None)
}

/// The orders among `ids` that the hot table holds, whatever their tenant, in no particular
/// order: [`order`]'s first lookup for many ids in one statement, for callers that batch
/// concurrent reads. An id it does not return, or one whose tenant the caller must not see,
/// still needs [`order`] (the archive, and the tenant rule).
///
/// # Errors
/// As for [`order`].
#[tracing::instrument(name = "query.hot_orders", skip_all, fields(orders = ids.len()))]
pub async fn hot_orders<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<OrderView>, ProjectionError> {
    let (orders, _) = HOT_THEN_ARCHIVE[0];
    let sql = format!("SELECT {ORDER_COLUMNS} FROM {orders} o WHERE o.order_id = ANY($1)");
    let rows = sqlx::query(&sql).bind(ids).fetch_all(executor).await?;
    rows.iter().map(order_of).collect()
}

/// `order_item_read` columns as the join returns them (all null when the order has no items).
#[derive(Debug, FromRow)]
struct ItemRow {
    item_id: Option<Uuid>,
    ticket_type_id: Option<Uuid>,
    quantity: Option<i32>,
    unit_price_cents: Option<i64>,
    ticket_ids: Option<Vec<String>>,
}

/// One order with its line items in the order they were placed; `None` as for [`order`],
/// looked up as [`order`] looks.
///
/// # Errors
/// As for [`order`].
#[tracing::instrument(name = "query.order_detail", skip_all, fields(order.id = %id))]
pub async fn order_detail<'e>(
    executor: impl PgExecutor<'e> + Copy,
    id: Uuid,
    tenant: Option<&str>,
) -> Result<Option<OrderDetail>, ProjectionError> {
    for (orders, items) in HOT_THEN_ARCHIVE {
        let sql = format!(
            "SELECT {ORDER_COLUMNS},
                    i.item_id, i.ticket_type_id, i.quantity, i.unit_price_cents, i.ticket_ids
               FROM {orders} o
               LEFT JOIN {items} i ON i.order_id = o.order_id
              WHERE o.order_id = $1 AND ($2::text IS NULL OR o.tenant_id = $2)
              ORDER BY i.position"
        );
        let rows = sqlx::query(&sql)
            .bind(id)
            .bind(tenant)
            .fetch_all(executor)
            .await?;
        if !rows.is_empty() {
            return detail_of(id, &rows).map(Some);
        }
    }
    Ok(None)
}

/// An order and its items from the rows of [`order_detail`]'s join (at least one).
fn detail_of(id: Uuid, rows: &[PgRow]) -> Result<OrderDetail, ProjectionError> {
    let Some(first) = rows.first() else {
        return Err(ProjectionError::InvalidRow(format!("order {id}: no row")));
    };
    let order = order_of(first)?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let item = ItemRow::from_row(row)?;
        let (Some(item_id), Some(ticket_type_id), Some(quantity), Some(unit_price_cents)) = (
            item.item_id,
            item.ticket_type_id,
            item.quantity,
            item.unit_price_cents,
        ) else {
            continue; // the LEFT JOIN's empty side: an order without items
        };
        items.push(OrderItemView {
            id: item_id,
            ticket_type_id,
            quantity: u32::try_from(quantity).map_err(|_| {
                ProjectionError::InvalidRow(format!("order {id}: negative quantity"))
            })?,
            unit_price_cents,
            ticket_ids: item.ticket_ids.unwrap_or_default(),
        });
    }
    Ok(OrderDetail { order, items })
}

/// The criteria of `without-tickets`, as echoed back in its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WithoutTickets {
    /// Only orders paid at least this many minutes ago.
    pub minutes_old: u32,
    /// Only orders in this status.
    #[schema(value_type = OrderStatusSchema)]
    pub status: OrderStatus,
    /// At most this many orders (already capped at [`WithoutTickets::MAX_LIMIT`]).
    pub limit: u32,
}

impl WithoutTickets {
    /// Reconciliation looks at orders paid at least five minutes ago: younger ones are still
    /// expected to get their tickets through the normal path.
    pub const DEFAULT_MINUTES_OLD: u32 = 5;
    /// The status reconciliation cares about.
    pub const DEFAULT_STATUS: OrderStatus = OrderStatus::Paid;
    /// Page size when the caller names none.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Largest page; larger requests are capped, not refused, so one call stays cheap.
    pub const MAX_LIMIT: u32 = 500;

    /// Criteria with defaults for what is absent and the limit capped.
    pub fn new(minutes_old: Option<u32>, status: Option<OrderStatus>, limit: Option<u32>) -> Self {
        Self {
            minutes_old: minutes_old.unwrap_or(Self::DEFAULT_MINUTES_OLD),
            status: status.unwrap_or(Self::DEFAULT_STATUS),
            limit: limit.unwrap_or(Self::DEFAULT_LIMIT).min(Self::MAX_LIMIT),
        }
    }

    /// The latest paid time that matches at `now`. Clamped to the Unix epoch, before which no
    /// order was paid, so that huge `minutesOld` values stay inside Postgres' timestamp range.
    pub fn paid_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_sub_signed(TimeDelta::minutes(i64::from(self.minutes_old)))
            .filter(|t| *t > DateTime::UNIX_EPOCH)
            .unwrap_or(DateTime::UNIX_EPOCH)
    }
}

/// Orders in `criteria.status`, paid at or before `criteria.paid_before(now)`, with no tickets
/// and not archived, oldest payment first; only `tenant`'s when given.
///
/// # Errors
/// As for [`order`].
#[tracing::instrument(name = "query.without_tickets", skip_all, fields(status = criteria.status.as_str(), limit = criteria.limit))]
pub async fn without_tickets<'e>(
    executor: impl PgExecutor<'e>,
    criteria: &WithoutTickets,
    tenant: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<OrderView>, ProjectionError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM order_read o
          WHERE o.status = $1 AND o.ticket_count = 0 AND NOT o.archived AND o.paid_at <= $2
            AND ($3::text IS NULL OR o.tenant_id = $3)
          ORDER BY o.paid_at, o.order_id
          LIMIT $4"
    );
    sqlx::query(&sql)
        .bind(criteria.status.as_str())
        .bind(criteria.paid_before(now))
        .bind(tenant)
        .bind(i64::from(criteria.limit))
        .fetch_all(executor)
        .await?
        .iter()
        .map(order_of)
        .collect()
}

/// Why payment-service must not charge an order now (the module doc lists the codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentRefusal {
    OrderExpired,
    InvalidStatus,
    AlreadyPaid,
    ZeroTotal,
    NoItems,
}

/// The order part of `for-payment`: what a charge needs, and the version to confirm against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentOrder {
    pub id: Uuid,
    pub order_number: String,
    pub total_cents: i64,
    pub currency: String,
    #[schema(value_type = OrderStatusSchema)]
    pub status: OrderStatus,
    pub payment_intent_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    pub version: u64,
}

/// One line item of `for-payment` (no ticket ids: payment does not need them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentItem {
    pub id: Uuid,
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// Whether the order can be charged now, and if not, every reason why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentContext {
    /// Number of line items.
    pub item_count: usize,
    /// Number of tickets issued so far.
    pub ticket_count: u32,
    /// True exactly when `validation_errors` is empty.
    pub can_process_payment: bool,
    pub is_expired: bool,
    pub validation_errors: Vec<PaymentRefusal>,
}

/// The answer of `GET /internal/orders/{orderId}/for-payment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForPayment {
    pub order: PaymentOrder,
    pub items: Vec<PaymentItem>,
    pub payment_context: PaymentContext,
}

impl ForPayment {
    /// Evaluates an order for payment at `now`.
    pub fn evaluate(detail: OrderDetail, now: DateTime<Utc>) -> Self {
        let OrderDetail { order, items } = detail;
        let status = order.status;
        let is_expired =
            status == OrderStatus::Expired || (status.is_open() && now >= order.expires_at);
        let mut errors = Vec::new();
        if is_expired {
            errors.push(PaymentRefusal::OrderExpired);
        }
        if status.is_paid() {
            errors.push(PaymentRefusal::AlreadyPaid);
        } else if !status.is_open() {
            errors.push(PaymentRefusal::InvalidStatus);
        }
        if order.total_cents <= 0 {
            errors.push(PaymentRefusal::ZeroTotal);
        }
        if items.is_empty() {
            errors.push(PaymentRefusal::NoItems);
        }
        Self {
            payment_context: PaymentContext {
                item_count: items.len(),
                ticket_count: order.ticket_count,
                can_process_payment: errors.is_empty(),
                is_expired,
                validation_errors: errors,
            },
            items: items
                .into_iter()
                .map(|i| PaymentItem {
                    id: i.id,
                    ticket_type_id: i.ticket_type_id,
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            order: PaymentOrder {
                id: order.id,
                order_number: order.order_number,
                total_cents: order.total_cents,
                currency: order.currency,
                status,
                payment_intent_id: order.payment_intent_id,
                expires_at: order.expires_at,
                version: order.version,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduled jobs (docs/contract.md §8): which orders each job should look at next.

/// Where a job's scan of the read model stands: the sort key of the last order it looked at.
/// Scans resume after it, so orders a job cannot act on (a refusal, a peer with nothing to
/// say) never keep the rest from their turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPosition {
    pub at: DateTime<Utc>,
    pub order_id: Uuid,
}

/// An order a scheduled job should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCandidate {
    pub order_id: Uuid,
    pub tenant_id: String,
    /// Its place in the scan.
    pub position: ScanPosition,
}

/// What a job scans the hot read model for. Each scan also leaves out orders whose event
/// store already holds the event the job would cause, so a read model that lags behind a
/// job's own commands does not hand the same orders back run after run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobScan {
    /// PENDING or RESERVED orders whose expiry is at or before `now` (by `expires_at`).
    Expired { now: DateTime<Utc> },
    /// PENDING or RESERVED orders expiring after `now` and at or before `until`, not yet
    /// reminded (by `expires_at`).
    ExpiringSoon {
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// PAID or PARTIALLY_REFUNDED orders whose event starts after `now` and at or before
    /// `until`, not yet reminded about it (by `event_starts_at`).
    EventStartingSoon {
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// Terminal orders (CANCELLED, EXPIRED, REFUNDED, FAILED) last changed at or before
    /// `before` (by `updated_at`).
    Archivable { before: DateTime<Utc> },
    /// PAID orders with no tickets, paid at or before `paid_before` (by `paid_at`).
    WithoutTickets { paid_before: DateTime<Utc> },
}

/// One scan's SQL pieces. Column names and statuses are fixed strings, never input; the
/// status lists are inlined so the partial indexes of migration 0501 match.
struct ScanSql {
    key: &'static str,
    statuses: &'static [OrderStatus],
    extra: &'static str,
    caused: &'static str,
    lower: Option<DateTime<Utc>>,
    upper: DateTime<Utc>,
}

impl JobScan {
    fn sql(self) -> ScanSql {
        use OrderStatus::{
            Cancelled, Expired, Failed, Paid, PartiallyRefunded, Pending, Refunded, Reserved,
        };
        let scan = |key, statuses, caused, lower, upper| ScanSql {
            key,
            statuses,
            extra: "",
            caused,
            lower,
            upper,
        };
        match self {
            Self::Expired { now } => scan(
                "o.expires_at",
                &[Pending, Reserved],
                "OrderExpired",
                None,
                now,
            ),
            Self::ExpiringSoon { now, until } => scan(
                "o.expires_at",
                &[Pending, Reserved],
                "ReminderSent",
                Some(now),
                until,
            ),
            Self::EventStartingSoon { now, until } => scan(
                "o.event_starts_at",
                &[Paid, PartiallyRefunded],
                "EventReminderSent",
                Some(now),
                until,
            ),
            Self::Archivable { before } => scan(
                "o.updated_at",
                &[Cancelled, Expired, Refunded, Failed],
                "OrderArchived",
                None,
                before,
            ),
            Self::WithoutTickets { paid_before } => ScanSql {
                extra: "AND o.ticket_count = 0",
                ..scan("o.paid_at", &[Paid], "TicketsIssued", None, paid_before)
            },
        }
    }
}

/// Up to `limit` orders matching `scan`, after `after` in the scan's order (its time key, then
/// the order id), oldest first. Archived orders never match.
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails.
#[tracing::instrument(name = "query.job_candidates", skip_all, fields(scan = ?scan, limit))]
pub async fn job_candidates<'e>(
    executor: impl PgExecutor<'e>,
    scan: JobScan,
    after: Option<ScanPosition>,
    limit: i64,
) -> Result<Vec<JobCandidate>, ProjectionError> {
    let s = scan.sql();
    let statuses = s
        .statuses
        .iter()
        .map(|st| format!("'{}'", st.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT o.order_id, o.tenant_id, {key} AS at FROM order_read o
          WHERE o.status IN ({statuses}) {extra} AND NOT o.archived
            AND {key} IS NOT NULL
            AND ($1::timestamptz IS NULL OR {key} > $1) AND {key} <= $2
            AND ($3::timestamptz IS NULL OR ({key}, o.order_id) > ($3, $4))
            AND NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = $7
                               AND e.aggregate_id = o.order_id::text
                               AND e.event_type = $5)
          ORDER BY {key}, o.order_id
          LIMIT $6",
        key = s.key,
        extra = s.extra,
    );
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(&sql)
        .bind(s.lower)
        .bind(s.upper)
        .bind(after.map(|p| p.at))
        .bind(after.map_or(Uuid::nil(), |p| p.order_id))
        .bind(s.caused)
        .bind(limit.max(0))
        .bind(order_domain::ORDER_AGGREGATE_TYPE)
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, tenant_id, at)| JobCandidate {
            order_id,
            tenant_id,
            position: ScanPosition { at, order_id },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detail(status: OrderStatus, total: i64, items: usize, expires_in_min: i64) -> OrderDetail {
        let now = Utc::now();
        OrderDetail {
            order: OrderView {
                id: Uuid::nil(),
                order_number: "ORD-1".into(),
                tenant_id: "t".into(),
                user_id: "u".into(),
                event_id: Uuid::nil(),
                status,
                subtotal_cents: total,
                fees_cents: 0,
                tax_cents: 0,
                total_cents: total,
                currency: "USD".into(),
                payment_intent_id: None,
                expires_at: now + TimeDelta::minutes(expires_in_min),
                created_at: now,
                updated_at: now,
                paid_at: None,
                refunded_cents: 0,
                refunds_locked: false,
                ticket_count: 0,
                version: 1,
            },
            items: (0..items)
                .map(|_| OrderItemView {
                    id: Uuid::new_v4(),
                    ticket_type_id: Uuid::nil(),
                    quantity: 1,
                    unit_price_cents: total,
                    ticket_ids: vec![],
                })
                .collect(),
        }
    }

    fn reasons(d: OrderDetail) -> Vec<PaymentRefusal> {
        ForPayment::evaluate(d, Utc::now())
            .payment_context
            .validation_errors
    }

    #[test]
    fn an_open_order_in_time_can_be_paid() {
        let fp = ForPayment::evaluate(detail(OrderStatus::Reserved, 100, 1, 10), Utc::now());
        assert!(fp.payment_context.can_process_payment);
        assert!(!fp.payment_context.is_expired);
        assert!(fp.payment_context.validation_errors.is_empty());
    }

    #[test]
    fn each_reason_has_its_code_in_the_documented_order() {
        use PaymentRefusal::*;
        assert_eq!(
            reasons(detail(OrderStatus::Pending, 100, 1, -1)),
            [OrderExpired]
        );
        assert_eq!(
            reasons(detail(OrderStatus::Cancelled, 100, 1, 10)),
            [InvalidStatus]
        );
        assert_eq!(
            reasons(detail(OrderStatus::Expired, 100, 1, -1)),
            [OrderExpired, InvalidStatus]
        );
        assert_eq!(
            reasons(detail(OrderStatus::Paid, 100, 1, -1)),
            [AlreadyPaid]
        );
        assert_eq!(reasons(detail(OrderStatus::Pending, 0, 1, 10)), [ZeroTotal]);
        assert_eq!(reasons(detail(OrderStatus::Pending, 100, 0, 10)), [NoItems]);
        assert_eq!(
            serde_json::to_value([OrderExpired, InvalidStatus, AlreadyPaid, ZeroTotal, NoItems])
                .unwrap(),
            json!([
                "ORDER_EXPIRED",
                "INVALID_STATUS",
                "ALREADY_PAID",
                "ZERO_TOTAL",
                "NO_ITEMS"
            ])
        );
    }

    #[test]
    fn limits_are_capped_and_defaults_fill_gaps() {
        let c = WithoutTickets::new(None, None, Some(10_000));
        assert_eq!(c.limit, WithoutTickets::MAX_LIMIT);
        assert_eq!(c.minutes_old, 5);
        assert_eq!(c.status, OrderStatus::Paid);
        assert_eq!(WithoutTickets::new(None, None, None).limit, 100);
    }

    #[test]
    fn huge_ages_clamp_to_the_epoch() {
        let c = WithoutTickets::new(Some(u32::MAX), None, None);
        assert_eq!(c.paid_before(Utc::now()), DateTime::UNIX_EPOCH);
        let c = WithoutTickets::new(Some(5), None, None);
        let now = Utc::now();
        assert_eq!(c.paid_before(now), now - TimeDelta::minutes(5));
    }
}
