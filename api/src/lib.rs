//! The application layer of the order service: configuration, the axum server, request
//! authentication, the command path, and the `order-service` binary's subcommands.
//!
//! It depends on every other crate of the workspace (`order-domain`, `order-projections`,
//! `order-bus`) and nothing depends on it. Business rules stay in the domain crate; this crate
//! gathers facts, sends commands, and maps outcomes to HTTP.
//!
//! # Layout
//! - [`config`]: typed settings from the environment.
//! - [`startup`]: the [`startup::Application`] seam: build, port, run until stopped.
//! - [`server`]: the HTTP accept loop with header read timeout and head size limit.
//! - [`oversized`]: a body over the limit is read and discarded before its 413.
//! - [`auth`]: hmac-v1/v2 verification, caller policy, shared nonce store.
//! - [`batch`]: concurrent requests coalesced into one statement per batch (nonces, reads).
//! - [`lookup`]: by-id order reads, batched.
//! - [`read_side`]: the `/internal` queries on a standby (`READ_DATABASE_URL`), else the primary.
//! - [`store`]: the command path over postgres-es.
//! - [`routes`]: handlers, one module per resource.
//! - [`clients`]: signed, retried, breaker-guarded calls to payment, ticket and event services.
//! - [`saga`]: the refund saga and the loop that finishes refunds left half-way.
//! - [`error`], [`extract`], [`context`]: the error body, extractors and per-request context.
//! - [`db`]: pool, database creation and migrations.
//! - [`deadline`]: one deadline per request for all of its database work.
//! - [`inbound`]: payment, dispute and ticket messages turned into commands; DLQ wiring.
//! - [`jobs`]: scheduled jobs, one leader per job, their breakers and status.
//! - [`metrics`], [`openapi`]: the operations surface: Prometheus `/metrics` with HTTP RED
//!   metrics, and the OpenAPI document at `/openapi.json` with Swagger UI at `/docs`.

pub mod auth;
pub mod batch;
pub mod cli;
pub mod clients;
pub mod config;
pub mod context;
pub mod db;
pub mod deadline;
pub mod error;
pub mod extract;
pub mod inbound;
pub mod jobs;
pub mod lookup;
pub mod metrics;
pub mod openapi;
pub mod oversized;
pub mod read_side;
pub mod routes;
pub mod saga;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod workers;
