//! The Postgres settings: the primary, its pool, and the optional read standby.

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

/// Where the event store and read models live. Both URLs may carry a password, so they are
/// secrets, and `Debug` shows them with the password hidden.
#[derive(Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// Postgres connection string; the database is created if missing.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_service",
        hide_env_values = true
    )]
    pub url: SecretString,

    /// Largest number of pooled Postgres connections.
    #[arg(
        id = "db_max_connections",
        long = "db-max-connections",
        env = "DB_MAX_CONNECTIONS",
        value_name = "DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,

    /// A streaming standby of DATABASE_URL for the four `/internal` queries (optional; up to
    /// DB_MAX_CONNECTIONS connections). Everything that writes stays on the primary; when the
    /// standby is unreachable the primary answers the reads.
    #[arg(
        id = "read_database_url",
        long = "read-database-url",
        env = "READ_DATABASE_URL",
        value_name = "READ_DATABASE_URL",
        hide_env_values = true
    )]
    pub read_url: Option<SecretString>,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .field(
                "read_url",
                &self
                    .read_url
                    .as_ref()
                    .map(|u| redact_url(u.expose_secret())),
            )
            .finish()
    }
}

/// Hides a password in a connection URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |i| scheme + 3 + i);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}
