//! Operators' view of the key pool (admin token): each key's state — ok, cooling until,
//! parked until, disabled with its reason — and its usage in the current window, read from
//! the fleet-wide state in Redis. Never the secret.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::Admin;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_shared::keypool::state::Usage as UsageState;
use sluice_shared::keypool::{KeyPoolState, KeySnapshot, KeySpec, Limits, RedisLayout};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(enable))
}

#[derive(Debug, Serialize, ToSchema)]
struct Usage {
    calls_in_window: u64,
    tokens_in_window: u64,
    calls_today: u64,
}

impl From<UsageState> for Usage {
    fn from(u: UsageState) -> Self {
        Self {
            calls_in_window: u.calls_in_window,
            tokens_in_window: u.tokens_in_window,
            calls_today: u.calls_today,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct ModelView {
    model: String,
    limits: LimitsView,
    usage: Usage,
    /// `cooling` (a 429's retryDelay) or `parked` (a per-day quota) until `until`.
    state: &'static str,
    until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
struct LimitsView {
    rpm: u32,
    tpm: u32,
    rpd: u32,
}

impl From<Limits> for LimitsView {
    fn from(l: Limits) -> Self {
        Self {
            rpm: l.rpm,
            tpm: l.tpm,
            rpd: l.rpd,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct KeyView {
    alias: String,
    /// `gemini` or `openai`: the kind of API the key speaks.
    provider: &'static str,
    project: String,
    weight: u32,
    window_ms: u64,
    /// `ok`, `disabled`, or the worst state among its models (`cooling`, `parked`).
    state: &'static str,
    /// The proxy its calls leave through (`direct` without one), never with credentials.
    egress: String,
    /// Set while every key behind this egress route was lately rate-limited at once.
    egress_throttled_until: Option<DateTime<Utc>>,
    disabled_reason: Option<String>,
    models: Vec<ModelView>,
}

#[derive(Debug, Serialize, ToSchema)]
struct KeysView {
    items: Vec<KeyView>,
    /// Catalogue models that requests with a fallback skip now, and why.
    skipped_models: Vec<SkippedModel>,
}

/// A model new requests skip for the next one of their chain.
#[derive(Debug, Serialize, ToSchema)]
struct SkippedModel {
    model: String,
    /// `breaker_open`: most of its recent calls failed retryably (half of at least 10 within
    /// a minute); a probe call every 10 s tries it again.
    reason: &'static str,
    /// The workers whose breaker for it is open.
    workers: u64,
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
        "the key pool's state lives in Redis, which cannot be reached",
    )
}

async fn connection(state: &AppState) -> Result<redis::aio::MultiplexedConnection, ApiError> {
    tokio::time::timeout(
        REDIS_TIMEOUT,
        state.redis.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| unavailable())?
    .map_err(|_| unavailable())
}

fn pool_state(state: &AppState) -> KeyPoolState {
    KeyPoolState::new(RedisLayout::new(state.settings.redis.prefix.clone()))
}

/// The admin JSON of one key: its configuration beside its state in Redis.
fn key_view(key: &KeySpec, snapshot: KeySnapshot) -> KeyView {
    KeyView {
        alias: snapshot.alias,
        provider: key.provider.as_str(),
        project: key.project.clone(),
        weight: key.weight,
        window_ms: key.window_ms,
        state: snapshot.state.name(),
        egress: snapshot.egress,
        egress_throttled_until: snapshot.egress_throttled_until,
        disabled_reason: snapshot.state.disabled_reason().map(str::to_owned),
        models: snapshot
            .models
            .into_iter()
            .map(|m| ModelView {
                limits: key.limits(&m.model).into(),
                state: m.state.name(),
                until: m.state.until(),
                usage: m.usage.into(),
                model: m.model,
            })
            .collect(),
    }
}

/// Every key's state and usage, read from the fleet-wide state in Redis. Never the secret.
#[utoipa::path(get,
    path = "/api/admin/keys",
    operation_id = "list_keys", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The key pool", body = KeysView),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 503, description = "Redis cannot be reached (`redis_unavailable`)", body = ErrorBody),
    ))]
async fn list(State(state): State<AppState>, _: Admin) -> Result<Json<KeysView>, ApiError> {
    let mut conn = connection(&state).await?;
    let keys = state.keys.load_full();
    let pool = pool_state(&state);
    let models: Vec<&str> = state.catalogue.models().map(|m| m.name.as_str()).collect();
    let now = Utc::now();
    let read = async {
        let snapshot = pool
            .snapshot(
                &mut conn,
                &keys,
                &state.catalogue,
                state.settings.provider.proxy.expose(),
                now,
            )
            .await?;
        let breakers = pool.open_breakers(&mut conn, &models, now).await?;
        Ok::<_, redis::RedisError>((snapshot, breakers))
    };
    let (items, breakers) = tokio::time::timeout(REDIS_TIMEOUT, read)
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the key pool");
            unavailable()
        })?;
    let items = keys
        .iter()
        .zip(items)
        .map(|(key, snapshot)| key_view(key, snapshot))
        .collect();
    let skipped_models = models
        .iter()
        .zip(breakers)
        .filter(|(_, workers)| *workers > 0)
        .map(|(model, workers)| SkippedModel {
            model: (*model).to_owned(),
            reason: "breaker_open",
            workers,
        })
        .collect();
    Ok(Json(KeysView {
        items,
        skipped_models,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct Enabled {
    alias: String,
    state: &'static str,
}

/// Re-enables a key by hand (the probe would have, at its next turn, if the key works).
#[utoipa::path(post,
    path = "/api/admin/keys/{alias}/enable",
    operation_id = "enable_key", tag = "admin", security(("admin" = [])),
    params(("alias" = String, Path, description = "The key's alias")),
    responses(
        (status = 200, description = "Enabled", body = Enabled),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No key has this alias (`key_not_found`)", body = ErrorBody),
        (status = 503, description = "Redis cannot be reached (`redis_unavailable`)", body = ErrorBody),
    ))]
async fn enable(
    State(state): State<AppState>,
    _: Admin,
    Path(alias): Path<String>,
) -> Result<Json<Enabled>, ApiError> {
    if !state.keys.load().iter().any(|k| k.alias == alias) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "no key has this alias",
        ));
    }
    let mut conn = connection(&state).await?;
    tokio::time::timeout(REDIS_TIMEOUT, pool_state(&state).enable(&mut conn, &alias))
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    tracing::info!(key = %alias, "key re-enabled by an operator");
    Ok(Json(Enabled { alias, state: "ok" }))
}
