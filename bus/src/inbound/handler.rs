//! The seam between the subscriber (this crate) and the application (`api`), which turns a
//! message into a command. The bus must not depend on the application, so the application
//! implements [`InboundHandler`] and hands it to the [`Subscriber`](super::Subscriber).

use std::future::Future;

use super::message::InboundMessage;

/// What the subscriber knows about one delivery, beyond the message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContext {
    /// The subject it arrived on, with any prefix.
    pub subject: String,
    /// Its sequence in the events stream.
    pub stream_sequence: u64,
    /// The delivery count, 1 for the first delivery.
    pub attempt: u64,
    /// The W3C `traceparent` header, when the producer sent one.
    pub traceparent: Option<String>,
    /// Set when the message was republished from the dead-letter stream: its DLQ sequence.
    pub redrive_of: Option<u64>,
}

/// Why a handler could not apply a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// It can never succeed as it is (unknown order, a domain rule refuses it): the message is
    /// parked in the dead-letter stream and its order is held behind it.
    #[error("{0}")]
    Permanent(String),
    /// It may succeed later (the database is down, a write race kept losing): the message is
    /// redelivered after a backoff until its deliveries run out, and only then parked.
    #[error("{0}")]
    Transient(String),
}

impl HandleError {
    /// Whether a retry can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// Applies inbound messages. Implementations must be idempotent by the message's natural key
/// (payment intent, dispute id, ticket id): the inbox catches repeats of a finished message, but
/// a crash between the effect and the inbox record redelivers a message whose effect is already
/// stored.
pub trait InboundHandler: Send + Sync + 'static {
    /// Applies one message.
    ///
    /// # Errors
    /// [`HandleError::Permanent`] to park it, [`HandleError::Transient`] to retry it.
    fn handle(
        &self,
        msg: &InboundMessage,
        ctx: &MessageContext,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;
}

impl<H: InboundHandler> InboundHandler for std::sync::Arc<H> {
    fn handle(
        &self,
        msg: &InboundMessage,
        ctx: &MessageContext,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        H::handle(self, msg, ctx)
    }
}
