//! Integration subjects: the NATS subject each domain event is published on (docs/contract.md §2).
//!
//! The subject is `order.<snake_case>` of the event's wire name with a leading `Order` dropped
//! (`OrderCreated` → `order.created`, `PaymentFailed` → `order.payment_failed`). The envelope's
//! `type` is that subject *without* any prefix; the prefix exists only so that tests (and, if
//! ever needed, a shared cluster) can isolate subjects: prefix `t7f3a.` gives
//! `t7f3a.order.created` while the envelope still says `order.created`.

use order_domain::OrderEvent;

/// The root of every subject this service publishes.
pub const ORDER_ROOT: &str = "order";

/// Every subject family the events stream holds (docs/contract.md §6), without prefix.
pub const STREAM_FAMILIES: [&str; 4] = ["order", "payment", "dispute", "ticket"];

/// The integration type (= unprefixed subject) of a domain wire name, e.g. `order.created`.
/// `None` for a name that is not an order event, so that a typo never invents a subject.
pub fn integration_type(event_type: &str) -> Option<String> {
    if !OrderEvent::TYPES.contains(&event_type) {
        return None;
    }
    let rest = match event_type.strip_prefix("Order") {
        Some(r) if r.starts_with(|c: char| c.is_ascii_uppercase()) => r,
        _ => event_type,
    };
    Some(format!("{ORDER_ROOT}.{}", snake_case(rest)))
}

/// The domain wire name of an integration type (`order.created` → `OrderCreated`).
pub fn domain_type(integration_type: &str) -> Option<&'static str> {
    OrderEvent::TYPES
        .iter()
        .copied()
        .find(|t| integration_type_matches(t, integration_type))
}

fn integration_type_matches(domain: &str, integration: &str) -> bool {
    integration_type(domain).is_some_and(|t| t == integration)
}

/// Every integration type, in the domain's declaration order.
pub fn all_integration_types() -> Vec<(&'static str, String)> {
    OrderEvent::TYPES
        .iter()
        .filter_map(|t| integration_type(t).map(|i| (*t, i)))
        .collect()
}

/// Builds the NATS subjects for one prefix (empty in production).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`. A non-empty prefix gets a trailing `.` if it lacks one, so
    /// `t7f3a` and `t7f3a.` mean the same.
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_owned()
        } else {
            format!("{prefix}.")
        };
        Self { prefix }
    }

    /// The prefix, with its trailing dot (or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject an event of wire name `event_type` is published on.
    pub fn for_event_type(&self, event_type: &str) -> Option<String> {
        integration_type(event_type).map(|t| self.prefixed(&t))
    }

    /// `subject` under this prefix.
    pub fn prefixed(&self, subject: &str) -> String {
        format!("{}{subject}", self.prefix)
    }

    /// The wildcard subjects of the events stream: `order.>`, `payment.>`, `dispute.>`,
    /// `ticket.>`, each under the prefix.
    pub fn stream_subjects(&self) -> Vec<String> {
        STREAM_FAMILIES
            .iter()
            .map(|f| self.prefixed(&format!("{f}.>")))
            .collect()
    }
}

/// `PaymentFailed` → `payment_failed`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_subjects_keep_their_names() {
        let expected = [
            ("OrderCreated", "order.created"),
            ("OrderReserved", "order.reserved"),
            ("OrderConfirmed", "order.confirmed"),
            ("OrderCancelled", "order.cancelled"),
            ("OrderExpired", "order.expired"),
            ("OrderRefunded", "order.refunded"),
            ("OrderFailed", "order.failed"),
        ];
        for (domain, subject) in expected {
            assert_eq!(integration_type(domain).as_deref(), Some(subject));
            assert_eq!(domain_type(subject), Some(domain));
        }
    }

    #[test]
    fn the_rest_of_the_life_cycle_is_snake_case_under_order() {
        let expected = [
            ("PaymentFailed", "order.payment_failed"),
            ("TicketsIssued", "order.tickets_issued"),
            ("DisputeOpened", "order.dispute_opened"),
            ("DisputeUpdated", "order.dispute_updated"),
            ("DisputeClosed", "order.dispute_closed"),
            ("RefundRequested", "order.refund_requested"),
            ("RefundFailed", "order.refund_failed"),
            ("ReminderSent", "order.reminder_sent"),
            ("EventReminderSent", "order.event_reminder_sent"),
            ("OrderArchived", "order.archived"),
            ("PaymentRejected", "order.payment_rejected"),
            ("PaymentReturned", "order.payment_returned"),
            ("PaymentReturnFailed", "order.payment_return_failed"),
        ];
        for (domain, subject) in expected {
            assert_eq!(integration_type(domain).as_deref(), Some(subject));
        }
        assert_eq!(all_integration_types().len(), OrderEvent::TYPES.len());
    }

    #[test]
    fn unknown_names_get_no_subject() {
        assert_eq!(integration_type("OrderTeleported"), None);
        assert_eq!(integration_type(""), None);
        assert_eq!(domain_type("order.teleported"), None);
    }

    #[test]
    fn a_prefix_isolates_subjects_but_not_types() {
        let s = Subjects::new("t7f3a");
        assert_eq!(s.prefix(), "t7f3a.");
        assert_eq!(
            s.for_event_type("OrderCreated").as_deref(),
            Some("t7f3a.order.created")
        );
        assert_eq!(
            s.stream_subjects(),
            [
                "t7f3a.order.>",
                "t7f3a.payment.>",
                "t7f3a.dispute.>",
                "t7f3a.ticket.>"
            ]
        );
        let prod = Subjects::new("");
        assert_eq!(
            prod.for_event_type("OrderArchived").as_deref(),
            Some("order.archived")
        );
        assert_eq!(prod.stream_subjects()[0], "order.>");
    }
}
