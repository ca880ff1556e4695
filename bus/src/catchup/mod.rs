//! History for event-stream subscribers: the feed read in pages (served by
//! `GET /internal/events`), the catch-up-then-live handoff for a consumer that starts after the
//! stream's retention dropped its early events, and re-publishing a range for a backfill.
//!
//! Every message here is built by the relay's own encoder ([`crate::relay::encode_events`]),
//! so a page, a re-published message and the live message of one event are the same bytes.
//!
//! - [`cursor`]: the opaque position a page continues from.
//! - [`page`]: one page of the feed, filtered by type and tenant (the server side).
//! - [`handoff`]: the subscriber side: page up to now, then consume the stream from a point
//!   that overlaps the pages, delivering each event once, in per-order sequence order.
//! - [`republish`]: a range of the feed re-published under another subject prefix, resumable.

pub mod cursor;
pub mod handoff;
pub mod page;
pub mod republish;

pub use cursor::FeedCursor;
pub use handoff::CatchUp;
pub use page::{read_page, FeedPage, PageQuery, PageRead};
pub use republish::{Republish, RepublishFilter, RepublishReport};
