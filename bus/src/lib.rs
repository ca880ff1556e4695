//! Messaging: the integration-event contract (envelope, subjects, JSON Schemas), the
//! transactional outbox relay to NATS JetStream, the inbound subscribers and the dead-letter
//! stream.
//!
//! Depends on `order-domain` (event types) and `order-projections` (the commit-safe feed the relay
//! reads). It must not depend on the HTTP layer (`api`): inbound messages are turned into commands
//! through a handler the application supplies.
//!
//! # Layout
//! - [`subjects`]: event type → `order.<snake_case>` subject, with a test prefix.
//! - [`envelope`]: the published envelope (docs/contract.md §6) and its headers.
//! - [`encode`]: stored events to messages for the relay, copying the stored payload text.
//! - [`schema`]: JSON Schemas per event type and version, validation, the committed folder.
//! - [`asyncapi`]: the AsyncAPI 3.0 document served at `/asyncapi.json`.
//! - [`connect`]: `NATS_URL` as a server list (one URL, or a comma-separated list for a
//!   JetStream cluster), credentials, TLS and the production rule for the NATS connection.
//! - [`stream`]: creates or updates the `TICKETTOKEN_EVENTS` stream (nats-server 2.9 features).
//! - [`relay`]: the outbox relay loop.
//! - [`inbound`]: payment, dispute and ticket subscribers with an exactly-once effect.
//! - [`dlq`]: the dead-letter stream `ORDER_SERVICE_DLQ`, per-order holds, list and redrive.
//! - [`catchup`]: history for subscribers: the paged feed read, the catch-up-then-live
//!   handoff, and re-publishing a range.
//! - [`error`]: the crate's error type.

pub mod asyncapi;
pub mod catchup;
pub mod connect;
pub mod dlq;
pub mod encode;
pub mod envelope;
pub mod error;
pub mod inbound;
pub mod relay;
pub mod schema;
pub mod stream;
pub mod subjects;

pub use envelope::{Envelope, Outgoing};
pub use error::BusError;
pub use relay::{Relay, RelayConfig, RelayOutcome, RELAY_CONSUMER};
pub use stream::{ensure_stream, StreamSpec};
pub use subjects::Subjects;
