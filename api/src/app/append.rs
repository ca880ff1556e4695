//! Appending events to the event store: one command's events in one statement, and concurrent
//! creates grouped into one statement and one commit.
//!
//! Every append inserts its events only if the request's replay key (when it has one) went
//! into `auth_nonces` in the same statement, so a key is spent exactly when events are written,
//! and Postgres decides across replicas which copy of a request was first (docs/contract.md
//! §4). What changes between the two paths is only how many commands share a commit.
//!
//! # Group commit
//! A create needs no load, so concurrent creates go through one [`Batcher`]: whatever creates
//! are waiting become one statement on a connection the batcher keeps ([`HeldConnection`]), so
//! N creates cost one round trip, one commit and one WAL flush instead of N, and no pool
//! checkout or release check. A create with no other in flight is sent at once instead, as a
//! one-command statement, by its own request's task: a batch of one would only add a hop to
//! the batcher's task and a statement that Postgres plans afresh for each execution. It too
//! runs on a kept connection, one for lone creates, so that a single client's creates pay
//! neither the pool checkout nor the release check either. The grouped statement decides each
//! create on its own:
//! - a create whose first sequence is already stored conflicts: neither its key nor its events
//!   are written (a repeated create, [`Appended::Conflict`]), unless its key is already used
//!   (a replay, as below);
//! - a create whose key is already used is a replay: its events are not written
//!   ([`Appended::Replayed`]);
//! - every other create is appended, key and events together.
//!
//! Two creates of one batch that name the same order, or carry the same key, would decide each
//! other's fate inside one statement; the later ones run after it, one statement each. A race
//! the statement cannot see when it starts (another replica's create of the same order, not yet
//! committed) makes Postgres fail the whole statement, which rolls it all back; it is sent once
//! more, and its new snapshot sees that order. Any other refusal sends the batch again one
//! create per statement, so each gets its own answer, and a create whose caller has already
//! answered is not started again. An error that does not prove a rollback (a connection lost
//! during the statement) leaves every create in it in doubt: each fails as unavailable (5xx),
//! never as a replay, since the statement may have committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use order_domain::{OrderEvent, ORDER_AGGREGATE_TYPE};
use order_projections::error::is_outage;
use order_projections::postgres::batch::{self, BatchFuture, Batcher};
use order_projections::postgres::{CommitSignal, HeldConnection};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::app::error::AppError;
use crate::auth::PendingNonce;

/// The events' insert, shared by both one-command statements: `$1` aggregate type, `$2` id,
/// `$3` to `$6` the events' arrays, `$7` their metadata.
macro_rules! insert_events {
    () => {
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7
           FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[])
                WITH ORDINALITY AS e(sequence, event_type, event_version, payload, n)"
    };
}

/// One command's append without a replay key (messages, jobs, the refund loop).
pub(crate) const APPEND: &str = concat!(insert_events!(), " ORDER BY e.n");

/// One command's append with the request's replay key (`$8` service, `$9` key, `$10` expiry):
/// the events go in only if the key did.
pub(crate) const APPEND_WITH_KEY: &str = concat!(
    "WITH nonce AS (
       INSERT INTO auth_nonces (service, nonce, expires_at) VALUES ($8, $9, $10)
       ON CONFLICT (service, nonce) DO NOTHING
       RETURNING 1)
     ",
    insert_events!(),
    " WHERE EXISTS (SELECT 1 FROM nonce) ORDER BY e.n"
);

/// Many commands' appends in one statement. `$1`–`$6`: one row per command (its index in the
/// batch, order id, first sequence, and key: service, key, expiry, all null without a key);
/// `$7`–`$12`: one row per event (its command's index, order id, sequence, type, version,
/// payload), `$13` the aggregate type, `$14` each event's metadata. Answers each command's
/// index with `appended`, `replayed` or `conflict`.
///
/// `fresh` leaves out a command whose first sequence is already stored, before its key is
/// inserted, so that a repeated create neither fails the statement nor spends its key; such a
/// command whose key is already used answers `replayed`, as the one-command statement does.
/// Keys and events are inserted in key order (one command per order in a statement), so two
/// replicas' statements wait on each other's rows in the same order and cannot deadlock over
/// them; `global_position` still follows sequence within each order.
const GROUP_APPEND: &str = "
WITH command AS (
    SELECT * FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::text[],
                         $6::timestamptz[])
           AS c(n, aggregate_id, first, service, nonce, expires_at)
), fresh AS (
    SELECT c.* FROM command c
     WHERE NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = $13 AND e.aggregate_id = c.aggregate_id
                          AND e.sequence = c.first)
), keyed AS (
    INSERT INTO auth_nonces (service, nonce, expires_at)
    SELECT service, nonce, expires_at FROM fresh WHERE nonce IS NOT NULL
     ORDER BY service, nonce
    ON CONFLICT (service, nonce) DO NOTHING
    RETURNING service, nonce
), accepted AS (
    SELECT f.n FROM fresh f
     WHERE f.nonce IS NULL
        OR EXISTS (SELECT 1 FROM keyed k WHERE k.service = f.service AND k.nonce = f.nonce)
), appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata)
    SELECT $13, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
      FROM unnest($7::int4[], $8::text[], $9::int8[], $10::text[], $11::text[], $12::jsonb[],
                  $14::jsonb[])
           WITH ORDINALITY AS e(n, aggregate_id, sequence, event_type, event_version, payload,
                                metadata, position)
     WHERE e.n IN (SELECT n FROM accepted)
     ORDER BY e.aggregate_id, e.sequence
)
SELECT c.n,
       CASE WHEN c.n IN (SELECT n FROM accepted) THEN 'appended'
            WHEN c.n IN (SELECT n FROM fresh) THEN 'replayed'
            WHEN EXISTS (SELECT 1 FROM auth_nonces a
                          WHERE a.service = c.service AND a.nonce = c.nonce) THEN 'replayed'
            ELSE 'conflict' END
  FROM command c";

/// Most creates in one statement.
const MAX_BATCH: usize = 64;

/// Why an append did not happen.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Another writer took one of the sequence numbers first: reload and decide again. Nothing
    /// was written, the pending key included.
    Conflict,
    /// The pending key was already used: nothing was written.
    Replayed,
    /// Anything else.
    Failed(AppError),
}

/// Whether a statement answered `outcome` may have committed: a success, or a failure, which
/// can be a connection lost after the commit was sent. The feed's readers are told to look
/// then (a look that finds nothing costs one empty round) rather than wait for their poll;
/// a conflict or a replay wrote nothing.
fn may_have_committed(outcome: &Result<(), Appended>) -> bool {
    !matches!(outcome, Err(Appended::Conflict | Appended::Replayed))
}

/// A replay key as the statements bind it.
#[derive(Debug)]
struct Key {
    service: String,
    nonce: String,
    expires_at: DateTime<Utc>,
}

/// One command's events, serialised as they are stored: payload and metadata exactly as
/// cqrs-es's `SerializedEvent` has them, so that postgres-es loads them unchanged.
#[derive(Debug)]
pub(crate) struct NewEvents {
    aggregate_id: String,
    /// The first event's sequence; the others follow it.
    first: i64,
    types: Vec<&'static str>,
    versions: Vec<&'static str>,
    payloads: Vec<Value>,
    metadata: Value,
    key: Option<Key>,
}

impl NewEvents {
    /// `events` to append after sequence `after` of `aggregate_id`, with the request's pending
    /// key when it has one (the key is only copied: the caller settles it from the outcome).
    pub(crate) fn new(
        aggregate_id: &str,
        after: u64,
        events: &[OrderEvent],
        metadata: &HashMap<String, String>,
        key: Option<&PendingNonce>,
    ) -> Result<Self, AppError> {
        Ok(Self {
            aggregate_id: aggregate_id.to_owned(),
            first: i64::try_from(after).map_err(AppError::internal)? + 1,
            types: events.iter().map(OrderEvent::event_type).collect(),
            versions: events.iter().map(OrderEvent::event_version).collect(),
            payloads: events
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .map_err(AppError::internal)?,
            metadata: serde_json::to_value(metadata).map_err(AppError::internal)?,
            key: key.map(|k| Key {
                service: k.service().to_owned(),
                nonce: k.key().to_owned(),
                expires_at: k.expires_at(),
            }),
        })
    }

    fn sequences(&self) -> impl Iterator<Item = i64> {
        (self.first..).take(self.types.len())
    }
}

/// Appends one command's events in ONE statement, with its replay key when it has one.
/// postgres-es appends with BEGIN, one INSERT per event and COMMIT (three round trips for one
/// event); a single multi-row INSERT is just as atomic, since a statement outside a transaction
/// block is its own transaction. The rows are inserted in `ordinality` order so that their
/// `global_position`s follow their sequence numbers.
///
/// With a key, the statement first inserts it into `auth_nonces` (`ON CONFLICT DO NOTHING`),
/// and the events only if that inserted it: a used key appends nothing (zero rows,
/// [`Appended::Replayed`]); a conflict on the events' primary key fails the whole statement,
/// key included ([`Appended::Conflict`]). A copy of the request racing this one waits on the
/// key's index entry until this commits, then finds it used, so one copy wins across replicas.
pub(crate) async fn append_one(conn: &mut PgConnection, new: &NewEvents) -> Result<(), Appended> {
    let sequences: Vec<i64> = new.sequences().collect();
    let sql = if new.key.is_some() {
        APPEND_WITH_KEY
    } else {
        APPEND
    };
    let mut query = sqlx::query(sql)
        .bind(ORDER_AGGREGATE_TYPE)
        .bind(&new.aggregate_id)
        .bind(&sequences)
        .bind(&new.types)
        .bind(&new.versions)
        .bind(&new.payloads)
        .bind(&new.metadata);
    if let Some(key) = &new.key {
        query = query
            .bind(&key.service)
            .bind(&key.nonce)
            .bind(key.expires_at);
    }
    match query.execute(conn).await {
        Ok(done) if done.rows_affected() == 0 => Err(Appended::Replayed),
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Appended::Conflict),
        Err(e) => Err(Appended::Failed(AppError::from_sqlx(e))),
    }
}

/// Concurrent appends grouped into one statement per batch (see the module doc). Cheap to
/// clone: clones share the batch task and its connection, the lone creates' connection, and
/// the count of appends in flight.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    /// The connection of creates sent alone: one at a time by construction (`in_flight`).
    lone: HeldConnection,
    committed: CommitSignal,
    batcher: Batcher<Grouped, Result<(), Appended>>,
    in_flight: Arc<AtomicUsize>,
}

/// An append queued for a batch, and whether its caller still waits for it.
#[derive(Debug)]
struct Grouped {
    new: NewEvents,
    waiting: Arc<AtomicBool>,
}

/// Marks its append's caller as gone when dropped (answered, or given up), and counts it out
/// of the appends in flight.
struct Caller {
    waiting: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.waiting.store(false, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GroupCommit {
    /// Batches over `pool`, bumping `committed` after every batch that appended.
    pub(crate) fn new(pool: PgPool, committed: CommitSignal) -> Self {
        let held = HeldConnection::new(pool.clone());
        let (idle, release) = batch::idle_hook(&held);
        let batch_pool = pool.clone();
        let batch_signal = committed.clone();
        let batcher = Batcher::new(MAX_BATCH, "order_append_batch_size", move |appends| {
            Box::pin(append_batch(
                batch_pool.clone(),
                held.clone(),
                batch_signal.clone(),
                appends,
            )) as BatchFuture<_>
        })
        .on_idle(idle, release);
        Self {
            lone: HeldConnection::released_when_idle(pool, batch::HELD_IDLE),
            committed,
            batcher,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Appends `new`: at once on the lone creates' connection when no other append is in
    /// flight (a batch would only add a hop and cost a statement planned for one row), else
    /// with whatever other appends are waiting, as one batch.
    pub(crate) async fn append(&self, new: NewEvents) -> Result<(), Appended> {
        let alone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        let caller = Caller {
            waiting: Arc::new(AtomicBool::new(true)),
            in_flight: Arc::clone(&self.in_flight),
        };
        if alone {
            let mut conn = self
                .lone
                .lock()
                .await
                .map_err(|e| Appended::Failed(AppError::from_sqlx(e)))?;
            let outcome = append_one(conn.conn(), &new).await;
            if !matches!(outcome, Err(Appended::Failed(_))) {
                conn.keep();
            }
            if may_have_committed(&outcome) {
                self.committed.committed();
            }
            return outcome;
        }
        let grouped = Grouped {
            new,
            waiting: Arc::clone(&caller.waiting),
        };
        // No answer: the batcher's runtime is shutting down, or the batch panicked after its
        // statement may have committed. Either way the outcome is not known.
        let answer = self.batcher.submit(grouped).await;
        drop(caller);
        answer.unwrap_or_else(|| {
            Err(Appended::Failed(AppError::internal(anyhow::anyhow!(
                "the append batch ended without an answer"
            ))))
        })
    }

    /// Batches run so far (for tests that check batching happens).
    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        self.batcher.batches()
    }
}

/// One batch, on the batcher's held connection: the statement for every append that can share
/// it, then the rest one statement each (see the module doc).
async fn append_batch(
    pool: PgPool,
    held: HeldConnection,
    committed: CommitSignal,
    batch: Vec<Grouped>,
) -> Vec<Result<(), Appended>> {
    let mut outcomes: Vec<Option<Result<(), Appended>>> =
        std::iter::repeat_with(|| None).take(batch.len()).collect();
    let (shared, mut alone) = split(&batch);
    let mut conn = match held.lock().await {
        Ok(conn) => Some(conn),
        Err(e) => {
            return batch
                .iter()
                .map(|_| Err(Appended::Failed(in_doubt(&e))))
                .collect()
        }
    };
    if let Some(held_conn) = conn.as_mut().filter(|_| !shared.is_empty()) {
        // A conflict with another writer's create, or a deadlock with another replica's
        // batch, is tried once more: the next statement's snapshot sees the other's order
        // committed, and answers that create alone as a conflict.
        let mut attempt = 1;
        loop {
            match insert_shared(held_conn.conn(), &batch, &shared).await {
                Ok(answers) => {
                    if answers.iter().any(|(_, outcome)| outcome.is_ok()) {
                        committed.committed();
                    }
                    for (i, outcome) in answers {
                        outcomes[i] = Some(outcome);
                    }
                    break;
                }
                Err(e) if rolled_back(&e) && attempt == 1 && is_race(&e) => attempt += 1,
                // Refused, so rolled back: nothing of it was written.
                Err(e) if rolled_back(&e) => {
                    tracing::debug!(error = %e, appends = shared.len(), "grouped append refused; appending each on its own");
                    alone.extend(shared);
                    alone.sort_unstable();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, appends = shared.len(), "grouped append failed; its outcome is unknown");
                    for &i in &shared {
                        outcomes[i] = Some(Err(Appended::Failed(in_doubt(&e))));
                    }
                    // It may have committed: the feed's readers look rather than wait a poll.
                    committed.committed();
                    // Not kept: the pool checks the connection or closes it.
                    conn = None;
                    break;
                }
            }
        }
    }
    // The rest one statement each: on the held connection while it is sound, then on the pool.
    let mut may_have_appended = false;
    for &i in &alone {
        if !batch[i].waiting.load(Ordering::Relaxed) {
            // Its caller has answered already (a 5xx): nothing is started on its behalf.
            continue;
        }
        let outcome = match conn.as_mut() {
            Some(held_conn) => append_one(held_conn.conn(), &batch[i].new).await,
            None => match pool.acquire().await {
                Ok(mut pooled) => append_one(&mut pooled, &batch[i].new).await,
                Err(e) => Err(Appended::Failed(AppError::from_sqlx(e))),
            },
        };
        if matches!(outcome, Err(Appended::Failed(_))) {
            conn = None;
        }
        may_have_appended |= may_have_committed(&outcome);
        outcomes[i] = Some(outcome);
    }
    if let Some(held_conn) = conn {
        held_conn.keep();
    }
    if may_have_appended {
        committed.committed();
    }
    answers(outcomes)
}

/// Each append's answer in batch order; one left without (its caller gone) answers an error,
/// so that no answer moves to another caller.
fn answers(outcomes: Vec<Option<Result<(), Appended>>>) -> Vec<Result<(), Appended>> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(Appended::Failed(AppError::internal(anyhow::anyhow!(
                    "append not attempted: its caller had gone"
                ))))
            })
        })
        .collect()
}

/// Whether Postgres refused the statement with an error that means it rolled back: a
/// constraint or data error, a serialization failure or deadlock, a lock timeout, a resource
/// limit. Anything else (a lost connection, the server shutting down, a cancel, which another
/// process may send after the commit, an unexpected class) leaves the outcome unknown.
fn rolled_back(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if is_outage(e) {
        return false;
    }
    db.code().is_some_and(|code| {
        code.starts_with("23")
            || code.starts_with("22")
            || code.starts_with("54")
            || matches!(&*code, "40001" | "40P01" | "55P03")
    })
}

/// A lost race with another writer: a unique violation (another create of the same order
/// committed while the statement waited on it) or a deadlock with another batch.
fn is_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation() || db.code().as_deref() == Some("40P01"))
}

/// Which appends share the statement (the first of each order and of each key, in arrival
/// order) and which run after it, one statement each.
fn split(batch: &[Grouped]) -> (Vec<usize>, Vec<usize>) {
    let mut orders = HashSet::new();
    let mut keys = HashSet::new();
    (0..batch.len()).partition(|&i| {
        let new = &batch[i].new;
        let key = new.key.as_ref().map(|k| (&k.service, &k.nonce));
        if orders.contains(&new.aggregate_id) || key.is_some_and(|k| keys.contains(&k)) {
            return false;
        }
        orders.insert(&new.aggregate_id);
        keys.extend(key);
        true
    })
}

/// The grouped statement for `shared` (indexes into `batch`): each append's index and outcome.
async fn insert_shared(
    conn: &mut PgConnection,
    batch: &[Grouped],
    shared: &[usize],
) -> Result<Vec<(usize, Result<(), Appended>)>, sqlx::Error> {
    let mut commands = CommandColumns::default();
    let mut events = EventColumns::default();
    for &i in shared {
        let new = &batch[i].new;
        let n = i32::try_from(i).unwrap_or(i32::MAX);
        commands.push(n, new);
        events.push(n, new);
    }
    let rows: Vec<(i32, String)> = sqlx::query_as(GROUP_APPEND)
        .bind(&commands.n)
        .bind(&commands.aggregate_ids)
        .bind(&commands.firsts)
        .bind(&commands.services)
        .bind(&commands.nonces)
        .bind(&commands.expiries)
        .bind(&events.n)
        .bind(&events.aggregate_ids)
        .bind(&events.sequences)
        .bind(&events.types)
        .bind(&events.versions)
        .bind(&events.payloads)
        .bind(ORDER_AGGREGATE_TYPE)
        .bind(&events.metadata)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(n, outcome)| {
            let i = usize::try_from(n).ok()?;
            let outcome = match outcome.as_str() {
                "appended" => Ok(()),
                "replayed" => Err(Appended::Replayed),
                _ => Err(Appended::Conflict),
            };
            Some((i, outcome))
        })
        .collect())
}

/// The grouped statement's per-command arrays.
#[derive(Default)]
struct CommandColumns<'a> {
    n: Vec<i32>,
    aggregate_ids: Vec<&'a str>,
    firsts: Vec<i64>,
    services: Vec<Option<&'a str>>,
    nonces: Vec<Option<&'a str>>,
    expiries: Vec<Option<DateTime<Utc>>>,
}

impl<'a> CommandColumns<'a> {
    fn push(&mut self, n: i32, new: &'a NewEvents) {
        self.n.push(n);
        self.aggregate_ids.push(&new.aggregate_id);
        self.firsts.push(new.first);
        self.services
            .push(new.key.as_ref().map(|k| k.service.as_str()));
        self.nonces.push(new.key.as_ref().map(|k| k.nonce.as_str()));
        self.expiries.push(new.key.as_ref().map(|k| k.expires_at));
    }
}

/// The grouped statement's per-event arrays.
#[derive(Default)]
struct EventColumns<'a> {
    n: Vec<i32>,
    aggregate_ids: Vec<&'a str>,
    sequences: Vec<i64>,
    types: Vec<&'static str>,
    versions: Vec<&'static str>,
    payloads: Vec<&'a Value>,
    metadata: Vec<&'a Value>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, n: i32, new: &'a NewEvents) {
        for (((sequence, event_type), version), payload) in new
            .sequences()
            .zip(&new.types)
            .zip(&new.versions)
            .zip(&new.payloads)
        {
            self.n.push(n);
            self.aggregate_ids.push(&new.aggregate_id);
            self.sequences.push(sequence);
            self.types.push(event_type);
            self.versions.push(version);
            self.payloads.push(payload);
            self.metadata.push(&new.metadata);
        }
    }
}

/// What every append of a statement whose outcome is unknown answers.
fn in_doubt(e: &sqlx::Error) -> AppError {
    if is_outage(e) {
        AppError::Unavailable {
            message: "the database is unavailable; retry shortly".into(),
            retry_after: Some(1),
        }
    } else {
        AppError::internal(anyhow::anyhow!("grouped append failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use order_domain::Order;
    use order_projections::postgres::CommitWatch;
    use uuid::Uuid;

    use super::*;
    use crate::app::store::tests::create_command;

    fn grouped(order: Uuid, waiting: bool) -> Grouped {
        let events = Order::default()
            .decide(create_command(order))
            .expect("decided");
        Grouped {
            new: NewEvents::new(&order.to_string(), 0, &events, &HashMap::new(), None)
                .expect("events"),
            waiting: Arc::new(AtomicBool::new(waiting)),
        }
    }

    /// A batch's second create of an order runs after the grouped statement, on its own; it is
    /// started only while its caller still waits (a caller that has answered, with a 5xx,
    /// must not see its create appear afterwards).
    #[sqlx::test(migrations = "../migrations")]
    async fn an_append_after_the_statement_starts_only_while_its_caller_waits(pool: PgPool) {
        let run = |batch| {
            append_batch(
                pool.clone(),
                HeldConnection::new(pool.clone()),
                CommitSignal::new(),
                batch,
            )
        };
        let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
        let outcomes = run(vec![
            grouped(id, true),
            grouped(id, false),
            grouped(other, true),
        ])
        .await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            matches!(&outcomes[1], Err(Appended::Failed(_))),
            "not started, so not answered as a conflict: {:?}",
            outcomes[1]
        );

        // The same shape with its caller still waiting: started, and a conflict.
        let id = Uuid::now_v7();
        let outcomes = run(vec![grouped(id, true), grouped(id, true)]).await;
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        assert!(
            matches!(&outcomes[1], Err(Appended::Conflict)),
            "{outcomes:?}"
        );
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(stored, 3, "one creation per order");
    }

    /// A grouped statement whose connection is lost while it runs may have committed: each of
    /// its creates fails (never a replay or a conflict, which would tell the caller nothing
    /// was written), and the feed's readers are told to look.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_statement_cut_off_by_a_lost_connection_leaves_its_creates_in_doubt(pool: PgPool) {
        let (blocked, other) = (Uuid::now_v7(), Uuid::now_v7());
        // Another writer's uncommitted create of `blocked`: the statement waits on its row.
        let mut tx = pool.begin().await.expect("begin");
        let new = grouped(blocked, true).new;
        append_one(&mut tx, &new)
            .await
            .expect("the other writer's append");
        let signal = CommitSignal::new();
        let mut readers = signal.subscribe();
        let batch = tokio::spawn(append_batch(
            pool.clone(),
            HeldConnection::new(pool.clone()),
            signal.clone(),
            vec![grouped(blocked, true), grouped(other, true)],
        ));
        terminate_the_waiting_statement(&pool, "the grouped statement").await;
        let outcomes = batch.await.expect("batch");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(Appended::Failed(_)))),
            "{outcomes:?}"
        );
        told_to_look(&mut readers).await;
        tx.rollback().await.expect("rollback");
    }

    /// Cuts off the statement that waits on a lock (`what`, for the message), as a lost
    /// connection would: its backend is terminated.
    async fn terminate_the_waiting_statement(pool: &PgPool, what: &str) {
        let mut waiting = None;
        for _ in 0..200 {
            waiting = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_optional(pool)
            .await
            .expect("activity");
            if waiting.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let pid: i32 = waiting.unwrap_or_else(|| panic!("{what} waits on the other writer"));
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(pool)
            .await
            .expect("terminated");
    }

    /// Fails unless the feed's readers are woken within 5 s.
    async fn told_to_look(readers: &mut CommitWatch) {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            readers.idle_wait(std::time::Duration::from_secs(3600)),
        )
        .await
        .expect("the feed's readers were told to look");
    }

    /// The same for a create sent alone: cut off by a lost connection, it answers a failure,
    /// and the feed's readers are told to look, since it may have committed.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_lone_create_cut_off_by_a_lost_connection_wakes_the_feed_readers(pool: PgPool) {
        let order = Uuid::now_v7();
        let mut tx = pool.begin().await.expect("begin");
        append_one(&mut tx, &grouped(order, true).new)
            .await
            .expect("the other writer's append");
        let signal = CommitSignal::new();
        let mut readers = signal.subscribe();
        readers.mark_seen();
        let appends = GroupCommit::new(pool.clone(), signal.clone());
        let lone = tokio::spawn(async move { appends.append(grouped(order, true).new).await });
        terminate_the_waiting_statement(&pool, "the lone create").await;
        let outcome = lone.await.expect("append");
        assert!(matches!(outcome, Err(Appended::Failed(_))), "{outcome:?}");
        told_to_look(&mut readers).await;
        tx.rollback().await.expect("rollback");
    }
}
