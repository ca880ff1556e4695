//! Headers of parked and redriven messages.
//!
//! A parked message keeps the original body and the original headers (minus the broker's own
//! `Nats-*` ones), and gains `Dlq-*` headers that say where it came from and why it stopped.
//! NATS header values cannot hold line breaks, so error text is flattened and cut.

use async_nats::HeaderMap;

/// The subject the message was consumed from (with any test prefix).
pub const ORIGINAL_SUBJECT: &str = "Dlq-Original-Subject";
/// The stream it was consumed from.
pub const ORIGINAL_STREAM: &str = "Dlq-Original-Stream";
/// Its sequence in that stream.
pub const STREAM_SEQUENCE: &str = "Dlq-Stream-Sequence";
/// Why it was parked.
pub const ERROR: &str = "Dlq-Error";
/// How many deliveries it had.
pub const ATTEMPTS: &str = "Dlq-Attempts";
/// When it was parked (RFC 3339, UTC).
pub const PARKED_AT: &str = "Dlq-Parked-At";
/// The order it is about, when the body said so.
pub const ORDER_ID: &str = "Dlq-Order-Id";
/// The producer's message id, when the body had one.
pub const MESSAGE_ID: &str = "Dlq-Message-Id";
/// The DLQ sequence of the message it is held behind.
pub const HELD_BEHIND: &str = "Dlq-Held-Behind";
/// On a redriven message: the DLQ sequence it was republished from.
pub const REDRIVE_OF: &str = "Dlq-Redrive-Of";

/// The broker's message-id header (duplicate detection).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// Makes a publish fail unless it lands in this stream.
pub const NATS_EXPECTED_STREAM: &str = "Nats-Expected-Stream";

/// Longest error text kept in a header.
pub const MAX_ERROR_LEN: usize = 1_000;

/// A header's value by case-insensitive name (producers disagree on `traceparent` casing).
pub fn get(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    let headers = headers?;
    if let Some(v) = headers.get(name) {
        return Some(v.as_str().to_owned());
    }
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str().to_owned())
}

/// The original headers worth carrying along: everything but the broker's `Nats-*` headers and
/// our own `Dlq-*` ones (which are written fresh each time).
pub fn carried(original: Option<&HeaderMap>) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let n: &str = name.as_ref();
            let lower = n.to_ascii_lowercase();
            if lower.starts_with("nats-") || lower.starts_with("dlq-") {
                continue;
            }
            for v in values {
                out.append(name.clone(), v.clone());
            }
        }
    }
    out
}

/// Text fit for a header value: one line, at most [`MAX_ERROR_LEN`] characters.
pub fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= MAX_ERROR_LEN {
        flat
    } else {
        format!("{}…", flat.chars().take(MAX_ERROR_LEN).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_dlq_headers_are_not_carried() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-abc-def-01");
        h.insert("Nats-Msg-Id", "x");
        h.insert(ERROR, "old");
        let c = carried(Some(&h));
        assert_eq!(
            get(Some(&c), "TraceParent").as_deref(),
            Some("00-abc-def-01")
        );
        assert!(get(Some(&c), NATS_MSG_ID).is_none());
        assert!(get(Some(&c), ERROR).is_none());
    }

    #[test]
    fn error_text_becomes_one_bounded_line() {
        assert_eq!(one_line("a\r\nb"), "a  b");
        assert!(one_line(&"x".repeat(5_000)).chars().count() <= MAX_ERROR_LEN + 1);
    }
}
