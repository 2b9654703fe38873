//! `sluice-worker`: consumes `requests`, calls the model provider with the key pool, and
//! publishes each result to `responses` before acking. Workers hold no database connection:
//! everything they need travels in the request envelope.
//!
//! [`consumer`] owns the broker side, [`handler`] turns a request into an outcome using the
//! [`budget`]s of the key pool and the [`provider`] client, [`chunks`] carries streamed pieces
//! of replies to the stream exchange and Redis, [`routing`] decides what the outcome means for
//! the message, [`probe`] heals disabled keys, and [`health`] serves `/health` (with the
//! worker's `/metrics` beside it).

pub mod budget;
pub mod chunks;
pub mod consumer;
pub mod egress;
#[cfg(test)]
mod fixtures;
pub mod handler;
pub mod health;
pub mod probe;
pub mod provider;
pub mod routing;

use sluice_shared::keypool::{RedisLayout, load_keys};
use sluice_shared::metrics::Metrics;
use sluice_shared::{Settings, Topology};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Settings(#[from] sluice_shared::settings::SettingsError),
    #[error("no provider keys: set GEMINI_API_KEYS (or SLUICE__KEYS__FILE)")]
    NoKeys,
    #[error(transparent)]
    Keys(#[from] sluice_shared::keypool::KeyFileError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("provider client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("health server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one worker until `cancel` fires, serving `/health` and `/metrics` on
/// `health_listener`. Everything it runs records into a registry of its own (see
/// [`sluice_shared::metrics`]), so workers in one process count apart.
pub async fn run(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    metrics
        .instrument(serve(settings, health_listener, cancel, metrics.clone()))
        .await
}

async fn serve(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
    metrics: Metrics,
) -> Result<(), RunError> {
    settings.validate()?;
    let keys = Arc::new(load_keys(&settings)?);
    if keys.is_empty() {
        return Err(RunError::NoKeys);
    }
    let redis = (settings.limits.backend == "redis")
        .then(|| redis::Client::open(settings.redis.url.expose().as_str()))
        .transpose()?;
    let chunks = chunks::spawn(
        chunks::Targets {
            amqp_url: settings.amqp.url.clone(),
            exchange: Topology::from_settings(&settings).stream_exchange(),
            // Partial texts live in Redis even when budgets are local (the API reads them).
            redis: redis::Client::open(settings.redis.url.expose().as_str()).ok(),
            redis_prefix: settings.redis.prefix.clone(),
            partial_ttl: Duration::from_millis(settings.stream.partial_ttl_ms),
        },
        cancel.clone(),
    );
    let redis = redis.map(|client| {
        budget::redis::RedisBudgets::new(
            client,
            RedisLayout::new(settings.redis.prefix.clone()),
            keys.clone(),
            settings.provider.timeout_ms,
        )
    });
    let context = Arc::new(handler::Context {
        provider: provider::Gemini::new(&settings.provider, &keys)?,
        budgets: budget::Budgets::new(keys.clone(), redis, settings.worker.expected_replicas),
        budget_wait: Duration::from_millis(settings.worker.budget_wait_ms),
        disable_after: settings.keys.disable_after.max(1),
        chunks,
    });
    let health = Arc::new(health::Health::default());
    metrics::gauge!("sluice_keys_configured").set(keys.len() as f64);
    let upkeep = sluice_shared::metrics::spawn(metrics.clone().upkeep(cancel.clone()));
    tracing::info!(
        addr = %health_listener.local_addr()?,
        keys = keys.len(),
        budgets = context.budgets.mode(),
        "sluice-worker starting"
    );
    let prober = sluice_shared::metrics::spawn(probe::run(
        context.clone(),
        settings.provider.model.clone(),
        Duration::from_millis(settings.keys.probe_interval_ms.max(100)),
        cancel.clone(),
    ));
    let shutdown = cancel.clone();
    let health_server = tokio::spawn(
        axum::serve(
            health_listener,
            health::router(health.clone(), context.clone()).merge(metrics.router()),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .into_future(),
    );
    let consumer = consumer::Consumer {
        amqp_url: settings.amqp.url.clone(),
        topology: Topology::from_settings(&settings),
        prefetch: settings.worker.prefetch,
        no_key_max_wait_ms: settings.keys.no_key_max_wait_ms,
        context,
        health,
        shutdown_grace: Duration::from_millis(settings.worker.shutdown_grace_ms),
    };
    consumer.run(cancel.clone()).await;
    cancel.cancel();
    let _ = prober.await;
    let _ = upkeep.await;
    match health_server.await {
        Ok(result) => result?,
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
    }
    Ok(())
}
