//! `sluice-api`: the HTTP front of Sluice.
//!
//! A request to post a message is written to PostgreSQL — user message, pending assistant
//! message and an outbox row in one transaction — and answered 202. The [`relay`] publishes
//! outbox rows to RabbitMQ with confirms; workers answer on the `responses` queue, and the
//! [`responses`] consumer writes each answer onto its pending message, while the
//! [`dead_letters`] consumer records what could not be answered. Both run on the shared
//! [`consume`] loop; the [`reaper`] fails what stays pending past the retry horizon. Clients
//! poll the REST [`routes`]; operators use its admin part.

pub mod auth;
pub mod consume;
pub mod db;
pub mod dead_letters;
pub mod entities;
pub mod error;
pub mod extract;
pub mod limits;
pub mod reaper;
pub mod relay;
pub mod request;
pub mod responses;
pub mod routes;
pub mod server;

use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sea_orm::DatabaseConnection;
use sluice_shared::keypool::{KeySpec, load_keys};
use sluice_shared::{Settings, Topology};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub relay_wake: Arc<Notify>,
    pub broker_up: Arc<AtomicBool>,
    pub redis: redis::Client,
    /// The configured provider keys (for the admin view; workers hold their own copy).
    pub keys: Arc<Vec<KeySpec>>,
    pub limits: Arc<limits::Limits>,
    pub hashing: Arc<auth::HashQueue>,
    pub trusted_proxies: Arc<limits::address::TrustedProxies>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Settings(#[from] sluice_shared::settings::SettingsError),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Keys(#[from] sluice_shared::keypool::KeyFileError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// The whole HTTP surface. Every REST route gets the body limit and two timeouts: the body
/// must arrive within `http.body_timeout_ms` and the answer within `http.request_timeout_ms`
/// (both 408 `request_timeout`). Streaming routes (the SSE event stream) must not get the
/// whole-request timeout: merge their router into the result here, after the layers.
pub fn app(state: AppState) -> axum::Router {
    let http = &state.settings.http;
    let (body_timeout, request_timeout) = (
        Duration::from_millis(http.body_timeout_ms),
        Duration::from_millis(http.request_timeout_ms),
    );
    routes::router(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(timeout_in_json))
}

/// tower-http's timeout answers a bare 408; give it the API's error shape. A 408 that already
/// has a body (a body timeout noticed by an extractor) is left alone.
async fn timeout_in_json(response: axum::response::Response) -> axum::response::Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        return extract::request_timeout().into_response();
    }
    response
}

/// Migrates, then serves on `listener` with the relay and the response consumer running
/// beside the server, until `cancel` fires; then drains and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    settings.validate()?;
    settings.validate_api()?;
    let trusted_proxies = limits::address::TrustedProxies::parse(&settings.http.trusted_proxies)?;
    let database_url = settings.database.url.expose().clone();
    db::migrate(&database_url).await?;
    let db = db::connect(&database_url, settings.database.max_connections).await?;
    let topology = Topology::from_settings(&settings);
    let redis = redis::Client::open(settings.redis.url.expose().as_str())?;
    let state = AppState {
        db: db.clone(),
        limits: Arc::new(limits::Limits::new(&settings, redis.clone(), db.clone())),
        hashing: Arc::new(auth::HashQueue::new(settings.auth.max_waiting_hashes)),
        trusted_proxies: Arc::new(trusted_proxies),
        redis,
        keys: Arc::new(load_keys(&settings)?),
        settings: Arc::new(settings),
        relay_wake: Arc::new(Notify::new()),
        broker_up: Arc::new(AtomicBool::new(false)),
    };

    let tasks = TaskTracker::new();
    let relay = relay::Relay {
        db: db.clone(),
        amqp_url: state.settings.amqp.url.clone(),
        topology: topology.clone(),
        wake: state.relay_wake.clone(),
        broker_up: state.broker_up.clone(),
    };
    tasks.spawn(relay.run(cancel.clone()));
    let reaper = reaper::Reaper::new(db.clone(), &state.settings.retry);
    tasks.spawn(reaper.run(cancel.clone()));
    let responses = consume::QueueConsumer {
        amqp_url: state.settings.amqp.url.clone(),
        queue: topology.responses(),
        topology: topology.clone(),
        prefetch: responses::BATCH,
        name: "sluice-api responses",
        handler: responses::ResponseHandler { db: db.clone() },
    };
    tasks.spawn(responses.run(cancel.clone()));
    let dead_letters = consume::QueueConsumer {
        amqp_url: state.settings.amqp.url.clone(),
        queue: topology.dead_letters(),
        topology: topology.clone(),
        prefetch: dead_letters::PREFETCH,
        name: "sluice-api dead letters",
        handler: dead_letters::DeadLetterHandler {
            db: db.clone(),
            topology,
        },
    };
    tasks.spawn(dead_letters.run(cancel.clone()));
    tasks.close();

    tracing::info!(addr = %listener.local_addr()?, "sluice-api listening");
    let http = &state.settings.http;
    let header_read_timeout = Duration::from_millis(http.header_read_timeout_ms);
    // In-flight requests end within the request timeout; give them that long to finish.
    let drain = Duration::from_millis(http.request_timeout_ms);
    server::serve(
        listener,
        app(state),
        header_read_timeout,
        drain,
        cancel.clone(),
    )
    .await;
    cancel.cancel();
    tasks.wait().await;
    db.close().await?;
    Ok(())
}
