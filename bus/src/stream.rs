//! The events stream (`TICKETTOKEN_EVENTS`, docs/contract.md §6): created when missing, brought up
//! to date when its subjects, duplicate window or retention limits drifted.
//!
//! Only settings nats-server 2.9 understands are used (the crate is built without async-nats's
//! `server_2_10+` features, so newer fields do not even compile). The duplicate window is what
//! makes the relay exactly-once: re-sends of an event within it are dropped by `Nats-Msg-Id`.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use async_nats::jetstream::ErrorCode;

use crate::error::BusError;
use crate::subjects::Subjects;

/// The production stream name.
pub const DEFAULT_STREAM: &str = "TICKETTOKEN_EVENTS";

/// The default duplicate window: longer than any relay retry cycle, short enough that the
/// server's id table stays small.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The default age limit of the events stream: a week. It matches the default retention of
/// handled ids in the inbox, so a message the stream can still redeliver is still recognised.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default size limit of the events stream: 10 GiB. Past it the oldest events go first.
pub const DEFAULT_MAX_BYTES: i64 = 10 * 1024 * 1024 * 1024;

/// JetStream's "no limit" for a size.
pub const NO_BYTE_LIMIT: i64 = -1;

/// What the events stream must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    /// Wildcard subjects the stream must capture (it may capture more).
    pub subjects: Vec<String>,
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// Age past which events are dropped; zero for no limit.
    pub max_age: Duration,
    /// Size past which the oldest events are dropped; [`NO_BYTE_LIMIT`] for none.
    pub max_bytes: i64,
}

impl StreamSpec {
    /// The events stream: `order.>`, `payment.>`, `dispute.>` and `ticket.>` under the prefix,
    /// file storage.
    pub fn events(name: &str, subjects: &Subjects, duplicate_window: Duration) -> Self {
        Self {
            name: name.to_owned(),
            subjects: subjects.stream_subjects(),
            duplicate_window,
            replicas: 1,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The full configuration used when creating the stream.
    pub fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            description: Some("Integration events of the ticketing platform".to_owned()),
            subjects: self.subjects.clone(),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas.max(1),
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            ..Config::default()
        }
    }
}

/// What [`ensure_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    Created,
    /// Existed; subjects were added, or the duplicate window or a limit was changed.
    Updated,
    Unchanged,
}

/// Creates the stream if missing; otherwise adds missing subjects and sets the duplicate window
/// and the retention limits. Subjects an operator added are kept.
///
/// # Errors
/// [`BusError::StreamMismatch`] when the existing stream cannot be made to fit (memory storage);
/// [`BusError::Broker`] when JetStream refuses or is unreachable.
#[tracing::instrument(skip_all, fields(stream = %spec.name), err)]
pub async fn ensure_stream(js: &Context, spec: &StreamSpec) -> Result<StreamOutcome, BusError> {
    // One retry covers the race of two replicas creating the stream at the same time.
    for _ in 0..2 {
        match js.get_stream(&spec.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(broker)?;
                return update_if_needed(js, spec, info.config.clone()).await;
            }
            Err(e) if is_not_found(e.kind()) => match js.create_stream(spec.config()).await {
                Ok(_) => {
                    tracing::info!(subjects = ?spec.subjects, "created the events stream");
                    return Ok(StreamOutcome::Created);
                }
                Err(e) if is_name_taken(&e.kind()) => continue,
                Err(e) => return Err(broker(e)),
            },
            Err(e) => return Err(broker(e)),
        }
    }
    Err(BusError::Broker(format!(
        "stream {} neither exists nor can be created",
        spec.name
    )))
}

async fn update_if_needed(
    js: &Context,
    spec: &StreamSpec,
    mut config: Config,
) -> Result<StreamOutcome, BusError> {
    if config.storage != StorageType::File {
        return Err(BusError::StreamMismatch(format!(
            "stream {} uses {:?} storage; the events stream must be file-backed (recreate it)",
            spec.name, config.storage
        )));
    }
    let have: BTreeSet<&String> = config.subjects.iter().collect();
    let missing: Vec<String> = spec
        .subjects
        .iter()
        .filter(|s| !have.contains(s))
        .cloned()
        .collect();
    let same_limits = config.duplicate_window == spec.duplicate_window
        && config.max_age == spec.max_age
        && config.max_bytes == spec.max_bytes
        && config.num_replicas == spec.replicas.max(1);
    if missing.is_empty() && same_limits {
        return Ok(StreamOutcome::Unchanged);
    }
    config.subjects.extend(missing.iter().cloned());
    config.duplicate_window = spec.duplicate_window;
    config.max_age = spec.max_age;
    config.max_bytes = spec.max_bytes;
    // On a JetStream cluster the server moves the stream to the new replica count (a single
    // server refuses more than one, which is a configuration error worth stopping on).
    config.num_replicas = spec.replicas.max(1);
    js.update_stream(&config).await.map_err(broker)?;
    tracing::info!(
        added = ?missing,
        duplicate_window = ?spec.duplicate_window,
        max_age = ?spec.max_age,
        max_bytes = spec.max_bytes,
        replicas = spec.replicas,
        "updated the events stream"
    );
    Ok(StreamOutcome::Updated)
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: &CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_covers_every_family_with_file_storage() {
        let spec = StreamSpec::events("S", &Subjects::new("p."), DEFAULT_DUPLICATE_WINDOW);
        let config = spec.config();
        assert_eq!(config.storage, StorageType::File);
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.max_bytes, 10 * 1024 * 1024 * 1024);
        assert_eq!(
            config.subjects,
            ["p.order.>", "p.payment.>", "p.dispute.>", "p.ticket.>"]
        );
    }
}
