//! `order-service`: one binary, several subcommands (DESIGN section 10).

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_api::config::Settings;
use order_api::startup::Application;
use order_api::{cli, db, telemetry};

/// The order engine of the ticketing platform.
#[derive(Parser)]
#[command(name = "order-service", version, about)]
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rustls_provider();
    telemetry::init(cli.settings.app_env);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.settings)
                .await
                .context("start-up failed")?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Events { order_id, json } => cli::events(&cli.settings, &order_id, json).await,
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
            db::create_and_migrate(&cli.settings.database_url).await?;
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
