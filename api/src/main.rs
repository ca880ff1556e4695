//! `order-service`: one binary, several subcommands (docs/contract.md §9).

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_api::config::Settings;
use order_api::startup::Application;
use order_api::{cli, db, telemetry};
use secrecy::ExposeSecret;

/// What `--help` opens with: what the program is, in one line.
const ABOUT: &str = "The order service of the ticketing platform: signed HTTP commands and \
queries, events published to NATS JetStream, and the operator tools (replay, dead letters).";

/// The order service of the ticketing platform, and its operator tools.
#[derive(Parser)]
#[command(name = "order-service", version, about = ABOUT, long_about = None)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate, then serve HTTP and run the background workers (the default).
    Serve,
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// Print an order's event history.
    Events {
        /// The order id (a UUID).
        order_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read the published events as a subscriber receives them from the stream, from its
    /// start: one line per envelope (or the envelope as JSON with --json).
    Subscribe {
        /// Only this order's events.
        #[arg(long)]
        order: Option<String>,
        /// Stop after this many events.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Stop when no event came for this many seconds.
        #[arg(long, default_value_t = 5)]
        wait: u64,
        /// Each envelope as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish a range of the event feed under another subject prefix, for a consumer's
    /// backfill: the relay's bodies and Nats-Msg-Ids, resumable, the relay untouched.
    Republish(cli::RepublishArgs),
    /// Inspect and redrive the dead-letter stream of inbound messages.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Create the events and dead-letter streams, or bring them to the current settings, then
    /// exit. Run with the provisioning credential (NATS_USER=nats-admin); the service itself
    /// then runs with NATS_CREATE_STREAM=false.
    Streams,
    /// Rebuild projections from the events without stopping the service: into shadow tables,
    /// compared with the live ones, then swapped in (or one order in place with --order).
    #[command(args_conflicts_with_subcommands = true)]
    Replay {
        #[command(subcommand)]
        action: Option<ReplayAction>,
        #[command(flatten)]
        args: cli::ReplayArgs,
    },
    /// Send one signed request to a running service and print the answer.
    Call {
        /// HTTP method, e.g. GET or POST.
        method: String,
        /// Path and query, e.g. /api/v1/orders.
        path: String,
        /// JSON request body.
        #[arg(long)]
        body: Option<String>,
        /// The calling service whose key signs the request.
        #[arg(long = "as", default_value = "api-gateway")]
        service: String,
        /// Sent as X-Tenant-ID.
        #[arg(long)]
        tenant: Option<String>,
        /// Base URL of the service (default: http://HTTP_ADDR).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum ReplayAction {
    /// Swap the tables kept by the last swap back in (a second rollback undoes the first).
    #[command(group(clap::ArgGroup::new("which").args(["projection", "all"])))]
    Rollback {
        /// The projection to roll back.
        #[arg(long, value_name = "NAME")]
        projection: Option<String>,
        /// Roll back every projection.
        #[arg(long)]
        all: bool,
    },
    /// Drop the shadow tables a dry run or an interrupted rebuild left, and the previous tables
    /// (after which nothing can be rolled back).
    #[command(group(clap::ArgGroup::new("which").args(["projection", "all"])))]
    Clean {
        /// The projection to clean up.
        #[arg(long, value_name = "NAME")]
        projection: Option<String>,
        /// Clean up every projection.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List parked messages: DLQ seq, subject, order, attempts, age and error.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish parked messages to their original subjects, in order.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "order", "all"])))]
    Redrive {
        /// One parked message by DLQ sequence (its order's whole queue when it holds one).
        #[arg(long)]
        id: Option<u64>,
        /// Every parked message of one order.
        #[arg(long)]
        order: Option<uuid::Uuid>,
        /// Everything parked.
        #[arg(long)]
        all: bool,
    },
    /// Delete one parked message for good (a poison message) and release its hold.
    Discard {
        /// The message's DLQ sequence.
        #[arg(long)]
        id: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    order_api::config::refuse_misnamed(std::env::vars_os().map(|(name, _)| name))
        .context("refusing to start")?;
    rustls_provider();
    telemetry::init(cli.settings.app_env);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.settings)
                .await
                .context("start-up failed")?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Dlq { action } => match action {
            DlqAction::List { json } => {
                print!("{}", cli::dlq_list(&cli.settings, json).await?);
                Ok(())
            }
            DlqAction::Redrive { id, order, all } => {
                use order_bus::dlq::RedriveTarget;
                let target = match (id, order, all) {
                    (Some(seq), _, _) => RedriveTarget::Message(seq),
                    (None, Some(o), _) => RedriveTarget::Order(o),
                    _ => RedriveTarget::All,
                };
                let report = cli::dlq_redrive(&cli.settings, target).await?;
                print!("{}", cli::redrive_summary(&report));
                Ok(())
            }
            DlqAction::Discard { id } => {
                print!("{}", cli::dlq_discard(&cli.settings, id).await?);
                Ok(())
            }
        },
        Command::Republish(args) => cli::republish(&cli.settings, &args).await,
        Command::Streams => {
            print!("{}", cli::streams(&cli.settings).await?);
            Ok(())
        }
        Command::Events { order_id, json } => cli::events(&cli.settings, &order_id, json).await,
        Command::Subscribe {
            order,
            count,
            wait,
            json,
        } => {
            let order = order
                .as_deref()
                .map(uuid::Uuid::parse_str)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--order must be a UUID"))?;
            let wait = std::time::Duration::from_secs(wait);
            for line in cli::subscribe(&cli.settings, order, count, wait, json).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Replay { action, args } => match action {
            Some(ReplayAction::Rollback { projection, all }) => {
                cli::replay_rollback(&cli.settings, projection.as_deref(), all).await
            }
            Some(ReplayAction::Clean { projection, all }) => {
                cli::replay_clean(&cli.settings, projection.as_deref(), all).await
            }
            None => cli::replay(&cli.settings, &args).await,
        },
        Command::Call {
            method,
            path,
            body,
            service,
            tenant,
            url,
        } => {
            cli::call(
                &cli.settings,
                &method,
                &path,
                body.as_deref(),
                &service,
                tenant.as_deref(),
                url.as_deref(),
            )
            .await
        }
        Command::Migrate => {
            db::create_and_migrate(cli.settings.database.url.expose_secret()).await?;
            println!("migrations applied");
            Ok(())
        }
    }
}

/// Installs ring as the process's one rustls provider before any TLS client is built.
fn rustls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn help_opens_with_what_the_program_is() {
        let help = Cli::command().render_help().to_string();
        let first = help.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("The order service of the ticketing platform"),
            "--help opens with: {first}"
        );
        assert!(!help.contains("Configuration, HTTP server"), "{help}");
    }
}
