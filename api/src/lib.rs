//! `sluice-api`: the HTTP front of Sluice, in five parts, each importing only those below it
//! (checked by `tests/layers.rs`).
//!
//! - [`http`] (top): the REST API and the event-stream endpoints, with sign-in and limits. A
//!   post goes to the store's group-commit writer (user message, pending reply and outbox row,
//!   committed with whatever else is queued) and is answered 202 once committed.
//! - [`messaging`]: the broker side. The relay publishes each committed request (and sweeps the
//!   outbox for what an outage left); workers answer on `responses`, whose consumer writes each
//!   answer onto its pending reply; the dead-letter consumer records what could not be answered.
//! - [`live`]: live replies for browsers: the hub fans the stream exchange's events out to
//!   server-sent event streams, which read each change back from the store.
//! - [`reaper`]: fails what stays pending past the retry horizon; [`retention`] deletes what is
//!   kept no longer (old dead letters, idle chats, expired revocations).
//! - [`store`] (bottom): every SQL statement and the message state machine. Its commits' change
//!   notices leave through a channel that [`run`] hands to `live`'s publisher.
//!
//! [`views`] are the JSON shapes of stored rows that `http` and `live` both send. [`run`] wires
//! the parts together and runs them beside the server, on the [`Listeners`]: the public one and
//! the one that serves `GET /metrics`.

// Tests may spawn freely and read their own environment (clippy.toml bans both elsewhere).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod export;
pub mod http;
pub mod live;
pub mod messaging;
pub mod reaper;
pub mod retention;
pub mod store;
pub mod views;

use arc_swap::ArcSwap;
pub use http::AppState;
use messaging::consume::QueueConsumer;
use sluice_shared::keypool::{
    KeyFileWatch, ReloadTrigger, keys_with_file_text, read_key_file, watch_keys,
};
use sluice_shared::marks::Marks;
use sluice_shared::metrics::Metrics;
use sluice_shared::redis_link::{self, RedisLink};
use sluice_shared::settings::HttpSettings;
use sluice_shared::supervisor::{Supervisor, TaskFailed, TaskHooks};
use sluice_shared::{Settings, Topology};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use store::outbox::Handoff;
use store::posts::{BatchBounds, PostWriter};
use store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Rows handed to the relay that may wait for it; past this they wait for the sweep.
const HANDOFF_QUEUE: usize = 1024;
/// Scrapers open at once on the metrics listener: Prometheus uses one or two.
const METRICS_CONNECTIONS: usize = 16;
/// A scrape is answered at once; on shutdown one in progress gets this long.
const METRICS_DRAIN: Duration = Duration::from_secs(2);

/// The API's listeners: `http` (`http.addr`) serves the API, `metrics` (`http.metrics_addr`)
/// serves only `GET /metrics`, so the public port never answers it. Tests bind both to port 0
/// and read their addresses back.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub metrics: TcpListener,
}

/// A listener that could not be bound, naming the setting that chose its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (set {setting} to another address): {source}")]
pub struct BindError {
    pub setting: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds `http.addr` and `http.metrics_addr`.
    pub async fn bind(http: &HttpSettings) -> Result<Self, BindError> {
        let bind = |setting: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| BindError {
                setting,
                addr,
                source,
            })
        };
        Ok(Self {
            http: bind("SLUICE__HTTP__ADDR", http.addr).await?,
            metrics: bind("SLUICE__HTTP__METRICS_ADDR", http.metrics_addr).await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Settings(#[from] sluice_shared::settings::SettingsError),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Keys(#[from] sluice_shared::keypool::KeyFileError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Migrates (unless `database.migrate_on_start` is off), then serves the API on
/// `listeners.http` and `GET /metrics` on `listeners.metrics`, with the relay and the consumers
/// running beside the servers, until `cancel` fires; then drains and returns. Everything it runs records into a registry of its own (see
/// [`sluice_shared::metrics`]), so APIs in one process count apart. The keys the admin view
/// lists follow the keys file; [`run_with_reload`] also re-reads it when asked.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    run_with(
        settings,
        listeners,
        cancel,
        ReloadTrigger::new(),
        TaskHooks::default(),
    )
    .await
}

/// [`run`], re-reading the keys file whenever `reload` fires (SIGHUP in `main`).
pub async fn run_with_reload(
    settings: Settings,
    listeners: Listeners,
    cancel: CancellationToken,
    reload: ReloadTrigger,
) -> Result<(), RunError> {
    run_with(settings, listeners, cancel, reload, TaskHooks::default()).await
}

/// [`run_with_reload`] with test hooks that can end a named task. Every long-running task runs
/// in one [`Supervisor`]: if one ends before `cancel` fires, the rest stop and this returns
/// [`RunError::Task`] naming it (and `main` exits 1, so the orchestrator restarts the process).
pub async fn run_with(
    settings: Settings,
    listeners: Listeners,
    cancel: CancellationToken,
    reload: ReloadTrigger,
    hooks: TaskHooks,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let supervisor = Supervisor::new(cancel, hooks);
    metrics
        .instrument(serve(
            settings,
            listeners,
            supervisor,
            reload,
            metrics.clone(),
        ))
        .await
}

async fn serve(
    settings: Settings,
    listeners: Listeners,
    mut supervisor: Supervisor,
    reload: ReloadTrigger,
    metrics: Metrics,
) -> Result<(), RunError> {
    settings.validate()?;
    settings.validate_api()?;
    let trusted_proxies =
        http::limits::address::TrustedProxies::parse(&settings.http.trusted_proxies)?;
    let database_url = settings.database.url.expose().clone();
    if settings.database.migrate_on_start {
        Store::migrate(&database_url).await?;
    } else {
        // A deployment that migrates in its own step (a Job before the rollout) keeps the
        // schema change out of every replica's start, and the replicas need no DDL rights.
        tracing::info!("database.migrate_on_start is off: not migrating");
    }
    let (notices_tx, notices_rx) = tokio::sync::mpsc::channel(live::publisher::QUEUE);
    let catalogue = Arc::new(settings.catalogue());
    let store = Store::connect(&database_url, settings.database.max_connections)
        .await?
        .with_notices(store::notices::Notices::new(notices_tx))
        .with_prices(catalogue.clone());
    let topology = Topology::from_settings(&settings);
    let redis = redis::Client::open(settings.redis.url.expose().as_str())?;
    let cancel = supervisor.cancel_token().clone();
    let (hub, hub_link) = live::Hub::new(
        settings.stream.watcher_buffer,
        live::partials::Partials::new(redis.clone(), settings.redis.prefix.clone()),
        cancel.clone(),
    );
    let (fresh_tx, fresh_rx) = tokio::sync::mpsc::channel(HANDOFF_QUEUE);
    let handoff = Handoff::new(fresh_tx);
    let (posts, writer) = PostWriter::new(store.clone(), BatchBounds::default(), handoff.clone());
    let key_file_text = read_key_file(&settings)?;
    let keys = keys_with_file_text(&settings, key_file_text.as_deref())?;
    let stops = http::stops::StopMarks::new(
        Marks::new(
            Arc::new(RedisLink::new(redis.clone()).resting(redis_link::REST)),
            settings.redis.prefix.clone(),
        ),
        &settings,
    );
    let state = AppState {
        store: store.clone(),
        posts,
        handoff,
        limits: Arc::new(http::limits::Limits::new(
            &settings,
            redis.clone(),
            store.clone(),
            stops.marks().clone(),
        )),
        hashing: Arc::new(http::auth::HashQueue::new(settings.auth.max_waiting_hashes)),
        trusted_proxies: Arc::new(trusted_proxies),
        redis,
        keys: Arc::new(ArcSwap::from_pointee(keys)),
        broker_up: Arc::new(AtomicBool::new(false)),
        catalogue,
        settings: Arc::new(settings),
        metrics: metrics.clone(),
        hub,
        tasks: supervisor.health(),
        stops,
        sessions: http::sessions::Sessions::new(store.clone()),
    };
    let background = Background {
        topology,
        fresh: fresh_rx,
        notices: notices_rx,
        hub_link,
        key_file_text,
        reload,
    };
    background.spawn(&state, &mut supervisor);
    supervisor.spawn("post writer", writer);

    tracing::info!(
        addr = %listeners.http.local_addr()?,
        metrics_addr = %listeners.metrics.local_addr()?,
        "sluice-api listening"
    );
    let http_settings = &state.settings.http;
    let header_read_timeout = http_settings.header_read_timeout;
    let serving = http::server::Serving {
        header_read_timeout,
        // In-flight requests end within the request timeout; give them that long to finish.
        drain: http_settings.request_timeout,
        max_connections: http_settings.max_connections,
        counted: true,
    };
    supervisor.spawn(
        "metrics server",
        http::server::serve(
            listeners.metrics,
            http::metrics_app(&metrics),
            http::server::Serving {
                header_read_timeout,
                drain: METRICS_DRAIN,
                max_connections: METRICS_CONNECTIONS,
                counted: false,
            },
            cancel.clone(),
        ),
    );
    supervisor.spawn(
        "http server",
        http::server::serve(listeners.http, http::app(state), serving, cancel),
    );
    // The server and every handle of the writer are gone once all tasks have stopped: the
    // writer has answered all it took.
    let stopped = supervisor.run().await;
    store.close().await?;
    Ok(stopped?)
}

/// What the API runs beside its HTTP server, before it is handed to the supervisor.
struct Background {
    topology: Topology,
    fresh: tokio::sync::mpsc::Receiver<Vec<store::outbox::OutboxRow>>,
    notices: tokio::sync::mpsc::Receiver<sluice_shared::stream::Changed>,
    hub_link: live::hub::HubLink,
    key_file_text: Option<String>,
    reload: ReloadTrigger,
}

impl Background {
    /// Spawns each task under its name: metrics upkeep, the keys-file watch, the relay and
    /// its backlog gauge, the reaper, retention, the two consumers, the event-stream hub and the notice
    /// publisher.
    fn spawn(self, state: &AppState, supervisor: &mut Supervisor) {
        let cancel = supervisor.cancel_token().clone();
        let settings = &state.settings;
        let (store, topology) = (&state.store, self.topology);
        supervisor.spawn(
            "metrics upkeep",
            state.metrics.clone().upkeep(cancel.clone()),
        );
        let watch = KeyFileWatch::new(settings.clone(), &state.keys.load(), self.key_file_text);
        let keys = state.keys.clone();
        supervisor.spawn(
            "keys watch",
            watch_keys(watch, self.reload, cancel.clone(), move |new| {
                keys.store(Arc::new(new));
                Ok(())
            }),
        );
        let relay = messaging::relay::Relay {
            store: store.clone(),
            amqp_url: settings.amqp.url.clone(),
            topology: topology.clone(),
            fresh: tokio::sync::Mutex::new(self.fresh),
            sweep_after: settings.relay.sweep_after,
            broker_up: state.broker_up.clone(),
        };
        supervisor.spawn("relay", relay.run(cancel.clone()));
        supervisor.spawn(
            "outbox backlog",
            messaging::relay::watch_backlog(store.clone(), cancel.clone()),
        );
        let reaper = reaper::Reaper::new(store.clone(), &settings.retry);
        supervisor.spawn("reaper", reaper.run(cancel.clone()));
        let retention = retention::Retention::new(store.clone(), &settings.retention);
        supervisor.spawn("retention", retention.run(cancel.clone()));
        let responses = QueueConsumer {
            amqp_url: settings.amqp.url.clone(),
            queue: topology.responses(),
            topology: topology.clone(),
            prefetch: messaging::responses::BATCH,
            name: "sluice-api responses",
            label: "responses",
            handler: messaging::responses::ResponseHandler {
                store: store.clone(),
            },
        };
        supervisor.spawn("responses consumer", responses.run(cancel.clone()));
        let dead_letters = QueueConsumer {
            amqp_url: settings.amqp.url.clone(),
            queue: topology.dead_letters(),
            topology: topology.clone(),
            prefetch: messaging::dead_letters::PREFETCH,
            name: "sluice-api dead letters",
            label: "dlq",
            handler: messaging::dead_letters::DeadLetterHandler {
                store: store.clone(),
                topology: topology.clone(),
            },
        };
        supervisor.spawn("dead-letter consumer", dead_letters.run(cancel.clone()));
        supervisor.spawn(
            "watch marks",
            state.hub.clone().refresh_marks(cancel.clone()),
        );
        supervisor.spawn(
            "event-stream hub",
            self.hub_link
                .run(settings.amqp.url.clone(), topology.clone(), cancel.clone()),
        );
        let notices = live::publisher::NoticePublisher {
            amqp_url: settings.amqp.url.clone(),
            topology,
            notices: tokio::sync::Mutex::new(self.notices),
        };
        supervisor.spawn("notice publisher", notices.run(cancel));
    }
}
