//! Service-to-service authentication (docs/contract.md §4, normative).
//!
//! Other services sign each request with HMAC-SHA256 under one of two schemes, hmac-v1 (with
//! a nonce) or hmac-v2, and the known-answer vectors in `tests/fixtures/vectors/` fix both byte
//! for byte. This module holds:
//! - [`signing`]: the schemes as pure functions, for verifying and for signing outgoing calls;
//! - [`keys`]: the [`KeyRing`] of shared and per-service keys with their rotation predecessors;
//! - [`policy`]: the allowlist of callers and the callers of each [`RoutePolicy`];
//! - [`nonce`]: the replay store shared by all replicas ([`NonceStore`], table `auth_nonces`);
//! - [`pending`]: the [`PendingNonce`] a command's handler gets instead, settled by the event
//!   store's append or by the nonce batcher;
//! - [`middleware`]: the [`Authenticator`] and the axum middleware [`authenticate`];
//! - [`caller`]: the [`Caller`] it hands to handlers;
//! - [`error`]: [`AuthConfigError`] for settings refused at start-up.
//!
//! No bypass value is ever accepted, and no secret or signature is ever logged.

pub mod caller;
pub mod error;
pub mod keys;
pub mod middleware;
pub mod nonce;
pub mod pending;
pub mod policy;
pub mod signing;

pub use caller::{Caller, Scheme};
pub use error::AuthConfigError;
pub use keys::{KeyRing, MIN_SECRET_LEN};
pub use middleware::{
    authenticate, check_offline, Admission, Authenticator, RouteGuard, DEFAULT_WINDOW,
    INVALID_CREDENTIALS, TIMESTAMP_EXPIRED,
};
pub use nonce::{NonceStore, MAX_NONCE_LEN, PURGE_MARGIN};
pub use pending::PendingNonce;
pub use policy::{CallerPolicy, RoutePolicy, DEFAULT_ALLOWED_SERVICES};
pub use signing::{
    canonical_v1, canonical_v2, sign_v1, sign_v2, v1_headers, v2_headers, verify_v1, verify_v2,
};
