//! Operator subcommands of `order-service` that are not the server itself.

use anyhow::{bail, Context};
use uuid::Uuid;

use crate::auth::{signing, KeyRing};
use crate::config::Settings;
use crate::store::OrderStore;

/// `order-service call METHOD PATH`: sends one signed request (hmac-v1) to a running service
/// and prints the answer. Exits non-zero on a non-2xx status, so scripts can chain calls.
///
/// # Errors
/// When the request cannot be sent or the answer is not 2xx.
pub async fn call(
    settings: &Settings,
    method: &str,
    path: &str,
    body: Option<&str>,
    service: &str,
    tenant: Option<&str>,
    base_url: Option<&str>,
) -> anyhow::Result<()> {
    if !path.starts_with('/') {
        bail!("PATH must start with '/', e.g. /api/v1/orders");
    }
    let method: reqwest::Method = method
        .to_uppercase()
        .parse()
        .context("METHOD must be an HTTP method such as GET or POST")?;
    let keys = KeyRing::from_config(
        Some(&settings.shared_secret()),
        None,
        settings.service_keys.as_deref(),
    )?;
    let key = keys
        .signing_key(service)
        .context("no key is configured to sign as that service")?;
    let base = base_url.map_or_else(|| format!("http://{}", settings.http_addr), str::to_owned);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut request = reqwest::Client::builder()
        .build()?
        .request(
            method.clone(),
            format!("{}{path}", base.trim_end_matches('/')),
        )
        .header("x-request-id", Uuid::new_v4().to_string());
    for (name, value) in signing::v1_headers(key, service, method.as_str(), path, now_ms) {
        request = request.header(name, value);
    }
    if let Some(t) = tenant {
        request = request.header("x-tenant-id", t);
    }
    if let Some(b) = body {
        let json: serde_json::Value =
            serde_json::from_str(b).context("--body must be valid JSON")?;
        request = request.json(&json);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{text}"),
    }
    if !status.is_success() {
        bail!("{method} {path} answered {status}");
    }
    Ok(())
}

/// `order-service events ORDER_ID`: the order's history, as a table or as JSON lines.
///
/// # Errors
/// When the id is not a UUID, the order does not exist, or the database cannot be read.
pub async fn events(settings: &Settings, order_id: &str, json: bool) -> anyhow::Result<()> {
    let id = Uuid::parse_str(order_id).context("ORDER_ID must be a UUID")?;
    let pool = crate::db::pool(&settings.database_url, 2)?;
    let history = OrderStore::new(pool)
        .history(id)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the event store: {e}"))?;
    if history.is_empty() {
        bail!("order {id} has no events");
    }
    if json {
        for e in &history {
            println!(
                "{}",
                serde_json::json!({
                    "sequence": e.sequence, "type": e.event_type, "version": e.event_version,
                    "timestamp": e.recorded_at, "payload": e.payload, "metadata": e.metadata,
                })
            );
        }
        return Ok(());
    }
    println!(
        "{:>4}  {:<18} {:<4} {:<24} SUMMARY",
        "SEQ", "TYPE", "VER", "TIME"
    );
    for e in &history {
        println!(
            "{:>4}  {:<18} {:<4} {:<24} {}",
            e.sequence,
            e.event_type,
            e.event_version,
            e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            summary(&e.payload)
        );
    }
    Ok(())
}

/// A one-line summary of an event's most telling fields.
fn summary(payload: &serde_json::Value) -> String {
    let inner = payload
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(serde_json::Value::as_object);
    let Some(fields) = inner else {
        return String::new();
    };
    [
        "status",
        "totalCents",
        "amountCents",
        "paymentIntentId",
        "reason",
        "refundId",
        "disputeId",
        "outcome",
        "ticketCount",
        "expiresAt",
    ]
    .iter()
    .filter_map(|k| fields.get(*k).map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}
