//! The inbound message: `{"id", "type", "payload": {"orderId", ...}}` (docs/contract.md §6.3), parsed
//! in stages so that every rejection says exactly what was wrong.
//!
//! Strict where a mistake would change an order: the envelope fields and every payload field
//! the command needs must be present, typed and non-empty, the `type` must be one this service
//! handles and must match the subject it arrived on. Unknown *extra* fields are tolerated,
//! because producers evolve their messages additively and parking every message after a
//! harmless upgrade would stop all orders.
//!
//! When parsing fails after the order id could be read, the error still carries it, so that
//! the order is held behind the parked message like any other failure.

use order_domain::values::{DisputeOutcome, IssuedTicket};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::family::Family;

/// Longest accepted message id; anything longer is not an id a producer meant.
pub const MAX_ID_LEN: usize = 200;

/// A parsed, validated inbound message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The producer's message id: the inbox's key, stable across re-publishes.
    pub id: String,
    /// The order the message is about.
    pub order_id: Uuid,
    /// What happened, with its typed payload.
    pub event: InboundEvent,
}

impl InboundMessage {
    /// The message's `type`, e.g. `payment.succeeded`.
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }
}

/// Every inbound message type this service acts on, with the payload fields it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundEvent {
    PaymentSucceeded(PaymentSucceeded),
    PaymentFailed(PaymentFailed),
    DisputeCreated(DisputeCreated),
    DisputeUpdated(DisputeUpdated),
    DisputeClosed(DisputeClosed),
    TicketIssued(TicketIssued),
}

impl InboundEvent {
    /// Every handled `type`, in family order.
    pub const TYPES: [&'static str; 6] = [
        "payment.succeeded",
        "payment.failed",
        "dispute.created",
        "dispute.updated",
        "dispute.closed",
        "ticket.issued",
    ];

    /// The wire `type` of this event.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::PaymentSucceeded(_) => "payment.succeeded",
            Self::PaymentFailed(_) => "payment.failed",
            Self::DisputeCreated(_) => "dispute.created",
            Self::DisputeUpdated(_) => "dispute.updated",
            Self::DisputeClosed(_) => "dispute.closed",
            Self::TicketIssued(_) => "ticket.issued",
        }
    }
}

/// `payment.succeeded`: the payment of the order went through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSucceeded {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    /// ISO 4217 code of the money taken; required, and it must be the order's currency for
    /// the payment to confirm it.
    #[serde(default)]
    pub currency: Option<String>,
}

/// `payment.failed`: a payment attempt failed; the order stays payable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub payment_intent_id: String,
    /// Why the provider refused, when it said.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `dispute.created`: a chargeback was opened; refunds lock.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisputeCreated {
    pub dispute_id: String,
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `dispute.updated`: the provider changed an open dispute's status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisputeUpdated {
    pub dispute_id: String,
    pub status: String,
}

/// `dispute.closed`: the dispute ended, won (refunds unlock) or lost (they stay locked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisputeClosed {
    pub dispute_id: String,
    pub outcome: DisputeOutcome,
}

/// `ticket.issued`: ticket-service issued tickets against the order's line items.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketIssued {
    pub tickets: Vec<IssuedTicket>,
}

/// Why a message was rejected before any handler saw it. Always permanent: the same bytes
/// fail the same way every time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What was wrong, for the DLQ's error header and the operator.
    pub reason: String,
    /// The message id, when it could be read.
    pub message_id: Option<String>,
    /// The order, when it could be read: the order is then held behind the parked message.
    pub order_id: Option<Uuid>,
}

impl ParseError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message_id: None,
            order_id: None,
        }
    }
}

/// Parses the body of a message that arrived on `subject_type` (its subject without the test
/// prefix, e.g. `payment.succeeded`) through the consumer of `family`.
///
/// # Errors
/// A [`ParseError`] naming the first problem: size, JSON syntax, shape, `id`, `type`,
/// `payload.orderId`, or a payload field.
pub fn parse(
    family: Family,
    subject_type: &str,
    body: &[u8],
    max_bytes: usize,
) -> Result<InboundMessage, ParseError> {
    if body.len() > max_bytes {
        return Err(ParseError::new(format!(
            "payload of {} bytes exceeds the limit of {max_bytes} bytes",
            body.len()
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::new(format!("not valid JSON: {e}")))?;
    let Value::Object(root) = value else {
        return Err(ParseError::new(format!(
            "wrong shape: expected a JSON object {{\"id\", \"type\", \"payload\"}}, got {}",
            kind_of(&value)
        )));
    };

    let mut err = ParseError::new("");
    // The ids first, so that every later error can still name the message and hold the order.
    let id = read_id(&root);
    err.message_id = id.as_ref().ok().cloned();
    err.order_id = root
        .get("payload")
        .and_then(|p| p.get("orderId"))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let fail = |reason: String| ParseError {
        reason,
        ..err.clone()
    };

    let id = id.map_err(&fail)?;
    let event_type = match root.get("type") {
        None | Some(Value::Null) => return Err(fail("missing `type`".into())),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(fail(format!(
                "`type` must be a string, got {}",
                kind_of(other)
            )))
        }
    };
    if !InboundEvent::TYPES.contains(&event_type) {
        return Err(fail(format!(
            "unknown type '{}': this service handles {}",
            truncate(event_type, 64),
            InboundEvent::TYPES.join(", ")
        )));
    }
    if event_type != subject_type {
        return Err(fail(format!(
            "type '{event_type}' does not match the subject it arrived on ('{}')",
            truncate(subject_type, 64)
        )));
    }
    if Family::of_type(event_type) != Some(family) {
        return Err(fail(format!(
            "type '{event_type}' does not belong to the {} consumer",
            family.as_str()
        )));
    }
    let payload = match root.get("payload") {
        None | Some(Value::Null) => return Err(fail("missing `payload`".into())),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(fail(format!(
                "`payload` must be an object, got {}",
                kind_of(other)
            )))
        }
    };
    let order_id = match payload.get("orderId") {
        None | Some(Value::Null) => return Err(fail("missing `payload.orderId`".into())),
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
            fail(format!(
                "`payload.orderId` is not a UUID: '{}'",
                truncate(s, 64)
            ))
        })?,
        Some(other) => {
            return Err(fail(format!(
                "`payload.orderId` must be a string, got {}",
                kind_of(other)
            )))
        }
    };
    let event = typed_event(event_type, payload).map_err(&fail)?;
    Ok(InboundMessage {
        id,
        order_id,
        event,
    })
}

fn read_id(root: &Map<String, Value>) -> Result<String, String> {
    match root.get("id") {
        None | Some(Value::Null) => Err("missing `id`".into()),
        Some(Value::String(s)) if s.trim().is_empty() => Err("`id` must not be empty".into()),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
            Err(format!("`id` is longer than {MAX_ID_LEN} characters"))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err("`id` contains control characters".into())
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`id` must be a string, got {}", kind_of(other))),
    }
}

fn typed_event(event_type: &str, payload: &Map<String, Value>) -> Result<InboundEvent, String> {
    let event = match event_type {
        "payment.succeeded" => {
            let p: PaymentSucceeded = fields(event_type, payload)?;
            non_empty("paymentIntentId", &p.payment_intent_id)?;
            // Without the currency, a capture in another currency for the same number of
            // cents would pass for the order's total.
            non_empty("currency", p.currency.as_deref().unwrap_or_default())?;
            if p.amount_cents <= 0 {
                return Err(format!(
                    "payload of {event_type}: `amountCents` must be positive, got {}",
                    p.amount_cents
                ));
            }
            InboundEvent::PaymentSucceeded(p)
        }
        "payment.failed" => {
            let p: PaymentFailed = fields(event_type, payload)?;
            non_empty("paymentIntentId", &p.payment_intent_id)?;
            InboundEvent::PaymentFailed(p)
        }
        "dispute.created" => {
            let p: DisputeCreated = fields(event_type, payload)?;
            non_empty("disputeId", &p.dispute_id)?;
            InboundEvent::DisputeCreated(p)
        }
        "dispute.updated" => {
            let p: DisputeUpdated = fields(event_type, payload)?;
            non_empty("disputeId", &p.dispute_id)?;
            non_empty("status", &p.status)?;
            InboundEvent::DisputeUpdated(p)
        }
        "dispute.closed" => {
            let p: DisputeClosed = fields(event_type, payload)?;
            non_empty("disputeId", &p.dispute_id)?;
            InboundEvent::DisputeClosed(p)
        }
        "ticket.issued" => {
            let p: TicketIssued = fields(event_type, payload)?;
            if p.tickets.is_empty() {
                return Err("payload of ticket.issued: `tickets` must not be empty".into());
            }
            for t in &p.tickets {
                non_empty("tickets[].ticketId", &t.ticket_id)?;
            }
            InboundEvent::TicketIssued(p)
        }
        other => return Err(format!("unknown type '{other}'")),
    };
    Ok(event)
}

/// Deserializes the payload's fields, naming the type in the error (serde names the field).
fn fields<T: DeserializeOwned>(
    event_type: &str,
    payload: &Map<String, Value>,
) -> Result<T, String> {
    T::deserialize(Value::Object(payload.clone()))
        .map_err(|e| format!("payload of {event_type}: {e}"))
}

fn non_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("`payload.{field}` must not be empty"))
    } else {
        Ok(())
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts untrusted text that is echoed into an error, on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn parse_json(family: Family, subject: &str, v: &Value) -> Result<InboundMessage, ParseError> {
        parse(family, subject, v.to_string().as_bytes(), 64 * 1024)
    }

    /// The example messages of docs/contract.md §6.3, as the producers send them.
    #[test]
    fn the_contract_examples_parse() {
        let examples = [
            (
                Family::Payment,
                json!({"id": "6f1c2a9e-3b7d-4c1e-9a55-0d2f6b8e4c71", "type": "payment.succeeded",
                "payload": {"orderId": ORDER, "paymentIntentId": "pi_3QmZ8d2eZvKYlo2C", "amountCents": 17870, "currency": "USD"}}),
            ),
            (
                Family::Dispute,
                json!({"id": "a2d0f3c4-5e6b-4f70-8c19-2b3a4d5e6f70", "type": "dispute.created",
                "payload": {"orderId": ORDER, "disputeId": "dp_1NZ8d2eZvKYlo2C", "amountCents": 17870, "reason": "fraudulent"}}),
            ),
            (
                Family::Dispute,
                json!({"id": "c4e1a7b2-9d3f-4e60-a1b2-3c4d5e6f7a80", "type": "dispute.closed",
                "payload": {"orderId": ORDER, "disputeId": "dp_1NZ8d2eZvKYlo2C", "outcome": "won"}}),
            ),
            (
                Family::Ticket,
                json!({"id": "d5f2b8c3-0e4a-4f71-b2c3-4d5e6f7a8b90", "type": "ticket.issued",
                "payload": {"orderId": ORDER, "tickets": [
                    {"itemId": "0190a1b2-c3d4-7e5f-8a9b-111111111111", "ticketId": "tkt_0001"},
                    {"itemId": "0190a1b2-c3d4-7e5f-8a9b-111111111111", "ticketId": "tkt_0002"}]}}),
            ),
        ];
        for (family, v) in examples {
            let subject = v["type"].as_str().expect("type").to_owned();
            let m = parse_json(family, &subject, &v).expect("parses");
            assert_eq!(m.order_id.to_string(), ORDER);
            assert_eq!(m.event_type(), subject);
        }
    }

    #[test]
    fn each_type_reads_its_fields() {
        let m = parse_json(
            Family::Dispute,
            "dispute.closed",
            &json!({"id": "m1", "type": "dispute.closed",
                    "payload": {"orderId": ORDER, "disputeId": "dp_1", "outcome": "lost"}}),
        )
        .expect("parses");
        assert_eq!(
            m.event,
            InboundEvent::DisputeClosed(DisputeClosed {
                dispute_id: "dp_1".into(),
                outcome: DisputeOutcome::Lost
            })
        );
        let m = parse_json(
            Family::Payment,
            "payment.failed",
            &json!({"id": "m2", "type": "payment.failed",
                    "payload": {"orderId": ORDER, "paymentIntentId": "pi_1", "extra": true}}),
        )
        .expect("extra fields are tolerated");
        assert_eq!(
            m.event,
            InboundEvent::PaymentFailed(PaymentFailed {
                payment_intent_id: "pi_1".into(),
                reason: None
            })
        );
    }

    fn reason(family: Family, subject: &str, body: &[u8]) -> ParseError {
        parse(family, subject, body, 1024).expect_err("must be rejected")
    }

    #[test]
    fn bad_input_is_rejected_with_a_clear_reason() {
        let p = Family::Payment;
        let s = "payment.succeeded";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\xff\x00garbage".to_vec(), "not valid JSON"),
            (b"[1,2,3]".to_vec(), "wrong shape"),
            (vec![b' '; 2000], "exceeds the limit of 1024 bytes"),
            (json!({"type": s, "payload": {"orderId": ORDER}}).to_string().into_bytes(), "missing `id`"),
            (json!({"id": 7, "type": s}).to_string().into_bytes(), "`id` must be a string"),
            (json!({"id": "m", "payload": {"orderId": ORDER}}).to_string().into_bytes(), "missing `type`"),
            (json!({"id": "m", "type": "payment.teleported", "payload": {}}).to_string().into_bytes(), "unknown type 'payment.teleported'"),
            (json!({"id": "m", "type": "payment.failed", "payload": {}}).to_string().into_bytes(), "does not match the subject"),
            (json!({"id": "m", "type": s}).to_string().into_bytes(), "missing `payload`"),
            (json!({"id": "m", "type": s, "payload": {"paymentIntentId": "pi"}}).to_string().into_bytes(), "missing `payload.orderId`"),
            (json!({"id": "m", "type": s, "payload": {"orderId": "nope"}}).to_string().into_bytes(), "not a UUID"),
            (json!({"id": "m", "type": s, "payload": {"orderId": ORDER, "paymentIntentId": "pi"}}).to_string().into_bytes(), "missing field `amountCents`"),
            (json!({"id": "m", "type": s, "payload": {"orderId": ORDER, "paymentIntentId": "pi", "amountCents": "12"}}).to_string().into_bytes(), "invalid type"),
            (json!({"id": "m", "type": s, "payload": {"orderId": ORDER, "paymentIntentId": " ", "amountCents": 12}}).to_string().into_bytes(), "must not be empty"),
        ];
        for (body, expected) in cases {
            let e = reason(p, s, &body);
            assert!(
                e.reason.contains(expected),
                "{:?} → {}",
                String::from_utf8_lossy(&body),
                e.reason
            );
        }
    }

    #[test]
    fn a_rejection_still_names_the_message_and_its_order() {
        let e = reason(
            Family::Payment,
            "payment.succeeded",
            json!({"id": "m9", "type": "payment.succeeded", "payload": {"orderId": ORDER}})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(e.message_id.as_deref(), Some("m9"));
        assert_eq!(e.order_id.map(|o| o.to_string()).as_deref(), Some(ORDER));
    }

    #[test]
    fn a_type_of_another_family_is_refused() {
        let e = reason(
            Family::Payment,
            "ticket.issued",
            json!({"id": "m", "type": "ticket.issued",
                   "payload": {"orderId": ORDER, "tickets": [{"itemId": ORDER, "ticketId": "t"}]}})
            .to_string()
            .as_bytes(),
        );
        assert!(
            e.reason.contains("does not belong to the payment consumer"),
            "{}",
            e.reason
        );
    }
}
