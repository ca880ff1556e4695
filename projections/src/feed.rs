//! The commit-safe feed: every reader of events (projectors, the outbox relay, jobs, replay)
//! reads through one query shape (`behind_the_fence!`): [`read_after`] and its raw and
//! decoded forms, and [`FeedItem::read`] for projectors.
//!
//! Why not `global_position > last`: positions are taken when a row is inserted, but rows become
//! visible when their transaction commits, so a reader can see position 11 while position 10
//! is still uncommitted, move past it, and never see it. Instead each row carries its writer's
//! transaction id (`xid8`), and a reader only reads rows whose transaction is older than every
//! transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`). Those transactions have
//! all finished, and no new transaction can get an id below that fence, so nothing can appear
//! behind the reader later. Rows are read in `(transaction_id, global_position)` order, which
//! keeps each order's events in sequence order: a command appends only after it has read the
//! order's committed history, so its transaction id is newer than the ones it read.
//!
//! The price is that one long transaction holds the fence back; [`lag`] names it.

use std::future::Future;

use chrono::{DateTime, Utc};
use order_domain::OrderEvent;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::error::ProjectionError;

/// A position in the feed: the last event a reader has finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    pub transaction_id: u64,
    pub global_position: i64,
}

/// One event as the feed delivers it, with its payload already upcast to the current version.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// Externally tagged, as stored: `{"OrderCreated": {...}}`.
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl FeedEvent {
    /// Decodes the payload into the domain event.
    ///
    /// # Errors
    /// [`ProjectionError::Undecodable`] for a payload that matches no known event.
    pub fn decode(&self) -> Result<OrderEvent, ProjectionError> {
        serde_json::from_value(self.payload.clone()).map_err(|e| ProjectionError::Undecodable {
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            reason: e.to_string(),
        })
    }

    /// The event's own fields, without the type tag.
    pub fn inner_payload(&self) -> &Value {
        match &self.payload {
            Value::Object(m) if m.len() == 1 => m.values().next().unwrap_or(&Value::Null),
            other => other,
        }
    }

    /// The order id, when the aggregate id is a UUID (it always is for orders).
    pub fn order_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.aggregate_id).ok()
    }

    /// A metadata string, if present.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

/// An event as one kind of reader reads it from the feed: a projector's batches are read
/// through its event type's [`FeedItem::read`], so that each reader pays only for the
/// decoding it needs. [`FeedEvent`] keeps payload and metadata as JSON trees, for readers that
/// look into them; [`DecodedEvent`] goes straight from the stored text to the domain event.
pub trait FeedItem: Sized + Send + Sync {
    /// Where the event is in the feed.
    fn position(&self) -> FeedPosition;

    /// Up to `limit` events after `from`, in feed order, upcast to current versions.
    fn read(
        conn: &mut PgConnection,
        from: ReadFrom<'_>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Self>, ProjectionError>> + Send;
}

impl FeedItem for FeedEvent {
    fn position(&self) -> FeedPosition {
        self.position
    }

    async fn read(
        conn: &mut PgConnection,
        from: ReadFrom<'_>,
        limit: i64,
    ) -> Result<Vec<Self>, ProjectionError> {
        to_feed_events(&fetch(conn, &SELECT_RAW, from, limit).await?)
    }
}

impl FeedItem for DecodedEvent {
    fn position(&self) -> FeedPosition {
        self.position
    }

    async fn read(
        conn: &mut PgConnection,
        from: ReadFrom<'_>,
        limit: i64,
    ) -> Result<Vec<Self>, ProjectionError> {
        decode_rows(&fetch(conn, &SELECT_TEXT, from, limit).await?)
    }
}

/// Where a feed read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom<'a> {
    /// After this position.
    After(FeedPosition),
    /// After this reader's checkpoint as the read's statement finds it (the start of the feed
    /// if it has none): one statement where loading the checkpoint and then reading would be
    /// two round trips.
    Checkpoint(&'a str),
}

/// What every feed read selects from: the events after a start and behind the fence, in feed
/// order, at most a limit (a macro, so that the queries are still `&'static str` constants).
/// `position` starts after `$1`/`$2` with the limit in `$3`; `checkpoint` starts after reader
/// `$1`'s checkpoint with the limit in `$2`. The checkpoint is read by an init plan, so the
/// feed index serves both alike.
///
/// Every event is an order event (`migrations/0502_events_order_only.sql` enforces it), so
/// there is no `aggregate_type` filter: with one, a table without statistics was planned as a
/// whole-table bitmap scan and sort; without it, the feed index is the only plan.
macro_rules! behind_the_fence {
    (position) => {
        behind_the_fence!("($1::text::xid8, $2)", "$3")
    };
    (checkpoint) => {
        behind_the_fence!(
            "(SELECT coalesce(c.transaction_id, '0'::xid8), coalesce(c.global_position, 0)
                FROM (SELECT 1) one LEFT JOIN feed_checkpoints c ON c.consumer = $1)",
            "$2"
        )
    };
    ($after:literal, $limit:literal) => {
        concat!(
            "
  FROM events
 WHERE (transaction_id, global_position) > ",
            $after,
            "
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, global_position
 LIMIT ",
            $limit
        )
    };
}

/// One feed query's two forms, one per kind of [`ReadFrom`].
struct Select {
    after: &'static str,
    checkpoint: &'static str,
}

/// `$columns` selected from the feed, in both forms.
macro_rules! select {
    ($columns:literal) => {
        Select {
            after: concat!($columns, behind_the_fence!(position)),
            checkpoint: concat!($columns, behind_the_fence!(checkpoint)),
        }
    };
}

/// The rows of `select` (one of the queries below) after `from`, at most `limit`.
async fn fetch<'e>(
    executor: impl PgExecutor<'e>,
    select: &Select,
    from: ReadFrom<'_>,
    limit: i64,
) -> Result<Vec<PgRow>, ProjectionError> {
    let query = match from {
        ReadFrom::After(after) => sqlx::query(select.after)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position),
        ReadFrom::Checkpoint(reader) => sqlx::query(select.checkpoint).bind(reader),
    };
    Ok(query.bind(limit).fetch_all(executor).await?)
}

/// Reads up to `limit` order events after `after`, in feed order, upcast to current versions.
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails; [`ProjectionError::Undecodable`] when a
/// stored payload or metadata is not JSON.
pub async fn read_after<'e>(
    executor: impl PgExecutor<'e>,
    after: FeedPosition,
    limit: i64,
) -> Result<Vec<FeedEvent>, ProjectionError> {
    to_feed_events(&fetch(executor, &SELECT_RAW, ReadFrom::After(after), limit).await?)
}

/// [`SELECT_RAW`]'s rows as [`FeedEvent`]s.
fn to_feed_events(rows: &[PgRow]) -> Result<Vec<FeedEvent>, ProjectionError> {
    rows.iter()
        .map(|row| raw_event(row)?.to_feed_event())
        .collect()
}

/// The feed's columns, the JSON as text, read by index: see [`RawBatch`].
const SELECT_RAW: Select = select!(
    "SELECT transaction_id::text AS txid, global_position, aggregate_type, aggregate_id, sequence,
            event_type, event_version, payload::text AS payload, metadata::text AS metadata,
            recorded_at"
);

/// A batch of feed rows kept as Postgres sent them, for readers that copy an event's JSON
/// through rather than look into all of it (the outbox relay). [`read_after`] builds a
/// `serde_json::Value` tree for every payload and metadata object and frees it again; in the
/// relay's profile that building and freeing was the largest cost per event.
#[derive(Debug)]
pub struct RawBatch {
    rows: Vec<PgRow>,
}

/// One event of a [`RawBatch`], borrowed from its row. The payload is as stored: externally
/// tagged, and at its stored version (see [`RawEvent::is_current`]).
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'r> {
    pub position: FeedPosition,
    pub aggregate_type: &'r str,
    pub aggregate_id: &'r str,
    pub sequence: i64,
    pub event_type: &'r str,
    pub event_version: &'r str,
    /// JSON text, as Postgres prints `jsonb`.
    pub payload: &'r str,
    /// JSON text, as Postgres prints `jsonb`.
    pub metadata: &'r str,
    pub recorded_at: DateTime<Utc>,
}

impl RawBatch {
    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the read found nothing.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The events, in feed order.
    pub fn events(&self) -> impl Iterator<Item = Result<RawEvent<'_>, ProjectionError>> {
        self.rows.iter().map(raw_event)
    }
}

/// One of [`SELECT_RAW`]'s rows, borrowed.
fn raw_event(row: &PgRow) -> Result<RawEvent<'_>, ProjectionError> {
    // By index, in SELECT_RAW's order.
    Ok(RawEvent {
        position: FeedPosition {
            transaction_id: transaction_id(row.try_get(0)?)?,
            global_position: row.try_get(1)?,
        },
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        sequence: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        payload: row.try_get(7)?,
        metadata: row.try_get(8)?,
        recorded_at: row.try_get(9)?,
    })
}

impl RawEvent<'_> {
    /// Whether the stored payload is at its event type's current version, so that it can be
    /// used as stored; otherwise [`RawEvent::to_feed_event`] upcasts it.
    pub fn is_current(&self) -> bool {
        order_domain::upcast::is_current(self.event_type, self.event_version)
    }

    /// The event as [`read_after`] gives it: JSON trees, payload upcast.
    ///
    /// # Errors
    /// [`ProjectionError::Undecodable`] when the payload or metadata is not JSON.
    pub fn to_feed_event(&self) -> Result<FeedEvent, ProjectionError> {
        let undecodable = |e: serde_json::Error| ProjectionError::Undecodable {
            aggregate_id: self.aggregate_id.to_owned(),
            sequence: self.sequence,
            event_type: self.event_type.to_owned(),
            reason: e.to_string(),
        };
        let metadata: Value = serde_json::from_str(self.metadata).map_err(undecodable)?;
        let (payload, event_version) = order_domain::upcast::upcast_payload(
            self.event_type,
            self.event_version,
            self.aggregate_id,
            serde_json::from_str(self.payload).map_err(undecodable)?,
            &metadata,
        );
        Ok(FeedEvent {
            position: self.position,
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
            sequence: self.sequence,
            event_type: self.event_type.to_owned(),
            event_version,
            payload,
            metadata,
            recorded_at: self.recorded_at,
        })
    }
}

/// [`read_after`]'s events, left undecoded (see [`RawBatch`]).
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails.
pub async fn read_raw_after<'e>(
    executor: impl PgExecutor<'e>,
    after: FeedPosition,
    limit: i64,
) -> Result<RawBatch, ProjectionError> {
    read_raw(executor, ReadFrom::After(after), limit).await
}

/// Up to `limit` events after `from`, left undecoded (see [`RawBatch`]).
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails.
pub async fn read_raw<'e>(
    executor: impl PgExecutor<'e>,
    from: ReadFrom<'_>,
    limit: i64,
) -> Result<RawBatch, ProjectionError> {
    Ok(RawBatch {
        rows: fetch(executor, &SELECT_RAW, from, limit).await?,
    })
}

/// One event decoded straight into the domain event, for readers that need nothing else
/// (the orders projector, replay): no JSON tree is built for it, unless its stored version
/// must be upcast first.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub position: FeedPosition,
    pub order_id: Uuid,
    pub sequence: i64,
    pub event: OrderEvent,
}

impl DecodedEvent {
    /// Decodes one stored event. `payload` and `metadata` are the stored JSON texts; the
    /// metadata is parsed only when an upcast needs it.
    ///
    /// # Errors
    /// [`ProjectionError::Handler`] for an aggregate id that is not a UUID;
    /// [`ProjectionError::Undecodable`] for a payload that matches no known event.
    pub fn decode(
        position: FeedPosition,
        aggregate_id: &str,
        sequence: i64,
        event_type: &str,
        stored_version: &str,
        payload: &str,
        metadata: &str,
    ) -> Result<Self, ProjectionError> {
        let order_id = Uuid::parse_str(aggregate_id).map_err(|_| {
            ProjectionError::Handler(format!(
                "order event {aggregate_id}#{sequence} has an aggregate id that is not a UUID"
            ))
        })?;
        let undecodable = |e: serde_json::Error| ProjectionError::Undecodable {
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type: event_type.to_owned(),
            reason: e.to_string(),
        };
        let event = if order_domain::upcast::is_current(event_type, stored_version) {
            serde_json::from_str(payload).map_err(undecodable)?
        } else {
            let metadata: Value = serde_json::from_str(metadata).map_err(undecodable)?;
            let (payload, _) = order_domain::upcast::upcast_payload(
                event_type,
                stored_version,
                aggregate_id,
                serde_json::from_str(payload).map_err(undecodable)?,
                &metadata,
            );
            serde_json::from_value(payload).map_err(undecodable)?
        };
        Ok(Self {
            position,
            order_id,
            sequence,
            event,
        })
    }
}

/// [`SELECT_RAW`]'s columns that a [`DecodedEvent`] needs.
const SELECT_TEXT: Select = select!(
    "SELECT transaction_id::text AS txid, global_position, aggregate_id, sequence, event_type,
            event_version, payload::text AS payload, metadata::text AS metadata"
);

/// [`read_after`], decoded straight into domain events: the same events in the same order,
/// without a JSON tree per event.
///
/// # Errors
/// [`ProjectionError::Database`] when the query fails; [`ProjectionError::Undecodable`] at the
/// first event that cannot be decoded.
pub async fn read_decoded_after<'e>(
    executor: impl PgExecutor<'e>,
    after: FeedPosition,
    limit: i64,
) -> Result<Vec<DecodedEvent>, ProjectionError> {
    decode_rows(&fetch(executor, &SELECT_TEXT, ReadFrom::After(after), limit).await?)
}

/// [`SELECT_TEXT`]'s rows, decoded.
fn decode_rows(rows: &[PgRow]) -> Result<Vec<DecodedEvent>, ProjectionError> {
    // Columns by index, in SELECT_TEXT's order: a name lookup per column and row shows in
    // replay's profile.
    rows.iter()
        .map(|row| {
            DecodedEvent::decode(
                FeedPosition {
                    transaction_id: transaction_id(row.try_get(0)?)?,
                    global_position: row.try_get(1)?,
                },
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
                row.try_get(6)?,
                row.try_get(7)?,
            )
        })
        .collect()
}

/// A `transaction_id::text` column as a number.
pub(crate) fn transaction_id(txid: &str) -> Result<u64, ProjectionError> {
    txid.parse()
        .map_err(|_| ProjectionError::Handler(format!("transaction id '{txid}' is not a number")))
}

/// The database's next transaction id, the largest stored in `events`, and the largest
/// checkpoint with its reader (see [`check_transaction_ids_ahead`]).
const TRANSACTION_IDS_SQL: &str = "
SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS next,
       (SELECT max(transaction_id) FROM events)::text AS events,
       c.consumer, c.transaction_id::text AS checkpoint
  FROM (SELECT 1) one
  LEFT JOIN (SELECT consumer, transaction_id FROM feed_checkpoints
              ORDER BY transaction_id DESC LIMIT 1) c ON true";

/// Checks that every transaction from now on gets a larger id than any the feed has stored:
/// the largest `events.transaction_id` and the largest checkpoint must be below the next id
/// Postgres hands out. The fence and the feed order rely on that.
///
/// A logical copy of the database into another cluster (`pg_dump`/`pg_restore`, a logical
/// replication cut-over) breaks it: the rows and checkpoints keep the old cluster's ids, while
/// the new cluster's counter starts lower. New events then sort before the checkpoints, the
/// restored ones stay above the fence, and every reader reads nothing while [`lag`] says 0.
/// Start-up and readiness run this check so that it fails loudly instead.
///
/// The next id is `pg_snapshot_xmax` of the current snapshot, not `pg_current_xact_id()`,
/// which would assign this read-only check an id of its own (spending one per probe and holding
/// the fence back while it runs). One round trip; the events' maximum is read from the end of
/// the feed index, and `feed_checkpoints` has a row per reader.
///
/// # Errors
/// [`ProjectionError::TransactionIdsBehind`] when a stored id is at or above the next one;
/// [`ProjectionError::Database`] when the query fails.
pub async fn check_transaction_ids_ahead<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<(), ProjectionError> {
    let row = sqlx::query(TRANSACTION_IDS_SQL).fetch_one(executor).await?;
    let next = transaction_id(row.try_get("next")?)?;
    let id = |column: &str| -> Result<Option<u64>, ProjectionError> {
        row.try_get::<Option<&str>, _>(column)?
            .map(transaction_id)
            .transpose()
    };
    let events = id("events")?.map(|stored| (stored, "the events table".to_owned()));
    let checkpoint = match id("checkpoint")? {
        Some(stored) => {
            let consumer: String = row.try_get("consumer")?;
            Some((stored, format!("the checkpoint of '{consumer}'")))
        }
        None => None,
    };
    // On a tie the events table is named: a checkpoint only repeats an event's id.
    let largest = match (events, checkpoint) {
        (Some(events), Some(checkpoint)) if checkpoint.0 > events.0 => Some(checkpoint),
        (Some(events), _) => Some(events),
        (None, checkpoint) => checkpoint,
    };
    match largest {
        Some((stored, place)) if stored >= next => Err(ProjectionError::TransactionIdsBehind {
            stored,
            place,
            next,
        }),
        _ => Ok(()),
    }
}

/// The oldest transaction that holds the feed's fence back.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenTransaction {
    pub pid: i32,
    pub application_name: String,
    pub state: String,
    pub age_seconds: f64,
}

/// How far a reader is behind the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    /// Visible events after the reader's checkpoint.
    pub events_behind: i64,
    /// Age of the oldest event the reader has not read yet (0 when caught up).
    pub seconds_behind: f64,
    /// Events that exist but are not yet behind the fence (their transactions, or older ones,
    /// are still open).
    pub events_fenced: i64,
    /// The oldest open transaction with a transaction id, if one holds the fence back.
    pub oldest_open_transaction: Option<OpenTransaction>,
}

/// Measures a reader's lag from its checkpoint.
///
/// # Errors
/// [`ProjectionError::Database`] when a query fails.
pub async fn lag(pool: &sqlx::PgPool, consumer: &str) -> Result<Lag, ProjectionError> {
    let after = crate::checkpoint::load(pool, consumer).await?;
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())) AS visible,
                count(*) FILTER (WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) AS fenced,
                COALESCE(EXTRACT(EPOCH FROM now() - min(recorded_at)
                    FILTER (WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()))), 0)::float8 AS age
           FROM events
          WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.global_position)
    .fetch_one(pool)
    .await?;
    let events_fenced: i64 = row.try_get("fenced")?;
    let oldest_open_transaction = if events_fenced > 0 {
        sqlx::query(
            "SELECT pid, COALESCE(application_name, '') AS app, COALESCE(state, '') AS state,
                    EXTRACT(EPOCH FROM now() - xact_start)::float8 AS age
               FROM pg_stat_activity
              WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
              ORDER BY xact_start LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|r| -> Result<_, sqlx::Error> {
            Ok(OpenTransaction {
                pid: r.try_get("pid")?,
                application_name: r.try_get("app")?,
                state: r.try_get("state")?,
                age_seconds: r.try_get("age")?,
            })
        })
        .transpose()?
    } else {
        None
    };
    Ok(Lag {
        events_behind: row.try_get("visible")?,
        seconds_behind: row.try_get("age")?,
        events_fenced,
        oldest_open_transaction,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Stores `n` creations of new orders (placeholder payloads), one transaction for all.
    pub(crate) async fn store_creations(pool: &sqlx::PgPool, n: i32) {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Order', gen_random_uuid()::text, 1, 'OrderCreated', '2.0', '{}', '{}'
               FROM generate_series(1, $1)",
        )
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
    }

    /// The check runs on every readiness probe: without statistics (no ANALYZE, autovacuum
    /// off), it reads the largest id from the end of the feed index, not the whole table.
    #[sqlx::test(migrations = "../migrations")]
    async fn the_transaction_id_check_reads_one_entry_of_the_feed_index(pool: sqlx::PgPool) {
        store_creations(&pool, 20000).await;
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {TRANSACTION_IDS_SQL}"))
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Only Scan Backward using events_feed_idx on events"),
            "{plan}"
        );
        assert!(!plan.contains("Seq Scan on events"), "{plan}");
        check_transaction_ids_ahead(&pool).await.unwrap();
    }

    /// A read from a checkpoint finds it by an init plan, whose value the planner does not
    /// know: the generic plan it keeps must still walk the feed index in order and stop at the
    /// limit, not gather everything after an unknown start and sort it.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_read_from_a_checkpoint_walks_the_feed_index_under_a_generic_plan(
        pool: sqlx::PgPool,
    ) {
        store_creations(&pool, 20000).await;
        sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        for select in [SELECT_RAW.checkpoint, SELECT_TEXT.checkpoint] {
            sqlx::query("SET plan_cache_mode = force_generic_plan")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query(&format!(
                "PREPARE read_from_checkpoint(text, int8) AS {select}"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
            let plan: Vec<String> =
                sqlx::query_scalar("EXPLAIN EXECUTE read_from_checkpoint('orders', 500)")
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan using events_feed_idx on events"),
                "{plan}"
            );
            // The start bounds the scan (an index condition), rather than filtering every row
            // from the beginning of the feed.
            assert!(
                plan.contains("Index Cond: ((ROW(transaction_id, global_position) > ROW($0, $1))"),
                "{plan}"
            );
            assert!(!plan.contains("Sort"), "{plan}");
            sqlx::query("DEALLOCATE read_from_checkpoint")
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_read_from_a_checkpoint_starts_after_it_or_at_the_start_without_one(
        pool: sqlx::PgPool,
    ) {
        store_creations(&pool, 5).await;
        let mut conn = pool.acquire().await.unwrap();
        // The fence is cluster-wide: a test running beside this one can hold the events back.
        let mut all = Vec::new();
        for _ in 0..1000 {
            all = read_after(&mut *conn, FeedPosition::default(), 10)
                .await
                .unwrap();
            if all.len() == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(all.len(), 5);
        let none_saved = FeedEvent::read(&mut conn, ReadFrom::Checkpoint("reader"), 10)
            .await
            .unwrap();
        assert_eq!(none_saved, all, "no checkpoint: from the start");
        crate::checkpoint::save(
            &mut *conn,
            "reader",
            all[1].position,
            2,
            crate::checkpoint::Durability::Flushed,
        )
        .await
        .unwrap();
        let after_saved = FeedEvent::read(&mut conn, ReadFrom::Checkpoint("reader"), 2)
            .await
            .unwrap();
        assert_eq!(
            after_saved,
            all[2..4],
            "after the checkpoint, at most the limit"
        );
        let other = FeedEvent::read(&mut conn, ReadFrom::Checkpoint("another"), 10)
            .await
            .unwrap();
        assert_eq!(other, all, "another reader's checkpoint is its own");
    }
}
