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
//! - [`config`]: typed settings from the environment.
//! - [`startup`]: the [`startup::Application`] seam: build, port, run until stopped.
//! - [`server`]: the HTTP accept loop with header read timeout and head size limit.
//! - [`oversized`]: a body over the limit is read and discarded before its 413.
//! - [`auth`]: hmac-v1/v2 verification, caller policy, shared nonce store.
//! - [`lookup`]: by-id order reads, batched.
//! - [`app`]: the application layer: every use case and its error, [`app::AppError`]. It
//!   depends on no HTTP or process module.
//! - [`routes`]: handlers, one module per resource: parse, call one use case, answer.
//! - [`read_side`]: the `/internal` queries on a standby (`READ_DATABASE_URL`), else the primary.
//! - [`clients`]: signed, retried, breaker-guarded calls to payment, ticket and event services.
//! - [`error`], [`extract`], [`context`]: the HTTP error ([`error::ApiError`], mapped from
//!   [`app::AppError`] in that one place), extractors and per-request context.
//! - [`db`]: pool, database creation and migrations.
//! - [`deadline`]: one deadline per request for all of its database work.
//! - [`consumers`]: the inbound subscribers and the dead-letter stream wired from settings.
//! - [`jobs`]: scheduled jobs, one leader per job, their breakers and status.
//! - [`metrics`], [`openapi`]: the operations surface: Prometheus `/metrics` with HTTP RED
//!   metrics, and the OpenAPI document at `/openapi.json` with Swagger UI at `/docs`.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clients;
pub mod config;
pub mod consumers;
pub mod context;
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
pub mod routes;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod workers;
