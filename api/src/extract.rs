//! Extractors whose rejections use the API's error body instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// `Json<T>` with [`ApiError`] rejections (400 with serde's message).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// The `{orderId}`/`{id}` path segment, parsed as a UUID (400 otherwise, never 404).
#[derive(Debug, Clone, Copy)]
pub struct OrderIdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrderIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Uuid::parse_str(&raw).map(Self).map_err(|_| {
            ApiError::BadRequest(format!("order id '{}' is not a UUID", truncate(&raw)))
        })
    }
}

/// Echoes at most 64 characters of caller input in messages.
pub fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `deserialize_with` helpers for integer body fields that accept every JSON number JSON Schema
/// calls an integer: `44` and `44.0` alike (a number with a zero fraction), since the OpenAPI
/// document declares them `integer` and other platforms' serialisers may write either. A
/// fraction or a value out of range is still refused (400).
pub mod whole {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Number;

    /// 2^63: the first whole `f64` outside `i64`, and the number of values of `u64` over 2.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

    fn to_i64(n: &Number) -> Option<i64> {
        n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(f))
                // In range and whole, so the conversion is exact.
                .map(|f| f as i64)
        })
    }

    fn to_u64(n: &Number) -> Option<u64> {
        n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..2.0 * TWO_POW_63).contains(f))
                .map(|f| f as u64)
        })
    }

    fn whole<'de, D: Deserializer<'de>, T>(
        d: D,
        convert: fn(&Number) -> Option<T>,
        what: &str,
    ) -> Result<T, D::Error> {
        let n = Number::deserialize(d)?;
        convert(&n).ok_or_else(|| D::Error::custom(format!("expected {what}, got {n}")))
    }

    /// An `i64`.
    ///
    /// # Errors
    /// Anything but a whole number within `i64`.
    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        whole(d, to_i64, "a whole number within 64-bit signed range")
    }

    /// An optional `i64`; `null` is `None`. Use with `#[serde(default)]`.
    ///
    /// # Errors
    /// Anything but `null` or a whole number within `i64`.
    pub fn option_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<Number>::deserialize(d)?
            .map(|n| {
                to_i64(&n).ok_or_else(|| {
                    D::Error::custom(format!(
                        "expected a whole number within 64-bit signed range, got {n}"
                    ))
                })
            })
            .transpose()
    }

    /// An optional `u64`; `null` is `None`. Use with `#[serde(default)]`.
    ///
    /// # Errors
    /// Anything but `null` or a whole number within `u64`.
    pub fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Number>::deserialize(d)?
            .map(|n| {
                to_u64(&n).ok_or_else(|| {
                    D::Error::custom(format!(
                        "expected a non-negative whole number within 64 bits, got {n}"
                    ))
                })
            })
            .transpose()
    }

    #[cfg(test)]
    mod tests {
        use serde::Deserialize;

        #[derive(Debug, Deserialize)]
        struct Body {
            #[serde(deserialize_with = "super::i64")]
            a: i64,
            #[serde(default, deserialize_with = "super::option_u64")]
            b: Option<u64>,
        }

        fn parse(json: &str) -> Result<Body, serde_json::Error> {
            serde_json::from_str(json)
        }

        #[test]
        fn whole_floats_are_integers() {
            let b = parse(r#"{"a": 44.0, "b": 7.0}"#).unwrap();
            assert_eq!((b.a, b.b), (44, Some(7)));
            let b = parse(r#"{"a": -9223372036854775808}"#).unwrap();
            assert_eq!((b.a, b.b), (i64::MIN, None));
            assert_eq!(parse(r#"{"a": 1, "b": null}"#).unwrap().b, None);
            assert_eq!(parse(r#"{"a": 1e3}"#).unwrap().a, 1000);
        }

        #[test]
        fn fractions_and_out_of_range_are_refused() {
            for bad in [
                r#"{"a": 1.5}"#,
                r#"{"a": 9223372036854775808}"#,
                r#"{"a": 9.3e18}"#,
                r#"{"a": "1"}"#,
                r#"{"a": 1, "b": -1}"#,
                r#"{"a": 1, "b": 0.5}"#,
                r#"{"a": 1, "b": 2e19}"#,
            ] {
                assert!(parse(bad).is_err(), "{bad} accepted");
            }
        }
    }
}
