//! The HTTP server's settings: where it listens and what it tolerates from a request.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// How the HTTP server listens and bounds each request.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP server")]
pub struct HttpSettings {
    /// Address the HTTP server binds; port 0 picks a free port.
    #[arg(
        id = "http_addr",
        long = "http-addr",
        env = "HTTP_ADDR",
        value_name = "HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "REQUEST_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub request_body_limit: usize,

    /// Seconds a request may take before it is answered 408. It runs from the end of the
    /// headers, so it also cuts off a body that trickles in too slowly.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Milliseconds a request may spend on the database in all, from its arrival: pool waits,
    /// batch queues, statements and retries of every call it makes share this one deadline
    /// (time spent waiting on peer services does not count). Past it the request answers 503
    /// with Retry-After. Keep it well below REQUEST_TIMEOUT_SECS and the callers' own timeouts,
    /// so that during a database outage they hear back instead of giving up.
    #[arg(long, env = "REQUEST_DB_DEADLINE_MS", default_value_t = 5_000)]
    pub request_db_deadline_ms: u64,

    /// Seconds an HTTP/1 client has to send a request's complete headers (counted from the
    /// first read, so an idle keep-alive connection is closed after it too). Without it a
    /// client sending headers byte by byte (slowloris) holds a connection forever. 0 disables.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub header_read_timeout_secs: u64,

    /// Largest request head (request line and headers) in bytes; a larger one is answered 431
    /// and the connection closed. The default matches Node's, which the platform's other
    /// services run on; values below 8192 are raised to 8192 (hyper's minimum buffer).
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
}

impl HttpSettings {
    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The request database deadline as a duration (at least 1 ms).
    pub fn request_db_deadline(&self) -> Duration {
        Duration::from_millis(self.request_db_deadline_ms.max(1))
    }

    /// The HTTP/1 header read timeout, `None` when disabled with 0.
    pub fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_secs > 0)
            .then(|| Duration::from_secs(self.header_read_timeout_secs))
    }
}
