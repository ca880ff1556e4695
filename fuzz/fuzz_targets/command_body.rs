//! Fuzzes the command routes' body decoding (`order_api::routes::commands::decode_body`): the
//! JSON extractor and the handlers' own checks, before any I/O.
//!
//! Input layout: the first byte picks the route, the rest is the body. Invariant
//! (docs/contract.md §3.1): malformed input is a 400, never a panic and never a 500.
#![no_main]

use libfuzzer_sys::fuzz_target;
use order_api::routes::commands::{decode_body, BodyKind};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let kind = BodyKind::ALL[usize::from(pick) % BodyKind::ALL.len()];
    if let Err(e) = decode_body(kind, body) {
        assert_eq!(e.status().as_u16(), 400, "{kind:?}: {e}");
    }
});
