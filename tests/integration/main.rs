//! The integration suite: one test binary, a fresh database per test (`#[sqlx::test]`), unique
//! NATS subjects per test, and real peer services started inside the tests.
//!
//! Each module covers one area; add a `mod` line per new file.

mod attacks;
mod auth_matrix;
mod bad_input;
mod catchup;
mod clients;
mod commands;
mod feed;
mod fuzz;
mod inbound;
mod jobs;
mod logs;
mod nats_security;
mod ops;
mod ops_kit;
mod outage;
mod read_side;
mod refunds;
mod relay;
mod relay_duplicates;
mod replay;
mod self_contained;
mod signed_commands;
mod soak;
mod standby;
mod topology;
