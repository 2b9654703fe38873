//! `sluice-worker`: consumes `requests`, calls the model provider with the key pool, and
//! publishes each result to `responses` before acking. Workers hold no database connection:
//! everything they need travels in the request envelope.
//!
//! [`consumer`] owns the broker side, [`handler`] turns a request into an outcome using the
//! [`budget`]s of the key pool and the [`provider`] client, [`chunks`] carries streamed pieces
//! of replies to the stream exchange and Redis, [`routing`] decides what the outcome means for
//! the message, [`probe`] heals disabled keys, and [`health`] serves `/health` (with the
//! worker's `/metrics` beside it). [`route_health`] cools down egress routes that refuse
//! connections, and [`bounds`] holds the time limits that budgets, routes and the provider
//! share. Every long-running task runs in one supervisor (see [`run_with`]).

// Tests may spawn freely and read their own environment (clippy.toml bans both elsewhere).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod bounds;
pub mod budget;
pub mod chunks;
pub mod consumer;
pub mod fallback;
#[cfg(test)]
mod fixtures;
pub mod handler;
pub mod health;
pub mod holding;
pub mod probe;
pub mod provider;
pub mod route_health;
pub mod routing;
pub mod stops;

use arc_swap::ArcSwap;
use sluice_shared::catalogue::{Catalogue, ProviderKind};
use sluice_shared::keypool::{
    KeyFileWatch, KeyPoolState, KeySpec, RedisLayout, ReloadTrigger, keys_with_file_text,
    read_key_file, watch_keys,
};
use sluice_shared::marks::Marks;
use sluice_shared::metrics::Metrics;
use sluice_shared::redis_link::{self, RedisLink};
use sluice_shared::settings::{LimitsBackend, millis_of};
use sluice_shared::supervisor::{Supervisor, TaskFailed, TaskHooks};
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
    #[error(
        "invalid setting SLUICE__KEYS__ALIASES: aliases without secrets are the API's view; a worker needs the keys themselves (GEMINI_API_KEYS or SLUICE__KEYS__FILE)"
    )]
    AliasesOnly,
    #[error(transparent)]
    Keys(#[from] sluice_shared::keypool::KeyFileError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("provider client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("health server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Runs one worker until `cancel` fires, serving `/health` and `/metrics` on
/// `health_listener`. Everything it runs records into a registry of its own (see
/// [`sluice_shared::metrics`]), so workers in one process count apart. The keys file is
/// re-read when it changes; [`run_with_reload`] also re-reads it when asked.
pub async fn run(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    run_with_reload(settings, health_listener, cancel, ReloadTrigger::new()).await
}

/// [`run`], re-reading the keys file whenever `reload` fires (SIGHUP in `main`).
pub async fn run_with_reload(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
    reload: ReloadTrigger,
) -> Result<(), RunError> {
    let hooks = TaskHooks::default();
    run_with(settings, health_listener, cancel, reload, hooks).await
}

/// [`run_with_reload`] with test hooks that can end a named task. Every long-running task runs
/// in one [`Supervisor`]: if one ends before `cancel` fires, the rest stop and this returns
/// [`RunError::Task`] naming it (and `main` exits 1, so the orchestrator restarts the process).
pub async fn run_with(
    settings: Settings,
    health_listener: TcpListener,
    cancel: CancellationToken,
    reload: ReloadTrigger,
    hooks: TaskHooks,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let supervisor = Supervisor::new(cancel, hooks);
    metrics
        .instrument(serve(
            settings,
            health_listener,
            supervisor,
            reload,
            metrics.clone(),
        ))
        .await
}

/// What every context of this worker shares, whatever keys it runs with.
struct Shared {
    settings: Arc<Settings>,
    catalogue: Arc<Catalogue>,
    breakers: Arc<fallback::Breakers>,
    holding: Arc<holding::Holding>,
    /// The model Gemini keys are probed on.
    gemini_probe_model: String,
    redis: Option<Arc<RedisLink>>,
    egress: Arc<route_health::RouteHealth>,
    /// Streamed pieces go out through one sink whatever the keys.
    chunks: chunks::ChunkSink,
    stops: Arc<stops::Stops>,
}

impl Shared {
    /// Moves the worker onto `keys`: budgets inherit what the old context knew. Deliveries in
    /// hand keep the context they loaded until their reservation is settled; from here on
    /// every reservation is made on the new keys.
    fn swap_keys(&self, live: &handler::Live, keys: Vec<KeySpec>) -> Result<(), String> {
        let keys = Arc::new(keys);
        let context = self.context(keys.clone()).map_err(|e| e.to_string())?;
        context.budgets.inherit(&live.load().budgets);
        live.store(Arc::new(context));
        metrics::gauge!("sluice_keys_configured").set(keys.len() as f64);
        Ok(())
    }

    /// A context for `keys`: budgets and a provider client with a route for each proxy.
    fn context(&self, keys: Arc<Vec<KeySpec>>) -> Result<handler::Context, RunError> {
        let settings = &self.settings;
        let redis = self.redis.clone().map(|link| {
            budget::redis::RedisBudgets::new(
                link,
                RedisLayout::new(settings.redis.prefix.clone()),
                keys.clone(),
                millis_of(settings.provider.timeout),
            )
        });
        Ok(handler::Context {
            provider: provider::Provider::new(
                &settings.provider,
                &keys,
                self.egress.clone(),
                &self.gemini_probe_model,
            )?,
            catalogue: self.catalogue.clone(),
            breakers: self.breakers.clone(),
            holding: self.holding.clone(),
            fallback_after: settings.routing.fallback_after,
            budgets: budget::Budgets::new(keys, redis, settings.worker.expected_replicas),
            budget_wait: settings.worker.budget_wait,
            disable_after: settings.keys.disable_after.max(1),
            chunks: self.chunks.clone(),
            stops: self.stops.clone(),
        })
    }
}

async fn serve(
    settings: Settings,
    health_listener: TcpListener,
    mut supervisor: Supervisor,
    reload: ReloadTrigger,
    metrics: Metrics,
) -> Result<(), RunError> {
    settings.validate()?;
    if !settings.keys.aliases.is_empty() {
        return Err(RunError::AliasesOnly);
    }
    let file_text = read_key_file(&settings)?;
    let keys = Arc::new(keys_with_file_text(&settings, file_text.as_deref())?);
    if keys.is_empty() {
        return Err(RunError::NoKeys);
    }
    let cancel = supervisor.cancel_token().clone();
    let redis_client = redis::Client::open(settings.redis.url.expose().as_str())?;
    let chunks = chunks::start(
        chunks::Targets {
            amqp_url: settings.amqp.url.clone(),
            exchange: Topology::from_settings(&settings).stream_exchange(),
            // Partial texts live in Redis even when budgets are local (the API reads them).
            redis: redis_client.clone(),
            redis_prefix: settings.redis.prefix.clone(),
            partial_ttl: settings.stream.partial_ttl,
            coalesce: settings.stream.coalesce,
        },
        &mut supervisor,
    );
    // Stop marks are read whatever the budgets' backend: the API writes them in Redis.
    let stops = stops::Stops::new(
        Marks::new(
            Arc::new(RedisLink::new(redis_client.clone()).resting(redis_link::REST)),
            settings.redis.prefix.clone(),
        ),
        // A request counts as in flight from its check to its last call's end.
        settings
            .worker
            .budget_wait
            .saturating_add(settings.provider.timeout)
            .saturating_add(stops::POLL),
    );
    supervisor.spawn("stop checks", stops.clone().run(cancel.clone()));
    let settings = Arc::new(settings);
    let catalogue = settings.catalogue();
    let shared = Shared {
        gemini_probe_model: catalogue
            .probe_model(ProviderKind::Gemini)
            .unwrap_or(&settings.provider.model)
            .to_owned(),
        catalogue: Arc::new(catalogue),
        breakers: Arc::new(fallback::Breakers::marked(fallback::BreakerMarks {
            link: Arc::new(RedisLink::new(redis_client.clone())),
            state: KeyPoolState::new(RedisLayout::new(settings.redis.prefix.clone())),
            worker: uuid::Uuid::new_v4().simple().to_string(),
        })),
        holding: Arc::default(),
        stops,
        redis: (settings.limits.backend == LimitsBackend::Redis)
            .then(|| Arc::new(RedisLink::new(redis_client))),
        egress: Arc::default(),
        chunks,
        settings: settings.clone(),
    };
    let live = Arc::new(ArcSwap::from_pointee(shared.context(keys.clone())?));
    let health = Arc::new(health::Health {
        tasks: supervisor.health(),
        ..health::Health::default()
    });
    metrics::gauge!("sluice_keys_configured").set(keys.len() as f64);
    tracing::info!(
        addr = %health_listener.local_addr()?,
        keys = keys.len(),
        budgets = live.load().budgets.mode(),
        "sluice-worker starting"
    );
    supervisor.spawn("metrics upkeep", metrics.clone().upkeep(cancel.clone()));
    let watch = KeyFileWatch::new(settings.clone(), &keys, file_text);
    supervisor.spawn(
        "keys watch",
        watch_keys(watch, reload, cancel.clone(), {
            let live = live.clone();
            move |keys| shared.swap_keys(&live, keys)
        }),
    );
    supervisor.spawn(
        "key prober",
        probe::run(
            live.clone(),
            settings.keys.probe_interval.max(Duration::from_millis(100)),
            cancel.clone(),
        ),
    );
    let shutdown = cancel.clone();
    supervisor.spawn(
        "health server",
        axum::serve(
            health_listener,
            health::router(health.clone(), live.clone()).merge(metrics.router()),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .into_future(),
    );
    let consumer = consumer::Consumer {
        amqp_url: settings.amqp.url.clone(),
        topology: Topology::from_settings(&settings),
        prefetch: settings.worker.prefetch,
        no_key_max_wait_ms: millis_of(settings.keys.no_key_max_wait),
        fallback_after_failures: settings.routing.fallback_after_failures,
        context: live,
        health,
        shutdown_grace: settings.worker.shutdown_grace,
    };
    supervisor.spawn("consumer", consumer.run(cancel));
    Ok(supervisor.run().await?)
}
