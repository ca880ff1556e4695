//! Executes commands against the event store: load, decide, append, with optimistic retries.
//!
//! This is the one write path for order state. It uses postgres-es's repository for loading
//! (with upcasting) and its table for appending, but appends in one statement of its own (one
//! round trip instead of three), and it does not use `CqrsFramework`: the framework's `Query` processors
//! run after commit and swallow errors, and it does not hand back the changed aggregate. Read
//! models are built from the commit-safe feed instead, and the caller gets the aggregate as the
//! command left it.
//!
//! Inside a request, each public method runs within the request's database deadline
//! ([`crate::deadline`]), a command's retries included; background callers have none.

use std::collections::HashMap;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateContext, EventStore};
use order_domain::{Order, OrderCommand, OrderEvent, ORDER_AGGREGATE_TYPE};
use order_projections::postgres::CommitSignal;
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::error::AppError;
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

/// Why an append did not happen.
enum Appended {
    /// Another writer took one of the sequence numbers first: reload and decide again.
    Conflict,
    /// Anything else.
    Failed(AppError),
}

/// The write side: loads orders and appends their events.
#[derive(Clone)]
pub struct OrderStore {
    inner: std::sync::Arc<PersistedEventStore<PostgresEventRepository, Order>>,
    pool: PgPool,
    committed: CommitSignal,
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
        let repo = PostgresEventRepository::new(pool.clone());
        let inner =
            PersistedEventStore::new_event_store(repo).with_upcasters(order_domain::upcasters());
        Self {
            inner: std::sync::Arc::new(inner),
            pool,
            committed: CommitSignal::new(),
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
        let mut ctx = within_deadline("load", async {
            self.inner
                .load_aggregate(&id.to_string())
                .await
                .map_err(AppError::from_event_store)
        })
        .await?;
        let order = ctx.aggregate().clone();
        Ok(order.exists().then_some(order))
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
    /// The domain's refusal by kind, or `check`'s; [`AppError::ConcurrentWrite`] for a race
    /// lost `MAX_ATTEMPTS` times; [`AppError::Unavailable`] for an unreachable database or the
    /// request's database deadline passing (across every attempt).
    pub async fn execute(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        check: impl Fn(&Order) -> Result<(), AppError>,
        command: impl Fn() -> OrderCommand,
    ) -> Result<Executed, AppError> {
        let started = std::time::Instant::now();
        let name = command_name(&command());
        let result = within_deadline(
            "command",
            self.decide_and_append(id, metadata, check, command),
        )
        .await;
        metrics::histogram!("order_command_duration_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// [`Self::execute`] without the timing: load, check, decide, append, retry on a lost race.
    async fn decide_and_append(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        check: impl Fn(&Order) -> Result<(), AppError>,
        command: impl Fn() -> OrderCommand,
    ) -> Result<Executed, AppError> {
        let aggregate_id = id.to_string();
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self
                .inner
                .load_aggregate(&aggregate_id)
                .await
                .map_err(AppError::from_event_store)?
                .aggregate()
                .clone();
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
            match self
                .append(&aggregate_id, current.version, &events, metadata)
                .await
            {
                Ok(()) => {
                    let mut order = current;
                    for e in &events {
                        order.apply(e);
                    }
                    metrics::counter!("order_commands_total", "outcome" => "applied").increment(1);
                    return Ok(Executed { order, events });
                }
                Err(Appended::Conflict) => {
                    metrics::counter!("order_command_conflicts_total").increment(1);
                    tracing::debug!(order.id = %id, attempt, "lost a race for the next sequence; retrying");
                }
                Err(Appended::Failed(e)) => return Err(e),
            }
        }
        Err(AppError::ConcurrentWrite)
    }

    /// Creates an order without reading first: the command is decided against an empty order
    /// and appended as sequence 1, so a create is one round trip. The primary key settles a
    /// race or a repeat: when sequence 1 already exists the answer is
    /// [`Created::AlreadyExists`], and the caller decides what a repeat means (idempotent
    /// replay, or a lost race).
    ///
    /// # Errors
    /// The domain's refusal, an unreachable database or the request's database deadline
    /// passing ([`AppError::Unavailable`]).
    pub async fn create(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        command: OrderCommand,
    ) -> Result<Created, AppError> {
        let started = std::time::Instant::now();
        let name = command_name(&command);
        let result = within_deadline("command", self.create_unmetered(id, metadata, command)).await;
        metrics::histogram!("order_command_duration_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn create_unmetered(
        &self,
        id: Uuid,
        metadata: &HashMap<String, String>,
        command: OrderCommand,
    ) -> Result<Created, AppError> {
        let empty = Order::default();
        let events = empty.decide(command).map_err(AppError::from)?;
        match self.append(&id.to_string(), 0, &events, metadata).await {
            Ok(()) => {
                let mut order = empty;
                for e in &events {
                    order.apply(e);
                }
                metrics::counter!("order_commands_total", "outcome" => "applied").increment(1);
                Ok(Created::New(Box::new(Executed { order, events })))
            }
            Err(Appended::Conflict) => Ok(Created::AlreadyExists),
            Err(Appended::Failed(e)) => Err(e),
        }
    }

    /// Appends `events` after sequence `after` in ONE statement. postgres-es appends with
    /// BEGIN, one INSERT per event and COMMIT (three round trips for one event); a single
    /// multi-row INSERT is just as atomic, since a statement outside a transaction block is
    /// its own transaction. The rows are inserted in `ordinality` order so that their
    /// `global_position`s follow their sequence numbers. Payload and metadata are serialised
    /// exactly as cqrs-es's `SerializedEvent` does, so postgres-es loads them unchanged.
    async fn append(
        &self,
        aggregate_id: &str,
        after: u64,
        events: &[OrderEvent],
        metadata: &HashMap<String, String>,
    ) -> Result<(), Appended> {
        let first = i64::try_from(after).map_err(|e| Appended::Failed(AppError::internal(e)))? + 1;
        let sequences: Vec<i64> = (first..).take(events.len()).collect();
        let types: Vec<&str> = events.iter().map(OrderEvent::event_type).collect();
        let versions: Vec<&str> = events.iter().map(OrderEvent::event_version).collect();
        let payloads = events
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Appended::Failed(AppError::internal(e)))?;
        let metadata =
            serde_json::to_value(metadata).map_err(|e| Appended::Failed(AppError::internal(e)))?;
        let inserted = sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata)
             SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7
               FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[])
                    WITH ORDINALITY AS e(sequence, event_type, event_version, payload, n)
              ORDER BY e.n",
        )
        .bind(ORDER_AGGREGATE_TYPE)
        .bind(aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => {
                self.committed.committed();
                Ok(())
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Appended::Conflict),
            Err(e) => Err(Appended::Failed(AppError::from_sqlx(e))),
        }
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
