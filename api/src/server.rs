//! The HTTP accept loop: what `axum::serve` does, plus the connection limits it cannot set.
//!
//! `axum::serve` (0.8) builds hyper's connection builder without a timer, so hyper's HTTP/1
//! header read timeout never runs, and it cannot bound the size of a request head. A client
//! that sends its headers one byte at a time (slowloris) would then hold a connection and its
//! task for as long as it likes; the request-level `TimeoutLayer` cannot help, because it only
//! starts once the headers are complete. This loop serves the same router with:
//!
//! - a header read timeout (`HEADER_READ_TIMEOUT_SECS`): the connection is closed when the
//!   first byte does not come in time, or the request head is not complete in time after it
//!   (hyper's own timer), which also ends idle keep-alive connections;
//! - a request-head size limit (`MAX_HEADER_BYTES`): a larger head is answered 431 by hyper and
//!   the connection closed, for HTTP/1 (read buffer) and HTTP/2 (header list size) alike.
//!
//! Graceful shutdown matches `axum::serve(..).with_graceful_shutdown(..)`: stop accepting, let
//! in-flight requests finish, close idle connections, then resolve.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HEAD_BYTES: usize = 8192;

/// The per-connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for a complete HTTP/1 request head; `None` disables the limit.
    pub header_read_timeout: Option<Duration>,
    /// Largest request head in bytes (raised to 8192, hyper's minimum).
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    /// The limits from the settings.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            header_read_timeout: settings.http.header_read_timeout(),
            max_header_bytes: settings.http.max_header_bytes,
        }
    }
}

fn builder(limits: ConnectionLimits) -> Builder<TokioExecutor> {
    let head = limits.max_header_bytes.max(MIN_HEAD_BYTES);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX));
    builder
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new connections,
/// in-flight requests answered, idle connections closed. Resolves once every connection is gone
/// (callers bound that wait themselves).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let builder = Arc::new(builder(limits));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // As axum::serve: a failed accept (a connection reset before it was taken,
                    // or no file descriptors left) must not end the server; back off briefly
                    // when it is about resources.
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header timer starts once it reads a request head, but telling HTTP/1
            // from HTTP/2 comes first and waits for the first bytes without a limit: a client
            // that connects and sends nothing would be held forever. So the first byte gets
            // the same limit (a head thus has at most twice the timeout in all).
            if let Some(limit) = first_byte {
                let mut probe = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(limit, stream.peek(&mut probe)).await,
                    Ok(Ok(1..))
                ) {
                    return;
                }
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            // A header timeout, an oversized head or a client hanging up ends up here; it says
            // nothing about the server, so it is not worth more than a debug line.
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
