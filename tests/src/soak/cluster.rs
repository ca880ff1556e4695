//! One scenario's world: its own database (on the shared Postgres or a private one), its own
//! events stream, subject prefix and dead-letter stream (on the shared NATS or a private one),
//! and N replicas of the real binary configured through environment variables. Dropping it kills
//! the replicas, drops the database and deletes the streams.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use sqlx::{Connection, PgConnection, PgPool};

use super::procs::{Replica, ScratchDir};
use super::{poll_until, service_binary, tag};

/// What a scenario wants running.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub replicas: usize,
    /// Run the outbox relay in every replica (one leads).
    pub relay: bool,
    /// Run the inbound consumers in every replica (they share the durable consumers).
    pub inbound: bool,
    /// Run the scheduled jobs in every replica (one leader per job).
    pub jobs: bool,
    /// Extra variables for every replica.
    pub env: Vec<(String, String)>,
    /// Postgres server URL whose `postgres` database can create databases; default: the shared
    /// one from `DATABASE_URL`.
    pub admin_url: Option<String>,
    /// Default: the shared NATS from `NATS_URL`. A comma-separated list for a cluster.
    pub nats_url: Option<String>,
    /// Replicas of the streams and inbound consumers (`NATS_STREAM_REPLICAS`): 3 on a
    /// three-node cluster.
    pub stream_replicas: usize,
    /// Names the database (`soak_<tag>`) and the streams; default: a random one. Lets a test
    /// find what a scenario made.
    pub tag: Option<String>,
}

impl ClusterSpec {
    /// `replicas` replicas with the relay on, inbound and jobs off.
    pub fn new(replicas: usize) -> Self {
        Self {
            replicas,
            relay: true,
            inbound: false,
            jobs: false,
            // JetStream reserves a stream's byte limit from the account's storage when it is
            // created: at the production defaults (10 GiB and 1 GiB) a handful of scenarios
            // running side by side exhaust a test server's disk-sized limit.
            env: vec![
                ("NATS_STREAM_MAX_BYTES".to_owned(), (256 << 20).to_string()),
                ("DLQ_STREAM_MAX_BYTES".to_owned(), (64 << 20).to_string()),
            ],
            admin_url: None,
            nats_url: None,
            stream_replicas: 1,
            tag: None,
        }
    }

    /// Adds one variable for every replica.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

/// A running scenario world.
#[derive(Debug)]
pub struct Cluster {
    pub replicas: Vec<Replica>,
    /// A pool on the scenario's database, for the checks.
    pub pool: PgPool,
    pub db_url: String,
    pub db_name: String,
    pub nats_url: String,
    pub js: jetstream::Context,
    pub stream: String,
    /// The subject prefix, with its trailing dot.
    pub prefix: String,
    pub dlq: String,
    /// The environment every replica got (for CLI calls on the same database and streams).
    pub env: Vec<(String, String)>,
    dir: ScratchDir,
    /// Removed once the cluster is dropped, after its replicas are killed.
    _leftovers: Leftovers,
}

/// The shared Postgres server's `postgres` database (from `DATABASE_URL`).
pub fn shared_admin_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    with_database(&url, "postgres")
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').unwrap_or((base, ""));
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

impl Cluster {
    /// Creates and migrates the database, connects to NATS and starts the replicas (each live).
    ///
    /// # Errors
    /// When a service is unreachable or a replica does not start.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        crate::install_crypto();
        // First: a missing binary panics here, before anything exists that would be left behind.
        let binary = service_binary();
        let t = spec.tag.clone().unwrap_or_else(tag);
        let admin_url = spec.admin_url.clone().unwrap_or_else(shared_admin_url);
        let db_name = format!("soak_{t}");
        let db_url = with_database(&admin_url, &db_name);
        let nats_url = spec
            .nats_url
            .clone()
            .or_else(|| std::env::var("NATS_URL").ok())
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        let stream = format!("SOAK_{}", t.to_uppercase());
        let prefix = format!("s{t}.");
        let dlq = format!("SOAK_DLQ_{}", t.to_uppercase());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("Postgres answers")?;
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        // From here on, a failed start-up removes what it made; then the cluster owns it.
        let mut leftovers = Leftovers {
            admin_url,
            db_name: db_name.clone(),
            nats_url: nats_url.clone(),
            streams: vec![stream.clone(), dlq.clone()],
            pool: None,
        };
        order_api::db::create_and_migrate(&db_url).await?;
        let pool = order_api::db::pool(&db_url, 8)?;

        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(crate::soak::nats_servers(&nats_url))
            .await
            .context("NATS answers")?;
        let js = jetstream::new(client);

        let flag = |b: bool| b.to_string();
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db_url.clone()),
            ("NATS_URL".into(), nats_url.clone()),
            ("NATS_STREAM".into(), stream.clone()),
            ("NATS_SUBJECT_PREFIX".into(), prefix.clone()),
            ("DLQ_STREAM".into(), dlq.clone()),
            ("RELAY_ENABLED".into(), flag(spec.relay)),
            ("INBOUND_ENABLED".into(), flag(spec.inbound)),
            ("JOBS_ENABLED".into(), flag(spec.jobs)),
            (
                "NATS_STREAM_REPLICAS".into(),
                spec.stream_replicas.to_string(),
            ),
            ("DB_MAX_CONNECTIONS".into(), "6".into()),
            // Nothing listens there: a job or saga that calls a peer fails fast, never hangs.
            ("PAYMENT_SERVICE_URL".into(), "http://127.0.0.1:9".into()),
            ("TICKET_SERVICE_URL".into(), "http://127.0.0.1:9".into()),
            ("EVENT_SERVICE_URL".into(), "http://127.0.0.1:9".into()),
        ];
        env.extend(spec.env.iter().cloned());

        // Both streams exist before any replica starts, so consumers, the relay and the checks
        // never race their creation.
        let mut settings = order_api::config::Settings::for_tests(&db_url);
        settings.streams.events.clone_from(&stream);
        settings.streams.subject_prefix.clone_from(&prefix);
        settings.streams.dlq.clone_from(&dlq);
        settings.streams.replicas = spec.stream_replicas.max(1);
        order_bus::ensure_stream(&js, &settings.relay_config().stream).await?;
        let mut dlq_config = settings.streams.dlq_config();
        dlq_config.ensure_stream = true;
        order_bus::dlq::DeadLetters::new(js.clone(), pool.clone(), dlq_config)
            .ensure_stream()
            .await?;

        let dir = ScratchDir::new("soak-logs");
        leftovers.pool = Some(pool.clone());
        let mut cluster = Self {
            replicas: (0..spec.replicas)
                .map(|i| Replica::new(&format!("replica-{i}"), &binary, env.clone(), &dir.path))
                .collect(),
            pool,
            db_url,
            db_name,
            nats_url,
            js,
            stream,
            prefix,
            dlq,
            env,
            dir,
            _leftovers: leftovers,
        };
        for r in &mut cluster.replicas {
            r.start().await?;
        }
        Ok(cluster)
    }

    /// Every replica's base URL.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::url).collect()
    }

    /// Waits until every replica answers `/health/ready` with 200 (Postgres, NATS and relay
    /// fine).
    ///
    /// # Errors
    /// When one is not ready within `within`.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        for url in self.urls() {
            let ready = poll_until(within, || {
                let req = client.get(format!("{url}/health/ready"));
                async move {
                    match req.send().await {
                        Ok(r) if r.status().is_success() => Some(()),
                        _ => None,
                    }
                }
            })
            .await;
            anyhow::ensure!(ready.is_some(), "{url} was not ready within {within:?}");
        }
        Ok(())
    }

    /// Runs the binary once with the replicas' environment (`dlq list --json`, `replay`, ...)
    /// and gives its standard output.
    ///
    /// # Errors
    /// When it exits non-zero.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(service_binary());
        cmd.args(args).env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .context("the CLI took over 60 s")??;
        anyhow::ensure!(
            out.status.success(),
            "order-service {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The directory the replicas log into.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.dir.path
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
        // `_leftovers` is dropped after this, with the other fields.
    }
}

/// What a scenario made outside this process: its database and its two streams. Dropping it
/// removes them (after closing `pool`), bounded in time.
#[derive(Debug)]
struct Leftovers {
    admin_url: String,
    db_name: String,
    nats_url: String,
    streams: Vec<String>,
    pool: Option<PgPool>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (admin, db) = (self.admin_url.clone(), self.db_name.clone());
        let (nats, streams) = (self.nats_url.clone(), std::mem::take(&mut self.streams));
        let pool = self.pool.take();
        // Drop cannot await: clean up on a short-lived runtime of its own, bounded in time.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Some(pool) = pool {
                    let _ = tokio::time::timeout(Duration::from_secs(3), pool.close()).await;
                }
                let cleanup = async {
                    if let Ok(mut c) = PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(crate::soak::nats_servers(&nats));
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await
                {
                    let js = jetstream::new(client);
                    for s in streams {
                        let _ = tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&s))
                            .await;
                    }
                }
            });
        })
        .join();
    }
}
