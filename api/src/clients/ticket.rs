//! ticket-service: tickets, transfers, availability and prices.
//!
//! The security-critical reads, `getTicket`, `checkTicketNotTransferred` and
//! `getTicketsForOrder`, never fall back: an answer that cannot be had is an error, and the
//! refund saga refuses the refund on it. `checkAvailability` and `getPrices` fall back to empty
//! lists, which callers read as "nothing known to be available or priced".

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ClientError;
use super::peer::{segment, Operation, PeerClient};

/// `GET /internal/tickets/{ticketId}`.
pub const GET_TICKET: Operation = Operation::read("getTicket");
/// `GET /internal/tickets/{ticketId}/transfer-status`.
pub const CHECK_TICKET_NOT_TRANSFERRED: Operation = Operation::read("checkTicketNotTransferred");
/// `GET /internal/orders/{orderId}/tickets`.
pub const GET_TICKETS_FOR_ORDER: Operation = Operation::read("getTicketsForOrder");
/// `GET /internal/ticket-types/availability?eventId=..&ticketTypeIds=a,b`.
pub const CHECK_AVAILABILITY: Operation = Operation::read("checkAvailability");
/// `GET /internal/ticket-types/prices?ticketTypeIds=a,b`.
pub const GET_PRICES: Operation = Operation::read("getPrices");

/// Every operation of the client, one breaker each.
pub const OPERATIONS: &[Operation] = &[
    GET_TICKET,
    CHECK_TICKET_NOT_TRANSFERRED,
    GET_TICKETS_FOR_ORDER,
    CHECK_AVAILABILITY,
    GET_PRICES,
];

/// A ticket as ticket-service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub id: String,
    #[serde(default)]
    pub order_id: Option<Uuid>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub transferred: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransferStatus {
    transferred: bool,
}

#[derive(Debug, Deserialize)]
struct OrderTickets {
    tickets: Vec<Ticket>,
}

/// How many tickets of a type are left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    pub ticket_type_id: Uuid,
    pub available: i64,
}

#[derive(Debug, Deserialize)]
struct AvailabilityList {
    availability: Vec<Availability>,
}

/// The current price of a ticket type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    pub ticket_type_id: Uuid,
    pub price_cents: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize)]
struct PriceList {
    prices: Vec<Price>,
}

/// The ticket-service client.
#[derive(Debug, Clone)]
pub struct TicketClient {
    peer: PeerClient,
}

fn id_list(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl TicketClient {
    /// Wraps a peer client built with [`OPERATIONS`].
    pub fn new(peer: PeerClient) -> Self {
        Self { peer }
    }

    /// The underlying peer client (breaker states, service name).
    pub fn peer(&self) -> &PeerClient {
        &self.peer
    }

    /// One ticket. No fallback.
    ///
    /// # Errors
    /// Any failure, including 404 for an unknown ticket.
    pub async fn get_ticket(&self, ticket_id: &str) -> Result<Ticket, ClientError> {
        let target = format!("/internal/tickets/{}", segment(ticket_id));
        self.peer.get_json(GET_TICKET, &target).await
    }

    /// `true` when the ticket is still with its buyer. No fallback: an error means "not
    /// verified", never "not transferred".
    ///
    /// # Errors
    /// Any failure.
    pub async fn check_ticket_not_transferred(&self, ticket_id: &str) -> Result<bool, ClientError> {
        let target = format!("/internal/tickets/{}/transfer-status", segment(ticket_id));
        let status: TransferStatus = self
            .peer
            .get_json(CHECK_TICKET_NOT_TRANSFERRED, &target)
            .await?;
        Ok(!status.transferred)
    }

    /// Every ticket ticket-service issued for an order. No fallback.
    ///
    /// # Errors
    /// Any failure.
    pub async fn get_tickets_for_order(&self, order_id: Uuid) -> Result<Vec<Ticket>, ClientError> {
        let target = format!("/internal/orders/{order_id}/tickets");
        let list: OrderTickets = self.peer.get_json(GET_TICKETS_FOR_ORDER, &target).await?;
        Ok(list.tickets)
    }

    /// Tickets left per type for an event; empty when ticket-service cannot say.
    pub async fn check_availability(
        &self,
        event_id: Uuid,
        ticket_type_ids: &[Uuid],
    ) -> Vec<Availability> {
        let target = format!(
            "/internal/ticket-types/availability?eventId={event_id}&ticketTypeIds={}",
            id_list(ticket_type_ids)
        );
        match self
            .peer
            .get_json::<AvailabilityList>(CHECK_AVAILABILITY, &target)
            .await
        {
            Ok(list) => list.availability,
            Err(e) => self.peer.fall_back(CHECK_AVAILABILITY, &e, Vec::new()),
        }
    }

    /// Current prices per type; empty when ticket-service cannot say.
    pub async fn get_prices(&self, ticket_type_ids: &[Uuid]) -> Vec<Price> {
        let target = format!(
            "/internal/ticket-types/prices?ticketTypeIds={}",
            id_list(ticket_type_ids)
        );
        match self.peer.get_json::<PriceList>(GET_PRICES, &target).await {
            Ok(list) => list.prices,
            Err(e) => self.peer.fall_back(GET_PRICES, &e, Vec::new()),
        }
    }
}
