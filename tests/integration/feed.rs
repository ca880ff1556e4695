//! The commit-safe feed under concurrency (docs/contract.md §7, invariant 2): many writers commit
//! out of position order while readers run alongside. The fenced feed reads every event exactly
//! once and each order's events in sequence order; a naive `global_position > last` reader
//! provably skips an event whose transaction commits late.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use order_api::config::Settings;
use order_api::startup::Application;
use order_projections::checkpoint::Durability;
use order_projections::feed::{self, read_after};
use order_projections::{checkpoint, FeedPosition, ProjectionError};
use order_tests::{json_of, spawn_app, Auth};
use reqwest::Method;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

const WRITERS: usize = 16;
const ORDERS_PER_WRITER: usize = 8;
/// Per order: sequences 1 and 2 in one transaction, then 3, then 4, each in its own.
const EVENTS_PER_ORDER: usize = 4;
/// Upper bound on any wait in this test; it normally finishes in a few seconds.
const BOUND: Duration = Duration::from_secs(30);

async fn insert(conn: &mut sqlx::PgConnection, order: Uuid, sequence: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, $2, 'ReminderSent', '1.0', $3, '{}')
         RETURNING global_position",
    )
    .bind(order.to_string())
    .bind(sequence)
    .bind(json!({"ReminderSent": {"n": sequence}}))
    .fetch_one(conn)
    .await
}

/// One writer: for each of its orders, three transactions that each sleep a random while
/// before COMMIT, so commits land out of position order across writers.
async fn writer(pool: PgPool) -> Vec<(String, i64)> {
    let mut written = Vec::new();
    for _ in 0..ORDERS_PER_WRITER {
        let order = Uuid::new_v4();
        for sequences in [&[1_i64, 2][..], &[3], &[4]] {
            let mut tx = pool.begin().await.expect("begin");
            for &s in sequences {
                insert(&mut tx, order, s).await.expect("insert");
            }
            let pause = rand::random::<u64>() % 15;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            tx.commit().await.expect("commit");
            written.extend(sequences.iter().map(|&s| (order.to_string(), s)));
        }
    }
    written
}

/// Reads `global_position > last` with no fence, the way the feed must not work.
async fn naive_reader(
    pool: PgPool,
    last_seen: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) -> HashSet<(String, i64)> {
    let mut seen = HashSet::new();
    loop {
        let finished = stop.load(Ordering::SeqCst);
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT aggregate_id, sequence, global_position FROM events
              WHERE global_position > $1 ORDER BY global_position LIMIT 200",
        )
        .bind(last_seen.load(Ordering::SeqCst))
        .fetch_all(&pool)
        .await
        .expect("naive read");
        if rows.is_empty() && finished {
            return seen;
        }
        for (id, seq, pos) in rows {
            seen.insert((id, seq));
            last_seen.store(pos, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads through the fenced feed until it has `expected` events (or the bound passes).
async fn fenced_reader(pool: PgPool, expected: Arc<AtomicI64>) -> Vec<(String, i64)> {
    let mut read = Vec::new();
    let mut after = FeedPosition::default();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let target = expected.load(Ordering::SeqCst);
        if target >= 0 && read.len() as i64 >= target {
            // One more read to catch anything beyond the target (there must be none).
            let extra = read_after(&pool, after, 200).await.expect("feed read");
            read.extend(extra.into_iter().map(|e| (e.aggregate_id, e.sequence)));
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fenced reader timed out with {} events",
            read.len()
        );
        let batch = read_after(&pool, after, 200).await.expect("feed read");
        if let Some(last) = batch.last() {
            assert!(last.position > after, "the feed moved backwards");
            after = last.position;
        }
        read.extend(batch.into_iter().map(|e| (e.aggregate_id, e.sequence)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_fenced_feed_reads_every_event_once_in_order_and_a_naive_reader_misses_some(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Its own pool: the writers need more connections than a test pool allows.
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 4)
        .connect_with(connect)
        .await
        .expect("pool");

    // A transaction that takes the lowest position and then stays open while later ones
    // commit: the case a naive reader gets wrong.
    let late = Uuid::new_v4();
    let mut holder = pool.begin().await.expect("begin");
    let late_position = insert(&mut holder, late, 1).await.expect("insert");

    let naive_last = Arc::new(AtomicI64::new(0));
    let stop_naive = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(AtomicI64::new(-1));
    let naive = tokio::spawn(naive_reader(
        pool.clone(),
        naive_last.clone(),
        stop_naive.clone(),
    ));
    let fenced = tokio::spawn(fenced_reader(pool.clone(), expected.clone()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| tokio::spawn(writer(pool.clone())))
        .collect();

    // Commit the late transaction only once the naive reader has moved past its position.
    let deadline = tokio::time::Instant::now() + BOUND;
    while naive_last.load(Ordering::SeqCst) <= late_position {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no writer committed in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.commit().await.expect("commit the late transaction");

    let mut written = vec![(late.to_string(), 1_i64)];
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    assert_eq!(
        written.len(),
        1 + WRITERS * ORDERS_PER_WRITER * EVENTS_PER_ORDER
    );
    expected.store(written.len() as i64, Ordering::SeqCst);
    stop_naive.store(true, Ordering::SeqCst);
    let read = fenced.await.expect("fenced reader");
    let naive_seen = naive.await.expect("naive reader");

    // Exactly once.
    let unique: HashSet<_> = read.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        read.len(),
        "the fenced feed delivered an event twice"
    );
    let written_set: HashSet<_> = written.iter().cloned().collect();
    assert_eq!(
        unique, written_set,
        "the fenced feed missed or invented events"
    );

    // Per order, in sequence order.
    let mut per_order: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (id, seq) in &read {
        per_order.entry(id.as_str()).or_default().push(*seq);
    }
    for (id, seqs) in per_order {
        let expected_seqs: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected_seqs, "order {id} read out of sequence order");
    }

    // The naive reader skipped at least the late commit.
    let missed = written_set.difference(&naive_seen).count();
    assert!(
        !naive_seen.contains(&(late.to_string(), 1)),
        "the naive reader should have skipped the late commit"
    );
    assert!(
        missed >= 1,
        "the naive reader missed {missed} of {}",
        written.len()
    );
}

/// The feed query has no aggregate-type filter because the table cannot hold another type; and
/// without statistics (no ANALYZE, autovacuum off), it reads only the rows after the checkpoint
/// through the feed index, instead of ANDing in the primary key's bitmap of the whole table.
#[sqlx::test(migrations = "../migrations")]
async fn the_feed_plans_an_index_walk_without_statistics_and_the_table_holds_only_orders(
    pool: PgPool,
) {
    let refused = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Account', 'a-1', 1, 'AccountOpened', '1.0', '{}', '{}')",
    )
    .execute(&pool)
    .await
    .expect_err("a second aggregate type is refused");
    assert!(
        refused.to_string().contains("events_order_aggregate_only"),
        "{refused}"
    );

    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT 'Order', gen_random_uuid()::text, 1, 'OrderCreated', '2.0', '{}', '{}'
           FROM generate_series(1, 20000)",
    )
    .execute(&pool)
    .await
    .expect("backlog");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT transaction_id::text AS txid, global_position, aggregate_type,
                aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
           FROM events
          WHERE (transaction_id, global_position) > ('0'::xid8, 0)
            AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY transaction_id, global_position LIMIT 500",
    )
    .fetch_all(&pool)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(plan.contains("events_feed_idx"), "{plan}");
    assert!(!plan.contains("events_pkey"), "{plan}");
    // Another test's open transaction can hold the cluster-wide fence back for a moment.
    settle(&pool).await;
    let batch = read_after(&pool, FeedPosition::default(), 500)
        .await
        .expect("feed read");
    assert_eq!(batch.len(), 500);
}

/// A projector's checkpoint commits with its batch: nobody else sees either before the
/// transaction's commit, and the transaction holds the fence (a transaction id) until then. A
/// failing checkpoint statement commits nothing.
#[sqlx::test(migrations = "../migrations")]
async fn the_checkpoint_commits_with_its_batch(pool: PgPool) {
    let order = Uuid::now_v7();
    let position = FeedPosition {
        transaction_id: 42,
        global_position: 7,
    };
    let mut tx = pool.begin().await.unwrap();
    insert(&mut tx, order, 1).await.unwrap();
    checkpoint::save(&mut *tx, "projector_a", position, 3, Durability::Relaxed)
        .await
        .unwrap();
    // Before `tx.commit()`: neither is visible elsewhere, and our transaction holds an id.
    assert_eq!(
        checkpoint::load(&pool, "projector_a").await.unwrap(),
        FeedPosition::default()
    );
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(order.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xid IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        open, 1,
        "the batch's transaction holds the fence until it commits"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        checkpoint::load(&pool, "projector_a").await.unwrap(),
        position
    );
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(order.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    let total: i64 =
        sqlx::query_scalar("SELECT events_total FROM feed_checkpoints WHERE consumer = $1")
            .bind("projector_a")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(total, 3);

    // Any name goes, as a bound parameter.
    let odd = "it's odd";
    let mut tx = pool.begin().await.unwrap();
    checkpoint::save(&mut *tx, odd, position, 1, Durability::Relaxed)
        .await
        .unwrap();
    assert_eq!(
        checkpoint::load(&pool, odd).await.unwrap(),
        FeedPosition::default(),
        "not committed before tx is"
    );
    tx.commit().await.unwrap();
    assert_eq!(checkpoint::load(&pool, odd).await.unwrap(), position);

    // A checkpoint that cannot be written (its running total would overflow `bigint`) commits
    // neither itself nor the batch.
    checkpoint::save(
        &pool,
        "projector_b",
        position,
        i64::MAX as u64,
        Durability::Flushed,
    )
    .await
    .unwrap();
    let other = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    insert(&mut tx, other, 1).await.unwrap();
    let refused = checkpoint::save(&mut *tx, "projector_b", position, 1, Durability::Relaxed).await;
    assert!(refused.is_err(), "the overflow is reported");
    drop(tx);
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(other.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, 0, "the batch rolled back with its checkpoint");
}

/// Appends one event in a transaction of its own.
async fn append(pool: &PgPool, order: Uuid, sequence: i64) {
    let mut conn = pool.acquire().await.expect("connection");
    insert(&mut conn, order, sequence).await.expect("append");
}

/// What a logical restore into a younger cluster leaves: the events and checkpoints keep the ids
/// the old cluster gave them, far above the ids this one hands out. The ids move up by five
/// epochs (5 * 2^32) and keep their order, as if the old cluster were that much older.
async fn simulate_logical_restore(pool: &PgPool) {
    for table in ["events", "feed_checkpoints"] {
        sqlx::query(&format!(
            "UPDATE {table}
                SET transaction_id = (transaction_id::text::numeric + 5 * 4294967296)::text::xid8
              WHERE transaction_id <> '0'"
        ))
        .execute(pool)
        .await
        .expect("restamp to old-cluster ids");
    }
}

/// Waits until every event this cluster wrote is behind the feed's fence. The fence is
/// cluster-wide, so other tests' open transactions can hold it back for a moment. Events with
/// ids from "another cluster" (above the next id) never get behind it, which is the point.
async fn settle(pool: &PgPool) {
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events
                             WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())
                               AND transaction_id < pg_snapshot_xmax(pg_current_snapshot()))",
        )
        .fetch_one(pool)
        .await
        .expect("fence");
        if !waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fence never passed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads everything after `consumer`'s checkpoint, as its reader would, once the events this
/// cluster wrote are behind the fence.
async fn unread(pool: &PgPool, consumer: &str) -> Vec<(String, i64)> {
    settle(pool).await;
    let after = checkpoint::load(pool, consumer).await.expect("checkpoint");
    read_after(pool, after, 1000)
        .await
        .expect("feed read")
        .into_iter()
        .map(|e| (e.aggregate_id, e.sequence))
        .collect()
}

/// Reads the whole feed and saves `consumer`'s checkpoint at its last event.
async fn catch_up(pool: &PgPool, consumer: &str) {
    settle(pool).await;
    let events = read_after(pool, FeedPosition::default(), 1000)
        .await
        .expect("feed read");
    let last = events.last().expect("events to read").position;
    checkpoint::save(
        pool,
        consumer,
        last,
        events.len() as u64,
        Durability::Flushed,
    )
    .await
    .expect("checkpoint");
}

/// The silent stall a logical restore causes, and the check that makes it loud: after the
/// restore a reader's new events never arrive and its lag reads 0; the check refuses with the
/// fix, names where the offending id is stored, and passes on a healthy database.
#[sqlx::test(migrations = "../migrations")]
async fn the_feed_check_catches_a_logical_restore_and_passes_on_a_healthy_database(pool: PgPool) {
    // Healthy: empty, then with events and a checkpoint.
    feed::check_transaction_ids_ahead(&pool)
        .await
        .expect("an empty store passes");
    let order = Uuid::now_v7();
    for sequence in 1..=3 {
        append(&pool, order, sequence).await;
    }
    catch_up(&pool, "projector_a").await;
    feed::check_transaction_ids_ahead(&pool)
        .await
        .expect("a healthy store passes");

    simulate_logical_restore(&pool).await;
    let fresh = Uuid::now_v7();
    append(&pool, fresh, 1).await;

    // What every reader sees without the check: the new event is committed and behind the
    // fence, yet there is nothing to read, and no lag.
    assert_eq!(unread(&pool, "projector_a").await, vec![]);
    let lag = feed::lag(&pool, "projector_a").await.unwrap();
    assert_eq!(lag.events_behind, 0, "{lag:?}");

    let refused = feed::check_transaction_ids_ahead(&pool)
        .await
        .expect_err("the store is ahead of the database");
    let ProjectionError::TransactionIdsBehind {
        stored,
        ref place,
        next,
    } = refused
    else {
        panic!("unexpected error: {refused}");
    };
    assert!(stored >= 5 << 32 && next < stored, "{refused}");
    assert_eq!(place, "the events table");
    let message = refused.to_string();
    for part in [
        "transaction ids are behind the stored events",
        &format!("largest stored {stored}"),
        &format!("next {next}"),
        "logical restore",
        "scripts/restamp-after-restore.sql",
        "pg_resetwal -e 6",
        "docs/operations.md: 'After a logical restore'",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert!(!refused.is_transient());
}

/// A checkpoint alone ahead of the database is caught too, and named.
#[sqlx::test(migrations = "../migrations")]
async fn the_feed_check_names_a_checkpoint_ahead_of_the_database(pool: PgPool) {
    append(&pool, Uuid::now_v7(), 1).await;
    let ahead = FeedPosition {
        transaction_id: 5 << 32,
        global_position: 1,
    };
    checkpoint::save(&pool, "stale_reader", ahead, 1, Durability::Flushed)
        .await
        .unwrap();
    let refused = feed::check_transaction_ids_ahead(&pool)
        .await
        .expect_err("a checkpoint ahead of the database");
    assert!(
        refused
            .to_string()
            .contains("in the checkpoint of 'stale_reader'"),
        "{refused}"
    );
    checkpoint::reset(&pool, "stale_reader").await.unwrap();
    feed::check_transaction_ids_ahead(&pool)
        .await
        .expect("passes without it");
}

/// The runbook's re-stamp (scripts/restamp-after-restore.sql) after a restore: the check passes,
/// a reader that had read everything gets exactly the new events, a reader that was behind
/// skips nothing, every order still reads in sequence order, and a second run refuses.
#[sqlx::test(migrations = "../migrations")]
async fn the_feed_restamp_script_lets_every_reader_continue_after_a_restore(pool: PgPool) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // a#1 and a#2 in one transaction; then b#1, a#3, b#2 in one each.
    let mut tx = pool.begin().await.unwrap();
    insert(&mut tx, a, 1).await.unwrap();
    insert(&mut tx, a, 2).await.unwrap();
    tx.commit().await.unwrap();
    append(&pool, b, 1).await;
    // The reader that is behind has read a#1 and a#2.
    settle(&pool).await;
    let first = read_after(&pool, FeedPosition::default(), 2).await.unwrap();
    checkpoint::save(&pool, "behind", first[1].position, 2, Durability::Flushed)
        .await
        .unwrap();
    append(&pool, a, 3).await;
    append(&pool, b, 2).await;
    catch_up(&pool, "done").await;
    let behind_before = unread(&pool, "behind").await;
    assert_eq!(behind_before.len(), 3);

    simulate_logical_restore(&pool).await;
    feed::check_transaction_ids_ahead(&pool)
        .await
        .expect_err("restored ids ahead of the database");

    sqlx::raw_sql(include_str!("../../scripts/restamp-after-restore.sql"))
        .execute(&pool)
        .await
        .expect("the re-stamp runs");
    feed::check_transaction_ids_ahead(&pool)
        .await
        .expect("the check passes after the re-stamp");

    assert_eq!(unread(&pool, "done").await, vec![]);
    let behind_after = unread(&pool, "behind").await;
    for event in &behind_before {
        assert!(behind_after.contains(event), "{event:?} skipped");
    }

    let c = Uuid::now_v7();
    append(&pool, c, 1).await;
    append(&pool, a, 4).await;
    assert_eq!(
        unread(&pool, "done").await,
        vec![(c.to_string(), 1), (a.to_string(), 4)]
    );
    let everything = unread(&pool, "a_new_reader").await;
    assert_eq!(everything.len(), 7);
    for order in [a, b, c] {
        let sequences: Vec<i64> = everything
            .iter()
            .filter(|(id, _)| *id == order.to_string())
            .map(|(_, s)| *s)
            .collect();
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, expected, "order {order}");
    }

    let again = sqlx::raw_sql(include_str!("../../scripts/restamp-after-restore.sql"))
        .execute(&pool)
        .await
        .expect_err("nothing to re-stamp");
    assert!(again.to_string().contains("nothing to re-stamp"), "{again}");
}

/// After a restore the service is not ready, with the check's reason, and refuses to start.
#[sqlx::test(migrations = "../migrations")]
async fn readiness_and_start_up_refuse_a_feed_behind_the_database(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_order().await;
    let ready = || async {
        json_of(
            app.send(Method::GET, "/health/ready", Auth::None, &[], None)
                .await,
        )
        .await
    };
    let (_, body) = ready().await;
    assert_eq!(body["checks"]["feed"], json!({ "status": "ok" }), "{body}");

    simulate_logical_restore(&pool).await;
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(body["checks"]["feed"]["status"], "failing", "{body}");
    let reason = body["checks"]["feed"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("transaction ids are behind the stored events")
            && reason.contains("After a logical restore"),
        "{body}"
    );

    let refused = Application::build_with_pool(Settings::for_tests("postgres://unused"), pool)
        .await
        .expect_err("start-up refuses");
    let refused = format!("{refused:#}");
    assert!(
        refused.starts_with("refusing to start")
            && refused.contains("scripts/restamp-after-restore.sql"),
        "{refused}"
    );
}
