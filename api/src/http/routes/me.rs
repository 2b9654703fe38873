//! The signed-in user's own account: `GET /api/me`, its limits, a password change (which ends
//! every earlier sign-in) and deleting the account with everything it owns.

use super::auth::{Session, check_new_password, password_matches, signed_in};
use crate::http::AppState;
use crate::http::auth::{Session as SignedInSession, issue_token_at};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, SignedIn};
use crate::http::limits::LimitUsage;
use crate::http::sessions::account_gone;
use crate::store::User;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_shared::marks::StopReason;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, delete_me))
        .routes(routes!(limits))
        .routes(routes!(change_password))
}

#[derive(Serialize, ToSchema)]
struct Me {
    id: Uuid,
    email: String,
    created_at: DateTime<Utc>,
}

/// Limits that are off (0) are not listed.
#[derive(Serialize, ToSchema)]
struct MyLimits {
    limits: Vec<LimitUsage>,
}

#[derive(Deserialize, ToSchema)]
struct PasswordChange {
    /// The current password.
    old: String,
    /// At least 8 characters and at most 1024 bytes.
    new: String,
}

#[derive(Deserialize, ToSchema)]
struct Confirmation {
    /// The account's password, to confirm.
    password: String,
}

fn wrong_password() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "wrong_password",
        "the password is not right",
    )
}

/// The account of `session`, which a concurrent deletion may have just removed.
async fn account(state: &AppState, session: &SignedInSession) -> Result<User, ApiError> {
    state
        .store
        .user(session.user)
        .await?
        .ok_or_else(account_gone)
}

/// The signed-in account.
#[utoipa::path(get,
    path = "/api/me",
    operation_id = "me", tag = "me", security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = Me),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn me(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
) -> Result<Json<Me>, ApiError> {
    let user = account(&state, &session).await?;
    Ok(Json(Me {
        id: user.id,
        email: user.email,
        created_at: user.created_at,
    }))
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
    SignedIn(session): SignedIn,
) -> Result<Json<MyLimits>, ApiError> {
    Ok(Json(MyLimits {
        limits: state.limits.usage(session.user).await?,
    }))
}

/// Changes the password. Every token issued before, this one included, stops working (and
/// the event streams they opened end within a heartbeat); the answer carries a new token.
#[utoipa::path(post,
    path = "/api/me/password",
    operation_id = "change_password", tag = "me", security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; a new token", body = Session),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The old password is not right (`wrong_password`)", body = ErrorBody),
        (status = 422, description = "The new password is too short or too long (`invalid_password`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or the password-hashing queue is full (`busy`)", body = ErrorBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    AppJson(body): AppJson<PasswordChange>,
) -> Result<Json<Session>, ApiError> {
    check_new_password(&body.new, "new")?;
    let user = account(&state, &session).await?;
    if !password_matches(&state, body.old, user.password_hash.clone()).await? {
        return Err(wrong_password());
    }
    let hash = state.hashing.hash(body.new).await?;
    // Tokens are dated in whole seconds: every one issued up to now is refused from the next
    // second on, and the new token is dated that second.
    let valid_from = Utc::now().timestamp().saturating_add(1);
    let valid_after = DateTime::from_timestamp(valid_from, 0).unwrap_or_else(Utc::now);
    if !state
        .store
        .change_password(user.id, hash, valid_after)
        .await?
    {
        return Err(account_gone());
    }
    state.sessions.forget(user.id);
    tracing::info!(user = %user.id, "password changed; earlier sign-ins ended");
    let token = issue_token_at(
        state.settings.auth.jwt_secret.expose(),
        user.id,
        state.settings.auth.token_ttl.as_secs(),
        valid_from,
    )?;
    Ok(Json(signed_in(token, user)?))
}

/// Deletes the account and, in one transaction, everything it owns: chats, messages,
/// templates, dead letters and requests not yet published. Queued work is not sent to the
/// provider, and Redis forgets the user's partial replies, limits and calls in flight.
#[utoipa::path(delete,
    path = "/api/me",
    operation_id = "delete_me", tag = "me", security(("bearer" = [])),
    request_body = Confirmation,
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The password is not right (`wrong_password`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn delete_me(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    AppJson(body): AppJson<Confirmation>,
) -> Result<StatusCode, ApiError> {
    let user = account(&state, &session).await?;
    if !password_matches(&state, body.password, user.password_hash).await? {
        return Err(wrong_password());
    }
    // Marked before the rows go: a worker that checks in between skips the work either way.
    state.stops.user(user.id, StopReason::AccountClosed).await;
    let partial_ttl = state.settings.stream.partial_ttl;
    let Some(deleted) = state.store.delete_account(user.id, partial_ttl).await? else {
        return Err(account_gone());
    };
    state.sessions.forget(user.id);
    state
        .stops
        .forget_user(user.id, &deleted.recent_replies)
        .await;
    tracing::info!(user = %user.id, chats = deleted.chats.len(), "account deleted by its user");
    Ok(StatusCode::NO_CONTENT)
}
