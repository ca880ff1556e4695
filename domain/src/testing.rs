//! A given/when/then harness for aggregate tests: no database, no runtime.
//!
//! ```
//! # use order_domain::testing::given;
//! # use order_domain::OrderError;
//! # use order_domain::commands::{OrderCommand, ExpireOrder};
//! # use chrono::Utc;
//! given(vec![])
//!     .when(OrderCommand::ExpireOrder(ExpireOrder { now: Utc::now() }))
//!     .then_err(OrderError::NotFound);
//! ```

use crate::aggregate::Order;
use crate::commands::OrderCommand;
use crate::errors::OrderError;
use crate::events::OrderEvent;

/// Starts a scenario from an order's past events.
#[expect(
    clippy::needless_pass_by_value,
    reason = "owned arguments keep scenarios short: given(vec![...])"
)]
pub fn given(history: Vec<OrderEvent>) -> Given {
    let mut order = Order::default();
    for event in &history {
        order.apply(event);
    }
    Given { order }
}

/// An order rebuilt from its history, waiting for a command.
#[derive(Debug)]
pub struct Given {
    order: Order,
}

impl Given {
    /// Decides the command against the rebuilt order.
    pub fn when(self, command: OrderCommand) -> Then {
        let result = self.order.decide(command);
        Then {
            order: self.order,
            result,
        }
    }

    /// The rebuilt order, for assertions on state.
    pub fn order(&self) -> &Order {
        &self.order
    }
}

/// The outcome of a decision, to be asserted.
#[derive(Debug)]
#[must_use = "a scenario asserts nothing until then/then_err is called"]
pub struct Then {
    order: Order,
    result: Result<Vec<OrderEvent>, OrderError>,
}

impl Then {
    /// Asserts the exact events, and returns the order with them applied.
    ///
    /// # Panics
    /// When the command was refused or produced other events.
    #[track_caller]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned arguments keep scenarios short"
    )]
    pub fn then(self, expected: Vec<OrderEvent>) -> Order {
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, got error: {e}"),
        };
        assert_eq!(events, expected, "unexpected events");
        let mut order = self.order;
        for e in &events {
            order.apply(e);
        }
        order
    }

    /// Asserts that nothing happens (an idempotent repeat).
    ///
    /// # Panics
    /// When the command was refused or produced events.
    #[track_caller]
    pub fn then_nothing(self) -> Order {
        self.then(vec![])
    }

    /// Asserts the refusal.
    ///
    /// # Panics
    /// When the command succeeded or failed for another reason.
    #[track_caller]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned arguments keep scenarios short"
    )]
    pub fn then_err(self, expected: OrderError) {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }

    /// Returns the raw outcome, for assertions the helpers above do not cover.
    pub fn result(self) -> Result<Vec<OrderEvent>, OrderError> {
        self.result
    }
}
