//! The benchmark harness behind `just bench`: every figure is a ratio against a baseline
//! measured in the same run on the same Postgres (pgbench), because the machine is shared and
//! noisy and absolute numbers from it mean little.
//!
//! Loops are bounded in time and count and target only loopback addresses.

pub mod backfill;
pub mod flow;
pub mod load;
pub mod pgbench;
pub mod relay;
pub mod replay;
pub mod service;
pub mod stats;
