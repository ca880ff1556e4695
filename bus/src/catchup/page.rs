//! One page of the feed for `GET /internal/events`: the envelopes the relay publishes, in feed
//! order, read behind the feed's fence (so a late commit is never skipped), optionally only
//! some types and one tenant.

use std::collections::BTreeSet;

use order_projections::feed;
use serde::Deserialize;
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

/// A page as the server reads it: the answer's JSON, written one envelope at a time as each
/// chunk is encoded, so that a page holds its bodies once (not its messages, and not a second
/// copy for the answer); then where to continue, and whether the read reached the end of the
/// feed as it stood.
#[derive(Debug)]
pub struct PageRead {
    /// `{"events":[` and the envelopes so far, comma-separated.
    json: Vec<u8>,
    /// Envelopes in `json`.
    count: usize,
    next: FeedCursor,
    caught_up: bool,
}

impl PageRead {
    const OPENING: &'static [u8] = b"{\"events\":[";

    fn new(after: FeedCursor) -> Self {
        Self {
            json: Self::OPENING.to_vec(),
            count: 0,
            next: after,
            caught_up: false,
        }
    }

    /// Appends one envelope, the exact bytes the relay publishes.
    ///
    /// # Errors
    /// [`BusError::Codec`] if the body is not one JSON value (it always is), so that the
    /// answer is JSON whatever a body holds.
    fn push(&mut self, message: &FeedMessage) -> Result<(), BusError> {
        serde_json::from_slice::<&RawValue>(&message.body)
            .map_err(|e| BusError::Codec(e.to_string()))?;
        if self.count > 0 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(&message.body);
        self.count += 1;
        Ok(())
    }

    fn end(mut self, next: FeedCursor, caught_up: bool) -> Self {
        self.next = next;
        self.caught_up = caught_up;
        self
    }

    /// The answer's JSON: `{"events": [envelope, ...], "next": cursor, "caughtUp": bool}`.
    ///
    /// # Errors
    /// [`BusError::Codec`] if the cursor does not serialize (it always does).
    pub fn into_json(self) -> Result<Vec<u8>, BusError> {
        let Self {
            mut json,
            next,
            caught_up,
            ..
        } = self;
        json.extend_from_slice(b"],\"next\":");
        serde_json::to_writer(&mut json, &next).map_err(|e| BusError::Codec(e.to_string()))?;
        json.extend_from_slice(b",\"caughtUp\":");
        json.extend_from_slice(if caught_up { b"true" } else { b"false" });
        json.push(b'}');
        Ok(json)
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
/// cannot be published (the relay is stopped at the same event, and says why);
/// [`BusError::Codec`] if an encoded body is not one JSON value (it always is).
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
    let mut page = PageRead::new(query.after);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
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
                page.push(&m)?;
                if page.count == limit {
                    let rest_of_chunk = i + 1 < encoded || refused.is_some() || count == chunk;
                    return Ok(page.end(next, !rest_of_chunk));
                }
            }
        }
        if let Some(e) = refused {
            if page.count == 0 && next == query.after {
                return Err(e);
            }
            return Ok(page.end(next, false));
        }
        scanned += count;
        if count < chunk || scanned >= MAX_SCANNED {
            return Ok(page.end(next, count < chunk));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_projections::FeedPosition;
    use serde_json::{json, Value};

    fn message(global_position: i64, body: &str) -> FeedMessage {
        FeedMessage {
            position: FeedPosition {
                transaction_id: 7,
                global_position,
            },
            id: uuid::Uuid::nil(),
            aggregate_id: String::new(),
            event_type: "order.created".into(),
            tenant_id: String::new(),
            subject: String::new(),
            headers: async_nats::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    fn answer(page: PageRead) -> Value {
        serde_json::from_slice(&page.into_json().expect("json")).expect("the answer is JSON")
    }

    #[test]
    fn an_empty_page_is_an_empty_list_with_its_cursor() {
        let page = PageRead::new(FeedCursor::default()).end(FeedCursor::default(), true);
        assert_eq!(
            page.into_json().unwrap(),
            br#"{"events":[],"next":"0-0","caughtUp":true}"#
        );
    }

    #[test]
    fn a_page_holds_each_body_as_sent() {
        let mut page = PageRead::new(FeedCursor::default());
        page.push(&message(1, r#"{"a":1}"#)).unwrap();
        page.push(&message(2, r#"{"b":[2,3]}"#)).unwrap();
        let end = FeedCursor(FeedPosition {
            transaction_id: 7,
            global_position: 2,
        });
        let json = page.end(end, false).into_json().unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"events":[{"a":1},{"b":[2,3]}],"next":"7-2","caughtUp":false}"#
        );
    }

    #[test]
    fn a_body_that_is_not_one_json_value_is_refused() {
        let mut page = PageRead::new(FeedCursor::default());
        assert!(matches!(
            page.push(&message(1, r#"{"a":1},{"b":2}"#)),
            Err(BusError::Codec(_))
        ));
        assert_eq!(page.count, 0);
        page.push(&message(2, r#"{"c":3}"#)).unwrap();
        let page = page.end(FeedCursor::default(), true);
        assert_eq!(
            answer(page),
            json!({"events": [{"c": 3}], "next": "0-0", "caughtUp": true})
        );
    }
}
