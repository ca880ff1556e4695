//! The HMAC keys: the shared `INTERNAL_SERVICE_SECRET` and optional per-service keys, each with
//! an optional previous key accepted during rotation (docs/contract.md §4).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretBox};

use super::error::AuthConfigError;

/// Shortest secret accepted in production, in bytes (docs/contract.md §4).
pub const MIN_SECRET_LEN: usize = 32;

/// Values that show a secret was never set for real. Compared case-insensitively; any secret
/// containing `change-me` or `changeme` is refused as well.
const DEFAULT_SECRETS: &[&str] = &[
    "dev-internal-secret-change-me",
    "change-me",
    "changeme",
    "secret",
    "internal-secret",
    "internal-service-secret",
    "default",
    "password",
    "test",
    "dev",
    "development",
    "your-secret-here",
    "replace-me",
];

/// Longest service name accepted in configuration; header values are bounded the same way.
pub(crate) const MAX_SERVICE_NAME_LEN: usize = 64;

/// Whether `name` can be a service name: lowercase-ish identifiers as the platform uses them.
pub(crate) fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A current key and the one it replaced, so callers can be rotated one at a time.
struct KeyPair {
    current: SecretBox<[u8]>,
    previous: Option<SecretBox<[u8]>>,
}

impl KeyPair {
    fn new(current: &str, previous: Option<&str>) -> Self {
        let secret = |s: &str| SecretBox::new(s.as_bytes().to_vec().into_boxed_slice());
        Self {
            current: secret(current),
            previous: previous.map(secret),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.expose_secret())
            .chain(self.previous.as_ref().map(|p| p.expose_secret()))
    }
}

struct Inner {
    shared: Option<KeyPair>,
    per_service: BTreeMap<String, KeyPair>,
}

/// Every key this service verifies with (and signs outgoing calls with). Cheap to clone; the
/// secrets live once, zeroed on drop, and never appear in `Debug` output or errors.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("shared", &self.inner.shared.is_some())
            .field(
                "shared_previous",
                &self
                    .inner
                    .shared
                    .as_ref()
                    .is_some_and(|k| k.previous.is_some()),
            )
            .field(
                "per_service",
                &self.inner.per_service.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

impl KeyRing {
    /// Builds the ring from the raw settings: `INTERNAL_SERVICE_SECRET`,
    /// `INTERNAL_SERVICE_SECRET_PREVIOUS` and `SERVICE_KEYS`
    /// (`payment-service=KEY[|PREVIOUS],ticket-service=KEY`). Blank values count as unset.
    /// Keys cannot contain `,` or `|`; `=` is fine (base64 padding).
    ///
    /// # Errors
    /// A malformed per-service list. Weak secrets are only refused by
    /// [`KeyRing::validate_for_production`].
    pub fn from_config(
        shared: Option<&str>,
        shared_previous: Option<&str>,
        per_service: Option<&str>,
    ) -> Result<Self, AuthConfigError> {
        let shared =
            non_blank(shared).map(|current| KeyPair::new(current, non_blank(shared_previous)));
        let per_service = match non_blank(per_service) {
            Some(list) => parse_service_keys(list)?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                per_service,
            }),
        })
    }

    /// The keys to try for a request signed by `service`, current first: its own keys if it
    /// has any (then the shared secret is not accepted from it), else the shared ones.
    pub fn candidates<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.inner
            .per_service
            .get(service)
            .or(self.inner.shared.as_ref())
            .into_iter()
            .flat_map(KeyPair::iter)
    }

    /// The key to sign an outgoing call to `peer` with: the peer's own current key if
    /// configured, else the shared secret. `None` when neither is set.
    pub fn signing_key(&self, peer: &str) -> Option<&[u8]> {
        self.inner
            .per_service
            .get(peer)
            .or(self.inner.shared.as_ref())
            .map(|k| k.current.expose_secret())
    }

    /// Whether `secret` is one of the keys, current or previous, shared or per service.
    pub fn holds(&self, secret: &[u8]) -> bool {
        self.inner
            .shared
            .iter()
            .chain(self.inner.per_service.values())
            .flat_map(KeyPair::iter)
            .any(|key| key == secret)
    }

    /// Refuses to run production with a missing, default or short (< 32 bytes) secret, for the
    /// shared secret, per-service keys and previous keys alike (a weak previous key is as good
    /// as a weak current one to an attacker).
    ///
    /// # Errors
    /// The first offending key, named by setting and service, never by value.
    pub fn validate_for_production(&self) -> Result<(), AuthConfigError> {
        let shared = self
            .inner
            .shared
            .as_ref()
            .ok_or(AuthConfigError::MissingSecret)?;
        check_pair(shared, "INTERNAL_SERVICE_SECRET", None)?;
        for (service, pair) in &self.inner.per_service {
            check_pair(pair, "SERVICE_KEYS", Some(service))?;
        }
        Ok(())
    }
}

fn check_pair(pair: &KeyPair, setting: &str, service: Option<&str>) -> Result<(), AuthConfigError> {
    let name = |previous: bool| {
        let mut which = setting.to_owned();
        if let Some(service) = service {
            which.push_str(&format!(" for {service}"));
        }
        if previous {
            which.push_str(" (previous key)");
        }
        which
    };
    check_secret(pair.current.expose_secret(), || name(false))?;
    if let Some(previous) = &pair.previous {
        check_secret(previous.expose_secret(), || name(true))?;
    }
    Ok(())
}

fn check_secret(secret: &[u8], which: impl Fn() -> String) -> Result<(), AuthConfigError> {
    let lower = String::from_utf8_lossy(secret).to_lowercase();
    if DEFAULT_SECRETS.contains(&lower.as_str())
        || lower.contains("change-me")
        || lower.contains("changeme")
    {
        return Err(AuthConfigError::DefaultSecret { which: which() });
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthConfigError::ShortSecret {
            which: which(),
            len: secret.len(),
            min: MIN_SECRET_LEN,
        });
    }
    Ok(())
}

fn parse_service_keys(list: &str) -> Result<BTreeMap<String, KeyPair>, AuthConfigError> {
    let mut keys = BTreeMap::new();
    for (i, entry) in list.split(',').enumerate() {
        let malformed = |reason| AuthConfigError::MalformedServiceKey {
            position: i + 1,
            reason,
        };
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(malformed("empty entry"));
        }
        let (service, keys_text) = entry.split_once('=').ok_or(malformed("missing `=`"))?;
        let service = service.trim();
        if service.is_empty() {
            return Err(malformed("missing service name"));
        }
        if !valid_service_name(service) {
            return Err(AuthConfigError::InvalidServiceName {
                setting: "SERVICE_KEYS",
                name: service.to_owned(),
            });
        }
        let mut parts = keys_text.split('|').map(str::trim);
        let current = parts.next().unwrap_or_default();
        let previous = parts.next();
        if parts.next().is_some() {
            return Err(malformed("more than one previous key"));
        }
        if current.is_empty() {
            return Err(malformed("empty key"));
        }
        if previous.is_some_and(str::is_empty) {
            return Err(malformed("empty previous key"));
        }
        if keys.contains_key(service) {
            return Err(AuthConfigError::Duplicate {
                setting: "SERVICE_KEYS",
                name: service.to_owned(),
            });
        }
        keys.insert(service.to_owned(), KeyPair::new(current, previous));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "0123456789abcdef0123456789abcdef";
    const STRONG2: &str = "fedcba9876543210fedcba9876543210";

    fn keys(ring: &KeyRing, service: &str) -> Vec<Vec<u8>> {
        ring.candidates(service).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn per_service_keys_replace_the_shared_ones() {
        let ring = KeyRing::from_config(
            Some("shared"),
            Some("shared-old"),
            Some(" payment-service = pk | pk-old , ticket-service=tk=="),
        )
        .unwrap();
        assert_eq!(
            keys(&ring, "payment-service"),
            [b"pk".to_vec(), b"pk-old".to_vec()]
        );
        assert_eq!(keys(&ring, "ticket-service"), [b"tk==".to_vec()]);
        assert_eq!(
            keys(&ring, "event-service"),
            [b"shared".to_vec(), b"shared-old".to_vec()]
        );
        assert_eq!(ring.signing_key("payment-service"), Some(b"pk".as_slice()));
        assert_eq!(
            ring.signing_key("event-service"),
            Some(b"shared".as_slice())
        );
    }

    #[test]
    fn no_keys_means_no_candidates() {
        let ring = KeyRing::from_config(None, Some("old"), Some("  ")).unwrap();
        assert!(keys(&ring, "payment-service").is_empty());
        assert_eq!(ring.signing_key("payment-service"), None);
        assert_eq!(
            ring.validate_for_production(),
            Err(AuthConfigError::MissingSecret)
        );
    }

    #[test]
    fn malformed_key_lists_are_refused_without_echoing_keys() {
        let cases = [
            ("payment-service", "missing `=`"),
            ("=k", "missing service name"),
            ("payment-service=", "empty key"),
            ("payment-service=k|", "empty previous key"),
            ("payment-service=a|b|c", "more than one previous key"),
            ("payment-service=k,,ticket-service=k", "empty entry"),
        ];
        for (input, reason) in cases {
            let err = KeyRing::from_config(None, None, Some(input)).unwrap_err();
            assert!(
                matches!(err, AuthConfigError::MalformedServiceKey { reason: r, .. } if r == reason),
                "{input}: {err:?}"
            );
        }
        let err =
            KeyRing::from_config(None, None, Some("a=supersecret,a=othersecret")).unwrap_err();
        assert_eq!(
            err,
            AuthConfigError::Duplicate {
                setting: "SERVICE_KEYS",
                name: "a".into()
            }
        );
        assert!(!err.to_string().contains("secret"));
        let err = KeyRing::from_config(None, None, Some("bad name=supersecret")).unwrap_err();
        assert!(matches!(err, AuthConfigError::InvalidServiceName { .. }));
        let err = KeyRing::from_config(None, None, Some("x=supersecret|")).unwrap_err();
        assert!(!err.to_string().contains("supersecret"), "{err}");
    }

    #[test]
    fn production_refuses_weak_secrets() {
        let check = |shared: &str, previous: Option<&str>, per: Option<&str>| {
            KeyRing::from_config(Some(shared), previous, per)
                .unwrap()
                .validate_for_production()
        };
        assert_eq!(
            check(
                STRONG,
                Some(STRONG2),
                Some(&format!("p={STRONG}|{STRONG2}"))
            ),
            Ok(())
        );
        for weak in [
            "dev-internal-secret-change-me",
            "CHANGE-ME",
            "secret",
            "please-changeme-before-going-live-0123456789",
        ] {
            assert!(
                matches!(
                    check(weak, None, None),
                    Err(AuthConfigError::DefaultSecret { .. })
                ),
                "{weak}"
            );
        }
        assert_eq!(
            check("short-but-not-default", None, None),
            Err(AuthConfigError::ShortSecret {
                which: "INTERNAL_SERVICE_SECRET".into(),
                len: 21,
                min: MIN_SECRET_LEN
            })
        );
        assert!(matches!(
            check(STRONG, Some("old"), None),
            Err(AuthConfigError::ShortSecret { which, .. }) if which.contains("previous")
        ));
        let err = check(STRONG, None, Some("payment-service=tooshort")).unwrap_err();
        assert!(err.to_string().contains("payment-service"), "{err}");
        assert!(!err.to_string().contains("tooshort"), "{err}");
        assert!(matches!(
            check(STRONG, None, Some(&format!("payment-service={STRONG}|change-me"))),
            Err(AuthConfigError::DefaultSecret { which }) if which.contains("previous")
        ));
    }

    #[test]
    fn debug_never_shows_keys() {
        let ring = KeyRing::from_config(
            Some(STRONG),
            Some(STRONG2),
            Some("payment-service=pk-value"),
        )
        .unwrap();
        let text = format!("{ring:?}");
        assert!(text.contains("payment-service"));
        for secret in [STRONG, STRONG2, "pk-value"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
