//! Upcasters: turn stored older event versions into the current shape on load.
//!
//! Stored events are never rewritten. When a payload's shape changes, its version goes up and a
//! pure function here maps the old JSON to the new. The `cqrs` feature wires these functions into
//! postgres-es's load path; the read side and the CLI call [`upcast_payload`] directly.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::events::ORDER_CREATED_VERSION;

/// Namespace for ids derived during upcasting, so that the same stored row always yields the
/// same item ids.
const UPCAST_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_722d_7570_6361_7374_0000_0001);

/// Whether a payload stored at `event_version` already has its type's current shape, so
/// [`upcast_payload`] would return it unchanged and it can be decoded as it is. A new upcast
/// adds its stored version here too (a test checks the two agree).
pub fn is_current(event_type: &str, event_version: &str) -> bool {
    !matches!((event_type, event_version), ("OrderCreated", "1.0"))
}

/// Brings one stored payload (externally tagged, `{"OrderCreated": {...}}`) to the current
/// version of its event type. Returns the payload and the version it now has.
///
/// `metadata` is the stored metadata object; version 1.0 of `OrderCreated` kept the tenant there.
pub fn upcast_payload(
    event_type: &str,
    event_version: &str,
    aggregate_id: &str,
    payload: Value,
    metadata: &Value,
) -> (Value, String) {
    if is_current(event_type, event_version) {
        return (payload, event_version.to_owned());
    }
    match (event_type, event_version) {
        ("OrderCreated", "1.0") => (
            order_created_v1_to_v2(aggregate_id, payload, metadata),
            ORDER_CREATED_VERSION.to_owned(),
        ),
        _ => (payload, event_version.to_owned()),
    }
}

/// `OrderCreated` 1.0 had no tenant, order number, item ids or fee/tax split: its `totalCents`
/// included any fees. Version 2.0 derives them:
/// - `tenantId` from the metadata, or `"default"`;
/// - `orderNumber` from the order id;
/// - each item's `id` as a UUID v5 of the order id and the item's position;
/// - `subtotalCents` from the items, and `feesCents` as what the old total held beyond it.
pub fn order_created_v1_to_v2(aggregate_id: &str, payload: Value, metadata: &Value) -> Value {
    let Value::Object(mut outer) = payload else {
        return payload;
    };
    let Some(Value::Object(mut e)) = outer.remove("OrderCreated") else {
        return Value::Object(outer);
    };
    let order_id = e
        .get("orderId")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .or_else(|| Uuid::parse_str(aggregate_id).ok())
        .unwrap_or_default();
    let tenant = metadata
        .get("tenantId")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let mut subtotal: i64 = 0;
    if let Some(Value::Array(items)) = e.get_mut("items") {
        for (index, item) in items.iter_mut().enumerate() {
            if let Value::Object(item) = item {
                let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(0);
                let price = item
                    .get("unitPriceCents")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                subtotal = subtotal.saturating_add(quantity.saturating_mul(price));
                let id = Uuid::new_v5(&UPCAST_NAMESPACE, format!("{order_id}:{index}").as_bytes());
                item.entry("id").or_insert_with(|| json!(id));
            }
        }
    }
    let total = e
        .get("totalCents")
        .and_then(Value::as_i64)
        .unwrap_or(subtotal);
    let simple = order_id.simple().to_string().to_uppercase();
    let created = e
        .get("createdAt")
        .and_then(Value::as_str)
        .map(|s| s.get(..10).unwrap_or(s).replace('-', ""))
        .unwrap_or_default();
    let defaults: Map<String, Value> = [
        ("orderId", json!(order_id)),
        ("tenantId", json!(tenant)),
        (
            "orderNumber",
            json!(format!("ORD-{created}-{}", &simple[simple.len() - 6..])),
        ),
        ("subtotalCents", json!(subtotal)),
        ("feesCents", json!((total - subtotal).max(0))),
        ("taxCents", json!(0)),
        ("totalCents", json!(total.max(subtotal))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in defaults {
        e.entry(k).or_insert(v);
    }
    outer.insert("OrderCreated".to_owned(), Value::Object(e));
    Value::Object(outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OrderEvent;

    #[test]
    fn is_current_names_exactly_the_versions_upcast_leaves_alone() {
        let payload = json!({"OrderCreated": {"orderId": "x"}});
        let meta = json!({});
        for (event_type, version) in [
            ("OrderCreated", "1.0"),
            ("OrderCreated", ORDER_CREATED_VERSION),
            ("OrderConfirmed", "1.0"),
        ] {
            let (after, _) = upcast_payload(
                event_type,
                version,
                "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                payload.clone(),
                &meta,
            );
            assert_eq!(
                is_current(event_type, version),
                after == payload,
                "{event_type} {version}"
            );
        }
    }

    #[test]
    fn order_created_v1_becomes_a_valid_v2_event() {
        let v1 = json!({"OrderCreated": {
            "orderId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "userId": "u-1",
            "eventId": "7e6d5c4b-3a2f-4e1d-8c0b-9a8f7e6d5c4b",
            "currency": "USD",
            "items": [{"ticketTypeId": "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e", "quantity": 2, "unitPriceCents": 5000}],
            "totalCents": 10250,
            "expiresAt": "2026-11-28T19:45:00Z",
            "createdAt": "2026-11-28T19:30:00Z"
        }});
        let meta = json!({"tenantId": "tenant-acme"});
        let (v2, version) = upcast_payload(
            "OrderCreated",
            "1.0",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            v1,
            &meta,
        );
        assert_eq!(version, "2.0");
        let OrderEvent::OrderCreated(e) = serde_json::from_value::<OrderEvent>(v2).unwrap() else {
            panic!("not an OrderCreated");
        };
        assert_eq!(e.tenant_id, "tenant-acme");
        assert_eq!(e.subtotal_cents, 10000);
        assert_eq!(e.fees_cents, 250);
        assert_eq!(e.total_cents, 10250);
        assert_eq!(e.order_number, "ORD-20261128-3F4A5B");
        assert!(!e.items[0].id.is_nil());
    }

    #[test]
    fn current_versions_pass_through_unchanged() {
        let payload = json!({"OrderExpired": {}});
        let (out, version) =
            upcast_payload("OrderExpired", "1.0", "x", payload.clone(), &json!({}));
        assert_eq!(out, payload);
        assert_eq!(version, "1.0");
    }
}
