//! Executes commands against the event store: load, decide, append, with optimistic retries.
//!
//! This is the one write path for order state. It reads and writes postgres-es's `events`
//! table in postgres-es's format, with cqrs-es's deserialisation and the domain's upcasters,
//! but with statements of its own: a command loads and appends on one checked-out connection,
//! and appends in one statement (postgres-es takes three round trips and a connection per
//! call). It does not use `CqrsFramework`: the framework's `Query` processors run after commit
//! and swallow errors, and it does not hand back the changed aggregate. Read models are built
//! from the commit-safe feed instead, and the caller gets the aggregate as the command left it.
//!
//! A signed command brings its replay key as a [`PendingNonce`], and the append statement
//! inserts it with the events: the events go in only if the key was unused, and a conflict on
//! the events rolls the key back too, so the retry uses it again. One commit per command (or
//! one per batch of concurrent creates), and the replay rule of docs/contract.md §4 is still decided by Postgres across replicas. A
//! command that appends nothing leaves its key unsettled, for the caller to settle through the
//! nonce batcher (the auth middleware does).
//!
//! Inside a request, each public method runs within the request's database deadline
//! ([`crate::deadline`]), a command's retries included; background callers have none.

use std::collections::HashMap;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::EventEnvelope;
use order_domain::{Order, OrderCommand, OrderEvent, ORDER_AGGREGATE_TYPE};
use order_projections::postgres::CommitSignal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::app::append::{append_one, Appended, GroupCommit, NewEvents};
use crate::app::error::AppError;
use crate::auth::PendingNonce;
use crate::deadline::within_deadline;

/// How many times a command is re-decided after losing a race for the same sequence number.
/// Each retry reloads the order, so idempotent repeats (a second confirm with the same payment
/// intent) resolve to "nothing to do" on the first retry.
const MAX_ATTEMPTS: usize = 8;

/// The result of a command.
#[derive(Debug)]
pub struct Executed {
    /// The order as the command left it.
    pub order: Order,
    /// Events appended by this call (empty when the command was already satisfied).
    pub events: Vec<OrderEvent>,
}

/// The result of [`OrderStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The order was created by this call.
    New(Box<Executed>),
    /// Sequence 1 of this id already exists: a repeat, or a race lost to another create.
    AlreadyExists,
}

/// The write side: loads orders and appends their events.
#[derive(Clone)]
pub struct OrderStore {
    upcasters: std::sync::Arc<Vec<Box<dyn EventUpcaster>>>,
    pool: PgPool,
    committed: CommitSignal,
    creates: GroupCommit,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderStore").finish_non_exhaustive()
    }
}

/// One stored event, upcast to its current version, for history views.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

impl OrderStore {
    /// Builds the store over a pool. Upcasters are always on: every load sees current versions.
    pub fn new(pool: PgPool) -> Self {
        let committed = CommitSignal::new();
        Self {
            upcasters: std::sync::Arc::new(order_domain::upcasters()),
            creates: GroupCommit::new(pool.clone(), committed.clone()),
            pool,
            committed,
        }
    }

    /// Bumped after every append, so that the projector and the relay in this process wake
    /// at once instead of at their next poll.
    pub fn commit_signal(&self) -> &CommitSignal {
        &self.committed
    }

    /// The pool this store writes to.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Loads an order; `None` when it does not exist.
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when Postgres is unreachable or the request's database
    /// deadline passes, `Internal` otherwise.
    pub async fn load(&self, id: Uuid) -> Result<Option<Order>, AppError> {
        let order = within_deadline("load", async {
            let mut conn = self.pool.acquire().await.map_err(AppError::from_sqlx)?;
            self.load_on(&mut conn, &id.to_string()).await
        })
        .await?;
        Ok(order.exists().then_some(order))
    }

    /// The order as its events leave it (an empty order when it has none), loaded on `conn`.
    /// It does what postgres-es's and cqrs-es's `load_aggregate` did for this store (event
    /// sourced, no snapshots): postgres-es's select, each row upcast by the domain's upcasters
    /// in turn, deserialised by cqrs-es, and applied in sequence order.
    async fn load_on(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
    ) -> Result<Order, AppError> {
        let rows: Vec<(
            String,
            String,
            i64,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
        )> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata
                   FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
                  ORDER BY sequence",
        )
        .bind(ORDER_AGGREGATE_TYPE)
        .bind(aggregate_id)
        .fetch_all(conn)
        .await
        .map_err(AppError::from_sqlx)?;
        let mut order = Order::default();
        for (
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
            metadata,
        ) in rows
        {
            let sequence = usize::try_from(sequence).map_err(AppError::internal)?;
            let stored = SerializedEvent::new(
                aggregate_id,
                sequence,
                aggregate_type,
                event_type,
                event_version,
                payload,
                metadata,
            );
            let current = self.upcasters.iter().fold(stored, |event, upcaster| {
                if upcaster.can_upcast(&event.event_type, &event.event_version) {
                    upcaster.upcast(event)
                } else {
                    event
                }
            });
            let envelope = EventEnvelope::<Order>::try_from(current).map_err(AppError::internal)?;
            order.apply(&envelope.payload);
        }
        Ok(order)
    }

    /// Decides and appends a command. `command` is called once per attempt so that it can take
    /// a fresh clock reading (and once more up front, to name the command in metrics: it must
    /// only build the command); `check` runs against the loaded order before deciding (tenant
    /// scoping, idempotency-key comparison) and may short-circuit with an error.
    ///
    /// Records `order_command_duration_seconds{command}` whatever the outcome, refusals and
    /// retries included, since that is the latency callers see.
    ///
    /// # Errors
    /// The domain's refusal, or `check`'s; [`AppError::ConcurrentWrite`] for a race lost
    /// `MAX_ATTEMPTS` times; [`AppError::Unavailable`] for an unreachable database or the
    /// request's database deadline passing (across every attempt).
    pub async fn execute(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        check: impl Fn(&Order) -> Result<(), AppError>,
        command: impl Fn() -> OrderCommand,
    ) -> Result<Executed, AppError> {
        self.execute_signed(id, metadata, None, check, command)
            .await
    }

    /// [`Self::execute`] for a signed request: its pending replay key is inserted by the
    /// statement that appends the events, and settled by it. When the command appends nothing
    /// (refused, already satisfied, or failed) the key is left unsettled, for the caller to
    /// settle through the nonce batcher.
    ///
    /// # Errors
    /// As [`Self::execute`], and [`AppError::Replayed`] when the key was already used (nothing
    /// appended).
    pub async fn execute_signed(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        nonce: Option<PendingNonce>,
        check: impl Fn(&Order) -> Result<(), AppError>,
        command: impl Fn() -> OrderCommand,
    ) -> Result<Executed, AppError> {
        let started = std::time::Instant::now();
        let name = command_name(&command());
        let result = within_deadline(
            "command",
            self.decide_and_append(id, metadata, nonce, check, command),
        )
        .await;
        metrics::histogram!("order_command_duration_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// [`Self::execute`] without the timing: load, check, decide, append, retry on a lost race,
    /// all on one checked-out connection (one release check by the pool per command instead of
    /// one per statement).
    async fn decide_and_append(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        nonce: Option<PendingNonce>,
        check: impl Fn(&Order) -> Result<(), AppError>,
        command: impl Fn() -> OrderCommand,
    ) -> Result<Executed, AppError> {
        let aggregate_id = id.to_string();
        let mut conn = self.pool.acquire().await.map_err(AppError::from_sqlx)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self.load_on(&mut conn, &aggregate_id).await?;
            check(&current)?;
            let events = current.decide(command()).map_err(AppError::from)?;
            if events.is_empty() {
                return Ok(Executed {
                    order: current,
                    events,
                });
            }
            let with_tenant;
            let metadata = if metadata.contains_key("tenantId") || current.tenant_id.is_empty() {
                metadata
            } else {
                // Commands caused by messages or jobs carry no tenant of their own; the order's
                // is the one that readers of these events (the refund loop's calls out) need.
                with_tenant = {
                    let mut m = metadata.clone();
                    m.insert("tenantId".to_owned(), current.tenant_id.clone());
                    m
                };
                &with_tenant
            };
            let appended = self
                .append(
                    &mut conn,
                    &aggregate_id,
                    current.version,
                    &events,
                    metadata,
                    nonce.as_ref(),
                )
                .await;
            match appended {
                Ok(()) => return Ok(applied(current, events, nonce)),
                Err(Appended::Conflict) => {
                    metrics::counter!("order_command_conflicts_total").increment(1);
                    tracing::debug!(order.id = %id, attempt, "lost a race for the next sequence; retrying");
                }
                Err(Appended::Replayed) => return Err(replayed(nonce)),
                Err(Appended::Failed(e)) => return Err(e),
            }
        }
        Err(AppError::ConcurrentWrite)
    }

    /// Creates an order without reading first: the command is decided against an empty order
    /// and appended as sequence 1 with whatever other creates are waiting: one statement and
    /// one commit for all of them (group commit, `app::append`), each with its own
    /// pending replay key, if signed. The primary key settles a race or a repeat: when sequence
    /// 1 already exists the answer is [`Created::AlreadyExists`], nothing was written, the key
    /// is left unsettled, and the caller decides what a repeat means (idempotent replay, or a
    /// lost race).
    ///
    /// # Errors
    /// The domain's refusal (key left unsettled), [`AppError::Replayed`] when the key was
    /// already used (nothing appended), an unreachable database or the request's database
    /// deadline passing ([`AppError::Unavailable`]).
    pub async fn create(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        command: OrderCommand,
        nonce: Option<PendingNonce>,
    ) -> Result<Created, AppError> {
        let started = std::time::Instant::now();
        let name = command_name(&command);
        let result = within_deadline(
            "command",
            self.create_unmetered(id, metadata, command, nonce),
        )
        .await;
        metrics::histogram!("order_command_duration_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn create_unmetered(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        command: OrderCommand,
        nonce: Option<PendingNonce>,
    ) -> Result<Created, AppError> {
        let empty = Order::default();
        let events = empty.decide(command).map_err(AppError::from)?;
        let new = NewEvents::new(&id.to_string(), 0, &events, metadata, nonce.as_ref())?;
        let appended = self.creates.append(new).await;
        match appended {
            Ok(()) => Ok(Created::New(Box::new(applied(empty, events, nonce)))),
            Err(Appended::Conflict) => Ok(Created::AlreadyExists),
            Err(Appended::Replayed) => Err(replayed(nonce)),
            Err(Appended::Failed(e)) => Err(e),
        }
    }

    /// Appends `events` after sequence `after` on `conn`, in one statement (see
    /// [`append_one`]).
    async fn append(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        after: u64,
        events: &[OrderEvent],
        metadata: &HashMap<String, String>,
        nonce: Option<&PendingNonce>,
    ) -> Result<(), Appended> {
        let new = NewEvents::new(aggregate_id, after, events, metadata, nonce)
            .map_err(Appended::Failed)?;
        append_one(conn, &new).await?;
        self.committed.committed();
        Ok(())
    }

    /// An order's stored events in sequence order, upcast to current versions.
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when Postgres is unreachable or the request's database
    /// deadline passes.
    pub async fn history(&self, id: Uuid) -> Result<Vec<StoredEvent>, AppError> {
        let rows: Vec<(
            i64,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
            chrono::DateTime<chrono::Utc>,
        )> = within_deadline("history", async {
            sqlx::query_as(
                "SELECT sequence, event_type, event_version, payload, metadata, recorded_at
                   FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
                  ORDER BY sequence",
            )
            .bind(ORDER_AGGREGATE_TYPE)
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(AppError::from_sqlx)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(sequence, event_type, event_version, payload, metadata, recorded_at)| {
                    let (payload, event_version) = order_domain::upcast::upcast_payload(
                        &event_type,
                        &event_version,
                        &id.to_string(),
                        payload,
                        &metadata,
                    );
                    StoredEvent {
                        sequence,
                        event_type,
                        event_version,
                        payload,
                        metadata,
                        recorded_at,
                    }
                },
            )
            .collect())
    }
}

/// An append that went in: its replay key, if any, was first used, and the order is `before`
/// with `events` applied.
fn applied(before: Order, events: Vec<OrderEvent>, nonce: Option<PendingNonce>) -> Executed {
    if let Some(n) = nonce {
        n.settle(true);
    }
    let mut order = before;
    for e in &events {
        order.apply(e);
    }
    metrics::counter!("order_commands_total", "outcome" => "applied").increment(1);
    Executed { order, events }
}

/// An append refused because its replay key was already used: nothing was written.
fn replayed(nonce: Option<PendingNonce>) -> AppError {
    if let Some(n) = nonce {
        n.settle(false);
    }
    AppError::Replayed
}

/// The command's metric label: one fixed value per variant, so labels stay bounded.
fn command_name(command: &OrderCommand) -> &'static str {
    match command {
        OrderCommand::CreateOrder(_) => "create_order",
        OrderCommand::ReserveOrder(_) => "reserve_order",
        OrderCommand::ConfirmOrder(_) => "confirm_order",
        OrderCommand::SettlePayment(_) => "settle_payment",
        OrderCommand::CancelOrder(_) => "cancel_order",
        OrderCommand::ExpireOrder(_) => "expire_order",
        OrderCommand::FailOrder(_) => "fail_order",
        OrderCommand::RecordPaymentFailure(_) => "record_payment_failure",
        OrderCommand::RequestRefund(_) => "request_refund",
        OrderCommand::CompleteRefund(_) => "complete_refund",
        OrderCommand::FailRefund(_) => "fail_refund",
        OrderCommand::OpenDispute(_) => "open_dispute",
        OrderCommand::UpdateDispute(_) => "update_dispute",
        OrderCommand::CloseDispute(_) => "close_dispute",
        OrderCommand::RecordTickets(_) => "record_tickets",
        OrderCommand::SendReminder(_) => "send_reminder",
        OrderCommand::SendEventReminder(_) => "send_event_reminder",
        OrderCommand::ArchiveOrder(_) => "archive_order",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::{Duration, Utc};
    use order_domain::commands::{CancelOrder, CreateOrder, ReserveOrder};
    use order_domain::values::NewLineItem;
    use order_domain::Currency;

    use super::*;
    use crate::app::append::APPEND;
    use crate::auth::NonceStore;

    pub(crate) fn create_command(id: Uuid) -> OrderCommand {
        let now = Utc::now();
        OrderCommand::CreateOrder(CreateOrder {
            order_id: id,
            order_number: "ORD-TEST-1".into(),
            tenant_id: "tenant-a".into(),
            user_id: "user-1".into(),
            event_id: Uuid::new_v4(),
            currency: Currency::parse("USD").expect("currency"),
            items: vec![NewLineItem {
                id: Uuid::new_v4(),
                ticket_type_id: Uuid::new_v4(),
                quantity: 1,
                unit_price_cents: 1_000,
            }],
            fees_cents: 0,
            tax_cents: 0,
            expires_at: now + Duration::minutes(15),
            event_starts_at: None,
            now,
        })
    }

    fn cancel() -> OrderCommand {
        OrderCommand::CancelOrder(CancelOrder {
            reason: "changed my mind".into(),
            now: Utc::now(),
        })
    }

    async fn sequences(pool: &PgPool, id: Uuid) -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT sequence, event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence",
        )
        .bind(id.to_string())
        .fetch_all(pool)
        .await
        .expect("events")
    }

    /// The interleaving tests' generator: seeded from `ORDER_INTERLEAVING_SEED` when set (to
    /// replay a failure), else at random; the seed is printed either way.
    fn seeded() -> (u64, rand::rngs::StdRng) {
        use rand::SeedableRng;
        let seed = std::env::var("ORDER_INTERLEAVING_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        println!("interleaving seed: {seed}");
        (seed, rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// Another writer's append of `event` as `sequence` of `id`, inside its open transaction.
    async fn append_uncommitted(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: Uuid,
        sequence: i64,
        event: &OrderEvent,
    ) {
        sqlx::query(APPEND)
            .bind(ORDER_AGGREGATE_TYPE)
            .bind(id.to_string())
            .bind(vec![sequence])
            .bind(vec![event.event_type()])
            .bind(vec![event.event_version()])
            .bind(vec![serde_json::to_value(event).unwrap()])
            .bind(serde_json::json!({}))
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    fn pending(key: &str) -> (PendingNonce, crate::auth::pending::Settlement) {
        PendingNonce::new("api-gateway", key, Utc::now() + Duration::minutes(5))
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_used_key_appends_nothing_and_settles_as_a_replay(pool: PgPool) {
        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        let id = Uuid::now_v7();
        let (key, settled) = pending("k1");
        let created = store
            .create(id, &meta, create_command(id), Some(key))
            .await
            .expect("created");
        assert!(matches!(created, Created::New(_)));
        assert_eq!(settled.outcome(), Some(true));

        // The same key on another create, and on a command of the created order.
        let other = Uuid::now_v7();
        let (key, settled) = pending("k1");
        let replayed = store
            .create(other, &meta, create_command(other), Some(key))
            .await;
        assert!(matches!(replayed, Err(AppError::Replayed)), "{replayed:?}");
        assert_eq!(settled.outcome(), Some(false));
        assert!(sequences(&pool, other).await.is_empty());
        let (key, settled) = pending("k1");
        let replayed = store
            .execute_signed(id, &meta, Some(key), |_| Ok(()), cancel)
            .await;
        assert!(matches!(replayed, Err(AppError::Replayed)), "{replayed:?}");
        assert_eq!(settled.outcome(), Some(false));
        assert_eq!(sequences(&pool, id).await.len(), 1, "nothing appended");

        // A fresh key goes through, once.
        let (key, settled) = pending("k2");
        let done = store
            .execute_signed(id, &meta, Some(key), |_| Ok(()), cancel)
            .await
            .expect("cancelled");
        assert_eq!(done.events.len(), 1);
        assert_eq!(settled.outcome(), Some(true));
        let nonces = NonceStore::new(pool.clone());
        let later = Utc::now() + Duration::minutes(5);
        assert!(!nonces.record("api-gateway", "k1", later).await.unwrap());
        assert!(!nonces.record("api-gateway", "k2", later).await.unwrap());
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_command_that_appends_nothing_leaves_its_key_unsettled(pool: PgPool) {
        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        let id = Uuid::now_v7();
        store
            .create(id, &meta, create_command(id), None)
            .await
            .expect("created");
        store
            .execute(id, &meta, |_| Ok(()), cancel)
            .await
            .expect("cancelled");
        // Already cancelled: nothing to append, and the key is the caller's to settle.
        let (key, settled) = pending("k-noop");
        let done = store
            .execute_signed(id, &meta, Some(key), |_| Ok(()), cancel)
            .await
            .expect("satisfied");
        assert!(done.events.is_empty());
        assert_eq!(settled.outcome(), None);
        // Refused by the domain: the same.
        let (key, settled) = pending("k-refused");
        let reserve = || {
            OrderCommand::ReserveOrder(ReserveOrder {
                expires_at: Utc::now() + Duration::minutes(5),
                now: Utc::now(),
            })
        };
        let refused = store
            .execute_signed(id, &meta, Some(key), |_| Ok(()), reserve)
            .await;
        assert!(matches!(refused, Err(AppError::Rejected(_))), "{refused:?}");
        assert_eq!(settled.outcome(), None);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 0, "no key recorded by the store");
        // And the create of an id that exists leaves it unsettled too.
        let (key, settled) = pending("k-exists");
        let again = store.create(id, &meta, create_command(id), Some(key)).await;
        assert!(matches!(again, Ok(Created::AlreadyExists)), "{again:?}");
        assert_eq!(settled.outcome(), None);
    }

    /// A writer that takes the next sequence between this command's load and its append: the
    /// append conflicts, the key goes back with it, and the retry appends with the same key.
    #[sqlx::test(migrations = "../migrations")]
    async fn an_append_conflict_does_not_burn_the_key(pool: PgPool) {
        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        let id = Uuid::now_v7();
        store
            .create(id, &meta, create_command(id), None)
            .await
            .expect("created");

        // The other writer: sequence 2 inserted, not yet committed.
        let mut other = pool.begin().await.unwrap();
        let reserved = store
            .load(id)
            .await
            .unwrap()
            .expect("order")
            .decide(OrderCommand::ReserveOrder(ReserveOrder {
                expires_at: Utc::now() + Duration::minutes(30),
                now: Utc::now(),
            }))
            .unwrap();
        append_uncommitted(&mut other, id, 2, &reserved[0]).await;

        // This command loads sequence 1 only, decides sequence 2, and waits on the other's row.
        let (key, settled) = pending("k-conflict");
        let command = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .execute_signed(id, &HashMap::new(), Some(key), |_| Ok(()), cancel)
                    .await
            }
        });
        let waiting = async {
            loop {
                let blocked: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                if blocked > 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the command's append waited for the other writer");
        other.commit().await.unwrap();

        let done = command.await.unwrap().expect("the retry appended");
        assert_eq!(settled.outcome(), Some(true));
        assert_eq!(done.order.version, 3);
        let types: Vec<String> = sequences(&pool, id)
            .await
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(types, ["OrderCreated", "OrderReserved", "OrderCancelled"]);
        let keys: i64 =
            sqlx::query_scalar("SELECT count(*) FROM auth_nonces WHERE nonce = 'k-conflict'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(keys, 1, "recorded once, by the retry");
    }

    /// Seeded interleavings of a signed command, a copy of it (a replay), and an unsigned writer
    /// of the same order, started in random order with random delays: the writer never loses
    /// to them, exactly one of the two copies appends (the other is a replay, refused by the
    /// append or by the batcher as the middleware would settle it), and the key is recorded
    /// once. `ORDER_INTERLEAVING_SEED` replays a failing seed.
    #[sqlx::test(migrations = "../migrations")]
    async fn interleaved_copies_and_writers_accept_the_key_once(pool: PgPool) {
        use rand::Rng;

        let (seed, mut rng) = seeded();
        let store = OrderStore::new(pool.clone());
        let nonces = NonceStore::new(pool.clone());
        let reserve = || {
            OrderCommand::ReserveOrder(ReserveOrder {
                expires_at: Utc::now() + Duration::minutes(30),
                now: Utc::now(),
            })
        };
        for case in 0..20 {
            let id = Uuid::now_v7();
            store
                .create(id, &HashMap::new(), create_command(id), None)
                .await
                .expect("created");
            let key = format!("case-{case}");
            let delays: Vec<u64> = (0..3).map(|_| rng.gen_range(0..3)).collect();
            let signed = |delay: u64| {
                let (store, key) = (store.clone(), key.clone());
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    let (nonce, settled) = pending(&key);
                    let result = store
                        .execute_signed(id, &HashMap::new(), Some(nonce), |_| Ok(()), cancel)
                        .await;
                    (result.map(|done| done.events.len()), settled.outcome())
                }
            };
            let writer = {
                let store = store.clone();
                let delay = delays[2];
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    store
                        .execute(id, &HashMap::new(), |_| Ok(()), reserve)
                        .await
                }
            };
            let (first, second, written) =
                tokio::join!(signed(delays[0]), signed(delays[1]), writer);
            // The reserve may come after the cancel and be refused; it never conflicts away.
            assert!(
                matches!(written, Ok(_) | Err(AppError::Rejected(_))),
                "seed {seed} case {case}: {written:?}"
            );
            let outcomes = [&first, &second];
            let applied = outcomes
                .iter()
                .filter(|(r, settled)| matches!(r, Ok(1)) && *settled == Some(true))
                .count();
            // The other copy is refused by the append, or (when it loads the order already
            // cancelled) appends nothing and leaves the key to the batcher, which refuses it.
            let mut replayed = 0;
            for (result, settled) in outcomes {
                match (result, settled) {
                    (Err(AppError::Replayed), Some(false)) => replayed += 1,
                    (Ok(0), None) => {
                        let later = Utc::now() + Duration::minutes(5);
                        if !nonces.record("api-gateway", &key, later).await.unwrap() {
                            replayed += 1;
                        }
                    }
                    _ => {}
                }
            }
            assert_eq!(
                (applied, replayed),
                (1, 1),
                "seed {seed} case {case}: {first:?} {second:?}"
            );
            let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces WHERE nonce = $1")
                .bind(&key)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(keys, 1, "seed {seed} case {case}");
            let cancels = sequences(&pool, id)
                .await
                .into_iter()
                .filter(|(_, t)| t == "OrderCancelled")
                .count();
            assert_eq!(cancels, 1, "seed {seed} case {case}");
        }
    }

    /// Concurrent creates share statements (group commit) and each still gets its own answer.
    /// Seeded bursts mix new orders, repeats of a stored order, the same order several times in
    /// one burst, keys shared within a burst and a key already spent; in half of them another
    /// writer holds an uncommitted create of one of the orders across the burst and then
    /// commits or rolls back, so that a grouped statement waits on it and, when it commits,
    /// fails and is sent again one create at a time. `ORDER_INTERLEAVING_SEED` replays a seed.
    /// Creates sent alone run on one kept connection: it is still usable after a statement
    /// Postgres refused (a repeated create), and it goes back to the pool once idle, so that
    /// closing the pool does not wait for it.
    #[sqlx::test(migrations = "../migrations")]
    async fn lone_creates_keep_one_connection_until_idle(pool: PgPool) {
        let in_use = |pool: &PgPool| pool.size() - pool.num_idle() as u32;
        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        let id = Uuid::now_v7();
        let key = |k: &str| Some(pending(k).0);
        store
            .create(id, &meta, create_command(id), key("lone-1"))
            .await
            .expect("created");
        assert_eq!(in_use(&pool), 1, "kept for the next lone create");
        // Its append conflicts on the kept connection (Postgres refuses the statement); the
        // store then decides it against the stored order.
        let _repeat = store
            .create(id, &meta, create_command(id), key("lone-2"))
            .await;
        let next = Uuid::now_v7();
        store
            .create(next, &meta, create_command(next), key("lone-3"))
            .await
            .expect("the kept connection serves the next create");
        assert_eq!(in_use(&pool), 1, "one connection for all three");
        assert_eq!(store.creates.batches(), 0, "none of them was batched");
        let mut back = false;
        for _ in 0..200 {
            back = in_use(&pool) == 0;
            if back {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(back, "the lone creates' connection went back once idle");
        tokio::time::timeout(std::time::Duration::from_secs(10), pool.close())
            .await
            .expect("nothing kept, so the pool closes");
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn concurrent_creates_share_commits_and_each_gets_its_own_answer(pool: PgPool) {
        use rand::Rng;
        use std::collections::HashSet;

        let (seed, mut rng) = seeded();
        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        // A create with no other in flight goes on its own, not through a batch.
        let lone = Uuid::now_v7();
        store
            .create(lone, &meta, create_command(lone), None)
            .await
            .expect("created");
        assert_eq!(store.creates.batches(), 0, "a lone create was batched");
        let batches_before = store.creates.batches();
        let mut creates = 0;
        for round in 0..12 {
            let stored = Uuid::now_v7();
            store
                .create(stored, &meta, create_command(stored), None)
                .await
                .expect("stored");
            let spent = format!("spent-{round}");
            let spender = Uuid::now_v7();
            let (key, _) = pending(&spent);
            store
                .create(spender, &meta, create_command(spender), Some(key))
                .await
                .expect("spent");
            let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
            let plan: Vec<(Uuid, Option<String>)> = (0..24)
                .map(|i| {
                    let id = if rng.gen_bool(0.15) {
                        stored
                    } else {
                        ids[rng.gen_range(0..ids.len())]
                    };
                    let key = match rng.gen_range(0..5) {
                        0 => None,
                        1 => Some(spent.clone()),
                        2 => Some(format!("shared-{round}-{}", rng.gen_range(0..3))),
                        _ => Some(format!("own-{round}-{i}")),
                    };
                    (id, key)
                })
                .collect();
            creates += plan.len();
            // Another writer's create of ids[0], uncommitted while the burst runs.
            let blocked = ids[0];
            let blocker = if rng.gen_bool(0.5) {
                let mut tx = pool.begin().await.unwrap();
                let event = &Order::default().decide(create_command(blocked)).unwrap()[0];
                append_uncommitted(&mut tx, blocked, 1, event).await;
                Some((tx, rng.gen_bool(0.5), rng.gen_range(0..20)))
            } else {
                None
            };
            let blocker_committed = blocker.as_ref().is_some_and(|(_, commit, _)| *commit);
            let burst = futures::future::join_all(plan.iter().map(|(id, key)| {
                let store = store.clone();
                let (id, key) = (*id, key.clone());
                async move {
                    let (nonce, settled) = key.as_deref().map(pending).unzip();
                    let result = store
                        .create(id, &HashMap::new(), create_command(id), nonce)
                        .await;
                    (id, key, result, settled.and_then(|s| s.outcome()))
                }
            }));
            let release = async {
                if let Some((tx, commit, delay)) = blocker {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    if commit {
                        tx.commit().await.unwrap();
                    } else {
                        tx.rollback().await.unwrap();
                    }
                }
            };
            let (results, ()) = tokio::join!(burst, release);

            let context = format!("seed {seed} round {round}");
            let mut new_ids = Vec::new();
            let mut new_keys = Vec::new();
            for (id, key, result, settled) in &results {
                match result {
                    Ok(Created::New(_)) => {
                        assert!(key.is_none() || *settled == Some(true), "{context}");
                        new_ids.push(*id);
                        new_keys.extend(key.clone());
                    }
                    Ok(Created::AlreadyExists) => assert_eq!(*settled, None, "{context}"),
                    Err(AppError::Replayed) => assert_eq!(*settled, Some(false), "{context}"),
                    Err(e) => panic!("{context}: unexpected {e:?}"),
                }
                if *id == stored && key.as_deref() == Some(spent.as_str()) {
                    // Both a repeat and a replay: the replay wins, grouped or alone.
                    assert!(
                        matches!(result, Err(AppError::Replayed)),
                        "{context}: {result:?}"
                    );
                }
            }
            let unique_ids: HashSet<_> = new_ids.iter().collect();
            assert_eq!(
                unique_ids.len(),
                new_ids.len(),
                "{context}: an order created twice"
            );
            let unique_keys: HashSet<_> = new_keys.iter().collect();
            assert_eq!(
                unique_keys.len(),
                new_keys.len(),
                "{context}: a key used twice"
            );
            assert!(
                !new_keys.contains(&spent),
                "{context}: a spent key accepted"
            );
            for (id, key, result, _) in &results {
                let created_elsewhere = *id == stored || (*id == blocked && blocker_committed);
                if matches!(result, Ok(Created::AlreadyExists)) {
                    assert!(
                        created_elsewhere || new_ids.contains(id),
                        "{context}: a repeat of an order nobody created"
                    );
                }
                if matches!(result, Err(AppError::Replayed)) {
                    let key = key.as_ref().expect("a replay has a key");
                    assert!(
                        *key == spent || new_keys.contains(key),
                        "{context}: a replay of a key nobody used"
                    );
                }
                let stored_events = sequences(&pool, *id).await;
                let expected = usize::from(created_elsewhere || new_ids.contains(id));
                assert_eq!(stored_events.len(), expected, "{context}: {id}");
            }
            for (_, key, _, _) in &results {
                let Some(key) = key else { continue };
                let rows: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM auth_nonces WHERE nonce = $1")
                        .bind(key)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                let expected = i64::from(*key == spent || new_keys.contains(key));
                assert_eq!(rows, expected, "{context}: key {key}");
            }
        }
        // Every create of the bursts counted out of flight: a lone one goes on its own again.
        let settled = store.creates.batches();
        let lone = Uuid::now_v7();
        store
            .create(lone, &meta, create_command(lone), None)
            .await
            .expect("created");
        assert_eq!(
            store.creates.batches(),
            settled,
            "seed {seed}: a lone create was batched"
        );
        let batches = settled - batches_before;
        assert!(
            batches < creates as u64,
            "seed {seed}: {creates} concurrent creates took {batches} batches"
        );
    }

    /// Loading on the store's own connection gives what postgres-es's `load_aggregate` gives.
    #[sqlx::test(migrations = "../migrations")]
    async fn loads_as_postgres_es_does(pool: PgPool) {
        use cqrs_es::persist::PersistedEventStore;
        use cqrs_es::{AggregateContext, EventStore};

        let store = OrderStore::new(pool.clone());
        let meta = HashMap::new();
        let id = Uuid::now_v7();
        store
            .create(id, &meta, create_command(id), None)
            .await
            .expect("created");
        store
            .execute(id, &meta, |_| Ok(()), cancel)
            .await
            .expect("cancelled");
        let reference = PersistedEventStore::<_, Order>::new_event_store(
            postgres_es::PostgresEventRepository::new(pool.clone()),
        )
        .with_upcasters(order_domain::upcasters());
        let mut context = reference.load_aggregate(&id.to_string()).await.unwrap();
        let expected: Order = context.aggregate().clone();
        assert_eq!(store.load(id).await.unwrap(), Some(expected));
    }
}
