//! Creates the dead-letter stream, or adds missing subjects to it and sets its limits.
//!
//! File storage, no age limit by default (a parked message must never age out unnoticed), and a
//! size limit past which new parks are refused rather than old ones dropped. Only settings
//! nats-server 2.9 understands are used.

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::ErrorCode;

use super::DeadLetters;
use crate::error::BusError;

impl DeadLetters {
    /// The stream's full configuration when created.
    pub fn stream_config(&self) -> Config {
        Config {
            name: self.config.stream.clone(),
            description: Some(
                "order-service: inbound messages that could not be applied (dead letters)"
                    .to_owned(),
            ),
            subjects: self.config.stream_subjects(),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            duplicate_window: self.config.duplicate_window,
            num_replicas: self.config.replicas.max(1),
            max_age: self.config.max_age,
            max_bytes: self.config.max_bytes,
            ..Config::default()
        }
    }

    /// Makes sure the stream exists with its subjects (when the configuration allows creating
    /// it; otherwise only checks that it exists).
    ///
    /// # Errors
    /// [`BusError::Broker`] when JetStream refuses or is unreachable, or the stream is missing
    /// and may not be created.
    #[tracing::instrument(skip_all, fields(stream = %self.config.stream), err)]
    pub async fn ensure_stream(&self) -> Result<(), BusError> {
        for _ in 0..2 {
            match self.jetstream.get_stream(&self.config.stream).await {
                Ok(mut stream) => {
                    let info = stream.info().await.map_err(broker)?;
                    let mut config = info.config.clone();
                    let missing: Vec<String> = self
                        .config
                        .stream_subjects()
                        .into_iter()
                        .filter(|s| !config.subjects.contains(s))
                        .collect();
                    let same_limits = config.max_age == self.config.max_age
                        && config.max_bytes == self.config.max_bytes
                        && config.discard == DiscardPolicy::New
                        && config.num_replicas == self.config.replicas.max(1);
                    if (missing.is_empty() && same_limits) || !self.config.ensure_stream {
                        return Ok(());
                    }
                    config.subjects.extend(missing);
                    config.max_age = self.config.max_age;
                    config.max_bytes = self.config.max_bytes;
                    config.discard = DiscardPolicy::New;
                    config.num_replicas = self.config.replicas.max(1);
                    self.jetstream
                        .update_stream(&config)
                        .await
                        .map_err(broker)?;
                    return Ok(());
                }
                Err(e) if is_not_found(e.kind()) => {
                    if !self.config.ensure_stream {
                        return Err(BusError::Broker(format!(
                            "dead-letter stream {} is missing and creating it is disabled",
                            self.config.stream
                        )));
                    }
                    match self.jetstream.create_stream(self.stream_config()).await {
                        Ok(_) => {
                            tracing::info!("created the dead-letter stream");
                            return Ok(());
                        }
                        Err(e) if is_name_taken(&e.kind()) => {}
                        Err(e) => return Err(broker(e)),
                    }
                }
                Err(e) => return Err(broker(e)),
            }
        }
        Err(BusError::Broker(format!(
            "dead-letter stream {} neither exists nor can be created",
            self.config.stream
        )))
    }
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: &CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

pub(crate) fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(e.to_string())
}
