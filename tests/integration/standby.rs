//! Reads from a Postgres hot standby (`READ_DATABASE_URL`, `api/src/read_side.rs`), against a
//! real one: a private primary on a free port and a standby made from it with
//! `pg_basebackup -R`, both stopped when the test ends. The standby's health is driven with
//! `probe_once` rather than waiting for the worker's probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_tests::soak::procs::PrivatePostgres;
use order_tests::TestApp;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The database both servers hold.
const DB: &str = "standby_reads";

/// A private primary (WAL writer at 10 ms, as docs/operations.md advises with a standby), a
/// migrated database on it, and a hot standby of it.
struct Pair {
    primary: PrivatePostgres,
    standby: PrivatePostgres,
    pool: PgPool,
}

impl Pair {
    async fn start() -> Self {
        let primary =
            PrivatePostgres::start_with(&["wal_writer_delay=10ms"]).expect("a private primary");
        let admin = order_api::db::pool(&primary.url("postgres"), 1).expect("admin pool");
        sqlx::query(&format!("CREATE DATABASE {DB}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let pool = order_api::db::pool(&primary.url(DB), 8).expect("pool");
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .expect("migrations");
        let standby = primary.start_standby().expect("a hot standby");
        Self {
            primary,
            standby,
            pool,
        }
    }

    /// A pool on the standby's copy of the database, for the test's own look.
    fn standby_pool(&self) -> PgPool {
        order_api::db::pool(&self.standby.url(DB), 1).expect("standby pool")
    }

    /// The app over the primary, reading from `read_url`.
    async fn app(
        &self,
        read_url: String,
        adjust: impl FnOnce(&mut order_api::config::Settings),
    ) -> TestApp {
        order_tests::spawn_app_with(self.pool.clone(), |s| {
            s.database.read_url = Some(SecretString::from(read_url));
            adjust(s);
        })
        .await
    }
}

/// The value of an unlabelled series on a `/metrics` page.
async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let page = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The four `/internal` reads of `id` at `version` or later, each expected to answer 200.
async fn read_all_four(app: &TestApp, id: &str, version: u64) {
    for path in [
        format!("/internal/orders/{id}?minVersion={version}"),
        format!("/internal/orders/{id}/items?minVersion={version}"),
        format!("/internal/orders/{id}/for-payment?minVersion={version}"),
        "/internal/orders/without-tickets?minutesOld=0".to_owned(),
    ] {
        let caller = if path.contains("/items") {
            "ticket-service"
        } else {
            "payment-service"
        };
        let resp = app.get_as(caller, &path).await;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{path}: {body}");
    }
}

fn id_and_version(order: &serde_json::Value) -> (String, u64) {
    (
        order["id"].as_str().expect("id").to_owned(),
        order["version"].as_u64().expect("version"),
    )
}

async fn read_sessions(standby: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'order-service-reads'",
    )
    .fetch_one(standby)
    .await
    .expect("pg_stat_activity")
}

/// With a sound standby the four `/internal` queries read there: its sessions show up on the
/// standby, nothing falls back, and an idle primary does not make the standby look late.
/// On shutdown the service closes its standby sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_reads_use_a_sound_standby_and_close_it_on_shutdown() {
    let pair = Pair::start().await;
    let mut app = pair.app(pair.standby.url(DB), |_| {}).await;
    assert!(
        app.state.queries.reads().standby_in_use(),
        "the start-up probe found it sound"
    );
    let (id, version) = id_and_version(&app.create_order().await);
    read_all_four(&app, &id, version).await;
    let standby = pair.standby_pool();
    assert!(
        read_sessions(&standby).await >= 1,
        "no session of the read pool"
    );
    assert_eq!(metric(&app, "read_standby_available").await, Some(1.0));
    assert_eq!(
        metric(&app, "read_standby_fallbacks_total").await,
        Some(0.0)
    );
    // Nothing is written for a while: the lag stays near zero, probe after probe.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(app.state.queries.reads().probe_once().await);
    }
    let lag = metric(&app, "read_standby_lag_seconds")
        .await
        .expect("lag gauge");
    assert!(
        lag < 0.5,
        "an idle primary made the standby look {lag} s late"
    );

    // Dropping the client closes its idle keep-alive connections, which the HTTP drain
    // would otherwise wait for.
    app.client = reqwest::Client::new();
    drop(app.stop_on_drop.take());
    order_tests::soak::poll_until(Duration::from_secs(30), || async {
        (read_sessions(&standby).await == 0).then_some(())
    })
    .await
    .expect("the read pool's sessions closed on shutdown");
    standby.close().await;
}

/// A database that is not in recovery (here the primary itself) is never read as the
/// standby: the primary answers every read, and the gauge says the standby is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_not_a_standby_is_never_read_as_one() {
    let pair = Pair::start().await;
    let app = pair.app(pair.primary.url(DB), |_| {}).await;
    assert!(!app.state.queries.reads().probe_once().await);
    let (id, version) = id_and_version(&app.create_order().await);
    read_all_four(&app, &id, version).await;
    assert_eq!(metric(&app, "read_standby_available").await, Some(0.0));
    let fallbacks = metric(&app, "read_standby_fallbacks_total")
        .await
        .unwrap_or_default();
    assert!(fallbacks >= 4.0, "{fallbacks} fallbacks counted");
}

/// A standby that stops replaying answers every query, with old data. Once its lag passes
/// `READ_MAX_LAG_MS` it is taken out of use (reads see the primary's newest orders), and it is
/// back in use once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_stops_replaying_is_taken_out_of_use_until_it_catches_up() {
    let pair = Pair::start().await;
    let app = pair
        .app(pair.standby.url(DB), |s| s.read_model.max_lag_ms = 1_000)
        .await;
    let reads = app.state.queries.reads().clone();
    assert!(reads.probe_once().await);
    let standby = pair.standby_pool();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .expect("pause replay");
    let (id, _) = id_and_version(&app.create_order().await);
    // The last position the standby replayed was noted by the probe above; once it is older
    // than the limit, so is the standby.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(!reads.probe_once().await, "a paused standby stayed in use");
    let lag = metric(&app, "read_standby_lag_seconds")
        .await
        .expect("lag gauge");
    assert!(lag >= 1.0, "lag measured {lag} s");
    assert_eq!(metric(&app, "read_standby_available").await, Some(0.0));
    // Without minVersion the order is found: the primary answered, not the paused standby.
    let resp = app
        .get_as("payment-service", &format!("/internal/orders/{id}"))
        .await;
    assert_eq!(resp.status(), 200);

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .expect("resume replay");
    order_tests::soak::poll_until(Duration::from_secs(10), || async {
        reads.probe_once().await.then_some(())
    })
    .await
    .expect("the standby back in use once it caught up");
    assert_eq!(metric(&app, "read_standby_available").await, Some(1.0));
    standby.close().await;
}

/// A standby that is behind when the service starts is not used until its lag is known: the
/// start-up probe finds it has not replayed the primary's position, and so does every probe
/// until replay resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_at_start_up_is_not_used_until_it_has_caught_up() {
    let pair = Pair::start().await;
    let standby = pair.standby_pool();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .expect("pause replay");
    sqlx::query("CREATE TABLE written_after_the_pause (n int)")
        .execute(&pair.pool)
        .await
        .expect("a write on the primary");
    let app = pair.app(pair.standby.url(DB), |_| {}).await;
    let reads = app.state.queries.reads().clone();
    assert!(
        !reads.standby_in_use(),
        "a standby behind was used from the start"
    );
    assert!(!reads.probe_once().await);
    assert_eq!(metric(&app, "read_standby_available").await, Some(0.0));
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .expect("resume replay");
    order_tests::soak::poll_until(Duration::from_secs(10), || async {
        reads.probe_once().await.then_some(())
    })
    .await
    .expect("the standby in use once it caught up");
    standby.close().await;
}

/// A `minVersion` read the standby cannot answer in the first half of `READ_WAIT_MS` (it
/// lags, within `READ_MAX_LAG_MS`) is answered by the primary, not with a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_version_read_the_standby_cannot_answer_is_answered_by_the_primary() {
    let pair = Pair::start().await;
    let app = pair
        .app(pair.standby.url(DB), |s| {
            s.read_model.wait_ms = 1_000;
            s.read_model.max_lag_ms = 60_000;
        })
        .await;
    let standby = pair.standby_pool();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .expect("pause replay");
    let (id, version) = id_and_version(&app.create_order().await);
    assert!(app.state.queries.reads().standby_in_use());
    let started = Instant::now();
    let resp = app
        .get_as(
            "payment-service",
            &format!("/internal/orders/{id}/for-payment?minVersion={version}"),
        )
        .await;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered in {:?}: the paused standby cannot have had the order",
        started.elapsed()
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .expect("resume replay");
    standby.close().await;
}

/// A loopback TCP proxy that can stop forwarding without closing anything, as a blackholed
/// network does.
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let gate = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, gate.clone()));
                tokio::spawn(pump(sr, cw, gate.clone()));
            }
        });
        Self { port, frozen }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A standby whose connections stop answering (nothing refused, nothing closed) costs one
/// read about `STANDBY_QUERY_TIMEOUT` and takes it out of use; the reads after it go straight
/// to the primary, and a probe puts it back once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_hangs_costs_one_timeout_and_is_taken_out_of_use() {
    let pair = Pair::start().await;
    let proxy = Proxy::start(pair.standby.port).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{DB}", proxy.port);
    let app = pair.app(url, |_| {}).await;
    let reads = app.state.queries.reads().clone();
    let (id, version) = id_and_version(&app.create_order().await);
    read_all_four(&app, &id, version).await;
    assert!(reads.standby_in_use());

    proxy.frozen.store(true, Ordering::SeqCst);
    let path = format!("/internal/orders/{id}/for-payment");
    let started = Instant::now();
    let resp = app.get_as("payment-service", &path).await;
    let first = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        first < Duration::from_secs(3),
        "the first read took {first:?}"
    );
    assert!(!reads.standby_in_use(), "a hung standby stayed in use");
    assert_eq!(metric(&app, "read_standby_available").await, Some(0.0));
    let started = Instant::now();
    let resp = app.get_as("payment-service", &path).await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a read after the standby went out of use took {:?}",
        started.elapsed()
    );
    assert!(
        !reads.probe_once().await,
        "a probe found the hung standby sound"
    );

    proxy.frozen.store(false, Ordering::SeqCst);
    order_tests::soak::poll_until(Duration::from_secs(10), || async {
        reads.probe_once().await.then_some(())
    })
    .await
    .expect("the standby back in use once it answers");
    read_all_four(&app, &id, version).await;
}

/// A standby that does not answer (nothing listens on its port) costs no read: the primary
/// answers all four, the fallbacks are counted, and the standby is marked unavailable.
#[sqlx::test(migrations = "../migrations")]
async fn internal_reads_fall_back_to_the_primary_when_the_standby_is_unreachable(pool: PgPool) {
    let app = order_tests::spawn_app_with(pool, |s| {
        s.database.read_url = Some(SecretString::from(
            "postgres://postgres@127.0.0.1:1/standby",
        ));
    })
    .await;
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("id").to_owned();
    let version = order["version"].as_u64().expect("version");
    let started = Instant::now();
    read_all_four(&app, &id, version).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the fallback took {:?}",
        started.elapsed()
    );
    let fallbacks = metric(&app, "read_standby_fallbacks_total")
        .await
        .unwrap_or_default();
    assert!(fallbacks >= 4.0, "{fallbacks} fallbacks counted");
    assert_eq!(metric(&app, "read_standby_available").await, Some(0.0));
}
