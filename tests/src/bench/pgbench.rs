//! The baseline: what this Postgres does for the simplest transaction of the same shape,
//! measured with `pgbench` in the same run as the service.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::stats::Latencies;

/// Tables and data the pgbench scripts use, created in the benchmark's own database.
pub const SETUP_SQL: &str = "
CREATE TABLE IF NOT EXISTS bench_events (
    aggregate_id text NOT NULL, sequence bigint NOT NULL, payload jsonb NOT NULL,
    PRIMARY KEY (aggregate_id, sequence));
INSERT INTO bench_events
SELECT 'k' || g, 1, '{\"status\": \"PAID\", \"totalCents\": 17870}'::jsonb
  FROM generate_series(1, 10000) g
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_nonces (
    service text NOT NULL, nonce text NOT NULL, expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, nonce));";

/// One row per transaction, like appending one event: B1's denominator.
pub const INSERT: &str = "INSERT INTO bench_events (aggregate_id, sequence, payload)
VALUES (gen_random_uuid()::text, 1, '{\"OrderCreated\": {\"totalCents\": 17870}}');\n";

/// Read the aggregate's version, then append after it: the shape of one command (B2).
pub const READ_THEN_INSERT: &str = "\\set k random(1, 10000)
BEGIN;
SELECT max(sequence) FROM bench_events WHERE aggregate_id = 'k' || :k;
INSERT INTO bench_events (aggregate_id, sequence, payload)
VALUES (gen_random_uuid()::text, 1, '{\"OrderConfirmed\": {}}');
COMMIT;\n";

/// The SQL a signed read needs, as the service sends it: the request's nonce recorded once
/// (an insert that skips a used key, committed without waiting for the WAL flush, as
/// `auth_nonces` is), then the primary-key read. B8's denominator, so that its ratio measures
/// the service's overhead and not the statement the signature costs.
pub const NONCE_THEN_PK_SELECT: &str = "\\set k random(1, 10000)
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO bench_nonces (service, nonce, expires_at)
SELECT 'payment-service', gen_random_uuid()::text, now() + interval '10 minutes' FROM async_commit
ON CONFLICT (service, nonce) DO NOTHING;
SELECT payload FROM bench_events WHERE aggregate_id = 'k' || :k AND sequence = 1;\n";

/// What one pgbench run measured.
#[derive(Debug, Clone)]
pub struct PgbenchRun {
    pub tps: f64,
    pub latencies: Latencies,
}

/// Runs `script` with `clients` connections for `seconds`, logging every transaction's
/// latency, and returns throughput and latencies.
///
/// # Errors
/// When pgbench is missing or fails.
pub fn run(
    db_url: &str,
    script: &str,
    clients: u32,
    seconds: u32,
    work: &Path,
) -> anyhow::Result<PgbenchRun> {
    run_paced(db_url, script, clients, None, seconds, work)
}

/// [`run`] with one client whose transactions are scheduled at `rate` per second on average
/// (pgbench `--rate`, Poisson arrivals), so that latency is measured under the same load as
/// the service's open loop: mostly from an idle system, not back to back with warm caches and
/// busy cores. pgbench counts latency from each transaction's scheduled start; the lag behind
/// schedule is taken off again when the log is read, so that each latency runs from the
/// actual start, as the open loop's run from each request's send.
///
/// # Errors
/// When pgbench is missing or fails.
pub fn run_at_rate(
    db_url: &str,
    script: &str,
    rate: u32,
    seconds: u32,
    work: &Path,
) -> anyhow::Result<PgbenchRun> {
    run_paced(db_url, script, 1, Some(rate), seconds, work)
}

fn run_paced(
    db_url: &str,
    script: &str,
    clients: u32,
    rate: Option<u32>,
    seconds: u32,
    work: &Path,
) -> anyhow::Result<PgbenchRun> {
    let script_path = work.join(format!("script-{}.sql", fnv(script)));
    std::fs::write(&script_path, script)?;
    let log_dir = work.join(format!("pgb-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&log_dir)?;
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", log_dir.join("log").display()))
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(rate.map(|r| format!("--rate={}", r.max(1))))
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script_path)
        .arg(db_url)
        .output()
        .context("pgbench could not be started: install PostgreSQL's client tools")?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps line in pgbench output:\n{stdout}"))?;
    let latencies = read_logs(&log_dir)?;
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(PgbenchRun { tps, latencies })
}

/// pgbench's per-transaction log: `client tx_no latency_us script epoch epoch_us`, and under
/// `--rate` a seventh column, the lag behind schedule, which the latency then includes and
/// which is subtracted from it.
fn read_logs(dir: &Path) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for file in files {
        for line in std::fs::read_to_string(&file)?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let column = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            if let Some(us) = column(2) {
                latencies.record_us(us.saturating_sub(column(6).unwrap_or(0)));
            }
        }
    }
    Ok(latencies)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
