//! The three subject families this service consumes, one durable pull consumer each.
//!
//! nats-server 2.9 honours a single `filter_subject` per consumer (it silently ignores
//! `filter_subjects`), so each family gets its own consumer rather than one consumer over all.

use crate::subjects::Subjects;

/// A family of inbound subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `payment.*` from payment-service.
    Payment,
    /// `dispute.*` from the dispute flow.
    Dispute,
    /// `ticket.*` from ticket-service.
    Ticket,
}

impl Family {
    /// Every family, in the order the workers start them.
    pub const ALL: [Self; 3] = [Self::Payment, Self::Dispute, Self::Ticket];

    /// The subject root, e.g. `payment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Dispute => "dispute",
            Self::Ticket => "ticket",
        }
    }

    /// The family of a message type (`payment.succeeded` → payment).
    pub fn of_type(event_type: &str) -> Option<Self> {
        let root = event_type.split('.').next()?;
        Self::ALL.into_iter().find(|f| f.as_str() == root)
    }

    /// The consumer's one filter subject, e.g. `t7f3a.payment.*`.
    pub fn filter_subject(self, subjects: &Subjects) -> String {
        subjects.prefixed(&format!("{}.*", self.as_str()))
    }

    /// The default durable consumer name. Consumer names cannot contain dots, so the prefix is
    /// not part of it; tests isolate consumers by using their own stream.
    pub fn durable_name(self) -> String {
        format!("order-service-{}", self.as_str())
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_one_prefixed_filter() {
        let s = Subjects::new("t7f3a");
        assert_eq!(Family::Payment.filter_subject(&s), "t7f3a.payment.*");
        assert_eq!(
            Family::Ticket.filter_subject(&Subjects::new("")),
            "ticket.*"
        );
        assert_eq!(Family::of_type("dispute.closed"), Some(Family::Dispute));
        assert_eq!(Family::of_type("order.created"), None);
        assert_eq!(Family::Dispute.durable_name(), "order-service-dispute");
    }
}
