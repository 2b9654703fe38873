//! `sluice-worker`: consumes `requests`, calls the model provider with the key pool, and
//! publishes each result to `responses` before acking. Workers hold no database connection:
//! everything they need travels in the request envelope.
//!
//! [`consumer`] owns the broker side, [`handler`] turns a request into an outcome using
//! [`keys`] and the [`provider`] client, [`routing`] decides what the outcome means for the
//! message, and [`health`] serves `/health`.

pub mod consumer;
pub mod handler;
pub mod health;
pub mod keys;
pub mod provider;
pub mod routing;

use sluice_shared::{Settings, Topology};
use std::future::IntoFuture;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Settings(#[from] sluice_shared::settings::SettingsError),
    #[error("no provider keys: set GEMINI_API_KEYS (or SLUICE__KEYS__FILE)")]
    NoKeys,
    #[error("provider client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("health server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one worker until `cancel` fires, serving `/health` on `health_listener`.
pub async fn run(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    settings.validate()?;
    if settings.keys.api_keys.is_empty() {
        return Err(RunError::NoKeys);
    }
    let context = Arc::new(handler::Context {
        provider: provider::Gemini::new(&settings.provider)?,
        keys: keys::KeyRing::new(settings.keys.api_keys.clone()),
    });
    let health = Arc::new(health::Health::default());
    tracing::info!(
        addr = %health_listener.local_addr()?,
        keys = context.keys.len(),
        "sluice-worker starting"
    );
    let shutdown = cancel.clone();
    let health_server = tokio::spawn(
        axum::serve(health_listener, health::router(health.clone()))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future(),
    );
    let consumer = consumer::Consumer {
        amqp_url: settings.amqp.url.clone(),
        topology: Topology::new(settings.queues.prefix.clone(), &settings.retry.delays_ms),
        prefetch: settings.worker.prefetch,
        budget_wait: std::time::Duration::from_millis(settings.worker.budget_wait_ms),
        context,
        health,
    };
    consumer.run(cancel.clone()).await;
    cancel.cancel();
    match health_server.await {
        Ok(result) => result?,
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
    }
    Ok(())
}
