//! event-service: what the refund saga needs to know about an event.
//!
//! Every read falls back to a safe default. For refunds the event only ever widens eligibility
//! (a cancelled or postponed event is refundable after its start), so the safe default is an
//! event of unknown status: it widens nothing, and the order's own rules decide.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::peer::{Operation, PeerClient};

/// `GET /internal/events/{eventId}`.
pub const GET_EVENT: Operation = Operation::read("getEvent");

/// Every operation of the client, one breaker each.
pub const OPERATIONS: &[Operation] = &[GET_EVENT];

/// An event's status, as far as refunds care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Scheduled,
    #[serde(alias = "canceled")]
    Cancelled,
    Postponed,
    Completed,
    /// Anything else, and the fallback.
    #[serde(other)]
    Unknown,
}

/// An event as event-service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventInfo {
    pub id: Uuid,
    pub status: EventStatus,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Set on the fallback answer: event-service could not be asked.
    #[serde(skip)]
    pub fallback: bool,
}

impl EventInfo {
    /// The safe default: status unknown, start unknown.
    pub fn unknown(id: Uuid) -> Self {
        Self {
            id,
            status: EventStatus::Unknown,
            starts_at: None,
            fallback: true,
        }
    }

    /// Whether the event was called off or moved, which makes its orders refundable even
    /// after the original start.
    pub fn cancelled_or_postponed(&self) -> bool {
        matches!(self.status, EventStatus::Cancelled | EventStatus::Postponed)
    }
}

/// The event-service client.
#[derive(Debug, Clone)]
pub struct EventClient {
    peer: PeerClient,
}

impl EventClient {
    /// Wraps a peer client built with [`OPERATIONS`].
    pub fn new(peer: PeerClient) -> Self {
        Self { peer }
    }

    /// The underlying peer client (breaker states, service name).
    pub fn peer(&self) -> &PeerClient {
        &self.peer
    }

    /// The event; [`EventInfo::unknown`] when event-service cannot say.
    pub async fn get_event(&self, event_id: Uuid) -> EventInfo {
        let target = format!("/internal/events/{event_id}");
        match self.peer.get_json::<EventInfo>(GET_EVENT, &target).await {
            Ok(event) => event,
            Err(e) => self
                .peer
                .fall_back(GET_EVENT, &e, EventInfo::unknown(event_id)),
        }
    }
}
