//! The test harness: [`TestApp`] runs a whole Sluice — API, workers and mock-gemini — in the
//! test process against the real PostgreSQL, RabbitMQ and Redis, isolated by a fresh database,
//! a unique queue prefix and a unique Redis prefix, and removes all of it afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

pub mod forwarder;
pub mod proxy;

use anyhow::{Context, bail};
use mock_gemini::{MockConfig, MockState};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use sluice_shared::keypool::ReloadTrigger;
use sluice_shared::settings::{ApiKey, LimitsBackend};
use sluice_shared::{Secret, Settings, Topology};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use forwarder::Forwarder;
pub use proxy::HttpProxy;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";
pub const AMQP_ADDR: &str = "127.0.0.1:5672";
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// A keys file of two OpenAI-compatible keys (`oa-1`, weighted to be taken first, and `oa-2`),
/// beside the Gemini keys the options give.
pub const OPENAI_KEYS: &str = r#"
[[keys]]
alias = "oa-1"
secret = "sk-one"
provider = "openai"
weight = 2          # taken first while both have the same headroom

[[keys]]
alias = "oa-2"
secret = "sk-two"
provider = "openai"
"#;

/// A catalogue whose default, `primary` (OpenAI-compatible, `gpt-4o-mini`), falls back to
/// `backup` (Gemini, `gemini-2.5-flash`).
pub fn primary_and_backup(settings: &mut Settings) {
    use sluice_shared::catalogue::{ModelEntry, ProviderKind};
    settings.provider.model = "primary".into();
    settings.models.insert(
        "primary".into(),
        ModelEntry {
            provider: ProviderKind::OpenAi,
            upstream: Some("gpt-4o-mini".into()),
            fallback: vec!["backup".into()],
            ..ModelEntry::default()
        },
    );
    settings.models.insert(
        "backup".into(),
        ModelEntry {
            upstream: Some("gemini-2.5-flash".into()),
            ..ModelEntry::default()
        },
    );
}

/// How long one step of a test's cleanup (queues, Redis keys, database) may take.
const CLEANUP_STEP: Duration = Duration::from_secs(20);

/// Runs one step of a cleanup, giving up (and saying so) after [`CLEANUP_STEP`].
async fn bounded(what: &str, work: impl Future<Output = ()>) {
    if tokio::time::timeout(CLEANUP_STEP, work).await.is_err() {
        eprintln!("cleanup: {what} took over {CLEANUP_STEP:?}; left as it is");
    }
}

/// One running worker: cancel it to stop just this one.
#[derive(Debug, Clone)]
pub struct Worker {
    pub cancel: CancellationToken,
    pub health: String,
    /// Set once the worker's `run` has returned (drained and disconnected).
    pub finished: Arc<std::sync::atomic::AtomicBool>,
    /// What SIGHUP fires in `main`: re-reads the keys file now.
    pub reload: ReloadTrigger,
}

pub fn admin_url() -> String {
    std::env::var("SLUICE_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into())
}

pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub struct TestOptions {
    pub workers: usize,
    /// `(alias, secret)` pairs the workers use.
    pub keys: Vec<(String, String)>,
    pub mock: MockConfig,
    /// Put a cuttable TCP forwarder between the API and RabbitMQ.
    pub api_broker_forwarder: bool,
    /// Send provider calls through a test-owned HTTP proxy.
    pub proxy: bool,
    /// Per-key calls per window, and the window.
    pub rpm: u32,
    pub window_ms: u64,
    pub budget_wait_ms: u64,
    pub probe_interval_ms: u64,
    /// Contents of a keys file (TOML) given to every component.
    pub keys_file: Option<String>,
    /// `keys.reload_interval_ms`: how often the keys file is polled for changes.
    pub keys_reload_interval_ms: u64,
    /// Put a cuttable TCP forwarder between the workers and Redis.
    pub worker_redis_forwarder: bool,
    /// `redis` or `local` budgets, and the replicas local budgets divide by.
    pub limits_backend: LimitsBackend,
    pub expected_replicas: u32,
    pub retry_delays_ms: Vec<u64>,
    /// How often the API's reaper looks for overdue replies.
    pub reaper_interval_ms: u64,
    /// `keys.no_key_max_wait_ms`: how long messages wait while every key is disabled.
    pub no_key_max_wait_ms: u64,
    /// Runs last on the settings every component gets, for what no other option covers.
    pub configure: Option<fn(&mut Settings)>,
}

impl TestOptions {
    /// The defaults with no worker: requests wait in the queue until a test starts one.
    pub fn no_workers() -> Self {
        Self {
            workers: 0,
            ..Self::default()
        }
    }
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            keys: vec![
                ("key-1".into(), "secret-one".into()),
                ("key-2".into(), "secret-two".into()),
            ],
            mock: MockConfig::default(),
            api_broker_forwarder: false,
            proxy: false,
            rpm: 100_000,
            window_ms: 1_000,
            budget_wait_ms: 5_000,
            probe_interval_ms: 200,
            keys_file: None,
            keys_reload_interval_ms: 5_000,
            worker_redis_forwarder: false,
            limits_backend: LimitsBackend::Redis,
            expected_replicas: 1,
            retry_delays_ms: vec![50, 100],
            reaper_interval_ms: 60_000,
            no_key_max_wait_ms: 600_000,
            configure: None,
        }
    }
}

pub struct TestApp {
    pub id: String,
    /// The first API's base URL (its public listener).
    pub api: String,
    /// The first API's metrics listener, `http://127.0.0.1:port` (see [`TestApp::metrics_url`]).
    pub metrics: String,
    pub http: reqwest::Client,
    pub mock: MockState,
    pub settings: Settings,
    pub db: DatabaseConnection,
    pub forwarder: Option<Forwarder>,
    /// Between the workers and Redis, when asked for.
    pub redis_forwarder: Option<Forwarder>,
    pub proxy: Option<HttpProxy>,
    pub topology: Topology,
    /// The workers started with the stack.
    pub workers: Mutex<Vec<Worker>>,
    /// What SIGHUP fires in the first API's `main`: re-reads the keys file now.
    pub api_reload: ReloadTrigger,
    /// Each API's metrics base URL by its base URL: the first and every one added.
    metrics_of: Mutex<HashMap<String, String>>,
    db_name: String,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Starts a fresh stack, runs `test` against it, and always cleans up, even when it fails.
pub async fn run<F, Fut>(options: TestOptions, test: F)
where
    F: FnOnce(Arc<TestApp>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    init_logs();
    let app = Arc::new(TestApp::spawn(options).await.expect("test stack starts"));
    let outcome = tokio::spawn(test(app.clone())).await;
    app.cleanup().await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("test failed: {e:?}"),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("test task: {join}"),
    }
}

/// Polls `f` until it returns `Some`, pausing 10 ms at first and up to 100 ms between tries,
/// and fails naming `what` once `deadline` has passed. An `Err` from `f` ends the wait at once:
/// a closure that can meet "not up yet" errors turns them into `Ok(None)` itself.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_millis(100);
    let started = tokio::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = f()
            .await
            .with_context(|| format!("while waiting for {what}"))?
        {
            return Ok(value);
        }
        let waited = started.elapsed();
        if waited >= deadline {
            bail!("gave up waiting for {what} after {deadline:?}");
        }
        tokio::time::sleep(pause.min(deadline - waited)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// An API's two listeners (public and metrics) on free local ports.
pub async fn local_listeners() -> anyhow::Result<sluice_api::Listeners> {
    Ok(sluice_api::Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        metrics: TcpListener::bind("127.0.0.1:0").await?,
    })
}

/// `http://host:port` of `listener`.
pub fn base_url(listener: &TcpListener) -> anyhow::Result<String> {
    Ok(format!("http://{}", listener.local_addr()?))
}

fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

impl TestApp {
    pub async fn spawn(options: TestOptions) -> anyhow::Result<Self> {
        let id = unique_id();
        let db_name = format!("sluice_t_{id}");
        let admin = Database::connect(admin_url())
            .await
            .context("admin connection")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
            .await?;
        admin.close().await?;

        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let mock = MockState::new(options.mock);
        let mock_listener = TcpListener::bind("127.0.0.1:0").await?;
        let mock_url = format!("http://{}", mock_listener.local_addr()?);
        {
            let (mock, cancel) = (mock.clone(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                let _ = mock_gemini::serve(
                    mock_listener,
                    mock,
                    async move { cancel.cancelled().await },
                )
                .await;
            }));
        }

        let mut settings = Settings::defaults()?;
        let base = admin_url();
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        settings.database.url = Secret::new(format!("{server}/{db_name}"));
        settings.database.max_connections = 8;
        settings.queues.prefix = format!("t{id}.");
        settings.redis.prefix = format!("t{id}:");
        settings.retry.delays_ms = options.retry_delays_ms;
        settings.retry.reaper_interval = Duration::from_millis(options.reaper_interval_ms);
        // The mock answers both kinds of provider.
        settings.provider.base_url = mock_url.clone();
        settings.provider.openai_base_url = mock_url;
        settings.provider.timeout = Duration::from_secs(5);
        settings.provider.connect_timeout = Duration::from_secs(1);
        settings.auth.jwt_secret = Secret::new(format!("test-secret-{id}-0123456789abcdefghij"));
        settings.admin.token = Secret::new(format!("admin-token-{id}-0123456789abcdefghij"));
        // Per-user limits are off unless a test is about them.
        settings.users.messages_per_minute = 0;
        settings.users.messages_per_day = 0;
        settings.users.max_pending = 0;
        settings.users.logins_per_minute_per_email_and_address = 0;
        settings.users.logins_per_minute_per_email = 0;
        settings.users.logins_per_minute_per_address = 0;
        settings.users.max_chats = 0;
        settings.users.max_templates = 0;
        settings.stream.max_per_user = 0;
        settings.worker.prefetch = 16;
        // Generous budgets unless a test sets its own: most tests are not about limits.
        settings.limits.rpm = options.rpm;
        settings.limits.tpm = 100_000_000;
        settings.limits.rpd = 1_000_000;
        settings.limits.window = Duration::from_millis(options.window_ms);
        settings.worker.budget_wait = Duration::from_millis(options.budget_wait_ms);
        settings.keys.probe_interval = Duration::from_millis(options.probe_interval_ms);
        settings.keys.no_key_max_wait = Duration::from_millis(options.no_key_max_wait_ms);
        settings.keys.reload_interval = Duration::from_millis(options.keys_reload_interval_ms);
        settings.limits.backend = options.limits_backend;
        settings.worker.expected_replicas = options.expected_replicas;
        if let Some(contents) = &options.keys_file {
            let path = std::env::temp_dir().join(format!("sluice-test-keys-{id}.toml"));
            std::fs::write(&path, contents)?;
            settings.keys.file = path.display().to_string();
        }
        settings.keys.api_keys = options
            .keys
            .iter()
            .map(|(alias, secret)| ApiKey {
                alias: alias.clone(),
                secret: Secret::new(secret.clone()),
            })
            .collect();
        if let Some(configure) = options.configure {
            configure(&mut settings);
        }
        let topology = Topology::from_settings(&settings);
        let proxy = if options.proxy {
            let proxy = HttpProxy::start().await?;
            settings.provider.proxy = Secret::new(proxy.url());
            Some(proxy)
        } else {
            None
        };

        let forwarder = if options.api_broker_forwarder {
            Some(Forwarder::start(AMQP_ADDR.parse()?).await?)
        } else {
            None
        };
        let redis_forwarder = if options.worker_redis_forwarder {
            Some(Forwarder::start(REDIS_ADDR.parse()?).await?)
        } else {
            None
        };
        let mut api_settings = settings.clone();
        if let Some(f) = &forwarder {
            api_settings.amqp.url = Secret::new(format!("amqp://guest:guest@{}/%2f", f.addr()));
        }
        let api_listeners = local_listeners().await?;
        let api = base_url(&api_listeners.http)?;
        let metrics = base_url(&api_listeners.metrics)?;
        let api_reload = ReloadTrigger::new();
        {
            let (cancel, reload) = (cancel.clone(), api_reload.clone());
            tasks.push(tokio::spawn(async move {
                let run = sluice_api::run_with_reload(api_settings, api_listeners, cancel, reload);
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "api stopped with an error");
                }
            }));
        }
        let db = Database::connect(settings.database.url.expose().as_str()).await?;
        let app = Self {
            id,
            metrics_of: Mutex::new(HashMap::from([(api.clone(), metrics.clone())])),
            api,
            metrics,
            http: reqwest::Client::builder().no_proxy().build()?,
            mock,
            settings,
            db,
            forwarder,
            redis_forwarder,
            proxy,
            topology,
            workers: Mutex::default(),
            api_reload,
            db_name,
            cancel,
            tasks: Mutex::new(tasks),
        };
        let mut workers = Vec::new();
        for _ in 0..options.workers {
            workers.push(app.add_worker(None).await?);
        }
        *app.workers.lock().unwrap() = workers;
        app.wait_ready().await?;
        Ok(app)
    }

    /// Starts one more worker, optionally connected to RabbitMQ through `amqp_addr` (a
    /// forwarder); cancelling the returned token stops just this worker.
    pub async fn add_worker(
        &self,
        amqp_addr: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Worker> {
        let mut settings = self.settings.clone();
        if let Some(addr) = amqp_addr {
            settings.amqp.url = Secret::new(format!("amqp://guest:guest@{addr}/%2f"));
        }
        if let Some(f) = &self.redis_forwarder {
            settings.redis.url = Secret::new(format!("redis://{}", f.addr()));
        }
        self.start_worker(settings).await
    }

    /// Starts one more worker with settings of the test's choosing (another broker user or
    /// queue prefix); it stops with the stack or when its token is cancelled.
    pub async fn start_worker(&self, settings: Settings) -> anyhow::Result<Worker> {
        let health = TcpListener::bind("127.0.0.1:0").await?;
        let worker = Worker {
            cancel: self.cancel.child_token(),
            health: format!("http://{}/health", health.local_addr()?),
            finished: Arc::default(),
            reload: ReloadTrigger::new(),
        };
        let (cancel, finished) = (worker.cancel.clone(), worker.finished.clone());
        let reload = worker.reload.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = sluice_worker::run_with_reload(settings, health, cancel, reload).await {
                tracing::error!(error = %e, "worker stopped with an error");
            }
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        self.tasks.lock().unwrap().push(task);
        Ok(worker)
    }

    /// Replaces the keys file's contents at once, as a ConfigMap update does (a new file
    /// renamed over the old one): a poll never reads half of it.
    pub fn write_keys_file(&self, contents: &str) -> anyhow::Result<()> {
        let path = std::path::Path::new(&self.settings.keys.file);
        anyhow::ensure!(
            !self.settings.keys.file.is_empty(),
            "no keys file in this stack"
        );
        let next = path.with_extension("next");
        std::fs::write(&next, contents)?;
        std::fs::rename(&next, path)?;
        Ok(())
    }

    /// Every worker's `/health` body, as JSON.
    pub async fn worker_health(&self, worker: &Worker) -> anyhow::Result<Value> {
        Ok(self.http.get(&worker.health).send().await?.json().await?)
    }

    /// `GET` with the admin token.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let token = self.settings.admin.token.expose().clone();
        self.get(path, &token).await
    }

    /// `POST` with the admin token.
    pub async fn admin_post(&self, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let token = self.settings.admin.token.expose().clone();
        self.post(path, &token, body).await
    }

    /// Starts one more API replica with `settings` (usually this stack's, changed a little:
    /// same database and prefixes); stopped with the stack. Returns its base URL.
    pub async fn add_api(&self, settings: Settings) -> anyhow::Result<String> {
        let base = self.start_api(settings).await?;
        self.wait_ready_at(&base).await?;
        Ok(base)
    }

    /// Like [`TestApp::add_api`] without waiting for it to be ready (it may be stuck at
    /// start, e.g. on the migration lock); stopped with the stack. Returns its base URL.
    pub async fn start_api(&self, settings: Settings) -> anyhow::Result<String> {
        let listeners = local_listeners().await?;
        let base = base_url(&listeners.http)?;
        self.metrics_of
            .lock()
            .unwrap()
            .insert(base.clone(), base_url(&listeners.metrics)?);
        let cancel = self.cancel.child_token();
        let task = tokio::spawn(async move {
            if let Err(e) = sluice_api::run(settings, listeners, cancel).await {
                tracing::error!(error = %e, "extra api stopped with an error");
            }
        });
        self.tasks.lock().unwrap().push(task);
        Ok(base)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_ready_at(&self.api).await
    }

    /// Waits until the API at `base` answers `/api/ready` with the broker up.
    pub async fn wait_ready_at(&self, base: &str) -> anyhow::Result<()> {
        eventually(
            &format!("{base} to be ready with the broker up"),
            Duration::from_secs(15),
            || async {
                // Refused connections, timeouts and non-200s are "not yet": the API is still
                // starting. The timeout matters: the listener is bound before `run` starts, so
                // an API still migrating accepts the connection and never answers.
                let ready = self
                    .http
                    .get(format!("{base}/api/ready"))
                    .timeout(Duration::from_secs(1))
                    .send();
                let Ok(r) = ready.await else {
                    return Ok(None);
                };
                if r.status() != StatusCode::OK {
                    return Ok(None);
                }
                let body: Value = r.json().await?;
                Ok((body["broker"] == "ok").then_some(()))
            },
        )
        .await
    }

    /// Stops everything, deletes the queues and drops the database.
    pub async fn cleanup(&self) {
        self.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        for f in [&self.forwarder, &self.redis_forwarder]
            .into_iter()
            .flatten()
        {
            f.stop();
        }
        if !self.settings.keys.file.is_empty() {
            let _ = std::fs::remove_file(&self.settings.keys.file);
        }
        if let Some(p) = &self.proxy {
            p.stop();
        }
        // Each step is bounded: a cleanup that hangs on one service (a close never answered)
        // would hold the whole run, while what it leaves behind is only this test's prefix.
        bounded("deleting the queues", async {
            if let Ok(conn) = sluice_shared::broker::connect(
                &format!("amqp://guest:guest@{AMQP_ADDR}/%2f"),
                "sluice-tests cleanup",
            )
            .await
            {
                if let Ok(channel) = conn.create_channel().await
                    && let Err(e) = self.topology.delete(&channel).await
                {
                    eprintln!("could not delete queues of {}: {e}", self.id);
                }
                let _ = conn.close(200, "done".into()).await;
            }
        })
        .await;
        bounded("deleting the Redis keys", async {
            if let Err(e) = self.clear_redis().await {
                eprintln!("could not delete Redis keys of {}: {e}", self.id);
            }
        })
        .await;
        bounded("closing the test's pool", async {
            let _ = self.db.clone().close().await;
        })
        .await;
        bounded("dropping the database", async {
            if let Ok(admin) = Database::connect(admin_url()).await {
                if let Err(e) = admin
                    .execute_unprepared(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.db_name
                    ))
                    .await
                {
                    eprintln!("could not drop {}: {e}", self.db_name);
                }
                let _ = admin.close().await;
            }
        })
        .await;
    }

    /// Deletes every Redis key under this test's prefix.
    pub async fn clear_redis(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.settings.redis.url.expose().as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.settings.redis.prefix))
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The first API's `GET /metrics`, on its metrics listener (the public one answers 404).
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.metrics)
    }

    /// `GET /metrics` of the API at `base`: this stack's first, or one that
    /// [`TestApp::add_api`] or [`TestApp::start_api`] started.
    pub fn metrics_url_at(&self, base: &str) -> anyhow::Result<String> {
        let metrics_of = self.metrics_of.lock().unwrap();
        let metrics = metrics_of
            .get(base)
            .with_context(|| format!("no API of this stack at {base}"))?;
        Ok(format!("{metrics}/metrics"))
    }

    /// The lines of the first worker's metrics page that start with `prefix` (a name, or a
    /// name with the start of its labels), their values summed.
    pub async fn worker_metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let url = self.workers.lock().unwrap()[0]
            .health
            .replace("/health", "/metrics");
        let text = self.http.get(url).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until the first API has consumed and acked at least `n` workers' answers (a
    /// late or skipped answer leaves no other trace).
    pub async fn wait_answers_consumed(&self, n: f64) -> anyhow::Result<()> {
        let metrics = self.metrics_url();
        eventually(
            &format!("{n} answers to be consumed"),
            Duration::from_secs(20),
            || async {
                let text = self.http.get(&metrics).send().await?.text().await?;
                Ok(text
                    .lines()
                    .filter(|l| {
                        l.starts_with("sluice_acked_total{") && l.contains("queue=\"responses\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .any(|acked| acked >= n)
                    .then_some(()))
            },
        )
        .await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("non-JSON answer: {text}"))?
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.send(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Registers a fresh user; returns its token and id.
    pub async fn register(&self) -> anyhow::Result<(String, String)> {
        let email = format!("{}@example.com", unique_id());
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"email": email, "password": "correct horse battery"})),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "register: {status} {body}");
        Ok((
            body["token"].as_str().context("token")?.to_owned(),
            body["user"]["id"].as_str().context("user id")?.to_owned(),
        ))
    }

    /// A fresh user and one chat of theirs: `(token, chat id)`.
    pub async fn user_with_chat(&self) -> anyhow::Result<(String, String)> {
        let (token, _) = self.register().await?;
        let chat = self.create_chat(&token).await?;
        Ok((token, chat))
    }

    pub async fn create_chat(&self, token: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .post("/api/chats", token, json!({"title": "t"}))
            .await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "create chat: {status} {body}"
        );
        Ok(body["id"].as_str().context("chat id")?.to_owned())
    }

    /// Posts a message; returns the pending assistant message's id.
    pub async fn post_message(
        &self,
        token: &str,
        chat: &str,
        body: Value,
    ) -> anyhow::Result<String> {
        let (status, answer) = self
            .post(&format!("/api/chats/{chat}/messages"), token, body)
            .await?;
        anyhow::ensure!(status == StatusCode::ACCEPTED, "post: {status} {answer}");
        Ok(answer["assistant_message"]["id"]
            .as_str()
            .context("assistant id")?
            .to_owned())
    }

    /// Polls one message until it is no longer pending.
    pub async fn wait_reply(
        &self,
        token: &str,
        chat: &str,
        message: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        eventually(
            &format!("message {message} to be answered"),
            timeout,
            || async {
                let (status, body) = self
                    .get(&format!("/api/chats/{chat}/messages/{message}"), token)
                    .await?;
                anyhow::ensure!(status == StatusCode::OK, "poll: {status} {body}");
                Ok((body["status"] != "pending").then_some(body))
            },
        )
        .await
    }

    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        self.count_where(table, "true").await
    }

    /// Rows of `table` matching `condition` (SQL written by the test).
    pub async fn count_where(&self, table: &str, condition: &str) -> anyhow::Result<i64> {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT count(*) AS n FROM {table} WHERE {condition}"),
            ))
            .await?
            .context("count row")?;
        Ok(row.try_get("", "n")?)
    }

    /// How many messages wait in a queue.
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<u32> {
        let (conn, channel) = self.broker_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        conn.close(200, "done".into()).await?;
        Ok(declared.message_count())
    }

    /// A channel of its own on the real broker, for tests that publish or inspect directly.
    pub async fn broker_channel(&self) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
        let conn = sluice_shared::broker::connect(
            &format!("amqp://guest:guest@{AMQP_ADDR}/%2f"),
            "sluice-tests",
        )
        .await?;
        let channel = sluice_shared::broker::confirm_channel(&conn).await?;
        Ok((conn, channel))
    }
}
