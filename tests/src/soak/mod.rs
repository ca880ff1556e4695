//! The reliability suite of docs/reliability.md: scenarios R1–R9 against real `order-service serve`
//! processes, a private Postgres or nats-server where a scenario stops one, and the shared ones
//! otherwise (each scenario on its own database, stream, subject prefix and dead-letter stream).
//!
//! Every scenario is bounded in time, prints one line of figures, writes them to
//! `<target>/soak/<id>.json`, and fails when a figure misses its bar. [`Scale`] picks the size:
//! the short form runs inside `just test`, the full one (`SOAK=full`, `just soak`) uses the
//! durations and counts of the issue.
//!
//! Layout:
//! - [`procs`]: the processes (service replicas, private nats-server, private Postgres), each
//!   killed on drop so a failing scenario leaves nothing running.
//! - [`nats_cluster`]: a three-node JetStream cluster from `deploy/nats/cluster.conf`.
//! - [`cluster`]: one scenario's database, streams and replicas, removed on drop.
//! - [`load`]: the mixed command load, recording every command that got a 2xx.
//! - [`verify`]: the checks (acked commands in the store, every event on NATS once and in
//!   order, read model equal to a replay).
//! - [`scenarios`]: R1, R2, R3, R6, R7, R8 and R9.
//! - [`topology`]: R10 (a JetStream cluster loses nodes) and R11 (`/internal` reads from a
//!   Postgres standby).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

pub mod cluster;
pub mod feed;
pub mod load;
pub mod nats_cluster;
pub mod procs;
pub mod scenarios;
pub mod topology;
pub mod verify;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Seconds and small counts: part of `just test`.
    Short,
    /// The figures (30 s broker outage, 60 s feed run, 5 kills): `just soak`.
    Full,
}

impl Scale {
    /// `SOAK=full` picks [`Scale::Full`]; anything else the short form.
    pub fn from_env() -> Self {
        match std::env::var("SOAK").as_deref() {
            Ok("full") => Self::Full,
            _ => Self::Short,
        }
    }

    /// `short` in the short form, `full` in the full one.
    pub fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Self::Short => short,
            Self::Full => full,
        }
    }

    /// `short`/`full` seconds as a duration.
    pub fn secs(self, short: f64, full: f64) -> Duration {
        Duration::from_secs_f64(self.pick(short, full))
    }

    fn name(self) -> &'static str {
        self.pick("short", "full")
    }
}

/// The target directory the build used: `CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The `order-service` binary: `ORDER_SERVICE_BIN`, else the debug build in the target
/// directory. The tests crate links `order-api` as a library, so Cargo does not build the binary
/// for it; `just test` and `just soak` build it first.
///
/// # Panics
/// When the binary is missing, with the command that builds it.
pub fn service_binary() -> PathBuf {
    let path = std::env::var_os("ORDER_SERVICE_BIN")
        .map_or_else(|| target_dir().join("debug/order-service"), PathBuf::from);
    assert!(
        path.is_file(),
        "the soak scenarios run the real binary, and {} is missing: run `cargo build -p order-api \
         --bin order-service` (with the same CARGO_TARGET_DIR) or set ORDER_SERVICE_BIN",
        path.display()
    );
    path
}

/// A short random tag for unique names.
pub fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Prints a scenario's figures on one line (`R1 kills=5 commands_ok=…`) and writes them, with
/// the scale and the time, to `<target>/soak/<id>.json`.
pub fn report(id: &str, scale: Scale, figures: &[(&str, Value)]) {
    let line = figures
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ");
    println!("{id} scale={} {line}", scale.name());
    let mut object = serde_json::Map::new();
    object.insert("scenario".into(), Value::from(id));
    object.insert("scale".into(), Value::from(scale.name()));
    object.insert("at".into(), Value::from(chrono::Utc::now().to_rfc3339()));
    for (k, v) in figures {
        object.insert((*k).to_owned(), v.clone());
    }
    let dir = target_dir().join("soak");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(format!("{id}-{}.json", scale.name())),
            serde_json::to_string_pretty(&Value::Object(object)).unwrap_or_default(),
        );
    }
}

/// Polls `check` every 50 ms until it gives `Some`, or gives `None` after `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The servers of a `NATS_URL` (one URL, or a comma-separated list for a cluster), parsed as
/// the service parses them; empty when the list does not parse, which fails the connect.
pub fn nats_servers(url: &str) -> Vec<async_nats::ServerAddr> {
    order_bus::connect::ServerList::parse(url)
        .map(|list| list.addrs)
        .unwrap_or_default()
}
