//! The two signature schemes of docs/contract.md §4, as pure functions.
//!
//! Both are HMAC-SHA256 in lowercase hex over a `:`-joined text, bit-compatible with the existing
//! Node services (the tests reproduce the known-answer vectors in `tests/fixtures/vectors/`).

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header names of hmac-v1, lowercase as HTTP/2 and `http` carry them.
pub mod v1_header {
    /// Who signs: the calling service's name.
    pub const SERVICE: &str = "x-service-name";
    /// Milliseconds since the epoch, as decimal text.
    pub const TIMESTAMP: &str = "x-request-timestamp";
    /// A value used once per service, so a captured request cannot be replayed.
    pub const NONCE: &str = "x-request-nonce";
    /// The lowercase hex HMAC.
    pub const SIGNATURE: &str = "x-internal-auth";
}

/// Header names of hmac-v2, lowercase as HTTP/2 and `http` carry them.
pub mod v2_header {
    /// Who signs: the calling service's name.
    pub const SERVICE: &str = "x-internal-service";
    /// Milliseconds since the epoch, as decimal text.
    pub const TIMESTAMP: &str = "x-internal-timestamp";
    /// The lowercase hex HMAC; it is also the replay key of this scheme.
    pub const SIGNATURE: &str = "x-internal-signature";
}

/// The text hmac-v1 signs: `service:timestamp:nonce:METHOD:url`, the method upper-cased.
///
/// Public so that property tests and the fuzz targets check the very text the signer and the
/// verifier use. It is unambiguous only because the middleware refuses a `:` in the service
/// name, the timestamp and the nonce, and methods are tokens; the `url` is last, so it may hold
/// `:`.
pub fn canonical_v1(
    service: &str,
    timestamp_ms: &str,
    nonce: &str,
    method: &str,
    url: &str,
) -> String {
    [
        service,
        timestamp_ms,
        nonce,
        &method.to_ascii_uppercase(),
        url,
    ]
    .join(":")
}

/// The text hmac-v2 signs: `service:timestamp:url`.
pub fn canonical_v2(service: &str, timestamp_ms: &str, url: &str) -> String {
    [service, timestamp_ms, url].join(":")
}

fn mac_over(secret: &[u8], text: &str) -> HmacSha256 {
    // HMAC hashes long keys and pads short ones, so hmac 0.12's `new_from_slice` never fails
    // for it (the error type exists for fixed-length MACs sharing the trait).
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(text.as_bytes());
    mac
}

fn verify(secret: &[u8], text: &str, signature_hex: &str) -> bool {
    // A SHA-256 tag is 64 lowercase hex digits. Anything else is refused before decoding; in
    // particular upper case, which would decode to the same tag and so let an hmac-v2 signature
    // (its own replay key) be replayed under a different spelling.
    if signature_hex.len() != 64
        || !signature_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return false;
    }
    let Ok(tag) = hex::decode(signature_hex) else {
        return false;
    };
    mac_over(secret, text).verify_slice(&tag).is_ok()
}

/// hmac-v1 signature over `service:timestamp:nonce:METHOD:url`, lowercase hex, as the existing
/// services compute it; `url` is the undecoded request target (path and query).
pub fn sign_v1(
    secret: &[u8],
    service: &str,
    timestamp_ms: &str,
    nonce: &str,
    method: &str,
    url: &str,
) -> String {
    hex::encode(
        mac_over(
            secret,
            &canonical_v1(service, timestamp_ms, nonce, method, url),
        )
        .finalize()
        .into_bytes(),
    )
}

/// hmac-v2 signature over `service:timestamp:url`, lowercase hex.
pub fn sign_v2(secret: &[u8], service: &str, timestamp_ms: &str, url: &str) -> String {
    hex::encode(
        mac_over(secret, &canonical_v2(service, timestamp_ms, url))
            .finalize()
            .into_bytes(),
    )
}

/// Checks an hmac-v1 signature in constant time; a non-hex or wrong-length value is `false`,
/// never an error, so callers cannot tell malformed from wrong.
pub fn verify_v1(
    secret: &[u8],
    service: &str,
    timestamp_ms: &str,
    nonce: &str,
    method: &str,
    url: &str,
    signature_hex: &str,
) -> bool {
    verify(
        secret,
        &canonical_v1(service, timestamp_ms, nonce, method, url),
        signature_hex,
    )
}

/// Checks an hmac-v2 signature in constant time; a non-hex or wrong-length value is `false`.
pub fn verify_v2(
    secret: &[u8],
    service: &str,
    timestamp_ms: &str,
    url: &str,
    signature_hex: &str,
) -> bool {
    verify(
        secret,
        &canonical_v2(service, timestamp_ms, url),
        signature_hex,
    )
}

/// A fresh hmac-v1 nonce: 16 random bytes in hex, as the existing services send.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The four hmac-v1 headers for an outgoing request (docs/contract.md §5), with a fresh nonce.
pub fn v1_headers(
    secret: &[u8],
    service: &str,
    method: &str,
    url: &str,
    now_ms: i64,
) -> Vec<(&'static str, String)> {
    let timestamp = now_ms.to_string();
    let nonce = new_nonce();
    let signature = sign_v1(secret, service, &timestamp, &nonce, method, url);
    vec![
        (v1_header::SERVICE, service.to_owned()),
        (v1_header::TIMESTAMP, timestamp),
        (v1_header::NONCE, nonce),
        (v1_header::SIGNATURE, signature),
    ]
}

/// The three hmac-v2 headers for an outgoing request.
pub fn v2_headers(
    secret: &[u8],
    service: &str,
    url: &str,
    now_ms: i64,
) -> Vec<(&'static str, String)> {
    let timestamp = now_ms.to_string();
    let signature = sign_v2(secret, service, &timestamp, url);
    vec![
        (v2_header::SERVICE, service.to_owned()),
        (v2_header::TIMESTAMP, timestamp),
        (v2_header::SIGNATURE, signature),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vector {
        secret: String,
        service_name: String,
        timestamp: String,
        nonce: Option<String>,
        method: String,
        url: String,
        signed_payload: String,
        signature: String,
    }

    #[derive(Deserialize)]
    struct VectorFile {
        vectors: Vec<Vector>,
    }

    fn load(name: &str) -> Vec<Vector> {
        let path = format!(
            "{}/../tests/fixtures/vectors/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let file: VectorFile = serde_json::from_str(&text).unwrap();
        assert!(!file.vectors.is_empty(), "{path} has no vectors");
        file.vectors
    }

    /// Changes one hex digit, keeping the value well-formed.
    fn flip(sig: &str) -> String {
        let mut chars: Vec<char> = sig.chars().collect();
        chars[10] = if chars[10] == '0' { '1' } else { '0' };
        chars.into_iter().collect()
    }

    #[test]
    fn reproduces_every_v1_vector() {
        let vectors = load("hmac-v1.json");
        for v in &vectors {
            let nonce = v.nonce.as_deref().unwrap();
            assert_eq!(
                v.signed_payload,
                canonical_v1(&v.service_name, &v.timestamp, nonce, &v.method, &v.url)
            );
            let sig = sign_v1(
                v.secret.as_bytes(),
                &v.service_name,
                &v.timestamp,
                nonce,
                &v.method,
                &v.url,
            );
            assert_eq!(sig, v.signature, "vector {}", v.signed_payload);
            let check = |s: &str| {
                verify_v1(
                    v.secret.as_bytes(),
                    &v.service_name,
                    &v.timestamp,
                    nonce,
                    &v.method,
                    &v.url,
                    s,
                )
            };
            assert!(check(&v.signature));
            assert!(!check(&flip(&v.signature)));
        }
    }

    #[test]
    fn reproduces_every_v2_vector() {
        let vectors = load("hmac-v2.json");
        for v in &vectors {
            assert_eq!(
                v.signed_payload,
                canonical_v2(&v.service_name, &v.timestamp, &v.url)
            );
            let sig = sign_v2(v.secret.as_bytes(), &v.service_name, &v.timestamp, &v.url);
            assert_eq!(sig, v.signature, "vector {}", v.signed_payload);
            let check = |s: &str| {
                verify_v2(
                    v.secret.as_bytes(),
                    &v.service_name,
                    &v.timestamp,
                    &v.url,
                    s,
                )
            };
            assert!(check(&v.signature));
            assert!(!check(&flip(&v.signature)));
        }
    }

    /// The old services' bypass value outside production (docs/contract.md §4): never accepted.
    const REJECTED_BYPASS: &str = "temp-signature";

    #[test]
    fn malformed_signatures_fail() {
        let (secret, svc, ts, url) = (b"k".as_slice(), "payment-service", "1", "/x");
        let good = sign_v2(secret, svc, ts, url);
        assert!(verify_v2(secret, svc, ts, url, &good));
        for bad in [
            "",
            REJECTED_BYPASS,
            &good[..62],
            &format!("{good}00"),
            &format!("{}zz", &good[..62]),
            &good.to_uppercase(),
            &format!(" {}", &good[1..]),
        ] {
            assert!(!verify_v2(secret, svc, ts, url, bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn outgoing_headers_verify() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let h = v1_headers(secret, "order-service", "post", "/a?b=c", 1_769_000_000_000);
        let get = |name: &str| h.iter().find(|(k, _)| *k == name).unwrap().1.clone();
        let nonce = get(v1_header::NONCE);
        assert_eq!(nonce.len(), 32);
        assert!(nonce.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(get(v1_header::SERVICE), "order-service");
        assert_eq!(get(v1_header::TIMESTAMP), "1769000000000");
        assert!(verify_v1(
            secret,
            "order-service",
            "1769000000000",
            &nonce,
            "POST",
            "/a?b=c",
            &get(v1_header::SIGNATURE)
        ));
        assert_ne!(nonce, new_nonce());

        let h = v2_headers(secret, "order-service", "/a?b=c", 1_769_000_000_000);
        let get = |name: &str| h.iter().find(|(k, _)| *k == name).unwrap().1.clone();
        assert!(verify_v2(
            secret,
            "order-service",
            &get(v2_header::TIMESTAMP),
            "/a?b=c",
            &get(v2_header::SIGNATURE)
        ));
    }
}
