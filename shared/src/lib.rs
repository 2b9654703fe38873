//! Everything both Sluice binaries agree on: the wire [`envelope`]s that travel over RabbitMQ,
//! the queue [`topology`] (declared here and nowhere else), the [`settings`] they load at start,
//! the [`keypool`]'s keys and Redis layout, the live-reply [`stream`] events, per-instance [`metrics`], the [`broker`] connection and confirmed publishing, [`telemetry`] set-up, the [`text`] rules
//! for what may be stored, and the [`secret`] wrapper that keeps credentials out of logs.

pub mod broker;
pub mod envelope;
pub mod keypool;
pub mod metrics;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod text;
pub mod topology;

pub use secret::Secret;
pub use settings::Settings;
pub use topology::Topology;
