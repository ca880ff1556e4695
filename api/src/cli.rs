//! Operator subcommands of `order-service` that are not the server itself.

use anyhow::{bail, Context};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::app::store::OrderStore;
use crate::auth::{signing, KeyRing};
use crate::config::Settings;

/// `order-service call METHOD PATH`: sends one signed request (hmac-v1) to a running service
/// and prints the answer. Exits non-zero on a non-2xx status, so scripts can chain calls.
///
/// A redirect is printed like any other answer, never followed: following it would hand the
/// signed headers, nonce included, to whatever host the `Location` names.
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
        Some(settings.shared_secret().expose_secret()),
        None,
        settings
            .auth
            .service_keys
            .as_ref()
            .map(ExposeSecret::expose_secret),
    )?;
    let key = keys
        .signing_key(service)
        .context("no key is configured to sign as that service")?;
    let base = base_url.map_or_else(|| format!("http://{}", settings.http.addr), str::to_owned);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut request = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
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
    let pool = crate::db::pool(settings.database.url.expose_secret(), 2)?;
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

/// The name of `order-service subscribe`'s consumer: the permission model lets order-service
/// create exactly this one besides its durables (deploy/nats/permissions.conf).
pub const SUBSCRIBE_CONSUMER: &str = "order-service-cli";

/// `order-service subscribe`: the published events as a subscriber reads them, from the start
/// of the stream, through an ephemeral consumer named [`SUBSCRIBE_CONSUMER`] that acknowledges
/// nothing (the relay's and the real subscribers' state is untouched), deleted at the end (and
/// removed by the server a minute after an interrupted run). Two runs at the same time would
/// share it, and split the events between them. Returns one line per envelope: a summary, or
/// the envelope as JSON. Stops after `count` events, or when none came for `wait`.
///
/// # Errors
/// When NATS or the stream cannot be reached.
pub async fn subscribe(
    settings: &Settings,
    order: Option<Uuid>,
    count: usize,
    wait: std::time::Duration,
    json: bool,
) -> anyhow::Result<Vec<String>> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

    let client = connect_nats(settings).await?;
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_stream(&settings.streams.events)
        .await
        .with_context(|| format!("no stream {}", settings.streams.events))?;
    let subjects = order_bus::subjects::Subjects::new(&settings.streams.subject_prefix);
    // One an interrupted run left has moved past the events it delivered: start afresh.
    let _ = stream.delete_consumer(SUBSCRIBE_CONSUMER).await;
    let consumer = stream
        .create_consumer(pull::Config {
            name: Some(SUBSCRIBE_CONSUMER.to_owned()),
            filter_subject: subjects.prefixed("order.>"),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: std::time::Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("cannot create a consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the stream")?;
    let lines = read_envelopes(&mut messages, order, count, wait, json).await;
    drop(messages);
    if let Err(e) = stream.delete_consumer(SUBSCRIBE_CONSUMER).await {
        tracing::warn!(error = %e, "the consumer {SUBSCRIBE_CONSUMER} was not deleted; the server removes it within a minute");
    }
    lines
}

/// The envelopes `subscribe` prints, read from `messages`.
async fn read_envelopes(
    messages: &mut async_nats::jetstream::consumer::pull::Stream,
    order: Option<Uuid>,
    count: usize,
    wait: std::time::Duration,
    json: bool,
) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    let mut lines = Vec::new();
    while lines.len() < count {
        let Ok(Some(next)) = tokio::time::timeout(wait, messages.next()).await else {
            break;
        };
        let message = next.context("cannot read the stream")?;
        let envelope: serde_json::Value = serde_json::from_slice(&message.payload)
            .with_context(|| format!("not JSON on {}", message.subject))?;
        let aggregate = envelope["aggregateId"].as_str().unwrap_or_default();
        if order.is_some_and(|o| o.to_string() != aggregate) {
            continue;
        }
        lines.push(if json {
            envelope.to_string()
        } else {
            format!(
                "{:<28}  seq {:<3}  order {aggregate}  id {}",
                message.subject.as_str(),
                envelope["sequenceNumber"],
                envelope["id"].as_str().unwrap_or_default(),
            )
        });
    }
    Ok(lines)
}

/// Connects to NATS once, with the service's credential and TLS settings, for a command that
/// needs it now (no background retries). The production rule applies as at start-up.
async fn connect_nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    settings.check_nats_production()?;
    Ok(settings
        .nats_security()
        .connect_once(
            settings.nats.url.expose_secret(),
            std::time::Duration::from_secs(5),
        )
        .await?)
}

/// Connects to the dead-letter stream (NATS) and its holds (Postgres) for the `dlq` commands.
async fn dead_letters(settings: &Settings) -> anyhow::Result<order_bus::dlq::DeadLetters> {
    let client = connect_nats(settings).await?;
    let jetstream = order_bus::relay::jetstream_context(client, settings.relay.publish_timeout());
    let pool = crate::db::pool(settings.database.url.expose_secret(), 2)?;
    Ok(crate::consumers::dead_letters(settings, jetstream, pool))
}

/// `order-service streams`: creates the events stream and the dead-letter stream, or adds
/// missing subjects and brings their limits to the current settings (the same specifications
/// the relay, the subscribers and the dead-letter stream use when NATS_CREATE_STREAM=true),
/// then exits. The permission model lets no service do this: it is run with the provisioning
/// credential (`NATS_USER=nats-admin`), and the service then runs with NATS_CREATE_STREAM=false.
/// Returns the text to print.
///
/// # Errors
/// When NATS cannot be reached, or JetStream refuses (a credential without the rights).
pub async fn streams(settings: &Settings) -> anyhow::Result<String> {
    let client = connect_nats(settings).await?;
    let jetstream = order_bus::relay::jetstream_context(client, settings.relay.publish_timeout());
    let spec = settings.relay_config().stream;
    let outcome = order_bus::ensure_stream(&jetstream, &spec)
        .await
        .with_context(|| format!("cannot create or update the events stream {}", spec.name))?;
    let mut dlq_config = settings.streams.dlq_config();
    dlq_config.ensure_stream = true;
    // Only the dead-letter stream is touched: the pool is never connected.
    let unused = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
    order_bus::dlq::DeadLetters::new(jetstream, unused, dlq_config)
        .ensure_stream()
        .await
        .with_context(|| {
            format!(
                "cannot create or update the dead-letter stream {}",
                settings.streams.dlq
            )
        })?;
    Ok(format!(
        "events stream {}: {}\ndead-letter stream {}: ready\n",
        spec.name,
        match outcome {
            order_bus::stream::StreamOutcome::Created => "created",
            order_bus::stream::StreamOutcome::Updated => "updated",
            order_bus::stream::StreamOutcome::Unchanged => "unchanged",
        },
        settings.streams.dlq
    ))
}

/// `order-service dlq list`: every parked message, as a table (or JSON lines), oldest first.
/// Returns the text to print.
///
/// # Errors
/// When NATS or the dead-letter stream cannot be reached.
pub async fn dlq_list(settings: &Settings, json: bool) -> anyhow::Result<String> {
    let dlq = dead_letters(settings).await?;
    if !dlq.stream_exists().await? {
        return Ok(format!(
            "the dead-letter stream {} does not exist yet: nothing was ever parked\n",
            settings.streams.dlq
        ));
    }
    let parked = dlq.list().await.with_context(|| {
        format!(
            "cannot read the dead-letter stream {}",
            settings.streams.dlq
        )
    })?;
    let now = chrono::Utc::now();
    if json {
        let mut out = String::new();
        for p in &parked {
            let line = serde_json::json!({
                "dlqSeq": p.dlq_seq, "subject": p.subject, "orderId": p.order_id,
                "messageId": p.message_id, "error": p.error, "attempts": p.attempts,
                "streamSequence": p.stream_sequence, "heldBehind": p.held_behind,
                "parkedAt": p.parked_at, "bytes": p.payload.len(),
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        return Ok(out);
    }
    Ok(dlq_table(&parked, now))
}

/// The `dlq list` table. Errors are cut to one screen line; `--json` has them whole.
pub fn dlq_table(
    parked: &[order_bus::dlq::ParkedMessage],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use std::fmt::Write as _;
    if parked.is_empty() {
        return "no parked messages\n".to_owned();
    }
    let mut out = format!(
        "{:>7}  {:<32} {:<36} {:>8} {:>6}  ERROR\n",
        "DLQ SEQ", "SUBJECT", "ORDER", "ATTEMPTS", "AGE"
    );
    for p in parked {
        let order = p.order_id.map_or_else(|| "-".to_owned(), |o| o.to_string());
        let attempts = p.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let error: String = if p.error.chars().count() > 100 {
            format!("{}…", p.error.chars().take(100).collect::<String>())
        } else {
            p.error.clone()
        };
        let _ = writeln!(
            out,
            "{:>7}  {:<32} {:<36} {:>8} {:>6}  {}",
            p.dlq_seq,
            p.subject,
            order,
            attempts,
            age(now - p.parked_at),
            error
        );
    }
    let _ = writeln!(out, "{} parked", parked.len());
    out
}

/// `3s`, `5m`, `2h`, `4d`.
fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m", s / 60),
        3_600..=86_399 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The break-glass NATS user that may republish dead letters to their original subjects
/// (deploy/nats/permissions.conf).
pub const REDRIVE_USER: &str = "order-service-redrive";

/// `order-service dlq redrive`: republishes parked messages to their original subjects. A
/// message that holds an order brings the order's whole queue, in order.
///
/// # Errors
/// When NATS or Postgres cannot be reached, or `--id` names no parked message.
pub async fn dlq_redrive(
    settings: &Settings,
    target: order_bus::dlq::RedriveTarget,
) -> anyhow::Result<order_bus::dlq::RedriveReport> {
    let dlq = dead_letters(settings).await?;
    match dlq.redrive(target).await {
        Ok(report) => Ok(report),
        Err(e @ order_bus::BusError::Broker(_))
            if settings.nats.user.as_deref() != Some(REDRIVE_USER) =>
        {
            Err(anyhow::Error::new(e).context(format!(
                "redrive stopped; running it again is safe. Redrive republishes to payment.*, \
                 dispute.* and ticket.*, which the service's own NATS user may not publish: \
                 run it as the break-glass user (NATS_USER={REDRIVE_USER} with its \
                 NATS_PASSWORD; docs/operations.md)"
            )))
        }
        Err(e) => Err(anyhow::Error::new(e).context("redrive stopped; running it again is safe")),
    }
}

/// One line per redrive, for the terminal.
pub fn redrive_summary(report: &order_bus::dlq::RedriveReport) -> String {
    if report.republished.is_empty() {
        return "nothing to redrive\n".to_owned();
    }
    let seqs: Vec<String> = report.republished.iter().map(u64::to_string).collect();
    format!(
        "republished {} message(s) (DLQ seq {}); {} order(s) are released as their messages are handled\n",
        report.republished.len(),
        seqs.join(", "),
        report.orders.len()
    )
}

/// `order-service dlq discard --id N`: deletes one parked message for good and releases its
/// hold. Returns the text to print, which says whether the order still has messages parked.
///
/// # Errors
/// When NATS or Postgres cannot be reached, or there is no such parked message.
pub async fn dlq_discard(settings: &Settings, dlq_seq: u64) -> anyhow::Result<String> {
    let dlq = dead_letters(settings).await?;
    let parked = dlq.discard(dlq_seq).await?;
    let mut out = format!(
        "discarded DLQ seq {} ({}): {}\n",
        parked.dlq_seq, parked.subject, parked.error
    );
    if let Some(order) = parked.order_id {
        let left = dlq
            .holds()
            .queue(order, None)
            .await?
            .iter()
            .filter(|r| !r.is_reservation())
            .count();
        if left > 0 {
            out.push_str(&format!(
                "order {order} still has {left} parked message(s); redrive them with `dlq redrive --order {order}`\n"
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// replay

/// Options of `order-service replay` (see [`replay`]).
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").args(["projection", "all"])))]
pub struct ReplayArgs {
    /// The projection to rebuild (known: orders).
    #[arg(long, value_name = "NAME")]
    pub projection: Option<String>,
    /// Rebuild every projection.
    #[arg(long)]
    pub all: bool,
    /// Rebuild one order's rows in place, in every projection unless --projection names one.
    #[arg(long, value_name = "ID")]
    pub order: Option<Uuid>,
    /// Compare and print the differing rows, then stop: nothing is swapped or changed.
    #[arg(long)]
    pub dry_run: bool,
    /// Swap without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Drop the shadow tables an interrupted rebuild left and start from the first event.
    #[arg(long)]
    pub restart: bool,
    /// Events per transaction.
    #[arg(long, value_name = "N", default_value_t = order_projections::replay::DEFAULT_BATCH_SIZE)]
    pub batch_size: i64,
    /// Differing rows to print per table.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub show: usize,
}

/// The projections a replay command names: `--projection NAME`, `--all`, or (when
/// `default_all`) every one when neither is given.
fn replay_targets(
    projection: Option<&str>,
    all: bool,
    default_all: bool,
) -> anyhow::Result<Vec<&'static dyn order_projections::replay::Rebuildable>> {
    use order_projections::replay;
    match projection {
        Some(name) => Ok(vec![replay::find(name)?]),
        None if all || default_all => Ok(replay::registry().to_vec()),
        None => {
            let known: Vec<&str> = replay::registry().iter().map(|p| p.name()).collect();
            bail!(
                "name the projection to rebuild with --projection NAME (one of: {}) or use --all",
                known.join(", ")
            )
        }
    }
}

/// The build's progress bar on stderr: events done of the total, rate and ETA. Hidden when
/// stderr is not a terminal, so logs and CI output stay clean.
#[derive(Debug)]
struct ReplayBar(indicatif::ProgressBar);

impl ReplayBar {
    fn new() -> Self {
        use std::io::IsTerminal;
        let target = if std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(Some(0), target);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        Self(bar)
    }
}

impl order_projections::replay::ReplayProgress for ReplayBar {
    fn start(&self, projection: &str, total: u64) {
        self.0.set_prefix(projection.to_owned());
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, events: u64) {
        self.0.inc(events);
    }
}

/// Asks on the terminal whether to swap; `false` unless the answer is yes.
async fn confirm_swap(projection: &str, tables: &[&str]) -> anyhow::Result<bool> {
    let question = format!(
        "Swap the rebuilt {} into place for {projection}? The current tables are kept for `replay rollback`. [y/N] ",
        tables.join(", ")
    );
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("the confirmation prompt failed")??;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

/// `order-service replay`: rebuilds projections into shadow tables while the service keeps
/// serving, compares them with the live tables, and swaps them in after confirmation (or with
/// `--yes`); `--dry-run` stops after the comparison, and `--order` rebuilds one order in place.
/// Ctrl-C stops between two batches; running the command again resumes.
///
/// # Errors
/// When Postgres cannot be reached, another rebuild of the projection runs, confirmation is
/// needed but stdin is not a terminal, the build is interrupted, or a step fails.
pub async fn replay(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    use order_projections::replay::{self, Built, RebuildOptions};
    use std::io::IsTerminal;

    let pool = crate::db::pool(settings.database.url.expose_secret(), 4)?;
    // A rebuild reads the feed too: after a logical restore it would read nothing and offer
    // empty tables for the swap.
    order_projections::feed::check_transaction_ids_ahead(&pool)
        .await
        .context("refusing to rebuild")?;
    if let Some(order) = args.order {
        let targets = replay_targets(args.projection.as_deref(), args.all, true)?;
        for spec in targets {
            let done = replay::rebuild_aggregate(&pool, spec, &order.to_string(), args.dry_run)
                .await
                .with_context(|| format!("rebuilding order {order} in {} failed", spec.name()))?;
            print!("{}", order_summary(spec.name(), order, &done));
        }
        return Ok(());
    }
    let targets = replay_targets(args.projection.as_deref(), args.all, false)?;
    if !args.dry_run && !args.yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to swap without confirmation: stdin is not a terminal. Pass --yes to swap \
             the rebuilt tables in, or --dry-run to only compare"
        );
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the current batch; run the command again to resume");
            on_ctrl_c.cancel();
        }
    });
    let options = RebuildOptions {
        batch_size: args.batch_size,
        restart: args.restart,
    };
    for spec in targets {
        let name = spec.name();
        let mut rebuild = replay::Rebuild::start(&pool, spec, options).await?;
        if let Some(done) = rebuild.resumed_from() {
            eprintln!(
                "{name}: resuming the shadow tables an earlier run left ({done} events already applied; --restart starts over)"
            );
        }
        let bar = ReplayBar::new();
        let built = rebuild.build(&bar, &cancel).await;
        bar.0.finish_and_clear();
        if let Built::Interrupted { events } = built? {
            rebuild.abandon().await?;
            bail!("{name}: interrupted after {events} events; the shadow tables are kept, run the same command again to resume");
        }
        let comparison = rebuild.compare(args.show).await?;
        print!("{}", comparison_report(&comparison));
        if args.dry_run {
            let summary = rebuild_summary(
                name,
                rebuild.events_applied(),
                rebuild.elapsed(),
                &comparison,
            );
            rebuild.abandon().await?;
            println!("{summary}; dry run, nothing swapped (the shadow tables are kept, so the next run resumes)");
            continue;
        }
        if !args.yes && !confirm_swap(name, spec.tables()).await? {
            rebuild.abandon().await?;
            println!("{name}: not swapped; the shadow tables are kept, so the next run resumes");
            continue;
        }
        let elapsed = rebuild.elapsed();
        let swapped = rebuild.swap().await?;
        println!(
            "{}; swapped in (previous tables kept as {}; undo with `order-service replay rollback --projection {name}`)",
            rebuild_summary(name, swapped.events, elapsed, &comparison),
            swapped.kept.join(", ")
        );
    }
    Ok(())
}

/// `order-service replay rollback`: swaps the tables the last swap kept back in.
///
/// # Errors
/// When there is nothing to roll back, a rebuild runs, or Postgres fails.
pub async fn replay_rollback(
    settings: &Settings,
    projection: Option<&str>,
    all: bool,
) -> anyhow::Result<()> {
    let pool = crate::db::pool(settings.database.url.expose_secret(), 2)?;
    for spec in replay_targets(projection, all, false)? {
        let rolled = order_projections::replay::rollback(
            &pool,
            spec,
            order_projections::replay::DEFAULT_BATCH_SIZE,
        )
        .await?;
        println!(
            "{}: rolled back ({} events applied to catch the previous tables up); the replaced tables are kept as {}",
            spec.name(),
            rolled.caught_up,
            rolled.kept.join(", ")
        );
    }
    Ok(())
}

/// `order-service replay clean`: drops the shadow tables a dry run or an interrupted rebuild
/// left, and the previous tables kept for a rollback.
///
/// # Errors
/// When a rebuild runs or Postgres fails.
pub async fn replay_clean(
    settings: &Settings,
    projection: Option<&str>,
    all: bool,
) -> anyhow::Result<()> {
    let pool = crate::db::pool(settings.database.url.expose_secret(), 2)?;
    for spec in replay_targets(projection, all, false)? {
        let dropped = order_projections::replay::clean(&pool, spec).await?;
        if dropped.is_empty() {
            println!("{}: nothing to drop", spec.name());
        } else {
            println!("{}: dropped {}", spec.name(), dropped.join(", "));
        }
    }
    Ok(())
}

/// The comparison, one block per table, with the differing rows listed.
pub fn comparison_report(c: &order_projections::replay::Comparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for t in &c.tables {
        let verdict = if t.is_identical() {
            "identical".to_owned()
        } else {
            format!("{} differing rows", t.differing_rows)
        };
        let _ = writeln!(
            out,
            "{:<24} live {:>9} rows  rebuilt {:>9} rows  {verdict}",
            t.table, t.live_rows, t.rebuilt_rows
        );
        for d in &t.diffs {
            let _ = writeln!(out, "  {d}");
        }
        let unlisted = t.differing_rows - t.diffs.len() as i64;
        if unlisted > 0 {
            let _ = writeln!(out, "  … and {unlisted} more (--show N lists more)");
        }
    }
    out
}

/// The closing line: events, seconds, events/s, rows and differences.
pub fn rebuild_summary(
    projection: &str,
    events: u64,
    elapsed: std::time::Duration,
    c: &order_projections::replay::Comparison,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        events as f64 / seconds
    } else {
        0.0
    };
    format!(
        "{projection}: {events} events in {seconds:.1} s ({rate:.0} events/s), {} rows, {} differences",
        c.rebuilt_rows(),
        c.differences()
    )
}

/// What `replay --order` did to one projection.
fn order_summary(
    projection: &str,
    order: Uuid,
    done: &order_projections::replay::AggregateRebuild,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verb = if done.dry_run {
        "would change"
    } else {
        "changed"
    };
    let _ = writeln!(
        out,
        "{projection}: order {order}: {} events re-applied, {} rows; {verb} {} rows{}",
        done.events,
        done.rows,
        done.changes.len(),
        if done.dry_run { " (dry run)" } else { "" }
    );
    for d in &done.changes {
        let _ = writeln!(out, "  {d}");
    }
    out
}

/// `order-service republish`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RepublishArgs {
    /// Prefix of the subjects to publish on, e.g. `backfill.reporting.` (not the relay's).
    #[arg(long, value_name = "PREFIX")]
    pub subject_prefix: String,
    /// Create this stream for `<PREFIX>order.>` if it does not exist (otherwise the subjects
    /// must already be captured by a stream).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Start after this feed position (a page's `next`; 0: the start). Ignored when resuming.
    #[arg(long, value_name = "CURSOR", default_value = "0")]
    pub from_position: String,
    /// Only events recorded at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this order's events.
    #[arg(long, value_name = "ID")]
    pub order: Option<Uuid>,
    /// Only these event types, comma-separated (`order.created,order.paid`).
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub types: Vec<String>,
    /// The progress checkpoint's name (default: the prefix); a run resumes from its checkpoint.
    #[arg(long)]
    pub name: Option<String>,
    /// Forget the checkpoint and start from --from-position again.
    #[arg(long)]
    pub restart: bool,
    /// Events read per batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: i64,
}

/// `order-service republish`: re-publishes a range of the feed (see
/// [`order_bus::catchup::republish`]), with a progress bar, and prints a summary. Ctrl-C stops
/// it after the batch in flight, which is checkpointed; running it again resumes.
///
/// # Errors
/// Bad flags, or when Postgres or NATS fail (what was acknowledged stays checkpointed).
pub async fn republish(settings: &Settings, args: &RepublishArgs) -> anyhow::Result<()> {
    use order_bus::catchup::{FeedCursor, Republish, RepublishFilter};
    use order_bus::Subjects;

    let subjects = Subjects::new(&args.subject_prefix);
    let relay_subjects = Subjects::new(&settings.streams.subject_prefix).stream_subjects();
    let sample = subjects.prefixed("order.created");
    if subjects.prefix().is_empty()
        || relay_subjects
            .iter()
            .any(|pattern| subject_matches(pattern, &sample))
    {
        bail!(
            "--subject-prefix must be set, and its subjects must not fall in the events stream \
             {} ({}): live subscribers would receive the copies, and the two would share one \
             duplicate window",
            settings.streams.events,
            relay_subjects.join(", ")
        );
    }
    let known: std::collections::BTreeSet<String> = order_bus::subjects::all_integration_types()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    if let Some(unknown) = args.types.iter().find(|t| !known.contains(*t)) {
        bail!("--types: unknown event type '{unknown}'");
    }
    let from: FeedCursor = args
        .from_position
        .parse()
        .map_err(|e| anyhow::anyhow!("--from-position: {e}"))?;
    let pool = crate::db::pool(settings.database.url.expose_secret(), 2)?;
    let client = connect_nats(settings).await?;
    let jetstream = order_bus::relay::jetstream_context(client, settings.relay.publish_timeout());
    if let Some(stream) = &args.stream {
        let window = settings.streams.duplicate_window();
        let mut spec = order_bus::StreamSpec::events(stream, &subjects, window);
        spec.subjects = vec![subjects.prefixed("order.>")];
        spec.replicas = settings.streams.replicas();
        order_bus::ensure_stream(&jetstream, &spec)
            .await
            .with_context(|| format!("cannot create or update stream {stream}"))?;
    }
    let job = Republish {
        pool,
        jetstream,
        subjects: subjects.clone(),
        name: args
            .name
            .clone()
            .unwrap_or_else(|| default_republish_name(&subjects, args)),
        filter: RepublishFilter {
            since: args.since,
            order: args.order.map(|o| o.to_string()),
            types: args.types.iter().cloned().collect(),
        },
        batch_size: args.batch_size.clamp(1, 10_000),
    };
    if args.restart {
        job.reset().await?;
    }
    let start = job.start(from).await?;
    if start != from {
        eprintln!("resuming {} after {start}", job.checkpoint_name());
    }
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
    )
    .bind(start.0.transaction_id.to_string())
    .bind(start.0.global_position)
    .fetch_one(&job.pool)
    .await?;
    let bar = ReplayBar::new();
    bar.0.set_prefix("republish");
    bar.0.set_length(u64::try_from(total).unwrap_or(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = stop.clone();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the batch in flight (it is checkpointed)");
            on_ctrl_c.cancel();
        }
    });
    let result = job
        .run(from, &stop, |report| bar.0.set_position(report.scanned))
        .await;
    watcher.abort();
    bar.0.finish_and_clear();
    let report = result?;
    println!(
        "republished {} of {} events read to {}order.* ({} already in the stream's duplicate window), \
         from after {} to after {}{}",
        report.published,
        report.scanned,
        subjects.prefix(),
        report.duplicates,
        report.started_after,
        report.ended_after,
        if stop.is_cancelled() {
            "; stopped early: run again to resume"
        } else {
            ""
        }
    );
    Ok(())
}

/// The checkpoint name when `--name` is not given: the prefix, plus a digest of the filters when
/// there are any, so that a run with other filters on the same prefix starts afresh rather than
/// resuming past the end of another run's range.
fn default_republish_name(subjects: &order_bus::Subjects, args: &RepublishArgs) -> String {
    use sha2::Digest as _;
    let prefix = subjects.prefix().trim_end_matches('.').to_owned();
    if args.since.is_none() && args.order.is_none() && args.types.is_empty() {
        return prefix;
    }
    let mut types = args.types.clone();
    types.sort();
    let filters = format!("{:?}|{:?}|{types:?}", args.since, args.order);
    let digest = sha2::Sha256::digest(filters.as_bytes());
    format!("{prefix}+{}", hex::encode(&digest[..4]))
}

/// Whether NATS subject `pattern` (with `*` and a final `>`) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod republish_tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_nats_wildcards() {
        assert!(subject_matches("order.>", "order.backfill.order.created"));
        assert!(subject_matches("t1.order.>", "t1.order.created"));
        assert!(subject_matches("order.*", "order.created"));
        assert!(!subject_matches("order.*", "order.a.b"));
        assert!(!subject_matches("order.>", "order"));
        assert!(!subject_matches("order.>", "backfill.order.created"));
        assert!(!subject_matches("payment.>", "backfill.order.created"));
    }
}
