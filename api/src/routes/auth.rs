//! `POST /api/auth/register` and `POST /api/auth/login`: both answer `{token, user}`. Both
//! are throttled per client address (logins per email too) before any password is hashed.

use crate::AppState;
use crate::auth::issue_token;
use crate::entities::users;
use crate::error::{ApiError, OnConflict};
use crate::extract::{AppJson, ClientAddr};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct UserView {
    id: Uuid,
    email: String,
}

#[derive(Serialize)]
struct Session {
    token: String,
    user: UserView,
}

const PASSWORD_MIN_CHARS: usize = 8;
/// Longer passwords are refused before hashing: argon2's cost grows with the input, and
/// nobody types more. Bytes, not characters, so login and register agree on what fits.
const PASSWORD_MAX_BYTES: usize = 1024;

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "wrong email or password")
}

/// Emails are compared case-insensitively, so they are stored lower-cased.
fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::unprocessable(
            "invalid_email",
            "`email` must be an address like name@example.com",
        ))
    }
}

fn session(state: &AppState, user: users::Model) -> Result<Session, ApiError> {
    let token = issue_token(
        state.settings.auth.jwt_secret.expose(),
        user.id,
        state.settings.auth.token_ttl_secs,
    )?;
    Ok(Session {
        token,
        user: UserView {
            id: user.id,
            email: user.email,
        },
    })
}

async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    AppJson(body): AppJson<Credentials>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    state.limits.admit_register(client).await?;
    let email = normalize_email(&body.email)?;
    if body.password.chars().count() < PASSWORD_MIN_CHARS
        || body.password.len() > PASSWORD_MAX_BYTES
    {
        return Err(ApiError::unprocessable(
            "invalid_password",
            format!(
                "`password` must be at least {PASSWORD_MIN_CHARS} characters and at most \
                 {PASSWORD_MAX_BYTES} bytes"
            ),
        ));
    }
    let user = users::Model {
        id: Uuid::now_v7(),
        email,
        password_hash: state.hashing.hash(body.password).await?,
        created_at: crate::routes::views::now_micros(),
    };
    users::Entity::insert(users::ActiveModel {
        id: Set(user.id),
        email: Set(user.email.clone()),
        password_hash: Set(user.password_hash.clone()),
        created_at: Set(user.created_at),
    })
    .exec_without_returning(&state.db)
    .await
    .on_unique(ApiError::new(
        StatusCode::CONFLICT,
        "email_taken",
        "an account with this email already exists",
    ))?;
    Ok((StatusCode::CREATED, Json(session(&state, user)?)))
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    AppJson(body): AppJson<Credentials>,
) -> Result<Json<Session>, ApiError> {
    let email = body.email.trim().to_lowercase();
    state.limits.admit_login(&email, client).await?;
    if body.password.len() > PASSWORD_MAX_BYTES {
        // No account can have it (register refuses it too), so no hash is spent on it.
        return Err(invalid_credentials());
    }
    let user = users::Entity::find()
        .filter(users::Column::Email.eq(email))
        .one(&state.db)
        .await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match (state.hashing.verify(body.password, hash).await?, user) {
        (true, Some(user)) => Ok(Json(session(&state, user)?)),
        _ => Err(invalid_credentials()),
    }
}
