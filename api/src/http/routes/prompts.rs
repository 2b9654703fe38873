//! `POST /api/prompts` and `GET /api/prompts`: a user's reusable system instructions.

use super::views::TemplateView;
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AppJson, AuthUser};
use crate::store::Template;
use crate::store::paging::now_micros;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
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
    let template = Template {
        id: Uuid::now_v7(),
        user_id: user,
        name,
        body: input.body,
        created_at: now_micros(),
    };
    state.store.create_template(&template).await?;
    Ok((StatusCode::CREATED, Json(template.into())))
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Templates>, ApiError> {
    let rows = state.store.templates(user, LIST_MAX).await?;
    Ok(Json(Templates {
        items: rows.into_iter().map(TemplateView::from).collect(),
    }))
}
