//! The published envelope (DESIGN section 8, normative) and its NATS headers.
//!
//! Every field is derived from the stored event alone (plus the order's tenant), so publishing
//! the same event twice yields byte-identical messages with the same `Nats-Msg-Id`: that is what
//! lets JetStream's duplicate window absorb the relay's re-sends after a crash.

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use order_projections::FeedEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::BusError;
use crate::subjects::{integration_type, Subjects};

/// Namespace of the UUID v5 event ids. Fixed forever: changing it would give every event a new
/// id and defeat deduplication for consumers that remember ids.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d3e_8a4b_5c6d_9e7f_0a1b_2c3d_4e5f);

/// The tenant of orders that predate tenants (the same default the upcaster uses).
pub const DEFAULT_TENANT: &str = "default";

/// `content-type` of every published message.
pub const CONTENT_TYPE: &str = "application/json";

/// The stable id of an event: UUID v5 of `"<aggregate type>:<aggregate id>:<sequence>"`.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{aggregate_type}:{aggregate_id}:{sequence}").as_bytes(),
    )
}

/// The integration envelope every subscriber of `order.*` parses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// UUID v5 of (aggregate type, aggregate id, sequence); also the `Nats-Msg-Id`.
    pub id: Uuid,
    /// The subject without prefix, e.g. `order.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload's schema version, e.g. `2.0`.
    pub version: String,
    /// `<type>:<aggregateId>:<sequenceNumber>`.
    pub idempotency_key: String,
    /// The event's sequence within its order, starting at 1.
    pub sequence_number: i64,
    pub aggregate_id: String,
    /// Always `Order`.
    pub aggregate_type: String,
    pub tenant_id: String,
    /// When the fact happened, RFC 3339 with milliseconds, UTC (`Z`).
    pub timestamp: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// The event's own fields (camelCase), without the type tag.
    pub payload: Value,
}

/// One event ready to publish: where it goes, what it says, and its trace context.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The full (prefixed) NATS subject.
    pub subject: String,
    pub envelope: Envelope,
    /// The W3C `traceparent` header value.
    pub traceparent: String,
}

impl Outgoing {
    /// Maps a feed event to its envelope. `order_tenant` is the tenant the order was created
    /// under, for events whose own payload and metadata do not name one.
    ///
    /// # Errors
    /// [`BusError::Codec`] for an event type that has no subject.
    pub fn from_feed(
        event: &FeedEvent,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Self, BusError> {
        Self::with_payload(event, event.inner_payload().clone(), subjects, order_tenant)
    }

    /// [`Outgoing::from_feed`], moving the payload out of `event` (which keeps `null`) instead
    /// of copying its JSON tree: for the relay, which needs only the event's position after.
    ///
    /// # Errors
    /// As [`Outgoing::from_feed`].
    pub fn from_feed_taking(
        event: &mut FeedEvent,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Self, BusError> {
        let payload = match &mut event.payload {
            Value::Object(m) if m.len() == 1 => {
                m.values_mut().next().map(Value::take).unwrap_or_default()
            }
            other => other.take(),
        };
        Self::with_payload(event, payload, subjects, order_tenant)
    }

    /// The envelope of `event` around `payload`, its inner payload.
    fn with_payload(
        event: &FeedEvent,
        payload: Value,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Self, BusError> {
        let event_type = integration_type(&event.event_type).ok_or_else(|| {
            BusError::Codec(format!(
                "event {}#{} has unknown type '{}'",
                event.aggregate_id, event.sequence, event.event_type
            ))
        })?;
        let subject = subjects.prefixed(&event_type);
        let id = event_id(&event.aggregate_type, &event.aggregate_id, event.sequence);
        let tenant_id = payload
            .get("tenantId")
            .and_then(Value::as_str)
            .or(order_tenant)
            .or_else(|| event.meta("tenantId"))
            .unwrap_or(DEFAULT_TENANT)
            .to_owned();
        let correlation_id = event
            .meta("correlationId")
            .or_else(|| event.meta("requestId"))
            .map_or_else(|| id.to_string(), str::to_owned);
        let causation_id = event
            .meta("causationId")
            .map_or_else(|| id.to_string(), str::to_owned);
        let envelope = Envelope {
            id,
            idempotency_key: format!("{event_type}:{}:{}", event.aggregate_id, event.sequence),
            event_type,
            version: event.event_version.clone(),
            sequence_number: event.sequence,
            aggregate_id: event.aggregate_id.clone(),
            aggregate_type: event.aggregate_type.clone(),
            tenant_id,
            timestamp: format_timestamp(occurred_at(&payload).unwrap_or(event.recorded_at)),
            correlation_id,
            causation_id,
            payload,
        };
        let traceparent = traceparent(&event.metadata, id);
        Ok(Self {
            subject,
            envelope,
            traceparent,
        })
    }

    /// The message body: the envelope as JSON.
    ///
    /// # Errors
    /// [`BusError::Codec`] if serialization fails (it cannot for these types).
    pub fn body(&self) -> Result<bytes::Bytes, BusError> {
        serde_json::to_vec(&self.envelope)
            .map(bytes::Bytes::from)
            .map_err(|e| BusError::Codec(e.to_string()))
    }

    /// The NATS headers: `Nats-Msg-Id` (= envelope id, for the duplicate window),
    /// `traceparent` and `content-type`.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            self.envelope.id.to_string().as_str(),
        );
        headers.insert("traceparent", self.traceparent.as_str());
        headers.insert("content-type", CONTENT_TYPE);
        headers
    }
}

/// When the fact happened, from the payload (`occurredAt`, or `createdAt` for `OrderCreated`).
fn occurred_at(payload: &Value) -> Option<DateTime<Utc>> {
    ["occurredAt", "createdAt"]
        .iter()
        .filter_map(|k| payload.get(*k).and_then(Value::as_str))
        .find_map(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// RFC 3339 with milliseconds and `Z`, as the seed's consumers parse it.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The W3C trace context to publish with: the one the command ran under when it was recorded,
/// else a child of the recorded trace id, else a trace rooted at the event id. Derived
/// ids come from the event id, so a re-send carries the same header as the first send.
pub fn traceparent(metadata: &Value, event_id: Uuid) -> String {
    if let Some(tp) = metadata
        .get("traceparent")
        .and_then(Value::as_str)
        .filter(|tp| is_traceparent(tp))
    {
        return tp.to_owned();
    }
    let id_hex = event_id.simple().to_string();
    let trace_id = metadata
        .get("traceId")
        .and_then(Value::as_str)
        .filter(|t| is_id(t, 32))
        .map_or_else(|| id_hex.clone(), str::to_ascii_lowercase);
    format!("00-{trace_id}-{}-01", &id_hex[..16])
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids.
fn is_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    matches!(parts.as_slice(), [v, t, s, f]
        if is_hex(v, 2) && *v != "ff" && is_id(t, 32) && is_id(s, 16) && is_hex(f, 2))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A trace or span id: hex of the right length, not all zeros (W3C calls that invalid).
fn is_id(s: &str, len: usize) -> bool {
    is_hex(s, len) && s.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use order_projections::FeedPosition;
    use serde_json::json;

    use super::*;

    fn created(metadata: Value) -> FeedEvent {
        FeedEvent {
            position: FeedPosition::default(),
            aggregate_type: "Order".into(),
            aggregate_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            sequence: 1,
            event_type: "OrderCreated".into(),
            event_version: "2.0".into(),
            payload: json!({"OrderCreated": {
                "orderId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "tenantId": "tenant-acme",
                "createdAt": "2026-11-28T19:30:00.123456Z"
            }}),
            metadata,
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 28, 19, 30, 1).unwrap(),
        }
    }

    #[test]
    fn the_envelope_matches_the_seed_example() {
        let event = created(json!({
            "correlationId": "req-7f3a9c",
            "causationId": "req-7f3a9c",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        }));
        let out = Outgoing::from_feed(&event, &Subjects::new(""), None).unwrap();
        let e = &out.envelope;
        assert_eq!(out.subject, "order.created");
        assert_eq!(e.event_type, "order.created");
        assert_eq!(e.version, "2.0");
        assert_eq!(
            e.idempotency_key,
            "order.created:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b:1"
        );
        assert_eq!(e.sequence_number, 1);
        assert_eq!(e.aggregate_type, "Order");
        assert_eq!(e.tenant_id, "tenant-acme");
        assert_eq!(e.timestamp, "2026-11-28T19:30:00.123Z");
        assert_eq!(e.correlation_id, "req-7f3a9c");
        assert_eq!(e.causation_id, "req-7f3a9c");
        assert_eq!(e.payload["orderId"], "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        assert!(e.payload.get("OrderCreated").is_none(), "no enum tag");
        assert_eq!(e.id.get_version_num(), 5);
        assert_eq!(e.id, event_id("Order", &e.aggregate_id, 1));
        assert_eq!(
            out.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );

        let headers = out.headers();
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(e.id.to_string().as_str())
        );
        assert_eq!(
            headers.get("content-type").map(|v| v.as_str()),
            Some("application/json")
        );

        let wire: Value = serde_json::from_slice(&out.body().unwrap()).unwrap();
        let keys: Vec<&str> = wire
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "id",
            "type",
            "version",
            "idempotencyKey",
            "sequenceNumber",
            "aggregateId",
            "aggregateType",
            "tenantId",
            "timestamp",
            "correlationId",
            "causationId",
            "payload",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = event_id("Order", "x", 1);
        assert_eq!(a, event_id("Order", "x", 1));
        assert_ne!(a, event_id("Order", "x", 2));
        assert_ne!(a, event_id("Order", "y", 1));
    }

    #[test]
    fn missing_metadata_falls_back_to_the_event_id_and_order_tenant() {
        let mut event = created(json!({"traceId": "4BF92F3577B34DA6A3CE929D0E0E4736"}));
        event.event_type = "OrderReserved".into();
        event.sequence = 2;
        event.payload = json!({"OrderReserved": {"expiresAt": "2026-11-28T19:45:00Z"}});
        let out = Outgoing::from_feed(&event, &Subjects::new("t1."), Some("tenant-b")).unwrap();
        let e = &out.envelope;
        assert_eq!(out.subject, "t1.order.reserved");
        assert_eq!(e.event_type, "order.reserved");
        assert_eq!(e.tenant_id, "tenant-b");
        assert_eq!(e.causation_id, e.id.to_string());
        assert_eq!(e.correlation_id, e.id.to_string());
        assert_eq!(
            e.timestamp, "2026-11-28T19:30:01.000Z",
            "recorded_at fallback"
        );
        let id_hex = e.id.simple().to_string();
        assert_eq!(
            out.traceparent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", &id_hex[..16])
        );
        // Same input, same message: re-sends are byte-identical.
        let again = Outgoing::from_feed(&event, &Subjects::new("t1."), Some("tenant-b")).unwrap();
        assert_eq!(again.body().unwrap(), out.body().unwrap());
        assert_eq!(again.traceparent, out.traceparent);
    }

    #[test]
    fn bad_trace_context_is_replaced() {
        let id = event_id("Order", "x", 1);
        for meta in [
            json!({"traceparent": "garbage"}),
            json!({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}),
            json!({}),
        ] {
            let tp = traceparent(&meta, id);
            assert!(is_traceparent(&tp), "{tp}");
        }
    }

    #[test]
    fn unknown_event_types_are_refused() {
        let mut event = created(json!({}));
        event.event_type = "OrderTeleported".into();
        assert!(matches!(
            Outgoing::from_feed(&event, &Subjects::new(""), None),
            Err(BusError::Codec(_))
        ));
    }
}
