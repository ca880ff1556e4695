//! The application's error: why a use case did not do what it was asked, in the application's
//! own words. The HTTP adapter turns it into a status in one place (`crate::error`), and the
//! inbound consumer and the jobs sort it into "give up" and "try again" with
//! [`AppError::is_permanent`], so none of them needs the other's vocabulary.
//!
//! Each message is what a caller may read: internal causes stay inside [`AppError::Internal`]
//! and are logged once by whoever reports the failure.

use order_domain::OrderError;
use order_projections::ProjectionError;

use crate::clients::ClientError;
use crate::deadline::DeadlinePassed;

/// Everything a use case can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request breaks a rule of its own shape or of the order's values (an unknown
    /// currency, a blank reason): it fails the same way every time.
    #[error("{0}")]
    Invalid(String),
    /// No such order, or not one the caller's tenant may see.
    #[error("{0}")]
    NotFound(String),
    /// The order's state forbids what was asked, or what was asked contradicts what is
    /// stored (a version the order never reached, a refund it does not know).
    #[error("{0}")]
    Rejected(String),
    /// An idempotency key came back with another request than the one it first named.
    #[error("{0}")]
    KeyReused(String),
    /// The request's replay key was already used: the command is a replay, and nothing was
    /// appended. Never retried: the same request is a replay every time.
    #[error("the request was already used")]
    Replayed,
    /// Other writers of the same order kept winning the race; safe to retry.
    #[error("the order was changed concurrently; retry the command")]
    ConcurrentWrite,
    /// Not now: the database is down or did not answer in time, the read model is behind,
    /// or the order is not yet in a state where the request can apply. `retry_after` is a
    /// hint in seconds, when there is one.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// A peer service answered, but with an error or an answer that is not its contract's.
    #[error("{0}")]
    PeerFailed(String),
    /// A bug or an unexpected failure; its text is never shown to a caller.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Use cases' result type.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// Wraps any internal failure.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    /// "No such order", the one wording every use case gives.
    pub fn order_not_found() -> Self {
        Self::NotFound("order not found".into())
    }

    /// Whether asking again with the same request can never succeed: the order or the request
    /// itself refuses it. Everything else (outages, lost races, peers, bugs that may be
    /// environmental) may pass on a later attempt.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_)
                | Self::NotFound(_)
                | Self::Rejected(_)
                | Self::KeyReused(_)
                | Self::Replayed
        )
    }

    /// The database could not be used; the cause goes to the log, not to the caller.
    pub(crate) fn database_unavailable(cause: &str) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Self::Unavailable {
            message: "the database is unavailable; retry shortly".into(),
            retry_after: Some(1),
        }
    }

    /// Connection-level sqlx failures are an outage; anything else is a bug.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        if order_projections::error::is_outage(&e) {
            Self::database_unavailable(&e.to_string())
        } else {
            Self::internal(e)
        }
    }

    /// A read-model failure: an outage is "not now", anything else a bug.
    pub fn from_read_side(e: ProjectionError) -> Self {
        if e.is_transient() {
            tracing::warn!(error = %e, "read model unavailable");
            Self::Unavailable {
                message: "the database is unavailable; retry shortly".into(),
                retry_after: Some(1),
            }
        } else {
            Self::internal(e)
        }
    }
}

impl From<OrderError> for AppError {
    fn from(e: OrderError) -> Self {
        use order_domain::ErrorKind;
        match e.kind() {
            ErrorKind::Invalid => Self::Invalid(e.to_string()),
            ErrorKind::NotFound => Self::NotFound(e.to_string()),
            ErrorKind::Conflict => Self::Rejected(e.to_string()),
        }
    }
}

impl From<DeadlinePassed> for AppError {
    fn from(_: DeadlinePassed) -> Self {
        Self::Unavailable {
            message: "the database did not answer in time; retry shortly".into(),
            retry_after: Some(1),
        }
    }
}

/// A peer that answered with an error is a peer failure; one that could not be asked
/// (unreachable, too slow, breaker open) is "not now". Messages name the peer and the
/// operation, never a URL, a header or the peer's own error text.
impl From<ClientError> for AppError {
    fn from(e: ClientError) -> Self {
        let message = e.public_message();
        match e {
            ClientError::Status { .. } | ClientError::InvalidResponse { .. } => {
                Self::PeerFailed(message)
            }
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => Self::Unavailable {
                message: format!("{message}; retry shortly"),
                retry_after: Some(1),
            },
            ClientError::BreakerOpen { .. } => Self::Unavailable {
                message: format!("{message}; retry later"),
                retry_after: Some(5),
            },
            e @ ClientError::InvalidRequest { .. } => Self::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_by_the_order_or_the_request_are_permanent() {
        for e in [
            AppError::Invalid("x".into()),
            AppError::order_not_found(),
            AppError::Rejected("x".into()),
            AppError::KeyReused("x".into()),
            AppError::Replayed,
        ] {
            assert!(e.is_permanent(), "{e:?}");
        }
        for e in [
            AppError::ConcurrentWrite,
            AppError::Unavailable {
                message: "x".into(),
                retry_after: None,
            },
            AppError::PeerFailed("x".into()),
            AppError::internal(anyhow::anyhow!("x")),
        ] {
            assert!(!e.is_permanent(), "{e:?}");
        }
    }
}
