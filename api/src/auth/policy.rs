//! Who may call what: the allowlist of known callers and, on top of it, the callers each group
//! of routes is open to (docs/contract.md §4), one group per command.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::error::AuthConfigError;
use super::keys::valid_service_name;

/// The known callers when `ALLOWED_INTERNAL_SERVICES` is unset.
pub const DEFAULT_ALLOWED_SERVICES: &[&str] = &[
    "payment-service",
    "ticket-service",
    "event-service",
    "blockchain-service",
    "api-gateway",
];

/// A group of routes sharing one set of allowed callers. The names are stable: configuration
/// (`ROUTE_CALLERS`) refers to them.
///
/// Each command has a policy of its own, so that a caller is trusted with only the commands
/// its job needs: marking an order paid, in particular, is payment-service's word alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutePolicy {
    /// `GET /internal/orders/{id}`, `for-payment` and `without-tickets`.
    OrdersRead,
    /// `GET /internal/orders/{id}/items`.
    OrdersItems,
    /// `POST /api/v1/orders`.
    OrdersCreate,
    /// `POST /api/v1/orders/{id}/reserve`.
    OrdersReserve,
    /// `POST /api/v1/orders/{id}/confirm`.
    OrdersConfirm,
    /// `POST /api/v1/orders/{id}/cancel`.
    OrdersCancel,
    /// `POST /api/v1/orders/{id}/refunds`.
    OrdersRefunds,
    /// `POST /api/v1/orders/{id}/tickets`.
    OrdersTickets,
    /// `GET /api/v1/orders/{id}/events`.
    OrdersEvents,
    /// `GET /internal/events`.
    EventsFeed,
    /// `/internal/jobs`.
    Jobs,
}

impl RoutePolicy {
    /// Every policy, for iteration in configuration and docs.
    pub const ALL: [Self; 11] = [
        Self::OrdersRead,
        Self::OrdersItems,
        Self::OrdersCreate,
        Self::OrdersReserve,
        Self::OrdersConfirm,
        Self::OrdersCancel,
        Self::OrdersRefunds,
        Self::OrdersTickets,
        Self::OrdersEvents,
        Self::EventsFeed,
        Self::Jobs,
    ];

    /// The stable name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrdersRead => "orders.read",
            Self::OrdersItems => "orders.items",
            Self::OrdersCreate => "orders.create",
            Self::OrdersReserve => "orders.reserve",
            Self::OrdersConfirm => "orders.confirm",
            Self::OrdersCancel => "orders.cancel",
            Self::OrdersRefunds => "orders.refunds",
            Self::OrdersTickets => "orders.tickets",
            Self::OrdersEvents => "orders.events",
            Self::EventsFeed => "events.feed",
            Self::Jobs => "jobs",
        }
    }

    /// The callers docs/contract.md §4 opens this route group to, unless `ROUTE_CALLERS` says
    /// otherwise.
    pub fn default_callers(self) -> &'static [&'static str] {
        match self {
            Self::OrdersRead => &["payment-service"],
            Self::OrdersItems => &["blockchain-service", "ticket-service"],
            // The buyer's side of the life cycle comes through the gateway.
            Self::OrdersCreate | Self::OrdersReserve | Self::OrdersCancel => &["api-gateway"],
            // Only the service that took the money may say it was taken.
            Self::OrdersConfirm => &["payment-service"],
            // Refunds asked for through the gateway, and those started on payment-service's
            // side.
            Self::OrdersRefunds => &["api-gateway", "payment-service"],
            Self::OrdersTickets => &["ticket-service"],
            // Reading the history changes nothing; every service that drives an order may
            // look at how it got where it is.
            Self::OrdersEvents => &[
                "api-gateway",
                "payment-service",
                "ticket-service",
                "event-service",
            ],
            // The services that subscribe to the events stream, catching up on its history.
            Self::EventsFeed => &[
                "payment-service",
                "ticket-service",
                "event-service",
                "blockchain-service",
            ],
            Self::Jobs => &["api-gateway", "payment-service"],
        }
    }

    /// Every stable name, comma-separated (for error messages).
    pub fn known_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for RoutePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RoutePolicy {
    type Err = AuthConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| match s {
                // Not "unknown": the operator meant the commands, and has to choose the
                // callers of each one.
                "orders.commands" => AuthConfigError::RouteSplit(s.to_owned()),
                _ => AuthConfigError::UnknownRoute(s.to_owned()),
            })
    }
}

#[derive(Debug)]
struct Inner {
    allowed: BTreeSet<String>,
    routes: BTreeMap<RoutePolicy, BTreeSet<String>>,
}

/// The allowlist and the per-route callers; a request passes only if its caller is in both.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    inner: Arc<Inner>,
}

impl Default for CallerPolicy {
    fn default() -> Self {
        let routes = RoutePolicy::ALL
            .into_iter()
            .map(|p| {
                (
                    p,
                    p.default_callers()
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                )
            })
            .collect();
        Self::build(
            DEFAULT_ALLOWED_SERVICES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            routes,
        )
    }
}

impl CallerPolicy {
    fn build(allowed: BTreeSet<String>, routes: BTreeMap<RoutePolicy, BTreeSet<String>>) -> Self {
        Self {
            inner: Arc::new(Inner { allowed, routes }),
        }
    }

    /// Builds the policy from `ALLOWED_INTERNAL_SERVICES` (comma-separated) and `ROUTE_CALLERS`
    /// (`orders.items=blockchain-service|ticket-service;jobs=api-gateway`). Unset or blank values
    /// keep the defaults; a route named in `ROUTE_CALLERS` has exactly the callers listed there.
    ///
    /// # Errors
    /// Malformed lists, unknown route names, invalid or repeated names, and override callers
    /// missing from the allowlist (they could never pass).
    pub fn from_config(
        allowed_services: Option<&str>,
        route_callers: Option<&str>,
    ) -> Result<Self, AuthConfigError> {
        let defaults = Self::default();
        let allowed = match allowed_services.map(str::trim).filter(|s| !s.is_empty()) {
            Some(list) => parse_allowlist(list)?,
            None => defaults.inner.allowed.clone(),
        };
        let mut routes = defaults.inner.routes.clone();
        if let Some(list) = route_callers.map(str::trim).filter(|s| !s.is_empty()) {
            for (route, callers) in parse_route_callers(list)? {
                if let Some(service) = callers.iter().find(|s| !allowed.contains(*s)) {
                    return Err(AuthConfigError::CallerNotAllowed {
                        route: route.name(),
                        service: service.clone(),
                    });
                }
                routes.insert(route, callers);
            }
        }
        Ok(Self::build(allowed, routes))
    }

    /// Whether `service` is a known caller at all (the allowlist).
    pub fn is_known(&self, service: &str) -> bool {
        self.inner.allowed.contains(service)
    }

    /// Whether `service` may call routes under `route`: known, and open to it.
    pub fn allows(&self, service: &str, route: RoutePolicy) -> bool {
        self.is_known(service)
            && self
                .inner
                .routes
                .get(&route)
                .is_some_and(|callers| callers.contains(service))
    }

    /// The callers `route` is open to, sorted (for start-up logs and the jobs status page).
    pub fn callers(&self, route: RoutePolicy) -> impl Iterator<Item = &str> {
        self.inner
            .routes
            .get(&route)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

fn parse_allowlist(list: &str) -> Result<BTreeSet<String>, AuthConfigError> {
    let mut allowed = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !valid_service_name(name) {
            return Err(AuthConfigError::InvalidServiceName {
                setting: "ALLOWED_INTERNAL_SERVICES",
                name: name.to_owned(),
            });
        }
        allowed.insert(name.to_owned());
    }
    Ok(allowed)
}

fn parse_route_callers(
    list: &str,
) -> Result<BTreeMap<RoutePolicy, BTreeSet<String>>, AuthConfigError> {
    let mut routes = BTreeMap::new();
    for (i, entry) in list.split(';').enumerate() {
        let malformed = |reason| AuthConfigError::MalformedRouteCallers {
            position: i + 1,
            reason,
        };
        let entry = entry.trim();
        if entry.is_empty() {
            // A trailing `;` is harmless.
            continue;
        }
        let (route, callers) = entry.split_once('=').ok_or(malformed("missing `=`"))?;
        let route: RoutePolicy = route.trim().parse()?;
        let mut set = BTreeSet::new();
        for caller in callers.split('|').map(str::trim) {
            if caller.is_empty() {
                return Err(malformed("empty caller name"));
            }
            if !valid_service_name(caller) {
                return Err(AuthConfigError::InvalidServiceName {
                    setting: "ROUTE_CALLERS",
                    name: caller.to_owned(),
                });
            }
            set.insert(caller.to_owned());
        }
        if routes.insert(route, set).is_some() {
            return Err(AuthConfigError::Duplicate {
                setting: "ROUTE_CALLERS",
                name: route.name().to_owned(),
            });
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoutePolicy::*;

    #[test]
    fn names_round_trip() {
        for p in RoutePolicy::ALL {
            assert_eq!(p.name().parse::<RoutePolicy>(), Ok(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(
            "orders".parse::<RoutePolicy>(),
            Err(AuthConfigError::UnknownRoute("orders".into()))
        );
    }

    #[test]
    fn defaults_follow_design_section_6() {
        let p = CallerPolicy::from_config(None, Some("  ")).unwrap();
        let open = |route| p.callers(route).collect::<Vec<_>>();
        assert_eq!(open(OrdersRead), ["payment-service"]);
        assert_eq!(open(OrdersItems), ["blockchain-service", "ticket-service"]);
        assert_eq!(open(OrdersCreate), ["api-gateway"]);
        assert_eq!(open(OrdersReserve), ["api-gateway"]);
        assert_eq!(open(OrdersCancel), ["api-gateway"]);
        assert_eq!(open(OrdersConfirm), ["payment-service"]);
        assert_eq!(open(OrdersRefunds), ["api-gateway", "payment-service"]);
        assert_eq!(open(OrdersTickets), ["ticket-service"]);
        assert_eq!(
            open(OrdersEvents),
            [
                "api-gateway",
                "event-service",
                "payment-service",
                "ticket-service"
            ]
        );
        assert_eq!(open(Jobs), ["api-gateway", "payment-service"]);
        for s in DEFAULT_ALLOWED_SERVICES {
            assert!(p.is_known(s));
        }
        assert!(p.allows("payment-service", OrdersRead));
        assert!(!p.allows("blockchain-service", OrdersRead));
        assert!(p.allows("blockchain-service", OrdersItems));
        for command in [
            OrdersCreate,
            OrdersReserve,
            OrdersConfirm,
            OrdersCancel,
            OrdersRefunds,
            OrdersTickets,
            OrdersEvents,
        ] {
            assert!(!p.allows("blockchain-service", command), "{command}");
            assert!(!p.allows("unknown-service", command), "{command}");
            assert!(!p.allows("", command), "{command}");
        }
        // Known callers, each kept to its own commands.
        for caller in ["api-gateway", "ticket-service", "event-service"] {
            assert!(!p.allows(caller, OrdersConfirm), "{caller}");
        }
        for caller in ["payment-service", "ticket-service", "event-service"] {
            assert!(!p.allows(caller, OrdersCreate), "{caller}");
            assert!(!p.allows(caller, OrdersCancel), "{caller}");
        }
        assert!(!p.allows("api-gateway", OrdersTickets));
        assert!(!p.allows("ticket-service", OrdersRefunds));
    }

    #[test]
    fn command_policies_are_overridden_one_by_one() {
        let p = CallerPolicy::from_config(None, Some("orders.confirm=payment-service|api-gateway"))
            .unwrap();
        assert!(p.allows("api-gateway", OrdersConfirm));
        assert!(!p.allows("api-gateway", OrdersTickets));
        let err = CallerPolicy::from_config(None, Some("orders.commands=api-gateway")).unwrap_err();
        assert_eq!(err, AuthConfigError::RouteSplit("orders.commands".into()));
        assert!(err.to_string().contains("orders.confirm"), "{err}");
    }

    #[test]
    fn allowlist_caps_every_route() {
        let p = CallerPolicy::from_config(Some("payment-service, api-gateway,"), None).unwrap();
        assert!(p.allows("payment-service", OrdersRead));
        assert!(p.allows("api-gateway", Jobs));
        // Open to ticket-service by default, but ticket-service is no longer a known caller.
        assert!(!p.allows("ticket-service", OrdersItems));
        assert!(!p.is_known("ticket-service"));
    }

    #[test]
    fn overrides_replace_a_routes_callers() {
        let p = CallerPolicy::from_config(
            None,
            Some("orders.items = ticket-service ; jobs=api-gateway|event-service;"),
        )
        .unwrap();
        assert!(!p.allows("blockchain-service", OrdersItems));
        assert!(p.allows("ticket-service", OrdersItems));
        assert!(p.allows("event-service", Jobs));
        assert!(!p.allows("payment-service", Jobs));
        // Untouched routes keep their defaults.
        assert!(p.allows("payment-service", OrdersRead));
    }

    #[test]
    fn bad_overrides_are_config_errors() {
        let err = |allowed: Option<&str>, routes: &str| {
            CallerPolicy::from_config(allowed, Some(routes)).unwrap_err()
        };
        assert_eq!(
            err(None, "orders.write=api-gateway"),
            AuthConfigError::UnknownRoute("orders.write".into())
        );
        assert!(matches!(
            err(None, "jobs"),
            AuthConfigError::MalformedRouteCallers { position: 1, .. }
        ));
        assert!(matches!(
            err(None, "jobs=api-gateway;orders.read="),
            AuthConfigError::MalformedRouteCallers { position: 2, .. }
        ));
        assert!(matches!(
            err(None, "jobs=api-gateway;jobs=payment-service"),
            AuthConfigError::Duplicate { .. }
        ));
        assert!(matches!(
            err(None, "jobs=api gateway"),
            AuthConfigError::InvalidServiceName { .. }
        ));
        assert_eq!(
            err(Some("payment-service"), "jobs=api-gateway"),
            AuthConfigError::CallerNotAllowed {
                route: "jobs",
                service: "api-gateway".into()
            }
        );
        assert!(matches!(
            CallerPolicy::from_config(Some("payment-service,bad/name"), None),
            Err(AuthConfigError::InvalidServiceName { .. })
        ));
    }
}
