//! `GET /api/me/limits`: the signed-in user's limits and what remains of each.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::AuthUser;
use crate::http::limits::LimitUsage;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(limits))
}

/// Limits that are off (0) are not listed.
#[derive(Serialize, ToSchema)]
struct MyLimits {
    limits: Vec<LimitUsage>,
}

/// The signed-in user's limits and what remains of each.
#[utoipa::path(get,
    path = "/api/me/limits",
    operation_id = "my_limits", tag = "me", security(("bearer" = [])),
    responses(
        (status = 200, description = "The limits", body = MyLimits),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn limits(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<MyLimits>, ApiError> {
    Ok(Json(MyLimits {
        limits: state.limits.usage(user).await?,
    }))
}
