//! `POST /api/auth/register` and `POST /api/auth/login`: both answer `{token, user}`.

use crate::AppState;
use crate::auth::{hash_password, issue_token, verify_password};
use crate::entities::users;
use crate::error::{ApiError, OnConflict};
use crate::extract::AppJson;
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

const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;

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
    AppJson(body): AppJson<Credentials>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let email = normalize_email(&body.email)?;
    if !PASSWORD_CHARS.contains(&body.password.chars().count()) {
        return Err(ApiError::unprocessable(
            "invalid_password",
            "`password` must be 8 to 1024 characters",
        ));
    }
    let user = users::Model {
        id: Uuid::now_v7(),
        email,
        password_hash: hash_password(body.password).await?,
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
    AppJson(body): AppJson<Credentials>,
) -> Result<Json<Session>, ApiError> {
    let email = body.email.trim().to_lowercase();
    let user = users::Entity::find()
        .filter(users::Column::Email.eq(email))
        .one(&state.db)
        .await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match (verify_password(body.password, hash).await?, user) {
        (true, Some(user)) => Ok(Json(session(&state, user)?)),
        _ => Err(ApiError::unauthorized(
            "invalid_credentials",
            "wrong email or password",
        )),
    }
}
