//! Fuzzes the inbound message decoder (`order_bus::inbound::parse`), which reads every
//! payment, dispute and ticket message from NATS before anything else sees it.
//!
//! Input layout: the first byte picks the subject the message arrived on, the rest is the
//! body. Invariants: nothing panics; a parsed message has the subject's type; an error has a
//! reason (the dead-letter headers cut it to one line of bounded length); and the consumer of
//! another family never accepts the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use order_bus::inbound::{parse, Family, InboundEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let subject = InboundEvent::TYPES[usize::from(pick) % InboundEvent::TYPES.len()];
    let family = Family::of_type(subject).expect("every handled type has a family");
    match parse(family, subject, body, 64 * 1024) {
        Ok(message) => assert_eq!(message.event_type(), subject),
        Err(e) => assert!(!e.reason.is_empty()),
    }
    // The wrong family never accepts it.
    for other in Family::ALL.into_iter().filter(|f| *f != family) {
        assert!(parse(other, subject, body, 64 * 1024).is_err());
    }
});
