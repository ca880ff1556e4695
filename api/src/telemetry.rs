//! Logging setup: JSON lines in production (one object per event, with the request span's ids),
//! human-readable text elsewhere. `RUST_LOG` filters, defaulting to `info`.

use tracing_subscriber::EnvFilter;

use crate::config::AppEnv;

/// Installs the global subscriber once; later calls are ignored (tests build many apps).
pub fn init(env: AppEnv) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = env == AppEnv::Production || std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}
