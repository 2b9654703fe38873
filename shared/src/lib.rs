//! Everything both Sluice binaries agree on: the wire [`envelope`]s that travel over RabbitMQ,
//! the queue [`topology`] (declared here and nowhere else), the [`settings`] they load at start,
//! the [`keypool`]'s keys and Redis layout, the live-reply [`stream`] events, per-instance [`metrics`], the [`supervisor`] of each process's tasks, the one [`retry`] loop, the [`broker`] connection and confirmed publishing, [`telemetry`] set-up, the [`text`] rules
//! for what may be stored, and the [`secret`] wrapper that keeps credentials out of logs.

// Tests may spawn freely and read their own environment (clippy.toml bans both elsewhere).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod broker;
pub mod catalogue;
pub mod envelope;
pub mod keypool;
pub mod marks;
pub mod metrics;
pub mod redis_link;
pub mod retry;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod stream;
pub mod supervisor;
pub mod telemetry;
pub mod text;
pub mod topology;

pub use secret::Secret;
pub use settings::Settings;
pub use topology::Topology;
