//! One page of the feed for `GET /internal/events`: the envelopes the relay publishes, in feed
//! order, read behind the feed's fence (so a late commit is never skipped), optionally only
//! some types and one tenant.

use std::collections::BTreeSet;

use order_projections::feed;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::PgPool;

use super::cursor::FeedCursor;
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::relay::{encode_events, FeedMessage};
use crate::subjects::Subjects;

/// The most events one page may ask for.
pub const MAX_LIMIT: i64 = 1_000;

/// Feed rows one page reads at most while filters skip events, so that a sparse filter
/// answers in bounded time; the cursor then moves past what was skipped.
pub const MAX_SCANNED: i64 = 10_000;

/// Feed rows read and encoded at a time: a page of [`MAX_LIMIT`] events is read in several
/// chunks, so that only one chunk's rows and decoded events are held at once beside the
/// page's encoded bodies (a whole page's rows and decoded payloads raised the service's peak
/// memory by about 10 MiB).
const MAX_CHUNK: i64 = 250;

/// What a page asks for.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub after: FeedCursor,
    /// 1 to [`MAX_LIMIT`].
    pub limit: i64,
    /// Integration types (`order.created`); empty: every type.
    pub types: BTreeSet<String>,
    /// Only events of this tenant.
    pub tenant: Option<String>,
}

impl PageQuery {
    fn wants(&self, m: &FeedMessage) -> bool {
        (self.types.is_empty() || self.types.contains(&m.event_type))
            && self.tenant.as_ref().is_none_or(|t| *t == m.tenant_id)
    }
}

/// A page as the server reads it: the messages' bodies, where to continue, and whether the
/// read reached the end of the feed as it stood.
#[derive(Debug)]
pub struct PageRead {
    pub events: Vec<FeedMessage>,
    pub next: FeedCursor,
    pub caught_up: bool,
}

impl PageRead {
    /// The answer's JSON: `{"events": [envelope, ...], "next": cursor, "caughtUp": bool}`,
    /// each envelope the exact bytes the relay publishes.
    ///
    /// # Errors
    /// [`BusError::Codec`] if a body is not JSON (it always is).
    pub fn to_json(&self) -> Result<Vec<u8>, BusError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer<'a> {
            events: Vec<&'a RawValue>,
            next: FeedCursor,
            caught_up: bool,
        }
        let events = self
            .events
            .iter()
            .map(|m| {
                std::str::from_utf8(&m.body)
                    .map_err(|e| BusError::Codec(e.to_string()))
                    .and_then(|t| {
                        serde_json::from_str::<&RawValue>(t)
                            .map_err(|e| BusError::Codec(e.to_string()))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        serde_json::to_vec(&Answer {
            events,
            next: self.next,
            caught_up: self.caught_up,
        })
        .map_err(|e| BusError::Codec(e.to_string()))
    }
}

/// A page as a subscriber reads it (the answer of `GET /internal/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedPage<E = Envelope> {
    pub events: Vec<E>,
    pub next: FeedCursor,
    pub caught_up: bool,
}

/// Reads one page: up to `query.limit` matching events after `query.after`, scanning at most
/// [`MAX_SCANNED`] feed rows.
///
/// # Errors
/// [`BusError::Feed`] when Postgres fails; the encoder's error when the first event to read
/// cannot be published (the relay is stopped at the same event, and says why).
pub async fn read_page(
    pool: &PgPool,
    subjects: &Subjects,
    query: &PageQuery,
) -> Result<PageRead, BusError> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let chunk = if query.types.is_empty() && query.tenant.is_none() {
        limit
    } else {
        (limit * 4).clamp(100, MAX_LIMIT)
    }
    .min(MAX_CHUNK);
    let mut conn = pool.acquire().await?;
    let mut next = query.after;
    let mut events = Vec::new();
    let mut scanned = 0;
    loop {
        let rows = feed::read_raw_after(&mut *conn, next.0, chunk).await?;
        let read = rows.events().collect::<Result<Vec<_>, _>>()?;
        let count = i64::try_from(read.len()).unwrap_or(i64::MAX);
        let (messages, refused) = encode_events(&mut conn, subjects, read).await?;
        let encoded = messages.len();
        for (i, m) in messages.into_iter().enumerate() {
            next = FeedCursor(m.position);
            if query.wants(&m) {
                events.push(m);
                if events.len() as i64 == limit {
                    let rest_of_chunk = i + 1 < encoded || refused.is_some() || count == chunk;
                    return Ok(PageRead {
                        events,
                        next,
                        caught_up: !rest_of_chunk,
                    });
                }
            }
        }
        if let Some(e) = refused {
            if events.is_empty() && next == query.after {
                return Err(e);
            }
            return Ok(PageRead {
                events,
                next,
                caught_up: false,
            });
        }
        scanned += count;
        if count < chunk || scanned >= MAX_SCANNED {
            return Ok(PageRead {
                events,
                next,
                caught_up: count < chunk,
            });
        }
    }
}
