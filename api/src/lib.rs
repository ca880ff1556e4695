//! The order service's application layer: configuration, HTTP server, request authentication.
pub mod auth;
pub mod context;
pub mod error;
