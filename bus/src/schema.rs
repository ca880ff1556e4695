//! JSON Schemas of the published payloads, one per event type and version, generated from the
//! domain types with schemars, so the contract cannot drift from the code that writes events.
//!
//! The relay validates every payload against its schema before publishing ([`validate`]);
//! validators are compiled once per process and cached. The same schemas are committed under
//! `bus/schemas/` ([`SCHEMA_DIR`]) for consumers in other languages; a test fails when that
//! folder is out of sync with the types, and `UPDATE_SCHEMAS=1` regenerates it.
//!
//! Schemas describe the payload *as serialized* (schemars' serialize contract): an optional
//! field the writer skips when empty is not required.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use order_domain::events::{self, version_of};
use order_domain::OrderEvent;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::Schema;
use serde_json::Value;

use crate::subjects::integration_type;

/// The committed schema folder of this crate (`bus/schemas`).
pub const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

/// Set to `1` to rewrite [`SCHEMA_DIR`] from the types instead of failing on a difference.
pub const UPDATE_ENV: &str = "UPDATE_SCHEMAS";

/// The file name of an event's schema: `order.created.v2.0.json`.
pub fn file_name(integration_type: &str, version: &str) -> String {
    format!("{integration_type}.v{version}.json")
}

/// Calls `$generator.$method::<T>()` for the payload type of a domain wire name.
macro_rules! for_payload {
    ($name:expr, $generator:expr, $method:ident) => {
        match $name {
            "OrderCreated" => Some($generator.$method::<events::OrderCreated>()),
            "OrderReserved" => Some($generator.$method::<events::OrderReserved>()),
            "OrderConfirmed" => Some($generator.$method::<events::OrderConfirmed>()),
            "OrderCancelled" => Some($generator.$method::<events::OrderCancelled>()),
            "OrderExpired" => Some($generator.$method::<events::OrderExpired>()),
            "OrderRefunded" => Some($generator.$method::<events::OrderRefunded>()),
            "OrderFailed" => Some($generator.$method::<events::OrderFailed>()),
            "PaymentFailed" => Some($generator.$method::<events::PaymentFailed>()),
            "TicketsIssued" => Some($generator.$method::<events::TicketsIssued>()),
            "DisputeOpened" => Some($generator.$method::<events::DisputeOpened>()),
            "DisputeUpdated" => Some($generator.$method::<events::DisputeUpdated>()),
            "DisputeClosed" => Some($generator.$method::<events::DisputeClosed>()),
            "RefundRequested" => Some($generator.$method::<events::RefundRequested>()),
            "RefundFailed" => Some($generator.$method::<events::RefundFailed>()),
            "ReminderSent" => Some($generator.$method::<events::ReminderSent>()),
            "EventReminderSent" => Some($generator.$method::<events::EventReminderSent>()),
            "OrderArchived" => Some($generator.$method::<events::OrderArchived>()),
            "PaymentRejected" => Some($generator.$method::<events::PaymentRejected>()),
            "PaymentReturned" => Some($generator.$method::<events::PaymentReturned>()),
            "PaymentReturnFailed" => Some($generator.$method::<events::PaymentReturnFailed>()),
            _ => None,
        }
    };
}

/// The schema of one published payload.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSchema {
    /// The domain wire name, e.g. `OrderCreated`.
    pub domain_type: &'static str,
    /// The envelope `type`, e.g. `order.created`.
    pub integration_type: String,
    /// The envelope `version`, e.g. `2.0`.
    pub version: &'static str,
    /// A standalone JSON Schema (draft 2020-12).
    pub schema: Value,
}

/// The generator settings the published schemas use.
fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().for_serialize()
}

/// A subschema for a domain wire name from a caller's generator (the AsyncAPI document shares one
/// generator so that common types such as `LineItem` are defined once).
pub fn subschema(generator: &mut SchemaGenerator, domain_type: &str) -> Option<Schema> {
    for_payload!(domain_type, generator, subschema_for)
}

/// Every current payload schema, in the domain's declaration order.
pub fn payload_schemas() -> Vec<PayloadSchema> {
    OrderEvent::TYPES
        .iter()
        .filter_map(|&domain_type| {
            let integration_type = integration_type(domain_type)?;
            let version = version_of(domain_type);
            let mut generator = settings().into_generator();
            let mut schema = for_payload!(domain_type, generator, root_schema_for)?.to_value();
            if let Value::Object(map) = &mut schema {
                // An absolute id names the contract for other languages' tooling; refs inside
                // stay document-local (`#/$defs/...`), so nothing is ever fetched.
                map.insert(
                    "$id".to_owned(),
                    Value::String(format!(
                        "urn:tickettoken:order-service:{}",
                        file_name(&integration_type, version)
                    )),
                );
            }
            Some(PayloadSchema {
                domain_type,
                integration_type,
                version,
                schema,
            })
        })
        .collect()
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// No schema is published for this type and version, so nothing may be published under it.
    #[error("no published schema for {integration_type} v{version}")]
    Unknown {
        integration_type: String,
        version: String,
    },
    /// The payload breaks its schema; the text lists the first violations with their paths.
    #[error("{0}")]
    Invalid(String),
    /// A generated schema did not compile (a bug in the types or the generator).
    #[error("schema {0} does not compile: {1}")]
    Broken(String, String),
}

/// Compiled validators by integration type, then version: looked up per published event with
/// borrowed keys, so without allocating.
struct Registry {
    validators: HashMap<String, HashMap<String, Result<jsonschema::Validator, String>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut validators: HashMap<String, HashMap<_, _>> = HashMap::new();
        for s in payload_schemas() {
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&s.schema)
                .map_err(|e| e.to_string());
            validators
                .entry(s.integration_type)
                .or_default()
                .insert(s.version.to_owned(), validator);
        }
        Registry { validators }
    })
}

/// How many violations a refusal names; the rest are counted.
const MAX_REPORTED: usize = 5;

/// Checks a payload against the schema of its type and version.
///
/// # Errors
/// [`SchemaError::Unknown`] for a type/version with no schema, [`SchemaError::Invalid`] with the
/// violations otherwise.
pub fn validate(integration_type: &str, version: &str, payload: &Value) -> Result<(), SchemaError> {
    let found = registry()
        .validators
        .get(integration_type)
        .and_then(|versions| versions.get(version));
    let validator = match found {
        None => {
            return Err(SchemaError::Unknown {
                integration_type: integration_type.to_owned(),
                version: version.to_owned(),
            })
        }
        Some(Err(e)) => {
            return Err(SchemaError::Broken(
                file_name(integration_type, version),
                e.clone(),
            ))
        }
        Some(Ok(v)) => v,
    };
    // The common case, without collecting (and formatting) errors.
    if validator.is_valid(payload) {
        return Ok(());
    }
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "/" } else { &path })
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut text = errors
        .iter()
        .take(MAX_REPORTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > MAX_REPORTED {
        text.push_str(&format!(" (and {} more)", errors.len() - MAX_REPORTED));
    }
    Err(SchemaError::Invalid(text))
}

/// Every file the schema folder should hold, by name, as pretty JSON with a final newline:
/// the payload schemas and the AsyncAPI document (unprefixed subjects).
pub fn expected_files() -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = payload_schemas()
        .into_iter()
        .map(|s| (file_name(&s.integration_type, s.version), pretty(&s.schema)))
        .collect();
    files.insert(
        crate::asyncapi::FILE_NAME.to_owned(),
        pretty(&crate::asyncapi::document(&crate::subjects::Subjects::new(
            "",
        ))),
    );
    files
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Compares `dir` with [`expected_files`]; returns one line per difference (missing, stale or
/// extra `.json` file). Empty means in sync.
///
/// # Errors
/// When the folder cannot be read.
pub fn out_of_sync(dir: &Path) -> std::io::Result<Vec<String>> {
    let expected = expected_files();
    let mut problems = Vec::new();
    for (name, text) in &expected {
        // Compared as JSON values, not text: key order depends on whether some crate in the
        // build enables serde_json's `preserve_order`, which must not fail the check.
        match std::fs::read_to_string(dir.join(name)) {
            Ok(found) if same_json(&found, text) => {}
            Ok(_) => problems.push(format!("{name} differs from the types")),
            Err(_) => problems.push(format!("{name} is missing")),
        }
    }
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !expected.contains_key(&name) {
                problems.push(format!("{name} matches no current type or version"));
            }
        }
    }
    problems.sort();
    Ok(problems)
}

fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Rewrites `dir` from the types: writes every expected file and removes stale `.json` files.
///
/// # Errors
/// When the folder cannot be written.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let expected = expected_files();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !expected.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, text) in expected {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use order_domain::values::{DisputeOutcome, IssuedTicket, LineItem, OrderStatus};
    use order_domain::Currency;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    /// One real event of every type, serialized as the store does.
    fn samples() -> Vec<OrderEvent> {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 19, 30, 0).unwrap();
        let id = Uuid::nil();
        vec![
            OrderEvent::OrderCreated(events::OrderCreated {
                order_id: id,
                order_number: "ORD-20261128-4F2A9C".into(),
                tenant_id: "tenant-acme".into(),
                user_id: "u".into(),
                event_id: id,
                currency: Currency::parse("USD").unwrap(),
                items: vec![LineItem {
                    id,
                    ticket_type_id: id,
                    quantity: 2,
                    unit_price_cents: 5000,
                }],
                subtotal_cents: 10000,
                fees_cents: 250,
                tax_cents: 120,
                total_cents: 10370,
                expires_at: at,
                event_starts_at: None,
                created_at: at,
            }),
            OrderEvent::OrderReserved(events::OrderReserved {
                expires_at: at,
                occurred_at: at,
            }),
            OrderEvent::OrderConfirmed(events::OrderConfirmed {
                payment_intent_id: "pi_1".into(),
                amount_cents: 10370,
                occurred_at: at,
            }),
            OrderEvent::OrderCancelled(events::OrderCancelled {
                reason: "r".into(),
                previous_status: OrderStatus::Reserved,
                occurred_at: at,
            }),
            OrderEvent::OrderExpired(events::OrderExpired {
                expired_at: at,
                previous_status: OrderStatus::Pending,
                occurred_at: at,
            }),
            OrderEvent::OrderRefunded(events::OrderRefunded {
                refund_id: id,
                amount_cents: 1,
                refunded_total_cents: 1,
                full: false,
                occurred_at: at,
            }),
            OrderEvent::OrderFailed(events::OrderFailed {
                reason: "r".into(),
                occurred_at: at,
            }),
            OrderEvent::PaymentFailed(events::PaymentFailed {
                payment_intent_id: "pi".into(),
                reason: "r".into(),
                occurred_at: at,
            }),
            OrderEvent::TicketsIssued(events::TicketsIssued {
                tickets: vec![IssuedTicket {
                    item_id: id,
                    ticket_id: "t".into(),
                }],
                ticket_count: 1,
                occurred_at: at,
            }),
            OrderEvent::DisputeOpened(events::DisputeOpened {
                dispute_id: "d".into(),
                amount_cents: Some(5),
                reason: None,
                occurred_at: at,
            }),
            OrderEvent::DisputeUpdated(events::DisputeUpdated {
                dispute_id: "d".into(),
                status: "s".into(),
                occurred_at: at,
            }),
            OrderEvent::DisputeClosed(events::DisputeClosed {
                dispute_id: "d".into(),
                outcome: DisputeOutcome::Won,
                refunds_locked: false,
                occurred_at: at,
            }),
            OrderEvent::RefundRequested(events::RefundRequested {
                refund_id: id,
                amount_cents: 1,
                reason: "r".into(),
                occurred_at: at,
            }),
            OrderEvent::RefundFailed(events::RefundFailed {
                refund_id: id,
                reason: "r".into(),
                occurred_at: at,
            }),
            OrderEvent::ReminderSent(events::ReminderSent {
                expires_at: at,
                occurred_at: at,
            }),
            OrderEvent::EventReminderSent(events::EventReminderSent {
                event_starts_at: Some(at),
                occurred_at: at,
            }),
            OrderEvent::OrderArchived(events::OrderArchived {
                final_status: OrderStatus::Paid,
                occurred_at: at,
            }),
            OrderEvent::PaymentRejected(events::PaymentRejected {
                payment_intent_id: "pi".into(),
                amount_cents: 1,
                currency: Some("USD".into()),
                reason: order_domain::values::PaymentRejection::OrderExpired,
                refund_id: id,
                occurred_at: at,
            }),
            OrderEvent::PaymentReturned(events::PaymentReturned {
                refund_id: id,
                payment_intent_id: "pi".into(),
                amount_cents: 1,
                occurred_at: at,
            }),
            OrderEvent::PaymentReturnFailed(events::PaymentReturnFailed {
                refund_id: id,
                payment_intent_id: "pi".into(),
                amount_cents: 1,
                reason: "r".into(),
                occurred_at: at,
            }),
        ]
    }

    fn inner(event: &OrderEvent) -> Value {
        let tagged = serde_json::to_value(event).unwrap();
        tagged[event.event_type()].clone()
    }

    #[test]
    fn every_event_type_has_a_schema_that_accepts_real_events() {
        let samples = samples();
        assert_eq!(samples.len(), OrderEvent::TYPES.len());
        assert_eq!(payload_schemas().len(), OrderEvent::TYPES.len());
        for event in &samples {
            let t = integration_type(event.event_type()).unwrap();
            validate(&t, event.event_version(), &inner(event))
                .unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn broken_payloads_are_refused_with_their_paths() {
        let mut created = inner(&samples()[0]);
        created["totalCents"] = json!("lots");
        created.as_object_mut().unwrap().remove("orderNumber");
        let err = validate("order.created", "2.0", &created).unwrap_err();
        let SchemaError::Invalid(text) = err else {
            panic!("{err:?}")
        };
        assert!(text.contains("totalCents"), "{text}");
        assert!(text.contains("orderNumber"), "{text}");

        let mut reserved = inner(&samples()[1]);
        reserved["expiresAt"] = json!("not a date");
        assert!(
            validate("order.reserved", "1.0", &reserved).is_err(),
            "formats are checked"
        );
    }

    #[test]
    fn unknown_types_and_versions_have_no_schema() {
        let payload = inner(&samples()[0]);
        assert!(matches!(
            validate("order.created", "1.0", &payload),
            Err(SchemaError::Unknown { .. })
        ));
        assert!(matches!(
            validate("order.teleported", "1.0", &payload),
            Err(SchemaError::Unknown { .. })
        ));
    }

    #[test]
    fn optional_fields_skipped_on_write_are_not_required() {
        let schema = payload_schemas()
            .into_iter()
            .find(|s| s.domain_type == "OrderCreated")
            .unwrap()
            .schema;
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(required.contains(&"tenantId"));
        assert!(!required.contains(&"eventStartsAt"));
    }

    /// The committed folder matches the types; `UPDATE_SCHEMAS=1` rewrites it.
    #[test]
    fn the_schema_folder_is_in_sync_with_the_types() {
        let dir = Path::new(SCHEMA_DIR);
        if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
            write_all(dir).unwrap();
        }
        let problems = out_of_sync(dir).unwrap();
        assert!(
            problems.is_empty(),
            "bus/schemas is out of sync with the event types (run with {UPDATE_ENV}=1 to \
             regenerate, and bump the event version if a published shape changed):\n{}",
            problems.join("\n")
        );
    }
}
