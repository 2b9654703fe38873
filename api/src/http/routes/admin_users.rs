//! Operators' endpoints on accounts (admin token): suspend one — its tokens stop working at
//! once on this replica and within seconds on the others, its event streams end within a
//! heartbeat, and its queued work is not sent to the provider — and resume it.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Admin, parse_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sluice_shared::marks::StopReason;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(suspend))
        .routes(routes!(resume))
}

/// Suspends a user.
#[utoipa::path(post,
    path = "/api/admin/users/{id}/suspend",
    operation_id = "suspend_user", tag = "admin", security(("admin" = [])),
    params(("id" = Uuid, Path, description = "The user")),
    responses(
        (status = 204, description = "Suspended (also when it already was)"),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn suspend(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = parse_id(&id, "user")?;
    if !state.store.set_suspended(user, true).await? {
        return Err(ApiError::not_found("user"));
    }
    state.sessions.forget(user);
    state.stops.user(user, StopReason::AccountSuspended).await;
    tracing::warn!(%user, "user suspended by an operator");
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a suspension: the user can sign in again (tokens issued before it work again too,
/// until they expire).
#[utoipa::path(post,
    path = "/api/admin/users/{id}/resume",
    operation_id = "resume_user", tag = "admin", security(("admin" = [])),
    params(("id" = Uuid, Path, description = "The user")),
    responses(
        (status = 204, description = "Resumed (also when it was not suspended)"),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn resume(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = parse_id(&id, "user")?;
    if !state.store.set_suspended(user, false).await? {
        return Err(ApiError::not_found("user"));
    }
    state.sessions.forget(user);
    state.stops.resume_user(user).await;
    tracing::warn!(%user, "user resumed by an operator");
    Ok(StatusCode::NO_CONTENT)
}
