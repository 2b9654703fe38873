//! `POST /api/prompts` and `GET /api/prompts`: a user's reusable system instructions.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AuthUser};
use crate::store::Template;
use crate::store::paging::now_micros;
use crate::views::TemplateView;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

const NAME_MAX_CHARS: usize = 200;
const BODY_MAX_CHARS: usize = 32_000;
const LIST_MAX: u64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create))
}

#[derive(Deserialize, ToSchema)]
struct NewTemplate {
    /// 1 to 200 characters.
    name: String,
    /// The system instruction, 1 to 32 000 characters.
    body: String,
}

#[derive(Serialize, ToSchema)]
struct Templates {
    items: Vec<TemplateView>,
}

/// Saves a template; pass its id as `template_id` when posting a message.
#[utoipa::path(post,
    path = "/api/prompts",
    operation_id = "create_prompt", tag = "prompts", security(("bearer" = [])),
    request_body = NewTemplate,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 401, description = "No valid token", body = ErrorBody), (status = 422, description = "A field is invalid", body = ErrorBody), (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
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

/// The user's templates (at most 500).
#[utoipa::path(get,
    path = "/api/prompts",
    operation_id = "list_prompts", tag = "prompts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The templates", body = Templates),
        (status = 401, description = "No valid token", body = ErrorBody), (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Templates>, ApiError> {
    let rows = state.store.templates(user, LIST_MAX).await?;
    Ok(Json(Templates {
        items: rows.into_iter().map(TemplateView::from).collect(),
    }))
}
