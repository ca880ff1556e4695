//! The AsyncAPI 3.0 document of what this service publishes: one channel per subject, one
//! message per event type (the envelope, with `payload` pointing at that type's schema).
//!
//! Generated from the same types as [`crate::schema`], so the document, the committed schema
//! folder and the relay's validation always agree. Payload schemas are emitted in draft-07
//! style (`definitions`-free, refs into `#/components/schemas`), which is the AsyncAPI default
//! schema format, so generic AsyncAPI tooling reads it without a `schemaFormat`.

use order_domain::events::version_of;
use order_domain::OrderEvent;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::envelope::{Envelope, CONTENT_TYPE};
use crate::schema::subschema;
use crate::subjects::{integration_type, Subjects};

/// The document's file name in the committed schema folder.
pub const FILE_NAME: &str = "asyncapi.json";

/// Where component refs point.
const COMPONENTS: &str = "#/components/schemas/";

/// `OrderCreated` → `publishOrderCreated`.
fn operation_id(domain_type: &str) -> String {
    format!("publish{domain_type}")
}

/// Builds the document for subjects under `subjects`' prefix (empty in production).
pub fn document(subjects: &Subjects) -> Value {
    let mut generator = SchemaSettings::draft07()
        .for_serialize()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let envelope_ref = generator.subschema_for::<Envelope>().to_value();

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for &domain_type in &OrderEvent::TYPES {
        let (Some(kind), Some(payload)) = (
            integration_type(domain_type),
            subschema(&mut generator, domain_type),
        ) else {
            continue;
        };
        let version = version_of(domain_type);
        let address = subjects.prefixed(&kind);
        messages.insert(
            kind.clone(),
            json!({
                "name": kind,
                "title": domain_type,
                "summary": format!("{domain_type} (payload version {version})"),
                "contentType": CONTENT_TYPE,
                "headers": { "$ref": format!("{COMPONENTS}NatsHeaders") },
                "payload": {
                    "allOf": [
                        envelope_ref,
                        {
                            "type": "object",
                            "properties": {
                                "type": { "const": kind },
                                "version": { "const": version },
                                "payload": payload.to_value(),
                            }
                        }
                    ]
                },
                "correlationId": { "location": "$message.payload#/correlationId" },
            }),
        );
        channels.insert(
            kind.clone(),
            json!({
                "address": address,
                "messages": { kind.clone(): { "$ref": format!("#/components/messages/{kind}") } },
            }),
        );
        operations.insert(
            operation_id(domain_type),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{kind}") },
                "messages": [ { "$ref": format!("#/channels/{kind}/messages/{kind}") } ],
            }),
        );
    }

    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "NatsHeaders".to_owned(),
        json!({
            "type": "object",
            "required": ["Nats-Msg-Id", "traceparent", "content-type"],
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "Equal to the envelope id; JetStream deduplicates on it."
                },
                "traceparent": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                    "description": "W3C trace context of the command that recorded the event."
                },
                "content-type": { "const": CONTENT_TYPE }
            }
        }),
    );

    json!({
        "asyncapi": "3.0.0",
        "id": "urn:tickettoken:order-service",
        "info": {
            "title": "order-service integration events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every committed order event, published once per event id (JetStream \
                deduplicates on Nats-Msg-Id) and in sequence order per order, on stream \
                TICKETTOKEN_EVENTS. Consumers should still treat `id` as the idempotency key and \
                `sequenceNumber` as the per-order order.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves a local `#/a/b` ref against the document.
    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        doc.pointer(pointer)
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_subject_is_a_channel_with_its_message() {
        let doc = document(&Subjects::new("t1"));
        assert_eq!(doc["asyncapi"], "3.0.0");
        let channels = doc["channels"].as_object().unwrap();
        assert_eq!(channels.len(), OrderEvent::TYPES.len());
        assert_eq!(channels["order.created"]["address"], "t1.order.created");
        assert_eq!(channels["order.archived"]["address"], "t1.order.archived");
        let created = &doc["components"]["messages"]["order.created"]["payload"]["allOf"][1];
        assert_eq!(created["properties"]["version"]["const"], "2.0");
        assert_eq!(
            created["properties"]["payload"]["$ref"],
            "#/components/schemas/OrderCreated"
        );
    }

    #[test]
    fn every_ref_resolves_inside_the_document() {
        let doc = document(&Subjects::new(""));
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for r in all {
            assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
        }
    }
}
