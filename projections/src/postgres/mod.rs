//! Postgres plumbing the crates above share, none of it about orders:
//!
//! - [`leader`]: leader election on a session advisory lock, for work that runs on one
//!   replica at a time (the relay in `order-bus`, each scheduled job in `order-api`).
//! - [`held`]: one pool connection kept across the statements of a long-lived user (the
//!   relay's feed reads, the API's batchers).
//! - [`batch`]: concurrent requests coalesced into one statement per batch (the API's nonce
//!   store and by-id reads), with [`batch::idle_hook`] to give a held connection back.
//! - [`commit_signal`]: in-process wake-ups from the writer to the feed's readers.
//!
//! It lives in this crate because it is the lowest one that needs any of it (its projectors
//! wait on the commit signal). It must not depend on the rest of this crate: no feed, no read
//! model, no order type.

pub mod batch;
pub mod commit_signal;
pub mod held;
pub mod leader;

pub use batch::Batcher;
pub use commit_signal::{CommitSignal, CommitWatch, DEFAULT_GATHER};
pub use held::HeldConnection;
pub use leader::{LeaderError, LeaderLock};
