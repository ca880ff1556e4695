//! Messaging: the integration-event contract (envelope, subjects, JSON Schemas), the
//! transactional outbox relay to NATS JetStream, the inbound subscribers and the dead-letter
//! stream.
//!
//! Depends on `order-domain` (event types) and `order-projections` (the commit-safe feed the relay
//! reads). It must not depend on the HTTP layer (`api`): inbound messages are turned into commands
//! through a handler the application supplies.

pub mod error;

pub use error::BusError;
