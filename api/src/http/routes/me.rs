//! `GET /api/me/limits`: the signed-in user's limits and what remains of each.

use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::AuthUser;
use crate::http::limits::LimitUsage;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/me/limits", get(limits))
}

/// Limits that are off (0) are not listed.
#[derive(Serialize)]
struct MyLimits {
    limits: Vec<LimitUsage>,
}

async fn limits(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<MyLimits>, ApiError> {
    Ok(Json(MyLimits {
        limits: state.limits.usage(user).await?,
    }))
}
