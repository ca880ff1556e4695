//! HTTP routes, one module per resource. Each exposes its handlers; [`crate::startup::router`]
//! assembles them with their authentication policy.

pub mod answers;
pub mod commands;
pub mod events;
pub mod health;
pub mod jobs;
pub mod queries;
