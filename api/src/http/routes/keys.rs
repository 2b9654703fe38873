//! Operators' view of the key pool (admin token): each key's state — ok, cooling until,
//! parked until, disabled with its reason — and its usage in the current window, read from
//! the fleet-wide state in Redis. Never the secret.

use crate::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::Admin;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::Serialize;
use sluice_shared::keypool::{KeySpec, Limits, RedisLayout, pacific_day, route_label};
use std::collections::HashMap;
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

fn models_of(key: &KeySpec, default_model: &str) -> Vec<String> {
    let mut models = vec![default_model.to_owned()];
    models.extend(
        key.model_limits
            .keys()
            .filter(|m| *m != default_model)
            .cloned(),
    );
    models
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
    let layout = RedisLayout::new(state.settings.redis.prefix.clone());
    let read = async {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now);
        let day = pacific_day(now);
        let disabled: HashMap<String, String> = conn.hgetall(layout.disabled()).await?;
        let throttled: HashMap<String, i64> = conn.hgetall(layout.egress()).await?;
        let mut items = Vec::with_capacity(state.keys.len());
        for key in state.keys.iter() {
            let mut models = Vec::new();
            for model in models_of(key, &state.settings.provider.model) {
                let since = now_ms - i64::try_from(key.window_ms).unwrap_or(i64::MAX);
                let live: u64 = conn
                    .zcount(
                        layout.calls(&key.project, &model),
                        format!("({since}"),
                        "+inf",
                    )
                    .await?;
                // Includes calls of the last window not yet swept by a reservation.
                let tokens: Option<i64> = conn.get(layout.tokens(&key.project, &model)).await?;
                let today: Option<u64> = conn.get(layout.day(&key.project, &model, &day)).await?;
                let cool: HashMap<String, String> =
                    conn.hgetall(layout.cooldown(&key.project, &model)).await?;
                let until_ms = cool.get("until").and_then(|u| u.parse::<i64>().ok());
                let (model_state, until) = match until_ms {
                    Some(u) if u > now_ms => (
                        if cool.get("reason").map(String::as_str) == Some("per_day_quota") {
                            "parked"
                        } else {
                            "cooling"
                        },
                        DateTime::from_timestamp_millis(u),
                    ),
                    _ => ("ok", None),
                };
                models.push(ModelView {
                    limits: key.limits(&model).into(),
                    model,
                    usage: Usage {
                        calls_in_window: live,
                        tokens_in_window: u64::try_from(tokens.unwrap_or(0)).unwrap_or(0),
                        calls_today: today.unwrap_or(0),
                    },
                    state: model_state,
                    until,
                });
            }
            let disabled_reason = disabled.get(&key.alias).cloned();
            let key_state = if disabled_reason.is_some() {
                "disabled"
            } else if models.iter().any(|m| m.state == "parked") {
                "parked"
            } else if models.iter().any(|m| m.state == "cooling") {
                "cooling"
            } else {
                "ok"
            };
            let proxy = key
                .proxy
                .as_ref()
                .map_or(state.settings.provider.proxy.expose().as_str(), |p| {
                    p.expose().as_str()
                });
            let egress = route_label(proxy);
            let egress_throttled_until = throttled
                .get(&egress)
                .filter(|until| **until > now_ms)
                .and_then(|until| DateTime::from_timestamp_millis(*until));
            items.push(KeyView {
                egress,
                egress_throttled_until,
                alias: key.alias.clone(),
                project: key.project.clone(),
                weight: key.weight,
                window_ms: key.window_ms,
                state: key_state,
                disabled_reason,
                models,
            });
        }
        Ok::<_, redis::RedisError>(items)
    };
    let items = tokio::time::timeout(REDIS_TIMEOUT, read)
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the key pool");
            unavailable()
        })?;
    Ok(Json(KeysView { items }))
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
    if !state.keys.iter().any(|k| k.alias == alias) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "no key has this alias",
        ));
    }
    let mut conn = connection(&state).await?;
    let layout = RedisLayout::new(state.settings.redis.prefix.clone());
    tokio::time::timeout(
        REDIS_TIMEOUT,
        redis::pipe()
            .hdel(layout.disabled(), &alias)
            .hdel(layout.strikes(), &alias)
            .query_async::<()>(&mut conn),
    )
    .await
    .map_err(|_| unavailable())?
    .map_err(|_| unavailable())?;
    tracing::info!(key = %alias, "key re-enabled by an operator");
    Ok(Json(Enabled { alias, state: "ok" }))
}
