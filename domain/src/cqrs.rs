//! Adapter from the pure [`Order`] to `cqrs_es`'s traits, so postgres-es can store it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};

use crate::aggregate::{Order, ORDER_AGGREGATE_TYPE};
use crate::commands::OrderCommand;
use crate::errors::OrderError;
use crate::events::OrderEvent;
use crate::upcast::upcast_payload;

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        Self::event_type(self).to_owned()
    }
    fn event_version(&self) -> String {
        Self::event_version(self).to_owned()
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = ORDER_AGGREGATE_TYPE;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        Order::apply(self, &event);
    }
}

/// The upcaster chain postgres-es applies to every loaded row.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(OrderUpcaster)]
}

/// Routes every stored row through [`upcast_payload`]; the pure function decides what changes.
#[derive(Debug)]
struct OrderUpcaster;

impl EventUpcaster for OrderUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_version != crate::events::version_of(event_type)
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        let (payload, event_version) = upcast_payload(
            &event.event_type,
            &event.event_version,
            &event.aggregate_id,
            event.payload,
            &event.metadata,
        );
        SerializedEvent {
            payload,
            event_version,
            ..event
        }
    }
}
