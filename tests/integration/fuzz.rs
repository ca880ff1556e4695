//! The stable-Rust share of the fuzzing: property tests over the same three entry points as
//! the cargo-fuzz targets in `fuzz/` (auth headers and signed text, inbound messages, command
//! bodies), short enough to run in every `just test` (a few seconds in all).
//!
//! They state invariants, not just "no panic": the signed text splits back into its fields, a
//! signature the signer made always verifies, any single-byte change to a signed field or to
//! the signature fails, and decoders answer untrusted bytes with an error (a 400 for command
//! bodies, docs/contract.md §3.1), never a panic.
//!
//! No database or broker is involved; the cases stay in this binary so that one `nextest`
//! filter (`test(/fuzz/)`) runs them.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use order_api::auth::{
    canonical_v1, canonical_v2, check_offline, sign_v1, sign_v2, verify_v1, verify_v2, Scheme,
};
use order_api::routes::commands::{decode_body, BodyKind};
use order_bus::inbound::{parse, Family, InboundEvent};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Cases per property: enough to find shallow bugs every run, few enough to stay quick.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn service() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,40}"
}

fn timestamp() -> impl Strategy<Value = String> {
    (1_000_000_000_000i64..9_999_999_999_999).prop_map(|t| t.to_string())
}

fn nonce() -> impl Strategy<Value = String> {
    "[A-Fa-f0-9_-]{1,64}"
}

fn method() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]).prop_map(str::to_owned)
}

/// A request target as it appears on the request line: visible ASCII, `:` included.
fn target() -> impl Strategy<Value = String> {
    "/[!-~]{0,80}"
}

fn secret() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..80)
}

/// `s` with byte `at` (modulo its length) replaced by `by`, when that is still UTF-8.
fn change_byte(s: &str, at: usize, by: u8) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut bytes = s.as_bytes().to_vec();
    let i = at % bytes.len();
    if bytes[i] == by {
        return None;
    }
    bytes[i] = by;
    String::from_utf8(bytes).ok()
}

fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(HeaderName::from_static(name), v);
        }
    }
    map
}

proptest! {
    #![proptest_config(config())]

    /// The signed text splits back into exactly the fields it was built from: no field can
    /// leak into its neighbour, because only the last one (the target) may hold `:`.
    #[test]
    fn fuzz_canonical_text_round_trips(
        svc in service(), ts in timestamp(), n in nonce(), m in method(), url in target()
    ) {
        let text = canonical_v1(&svc, &ts, &n, &m, &url);
        let parts: Vec<&str> = text.splitn(5, ':').collect();
        prop_assert_eq!(parts, vec![svc.as_str(), ts.as_str(), n.as_str(), m.as_str(), url.as_str()]);
        let text = canonical_v2(&svc, &ts, &url);
        let parts: Vec<&str> = text.splitn(3, ':').collect();
        prop_assert_eq!(parts, vec![svc.as_str(), ts.as_str(), url.as_str()]);
    }

    /// What the signer makes, the verifier (and the middleware's header parser) accepts.
    #[test]
    fn fuzz_signed_requests_verify(
        key in secret(), svc in service(), ts in timestamp(), n in nonce(), m in method(),
        url in target()
    ) {
        let sig = sign_v1(&key, &svc, &ts, &n, &m, &url);
        prop_assert!(verify_v1(&key, &svc, &ts, &n, &m, &url, &sig));
        let headers = header_map(&[
            ("x-service-name", svc.clone()),
            ("x-request-timestamp", ts.clone()),
            ("x-request-nonce", n.clone()),
            ("x-internal-auth", sig),
        ]);
        let method = Method::from_bytes(m.as_bytes()).expect("method");
        let (caller, parsed_ts) = check_offline(&headers, &method, &url, &key).expect("v1 passes");
        prop_assert_eq!(&caller.service, &svc);
        prop_assert_eq!(caller.scheme, Scheme::HmacV1);
        prop_assert_eq!(parsed_ts.to_string(), ts.clone());

        let sig = sign_v2(&key, &svc, &ts, &url);
        prop_assert!(verify_v2(&key, &svc, &ts, &url, &sig));
        let headers = header_map(&[
            ("x-internal-service", svc.clone()),
            ("x-internal-timestamp", ts.clone()),
            ("x-internal-signature", sig),
        ]);
        let (caller, _) = check_offline(&headers, &method, &url, &key).expect("v2 passes");
        prop_assert_eq!(caller.scheme, Scheme::HmacV2);
    }

    /// Any single-byte change to any signed field, to the signature or to the key fails.
    #[test]
    fn fuzz_any_changed_byte_fails_verification(
        key in secret(), svc in service(), ts in timestamp(), n in nonce(), m in method(),
        url in target(), field in 0usize..7, at in any::<usize>(), by in any::<u8>()
    ) {
        let sig1 = sign_v1(&key, &svc, &ts, &n, &m, &url);
        let sig2 = sign_v2(&key, &svc, &ts, &url);
        let (mut svc2, mut ts2, mut n2, mut m2, mut url2) =
            (svc.clone(), ts.clone(), n.clone(), m.clone(), url.clone());
        let (mut s1, mut s2, mut key2) = (sig1.clone(), sig2.clone(), key.clone());
        let changed = match field {
            0 => change_byte(&svc, at, by).map(|v| svc2 = v),
            1 => change_byte(&ts, at, by).map(|v| ts2 = v),
            2 => change_byte(&n, at, by).map(|v| n2 = v),
            // The method is compared upper-cased, so a change of case alone is no change.
            3 => change_byte(&m, at, by)
                .filter(|v| v.to_ascii_uppercase() != m)
                .map(|v| m2 = v),
            4 => change_byte(&url, at, by).map(|v| url2 = v),
            5 => change_byte(&sig1, at, by)
                .zip(change_byte(&sig2, at, by))
                .map(|(a, b)| { s1 = a; s2 = b; }),
            _ => {
                let i = at % key.len();
                (key[i] != by).then(|| key2[i] = by)
            }
        };
        prop_assume!(changed.is_some());
        prop_assert!(!verify_v1(&key2, &svc2, &ts2, &n2, &m2, &url2, &s1));
        // v2 does not sign the nonce or the method: a change there is not a v2 change.
        if !matches!(field, 2 | 3) {
            prop_assert!(!verify_v2(&key2, &svc2, &ts2, &url2, &s2));
        }
    }

    /// Arbitrary header values under the signature header names never panic the parser and
    /// never authenticate.
    #[test]
    fn fuzz_arbitrary_auth_headers_are_refused(
        values in prop::collection::vec(("[0-6]", "[ -~]{0,90}"), 0..8), url in target()
    ) {
        const NAMES: [&str; 7] = [
            "x-service-name", "x-request-timestamp", "x-request-nonce", "x-internal-auth",
            "x-internal-service", "x-internal-timestamp", "x-internal-signature",
        ];
        let pairs: Vec<(&'static str, String)> = values
            .into_iter()
            .map(|(i, v)| (NAMES[i.parse::<usize>().expect("digit")], v))
            .collect();
        let headers = header_map(&pairs);
        let result = check_offline(&headers, &Method::GET, &url, b"k");
        prop_assert!(matches!(result, Err("malformed" | "bad_credentials")), "{:?}", result);
    }

    /// Arbitrary bytes never panic the inbound decoder; it answers with a reason.
    #[test]
    fn fuzz_inbound_bytes_are_errors_not_panics(
        body in prop::collection::vec(any::<u8>(), 0..512), family in 0usize..3, kind in 0usize..6
    ) {
        let subject = InboundEvent::TYPES[kind];
        if let Err(e) = parse(Family::ALL[family], subject, &body, 64 * 1024) {
            prop_assert!(!e.reason.is_empty());
        }
    }

    /// JSON shaped like inbound messages, with fields present, missing, mistyped or absurd:
    /// every answer is a parse or an error, and a parse matches the subject it arrived on.
    #[test]
    fn fuzz_inbound_shaped_json_parses_consistently(msg in inbound_json(), kind in 0usize..6) {
        let subject = InboundEvent::TYPES[kind];
        let family = Family::of_type(subject).expect("family");
        let bytes = msg.to_string();
        match parse(family, subject, bytes.as_bytes(), 64 * 1024) {
            Ok(m) => {
                prop_assert_eq!(m.event_type(), subject);
                prop_assert_eq!(Some(m.id.as_str()), msg["id"].as_str());
                let sent = msg["payload"]["orderId"].as_str().and_then(|s| uuid::Uuid::parse_str(s).ok());
                prop_assert_eq!(Some(m.order_id), sent);
            }
            Err(e) => prop_assert!(!e.reason.is_empty()),
        }
    }

    /// Arbitrary bytes as any command body: an error, and always a 400 (never a 500).
    #[test]
    fn fuzz_command_bytes_are_400s(body in prop::collection::vec(any::<u8>(), 0..512), kind in 0usize..6) {
        if let Err(e) = decode_body(BodyKind::ALL[kind], &body) {
            prop_assert_eq!(e.status().as_u16(), 400, "{}", e);
        }
    }

    /// Command-shaped JSON with every field present, missing, mistyped or out of range: the
    /// decoder accepts it or answers 400.
    #[test]
    fn fuzz_command_shaped_json_is_ok_or_400(body in command_json(), kind in 0usize..6) {
        let bytes = body.to_string();
        if let Err(e) = decode_body(BodyKind::ALL[kind], bytes.as_bytes()) {
            prop_assert_eq!(e.status().as_u16(), 400, "{} for {}", e, bytes);
        }
    }
}

/// A JSON value of any kind, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,40}".prop_map(Value::from),
        Just(json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field that is usually well-typed and sometimes anything at all.
fn field(good: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(
        0.85,
        prop_oneof![4 => good.boxed(), 1 => any_json().boxed()],
    )
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

fn uuid_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u128>().prop_map(|n| json!(uuid::Uuid::from_u128(n).to_string())),
        "[0-9a-fA-F-]{30,40}".prop_map(Value::from),
    ]
}

fn inbound_json() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        prop::sample::select(InboundEvent::TYPES.to_vec()).prop_map(Value::from),
        "[a-z.]{0,20}".prop_map(Value::from),
    ];
    let payload = (
        field(uuid_text()),
        field("[ -~]{0,20}".prop_map(Value::from)),
        field((-5i64..1_000_000).prop_map(Value::from)),
        field("[a-z]{0,6}".prop_map(Value::from)),
        field(prop::sample::select(vec!["won", "lost", "tie"]).prop_map(Value::from)),
        field(
            prop::collection::vec((uuid_text(), "[ -~]{0,12}"), 0..3).prop_map(|v| {
                Value::from(
                    v.into_iter()
                        .map(|(item, ticket)| json!({"itemId": item, "ticketId": ticket}))
                        .collect::<Vec<_>>(),
                )
            }),
        ),
    )
        .prop_map(|(order, id, amount, text, outcome, tickets)| {
            object(vec![
                ("orderId", order),
                ("paymentIntentId", id.clone()),
                ("disputeId", id),
                ("amountCents", amount),
                ("status", text.clone()),
                ("reason", text),
                ("outcome", outcome),
                ("tickets", tickets),
            ])
        });
    (
        field("[ -~]{0,40}".prop_map(Value::from)),
        field(ty),
        field(payload),
    )
        .prop_map(|(id, ty, payload)| object(vec![("id", id), ("type", ty), ("payload", payload)]))
}

fn command_json() -> impl Strategy<Value = Value> {
    let int = || {
        prop_oneof![
            (-10i64..100_000).prop_map(Value::from),
            any::<i64>().prop_map(Value::from)
        ]
    };
    let text = || "[ -~]{0,20}".prop_map(Value::from);
    let item = (field(uuid_text()), field(int()), field(int())).prop_map(|(t, q, p)| {
        object(vec![
            ("ticketTypeId", t),
            ("quantity", q),
            ("unitPriceCents", p),
        ])
    });
    let ticket = (field(uuid_text()), field(text()))
        .prop_map(|(i, t)| object(vec![("itemId", i), ("ticketId", t)]));
    (
        (
            field(text()),
            field(uuid_text()),
            field(prop::sample::select(vec!["USD", "EUR", "usd", "XXX", ""]).prop_map(Value::from)),
            field(prop::collection::vec(item, 0..3).prop_map(Value::from)),
            field(int()),
            field(int()),
            field(int()),
            field(prop::sample::select(vec!["2030-01-01T00:00:00Z", "soon"]).prop_map(Value::from)),
        ),
        (
            field(text()),
            field(int()),
            field(int()),
            field(text()),
            field(prop::collection::vec(ticket, 0..3).prop_map(Value::from)),
        ),
    )
        .prop_map(
            |(
                (user, event, currency, items, fees, tax, expires, starts),
                (intent, amount, version, reason, tickets),
            )| {
                object(vec![
                    ("userId", user),
                    ("eventId", event),
                    ("currency", currency),
                    ("items", items),
                    ("feesCents", fees),
                    ("taxCents", tax),
                    ("expiresInSeconds", expires),
                    ("eventStartsAt", starts),
                    ("paymentIntentId", intent),
                    ("amountCents", amount),
                    ("expectedVersion", version),
                    ("reason", reason),
                    ("tickets", tickets),
                ])
            },
        )
}

/// A known-good body of every kind decodes, so the 400 properties above are not vacuous.
#[test]
fn fuzz_good_command_bodies_decode() {
    let good = [
        (BodyKind::Create, order_tests::order_body()),
        (BodyKind::Reserve, json!({})),
        (
            BodyKind::Confirm,
            json!({"paymentIntentId": "pi_1", "amountCents": 100}),
        ),
        (BodyKind::Cancel, json!({"reason": "changed my mind"})),
        (
            BodyKind::Refund,
            json!({"reason": "duplicate", "amountCents": 10}),
        ),
        (
            BodyKind::Tickets,
            json!({"tickets": [{"itemId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "ticketId": "t1"}]}),
        ),
    ];
    for (kind, body) in good {
        let bytes = body.to_string();
        assert!(
            decode_body(kind, bytes.as_bytes()).is_ok(),
            "{kind:?}: {bytes}"
        );
    }
    // And a bad one of each is a 400.
    for kind in BodyKind::ALL {
        let e = decode_body(kind, b"{\"nope\": 1}").expect_err("unknown field");
        assert_eq!(e.status().as_u16(), 400, "{kind:?}");
    }
}
