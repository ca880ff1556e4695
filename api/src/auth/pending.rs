//! The replay key of a signed command, checked but not yet recorded: what the middleware hands
//! a command's handler on the routes that record it with the command's own events.
//!
//! Recording the key and then appending the events would cost a command two commits in a row.
//! On these routes the middleware checks timestamp, caller and signature as always, and instead
//! of recording the replay key it leaves a [`PendingNonce`] for the handler, which passes it
//! down to the event store. Exactly two things may spend the key:
//! - the event store's append statement, which inserts the key and the events together, so that
//!   the events are appended only if the key was unused (`crate::app::store`); it settles the
//!   [`PendingNonce`], which consumes it;
//! - the middleware, through the nonce batcher, for a command that appended nothing (refused,
//!   already satisfied, or failed before it reached the store), once the handler answered or
//!   when the request is dropped before that.
//!
//! Nothing can forget it: once the handler has answered, the middleware spends any key still
//! unsettled, and a key that turns out to be used replaces the answer with
//! the same 401 as a replay refused up front (unless the handler failed with a 5xx: its append
//! may have committed the key before the connection dropped, and the caller must be told to
//! retry, not that its signature was refused). So a replay is refused whatever its body, and it
//! appends nothing; a use case with an outside effect before its append must not take a pending
//! key (its route records first).
//!
//! Depends on chrono only: the middleware hands the key over (and makes it an extractor) and
//! spends what nothing settled; the event store settles it.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};

/// A replay key to record once, as first use, by whatever settles it (see the module doc).
/// Not `Clone`: one request, one key, one settlement.
#[derive(Debug)]
#[must_use = "a pending nonce must reach the event store or the nonce batcher"]
pub struct PendingNonce {
    service: String,
    key: String,
    expires_at: DateTime<Utc>,
    outcome: Arc<OnceLock<bool>>,
}

/// The middleware's side of a [`PendingNonce`]: how it was settled, if it was.
#[derive(Debug)]
pub(crate) struct Settlement(Arc<OnceLock<bool>>);

impl PendingNonce {
    /// A key to settle, and the handle that reads how it was settled.
    pub(crate) fn new(service: &str, key: &str, expires_at: DateTime<Utc>) -> (Self, Settlement) {
        let outcome = Arc::new(OnceLock::new());
        let pending = Self {
            service: service.to_owned(),
            key: key.to_owned(),
            expires_at,
            outcome: Arc::clone(&outcome),
        };
        (pending, Settlement(outcome))
    }

    /// The service that signed the request.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The nonce (hmac-v1) or signature-derived key (hmac-v2).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Until when the key must be kept.
    pub(crate) fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Records what the statement that inserted the key found: `true` for first use, `false`
    /// when the key was already taken. Only a statement that inserted the key into
    /// `auth_nonces` may call it; the return is `first_use`, for the caller's convenience.
    pub(crate) fn settle(self, first_use: bool) -> bool {
        // Set once: `self` is consumed, and the cell has no other writer.
        let _ = self.outcome.set(first_use);
        first_use
    }
}

impl Settlement {
    /// `Some(true)`: first use; `Some(false)`: a replay; `None`: not settled (yet).
    pub(crate) fn outcome(&self) -> Option<bool> {
        self.0.get().copied()
    }
}
