//! The published envelope (docs/contract.md §6.2, normative) and its NATS headers.
//!
//! Every field is derived from the stored event alone (plus the order's tenant), so publishing
//! the same event twice yields byte-identical messages with the same `Nats-Msg-Id`: that is what
//! lets JetStream's duplicate window absorb the relay's re-sends after a crash.

use std::borrow::Cow;

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
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

// `P` is the payload's representation: a JSON tree (the default, and what subscribers parse),
// or the stored text copied through (`&RawValue`, the relay's: see `crate::encode`). Both
// serialize to the same JSON. (A plain comment: the doc comment is published in the schema.)
/// The integration envelope every subscriber of `order.*` parses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<P = Value> {
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
    pub payload: P,
}

/// One event ready to publish: where it goes, what it says, and its trace context.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing<P = Value> {
    /// The full (prefixed) NATS subject.
    pub subject: String,
    pub envelope: Envelope<P>,
    /// The W3C `traceparent` header value.
    pub traceparent: String,
}

/// What the envelope takes from an event's metadata, borrowed from it where it can be (so the
/// relay builds no tree for the metadata). A key that is absent or not a string counts as
/// absent, and metadata that is not an object names nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta<'a> {
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub causation_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "lenient_str")]
    pub trace_id: Option<Cow<'a, str>>,
}

impl<'a> Meta<'a> {
    /// From stored metadata text.
    pub fn parse(json: &'a str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }

    /// From a metadata tree.
    pub fn of(metadata: &'a Value) -> Self {
        Self::deserialize(metadata).unwrap_or_default()
    }
}

/// A string, or `None` for any other JSON value (which it skips).
fn lenient_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct LenientStr;
    impl<'de> Visitor<'de> for LenientStr {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(LenientStr)
}

/// What an envelope is built from, however the event was read.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    /// The stored (domain) event type, e.g. `OrderCreated`.
    pub event_type: &'a str,
    /// The payload's version after upcasting.
    pub version: &'a str,
    /// The event's own fields (the tenant and the time are read from them).
    pub payload: &'a Value,
    pub meta: &'a Meta<'a>,
    pub recorded_at: DateTime<Utc>,
}

/// The tree-based reference the relay's encoder (`crate::encode`) is tested against; only
/// tests build envelopes this way.
#[cfg(test)]
impl Outgoing {
    /// Maps a feed event to its envelope. `order_tenant` is the tenant the order was created
    /// under, for events whose own payload and metadata do not name one.
    ///
    /// # Errors
    /// [`BusError::Codec`] for an event type that has no subject.
    pub fn from_feed(
        event: &order_projections::FeedEvent,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Self, BusError> {
        let payload = event.inner_payload();
        let meta = Meta::of(&event.metadata);
        let source = Source {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            version: &event.event_version,
            payload,
            meta: &meta,
            recorded_at: event.recorded_at,
        };
        Self::build(&source, payload.clone(), subjects, order_tenant)
    }
}

impl<P> Outgoing<P> {
    /// The envelope of `source` around `payload`, the same fields as `source.payload` in the
    /// representation the caller wants to send.
    ///
    /// # Errors
    /// [`BusError::Codec`] for an event type that has no subject.
    pub fn build(
        source: &Source<'_>,
        payload: P,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Self, BusError> {
        let event_type = integration_type(source.event_type).ok_or_else(|| {
            BusError::Codec(format!(
                "event {}#{} has unknown type '{}'",
                source.aggregate_id, source.sequence, source.event_type
            ))
        })?;
        let subject = subjects.prefixed(&event_type);
        let id = event_id(source.aggregate_type, source.aggregate_id, source.sequence);
        let meta = source.meta;
        let tenant_id = source
            .payload
            .get("tenantId")
            .and_then(Value::as_str)
            .or(order_tenant)
            .or(meta.tenant_id.as_deref())
            .unwrap_or(DEFAULT_TENANT)
            .to_owned();
        let correlation_id = meta
            .correlation_id
            .as_deref()
            .or(meta.request_id.as_deref())
            .map_or_else(|| id.to_string(), str::to_owned);
        let causation_id = meta
            .causation_id
            .as_deref()
            .map_or_else(|| id.to_string(), str::to_owned);
        let envelope = Envelope {
            id,
            idempotency_key: format!("{event_type}:{}:{}", source.aggregate_id, source.sequence),
            event_type,
            version: source.version.to_owned(),
            sequence_number: source.sequence,
            aggregate_id: source.aggregate_id.to_owned(),
            aggregate_type: source.aggregate_type.to_owned(),
            tenant_id,
            timestamp: format_timestamp(occurred_at(source.payload).unwrap_or(source.recorded_at)),
            correlation_id,
            causation_id,
            payload,
        };
        let traceparent = traceparent(meta, id);
        Ok(Self {
            subject,
            envelope,
            traceparent,
        })
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

impl<P: Serialize> Outgoing<P> {
    /// The message body: the envelope as JSON.
    ///
    /// # Errors
    /// [`BusError::Codec`] if serialization fails (it cannot for these types).
    pub fn body(&self) -> Result<bytes::Bytes, BusError> {
        serde_json::to_vec(&self.envelope)
            .map(bytes::Bytes::from)
            .map_err(|e| BusError::Codec(e.to_string()))
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
pub fn traceparent(meta: &Meta<'_>, event_id: Uuid) -> String {
    if let Some(tp) = meta.traceparent.as_deref().filter(|tp| is_traceparent(tp)) {
        return tp.to_owned();
    }
    let id_hex = event_id.simple().to_string();
    let trace_id = meta
        .trace_id
        .as_deref()
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
    use order_projections::{FeedEvent, FeedPosition};
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
            let tp = traceparent(&Meta::of(&meta), id);
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
