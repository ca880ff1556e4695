//! The read side: the commit-safe event feed, checkpoints, relational read models, their queries
//! and replay.
//!
//! Depends on `order-domain` for event types. It must not depend on the HTTP layer (`api`) or on
//! messaging (`bus`): the relay and the jobs read events through this crate's feed, not the other
//! way round.
//!
//! # Layout
//! - [`feed`]: the commit-safe feed every reader uses, and lag measurement.
//! - [`checkpoint`]: per-reader positions in the feed (`load`, `save` with its durability,
//!   `reset`).
//! - [`copies`]: which copy of a projection's tables (live, or one of replay's) a writer targets.
//! - [`runner`]: drives a [`runner::Projector`] (its one method, `apply_batch`) batch by batch,
//!   one replica at a time: each batch and its checkpoint in one sqlx `Transaction`.
//! - [`refund_saga`]: refunds requested but not finished, for the refund retry loop.
//! - [`view`]: the order object every API answer uses (docs/contract.md §3.2).
//! - [`orders`]: the `orders` projector that keeps the order read models: its batched writer
//!   (which replay runs into its copies too), and the full reset and rebuild.
//! - [`queries`]: reads of those models in the shapes of the `/internal` routes.
//! - [`replay`]: online rebuilds into shadow tables, the swap, rollback and per-order rebuilds.
//! - [`postgres`]: Postgres plumbing the crates above share, none of it about orders: the
//!   leader lock, the held connection, the batcher and the commit signal.
//! - [`error`]: the crate's error type.

pub mod checkpoint;
pub mod copies;
pub mod error;
pub mod feed;
pub mod orders;
pub mod postgres;
pub mod queries;
pub mod refund_saga;
pub mod replay;
pub mod runner;
pub mod view;

pub use error::ProjectionError;
pub use feed::{FeedEvent, FeedPosition};
pub use orders::{OrdersProjector, ORDERS_PROJECTION};
pub use runner::{ProjectionRunner, Projector, RunOnce};
pub use view::OrderView;
