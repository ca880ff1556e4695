//! B4: how fast replay rebuilds the `orders` projection, against a set-based SQL rebuild of the
//! same tables from the same events in the same database.
//!
//! [`ReplayBench::setup`] makes a database of its own (`order_bench_b4`, dropped by
//! [`ReplayBench::teardown`]), writes the events once with [`crate::fixtures::generate_orders`],
//! analyzes them (as autovacuum would after a load) and puts the live projector's checkpoint at
//! the end of the feed, so that a rebuild has the whole feed to apply. Each
//! [`ReplayBench::round`] then runs:
//!
//! * **A, the baseline**: one transaction of set-based SQL that builds copies of `order_read`,
//!   `order_item_read` and their archives (`b4_…`) straight from the `events` table: every
//!   order row from its `OrderCreated` payload joined with an aggregate of its later events
//!   (for each column, the value of the last event that sets it, by sequence), every item from
//!   the payload's items joined with the tickets of its `TicketsIssued` events; then the same
//!   primary keys, indexes and foreign keys as the live tables, and `ANALYZE`. It knows only
//!   the current event schemas (no upcasting), which is all the generated events use.
//! * **B, replay**: [`replay::Rebuild::start`], [`replay::Rebuild::build`] and
//!   [`replay::Rebuild::swap`] with the CLI's default batch size, which is what `order-service
//!   replay --yes` runs apart from its compare: shadow tables, the feed batch by batch, then the
//!   shadow's indexes and foreign keys, `ANALYZE`, and the swap.
//!
//! Both therefore end with the same rows, indexes and statistics. After B the new live tables
//! are checked against A's copies (row counts and an order-independent checksum of every row),
//! so a baseline that skipped work, or a rebuild that did, fails the round instead of
//! flattering a side. The tables replay keeps (the previous live ones, for a rollback) are then
//! dropped with [`replay::clean`], so every round starts alike.

use std::time::Instant;

use anyhow::{ensure, Context as _};
use order_projections::replay::{self, NoProgress, RebuildOptions, Rebuildable};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool, Row as _};
use tokio_util::sync::CancellationToken;

use crate::fixtures::{generate_orders, EVENTS_PER_ORDER};

/// The database B4 runs in, apart from the other rows' `order_bench`.
pub const DATABASE: &str = "order_bench_b4";

/// The live tables the `orders` projection writes, and the prefix of the baseline's copies.
const TABLES: [&str; 4] = [
    "order_read",
    "order_item_read",
    "order_read_archive",
    "order_item_read_archive",
];
const PREFIX: &str = "b4_";

/// The baseline's order rows: each order's `OrderCreated` payload, and for every column a later
/// event can change, the value the last such event (by sequence) gives it, as the projector's
/// guarded updates leave it. Archived orders go to the archive table.
const BASELINE_ORDERS: &str = r"
WITH ev AS (
    SELECT aggregate_id::uuid AS order_id, sequence, event_type, payload -> event_type AS p
      FROM events WHERE aggregate_type = $1
),
created AS (
    SELECT DISTINCT ON (order_id) order_id, sequence, p
      FROM ev WHERE event_type = 'OrderCreated' ORDER BY order_id, sequence
),
later AS (
    SELECT ev.order_id, ev.sequence, ev.event_type, ev.p,
           (ev.p ->> 'occurredAt')::timestamptz AS at,
           CASE ev.event_type
               WHEN 'OrderReserved' THEN 'RESERVED' WHEN 'OrderConfirmed' THEN 'PAID'
               WHEN 'OrderCancelled' THEN 'CANCELLED' WHEN 'OrderExpired' THEN 'EXPIRED'
               WHEN 'OrderFailed' THEN 'FAILED'
               WHEN 'OrderRefunded' THEN
                   CASE WHEN (ev.p ->> 'full')::bool THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END
           END AS status
      FROM ev JOIN created c ON c.order_id = ev.order_id AND ev.sequence > c.sequence
     WHERE ev.event_type <> 'OrderCreated'
),
agg AS (
    SELECT order_id,
           max(sequence) AS last_sequence,
           (array_agg(at ORDER BY sequence DESC))[1] AS updated_at,
           (array_agg(status ORDER BY sequence DESC)
               FILTER (WHERE status IS NOT NULL))[1] AS status,
           (array_agg((p ->> 'expiresAt')::timestamptz ORDER BY sequence DESC)
               FILTER (WHERE event_type = 'OrderReserved'))[1] AS expires_at,
           (array_agg(p ->> 'paymentIntentId' ORDER BY sequence DESC)
               FILTER (WHERE event_type = 'OrderConfirmed'))[1] AS payment_intent_id,
           (array_agg(at ORDER BY sequence DESC)
               FILTER (WHERE event_type = 'OrderConfirmed'))[1] AS paid_at,
           (array_agg((p ->> 'refundedTotalCents')::int8 ORDER BY sequence DESC)
               FILTER (WHERE event_type = 'OrderRefunded'))[1] AS refunded_cents,
           (array_agg(COALESCE((p ->> 'refundsLocked')::bool, true) ORDER BY sequence DESC)
               FILTER (WHERE event_type IN ('DisputeOpened', 'DisputeClosed')))[1] AS refunds_locked,
           sum(jsonb_array_length(p -> 'tickets'))
               FILTER (WHERE event_type = 'TicketsIssued') AS tickets,
           bool_or(event_type = 'OrderArchived') AS archived
      FROM later GROUP BY order_id
),
r AS MATERIALIZED (
    SELECT c.order_id, c.p ->> 'orderNumber' AS order_number, c.p ->> 'tenantId' AS tenant_id,
           c.p ->> 'userId' AS user_id, (c.p ->> 'eventId')::uuid AS event_id,
           COALESCE(a.status, 'PENDING') AS status,
           (c.p ->> 'subtotalCents')::int8 AS subtotal_cents,
           (c.p ->> 'feesCents')::int8 AS fees_cents, (c.p ->> 'taxCents')::int8 AS tax_cents,
           (c.p ->> 'totalCents')::int8 AS total_cents, c.p ->> 'currency' AS currency,
           a.payment_intent_id,
           COALESCE(a.expires_at, (c.p ->> 'expiresAt')::timestamptz) AS expires_at,
           (c.p ->> 'eventStartsAt')::timestamptz AS event_starts_at,
           (c.p ->> 'createdAt')::timestamptz AS created_at,
           COALESCE(a.updated_at, (c.p ->> 'createdAt')::timestamptz) AS updated_at,
           a.paid_at, COALESCE(a.refunded_cents, 0) AS refunded_cents,
           COALESCE(a.refunds_locked, false) AS refunds_locked,
           jsonb_array_length(c.p -> 'items') AS item_count,
           COALESCE(a.tickets, 0)::int AS ticket_count,
           COALESCE(a.archived, false) AS archived,
           COALESCE(a.last_sequence, c.sequence) AS last_sequence
      FROM created c LEFT JOIN agg a USING (order_id)
),
hot AS (INSERT INTO b4_order_read SELECT * FROM r WHERE NOT archived)
INSERT INTO b4_order_read_archive SELECT * FROM r WHERE archived";

/// The baseline's item rows: the items of each `OrderCreated` (the first of a repeated id wins;
/// positions count every listed item) with the ticket ids of its `TicketsIssued` events in the
/// order they were issued. An archived order's items go to the archive table.
const BASELINE_ITEMS: &str = r"
WITH ev AS (
    SELECT aggregate_id::uuid AS order_id, sequence, event_type, payload -> event_type AS p
      FROM events
     WHERE aggregate_type = $1
       AND event_type IN ('OrderCreated', 'TicketsIssued', 'OrderArchived')
),
created AS (
    SELECT DISTINCT ON (order_id) order_id, sequence, p
      FROM ev WHERE event_type = 'OrderCreated' ORDER BY order_id, sequence
),
items AS (
    SELECT DISTINCT ON (c.order_id, (i.item ->> 'id')::uuid)
           c.order_id, (i.item ->> 'id')::uuid AS item_id, (i.ord - 1)::int AS position,
           (i.item ->> 'ticketTypeId')::uuid AS ticket_type_id,
           (i.item ->> 'quantity')::int AS quantity,
           (i.item ->> 'unitPriceCents')::int8 AS unit_price_cents
      FROM created c, jsonb_array_elements(c.p -> 'items') WITH ORDINALITY AS i(item, ord)
     ORDER BY c.order_id, (i.item ->> 'id')::uuid, i.ord
),
tickets AS (
    SELECT ev.order_id, (t.ticket ->> 'itemId')::uuid AS item_id,
           array_agg(t.ticket ->> 'ticketId' ORDER BY ev.sequence, t.ord) AS ticket_ids
      FROM ev JOIN created c ON c.order_id = ev.order_id AND ev.sequence > c.sequence,
           jsonb_array_elements(ev.p -> 'tickets') WITH ORDINALITY AS t(ticket, ord)
     WHERE ev.event_type = 'TicketsIssued'
     GROUP BY 1, 2
),
archived AS (
    SELECT DISTINCT ev.order_id
      FROM ev JOIN created c ON c.order_id = ev.order_id AND ev.sequence > c.sequence
     WHERE ev.event_type = 'OrderArchived'
),
r AS MATERIALIZED (
    SELECT i.order_id, i.item_id, i.position, i.ticket_type_id, i.quantity, i.unit_price_cents,
           COALESCE(t.ticket_ids, '{}') AS ticket_ids, a.order_id IS NOT NULL AS archived
      FROM items i
      LEFT JOIN tickets t USING (order_id, item_id)
      LEFT JOIN archived a USING (order_id)
),
hot AS (
    INSERT INTO b4_order_item_read
    SELECT order_id, item_id, position, ticket_type_id, quantity, unit_price_cents, ticket_ids
      FROM r WHERE NOT archived
)
INSERT INTO b4_order_item_read_archive
SELECT order_id, item_id, position, ticket_type_id, quantity, unit_price_cents, ticket_ids
  FROM r WHERE archived";

/// What one B4 round measured.
#[derive(Debug, Clone, Copy)]
pub struct RebuildRun {
    pub events: u64,
    /// The set-based SQL rebuild, indexes and `ANALYZE` included.
    pub baseline_seconds: f64,
    /// Replay's start, build and swap.
    pub rebuild_seconds: f64,
    /// Of which the build (the feed applied to the shadow tables).
    pub build_seconds: f64,
    /// Rows in the rebuilt tables (all four).
    pub rows: i64,
}

impl RebuildRun {
    pub fn baseline_per_second(&self) -> f64 {
        self.events as f64 / self.baseline_seconds
    }

    pub fn rebuild_per_second(&self) -> f64 {
        self.events as f64 / self.rebuild_seconds
    }

    /// Events per second of the build phase alone.
    pub fn build_per_second(&self) -> f64 {
        self.events as f64 / self.build_seconds
    }
}

/// B4's database, its generated events and the statements its baseline needs.
#[derive(Debug)]
pub struct ReplayBench {
    admin_url: String,
    pool: PgPool,
    events: u64,
    /// `CREATE INDEX` statements for the baseline's copies, from the live tables' definitions.
    index_ddl: Vec<String>,
}

impl ReplayBench {
    /// Creates and migrates `order_bench_b4` on the server at `server_url` (no database in the
    /// URL), writes `events` events (rounded up to whole orders of five), analyzes them and
    /// moves the live checkpoint to the last one. Returns with the generation's seconds.
    ///
    /// # Errors
    /// When Postgres fails.
    pub async fn setup(server_url: &str, events: u64) -> anyhow::Result<(Self, f64)> {
        let admin_url = format!("{server_url}/postgres");
        let db_url = format!("{server_url}/{DATABASE}");
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        order_api::db::create_and_migrate(&db_url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await?;
        let started = Instant::now();
        let written = generate_orders(&pool, events.div_ceil(EVENTS_PER_ORDER)).await?;
        // As autovacuum would after a load this size: without statistics the feed's query and
        // the baseline's joins choose plans for an empty table.
        sqlx::query("ANALYZE events").execute(&pool).await?;
        let generated = started.elapsed().as_secs_f64();
        sqlx::query(
            "INSERT INTO feed_checkpoints (consumer, transaction_id, global_position, events_total)
             SELECT $1, transaction_id, global_position, $2 FROM events
              ORDER BY transaction_id DESC, global_position DESC LIMIT 1
             ON CONFLICT (consumer) DO UPDATE
                SET transaction_id = EXCLUDED.transaction_id,
                    global_position = EXCLUDED.global_position,
                    events_total = EXCLUDED.events_total",
        )
        .bind(orders().name())
        .bind(i64::try_from(written)?)
        .execute(&pool)
        .await?;
        let index_ddl = baseline_indexes(&pool).await?;
        Ok((
            Self {
                admin_url,
                pool,
                events: written,
                index_ddl,
            },
            generated,
        ))
    }

    /// Events in the feed.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// One A-B round: the SQL baseline, then replay; checks that both built the same rows and
    /// drops what replay kept.
    ///
    /// # Errors
    /// When a statement fails or the two rebuilds disagree.
    pub async fn round(&self) -> anyhow::Result<RebuildRun> {
        let baseline_seconds = self.baseline().await.context("the SQL baseline")?;

        let spec = orders();
        let started = Instant::now();
        let mut rebuild = replay::Rebuild::start(&self.pool, spec, RebuildOptions::default())
            .await
            .context("starting the rebuild")?;
        let built = rebuild
            .build(&NoProgress, &CancellationToken::new())
            .await
            .context("building the shadow tables")?;
        let build_seconds = started.elapsed().as_secs_f64();
        let swapped = rebuild.swap().await.context("swapping the rebuild in")?;
        let rebuild_seconds = started.elapsed().as_secs_f64();
        ensure!(
            built.events() == self.events && swapped.events == self.events,
            "the rebuild applied {} events (build) / {} (swap) of {}",
            built.events(),
            swapped.events,
            self.events
        );

        let mut rows = 0;
        for table in TABLES {
            let ours = checksum(&self.pool, table).await?;
            let theirs = checksum(&self.pool, &format!("{PREFIX}{table}")).await?;
            ensure!(
                ours == theirs,
                "{table}: the rebuild has {} rows (checksum {}), the SQL baseline {} ({})",
                ours.0,
                ours.1,
                theirs.0,
                theirs.1
            );
            rows += ours.0;
        }
        replay::clean(&self.pool, spec)
            .await
            .context("dropping the tables replay kept")?;
        Ok(RebuildRun {
            events: self.events,
            baseline_seconds,
            rebuild_seconds,
            build_seconds,
            rows,
        })
    }

    /// The set-based rebuild into the `b4_…` tables, in one transaction; returns its seconds.
    async fn baseline(&self) -> anyhow::Result<f64> {
        let mut conn = self.pool.acquire().await?;
        let drop = TABLES
            .iter()
            .map(|t| format!("{PREFIX}{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!("DROP TABLE IF EXISTS {drop}"))
            .execute(&mut *conn)
            .await?;
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        // As an operator would for a one-off bulk statement: its sorts and hashes stay in
        // memory instead of spilling to disk.
        sqlx::query("SET LOCAL work_mem = '256MB'")
            .execute(&mut *tx)
            .await?;
        for table in TABLES {
            sqlx::query(&format!(
                "CREATE TABLE {PREFIX}{table} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            ))
            .execute(&mut *tx)
            .await?;
        }
        for statement in [BASELINE_ORDERS, BASELINE_ITEMS] {
            sqlx::query(statement)
                .bind(order_domain::ORDER_AGGREGATE_TYPE)
                .execute(&mut *tx)
                .await?;
        }
        for ddl in [
            "ALTER TABLE b4_order_read ADD PRIMARY KEY (order_id)",
            "ALTER TABLE b4_order_item_read ADD PRIMARY KEY (order_id, item_id)",
            "ALTER TABLE b4_order_read_archive ADD PRIMARY KEY (order_id)",
            "ALTER TABLE b4_order_item_read_archive ADD PRIMARY KEY (order_id, item_id)",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(self.index_ddl.iter().cloned())
        .chain([
            "ALTER TABLE b4_order_item_read ADD FOREIGN KEY (order_id) \
                REFERENCES b4_order_read (order_id) ON DELETE CASCADE"
                .to_owned(),
            "ALTER TABLE b4_order_item_read_archive ADD FOREIGN KEY (order_id) \
                REFERENCES b4_order_read_archive (order_id) ON DELETE CASCADE"
                .to_owned(),
        ]) {
            sqlx::query(&ddl).execute(&mut *tx).await?;
        }
        for table in TABLES {
            sqlx::query(&format!("ANALYZE {PREFIX}{table}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Drops B4's database.
    ///
    /// # Errors
    /// When Postgres fails.
    pub async fn teardown(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(())
    }
}

fn orders() -> &'static dyn Rebuildable {
    replay::find("orders").expect("orders is registered")
}

/// The live tables' secondary indexes (primary keys are added separately), rewritten to build
/// the same index on the baseline's copy.
async fn baseline_indexes(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS index, t.relname::text AS table,
                pg_get_indexdef(i.indexrelid) AS definition
           FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_class t ON t.oid = i.indrelid
          WHERE t.relname = ANY($1) AND NOT i.indisprimary
          ORDER BY t.relname, c.relname",
    )
    .bind(TABLES.map(str::to_owned).to_vec())
    .fetch_all(pool)
    .await?;
    let mut ddl = Vec::with_capacity(rows.len());
    for row in rows {
        let (index, table, definition): (String, String, String) = (
            row.try_get("index")?,
            row.try_get("table")?,
            row.try_get("definition")?,
        );
        // "CREATE INDEX name ON public.table USING ...".
        let rewritten = definition
            .replacen(
                &format!("INDEX {index} ON"),
                &format!("INDEX {PREFIX}{index} ON"),
                1,
            )
            .replacen(
                &format!(" ON public.{table} "),
                &format!(" ON public.{PREFIX}{table} "),
                1,
            );
        ensure!(
            rewritten.contains(&format!("{PREFIX}{index}"))
                && rewritten.contains(&format!("{PREFIX}{table}")),
            "unexpected index definition: {definition}"
        );
        ddl.push(rewritten);
    }
    Ok(ddl)
}

/// Row count and an order-independent checksum (the sum of a 64-bit hash of every row's text)
/// of a table, the way replay's own compare checks its copies.
async fn checksum(pool: &PgPool, table: &str) -> anyhow::Result<(i64, String)> {
    let row = sqlx::query(&format!(
        "SELECT count(*) AS n,
                COALESCE(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::int8::numeric), 0)::text
                    AS sum
           FROM {table} t"
    ))
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("sum")?))
}
