//! Configuration errors of the authentication layer. They name the setting and the service, and
//! never the secret itself, so they are safe to print at start-up.

/// Why the authentication settings were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    /// An entry of the per-service key list is not `service=KEY[|PREVIOUS]`.
    #[error("SERVICE_KEYS entry {position}: {reason} (expected service=KEY[|PREVIOUS])")]
    MalformedServiceKey {
        /// 1-based position of the entry in the comma-separated list.
        position: usize,
        /// What is wrong with it; never contains key material.
        reason: &'static str,
    },
    /// A service appears twice in a list where it must be unique.
    #[error("{setting}: `{name}` is listed twice")]
    Duplicate {
        /// The setting holding the list.
        setting: &'static str,
        /// The repeated service or route name.
        name: String,
    },
    /// A service name contains characters a header value and an allowlist entry cannot share.
    #[error("{setting}: invalid service name `{name}`")]
    InvalidServiceName {
        /// The setting holding the name.
        setting: &'static str,
        /// The offending name.
        name: String,
    },
    /// A route-callers override is not `route=svc|svc;route=svc`.
    #[error("ROUTE_CALLERS entry {position}: {reason} (expected route=service|service;...)")]
    MalformedRouteCallers {
        /// 1-based position of the entry in the `;`-separated list.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A route-callers override names a route policy that does not exist.
    #[error(
        "ROUTE_CALLERS: unknown route `{0}` (known: {known})",
        known = super::RoutePolicy::known_names()
    )]
    UnknownRoute(String),
    /// A route-callers override names all commands at once; each has a policy of its own.
    #[error(
        "ROUTE_CALLERS: `{0}` names no route; each command has its own (known: {known})",
        known = super::RoutePolicy::known_names()
    )]
    RouteSplit(String),
    /// A route-callers override names a caller that the allowlist would refuse anyway.
    #[error("ROUTE_CALLERS: route `{route}` names `{service}`, which is not in ALLOWED_INTERNAL_SERVICES")]
    CallerNotAllowed {
        /// The route policy's name.
        route: &'static str,
        /// The service missing from the allowlist.
        service: String,
    },
    /// The published development secret on an address other hosts can reach.
    #[error(
        "the development secret is accepted only on a loopback HTTP_ADDR, and {addr} is not: \
         set INTERNAL_SERVICE_SECRET (and any SERVICE_KEYS) to keys of your own"
    )]
    DevelopmentSecretExposed {
        /// The configured `HTTP_ADDR`.
        addr: std::net::SocketAddr,
    },
    /// Production needs `INTERNAL_SERVICE_SECRET`.
    #[error("INTERNAL_SERVICE_SECRET is not set")]
    MissingSecret,
    /// A secret is one of the well-known development or placeholder values.
    #[error("{which} is a default or placeholder value")]
    DefaultSecret {
        /// Which key: the setting, and the service for per-service keys.
        which: String,
    },
    /// A secret is shorter than the production minimum.
    #[error("{which} is {len} bytes; production needs at least {min}")]
    ShortSecret {
        /// Which key: the setting, and the service for per-service keys.
        which: String,
        /// Its length in bytes.
        len: usize,
        /// The minimum length in bytes.
        min: usize,
    },
}
