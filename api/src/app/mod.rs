//! The application layer: what the service does, whoever asks. Every use case is here,
//! whatever delivers it (an HTTP handler, an inbound message, a job, the refund loop), and
//! each answers with the domain's types or its own, and fails with [`AppError`].
//!
//! # Parts
//! - [`commands`]: create (with its idempotency key and order number), reserve, confirm,
//!   cancel, refund and record tickets.
//! - [`queries`]: the order lookups, with the wait for a minimum version, and the pages of
//!   the event feed.
//! - [`refund`]: the refund saga and the loop that finishes refunds left half-way.
//! - [`messages`]: payment, dispute and ticket messages turned into commands.
//! - [`maintenance`]: the scheduled jobs' use cases (expire, remind, archive, reconcile):
//!   which orders each looks at and what it does with each.
//! - [`store`]: the one write path over the event store, appending through `append` (one
//!   command per statement, or concurrent creates grouped into one).
//! - [`context`]: the [`context::RequestContext`] a use case runs in (ids, tenant, user),
//!   set by whoever delivers the work.
//! - [`error`]: [`AppError`], and its classification into permanent and transient.
//!
//! # Must not depend on
//! The HTTP adapter (`crate::routes`, `crate::error`, `crate::extract`,
//! `crate::request_context`, `crate::auth`'s middleware, `crate::openapi`, `crate::server`),
//! the process (`crate::startup`, `crate::workers`, `crate::cli`, `crate::config`), the NATS
//! wiring (`crate::consumers`), or the jobs' scheduler (`crate::jobs`).
//! Status codes, headers and wire shapes of answers are decided there, not here.

mod append;
pub mod commands;
pub mod context;
pub mod error;
pub mod maintenance;
pub mod messages;
pub mod queries;
pub mod refund;
pub mod store;

pub use error::{AppError, AppResult};
