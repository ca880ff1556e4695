//! Replay: online rebuilds into shadow tables, the compare, the swap, rollback,
//! resuming, the one-rebuild-at-a-time lock and per-order rebuilds.
//!
//! Tests call `order_projections::replay` directly (the CLI is a thin shell over it). The live
//! projector is driven with `catch_up`, or runs as a task where a test needs it running
//! concurrently; interleavings are forced by interrupting a build after a known number of
//! batches and by waiting for a writer's command count, never by sleeping.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use order_api::app::store::OrderStore;
use order_domain::commands::*;
use order_domain::values::{DisputeOutcome, IssuedTicket, NewLineItem};
use order_domain::{Currency, OrderCommand, OrderEvent};
use order_projections::checkpoint::Durability;
use order_projections::replay::{
    self, Built, DiffKind, NoProgress, RebuildOptions, ReplayLock, ReplayProgress, TableSet,
};
use order_projections::{
    checkpoint, OrdersProjector, ProjectionError, ProjectionRunner, Projector, ORDERS_PROJECTION,
};
use order_tests::fixtures::{generate_orders, EVENTS_PER_ORDER};
use order_tests::per_event::PerEvent;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// helpers

fn orders() -> &'static dyn replay::Rebuildable {
    replay::find("orders").expect("orders is registered")
}

fn options(batch_size: i64) -> RebuildOptions {
    RebuildOptions {
        batch_size,
        restart: false,
    }
}

/// Applies every committed event to the live read model, one event at a time.
async fn project_per_event(pool: &PgPool) {
    let runner = ProjectionRunner::new(pool.clone(), PerEvent, 500);
    tokio::time::timeout(Duration::from_secs(60), runner.catch_up())
        .await
        .expect("the projector caught up in time")
        .expect("projection succeeds");
}

/// Every row of every table of a copy (hot orders, hot items, archived orders, archived
/// items), as JSON, in a stable order.
async fn rows(pool: &PgPool, set: TableSet) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for table in orders().tables() {
        all.push(
            sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t) FROM {} t ORDER BY to_jsonb(t)::text",
                set.quoted(table)
            ))
            .fetch_all(pool)
            .await
            .expect("rows"),
        );
    }
    all
}

/// The rows of one order in a [`rows`] dump.
fn rows_of(all: &[Vec<Value>], id: Uuid) -> Vec<Vec<Value>> {
    let id = id.to_string();
    all.iter()
        .map(|t| {
            t.iter()
                .filter(|r| r["order_id"] == id.as_str())
                .cloned()
                .collect()
        })
        .collect()
}

async fn order_row(pool: &PgPool, id: Uuid) -> Value {
    sqlx::query_scalar("SELECT to_jsonb(o) FROM order_read o WHERE order_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("row")
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("regclass")
}

/// `table.index` for every index of the live tables.
/// `pg_class.relpersistence` of a table: "p" (logged) or "u" (unlogged).
async fn persistence(pool: &PgPool, table: &str) -> String {
    sqlx::query_scalar("SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1)")
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("persistence")
}

async fn index_names(pool: &PgPool) -> Vec<String> {
    let tables: Vec<String> = orders().tables().iter().map(|t| (*t).to_owned()).collect();
    sqlx::query_scalar(
        "SELECT tablename || '.' || indexname FROM pg_indexes
          WHERE tablename = ANY($1) ORDER BY 1",
    )
    .bind(tables)
    .fetch_all(pool)
    .await
    .expect("indexes")
}

async fn consumers(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT consumer FROM feed_checkpoints")
        .fetch_all(pool)
        .await
        .expect("checkpoints")
        .into_iter()
        .collect()
}

/// Runs a whole rebuild: build, compare (which must find `expect_differences` rows), swap.
async fn rebuild_and_swap(pool: &PgPool, expect_differences: i64) -> replay::Swapped {
    let mut r = replay::Rebuild::start(pool, orders(), options(50))
        .await
        .expect("start");
    r.build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    let cmp = r.compare(20).await.expect("compare");
    assert_eq!(cmp.differences(), expect_differences, "{cmp:#?}");
    let swapped = r.swap().await.expect("swap");
    // Built unlogged, swapped in logged: a crash must not empty the live read model.
    for table in [
        "order_read",
        "order_item_read",
        "order_read_archive",
        "order_item_read_archive",
    ] {
        assert_eq!(persistence(pool, table).await, "p", "{table}");
    }
    swapped
}

/// A from-scratch rebuild compared with the live tables; returns the comparison, keeps nothing.
async fn fresh_comparison(pool: &PgPool) -> replay::Comparison {
    let mut r = replay::Rebuild::start(
        pool,
        orders(),
        RebuildOptions {
            batch_size: 1_000,
            restart: true,
        },
    )
    .await
    .expect("start");
    r.build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    let cmp = r.compare(20).await.expect("compare");
    r.abandon().await.expect("release");
    cmp
}

/// Progress that cancels its build after `batches` batches.
#[derive(Debug)]
struct StopAfter {
    batches: u64,
    seen: AtomicU64,
    events: AtomicU64,
    total: AtomicU64,
    cancel: CancellationToken,
}

impl StopAfter {
    fn new(batches: u64) -> Self {
        Self {
            batches,
            seen: AtomicU64::new(0),
            events: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        }
    }
}

impl ReplayProgress for StopAfter {
    fn start(&self, _projection: &str, total: u64) {
        self.total.store(total, Ordering::SeqCst);
    }
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::SeqCst);
    }
    fn advance(&self, events: u64) {
        self.events.fetch_add(events, Ordering::SeqCst);
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 >= self.batches {
            self.cancel.cancel();
        }
    }
}

/// Writes orders through the command path with chosen clocks.
#[derive(Clone)]
struct Script {
    store: OrderStore,
    base: DateTime<Utc>,
}

impl Script {
    fn new(pool: &PgPool) -> Self {
        Self {
            store: OrderStore::new(pool.clone()),
            base: Utc::now(),
        }
    }

    fn at(&self, minutes: i64) -> DateTime<Utc> {
        self.base + TimeDelta::minutes(minutes)
    }

    async fn run(&self, id: Uuid, command: OrderCommand) {
        self.store
            .execute(id, &HashMap::new(), |_| Ok(()), || command.clone())
            .await
            .unwrap_or_else(|e| panic!("command on {id} failed: {e}"));
    }

    async fn create(&self, tenant: &str, lines: &[(u32, i64)], created: i64, expires: i64) -> Uuid {
        let id = Uuid::new_v4();
        self.run(
            id,
            OrderCommand::CreateOrder(CreateOrder {
                order_id: id,
                order_number: format!("ORD-R-{}", &id.simple().to_string()[..6]),
                tenant_id: tenant.into(),
                user_id: "user-1".into(),
                event_id: Uuid::new_v4(),
                currency: Currency::parse("USD").expect("currency"),
                items: lines
                    .iter()
                    .map(|&(quantity, unit_price_cents)| NewLineItem {
                        id: Uuid::new_v4(),
                        ticket_type_id: Uuid::new_v4(),
                        quantity,
                        unit_price_cents,
                    })
                    .collect(),
                fees_cents: 150,
                tax_cents: 80,
                expires_at: self.at(expires),
                event_starts_at: Some(self.at(60 * 24)),
                now: self.at(created),
            }),
        )
        .await;
        id
    }

    async fn confirm(&self, id: Uuid, at: i64) {
        let total = self
            .store
            .load(id)
            .await
            .expect("load")
            .expect("exists")
            .total_cents;
        self.run(
            id,
            OrderCommand::ConfirmOrder(ConfirmOrder {
                payment_intent_id: format!("pi_{}", &id.simple().to_string()[..8]),
                amount_cents: total,
                expected_version: None,
                now: self.at(at),
            }),
        )
        .await;
    }

    async fn tickets(&self, id: Uuid, at: i64, per_item: &[usize]) {
        let order = self.store.load(id).await.expect("load").expect("exists");
        let already = order.tickets.len();
        let mut tickets = Vec::new();
        for (item, &n) in order.items.iter().zip(per_item) {
            for _ in 0..n {
                tickets.push(IssuedTicket {
                    item_id: item.id,
                    ticket_id: format!(
                        "tkt-{}-{}",
                        &id.simple().to_string()[..6],
                        already + tickets.len()
                    ),
                });
            }
        }
        self.run(
            id,
            OrderCommand::RecordTickets(RecordTickets {
                tickets,
                now: self.at(at),
            }),
        )
        .await;
    }

    async fn refund(&self, id: Uuid, at: i64, amount: Option<i64>, complete: bool) {
        let refund_id = Uuid::new_v4();
        self.run(
            id,
            OrderCommand::RequestRefund(RequestRefund {
                refund_id,
                amount_cents: amount,
                reason: "customer asked".into(),
                facts: RefundFacts::default(),
                now: self.at(at),
            }),
        )
        .await;
        let finish = if complete {
            OrderCommand::CompleteRefund(CompleteRefund {
                refund_id,
                now: self.at(at),
            })
        } else {
            OrderCommand::FailRefund(FailRefund {
                refund_id,
                reason: "card closed".into(),
                now: self.at(at),
            })
        };
        self.run(id, finish).await;
    }

    /// A paid, ticketed, partly refunded order: 6 events.
    async fn paid_order(&self) -> Uuid {
        let id = self
            .create("tenant-a", &[(2, 1000), (1, 500)], -60, 15)
            .await;
        self.confirm(id, -50).await;
        self.tickets(id, -49, &[1, 0]).await;
        self.tickets(id, -48, &[1, 1]).await;
        self.refund(id, -40, Some(300), true).await;
        id
    }
}

/// A history with every event type; returns the order ids.
async fn every_event_type(s: &Script) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.paid_order().await);
    }
    // Reserved, paid, ticketed, reminded about the event.
    let a = s.create("tenant-a", &[(2, 5000), (1, 7500)], -60, 15).await;
    s.run(
        a,
        OrderCommand::ReserveOrder(ReserveOrder {
            expires_at: s.at(30),
            now: s.at(-55),
        }),
    )
    .await;
    s.confirm(a, -50).await;
    s.tickets(a, -49, &[2, 1]).await;
    s.run(
        a,
        OrderCommand::SendEventReminder(SendEventReminder { now: s.at(-10) }),
    )
    .await;
    // Disputed and won, refunded in two parts with a failed attempt between, then archived.
    let b = s.create("tenant-b", &[(1, 10_000)], -60, 15).await;
    s.confirm(b, -50).await;
    s.run(
        b,
        OrderCommand::OpenDispute(OpenDispute {
            dispute_id: "dp_won".into(),
            amount_cents: Some(10_000),
            reason: Some("fraudulent".into()),
            now: s.at(-45),
        }),
    )
    .await;
    s.run(
        b,
        OrderCommand::UpdateDispute(UpdateDispute {
            dispute_id: "dp_won".into(),
            status: "under_review".into(),
            now: s.at(-44),
        }),
    )
    .await;
    s.run(
        b,
        OrderCommand::CloseDispute(CloseDispute {
            dispute_id: "dp_won".into(),
            outcome: DisputeOutcome::Won,
            now: s.at(-43),
        }),
    )
    .await;
    s.refund(b, -40, Some(4_000), true).await;
    s.refund(b, -39, None, false).await;
    s.refund(b, -38, None, true).await;
    s.run(
        b,
        OrderCommand::ArchiveOrder(ArchiveOrder { now: s.at(-1) }),
    )
    .await;
    // Disputed and lost: refunds stay locked.
    let c = s.create("tenant-a", &[(1, 2_000)], -60, 15).await;
    s.confirm(c, -50).await;
    s.run(
        c,
        OrderCommand::OpenDispute(OpenDispute {
            dispute_id: "dp_lost".into(),
            amount_cents: None,
            reason: None,
            now: s.at(-45),
        }),
    )
    .await;
    s.run(
        c,
        OrderCommand::CloseDispute(CloseDispute {
            dispute_id: "dp_lost".into(),
            outcome: DisputeOutcome::Lost,
            now: s.at(-40),
        }),
    )
    .await;
    // Cancelled, then archived.
    let d = s.create("tenant-a", &[(1, 2_000)], -60, 15).await;
    s.run(
        d,
        OrderCommand::CancelOrder(CancelOrder {
            reason: "duplicate".into(),
            now: s.at(-59),
        }),
    )
    .await;
    s.run(
        d,
        OrderCommand::ArchiveOrder(ArchiveOrder { now: s.at(-1) }),
    )
    .await;
    // Reminded, then expired.
    let e = s.create("tenant-a", &[(3, 1_500)], -30, -10).await;
    s.run(
        e,
        OrderCommand::SendReminder(SendReminder { now: s.at(-15) }),
    )
    .await;
    s.run(e, OrderCommand::ExpireOrder(ExpireOrder { now: s.at(-5) }))
        .await;
    // A failed payment, then the order failed.
    let f = s.create("tenant-a", &[(1, 2_000)], -10, 15).await;
    s.run(
        f,
        OrderCommand::RecordPaymentFailure(RecordPaymentFailure {
            payment_intent_id: "pi_declined".into(),
            reason: "card declined".into(),
            now: s.at(-9),
        }),
    )
    .await;
    s.run(
        f,
        OrderCommand::FailOrder(FailOrder {
            reason: "fraud check".into(),
            now: s.at(-8),
        }),
    )
    .await;
    // A payment captured after the failure: rejected, then returned.
    s.run(
        f,
        OrderCommand::SettlePayment(SettlePayment {
            payment_intent_id: "pi_after_failure".into(),
            amount_cents: 2_000,
            currency: Some("USD".into()),
            now: s.at(-7),
        }),
    )
    .await;
    s.run(
        f,
        OrderCommand::CompleteRefund(CompleteRefund {
            refund_id: order_domain::Order::rejected_payment_refund_id(f, "pi_after_failure"),
            now: s.at(-6),
        }),
    )
    .await;
    // Another, whose return payment-service refused.
    s.run(
        f,
        OrderCommand::SettlePayment(SettlePayment {
            payment_intent_id: "pi_refused_return".into(),
            amount_cents: 2_000,
            currency: Some("USD".into()),
            now: s.at(-5),
        }),
    )
    .await;
    s.run(
        f,
        OrderCommand::FailRefund(FailRefund {
            refund_id: order_domain::Order::rejected_payment_refund_id(f, "pi_refused_return"),
            reason: "card closed".into(),
            now: s.at(-4),
        }),
    )
    .await;
    ids.extend([a, b, c, d, e, f]);
    ids
}

/// Issues commands in a loop until stopped, publishing how many it completed.
struct Writer {
    done: watch::Receiver<u64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(s: Script) -> Self {
        let (tx, done) = watch::channel(0_u64);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !token.is_cancelled() {
                let id = s.create("tenant-w", &[(1, 1000), (2, 300)], -5, 30).await;
                n += 1;
                tx.send_replace(n);
                s.confirm(id, -4).await;
                n += 1;
                tx.send_replace(n);
                s.tickets(id, -3, &[1, 2]).await;
                n += 1;
                tx.send_replace(n);
            }
        });
        Self { done, stop, task }
    }

    fn count(&self) -> u64 {
        *self.done.borrow()
    }

    /// Waits until `more` commands beyond the current count have committed.
    async fn wait_for_more(&mut self, more: u64) {
        let target = self.count() + more;
        tokio::time::timeout(
            Duration::from_secs(60),
            self.done.wait_for(|n| *n >= target),
        )
        .await
        .expect("the writer kept going")
        .expect("the writer is alive");
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.expect("the writer finished cleanly");
        let n = *self.done.borrow();
        n
    }
}

// ---------------------------------------------------------------------------------------------
// rebuild equals live

#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_equals_the_live_read_model_row_for_row(pool: PgPool) {
    let s = Script::new(&pool);
    let ids = every_event_type(&s).await;
    let types: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT event_type FROM events ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("types");
    assert_eq!(types.len(), OrderEvent::TYPES.len(), "{types:?}");

    // A reader that is not a projection; replay must leave its checkpoint alone.
    checkpoint::save(
        &pool,
        "relay",
        order_projections::FeedPosition {
            transaction_id: 1,
            global_position: 3,
        },
        3,
        Durability::Flushed,
    )
    .await
    .expect("relay checkpoint");
    project_per_event(&pool).await;
    let live = rows(&pool, TableSet::Live).await;
    // Two orders were archived: their rows moved to the archive tables.
    assert_eq!(live[0].len(), ids.len() - 2);
    assert_eq!(live[2].len(), 2);
    let live_indexes = index_names(&pool).await;
    let live_position = checkpoint::load(&pool, ORDERS_PROJECTION)
        .await
        .expect("live");

    // Batch sizes that cut orders' histories anywhere, and one that takes them all at once.
    for batch_size in [1, 7, 5_000] {
        let mut r = replay::Rebuild::start(
            &pool,
            orders(),
            RebuildOptions {
                batch_size,
                restart: true,
            },
        )
        .await
        .expect("start");
        let built = r
            .build(&NoProgress, &CancellationToken::new())
            .await
            .expect("build");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(
            built,
            Built::CaughtUp {
                events: events as u64
            }
        );
        assert_eq!(
            rows(&pool, TableSet::Shadow).await,
            live,
            "batch size {batch_size}"
        );
        let cmp = r.compare(10).await.expect("compare");
        assert!(cmp.is_identical(), "batch size {batch_size}: {cmp:#?}");
        assert_eq!(cmp.position, live_position);
        assert_eq!(
            cmp.tables[0].live_rows + cmp.tables[2].live_rows,
            ids.len() as i64
        );
        assert_eq!(cmp.tables[0].live_checksum, cmp.tables[0].rebuilt_checksum);
        r.abandon().await.expect("release");
    }

    let swapped = rebuild_and_swap(&pool, 0).await;
    assert_eq!(swapped.position, live_position);
    assert_eq!(
        swapped.kept,
        [
            "order_read__old",
            "order_item_read__old",
            "order_read_archive__old",
            "order_item_read_archive__old"
        ]
    );
    assert_eq!(rows(&pool, TableSet::Live).await, live);
    assert_eq!(rows(&pool, TableSet::Old).await, live);
    assert!(!table_exists(&pool, "order_read__shadow").await);
    // The swapped-in tables carry the migrations' index and constraint names.
    assert_eq!(index_names(&pool).await, live_indexes);
    assert!(live_indexes.contains(&"order_read.order_read_pkey".to_owned()));
    for (child, parent) in [
        ("order_item_read", "order_read"),
        ("order_item_read_archive", "order_read_archive"),
    ] {
        let fk: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{child}'::regclass
                AND confrelid = '{parent}'::regclass AND contype = 'f'"
        ))
        .fetch_one(&pool)
        .await
        .expect("fk");
        assert_eq!(fk, 1, "{child} references {parent}");
    }
    // Checkpoints: the live one where it was, the previous tables' beside it, the relay's
    // untouched.
    assert_eq!(
        consumers(&pool).await,
        BTreeSet::from(["orders".to_owned(), "orders@old".into(), "relay".into()])
    );
    assert_eq!(
        checkpoint::load(&pool, "relay").await.expect("relay"),
        order_projections::FeedPosition {
            transaction_id: 1,
            global_position: 3
        }
    );
    // The live projector carries on over the new tables.
    let more = s.paid_order().await;
    project_per_event(&pool).await;
    assert_eq!(order_row(&pool, more).await["last_sequence"], 6);
    assert!(fresh_comparison(&pool).await.is_identical());
}

/// The strings and clocks a row written in as SQL literals must carry exactly.
const ODD: &[&str] = &[
    "it's",
    "a \"quoted\" {braced}, listed one",
    "back\\slash \\\" and \\'",
    "$$ and $q$ dollars",
    "NULL",
    " spaced ",
    "é ✓ 🎟",
];

#[sqlx::test(migrations = "../migrations")]
async fn live_batches_equal_the_per_event_rows(pool: PgPool) {
    let s = Script::new(&pool);
    every_event_type(&s).await;
    // Clocks with nanoseconds, after 2000 (the script's `Utc::now()`) and before it, where the
    // cut to microseconds goes the other way.
    let before_2000 = Script {
        store: s.store.clone(),
        base: DateTime::from_timestamp(900_000_000, 999_999_999).expect("a valid instant"),
    };
    for (k, odd) in ODD.iter().enumerate() {
        let script = if k % 2 == 0 { &s } else { &before_2000 };
        let id = Uuid::new_v4();
        let item = Uuid::new_v4();
        script
            .run(
                id,
                OrderCommand::CreateOrder(CreateOrder {
                    order_id: id,
                    order_number: format!("{odd}#{k}"),
                    tenant_id: (*odd).into(),
                    user_id: format!("user {odd}"),
                    event_id: Uuid::new_v4(),
                    currency: Currency::parse("USD").expect("currency"),
                    items: vec![NewLineItem {
                        id: item,
                        ticket_type_id: Uuid::new_v4(),
                        quantity: 2,
                        unit_price_cents: 1_000,
                    }],
                    fees_cents: 0,
                    tax_cents: 0,
                    expires_at: script.at(15),
                    event_starts_at: (k % 3 != 0).then(|| script.at(60)),
                    now: script.at(0),
                }),
            )
            .await;
        script
            .run(
                id,
                OrderCommand::ConfirmOrder(ConfirmOrder {
                    payment_intent_id: format!("pi {odd}"),
                    amount_cents: 2_000,
                    expected_version: None,
                    now: script.at(1),
                }),
            )
            .await;
        script
            .run(
                id,
                OrderCommand::RecordTickets(RecordTickets {
                    tickets: vec![
                        IssuedTicket {
                            item_id: item,
                            ticket_id: (*odd).into(),
                        },
                        IssuedTicket {
                            item_id: item,
                            ticket_id: format!("{odd},2"),
                        },
                    ],
                    now: script.at(2),
                }),
            )
            .await;
    }
    project_per_event(&pool).await;
    let per_event = rows(&pool, TableSet::Live).await;
    let position = checkpoint::load(&pool, ORDERS_PROJECTION)
        .await
        .expect("per-event position");
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM order_read WHERE order_number LIKE '%#%'")
            .fetch_all(&pool)
            .await
            .expect("tenants");
    assert_eq!(
        tenants.iter().collect::<BTreeSet<_>>(),
        ODD.iter()
            .map(|o| (*o).to_owned())
            .collect::<Vec<_>>()
            .iter()
            .collect()
    );

    // The service's projector, whose batches go with their checkpoint and commit.
    for batch_size in [1, 7, 500] {
        order_projections::orders::reset(&pool)
            .await
            .expect("reset");
        let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, batch_size);
        runner.catch_up().await.expect("projection succeeds");
        assert_eq!(
            rows(&pool, TableSet::Live).await,
            per_event,
            "batch size {batch_size}"
        );
        assert_eq!(
            checkpoint::load(&pool, ORDERS_PROJECTION)
                .await
                .expect("position"),
            position
        );
    }

    // One batch by hand, as the runner does it: the projector's writes and the checkpoint in
    // one transaction, which holds a transaction id (the fence) until its commit; nobody else
    // sees any of it before, and all of it after.
    order_projections::orders::reset(&pool)
        .await
        .expect("reset");
    let empty = rows(&pool, TableSet::Live).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    // Read until every event is behind the fence, which a parallel test's open transaction
    // may hold back for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut tx, events) = loop {
        let mut tx = pool.begin().await.expect("begin");
        let events = order_projections::feed::read_decoded_after(
            &mut *tx,
            order_projections::FeedPosition::default(),
            10_000,
        )
        .await
        .expect("read");
        if events.len() as i64 == total || Instant::now() >= deadline {
            break (tx, events);
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(events.len() as i64, total, "every event behind the fence");
    let last = events.last().expect("events").position;
    OrdersProjector
        .apply_batch(&mut tx, &events)
        .await
        .expect("batch");
    let count = events.len() as u64;
    checkpoint::save(
        &mut *tx,
        ORDERS_PROJECTION,
        last,
        count,
        Durability::Relaxed,
    )
    .await
    .expect("checkpoint");
    assert_eq!(
        rows(&pool, TableSet::Live).await,
        empty,
        "nothing before the commit"
    );
    assert_eq!(
        checkpoint::load(&pool, ORDERS_PROJECTION)
            .await
            .expect("position"),
        order_projections::FeedPosition::default()
    );
    let xid: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *tx)
        .await
        .expect("xid");
    assert!(
        xid.is_some(),
        "the batch's transaction holds an id until it commits"
    );
    tx.commit().await.expect("commit");
    assert_eq!(rows(&pool, TableSet::Live).await, per_event);
    assert_eq!(
        checkpoint::load(&pool, ORDERS_PROJECTION)
            .await
            .expect("position"),
        position
    );
}

/// The checkpoint statement fails: it runs after the batch's upserts succeeded, in the same
/// transaction, before its commit.
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_whose_checkpoint_fails_after_its_writes_keeps_neither(pool: PgPool) {
    a_failing_batch_keeps_neither(
        pool,
        "CREATE TRIGGER refuse_checkpoint BEFORE INSERT OR UPDATE ON feed_checkpoints
         FOR EACH ROW WHEN (NEW.consumer = 'orders') EXECUTE FUNCTION refuse_checkpoint()",
    )
    .await;
}

/// The commit fails (a deferred trigger on the checkpoint runs at commit): after the batch's
/// upserts and its checkpoint were both written in the transaction.
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_whose_commit_fails_keeps_neither(pool: PgPool) {
    a_failing_batch_keeps_neither(
        pool,
        "CREATE CONSTRAINT TRIGGER refuse_checkpoint AFTER INSERT OR UPDATE ON feed_checkpoints
         DEFERRABLE INITIALLY DEFERRED
         FOR EACH ROW WHEN (NEW.consumer = 'orders') EXECUTE FUNCTION refuse_checkpoint()",
    )
    .await;
}

/// Runs a batch while `trigger` (named `refuse_checkpoint`, calling the function of that name)
/// makes it fail after its writes: neither its rows nor its checkpoint stay, and once the
/// trigger is gone the same events apply once, as the per-event path applies them.
async fn a_failing_batch_keeps_neither(pool: PgPool, trigger: &str) {
    let s = Script::new(&pool);
    s.paid_order().await;
    let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, 500);
    runner.catch_up().await.expect("first orders");
    let before = rows(&pool, TableSet::Live).await;
    let position = checkpoint::load(&pool, ORDERS_PROJECTION)
        .await
        .expect("position");

    sqlx::query(
        "CREATE FUNCTION refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected checkpoint failure'; END $$",
    )
    .execute(&pool)
    .await
    .expect("function");
    sqlx::query(trigger).execute(&pool).await.expect("trigger");
    let later = s.paid_order().await;
    // The fence is cluster-wide: a parallel test's open transaction may hide the new events
    // for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        match runner.run_once().await {
            Ok(order_projections::RunOnce::Idle) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(&failed, Err(e) if format!("{e:?}").contains("injected checkpoint failure")),
        "{failed:?}"
    );
    assert_eq!(
        rows(&pool, TableSet::Live).await,
        before,
        "no row of the batch"
    );
    assert_eq!(
        checkpoint::load(&pool, ORDERS_PROJECTION)
            .await
            .expect("position"),
        position
    );

    // Without the failure, the same events apply once, as the per-event path applies them.
    sqlx::query("DROP TRIGGER refuse_checkpoint ON feed_checkpoints")
        .execute(&pool)
        .await
        .expect("drop");
    runner.catch_up().await.expect("the rest");
    assert_eq!(order_row(&pool, later).await["last_sequence"], 6);
    let batched = rows(&pool, TableSet::Live).await;
    order_projections::orders::reset(&pool)
        .await
        .expect("reset");
    project_per_event(&pool).await;
    assert_eq!(rows(&pool, TableSet::Live).await, batched);
}

// ---------------------------------------------------------------------------------------------
// online

#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_while_commands_keep_arriving_ends_consistent(pool: PgPool) {
    let s = Script::new(&pool);
    for _ in 0..8 {
        s.paid_order().await;
    }
    // The service's projector, running throughout.
    let live_stop = CancellationToken::new();
    let live = {
        let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, 20);
        let stop = live_stop.clone();
        tokio::spawn(async move {
            runner
                .run_until_stopped(Duration::from_millis(2), stop)
                .await;
        })
    };
    // The live checkpoint is past the first batch before the rebuild starts chasing it.
    project_per_event(&pool).await;
    let mut writer = Writer::start(s.clone());
    writer.wait_for_more(3).await;

    let mut r = replay::Rebuild::start(&pool, orders(), options(10))
        .await
        .expect("start");
    // One batch, then commands, then the rest of the build.
    let first = StopAfter::new(1);
    let built = r.build(&first, &first.cancel).await.expect("first batch");
    assert_eq!(built, Built::Interrupted { events: 10 });
    writer.wait_for_more(6).await;
    let built = r
        .build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    assert!(matches!(built, Built::CaughtUp { .. }), "{built:?}");
    writer.wait_for_more(6).await;
    // Compared in one snapshot at the live checkpoint, the copies agree although both move.
    let cmp = r.compare(10).await.expect("compare");
    assert!(cmp.is_identical(), "{cmp:#?}");
    writer.wait_for_more(6).await;
    let swapped = r.swap().await.expect("swap");
    assert!(swapped.position.global_position > 0);
    // Commands after the swap land in the new tables.
    writer.wait_for_more(6).await;
    let commands = writer.stop().await;
    assert!(commands >= 27, "{commands}");
    project_per_event(&pool).await;
    live_stop.cancel();
    live.await.expect("projector task");

    let orders_in_store: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT aggregate_id) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
    let cmp = fresh_comparison(&pool).await;
    assert!(cmp.is_identical(), "{cmp:#?}");
    assert_eq!(cmp.tables[0].live_rows, orders_in_store);
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN order_read o ON o.order_id = e.aggregate_id::uuid
          WHERE e.sequence > o.last_sequence",
    )
    .fetch_one(&pool)
    .await
    .expect("behind");
    assert_eq!(behind, 0);
}

// ---------------------------------------------------------------------------------------------
// resuming

#[sqlx::test(migrations = "../migrations")]
async fn an_interrupted_rebuild_resumes_from_the_shadow_checkpoint(pool: PgPool) {
    let s = Script::new(&pool);
    for _ in 0..6 {
        s.paid_order().await;
    }
    project_per_event(&pool).await;
    let total = 6 * 6;

    let mut r = replay::Rebuild::start(&pool, orders(), options(5))
        .await
        .expect("start");
    assert_eq!(r.resumed_from(), None);
    let stop = StopAfter::new(3);
    let built = r.build(&stop, &stop.cancel).await.expect("build");
    assert_eq!(built, Built::Interrupted { events: 15 });
    assert_eq!(stop.total.load(Ordering::SeqCst), total);
    r.abandon().await.expect("release");
    let (done, position): (i64, i64) = sqlx::query_as(
        "SELECT events_total, global_position FROM feed_checkpoints WHERE consumer = 'orders@shadow'",
    )
    .fetch_one(&pool)
    .await
    .expect("shadow checkpoint");
    assert_eq!(done, 15);
    let shadow_rows_before = rows(&pool, TableSet::Shadow).await;
    assert!(!shadow_rows_before[0].is_empty());

    // A new rebuild keeps the shadow and carries on after its checkpoint.
    let mut r = replay::Rebuild::start(&pool, orders(), options(5))
        .await
        .expect("restart");
    assert_eq!(r.resumed_from(), Some(15));
    let applied_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position > $1")
            .bind(position)
            .fetch_one(&pool)
            .await
            .expect("count");
    let progress = StopAfter::new(u64::MAX);
    let built = r
        .build(&progress, &CancellationToken::new())
        .await
        .expect("build");
    assert_eq!(
        built,
        Built::CaughtUp {
            events: applied_after as u64
        }
    );
    assert_eq!(built.events(), total - 15);
    assert_eq!(progress.total.load(Ordering::SeqCst), total - 15);
    let cmp = r.compare(10).await.expect("compare");
    assert!(cmp.is_identical(), "{cmp:#?}");
    r.abandon().await.expect("release");

    // --restart starts over from the first event.
    let mut r = replay::Rebuild::start(
        &pool,
        orders(),
        RebuildOptions {
            batch_size: 5,
            restart: true,
        },
    )
    .await
    .expect("restart");
    assert_eq!(r.resumed_from(), None);
    let built = r
        .build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    assert_eq!(built.events(), total);
    r.abandon().await.expect("release");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_shadow_emptied_by_crash_recovery_is_rebuilt_not_resumed(pool: PgPool) {
    let s = Script::new(&pool);
    for _ in 0..3 {
        s.paid_order().await;
    }
    project_per_event(&pool).await;
    let mut r = replay::Rebuild::start(&pool, orders(), options(4))
        .await
        .expect("start");
    let stop = StopAfter::new(2);
    r.build(&stop, &stop.cancel).await.expect("build");
    r.abandon().await.expect("release");
    // The shadow is unlogged while it is built; crash recovery empties such tables and keeps
    // the (logged) checkpoint, which is what this does.
    for table in [
        "order_read__shadow",
        "order_item_read__shadow",
        "order_read_archive__shadow",
        "order_item_read_archive__shadow",
    ] {
        assert_eq!(persistence(&pool, table).await, "u", "{table}");
    }
    sqlx::query(
        "TRUNCATE order_item_read__shadow, order_read__shadow, order_item_read_archive__shadow,
                  order_read_archive__shadow",
    )
    .execute(&pool)
    .await
    .expect("truncate");

    let mut r = replay::Rebuild::start(&pool, orders(), options(4))
        .await
        .expect("start again");
    assert_eq!(r.resumed_from(), None, "resuming would miss the lost rows");
    r.build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    let cmp = r.compare(10).await.expect("compare");
    assert!(cmp.is_identical(), "{cmp:#?}");
    r.abandon().await.expect("release");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_shadow_from_an_older_schema_is_rebuilt_not_resumed(pool: PgPool) {
    let s = Script::new(&pool);
    s.paid_order().await;
    project_per_event(&pool).await;
    let mut r = replay::Rebuild::start(&pool, orders(), options(2))
        .await
        .expect("start");
    let stop = StopAfter::new(1);
    r.build(&stop, &stop.cancel).await.expect("build");
    r.abandon().await.expect("release");
    // A migration adds a column to the live table while the shadow waits.
    sqlx::query("ALTER TABLE order_read ADD COLUMN note text")
        .execute(&pool)
        .await
        .expect("alter");
    let r = replay::Rebuild::start(&pool, orders(), options(2))
        .await
        .expect("start again");
    assert_eq!(r.resumed_from(), None);
    r.abandon().await.expect("release");
    let has_note: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_name = 'order_read__shadow' AND column_name = 'note')",
    )
    .fetch_one(&pool)
    .await
    .expect("columns");
    assert!(has_note);
}

// ---------------------------------------------------------------------------------------------
// one at a time

#[sqlx::test(migrations = "../migrations")]
async fn a_second_concurrent_rebuild_is_refused(pool: PgPool) {
    let s = Script::new(&pool);
    s.paid_order().await;
    project_per_event(&pool).await;

    let mut first = replay::Rebuild::start(&pool, orders(), options(100))
        .await
        .expect("first");
    let pid = first.lock_pid().await.expect("pid");
    let second = replay::Rebuild::start(&pool, orders(), options(100)).await;
    match second {
        Err(ProjectionError::RebuildRunning {
            ref projection,
            pid: Some(p),
        }) => {
            assert_eq!(projection, "orders");
            assert_eq!(p, pid);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let message = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        message,
        format!("a rebuild of orders is already running (pid {pid})")
    );
    // Neither a rollback nor a bare lock gets in either.
    assert!(matches!(
        replay::rollback(&pool, orders(), 100).await,
        Err(ProjectionError::RebuildRunning { .. })
    ));
    assert!(matches!(
        ReplayLock::acquire(&pool, "orders").await,
        Err(ProjectionError::RebuildRunning { .. })
    ));
    // The first one is unaffected and finishes; then another may start.
    first
        .build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    first.swap().await.expect("swap");
    let again = replay::Rebuild::start(&pool, orders(), options(100))
        .await
        .expect("after the first");
    again.abandon().await.expect("release");
}

// ---------------------------------------------------------------------------------------------
// the diff

#[sqlx::test(migrations = "../migrations")]
async fn the_dry_run_diff_shows_a_corrupted_row(pool: PgPool) {
    let s = Script::new(&pool);
    let ids: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(s.paid_order().await);
        }
        v
    };
    project_per_event(&pool).await;
    let (bad, bad_item, gone) = (ids[0], ids[1], ids[2]);
    sqlx::query(
        "UPDATE order_read SET status = 'CANCELLED', ticket_count = 40 WHERE order_id = $1",
    )
    .bind(bad)
    .execute(&pool)
    .await
    .expect("corrupt");
    sqlx::query(
        "UPDATE order_item_read SET ticket_ids = ticket_ids || 'forged'::text
          WHERE order_id = $1 AND position = 0",
    )
    .bind(bad_item)
    .execute(&pool)
    .await
    .expect("corrupt item");
    sqlx::query("DELETE FROM order_read WHERE order_id = $1")
        .bind(gone)
        .execute(&pool)
        .await
        .expect("lose a row");
    let corrupted = rows(&pool, TableSet::Live).await;

    let mut r = replay::Rebuild::start(&pool, orders(), options(1_000))
        .await
        .expect("start");
    r.build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    let cmp = r.compare(50).await.expect("compare");
    let order_table = &cmp.tables[0];
    assert_eq!(order_table.table, "order_read");
    assert_eq!(order_table.live_rows, 3);
    assert_eq!(order_table.rebuilt_rows, 4);
    assert_ne!(order_table.live_checksum, order_table.rebuilt_checksum);
    assert_eq!(order_table.differing_rows, 2);
    let changed = order_table
        .diffs
        .iter()
        .find(|d| d.key == format!("order_id={bad}"))
        .expect("the corrupted order is listed");
    assert_eq!(changed.columns(), ["status", "ticket_count"]);
    let DiffKind::Changed(columns) = &changed.kind else {
        panic!("{changed:?}")
    };
    assert_eq!(columns[0].live, "CANCELLED");
    assert_eq!(columns[0].rebuilt, "PARTIALLY_REFUNDED");
    assert_eq!(columns[1].live, 40);
    assert_eq!(columns[1].rebuilt, 3);
    assert!(changed
        .to_string()
        .contains("status live=\"CANCELLED\" rebuilt=\"PARTIALLY_REFUNDED\""));
    let missing = order_table
        .diffs
        .iter()
        .find(|d| d.key == format!("order_id={gone}"))
        .expect("the lost order is listed");
    assert_eq!(missing.kind, DiffKind::OnlyRebuilt);

    let item_table = &cmp.tables[1];
    assert_eq!(item_table.table, "order_item_read");
    // The forged ticket, and the lost order's two items.
    assert_eq!(item_table.differing_rows, 3);
    let forged = item_table
        .diffs
        .iter()
        .find(|d| d.key.starts_with(&format!("order_id={bad_item}")))
        .expect("the forged item is listed");
    assert_eq!(forged.columns(), ["ticket_ids"]);
    assert_eq!(cmp.differences(), 5);

    // A dry run stops here: nothing is swapped, the live rows stay as they are.
    r.abandon().await.expect("release");
    assert_eq!(rows(&pool, TableSet::Live).await, corrupted);
    assert!(!table_exists(&pool, "order_read__old").await);

    // A limit of zero still counts.
    let mut r = replay::Rebuild::start(&pool, orders(), options(1_000))
        .await
        .expect("start");
    let cmp = r.compare(0).await.expect("compare");
    assert_eq!(cmp.differences(), 5);
    assert!(cmp.tables.iter().all(|t| t.diffs.is_empty()));
    r.abandon().await.expect("release");
}

// ---------------------------------------------------------------------------------------------
// rollback

#[sqlx::test(migrations = "../migrations")]
async fn rollback_restores_the_previous_tables(pool: PgPool) {
    let s = Script::new(&pool);
    let a = s.paid_order().await;
    let b = s.create("tenant-a", &[(1, 700)], -20, 15).await;
    project_per_event(&pool).await;
    assert!(matches!(
        replay::rollback(&pool, orders(), 100).await,
        Err(ProjectionError::NothingToRollBack { .. })
    ));

    sqlx::query("UPDATE order_read SET refunded_cents = 1 WHERE order_id = $1")
        .bind(a)
        .execute(&pool)
        .await
        .expect("corrupt");
    let corrupted = order_row(&pool, a).await;
    rebuild_and_swap(&pool, 1).await;
    let fixed = order_row(&pool, a).await;
    assert_eq!(fixed["refunded_cents"], 300);
    let rebuilt = rows(&pool, TableSet::Live).await;

    // The service moves on after the swap.
    s.confirm(b, -10).await;
    project_per_event(&pool).await;
    assert_eq!(order_row(&pool, b).await["status"], "PAID");

    let rolled = replay::rollback(&pool, orders(), 100)
        .await
        .expect("rollback");
    // The previous tables are back, caught up with what happened since the swap.
    assert_eq!(rolled.caught_up, 1);
    assert_eq!(order_row(&pool, a).await, corrupted);
    let b_row = order_row(&pool, b).await;
    assert_eq!(b_row["status"], "PAID");
    assert_eq!(b_row["last_sequence"], 2);
    // The rebuilt tables are kept in their place; a second rollback brings them back.
    let old_a: Value =
        sqlx::query_scalar("SELECT to_jsonb(o) FROM order_read__old o WHERE order_id = $1")
            .bind(a)
            .fetch_one(&pool)
            .await
            .expect("old row");
    assert_eq!(old_a, fixed);
    let live_position = checkpoint::load(&pool, "orders").await.expect("live");
    assert_eq!(
        checkpoint::load(&pool, "orders@old").await.expect("old"),
        live_position
    );
    let again = replay::rollback(&pool, orders(), 100)
        .await
        .expect("second rollback");
    assert_eq!(again.caught_up, 0);
    assert_eq!(order_row(&pool, a).await, fixed);
    let now = rows(&pool, TableSet::Live).await;
    assert_eq!(now[0].len(), rebuilt[0].len());
    assert_eq!(order_row(&pool, b).await, b_row);
    // The live projector keeps working on whichever tables are live.
    s.confirm(s.create("tenant-a", &[(1, 100)], -5, 15).await, -4)
        .await;
    project_per_event(&pool).await;
    assert!(fresh_comparison(&pool).await.is_identical());

    // Cleaning up drops the copies replay keeps; then there is nothing to roll back.
    let dropped = replay::clean(&pool, orders()).await.expect("clean");
    assert_eq!(dropped.len(), 8, "{dropped:?}");
    assert!(!table_exists(&pool, "order_read__old").await);
    assert!(!table_exists(&pool, "order_read__shadow").await);
    assert_eq!(
        consumers(&pool).await,
        BTreeSet::from(["orders".to_owned()])
    );
    assert!(matches!(
        replay::rollback(&pool, orders(), 100).await,
        Err(ProjectionError::NothingToRollBack { .. })
    ));
    assert!(replay::clean(&pool, orders())
        .await
        .expect("clean again")
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// --order

#[sqlx::test(migrations = "../migrations")]
async fn an_order_rebuild_fixes_one_order_and_leaves_the_others(pool: PgPool) {
    let s = Script::new(&pool);
    let a = s.paid_order().await;
    let b = s.paid_order().await;
    let c = s.paid_order().await;
    project_per_event(&pool).await;
    let original = rows(&pool, TableSet::Live).await;
    for id in [a, b] {
        sqlx::query(
            "UPDATE order_read SET status = 'PENDING', archived = true WHERE order_id = $1",
        )
        .bind(id)
        .execute(&pool)
        .await
        .expect("corrupt");
        sqlx::query("UPDATE order_item_read SET ticket_ids = '{}' WHERE order_id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .expect("corrupt items");
    }
    let corrupted = rows(&pool, TableSet::Live).await;

    // Dry run: the changes it would make, and nothing changed.
    let dry = replay::rebuild_aggregate(&pool, orders(), &a.to_string(), true)
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.events, 6);
    assert_eq!(dry.rows, 3);
    let order_change = dry
        .changes
        .iter()
        .find(|d| d.table == "order_read")
        .expect("the order row changes");
    assert_eq!(order_change.key, format!("order_id={a}"));
    assert_eq!(order_change.columns(), ["status", "archived"]);
    assert_eq!(
        dry.changes
            .iter()
            .filter(|d| d.table == "order_item_read")
            .count(),
        2
    );
    assert_eq!(rows(&pool, TableSet::Live).await, corrupted);

    let fixed = replay::rebuild_aggregate(&pool, orders(), &a.to_string(), false)
        .await
        .expect("rebuild one order");
    assert_eq!(fixed.changes, dry.changes);
    let now = rows(&pool, TableSet::Live).await;
    assert_eq!(rows_of(&now, a), rows_of(&original, a), "a is rebuilt");
    assert_eq!(rows_of(&now, b), rows_of(&corrupted, b), "b is left alone");
    assert_eq!(rows_of(&now, c), rows_of(&original, c), "c is untouched");

    // Rebuilding a correct order changes nothing; an unknown one has nothing to rebuild.
    let again = replay::rebuild_aggregate(&pool, orders(), &c.to_string(), false)
        .await
        .expect("correct order");
    assert!(again.changes.is_empty());
    assert_eq!(again.events, 6);
    let unknown = replay::rebuild_aggregate(&pool, orders(), &Uuid::new_v4().to_string(), false)
        .await
        .expect("unknown order");
    assert_eq!((unknown.events, unknown.rows), (0, 0));

    // Events the live projector has not applied yet are left to it.
    s.run(
        c,
        OrderCommand::SendEventReminder(SendEventReminder { now: s.at(-30) }),
    )
    .await;
    let before = order_row(&pool, c).await;
    let ahead = replay::rebuild_aggregate(&pool, orders(), &c.to_string(), false)
        .await
        .expect("order ahead of the checkpoint");
    assert_eq!(ahead.events, 6);
    assert_eq!(order_row(&pool, c).await, before);
    project_per_event(&pool).await;
    assert_eq!(order_row(&pool, c).await["last_sequence"], 7);

    // An archived order's rows are in the archive tables, and go back there.
    let d = s.create("tenant-a", &[(1, 2_000), (2, 10)], -60, 15).await;
    s.run(
        d,
        OrderCommand::CancelOrder(CancelOrder {
            reason: "duplicate".into(),
            now: s.at(-59),
        }),
    )
    .await;
    s.run(
        d,
        OrderCommand::ArchiveOrder(ArchiveOrder { now: s.at(-1) }),
    )
    .await;
    project_per_event(&pool).await;
    let archived = rows_of(&rows(&pool, TableSet::Live).await, d);
    assert_eq!(
        archived.iter().map(Vec::len).collect::<Vec<_>>(),
        [0, 0, 1, 2]
    );
    sqlx::query("UPDATE order_read_archive SET status = 'PAID' WHERE order_id = $1")
        .bind(d)
        .execute(&pool)
        .await
        .expect("corrupt the archive");
    let fixed = replay::rebuild_aggregate(&pool, orders(), &d.to_string(), false)
        .await
        .expect("rebuild an archived order");
    assert_eq!(fixed.events, 3);
    assert_eq!(fixed.changes.len(), 1, "{:?}", fixed.changes);
    assert_eq!(fixed.changes[0].table, "order_read_archive");
    assert_eq!(fixed.changes[0].columns(), ["status"]);
    assert_eq!(rows_of(&rows(&pool, TableSet::Live).await, d), archived);
}

// ---------------------------------------------------------------------------------------------
// throughput

/// Rebuilds generated events and reports events/s. `REPLAY_BENCH_EVENTS` and
/// `REPLAY_BENCH_BATCH` set the size and the batch size (by default 5,000 events in batches of
/// 1,000, so the suite stays quick and histories still span batches); the live projector
/// applies the events one by one first, so the comparison also checks the batched writer
/// against it at that size.
#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_of_generated_events_reports_its_rate(pool: PgPool) {
    fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }
    let wanted: u64 = env("REPLAY_BENCH_EVENTS").unwrap_or(5_000);
    let batch_size: i64 = env("REPLAY_BENCH_BATCH").unwrap_or(1_000);
    let events = generate_orders(&pool, wanted.div_ceil(EVENTS_PER_ORDER))
        .await
        .expect("generate events");
    // As autovacuum would after a load this size; without statistics the feed's query sorts the
    // whole table for every batch.
    sqlx::query("ANALYZE events")
        .execute(&pool)
        .await
        .expect("analyze");

    let started = Instant::now();
    let runner = ProjectionRunner::new(pool.clone(), OrdersProjector, 500);
    // catch_up, not drain: another test's open transaction can hold the fence for a moment.
    runner.catch_up().await.expect("live projection");
    let live_rate = events as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut r = replay::Rebuild::start(&pool, orders(), options(batch_size))
        .await
        .expect("start");
    let built = r
        .build(&NoProgress, &CancellationToken::new())
        .await
        .expect("build");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(built.events(), events);
    let compare_started = Instant::now();
    let cmp = r.compare(5).await.expect("compare");
    let compare_seconds = compare_started.elapsed().as_secs_f64();
    assert!(cmp.is_identical(), "{cmp:#?}");
    assert_eq!(cmp.rebuilt_rows() as u64, events / 5 * 3);
    let swap_started = Instant::now();
    r.swap().await.expect("swap");
    let swap_seconds = swap_started.elapsed().as_secs_f64();
    println!(
        "replay: {events} events rebuilt in {seconds:.2} s = {:.0} events/s \
         (live projector one by one: {live_rate:.0} events/s); compare {compare_seconds:.2} s, \
         swap {swap_seconds:.2} s",
        events as f64 / seconds
    );
}
