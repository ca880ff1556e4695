//! Scheduled jobs (docs/contract.md §8): each job's effect on real data, run once, run again, and
//! run by two schedulers at once; leader failover; a job's breaker opening and closing; a
//! shutdown in the middle of a job run and under HTTP load; and `GET /internal/jobs`.
//!
//! Jobs are driven with `run_once` or a runner's `tick` at a chosen `now`, and the read model
//! with `catch_up`, so nothing here waits for a background loop to get round to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::join_all;
use order_api::app::store::OrderStore;
use order_api::config::Settings;
use order_api::jobs::{
    self, Job, JobBreakerPolicy, JobBreakerState, JobContext, JobRegistry, JobRunner, Tick,
};
use order_api::startup::{AppState, Application};
use order_domain::commands::{
    CancelOrder, ConfirmOrder, CreateOrder, ExpireOrder, RecordTickets, RefundFacts, RequestRefund,
    ReserveOrder, SendReminder,
};
use order_domain::values::{Currency, IssuedTicket, NewLineItem};
use order_domain::{Order, OrderCommand};
use order_projections::{queries, ORDERS_PROJECTION};
use order_tests::peers::{Peer, Reply};
use order_tests::{json_of, spawn_app, spawn_app_with, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Orders written straight through the command path, at times relative to the test's start.
struct Orders {
    store: OrderStore,
    pool: PgPool,
    base: DateTime<Utc>,
}

impl Orders {
    fn new(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            pool: state.pool.clone(),
            base: Utc::now(),
        }
    }

    /// `minutes` from the start of the test (negative: in the past).
    fn at(&self, minutes: i64) -> DateTime<Utc> {
        self.base + TimeDelta::minutes(minutes)
    }

    async fn run(&self, id: Uuid, command: OrderCommand) -> Order {
        self.store
            .execute(id, &HashMap::new(), |_| Ok(()), || command.clone())
            .await
            .unwrap_or_else(|e| panic!("command on {id} failed: {e}"))
            .order
    }

    /// An order of two lines (2 × type A, 1 × type B) created at `created`, expiring at
    /// `expires`, for an event starting at `event_starts` (all minutes).
    async fn create(&self, created: i64, expires: i64, event_starts: Option<i64>) -> Uuid {
        let id = Uuid::new_v4();
        self.run(
            id,
            OrderCommand::CreateOrder(CreateOrder {
                order_id: id,
                order_number: format!("ORD-J-{}", &id.simple().to_string()[..8]),
                tenant_id: "tenant-a".into(),
                user_id: "user-1".into(),
                event_id: Uuid::new_v4(),
                currency: Currency::parse("USD").expect("currency"),
                items: vec![
                    NewLineItem {
                        id: Uuid::new_v4(),
                        ticket_type_id: Uuid::from_u128(0xA),
                        quantity: 2,
                        unit_price_cents: 5_000,
                    },
                    NewLineItem {
                        id: Uuid::new_v4(),
                        ticket_type_id: Uuid::from_u128(0xB),
                        quantity: 1,
                        unit_price_cents: 7_500,
                    },
                ],
                fees_cents: 0,
                tax_cents: 0,
                expires_at: self.at(expires),
                event_starts_at: event_starts.map(|m| self.at(m)),
                now: self.at(created),
            }),
        )
        .await;
        id
    }

    async fn reserve(&self, id: Uuid, at: i64, expires: i64) {
        self.run(
            id,
            OrderCommand::ReserveOrder(ReserveOrder {
                expires_at: self.at(expires),
                now: self.at(at),
            }),
        )
        .await;
    }

    async fn confirm(&self, id: Uuid, at: i64) -> Order {
        self.run(
            id,
            OrderCommand::ConfirmOrder(ConfirmOrder {
                payment_intent_id: format!("pi_{}", &id.simple().to_string()[..8]),
                amount_cents: 17_500,
                expected_version: None,
                now: self.at(at),
            }),
        )
        .await
    }

    async fn cancel(&self, id: Uuid, at: i64) {
        self.run(
            id,
            OrderCommand::CancelOrder(CancelOrder {
                reason: "changed my mind".into(),
                now: self.at(at),
            }),
        )
        .await;
    }

    /// A paid order, paid at `paid` minutes.
    async fn paid(&self, paid: i64, event_starts: Option<i64>) -> Uuid {
        let id = self.create(paid - 1, paid + 15, event_starts).await;
        self.confirm(id, paid).await;
        id
    }

    async fn load(&self, id: Uuid) -> Order {
        self.store.load(id).await.expect("load").expect("exists")
    }

    /// Brings the order read models up to date.
    async fn project(&self) {
        order_tests::helpers::project(&self.pool).await;
    }

    /// Events of `event_type` across all orders.
    async fn count(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Events of `event_type` on one order.
    async fn count_for(&self, id: Uuid, event_type: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = $2",
        )
        .bind(id.to_string())
        .bind(event_type)
        .fetch_one(&self.pool)
        .await
        .expect("count")
    }
}

/// A fresh instance of the job `name` as the application configures it.
fn job(state: &AppState, name: &str) -> Arc<dyn Job> {
    jobs::all(state)
        .into_iter()
        .find(|j| j.name() == name)
        .unwrap_or_else(|| panic!("no job named {name}"))
}

fn policy() -> JobBreakerPolicy {
    JobBreakerPolicy {
        failures: 3,
        cool_down: TimeDelta::seconds(60),
    }
}

/// A scheduler of job `name` with its own leader lock and registry, as on its own replica.
fn runner(state: &AppState, name: &str) -> JobRunner {
    JobRunner::new(
        state.pool.clone(),
        job(state, name),
        policy(),
        &JobRegistry::new(),
    )
}

/// Ticks two schedulers of the same job at once: exactly one leads and runs; its report.
async fn race(a: &mut JobRunner, b: &mut JobRunner, now: DateTime<Utc>) -> jobs::JobReport {
    let stop = CancellationToken::new();
    let (ta, tb) = tokio::join!(a.tick(now, &stop), b.tick(now, &stop));
    match (ta, tb) {
        (Tick::Ran(report), Tick::Standby) | (Tick::Standby, Tick::Ran(report)) => report,
        other => panic!("expected one run and one standby, got {other:?}"),
    }
}

/// Job leader locks held in this test's database.
async fn job_locks(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'leader:job:%'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(conn)
    .await
    .expect("locks")
}

/// Waits until `check` holds, failing after 10 s (for effects of a task the test started).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// ticket-service's list for `order`: one ticket per seat, tied to its line by `itemId`.
fn ticket_list(order: &Order) -> Value {
    let mut tickets = Vec::new();
    for item in &order.items {
        for n in 0..item.quantity {
            tickets.push(json!({
                "id": format!("tkt-{}-{}-{n}", &order.id.unwrap_or_default().simple().to_string()[..8], item.id.simple()),
                "orderId": order.id,
                "itemId": item.id,
                "status": "valid",
            }));
        }
    }
    json!({"orderId": order.id, "tickets": tickets})
}

fn tickets_path(id: Uuid) -> String {
    format!("/internal/orders/{id}/tickets")
}

// ---------------------------------------------------------------------------------------------
// Expiration

#[sqlx::test(migrations = "../migrations")]
async fn expiration_expires_overdue_open_orders_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let pending = o.create(-30, -5, None).await;
    let reserved = o.create(-30, -20, None).await;
    o.reserve(reserved, -25, -1).await;
    let fresh = o.create(-1, 30, None).await;
    let paid = o.create(-30, -10, None).await;
    o.confirm(paid, -20).await;
    o.project().await;

    let (mut a, mut b) = (
        runner(&app.state, "expiration"),
        runner(&app.state, "expiration"),
    );
    let first = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!((first.examined, first.acted), (2, 2), "{first:?}");
    assert_eq!(o.count("OrderExpired").await, 2);
    assert_eq!(o.count_for(pending, "OrderExpired").await, 1);
    assert_eq!(o.count_for(reserved, "OrderExpired").await, 1);
    for id in [fresh, paid] {
        assert_eq!(o.count_for(id, "OrderExpired").await, 0);
    }

    // Before and after the read model catches up, a second run finds nothing new.
    let again = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!((again.examined, again.acted), (0, 0), "{again:?}");
    o.project().await;
    let again = race(&mut a, &mut b, o.at(1)).await;
    assert_eq!((again.examined, again.acted), (0, 0), "{again:?}");
    assert_eq!(o.count("OrderExpired").await, 2);
    assert_eq!(
        queries::order(&o.pool, pending, None)
            .await
            .expect("query")
            .expect("projected")
            .status
            .as_str(),
        "EXPIRED"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn racing_runs_without_any_lock_still_act_once_per_order(pool: PgPool) {
    // The leader lock is one guard; the commands are the other. Two runs of the same batch at
    // once (a leader that lost its connection mid-run, say) record each event once.
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    for _ in 0..6 {
        o.create(-30, -5, None).await;
    }
    for _ in 0..4 {
        o.create(-10, 3, None).await;
    }
    o.project().await;
    for (name, event, expected) in [
        ("expiration", "OrderExpired", 6),
        ("reminder", "ReminderSent", 4),
    ] {
        let (x, y) = (job(&app.state, name), job(&app.state, name));
        let ctx = JobContext::at(o.at(0));
        let (rx, ry) = tokio::join!(x.run_once(&ctx), y.run_once(&ctx));
        let (rx, ry) = (rx.expect("run x"), ry.expect("run y"));
        assert_eq!(rx.acted + ry.acted, expected, "{name}: {rx:?} {ry:?}");
        // Each run examines what the read model lists when it looks, which can be fewer: the
        // app's own projector may already have applied the other run's first commands.
        for r in [&rx, &ry] {
            assert!(
                r.acted <= r.examined && r.examined <= expected,
                "{name}: {rx:?} {ry:?}"
            );
        }
        assert_eq!(
            o.count(event).await,
            i64::try_from(expected).unwrap_or(0),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reminder

#[sqlx::test(migrations = "../migrations")]
async fn reminder_reminds_orders_about_to_expire_once(pool: PgPool) {
    // The default window is 5 minutes.
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let soon = o.create(-10, 3, None).await;
    let reserved_soon = o.create(-10, 20, None).await;
    o.reserve(reserved_soon, -5, 4).await;
    let later = o.create(-1, 30, None).await;
    let overdue = o.create(-30, -1, None).await;
    let reminded = o.create(-10, 2, None).await;
    o.run(
        reminded,
        OrderCommand::SendReminder(SendReminder { now: o.at(-1) }),
    )
    .await;
    o.project().await;

    let (mut a, mut b) = (
        runner(&app.state, "reminder"),
        runner(&app.state, "reminder"),
    );
    let first = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!((first.examined, first.acted), (2, 2), "{first:?}");
    for (id, expected) in [
        (soon, 1),
        (reserved_soon, 1),
        (later, 0),
        (overdue, 0),
        (reminded, 1),
    ] {
        assert_eq!(
            o.count_for(id, "ReminderSent").await,
            expected,
            "order {id}"
        );
    }
    o.project().await;
    let again = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!(again.acted, 0, "{again:?}");
    assert_eq!(o.count("ReminderSent").await, 3);
}

// ---------------------------------------------------------------------------------------------
// Event reminder

#[sqlx::test(migrations = "../migrations")]
async fn event_reminder_reminds_paid_orders_of_close_events_once(pool: PgPool) {
    // The default window is 24 hours.
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let close = o.paid(-30, Some(120)).await;
    let far = o.paid(-30, Some(3 * 24 * 60)).await;
    let past = o.paid(-300, Some(-60)).await;
    let unpaid = o.create(-5, 10, Some(120)).await;
    let no_event = o.paid(-30, None).await;
    o.project().await;

    let (mut a, mut b) = (
        runner(&app.state, "event-reminder"),
        runner(&app.state, "event-reminder"),
    );
    let first = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!((first.examined, first.acted), (1, 1), "{first:?}");
    for (id, expected) in [(close, 1), (far, 0), (past, 0), (unpaid, 0), (no_event, 0)] {
        assert_eq!(
            o.count_for(id, "EventReminderSent").await,
            expected,
            "order {id}"
        );
    }
    o.project().await;
    let again = race(&mut a, &mut b, o.at(5)).await;
    assert_eq!((again.examined, again.acted), (0, 0), "{again:?}");
    assert_eq!(o.count("EventReminderSent").await, 1);
}

// ---------------------------------------------------------------------------------------------
// Archiving

async fn hot_and_archived(pool: &PgPool, id: Uuid) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM order_read WHERE order_id = $1),
                (SELECT count(*) FROM order_item_read WHERE order_id = $1),
                (SELECT count(*) FROM order_read_archive WHERE order_id = $1),
                (SELECT count(*) FROM order_item_read_archive WHERE order_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("counts")
}

#[sqlx::test(migrations = "../migrations")]
async fn archiving_moves_old_terminal_orders_to_the_archive_once(pool: PgPool) {
    // The default age is 30 days.
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let day = 24 * 60;
    let old_cancelled = o.create(-41 * day, -41 * day + 15, None).await;
    o.cancel(old_cancelled, -40 * day).await;
    let old_expired = o.create(-41 * day, -40 * day, None).await;
    o.run(
        old_expired,
        OrderCommand::ExpireOrder(ExpireOrder {
            now: o.at(-40 * day + 1),
        }),
    )
    .await;
    let young_cancelled = o.create(-3 * day, -3 * day + 15, None).await;
    o.cancel(young_cancelled, -2 * day).await;
    let old_paid = o.paid(-40 * day, None).await;
    let refunding = o.paid(-41 * day, None).await;
    o.run(
        refunding,
        OrderCommand::RequestRefund(RequestRefund {
            refund_id: Uuid::new_v4(),
            amount_cents: None,
            reason: "asked".into(),
            facts: RefundFacts::default(),
            now: o.at(-40 * day),
        }),
    )
    .await;
    o.project().await;
    let before = queries::order_detail(&o.pool, old_cancelled, None)
        .await
        .expect("query")
        .expect("projected");

    let (mut a, mut b) = (
        runner(&app.state, "archiving"),
        runner(&app.state, "archiving"),
    );
    let first = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!((first.examined, first.acted), (2, 2), "{first:?}");
    for (id, expected) in [
        (old_cancelled, 1),
        (old_expired, 1),
        (young_cancelled, 0),
        (old_paid, 0),
        (refunding, 0),
    ] {
        assert_eq!(
            o.count_for(id, "OrderArchived").await,
            expected,
            "order {id}"
        );
    }

    // The projector moves them out of the hot tables, items included.
    o.project().await;
    for id in [old_cancelled, old_expired] {
        assert_eq!(
            hot_and_archived(&o.pool, id).await,
            (0, 0, 1, 2),
            "order {id}"
        );
    }
    for id in [young_cancelled, old_paid, refunding] {
        assert_eq!(
            hot_and_archived(&o.pool, id).await,
            (1, 2, 0, 0),
            "order {id}"
        );
    }
    // Lookups by id still answer, with the same order and items (one event later).
    let after = queries::order_detail(&o.pool, old_cancelled, None)
        .await
        .expect("query")
        .expect("still answers");
    assert_eq!(after.items, before.items);
    assert_eq!(after.order.version, before.order.version + 1);
    let (status, body) = json_of(
        app.get_as(
            "payment-service",
            &format!("/internal/orders/{old_cancelled}"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["status"], "CANCELLED");

    let again = race(&mut a, &mut b, o.at(1)).await;
    assert_eq!((again.examined, again.acted), (0, 0), "{again:?}");
    assert_eq!(o.count("OrderArchived").await, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_puts_archived_orders_back_in_the_archive(pool: PgPool) {
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let id = o.create(-50 * 24 * 60, -50 * 24 * 60 + 15, None).await;
    o.cancel(id, -45 * 24 * 60).await;
    o.project().await;
    job(&app.state, "archiving")
        .run_once(&JobContext::at(o.at(0)))
        .await
        .expect("run");
    o.project().await;
    let live: Value = sqlx::query_scalar("SELECT to_jsonb(a) FROM order_read_archive a")
        .fetch_one(&o.pool)
        .await
        .expect("archived row");

    order_projections::orders::rebuild(&o.pool, 2)
        .await
        .expect("rebuild");
    assert_eq!(hot_and_archived(&o.pool, id).await, (0, 0, 1, 2));
    let rebuilt: Value = sqlx::query_scalar("SELECT to_jsonb(a) FROM order_read_archive a")
        .fetch_one(&o.pool)
        .await
        .expect("archived row");
    assert_eq!(rebuilt, live);
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// An application whose ticket-service is `ticket` and whose outgoing calls are not retried.
async fn app_with_ticket_peer(pool: PgPool, ticket: &Peer) -> TestApp {
    let url = ticket.url.clone();
    spawn_app_with(pool, move |s| {
        s.peers.ticket_url = url;
        s.peers.retry_max_times = 0;
    })
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn reconciliation_records_tickets_found_and_alerts_on_the_rest_once(pool: PgPool) {
    // The default: paid orders still without tickets 10 minutes after payment.
    let ticket = Peer::start().await;
    let app = app_with_ticket_peer(pool, &ticket).await;
    let o = Orders::new(&app.state);
    let found = o.paid(-30, None).await;
    let by_type = o.paid(-25, None).await;
    let missing = o.paid(-20, None).await;
    let unknown = o.paid(-15, None).await;
    let recent = o.paid(-2, None).await;
    let ticketed = o.paid(-40, None).await;
    let t = o.load(ticketed).await;
    o.run(
        ticketed,
        OrderCommand::RecordTickets(RecordTickets {
            tickets: t
                .items
                .iter()
                .map(|i| IssuedTicket {
                    item_id: i.id,
                    ticket_id: format!("pre-{}", i.id.simple()),
                })
                .collect(),
            now: o.at(-39),
        }),
    )
    .await;
    ticket.on(
        "GET",
        &tickets_path(found),
        vec![Reply::ok(ticket_list(&o.load(found).await))],
    );
    // Listed by ticket type only: matched to the lines in order.
    ticket.on(
        "GET",
        &tickets_path(by_type),
        vec![Reply::ok(json!({"orderId": by_type, "tickets": [
            {"id": "bt-1", "ticketTypeId": Uuid::from_u128(0xA)},
            {"id": "bt-2", "ticketTypeId": Uuid::from_u128(0xB)},
            {"id": "bt-3", "ticketTypeId": Uuid::from_u128(0xA)},
        ]}))],
    );
    ticket.on(
        "GET",
        &tickets_path(missing),
        vec![Reply::ok(json!({"orderId": missing, "tickets": []}))],
    );
    // `unknown` is not scripted: ticket-service answers 404, which counts as "no tickets".
    o.project().await;

    let (mut a, mut b) = (
        runner(&app.state, "reconciliation"),
        runner(&app.state, "reconciliation"),
    );
    let first = race(&mut a, &mut b, o.at(0)).await;
    assert_eq!(
        (first.examined, first.acted, first.alerts),
        (4, 2, 2),
        "{first:?}"
    );
    assert!(first.details.contains_key("relayEventsBehind"), "{first:?}");
    assert!(first.details.contains_key("refundsRetried"), "{first:?}");
    for (id, expected) in [
        (found, 1),
        (by_type, 1),
        (missing, 0),
        (unknown, 0),
        (recent, 0),
        (ticketed, 1),
    ] {
        assert_eq!(
            o.count_for(id, "TicketsIssued").await,
            expected,
            "order {id}"
        );
    }
    assert_eq!(o.load(found).await.tickets.len(), 3);
    let bt = o.load(by_type).await;
    let types: Vec<Uuid> = bt
        .tickets
        .iter()
        .map(|t| {
            bt.items
                .iter()
                .find(|i| i.id == t.item_id)
                .map(|i| i.ticket_type_id)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        types,
        [
            Uuid::from_u128(0xA),
            Uuid::from_u128(0xB),
            Uuid::from_u128(0xA)
        ]
    );
    // Every call was signed as order-service and correlated with the run.
    for hit in ticket.received() {
        assert!(hit.rejected.is_none(), "{hit:?}");
        assert_eq!(hit.header("x-service-name"), "order-service");
        assert_eq!(hit.header("x-tenant-id"), "tenant-a");
    }

    // Again, after the read model caught up: only the two without tickets are asked about,
    // and alerted on, again; nothing is recorded twice.
    o.project().await;
    let again = race(&mut a, &mut b, o.at(1)).await;
    assert_eq!(
        (again.examined, again.acted, again.alerts),
        (2, 0, 2),
        "{again:?}"
    );
    assert_eq!(o.count("TicketsIssued").await, 3);
}

// ---------------------------------------------------------------------------------------------
// Leader failover

async fn lock_holder(pool: &PgPool, name: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(format!("leader:job:{name}"))
    .fetch_one(pool)
    .await
    .expect("a holder")
}

#[sqlx::test(migrations = "../migrations")]
async fn leadership_fails_over_when_the_leader_releases_or_dies(pool: PgPool) {
    let app = spawn_app(pool).await;
    let o = Orders::new(&app.state);
    let stop = CancellationToken::new();
    let (mut a, mut b) = (
        runner(&app.state, "expiration"),
        runner(&app.state, "expiration"),
    );
    assert!(matches!(a.tick(o.at(0), &stop).await, Tick::Ran(_)));
    assert!(matches!(b.tick(o.at(0), &stop).await, Tick::Standby));
    assert!(a.is_leader() && !b.is_leader());

    // A clean hand-over: the leader releases (as on shutdown); the standby takes over on its
    // next tick and runs the job.
    let first = o.create(-30, -5, None).await;
    o.project().await;
    a.release().await;
    assert!(!a.is_leader());
    match b.tick(o.at(0), &stop).await {
        Tick::Ran(report) => assert_eq!(report.acted, 1, "{report:?}"),
        other => panic!("the standby should have taken over: {other:?}"),
    }
    assert!(matches!(a.tick(o.at(0), &stop).await, Tick::Standby));
    assert_eq!(o.count_for(first, "OrderExpired").await, 1);

    // A crash: the leader's session dies. Its next tick notices and stands down; the other
    // takes over and runs.
    let second = o.create(-30, -5, None).await;
    o.project().await;
    let pid = lock_holder(&o.pool, "expiration").await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&o.pool)
        .await
        .expect("terminate");
    assert!(killed);
    assert!(matches!(b.tick(o.at(0), &stop).await, Tick::Standby));
    assert!(!b.is_leader());
    match a.tick(o.at(0), &stop).await {
        Tick::Ran(report) => assert_eq!(report.acted, 1, "{report:?}"),
        other => panic!("the other scheduler should have taken over: {other:?}"),
    }
    assert_eq!(o.count_for(second, "OrderExpired").await, 1);
    a.release().await;
    b.release().await;
}

// ---------------------------------------------------------------------------------------------
// JobBreaker

#[sqlx::test(migrations = "../migrations")]
async fn a_failing_job_opens_its_breaker_and_a_probe_after_the_cool_down_closes_it(pool: PgPool) {
    let ticket = Peer::start().await;
    let app = app_with_ticket_peer(pool, &ticket).await;
    let o = Orders::new(&app.state);
    let id = o.paid(-30, None).await;
    let list = ticket_list(&o.load(id).await);
    // ticket-service is down for two calls, then answers.
    ticket.on(
        "GET",
        &tickets_path(id),
        vec![Reply::status(503), Reply::status(503), Reply::ok(list)],
    );
    o.project().await;

    let registry = JobRegistry::new();
    let mut r = JobRunner::new(
        app.state.pool.clone(),
        job(&app.state, "reconciliation"),
        JobBreakerPolicy {
            failures: 2,
            cool_down: TimeDelta::seconds(60),
        },
        &registry,
    );
    let stop = CancellationToken::new();
    let t0 = o.at(0);
    assert!(matches!(r.tick(t0, &stop).await, Tick::Failed(_)));
    assert_eq!(r.breaker().state(t0), JobBreakerState::Closed);
    let t1 = t0 + TimeDelta::seconds(1);
    assert!(matches!(r.tick(t1, &stop).await, Tick::Failed(_)));
    assert_eq!(r.breaker().state(t1), JobBreakerState::Open);
    let status = registry.get("reconciliation", t1).expect("status");
    assert_eq!(status.breaker, JobBreakerState::Open);
    assert_eq!(status.consecutive_failures, 2);
    let error = status.last_error.expect("last error");
    assert!(
        error.message.contains("ticket-service"),
        "{}",
        error.message
    );

    // Open: runs are skipped, and ticket-service is not called.
    let t2 = t0 + TimeDelta::seconds(30);
    assert!(matches!(r.tick(t2, &stop).await, Tick::BreakerOpen { .. }));
    assert_eq!(ticket.hits(&tickets_path(id)).len(), 2);
    assert_eq!(o.count_for(id, "TicketsIssued").await, 0);

    // After the cool-down one probe runs; it succeeds and the breaker closes.
    let t3 = t1 + TimeDelta::seconds(61);
    assert_eq!(r.breaker().state(t3), JobBreakerState::HalfOpen);
    assert_eq!(
        registry.get("reconciliation", t3).map(|s| s.breaker),
        Some(JobBreakerState::HalfOpen)
    );
    match r.tick(t3, &stop).await {
        Tick::Ran(report) => assert_eq!(report.acted, 1, "{report:?}"),
        other => panic!("the probe should have run: {other:?}"),
    }
    assert_eq!(r.breaker().state(t3), JobBreakerState::Closed);
    let status = registry.get("reconciliation", t3).expect("status");
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.breaker, JobBreakerState::Closed);
    assert_eq!(status.last_success, Some(t3));
    assert_eq!(o.count_for(id, "TicketsIssued").await, 1);
    r.release().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unreachable_peer_fails_the_run(pool: PgPool) {
    let down = order_tests::peers::unreachable_url().await;
    let app = spawn_app_with(pool, move |s| {
        s.peers.ticket_url = down;
        s.peers.retry_max_times = 0;
    })
    .await;
    let o = Orders::new(&app.state);
    let id = o.paid(-30, None).await;
    o.project().await;
    let failed = job(&app.state, "reconciliation")
        .run_once(&JobContext::at(o.at(0)))
        .await;
    let message = failed.expect_err("the peer is down").to_string();
    assert!(message.contains(&id.to_string()), "{message}");
    assert!(message.contains("ticket-service"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[sqlx::test(migrations = "../migrations")]
async fn a_run_cancelled_midway_stops_between_orders_and_leaves_none_half_done(pool: PgPool) {
    let ticket = Peer::start().await;
    let app = app_with_ticket_peer(pool.clone(), &ticket).await;
    let o = Orders::new(&app.state);
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = o.paid(-60 + n, None).await;
        ticket.on(
            "GET",
            &tickets_path(id),
            vec![Reply::ok(ticket_list(&o.load(id).await)).after(Duration::from_millis(400))],
        );
        ids.push(id);
    }
    o.project().await;

    // The scheduler as the application runs it: its first tick starts at once.
    let registry = JobRegistry::new();
    let runner = JobRunner::new(
        app.state.pool.clone(),
        job(&app.state, "reconciliation"),
        policy(),
        &registry,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run_until_stopped(stop.clone()));
    let asked = || {
        ids.iter()
            .map(|id| ticket.hits(&tickets_path(*id)).len())
            .sum::<usize>()
    };
    eventually("the first call to ticket-service", || {
        let n = asked();
        async move { n >= 1 }
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the runner stops in time")
        .expect("the runner does not panic");

    // The order in flight was finished; the rest were left for the next run, untouched.
    let mut handled = 0;
    for id in &ids {
        let tickets = o.load(*id).await.tickets.len();
        assert!(
            tickets == 0 || tickets == 3,
            "order {id} half-done: {tickets}"
        );
        assert!(o.count_for(*id, "TicketsIssued").await <= 1);
        handled += usize::from(tickets == 3);
    }
    assert_eq!(handled, asked(), "every order asked about was finished");
    assert!((1..ids.len()).contains(&handled), "handled {handled}");
    let status = registry.get("reconciliation", Utc::now()).expect("status");
    assert!(!status.running && !status.leader, "{status:?}");
    let report = status.last_report.expect("the run reported");
    assert!(report.stopped_early, "{report:?}");
    assert_eq!(report.acted, handled);
    // The lock was released on the way out.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect");
    assert_eq!(job_locks(&mut conn).await, 0);
}

/// What one request during shutdown came to.
#[derive(Debug)]
enum Answer {
    /// No response at all (refused or closed before an answer): allowed once shutdown began.
    NoResponse,
    /// A response whose body arrived whole and parses as JSON.
    Complete(u16),
    /// A response cut off mid-body: never allowed.
    Cut(String),
}

/// Sends a request signed as `service` and reads its answer to the end.
async fn send(
    app: &TestApp,
    service: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (Answer, tokio::time::Instant) {
    let mut req = app
        .client
        .request(method.clone(), format!("{}{path}", app.address))
        .header("x-tenant-id", "tenant-a");
    for (k, v) in order_tests::v1_headers(service, method.as_str(), path) {
        req = req.header(k, v);
    }
    if let Some(b) = &body {
        req = req.json(b);
    }
    let answer = match req.send().await {
        Err(_) => Answer::NoResponse,
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(_) => Answer::Complete(status),
                    Err(e) => Answer::Cut(format!("{status}: not JSON ({e}): {bytes:?}")),
                },
                Err(e) => Answer::Cut(format!("{status}: body cut: {e}")),
            }
        }
    };
    (answer, tokio::time::Instant::now())
}

#[sqlx::test(migrations = "../migrations")]
async fn shutdown_under_http_load_completes_every_answered_request_and_releases_job_locks(
    pool: PgPool,
) {
    order_tests::install_crypto();
    let mut settings = Settings::for_tests("postgres://unused");
    settings.jobs.enabled = true;
    settings.jobs.expiration_interval_secs = 1;
    settings.jobs.reminder_interval_secs = 1;
    settings.read_model.wait_ms = 1_500;
    settings.shutdown_timeout_secs = 10;
    let built = Application::build_with_pool(settings, pool.clone())
        .await
        .expect("builds");
    let port = built.port();
    let state = built.state().clone();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(built.run_until_stopped(async move {
        let _ = signal.await;
    }));
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        pool: pool.clone(),
        state: state.clone(),
        client: reqwest::Client::new(),
        stop_on_drop: None,
    };
    // The jobs run here too: wait until each has led a run, so shutdown has locks to release.
    eventually("every job to run once", || {
        let statuses = state.jobs.snapshot(Utc::now());
        async move { statuses.iter().all(|s| s.last_success.is_some()) }
    })
    .await;
    // An order the read model never gets: the test holds the projection's lock (as a replay
    // does), so a read of its version 1 waits out the read wait. A version beyond the event
    // store's would be 409 at once, not slow.
    let mut projection_lock = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("projection:{ORDERS_PROJECTION}"))
        .execute(&mut *projection_lock)
        .await
        .expect("projection lock");
    let unprojected = app.create_order().await;
    let id = unprojected["id"].as_str().expect("id").to_owned();

    // Slow requests (a read that waits for a version that never comes, 600 ms, then 503),
    // creates and cheap reads, all in flight when the shutdown starts, and more sent after.
    // Slow requests (a read waiting for a version that never comes: 1.5 s, then 503) start
    // with a burst of creates and cheap reads; the shutdown starts once the fast ones are
    // answered, while the slow ones are still in flight. More are sent after it.
    let slow = format!("/internal/orders/{id}?minVersion=1");
    let slow_requests =
        join_all((0..10).map(|_| send(&app, "payment-service", Method::GET, &slow, None)));
    let fast_requests = join_all((0..20).map(|n| {
        let app = &app;
        async move {
            if n % 2 == 0 {
                let body = Some(order_tests::order_body());
                send(app, "api-gateway", Method::POST, "/api/v1/orders", body).await
            } else {
                send(app, "api-gateway", Method::GET, "/health/live", None).await
            }
        }
    }));
    let (slow_answers, (fast_answers, shutdown_at)) = tokio::join!(slow_requests, async {
        let answers = fast_requests.await;
        let at = tokio::time::Instant::now();
        let _ = trigger.send(());
        (answers, at)
    });
    let after =
        join_all((0..10).map(|_| send(&app, "api-gateway", Method::GET, "/health/live", None)))
            .await;

    let stopped = tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("shutdown finishes within the timeout")
        .expect("no panic");
    stopped.expect("a clean shutdown");

    // Nothing was cut; everything sent before the shutdown was answered in full, the slow
    // requests after the shutdown had started.
    for (answer, _) in fast_answers.iter().chain(&slow_answers).chain(&after) {
        if let Answer::Cut(why) = answer {
            panic!("a response was cut: {why}");
        }
    }
    for (answer, _) in &fast_answers {
        assert!(matches!(answer, Answer::Complete(200 | 201)), "{answer:?}");
    }
    for (answer, at) in &slow_answers {
        assert!(matches!(answer, Answer::Complete(503)), "{answer:?}");
        assert!(
            *at > shutdown_at,
            "the slow request was answered before the shutdown"
        );
    }
    // The jobs stopped and let go of their locks; the pool is closed.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect");
    assert_eq!(job_locks(&mut conn).await, 0);
    for status in state.jobs.snapshot(Utc::now()) {
        assert!(!status.leader && !status.running, "{status:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// GET /internal/jobs

const JOB_NAMES: [&str; 5] = [
    "expiration",
    "reminder",
    "reconciliation",
    "archiving",
    "event-reminder",
];

fn assert_job_shape(job: &Value) {
    for key in [
        "name",
        "schedule",
        "intervalSeconds",
        "enabled",
        "leader",
        "running",
        "lastRun",
        "lastSuccess",
        "lastError",
        "consecutiveFailures",
        "breaker",
        "breakerOpenUntil",
        "nextRun",
        "lastReport",
    ] {
        assert!(job.get(key).is_some(), "{key} missing in {job}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_jobs_route_lists_every_job_even_where_jobs_are_disabled(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = json_of(app.get_as("api-gateway", "/internal/jobs").await).await;
    assert_eq!(status, 200, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["name"].as_str()).collect();
    assert_eq!(names, JOB_NAMES);
    for job in jobs {
        assert_job_shape(job);
        assert_eq!(job["enabled"], false);
        assert_eq!(job["leader"], false);
        assert_eq!(job["breaker"], "closed");
        assert!(job["lastRun"].is_null());
    }
    assert_eq!(jobs[0]["schedule"], "every 30s");
    assert_eq!(jobs[0]["intervalSeconds"], 30);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_jobs_route_shows_this_replicas_runs_and_leadership(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.enabled = true).await;
    let o = Orders::new(&app.state);
    o.create(-30, -5, None).await;
    let state = app.state.clone();
    eventually("every job to run once", || {
        let statuses = state.jobs.snapshot(Utc::now());
        async move { statuses.iter().all(|s| s.last_success.is_some()) }
    })
    .await;
    let (status, body) = json_of(app.get_as("payment-service", "/internal/jobs").await).await;
    assert_eq!(status, 200, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), JOB_NAMES.len());
    for job in jobs {
        assert_job_shape(job);
        assert_eq!(job["enabled"], true, "{job}");
        assert_eq!(job["leader"], true, "{job}");
        assert_eq!(job["breaker"], "closed", "{job}");
        assert_eq!(job["consecutiveFailures"], 0, "{job}");
        assert!(job["lastError"].is_null(), "{job}");
        for key in ["lastRun", "lastSuccess", "nextRun"] {
            let at = job[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {job}"));
            DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        assert!(job["lastReport"]["examined"].is_u64(), "{job}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_jobs_route_refuses_callers_outside_its_policy(pool: PgPool) {
    let app = spawn_app(pool).await;
    for caller in ["ticket-service", "blockchain-service", "event-service"] {
        let (status, body) = json_of(app.get_as(caller, "/internal/jobs").await).await;
        assert_eq!(status, 403, "{caller}: {body}");
    }
    let unsigned = app
        .send(
            Method::GET,
            "/internal/jobs",
            order_tests::Auth::None,
            &[],
            None,
        )
        .await;
    assert_eq!(unsigned.status(), 401);
}
