//! `POST /api/prompts` and `GET /api/prompts`: a user's reusable system instructions.

use super::views::{TemplateView, now_micros};
use crate::AppState;
use crate::entities::prompt_templates;
use crate::error::ApiError;
use crate::extract::{AppJson, AuthUser};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const NAME_MAX_CHARS: usize = 200;
const BODY_MAX_CHARS: usize = 32_000;
const LIST_MAX: u64 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/prompts", get(list).post(create))
}

#[derive(Deserialize)]
struct NewTemplate {
    name: String,
    body: String,
}

#[derive(Serialize)]
struct Templates {
    items: Vec<TemplateView>,
}

async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(input): AppJson<NewTemplate>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("`name` must be 1 to {NAME_MAX_CHARS} characters"),
        ));
    }
    if input.body.trim().is_empty() || input.body.chars().count() > BODY_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("`body` must be 1 to {BODY_MAX_CHARS} characters"),
        ));
    }
    let template = prompt_templates::Model {
        id: Uuid::now_v7(),
        user_id: user,
        name,
        body: input.body,
        created_at: now_micros(),
    };
    prompt_templates::Entity::insert(prompt_templates::ActiveModel {
        id: Set(template.id),
        user_id: Set(template.user_id),
        name: Set(template.name.clone()),
        body: Set(template.body.clone()),
        created_at: Set(template.created_at),
    })
    .exec_without_returning(&state.db)
    .await?;
    Ok((StatusCode::CREATED, Json(template.into())))
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Templates>, ApiError> {
    let rows = prompt_templates::Entity::find()
        .filter(prompt_templates::Column::UserId.eq(user))
        .order_by_asc(prompt_templates::Column::CreatedAt)
        .order_by_asc(prompt_templates::Column::Id)
        .limit(LIST_MAX)
        .all(&state.db)
        .await?;
    Ok(Json(Templates {
        items: rows.into_iter().map(TemplateView::from).collect(),
    }))
}
