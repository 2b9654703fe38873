//! Liveness (`/api/health`) and readiness (`/api/ready`): ready means PostgreSQL answers and
//! every background task runs; the broker and Redis are reported but do not fail readiness,
//! since the outbox absorbs outages.

use crate::http::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Each dependency as `ok` or `down`, and the background tasks.
#[derive(Serialize, ToSchema)]
struct Readiness {
    database: &'static str,
    broker: &'static str,
    redis: &'static str,
    /// `ok`, or which task stopped (the process exits within seconds after that).
    #[schema(example = "ok")]
    tasks: String,
}

/// Liveness: the process answers.
#[utoipa::path(get,
    path = "/api/health",
    operation_id = "health", tag = "ops",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

fn word(up: bool) -> &'static str {
    if up { "ok" } else { "down" }
}

/// Readiness: PostgreSQL answers and no background task has stopped. The broker and Redis
/// are reported but never fail it.
#[utoipa::path(get,
    path = "/api/ready",
    operation_id = "ready", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "PostgreSQL does not answer, or a task stopped", body = Readiness),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping())
        .await
        .is_ok_and(|up| up);
    let broker = state.broker_up.load(Ordering::Relaxed);
    let redis = tokio::time::timeout(PROBE_TIMEOUT, ping_redis(&state.redis))
        .await
        .is_ok_and(|ok| ok);
    let failed = state.tasks.failed();
    let status = if database && failed.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            database: word(database),
            broker: word(broker),
            redis: word(redis),
            tasks: failed.map_or_else(|| "ok".to_owned(), ToString::to_string),
        }),
    )
}

async fn ping_redis(client: &redis::Client) -> bool {
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}
