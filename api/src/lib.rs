//! The order service itself: its use cases, the HTTP adapter in front of them, the NATS
//! consumers and scheduled jobs that also drive them, the clients of the peer services, and the
//! `order-service` binary.
//!
//! It depends on every other crate of the workspace (`order-domain`, `order-projections`,
//! `order-bus`) and nothing depends on it. Business rules stay in the domain crate; the use
//! cases ([`app`]) gather facts and send commands, and the adapters map their outcomes to HTTP
//! or to a message's acknowledgement.
//!
//! # Layout
//! The application layer:
//! - [`app`]: every use case and its error, [`app::AppError`]: commands, lookups, the refund
//!   saga, inbound messages, the jobs' actions ([`app::maintenance`]), and the context a use
//!   case runs in ([`app::context`]). It depends on no HTTP or process module.
//! - [`lookup`]: by-id order reads, batched; [`read_side`]: the `/internal` queries on a
//!   standby (`READ_DATABASE_URL`), else the primary; [`deadline`]: one deadline per request for
//!   all of its database work.
//! - [`clients`]: signed, retried, breaker-guarded calls to payment, ticket and event services.
//!
//! The HTTP adapter (the only place [`error::ApiError`] appears):
//! - [`routes`]: handlers, one module per resource: parse, call one use case, answer.
//! - [`error`], [`extract`], [`request_context`]: the HTTP error (mapped from
//!   [`app::AppError`] in that one place), extractors, and the middleware that reads the
//!   request context from the headers.
//! - [`auth`]: hmac-v1/v2 verification, caller policy, shared nonce store.
//! - [`server`]: the HTTP accept loop with header read timeout and head size limit;
//!   [`oversized`]: a body over the limit is read and discarded before its 413.
//! - [`metrics`], [`openapi`]: the operations surface: Prometheus `/metrics` with HTTP RED
//!   metrics, and the OpenAPI document at `/openapi.json` with Swagger UI at `/docs`, generated
//!   from the answer types.
//!
//! The other adapters and the process:
//! - [`consumers`]: the inbound subscribers and the dead-letter stream wired from settings.
//! - [`jobs`]: when and where the scheduled jobs run: one leader per job, their breakers and
//!   status.
//! - [`workers`]: the relay, projectors and refund loop as background tasks.
//! - [`config`]: typed settings from the environment, one group per part.
//! - [`startup`]: the [`startup::Application`] seam: build, port, run until stopped.
//! - [`db`]: pool, database creation and migrations; [`telemetry`]: logging set-up;
//!   [`cli`]: the operator subcommands.
//!
//! # Must not depend on
//! No other crate of the service depends on this one (only the tests do). Inside it, [`app`] must not depend on the
//! HTTP adapter, the NATS wiring, the jobs' scheduler or the process modules, and nothing but
//! the HTTP adapter may use [`error::ApiError`].

pub mod app;
pub mod auth;
pub mod cli;
pub mod clients;
pub mod config;
pub mod consumers;
pub mod db;
pub mod deadline;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod lookup;
pub mod metrics;
pub mod openapi;
pub mod oversized;
pub mod read_side;
pub mod request_context;
pub mod routes;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod workers;
