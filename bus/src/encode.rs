//! The relay's encoder: stored events, read by [`order_projections::feed::read_raw_after`],
//! to messages, with as little JSON work per event as the contract allows.
//!
//! The payload is copied through from the text Postgres sent (compacted: `jsonb` prints a space
//! after every `:` and `,`), and the metadata is only scanned for the few strings the envelope
//! takes from it. The one JSON tree built per event is the payload's, which schema validation
//! needs. An event whose stored version is not current is upcast through the tree-based
//! [`FeedEvent`] path first, as every other reader of the feed does.
//!
//! The result is the envelope the test-only reference `Outgoing::from_feed` builds for the
//! same event: the same fields, and the same payload JSON but for the order of its keys
//! (Postgres keeps `jsonb` keys shortest first). A re-send of an event is still byte-identical, since the stored
//! text does not change.

use std::borrow::Cow;
use std::collections::BTreeMap;

use order_projections::feed::RawEvent;
use order_projections::FeedEvent;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::envelope::{Meta, Outgoing, Source};
use crate::error::BusError;
use crate::schema;
use crate::subjects::Subjects;

/// One stored event, parsed as far as encoding needs.
#[derive(Debug)]
pub struct Inspected<'r> {
    event: RawEvent<'r>,
    /// After upcasting.
    version: Cow<'r, str>,
    /// The inner payload (without the type tag), compact, to copy into the message.
    text: Box<RawValue>,
    /// The same payload as a tree, for validation and the fields the envelope reads from it.
    tree: Value,
    meta: Meta<'r>,
}

/// Parses `event` for [`Inspected::encode`].
///
/// # Errors
/// [`BusError::Codec`] when the stored payload or metadata is not JSON.
pub fn inspect(event: RawEvent<'_>) -> Result<Inspected<'_>, BusError> {
    let codec = |e: &dyn std::fmt::Display| {
        BusError::Codec(format!(
            "event {}#{} cannot be read: {e}",
            event.aggregate_id, event.sequence
        ))
    };
    let (version, text, tree) = if event.is_current() {
        let inner = inner_payload(event.payload).map_err(|e| codec(&e))?;
        let text = RawValue::from_string(compact(inner.get())).map_err(|e| codec(&e))?;
        let tree = serde_json::from_str(text.get()).map_err(|e| codec(&e))?;
        (Cow::Borrowed(event.event_version), text, tree)
    } else {
        let mut upcast: FeedEvent = event.to_feed_event().map_err(|e| codec(&e))?;
        let tree = match &mut upcast.payload {
            Value::Object(m) if m.len() == 1 => {
                m.values_mut().next().map(Value::take).unwrap_or_default()
            }
            other => other.take(),
        };
        let text = serde_json::value::to_raw_value(&tree).map_err(|e| codec(&e))?;
        (Cow::Owned(upcast.event_version), text, tree)
    };
    Ok(Inspected {
        event,
        version,
        text,
        tree,
        meta: Meta::parse(event.metadata),
    })
}

impl Inspected<'_> {
    /// The tenant the payload names, if any.
    pub fn payload_tenant(&self) -> Option<&str> {
        self.tree.get("tenantId").and_then(Value::as_str)
    }

    /// Where the event is in the feed.
    pub fn position(&self) -> order_projections::FeedPosition {
        self.event.position
    }

    /// The order's id.
    pub fn aggregate_id(&self) -> &str {
        self.event.aggregate_id
    }

    /// The event's envelope around its payload text, after validating the payload against its
    /// schema. `order_tenant` is the tenant the order was created under, for events whose own
    /// payload and metadata do not name one.
    ///
    /// # Errors
    /// [`BusError::Codec`] for an event type with no subject; [`BusError::SchemaViolation`]
    /// for a payload its schema refuses.
    pub fn encode(
        &self,
        subjects: &Subjects,
        order_tenant: Option<&str>,
    ) -> Result<Outgoing<&RawValue>, BusError> {
        let e = &self.event;
        let source = Source {
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            version: &self.version,
            payload: &self.tree,
            meta: &self.meta,
            recorded_at: e.recorded_at,
        };
        let out = Outgoing::build(&source, &*self.text, subjects, order_tenant)?;
        let envelope = &out.envelope;
        schema::validate(&envelope.event_type, &envelope.version, &self.tree).map_err(
            |reason| BusError::SchemaViolation {
                event_id: format!(
                    "{} ({}#{})",
                    envelope.id, envelope.aggregate_id, envelope.sequence_number
                ),
                event_type: format!("{} v{}", envelope.event_type, envelope.version),
                reason: reason.to_string(),
            },
        )?;
        Ok(out)
    }
}

/// The value inside an externally tagged payload (`{"OrderCreated": {...}}`), or the whole
/// payload when it is not a one-key object, as [`FeedEvent::inner_payload`] has it.
fn inner_payload(payload: &str) -> Result<&RawValue, serde_json::Error> {
    if let Ok(tagged) = serde_json::from_str::<BTreeMap<Cow<'_, str>, &RawValue>>(payload) {
        if tagged.len() == 1 {
            if let Some(inner) = tagged.into_values().next() {
                return Ok(inner);
            }
        }
    }
    serde_json::from_str(payload)
}

/// `json` without the whitespace between its tokens, copied in runs. Only ASCII bytes outside
/// strings are dropped, so the text stays the same JSON.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut run = 0;
    let (mut in_string, mut escaped) = (false, false);
    for (i, b) in json.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            // An ASCII byte: both slice ends are character boundaries.
            out.push_str(&json[run..i]);
            run = i + 1;
        }
    }
    out.push_str(&json[run..]);
    out
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use order_projections::FeedPosition;
    use serde_json::json;

    use super::*;
    use crate::envelope::Envelope;

    const ORDER: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    /// A stored `OrderCreated` 2.0 as Postgres prints `jsonb`: a space after `:` and `,`, and
    /// keys shortest first.
    const CREATED: &str = r#"{"OrderCreated": {"items": [{"id": "5f3c1a2b-0d4e-5f6a-8b7c-9d0e1f2a3b4c", "quantity": 2, "ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e", "unitPriceCents": 5000}], "userId": "user: \"quoted\", spaced \\ and ünïcode", "eventId": "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b", "orderId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "taxCents": 120, "currency": "USD", "tenantId": "tenant-acme", "createdAt": "2026-11-28T19:30:00.123456Z", "expiresAt": "2026-11-28T19:45:00Z", "feesCents": 250, "totalCents": 10370, "orderNumber": "ORD-0190A1B2", "eventStartsAt": null, "subtotalCents": 10000}}"#;

    fn stored<'a>(
        event_type: &'a str,
        version: &'a str,
        payload: &'a str,
        metadata: &'a str,
    ) -> RawEvent<'a> {
        RawEvent {
            position: FeedPosition::default(),
            aggregate_type: "Order",
            aggregate_id: ORDER,
            sequence: 1,
            event_type,
            event_version: version,
            payload,
            metadata,
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 28, 19, 30, 1).unwrap(),
        }
    }

    /// What subscribers get from the relay's bytes must be what the tree-based path builds.
    fn assert_same_as_tree_path(event: RawEvent<'_>, order_tenant: Option<&str>) -> Envelope {
        let subjects = Subjects::new("t1.");
        let inspected = inspect(event).unwrap();
        let fast = inspected.encode(&subjects, order_tenant).unwrap();
        let tree =
            Outgoing::from_feed(&event.to_feed_event().unwrap(), &subjects, order_tenant).unwrap();
        let wire: Envelope = serde_json::from_slice(&fast.body().unwrap()).unwrap();
        assert_eq!(wire, tree.envelope);
        assert_eq!(fast.subject, tree.subject);
        assert_eq!(fast.traceparent, tree.traceparent);
        assert_eq!(fast.headers(), tree.headers());
        wire
    }

    #[test]
    fn the_relay_publishes_what_the_envelope_contract_says() {
        let meta = r#"{"userId": 7, "requestId": "req-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "correlationId": {"nested": "no"}}"#;
        let wire = assert_same_as_tree_path(stored("OrderCreated", "2.0", CREATED, meta), None);
        assert_eq!(wire.tenant_id, "tenant-acme");
        assert_eq!(
            wire.correlation_id, "req-1",
            "a non-string correlationId counts as absent"
        );
        assert_eq!(wire.timestamp, "2026-11-28T19:30:00.123Z");
        assert_eq!(
            wire.payload["userId"],
            "user: \"quoted\", spaced \\ and ünïcode"
        );
    }

    #[test]
    fn the_payload_is_copied_compact_and_byte_identical_on_every_send() {
        let event = stored("OrderCreated", "2.0", CREATED, "{}");
        let body = |e| {
            inspect(e)
                .unwrap()
                .encode(&Subjects::new(""), None)
                .unwrap()
                .body()
                .unwrap()
        };
        let first = body(event);
        assert_eq!(first, body(event));
        let text = std::str::from_utf8(&first).unwrap();
        assert!(
            text.contains(r#""payload":{"items":[{"id":"5f3c1a2b"#),
            "{text}"
        );
        assert!(
            text.contains(r#""user: \"quoted\", spaced \\ and ünïcode""#),
            "{text}"
        );
    }

    #[test]
    fn an_old_version_is_upcast_before_it_is_published() {
        let v1 = r#"{"OrderCreated": {"items": [{"quantity": 1, "ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e", "unitPriceCents": 5000}], "userId": "u", "eventId": "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b", "orderId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "currency": "USD", "createdAt": "2026-11-28T19:30:00Z", "expiresAt": "2026-11-28T19:45:00Z", "totalCents": 5250}}"#;
        let wire = assert_same_as_tree_path(
            stored("OrderCreated", "1.0", v1, r#"{"tenantId": "tenant-old"}"#),
            None,
        );
        assert_eq!(wire.version, "2.0");
        assert_eq!(wire.tenant_id, "tenant-old");
        assert_eq!(wire.payload["feesCents"], 250);
    }

    #[test]
    fn events_without_a_tenant_take_the_orders_and_metadata_may_be_anything() {
        let reserved = r#"{"OrderReserved": {"expiresAt": "2026-11-28T19:45:00Z", "occurredAt": "2026-11-28T19:31:00Z"}}"#;
        for meta in [
            "null",
            "[1, 2]",
            r#""text""#,
            r#"{"traceId": "4BF92F3577B34DA6A3CE929D0E0E4736"}"#,
        ] {
            let mut event = stored("OrderReserved", "1.0", reserved, meta);
            event.sequence = 2;
            let wire = assert_same_as_tree_path(event, Some("tenant-b"));
            assert_eq!(wire.tenant_id, "tenant-b");
        }
    }

    #[test]
    fn a_payload_its_schema_refuses_is_not_encoded() {
        let bad = CREATED.replace(r#""totalCents": 10370"#, r#""totalCents": "lots""#);
        let inspected = inspect(stored("OrderCreated", "2.0", &bad, "{}")).unwrap();
        assert!(matches!(
            inspected.encode(&Subjects::new(""), None),
            Err(BusError::SchemaViolation { .. })
        ));
    }

    #[test]
    fn a_payload_that_is_not_json_is_refused_when_inspected() {
        assert!(matches!(
            inspect(stored("OrderCreated", "2.0", "{not json", "{}")),
            Err(BusError::Codec(_))
        ));
    }

    #[test]
    fn compact_drops_only_whitespace_between_tokens() {
        let text = r#"{"a": [1, 2], "b": " x , y : ", "c": "\" : \\", "d": {"e": null}}"#;
        let out = compact(text);
        assert_eq!(
            out,
            r#"{"a":[1,2],"b":" x , y : ","c":"\" : \\","d":{"e":null}}"#
        );
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(parsed["b"], json!(" x , y : "));
    }
}
