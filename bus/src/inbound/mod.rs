//! Inbound events: payment, dispute and ticket messages that drive orders (docs/contract.md §6),
//! applied with an exactly-once effect.
//!
//! - [`family`]: the three subject families, one durable pull consumer each (nats-server 2.9
//!   honours one `filter_subject` per consumer).
//! - [`message`]: the `{"id", "type", "payload": {"orderId", ...}}` message, parsed strictly.
//! - [`handler`]: the [`InboundHandler`] seam the application implements; its
//!   [`HandleError`] tells a permanent refusal (parked) from a transient failure (retried).
//! - [`config`]: ack wait, backoff, max deliver and limits of a subscriber.
//! - [`inbox`]: ids of handled messages, for the exactly-once effect.
//! - [`subscriber`]: [`Subscriber::run_once`] and [`Subscriber::run_until_stopped`].
//!
//! Exactly once: a message is checked against the inbox before it is handled and recorded after;
//! a crash between the effect and the record is covered by the aggregate's natural keys (the
//! redelivery decides "nothing to do"). Messages that cannot succeed go to the dead-letter
//! stream ([`crate::dlq`]) and hold their order until they are redriven.

pub mod config;
pub mod family;
pub mod handler;
pub mod inbox;
pub mod message;
pub mod subscriber;

pub use config::{SubscriberConfig, PARKING_DELIVERIES};
pub use family::Family;
pub use handler::{HandleError, InboundHandler, MessageContext};
pub use inbox::Inbox;
pub use message::{parse, InboundEvent, InboundMessage, ParseError};
pub use subscriber::{BatchReport, Subscriber};
