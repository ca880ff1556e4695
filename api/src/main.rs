//! `order-service`: one binary, several subcommands (DESIGN section 10).

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_api::config::Settings;
use order_api::startup::Application;
use order_api::{db, telemetry};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.settings.app_env);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.settings)
                .await
                .context("start-up failed")?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            db::create_and_migrate(&cli.settings.database_url).await?;
            println!("migrations applied");
            Ok(())
        }
    }
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
