//! The integration suite: one test binary, a fresh database per test (`#[sqlx::test]`), unique
//! NATS subjects per test, and real peer services started inside the tests.
//!
//! Each module covers one area; add a `mod` line per new file.

mod auth_matrix;
mod bad_input;
mod commands;
