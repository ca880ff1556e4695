//! The Order aggregate of the ticketing platform's order engine.
//!
//! This crate holds the business rules and nothing else: the order's state, the commands that ask
//! for a change, the events that record one, the errors that refuse one, and the value types that
//! make bad input unrepresentable. Decisions are pure, synchronous functions
//! ([`Order::decide`] and [`Order::apply`]); any fact from another service (is this ticket
//! transferred? what time is it?) is fetched by the application layer and carried in the command.
//!
//! It must not depend on I/O crates: no sqlx, axum, reqwest, async-nats or tokio in its own code.
//! The optional `cqrs` feature (on by default) adapts [`Order`] to `cqrs_es::Aggregate` so that
//! `postgres-es` can persist it, and supplies the upcasters for stored event versions. That
//! framework uses `tokio::sync::Mutex` inside its `EventSink`, which is why tokio shows up in this
//! crate's dependency graph with the feature on; nothing here awaits I/O.
//!
//! # Layout
//! - [`values`]: money, currency, quantities, statuses, line items.
//! - [`commands`]: imperatives, one struct per intent, grouped in [`OrderCommand`].
//! - [`events`]: past-tense facts with stable wire names and versions, in [`OrderEvent`].
//! - [`errors`]: [`OrderError`], one variant per refused rule.
//! - [`aggregate`]: [`Order`], with `decide` and `apply`.
//! - [`upcast`]: converts stored older event versions to the current shape.
//! - [`testing`]: a given/when/then harness for aggregate tests.

pub mod aggregate;
pub mod commands;
pub mod errors;
pub mod events;
pub mod testing;
pub mod upcast;
pub mod values;

#[cfg(feature = "cqrs")]
mod cqrs;
#[cfg(feature = "cqrs")]
pub use cqrs::upcasters;

pub use aggregate::{Order, ORDER_AGGREGATE_TYPE};
pub use commands::OrderCommand;
pub use errors::{ErrorKind, OrderError};
pub use events::OrderEvent;
pub use values::{Currency, LineItem, OrderStatus};
