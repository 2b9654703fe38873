//! Liveness (`/api/health`) and readiness (`/api/ready`): ready means PostgreSQL answers; the
//! broker and Redis are reported but do not fail readiness, since the outbox absorbs outages.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/ready", get(ready))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn word(up: bool) -> &'static str {
    if up { "ok" } else { "down" }
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping())
        .await
        .is_ok_and(|up| up);
    let broker = state.broker_up.load(Ordering::Relaxed);
    let redis = tokio::time::timeout(PROBE_TIMEOUT, ping_redis(&state.redis))
        .await
        .is_ok_and(|ok| ok);
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"database": word(database), "broker": word(broker), "redis": word(redis)})),
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
