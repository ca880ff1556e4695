//! Fuzzes the request-authentication parsers: the hmac-v1/v2 header parsing, timestamp syntax
//! and signature check of the middleware (`order_api::auth::check_offline`), and the signed
//! text of both schemes (`canonical_v1`, `canonical_v2`).
//!
//! Input layout: lines separated by `\n`; the first line is the method, the second the request
//! target, each further line `name:value` with `name` a digit picking one of the seven auth
//! headers. Invariants: nothing panics; random headers never authenticate under a key the
//! input does not know; headers signed by the signer from the same fields always do; and the
//! signed text splits back into its fields whenever the middleware accepted them.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use order_api::auth::{canonical_v1, canonical_v2, check_offline, sign_v1, sign_v2};

const NAMES: [&str; 7] = [
    "x-service-name",
    "x-request-timestamp",
    "x-request-nonce",
    "x-internal-auth",
    "x-internal-service",
    "x-internal-timestamp",
    "x-internal-signature",
];
const KEY: &[u8] = b"fuzz-key-0123456789abcdef0123456789";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method =
        Method::from_bytes(lines.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let target = lines.next().unwrap_or("/");
    let mut headers = HeaderMap::new();
    let mut fields: [Option<String>; 7] = Default::default();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = name.parse::<usize>().ok().filter(|i| *i < NAMES.len()) else {
            continue;
        };
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.append(HeaderName::from_static(NAMES[i]), v);
            fields[i] = Some(value.to_owned());
        }
    }

    // Random input must not authenticate, except by reproducing the signature, which the
    // fuzzer cannot do without the key.
    let _ = check_offline(&headers, &method, target, KEY);

    // The same fields, signed properly: if the middleware parses them, they must verify, and
    // the signed text must split back into them.
    if let (Some(svc), Some(ts), Some(nonce)) = (&fields[0], &fields[1], &fields[2]) {
        let sig = sign_v1(KEY, svc, ts, nonce, method.as_str(), target);
        let mut signed = HeaderMap::new();
        for (name, value) in [
            (NAMES[0], svc),
            (NAMES[1], ts),
            (NAMES[2], nonce),
            (NAMES[3], &sig),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                signed.append(HeaderName::from_static(name), v);
            }
        }
        if signed.len() == 4 {
            match check_offline(&signed, &method, target, KEY) {
                Ok(_) => {
                    let text = canonical_v1(svc, ts, nonce, method.as_str(), target);
                    let parts: Vec<&str> = text.splitn(5, ':').collect();
                    let upper = method.as_str().to_ascii_uppercase();
                    assert_eq!(
                        parts,
                        [
                            svc.as_str(),
                            ts.as_str(),
                            nonce.as_str(),
                            upper.as_str(),
                            target
                        ]
                    );
                }
                Err(class) => {
                    assert_eq!(class, "malformed", "a signed request failed verification")
                }
            }
        }
    }
    if let (Some(svc), Some(ts)) = (&fields[4], &fields[5]) {
        let sig = sign_v2(KEY, svc, ts, target);
        let mut signed = HeaderMap::new();
        for (name, value) in [(NAMES[4], svc), (NAMES[5], ts), (NAMES[6], &sig)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                signed.append(HeaderName::from_static(name), v);
            }
        }
        if signed.len() == 3 {
            match check_offline(&signed, &method, target, KEY) {
                Ok(_) => {
                    let text = canonical_v2(svc, ts, target);
                    let parts: Vec<&str> = text.splitn(3, ':').collect();
                    assert_eq!(parts, [svc.as_str(), ts.as_str(), target]);
                }
                Err(class) => {
                    assert_eq!(class, "malformed", "a signed request failed verification")
                }
            }
        }
    }
});
