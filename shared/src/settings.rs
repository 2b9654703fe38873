//! One typed `Settings`, loaded once at start: documented defaults (`config/default.toml`,
//! compiled in) → optional `config/local.toml` → environment `SLUICE__SECTION__KEY`, plus the
//! provider keys from `GEMINI_API_KEYS`. Validated before anything starts.

use crate::Secret;
pub use crate::catalogue::is_model_name;
use crate::catalogue::{Catalogue, ModelEntry};
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Where settings come from, for every binary's `--help`.
pub const SOURCES: &str = "\
Settings, each later source overriding the earlier ones:
  1. the documented defaults (config/default.toml, compiled in);
  2. config/local.toml in the working directory, if present;
  3. environment variables SLUICE__SECTION__KEY, e.g. SLUICE__DATABASE__URL,
     SLUICE__RETRY__DELAYS_MS=60000,600000 (lists are comma-separated);
  4. GEMINI_API_KEYS: comma-separated provider keys, `alias=key` allowed.
RUST_LOG sets the log filter (telemetry.format: text or json lines). Every invalid setting is reported at start, by name.";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("{} invalid settings: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<SettingsError>),
}

impl SettingsError {
    /// `Ok` for no problems, the problem itself for one, all of them for more.
    fn all(mut problems: Vec<SettingsError>) -> Result<(), SettingsError> {
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(SettingsError::Several(problems)),
        }
    }
}

/// A `…_ms` setting: whole milliseconds, read once into a [`Duration`].
fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// Whole milliseconds of `d`, for what stays a number (Redis scripts, headers, key specs).
pub fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A `…_days` setting: whole days of 24 hours.
fn days<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(|d| Duration::from_secs(d.saturating_mul(86_400)))
}

/// A `…_secs` setting: whole seconds.
fn secs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

fn invalid(name: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        name,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    pub queues: QueueSettings,
    pub retry: RetrySettings,
    pub provider: ProviderSettings,
    pub chat: ChatSettings,
    pub keys: KeySettings,
    pub limits: LimitSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    pub users: UserSettings,
    pub relay: RelaySettings,
    pub routing: RoutingSettings,
    pub stream: StreamSettings,
    pub retention: RetentionSettings,
    pub telemetry: TelemetrySettings,
    /// The model catalogue, `[models."NAME"]` (see [`crate::catalogue`]); empty: the Gemini
    /// models of `provider.model` and `provider.models`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelEntry>,
}

/// How the processes log. The filter stays `RUST_LOG`'s, the standard place for it.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: LogFormat,
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a person reading a terminal or a file.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret<String>,
    pub max_connections: u32,
    /// Whether `sluice-api` applies pending migrations at start; off where a separate step
    /// (`sluice-api migrate`, e.g. a Kubernetes Job) owns them.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: Secret<String>,
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// Where the API serves `GET /metrics`: its own listener, never the public one.
    pub metrics_addr: SocketAddr,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<String>,
    #[serde(rename = "header_read_timeout_ms", deserialize_with = "millis")]
    pub header_read_timeout: Duration,
    #[serde(rename = "body_timeout_ms", deserialize_with = "millis")]
    pub body_timeout: Duration,
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// Open connections per API process; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Bytes of message text in one page of messages (at least one message always goes).
    pub max_page_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub health_addr: SocketAddr,
    pub prefetch: u16,
    pub expected_replicas: u32,
    #[serde(rename = "budget_wait_ms", deserialize_with = "millis")]
    pub budget_wait: Duration,
    /// On SIGTERM, how long deliveries in hand may take to finish; the rest go back unacked.
    #[serde(rename = "shutdown_grace_ms", deserialize_with = "millis")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueueSettings {
    pub prefix: String,
    /// Largest request envelope the API will publish.
    pub max_message_bytes: u64,
    /// `x-max-length` of `requests` (overflow rejects publishes, so the outbox holds the rest).
    pub requests_max_length: u64,
    /// `x-message-ttl` of the parked queue, whose name carries it (see [`crate::Topology`]).
    #[serde(rename = "parked_ttl_ms", deserialize_with = "millis")]
    pub parked_ttl: Duration,
}

/// How long stored personal data is kept (the API's retention task, one replica at a time).
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Dead letters (whole request bodies) are deleted this long after they were recorded;
    /// zero keeps them.
    #[serde(rename = "dead_letter_days", deserialize_with = "days")]
    pub dead_letter_age: Duration,
    /// Chats whose messages have not been created or changed for this long are deleted (not
    /// while a reply is pending); zero keeps them.
    #[serde(rename = "chat_idle_days", deserialize_with = "days")]
    pub chat_idle: Duration,
    /// How often each API replica tries a round.
    #[serde(rename = "interval_ms", deserialize_with = "millis")]
    pub interval: Duration,
}

impl RetentionSettings {
    /// How old a dead letter may get, if there is a limit.
    pub fn dead_letter_limit(&self) -> Option<Duration> {
        (!self.dead_letter_age.is_zero()).then_some(self.dead_letter_age)
    }

    /// How long a chat may stay idle, if there is a limit.
    pub fn chat_idle_limit(&self) -> Option<Duration> {
        (!self.chat_idle.is_zero()).then_some(self.chat_idle)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    /// The API publishes new requests itself right after their commit; the relay sweeps only
    /// outbox rows older than this (what a broker outage or a crash left behind).
    #[serde(rename = "sweep_after_ms", deserialize_with = "millis")]
    pub sweep_after: Duration,
}

/// When a request leaves its model for the next in the model's `fallback` list.
#[derive(Debug, Clone, Deserialize)]
pub struct RoutingSettings {
    /// Retryable failures of one request on one model before its next attempt goes to the
    /// next model at once (not after the retry delay).
    pub fallback_after_failures: u32,
    /// How long a request may wait for a usable key of its model (every key disabled,
    /// cooling or out of budget) before it goes to the next model.
    #[serde(rename = "fallback_after_ms", deserialize_with = "millis")]
    pub fallback_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    pub delays_ms: Vec<u64>,
    /// Added to the sum of the delays: a reply still pending past both is timed out.
    #[serde(rename = "reaper_grace_ms", deserialize_with = "millis")]
    pub reaper_grace: Duration,
    #[serde(rename = "reaper_interval_ms", deserialize_with = "millis")]
    pub reaper_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    /// Gemini's base URL, for keys that name none of their own.
    pub base_url: String,
    /// The OpenAI-compatible base URL (`{base}/v1/chat/completions`), for keys that name none.
    pub openai_base_url: String,
    pub model: String,
    pub proxy: Secret<String>,
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    /// What users may ask for besides `model` while the catalogue (`[models]`) is empty.
    pub models: Vec<String>,
    pub max_reply_bytes: u64,
    /// Stream calls (`:streamGenerateContent?alt=sse`) and publish their chunks as they come.
    pub stream: bool,
}

/// Live replies over server-sent events (see [`crate::stream`]).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamSettings {
    /// TTL of a reply's partial text in Redis, refreshed with every piece written (only
    /// watched replies have one).
    #[serde(rename = "partial_ttl_ms", deserialize_with = "millis")]
    pub partial_ttl: Duration,
    /// After a reply's first piece, how long a worker gathers text before it publishes the
    /// next (0: publish each piece as it comes).
    #[serde(rename = "coalesce_ms", deserialize_with = "millis")]
    pub coalesce: Duration,
    /// How long an early delta waits for a missing one before a snapshot replaces it.
    #[serde(rename = "gap_timeout_ms", deserialize_with = "millis")]
    pub gap_timeout: Duration,
    /// Comment heartbeats on idle event streams.
    #[serde(rename = "heartbeat_ms", deserialize_with = "millis")]
    pub heartbeat: Duration,
    /// Events queued per watcher before it is disconnected as too slow.
    pub watcher_buffer: usize,
    /// Lifetime of an event-stream token.
    #[serde(rename = "token_ttl_secs", deserialize_with = "secs")]
    pub token_ttl: Duration,
    /// Open event streams per user across the fleet (counted in Redis); 0 turns it off.
    pub max_per_user: u32,
    /// Open event streams per API process.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatSettings {
    pub history_turns: u32,
    pub history_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeySettings {
    pub file: String,
    #[serde(rename = "probe_interval_ms", deserialize_with = "millis")]
    pub probe_interval: Duration,
    pub disable_after: u32,
    #[serde(rename = "no_key_max_wait_ms", deserialize_with = "millis")]
    pub no_key_max_wait: Duration,
    /// How often the keys file's contents are compared with the applied ones (SIGHUP also
    /// re-reads it at once).
    #[serde(rename = "reload_interval_ms", deserialize_with = "millis")]
    pub reload_interval: Duration,
    /// Aliases of keys whose secrets this process does not hold: the API's view of the pool
    /// (its admin view lists them with the `limits` defaults), so it never receives a provider
    /// secret. Workers refuse them.
    pub aliases: Vec<String>,
    /// From `GEMINI_API_KEYS`, not from the SLUICE__ namespace.
    #[serde(skip)]
    pub api_keys: Vec<ApiKey>,
}

/// One provider key: a public alias (what logs and the admin API show) and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub alias: String,
    pub secret: Secret<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub rpm: u32,
    pub tpm: u32,
    pub rpd: u32,
    #[serde(rename = "window_ms", deserialize_with = "millis")]
    pub window: Duration,
    pub backend: LimitsBackend,
}

/// Where key budgets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    /// In Redis, shared by every worker: exact fleet-wide.
    Redis,
    /// In each worker's memory, at budget ÷ `worker.expected_replicas`.
    Local,
}

impl std::str::FromStr for LimitsBackend {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, SettingsError> {
        match s {
            "redis" => Ok(Self::Redis),
            "local" => Ok(Self::Local),
            _ => Err(invalid(
                "SLUICE__LIMITS__BACKEND",
                format!("{s:?}: either \"redis\" or \"local\""),
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: Secret<String>,
    #[serde(rename = "token_ttl_secs", deserialize_with = "secs")]
    pub token_ttl: Duration,
    /// Password hashes that may wait for a hashing slot before new ones are refused (503).
    pub max_waiting_hashes: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub token: Secret<String>,
}

/// Per-user limits, shared by every API replica through Redis; `0` turns a limit off.
#[derive(Debug, Clone, Deserialize)]
pub struct UserSettings {
    pub messages_per_minute: u32,
    pub messages_per_day: u32,
    pub max_pending: u32,
    /// Login attempts per minute for one email from one client address: the tight limit,
    /// which only that address spends.
    pub logins_per_minute_per_email_and_address: u32,
    /// Login attempts per minute for one email from every address together: a looser
    /// ceiling on a distributed guess.
    pub logins_per_minute_per_email: u32,
    pub logins_per_minute_per_address: u32,
    /// Chats a user may keep; 0 turns the cap off.
    pub max_chats: u32,
    /// Prompt templates a user may keep; 0 turns the cap off.
    pub max_templates: u32,
    /// Tokens (prompt and reply) a user's calls may spend per UTC day; 0 turns it off.
    pub tokens_per_day: u64,
    /// What a user's calls may cost per UTC calendar month, in USD; 0 turns it off.
    pub cost_per_month: crate::catalogue::Dollars,
}

impl Settings {
    /// Defaults, then `config/local.toml`, then the environment; validated.
    pub fn load() -> Result<Self, SettingsError> {
        let config = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::with_name("config/local").required(false))
            .add_source(
                Environment::with_prefix("SLUICE")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("retry.delays_ms")
                    .with_list_parse_key("provider.models")
                    .with_list_parse_key("http.trusted_proxies")
                    .with_list_parse_key("keys.aliases")
                    .try_parsing(true),
            )
            .build()?;
        let mut settings: Settings = config.try_deserialize()?;
        #[expect(
            clippy::disallowed_methods,
            reason = "the settings loader is where the environment is read"
        )]
        let keys = std::env::var("GEMINI_API_KEYS");
        if let Ok(list) = keys {
            settings.keys.api_keys = parse_api_keys(&list)?;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults alone, unvalidated: the starting point of tests and tools,
    /// which then set what they need.
    pub fn defaults() -> Result<Self, SettingsError> {
        let config = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()?;
        Ok(config.try_deserialize()?)
    }

    /// Every problem is reported, each naming its variable and its rule, in one error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        for check in [
            Self::check_database,
            Self::check_http,
            Self::check_worker,
            Self::check_queues,
            Self::check_retry,
            Self::check_provider,
            Self::check_stream,
            Self::check_chat,
            Self::check_keys,
            Self::check_limits,
            Self::check_relay,
            Self::check_routing,
            Self::check_auth,
            Self::check_retention,
        ] {
            check(self, &mut problems);
        }
        SettingsError::all(problems)
    }

    fn check_database(&self, problems: &mut Vec<SettingsError>) {
        if self.database.max_connections == 0 {
            problems.push(invalid("SLUICE__DATABASE__MAX_CONNECTIONS", "must be > 0"));
        }
    }

    fn check_http(&self, problems: &mut Vec<SettingsError>) {
        let http = &self.http;
        positive(
            problems,
            "SLUICE__HTTP__HEADER_READ_TIMEOUT_MS",
            http.header_read_timeout,
        );
        positive(problems, "SLUICE__HTTP__BODY_TIMEOUT_MS", http.body_timeout);
        positive(
            problems,
            "SLUICE__HTTP__REQUEST_TIMEOUT_MS",
            http.request_timeout,
        );
        if http.max_connections == 0 {
            problems.push(invalid("SLUICE__HTTP__MAX_CONNECTIONS", "must be > 0"));
        }
        if http.max_page_bytes == 0 {
            problems.push(invalid("SLUICE__HTTP__MAX_PAGE_BYTES", "must be > 0"));
        }
        // One port would put /metrics back on the public listener (or fail to bind).
        if http.metrics_addr.port() != 0 && http.metrics_addr.port() == http.addr.port() {
            problems.push(invalid(
                "SLUICE__HTTP__METRICS_ADDR",
                "must not use SLUICE__HTTP__ADDR's port: /metrics has a listener of its own",
            ));
        }
    }

    fn check_worker(&self, problems: &mut Vec<SettingsError>) {
        if self.worker.prefetch == 0 {
            problems.push(invalid("SLUICE__WORKER__PREFETCH", "must be at least 1"));
        }
        if self.worker.expected_replicas == 0 {
            problems.push(invalid(
                "SLUICE__WORKER__EXPECTED_REPLICAS",
                "must be at least 1",
            ));
        }
    }

    fn check_queues(&self, problems: &mut Vec<SettingsError>) {
        let prefix = &self.queues.prefix;
        if prefix.is_empty() || prefix.len() > 200 || prefix.chars().any(char::is_whitespace) {
            problems.push(invalid(
                "SLUICE__QUEUES__PREFIX",
                "1..=200 bytes without spaces",
            ));
        }
        if self.queues.max_message_bytes == 0 {
            problems.push(invalid("SLUICE__QUEUES__MAX_MESSAGE_BYTES", "must be > 0"));
        }
        if self.queues.requests_max_length == 0 {
            problems.push(invalid(
                "SLUICE__QUEUES__REQUESTS_MAX_LENGTH",
                "must be > 0",
            ));
        }
        let ttl = self.queues.parked_ttl;
        if ttl.is_zero() || ttl > MAX_MESSAGE_TTL {
            problems.push(invalid(
                "SLUICE__QUEUES__PARKED_TTL_MS",
                format!(
                    "must be > 0 and at most {} ms (RabbitMQ's limit)",
                    millis_of(MAX_MESSAGE_TTL)
                ),
            ));
        }
    }

    fn check_retry(&self, problems: &mut Vec<SettingsError>) {
        if self.retry.delays_ms.contains(&0) {
            problems.push(invalid("SLUICE__RETRY__DELAYS_MS", "delays must be > 0 ms"));
        }
        positive(
            problems,
            "SLUICE__RETRY__REAPER_INTERVAL_MS",
            self.retry.reaper_interval,
        );
    }

    fn check_provider(&self, problems: &mut Vec<SettingsError>) {
        let provider = &self.provider;
        let proxy = provider.proxy.expose();
        if !proxy.is_empty()
            && !["http://", "https://", "socks5://", "socks5h://"]
                .iter()
                .any(|scheme| proxy.starts_with(scheme))
        {
            problems.push(invalid(
                "SLUICE__PROVIDER__PROXY",
                "must start with http://, https:// or socks5h://",
            ));
        }
        for problem in Catalogue::problems(&self.models, &provider.model, &provider.models) {
            problems.push(invalid("SLUICE__MODELS", problem));
        }
        for (name, url) in [
            ("SLUICE__PROVIDER__BASE_URL", &provider.base_url),
            (
                "SLUICE__PROVIDER__OPENAI_BASE_URL",
                &provider.openai_base_url,
            ),
        ] {
            if !is_http_url(url) {
                problems.push(invalid(name, "must start with http:// or https://"));
            }
        }
        if provider.max_reply_bytes == 0 {
            problems.push(invalid("SLUICE__PROVIDER__MAX_REPLY_BYTES", "must be > 0"));
        }
        positive(
            problems,
            "SLUICE__PROVIDER__CONNECT_TIMEOUT_MS",
            provider.connect_timeout,
        );
        positive(problems, "SLUICE__PROVIDER__TIMEOUT_MS", provider.timeout);
    }

    fn check_stream(&self, problems: &mut Vec<SettingsError>) {
        let stream = &self.stream;
        positive(
            problems,
            "SLUICE__STREAM__PARTIAL_TTL_MS",
            stream.partial_ttl,
        );
        positive(
            problems,
            "SLUICE__STREAM__GAP_TIMEOUT_MS",
            stream.gap_timeout,
        );
        positive(problems, "SLUICE__STREAM__HEARTBEAT_MS", stream.heartbeat);
        positive(problems, "SLUICE__STREAM__TOKEN_TTL_SECS", stream.token_ttl);
        if stream.watcher_buffer == 0 {
            problems.push(invalid("SLUICE__STREAM__WATCHER_BUFFER", "must be > 0"));
        }
        if stream.max_connections == 0 {
            problems.push(invalid("SLUICE__STREAM__MAX_CONNECTIONS", "must be > 0"));
        }
    }

    fn check_chat(&self, problems: &mut Vec<SettingsError>) {
        if self.chat.history_bytes == 0 {
            problems.push(invalid("SLUICE__CHAT__HISTORY_BYTES", "must be > 0"));
        }
    }

    fn check_keys(&self, problems: &mut Vec<SettingsError>) {
        if self.keys.reload_interval < Duration::from_millis(100) {
            problems.push(invalid(
                "SLUICE__KEYS__RELOAD_INTERVAL_MS",
                "must be at least 100 ms",
            ));
        }
        positive(
            problems,
            "SLUICE__KEYS__PROBE_INTERVAL_MS",
            self.keys.probe_interval,
        );
        if let Some(bad) = self.keys.aliases.iter().find(|a| !is_model_name(a)) {
            problems.push(invalid(
                "SLUICE__KEYS__ALIASES",
                format!("{bad:?}: letters, digits, '.', '-' and '_' only"),
            ));
        }
    }

    fn check_limits(&self, problems: &mut Vec<SettingsError>) {
        positive(problems, "SLUICE__LIMITS__WINDOW_MS", self.limits.window);
    }

    fn check_routing(&self, problems: &mut Vec<SettingsError>) {
        if self.routing.fallback_after_failures == 0 {
            problems.push(invalid(
                "SLUICE__ROUTING__FALLBACK_AFTER_FAILURES",
                "must be at least 1",
            ));
        }
        positive(
            problems,
            "SLUICE__ROUTING__FALLBACK_AFTER_MS",
            self.routing.fallback_after,
        );
        // Past the no-key bound a request is dead-lettered: its fallback would never come.
        let falls_back = self.models.values().any(|m| !m.fallback.is_empty());
        if falls_back && self.routing.fallback_after >= self.keys.no_key_max_wait {
            problems.push(invalid(
                "SLUICE__ROUTING__FALLBACK_AFTER_MS",
                "must be less than SLUICE__KEYS__NO_KEY_MAX_WAIT_MS while a model has a fallback",
            ));
        }
    }

    fn check_relay(&self, problems: &mut Vec<SettingsError>) {
        positive(
            problems,
            "SLUICE__RELAY__SWEEP_AFTER_MS",
            self.relay.sweep_after,
        );
    }

    fn check_auth(&self, problems: &mut Vec<SettingsError>) {
        positive(
            problems,
            "SLUICE__AUTH__TOKEN_TTL_SECS",
            self.auth.token_ttl,
        );
    }

    fn check_retention(&self, problems: &mut Vec<SettingsError>) {
        let retention = &self.retention;
        positive(
            problems,
            "SLUICE__RETENTION__INTERVAL_MS",
            retention.interval,
        );
        for (name, value) in [
            (
                "SLUICE__RETENTION__DEAD_LETTER_DAYS",
                retention.dead_letter_age,
            ),
            ("SLUICE__RETENTION__CHAT_IDLE_DAYS", retention.chat_idle),
        ] {
            if value > MAX_RETENTION {
                problems.push(invalid(name, "at most 36500 days (0 keeps for ever)"));
            }
        }
    }

    /// The API refuses to start without a real signing secret, and with an admin token (when
    /// one is set) or signing secret anyone could guess: too short, too few distinct bytes, or
    /// a placeholder this repository ships (see [`weak_secret`]).
    pub fn validate_api(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        for check in [Self::check_jwt_secret, Self::check_admin_token] {
            check(self, &mut problems);
        }
        SettingsError::all(problems)
    }

    fn check_jwt_secret(&self, problems: &mut Vec<SettingsError>) {
        let secret = self.auth.jwt_secret.expose();
        let reason = if secret.is_empty() {
            Some("must be set (required)".to_owned())
        } else {
            weak_secret(secret)
        };
        if let Some(reason) = reason {
            problems.push(invalid("SLUICE__AUTH__JWT_SECRET", reason));
        }
    }

    fn check_admin_token(&self, problems: &mut Vec<SettingsError>) {
        let token = self.admin.token.expose();
        // Empty is allowed: it turns the admin endpoints off.
        if let Some(reason) = weak_secret(token).filter(|_| !token.is_empty()) {
            problems.push(invalid(
                "SLUICE__ADMIN__TOKEN",
                format!("{reason} (or leave it empty to turn the admin endpoints off)"),
            ));
        }
    }

    /// The model catalogue these settings describe (build it once and keep it).
    pub fn catalogue(&self) -> Catalogue {
        Catalogue::new(&self.models, &self.provider.model, &self.provider.models)
    }

    pub fn keys_file(&self) -> Option<PathBuf> {
        (!self.keys.file.is_empty()).then(|| PathBuf::from(&self.keys.file))
    }
}

/// The longest `x-message-ttl` RabbitMQ accepts: 2^32 - 1 ms, about 49 days.
pub const MAX_MESSAGE_TTL: Duration = Duration::from_millis(u32::MAX as u64);
/// Retention periods stop at a century (PostgreSQL's intervals have a range).
const MAX_RETENTION: Duration = Duration::from_secs(36_500 * 86_400);

/// The least length of the JWT secret and the admin token, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The least number of distinct bytes in them: refuses `aaaa…`, `0101…` and the like. (Hex
/// has only 16 symbols, so 64 random hex characters miss one of them about a time in four:
/// generate secrets as base64, e.g. `openssl rand -base64 48`.)
pub const MIN_SECRET_DISTINCT_BYTES: usize = 16;
/// Parts of the placeholders this repository ships (`.env.example`, `deploy/`, docs), in lower
/// case: a value holding one was copied, not generated. tests/it/security.rs reads the
/// templates and checks that every value they ship is refused.
const PLACEHOLDER_MARKS: [&str; 6] = [
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "placeholder",
    "example",
];

/// Why `secret` is not fit to sign tokens or open the admin endpoints, or `None` if it is.
pub fn weak_secret(secret: &str) -> Option<String> {
    let lower = secret.to_ascii_lowercase();
    if let Some(mark) = PLACEHOLDER_MARKS.iter().find(|m| lower.contains(*m)) {
        return Some(format!(
            "holds {mark:?}: a placeholder the repository ships; generate a secret (e.g. `openssl rand -base64 48`)"
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Some(format!(
            "must be at least {MIN_SECRET_BYTES} bytes (has {})",
            secret.len()
        ));
    }
    let distinct = secret
        .bytes()
        .collect::<std::collections::BTreeSet<u8>>()
        .len();
    if distinct < MIN_SECRET_DISTINCT_BYTES {
        return Some(format!(
            "must hold at least {MIN_SECRET_DISTINCT_BYTES} distinct bytes (has {distinct}); generate one with `openssl rand -base64 48`"
        ));
    }
    None
}

/// A duration that must not be zero.
fn positive(problems: &mut Vec<SettingsError>, name: &'static str, value: Duration) {
    if value.is_zero() {
        problems.push(invalid(name, "must be > 0"));
    }
}

/// A base URL a provider client may call.
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Parses `GEMINI_API_KEYS`: a comma list of `key` or `alias=key`; bare keys are named
/// `key-1`, `key-2`, … by their position.
pub fn parse_api_keys(list: &str) -> Result<Vec<ApiKey>, SettingsError> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (index, item) in list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        let (alias, secret) = match item.split_once('=') {
            Some((alias, secret)) => (alias.trim().to_owned(), secret.trim()),
            None => (format!("key-{}", index + 1), item),
        };
        if alias.is_empty() || secret.is_empty() {
            return Err(invalid(
                "GEMINI_API_KEYS",
                format!("entry {} needs both an alias and a key", index + 1),
            ));
        }
        if keys.iter().any(|k| k.alias == alias) {
            return Err(invalid(
                "GEMINI_API_KEYS",
                format!("alias {alias} is used twice"),
            ));
        }
        keys.push(ApiKey {
            alias,
            secret: Secret::new(secret.to_owned()),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() -> Result<(), SettingsError> {
        let s = Settings::defaults()?;
        s.validate()?;
        assert_eq!(s.queues.prefix, "sluice.");
        assert_eq!(s.retry.delays_ms, vec![60000, 600000, 3600000, 86400000]);
        assert_eq!(s.provider.model, "gemini-2.5-flash");
        assert_eq!(s.chat.history_turns, 20);
        assert!(s.database.migrate_on_start);
        assert_eq!(s.telemetry.format, LogFormat::Text);
        assert_eq!(
            (s.stream.max_per_user, s.stream.max_connections),
            (8, 10_000)
        );
        assert_eq!(
            (s.http.max_connections, s.http.max_page_bytes),
            (20_000, 1_048_576)
        );
        assert_eq!(
            s.http.metrics_addr,
            SocketAddr::from(([127, 0, 0, 1], 9464))
        );
        assert_eq!((s.users.max_chats, s.users.max_templates), (1_000, 100));
        assert_eq!(
            (
                s.users.logins_per_minute_per_email_and_address,
                s.users.logins_per_minute_per_email,
                s.users.logins_per_minute_per_address
            ),
            (10, 100, 60)
        );
        assert_eq!(s.queues.parked_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(
            s.retention.dead_letter_limit(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(s.retention.chat_idle_limit(), None);
        assert_eq!(s.retention.interval, Duration::from_secs(3_600));
        Ok(())
    }

    #[test]
    fn the_metrics_listener_needs_a_port_of_its_own() -> Result<(), SettingsError> {
        let mut s = Settings::defaults()?;
        s.http.metrics_addr = SocketAddr::from(([0, 0, 0, 0], s.http.addr.port()));
        assert!(matches!(
            s.validate(),
            Err(SettingsError::Invalid {
                name: "SLUICE__HTTP__METRICS_ADDR",
                ..
            })
        ));
        // Port 0 (tests) picks a free port for each.
        s.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.http.metrics_addr = s.http.addr;
        s.validate()?;
        Ok(())
    }

    #[test]
    fn retention_and_the_parked_ttl_are_bounded_by_name() -> Result<(), SettingsError> {
        let mut s = Settings::defaults()?;
        s.retention.interval = Duration::ZERO;
        s.retention.chat_idle = Duration::from_secs(36_501 * 86_400);
        s.queues.parked_ttl = MAX_MESSAGE_TTL + Duration::from_millis(1);
        let message = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for name in [
            "SLUICE__RETENTION__INTERVAL_MS",
            "SLUICE__RETENTION__CHAT_IDLE_DAYS",
            "SLUICE__QUEUES__PARKED_TTL_MS",
        ] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        Ok(())
    }

    #[test]
    fn a_zero_reaper_interval_is_refused() -> Result<(), SettingsError> {
        let mut s = Settings::defaults()?;
        s.retry.reaper_interval = Duration::ZERO;
        assert!(s.validate().is_err());
        Ok(())
    }

    #[test]
    fn every_invalid_setting_is_named_in_one_error() -> Result<(), SettingsError> {
        let mut s = Settings::defaults()?;
        s.worker.prefetch = 0;
        s.relay.sweep_after = Duration::ZERO;
        s.queues.prefix = String::new();
        let message = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for name in [
            "SLUICE__WORKER__PREFETCH",
            "SLUICE__RELAY__SWEEP_AFTER_MS",
            "SLUICE__QUEUES__PREFIX",
        ] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        assert!(message.starts_with("3 invalid settings"), "{message}");
        // One problem keeps its own shape.
        let mut one = Settings::defaults()?;
        one.worker.prefetch = 0;
        assert!(matches!(
            one.validate(),
            Err(SettingsError::Invalid {
                name: "SLUICE__WORKER__PREFETCH",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn api_keys_get_aliases_and_hide_secrets() -> Result<(), SettingsError> {
        let keys = parse_api_keys("AIzaONE, main=AIzaTWO ,AIzaTHREE")?;
        let aliases: Vec<_> = keys.iter().map(|k| k.alias.as_str()).collect();
        assert_eq!(aliases, ["key-1", "main", "key-3"]);
        assert_eq!(keys[1].secret.expose(), "AIzaTWO");
        assert!(!format!("{keys:?}").contains("AIza"));
        assert!(parse_api_keys("a=x,a=y").is_err());
        assert!(parse_api_keys("=x").is_err());
        Ok(())
    }

    #[test]
    fn the_log_format_is_text_or_json_and_nothing_else() -> Result<(), Box<dyn std::error::Error>> {
        let with = |format: &str| {
            Config::builder()
                .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
                .set_override("telemetry.format", format)?
                .build()?
                .try_deserialize::<Settings>()
        };
        assert_eq!(with("json")?.telemetry.format, LogFormat::Json);
        assert_eq!(with("text")?.telemetry.format, LogFormat::Text);
        let refused = with("xml").err().ok_or("xml was accepted")?.to_string();
        assert!(refused.contains("telemetry.format"), "{refused}");
        Ok(())
    }

    #[test]
    fn durations_and_the_backend_are_typed_and_named_in_errors()
    -> Result<(), Box<dyn std::error::Error>> {
        let with = |key: &str, value: &str| {
            Config::builder()
                .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
                .set_override(key, value)?
                .build()?
                .try_deserialize::<Settings>()
        };
        let s = with("retention.chat_idle_days", "2")?;
        assert_eq!(
            s.retention.chat_idle_limit(),
            Some(Duration::from_secs(172_800))
        );
        let s = with("limits.window_ms", "1500")?;
        assert_eq!(s.limits.window, Duration::from_millis(1500));
        assert_eq!(s.limits.backend, LimitsBackend::Redis);
        assert_eq!(s.auth.token_ttl, Duration::from_secs(86_400));
        assert_eq!(
            with("limits.backend", "local")?.limits.backend,
            LimitsBackend::Local
        );
        let refused = with("limits.backend", "memcached")
            .err()
            .ok_or("memcached was accepted")?;
        assert!(refused.to_string().contains("limits.backend"), "{refused}");
        let refused = with("limits.window_ms", "-5")
            .err()
            .ok_or("-5 ms was accepted")?;
        assert!(refused.to_string().contains("window_ms"), "{refused}");
        Ok(())
    }

    fn with_secrets(jwt: &str, admin: &str) -> Result<Result<(), SettingsError>, SettingsError> {
        let mut s = Settings::defaults()?;
        s.auth.jwt_secret = Secret::new(jwt.to_owned());
        s.admin.token = Secret::new(admin.to_owned());
        Ok(s.validate_api())
    }

    const STRONG: &str = "q7Vd2mXo9LzK4pWb8NcR1sTyE6uHaJfG";

    #[test]
    fn a_strong_secret_passes_and_an_empty_admin_token_turns_admin_off() -> Result<(), SettingsError>
    {
        with_secrets(STRONG, STRONG)??;
        with_secrets(STRONG, "")??;
        Ok(())
    }

    #[test]
    fn weak_or_shipped_secrets_are_refused_by_name() -> Result<(), SettingsError> {
        let thirty_one = &STRONG[..31];
        let few_distinct = "0123456789abcde".repeat(4);
        for weak in [
            thirty_one,
            few_distinct.as_str(),
            "CHANGE-ME-to-at-least-32-random-characters",
            "this-is-a-CHANGE-ME-value-Q7vd2mXo9LzK4pWb8NcR1sTy",
            "xPlaceholderq7Vd2mXo9LzK4pWb8NcR1sTyE6uHaJfG",
        ] {
            let jwt = with_secrets(weak, STRONG)?;
            assert!(
                matches!(
                    jwt,
                    Err(SettingsError::Invalid {
                        name: "SLUICE__AUTH__JWT_SECRET",
                        ..
                    })
                ),
                "{weak}: {jwt:?}"
            );
            let admin = with_secrets(STRONG, weak)?;
            assert!(
                matches!(
                    admin,
                    Err(SettingsError::Invalid {
                        name: "SLUICE__ADMIN__TOKEN",
                        ..
                    })
                ),
                "{weak}: {admin:?}"
            );
        }
        assert!(matches!(
            with_secrets("", "")?,
            Err(SettingsError::Invalid {
                name: "SLUICE__AUTH__JWT_SECRET",
                ..
            })
        ));
        // Both wrong: both named.
        let both = with_secrets("short", "short")?
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            both.contains("SLUICE__AUTH__JWT_SECRET") && both.contains("SLUICE__ADMIN__TOKEN"),
            "{both}"
        );
        Ok(())
    }

    #[test]
    fn a_catalogue_in_a_settings_file_keeps_its_names_and_is_checked()
    -> Result<(), Box<dyn std::error::Error>> {
        let with = |local: &str| {
            Config::builder()
                .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
                .add_source(File::from_str(local, FileFormat::Toml))
                .build()?
                .try_deserialize::<Settings>()
        };
        let s = with(
            r#"
            [provider]
            model = "Gemini-2.5-Flash"
            [models."Gemini-2.5-Flash"]
            upstream = "gemini-2.5-flash"
            input_price_per_mtok = 0.3
            [models."gpt-4o-mini"]
            provider = "openai"
            output_price_per_mtok = "0.60"
            context_tokens = 128000
            fallback = ["Gemini-2.5-Flash"]
            "#,
        )?;
        s.validate()?;
        let catalogue = s.catalogue();
        let gpt = catalogue
            .get("gpt-4o-mini")
            .ok_or("gpt-4o-mini is missing")?;
        assert_eq!(gpt.provider, crate::catalogue::ProviderKind::OpenAi);
        assert_eq!(gpt.upstream, "gpt-4o-mini");
        assert_eq!(gpt.output_price_per_mtok.micro_usd_per_mtok(), 600_000);
        assert_eq!(gpt.fallback, ["Gemini-2.5-Flash"]);
        assert_eq!(
            catalogue
                .get("Gemini-2.5-Flash")
                .map(|m| m.upstream.as_str()),
            Some("gemini-2.5-flash"),
            "names keep their case and their dots"
        );

        let s = with("[models.solo]\nprovider = \"openai\"\nfallback = [\"ghost\"]\n")?;
        let refused = s
            .validate()
            .err()
            .ok_or("a broken catalogue was accepted")?;
        let refused = refused.to_string();
        for expected in ["SLUICE__MODELS", "provider.model", "ghost"] {
            assert!(refused.contains(expected), "{expected} in {refused}");
        }
        assert!(
            with("[models.x]\ncolour = \"red\"\n").is_err(),
            "unknown fields are refused"
        );
        Ok(())
    }

    #[test]
    fn a_fallback_must_come_before_the_no_key_bound() -> Result<(), SettingsError> {
        let mut s = Settings::defaults()?;
        s.routing.fallback_after = s.keys.no_key_max_wait;
        s.validate()?;
        // Only a model with somewhere to go makes the bound matter.
        s.provider.model = "a".into();
        for (name, fallback) in [("a", vec!["b".to_owned()]), ("b", Vec::new())] {
            let entry = crate::catalogue::ModelEntry {
                fallback,
                ..Default::default()
            };
            s.models.insert(name.into(), entry);
        }
        let refused = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("SLUICE__ROUTING__FALLBACK_AFTER_MS"),
            "{refused}"
        );
        s.routing.fallback_after_failures = 0;
        let refused = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("FALLBACK_AFTER_FAILURES"), "{refused}");
        Ok(())
    }

    #[test]
    fn model_names_are_url_safe() {
        assert!(is_model_name("gemini-2.5-flash"));
        assert!(!is_model_name("../admin"));
        assert!(!is_model_name("a/b"));
        assert!(!is_model_name(""));
    }
}
