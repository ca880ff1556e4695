//! The application seam: [`Application::build`] wires settings into a bound server,
//! [`Application::port`] tells tests where it listens, and
//! [`Application::run_until_stopped`] serves until the shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, StatusCode};
use axum::routing::{get, post};
use axum::{middleware, Router};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::commands::Commands;
use crate::app::queries::Queries;
use crate::app::store::OrderStore;
use crate::auth::{
    authenticate, AuthConfigError, Authenticator, CallerPolicy, KeyRing, NonceStore, RoutePolicy,
};
use crate::clients::ServiceClients;
use crate::config::{AppEnv, Settings, DEV_SECRET};
use crate::jobs::JobRegistry;
use crate::lookup::OrderLookup;
use crate::read_side::ReadSide;
use crate::routes::{commands, events, health, jobs as jobs_route, queries};
use crate::{db, deadline, error, jobs, openapi, request_context, workers};

/// Shared by every handler and worker. One `Arc` clone: axum clones the state for every
/// extractor and `from_fn_with_state` layer of every request, and cloning the handles one by
/// one (pool, store, clients, batchers, each with atomics of its own) measured about a tenth
/// of the service's CPU per signed read.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds; reached through `Deref`, so `state.pool` reads as a field.
pub struct Shared {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub store: OrderStore,
    pub auth: Authenticator,
    /// `None` only when NATS could not be configured at all; readiness reports it.
    pub nats: Option<async_nats::Client>,
    /// Signed, retried, breaker-guarded clients of payment, ticket and event services.
    pub clients: ServiceClients,
    /// This replica's view of the scheduled jobs, served at `GET /internal/jobs`.
    pub jobs: JobRegistry,
    /// By-id order reads, batched across concurrent requests.
    pub orders: OrderLookup,
    /// The command use cases the handlers call.
    pub commands: Commands,
    /// The lookup use cases the handlers call.
    pub queries: Queries,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Headers whose values must never reach a log line (tower-http marks them sensitive, so
/// `Debug` and trace output show `Sensitive`): both schemes' signatures, and the hmac-v1 nonce,
/// because a nonce next to its signature is, with the request line, a complete credential
/// until the nonce is recorded.
pub const SENSITIVE: [HeaderName; 4] = [
    HeaderName::from_static("x-internal-auth"),
    HeaderName::from_static("x-internal-signature"),
    HeaderName::from_static("x-request-nonce"),
    HeaderName::from_static("authorization"),
];

/// The full router with its middleware stack.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    // Each command is guarded by its own caller policy (crate::auth::RoutePolicy).
    let guard = |policy| middleware::from_fn_with_state(state.auth.guard(policy), authenticate);
    // Commands whose handlers hand the replay key to their append: one commit per command.
    // Not the refund, which calls out before its append, nor the reads, which are batched.
    let appending = |policy| {
        middleware::from_fn_with_state(state.auth.guard(policy).deferring_nonce(), authenticate)
    };
    let commands = Router::new()
        .route(
            "/api/v1/orders",
            post(commands::create_order).route_layer(appending(RoutePolicy::OrdersCreate)),
        )
        .route(
            "/api/v1/orders/{id}/reserve",
            post(commands::reserve_order).route_layer(appending(RoutePolicy::OrdersReserve)),
        )
        .route(
            "/api/v1/orders/{id}/confirm",
            post(commands::confirm_order).route_layer(appending(RoutePolicy::OrdersConfirm)),
        )
        .route(
            "/api/v1/orders/{id}/cancel",
            post(commands::cancel_order).route_layer(appending(RoutePolicy::OrdersCancel)),
        )
        .route(
            "/api/v1/orders/{id}/refunds",
            post(commands::refund_order).route_layer(guard(RoutePolicy::OrdersRefunds)),
        )
        .route(
            "/api/v1/orders/{id}/tickets",
            post(commands::record_tickets).route_layer(appending(RoutePolicy::OrdersTickets)),
        )
        .route(
            "/api/v1/orders/{id}/events",
            get(commands::order_events).route_layer(guard(RoutePolicy::OrdersEvents)),
        )
        .route(
            "/internal/events",
            get(events::events).route_layer(guard(RoutePolicy::EventsFeed)),
        );

    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/asyncapi.json", get(health::asyncapi))
        // Operations surface, unauthenticated like health: scraped and read from inside the
        // cluster (crate::metrics and crate::openapi say why).
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(openapi::swagger_ui())
        .merge(commands)
        .merge(queries::router(&state))
        .merge(jobs_route::router(&state))
        .with_state(state)
        // Layers run bottom-up on the way in: the last added is the outermost.
        .layer(middleware::from_fn_with_state(
            settings.http.request_db_deadline(),
            deadline::request_deadline,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.http.request_timeout(),
        ))
        .layer(RequestBodyLimitLayer::new(settings.http.request_body_limit))
        .layer(middleware::from_fn_with_state(
            settings.http.request_body_limit,
            crate::oversized::drain_oversized,
        ))
        .layer(middleware::from_fn(error::error_envelope))
        .layer(CatchPanicLayer::new())
        // Outside the panic and error layers, so it counts the status the caller gets.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .layer(middleware::from_fn(request_context::request_context))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new(SENSITIVE))
}

/// A built, bound, not yet serving application.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Creates the database if needed, migrates, connects and binds.
    ///
    /// # Errors
    /// When Postgres is unreachable, a migration fails, or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database.url.expose_secret();
        db::create_and_migrate(url).await?;
        let pool = db::pool(url, settings.database.max_connections)?;
        Self::build_with_pool(settings, pool).await
    }

    /// Builds over an existing, migrated pool (tests hand in a fresh database per test).
    ///
    /// # Errors
    /// When the database's transaction ids are behind the feed's stored ones (after a logical
    /// restore), or the address cannot be bound.
    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        // First: series emitted before the recorder exists are dropped.
        crate::metrics::install();
        // Before any reader starts: after a logical restore they would all wait forever
        // without a word, so the service refuses to start and says what to do.
        order_projections::feed::check_transaction_ids_ahead(&pool)
            .await
            .context("refusing to start: the event feed cannot make progress")?;
        let auth = authenticator(&settings, pool.clone())?;
        // Before anything connects: a plain-HTTP peer in production stops start-up here.
        let clients = ServiceClients::from_settings(&settings)
            .context("refusing to start with invalid service client settings")?;
        let nats = Some(connect_nats(&settings).await?);
        let store = OrderStore::new(pool.clone());
        let orders = OrderLookup::new(pool.clone());
        let reads = ReadSide::new(
            pool.clone(),
            orders.clone(),
            settings
                .database
                .read_url
                .as_ref()
                .map(ExposeSecret::expose_secret),
            settings.database.max_connections,
            settings.read_model.max_lag(),
        )?;
        // Before serving: reads go to the standby only once a probe has found it sound.
        reads.probe_once().await;
        let read_wait = settings.read_model.wait();
        let state = AppState(Arc::new(Shared {
            commands: Commands::new(store.clone(), clients.clone()),
            queries: Queries::new(pool.clone(), reads, store.clone(), read_wait),
            store,
            orders,
            auth,
            pool,
            nats,
            clients,
            settings: Arc::new(settings),
            jobs: JobRegistry::new(),
        }));
        jobs::register_all(&state);
        let listener = TcpListener::bind(state.settings.http.addr)
            .await
            .with_context(|| format!("cannot bind {}", state.settings.http.addr))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            port,
            state,
        })
    }

    /// The bound port (useful when the configured port was 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state handlers see, for tests that drive background work directly.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP and runs the background workers and scheduled jobs until `shutdown`
    /// resolves (SIGTERM or SIGINT in `main`). Then, within `SHUTDOWN_TIMEOUT_SECS` of it:
    ///
    /// 1. the listener stops accepting, idle connections close, and in-flight requests finish
    ///    with complete responses;
    /// 2. meanwhile, job runs stop at their next safe point (between two orders) and release
    ///    their leader locks;
    /// 3. once HTTP has drained, the other workers (relay, projector, consumers) stop at their
    ///    next safe point, after the events of the last requests;
    /// 4. the pool closes.
    ///
    /// # Errors
    /// When the server fails, or draining takes longer than the timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let jobs_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        workers::spawn_all(&self.state, &stop, &tracker);
        if self.state.settings.jobs.enabled {
            jobs::spawn(&self.state, &jobs_stop, &tracker);
        }
        tracker.close();

        let signalled = CancellationToken::new();
        let signal = signalled.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });

        let app = router(self.state.clone());
        tracing::info!(port = self.port, "order-service listening");
        let drain = Duration::from_secs(self.state.settings.shutdown_timeout_secs);
        // Not axum::serve: it cannot set a header read timeout or a head size limit
        // (crate::server says why both matter).
        let server = crate::server::serve(
            self.listener,
            app,
            crate::server::ConnectionLimits::from_settings(&self.state.settings),
            signalled.clone().cancelled_owned(),
        );
        let mut server = std::pin::pin!(server);
        let (served, deadline) = tokio::select! {
            () = &mut server => (Ok(()), tokio::time::Instant::now() + drain),
            () = signalled.cancelled() => {
                let deadline = tokio::time::Instant::now() + drain;
                tracing::info!(timeout = ?drain, "shutting down: no new connections; draining HTTP and stopping jobs");
                jobs_stop.cancel();
                let result = match tokio::time::timeout_at(deadline, &mut server).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(anyhow::anyhow!(
                        "in-flight HTTP requests did not finish within {drain:?}"
                    )),
                };
                (result, deadline)
            }
        };
        jobs_stop.cancel();
        stop.cancel();
        let workers_stopped = tokio::time::timeout_at(deadline, tracker.wait()).await;
        // Only reads use the standby, and HTTP has drained: its pool can close whatever the
        // workers do.
        self.state.queries.reads().close().await;
        if workers_stopped.is_err() {
            anyhow::bail!("background workers did not stop within {drain:?}");
        }
        self.state.pool.close().await;
        tracing::info!("order-service stopped");
        served
    }
}

/// Builds request authentication from settings. In production a missing, default or short
/// secret stops start-up here rather than letting the service accept weakly signed calls. In
/// any environment, so does the published development secret (the default outside production)
/// on an address that is not loopback: `APP_ENV` defaults to development, and a forgotten
/// `APP_ENV` must not put a service anyone can sign for on the network.
fn authenticator(settings: &Settings, pool: PgPool) -> anyhow::Result<Authenticator> {
    let keys = KeyRing::from_config(
        Some(settings.shared_secret().expose_secret()),
        settings
            .auth
            .secret_previous
            .as_ref()
            .map(ExposeSecret::expose_secret),
        settings
            .auth
            .service_keys
            .as_ref()
            .map(ExposeSecret::expose_secret),
    )?;
    if !settings.http.addr.ip().is_loopback() && keys.holds(DEV_SECRET.as_bytes()) {
        return Err(AuthConfigError::DevelopmentSecretExposed {
            addr: settings.http.addr,
        })
        .context("refusing to start with the development secret");
    }
    if settings.app_env == AppEnv::Production {
        keys.validate_for_production()
            .context("refusing to start with a weak INTERNAL_SERVICE_SECRET or service key")?;
    }
    let callers = CallerPolicy::from_config(
        Some(&settings.auth.allowed_services),
        settings.auth.route_callers.as_deref(),
    )?;
    Ok(Authenticator::new(keys, callers, NonceStore::new(pool)))
}

/// Connects to NATS (the servers of NATS_URL, through [`order_bus::connect::NatsSecurity::connect`]).
/// A connection the production rule refuses, a credential the server refuses, a failed TLS
/// handshake or an unreadable credential file stops start-up with an error naming the setting:
/// retrying cannot fix them. An unreachable server does not block start-up: the client keeps
/// retrying in the background, and readiness reports the state meanwhile. Reconnect attempts
/// back off to at most one a second (the client's default is 4 s), so that the relay, which
/// resumes as soon as the client is connected again, drains a broker outage's backlog within
/// seconds of its end.
async fn connect_nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    settings
        .check_nats_production()
        .context("refusing to start")?;
    let tune = |options: async_nats::ConnectOptions| {
        options.reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts).unwrap_or(u32::MAX).min(10);
            Duration::from_millis(50u64.saturating_mul(1 << exp)).min(Duration::from_secs(1))
        })
    };
    settings
        .nats_security()
        .connect(
            settings.nats.url.expose_secret(),
            Duration::from_secs(2),
            tune,
        )
        .await
        .context("refusing to start")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower::ServiceExt;

    use super::*;

    /// The layer as `router` mounts it marks every signature header sensitive, so no log line
    /// that prints headers can show one.
    #[tokio::test]
    async fn signature_and_nonce_headers_are_marked_sensitive() {
        async fn report(headers: HeaderMap) -> String {
            let mut seen: Vec<String> = headers
                .iter()
                .map(|(name, value)| format!("{name}={}", value.is_sensitive()))
                .collect();
            seen.sort();
            seen.join(",")
        }
        let app = Router::new()
            .route("/", get(report))
            .layer(SetSensitiveRequestHeadersLayer::new(SENSITIVE));
        let request = Request::get("/")
            .header("x-internal-auth", "a".repeat(64))
            .header("x-internal-signature", "b".repeat(64))
            .header("x-request-nonce", "c".repeat(32))
            .header("x-service-name", "payment-service")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "x-internal-auth=true,x-internal-signature=true,x-request-nonce=true,x-service-name=false"
        );
    }
}
