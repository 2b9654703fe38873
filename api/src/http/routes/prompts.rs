//! `POST /api/prompts`, `GET /api/prompts`, `PUT /api/prompts/{id}` and
//! `DELETE /api/prompts/{id}`: a user's reusable system instructions, at most
//! `users.max_templates` of them.

use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AuthUser, parse_id};
use crate::store::Template;
use crate::store::paging::now_micros;
use crate::store::users::Capped;
use crate::views::TemplateView;
use axum::Json;
use axum::extract::{Path, State};
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
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update, delete))
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

/// Saves a template; pass its id as `template_id` when posting a message. A user keeps at
/// most `users.max_templates` (100).
#[utoipa::path(post,
    path = "/api/prompts",
    operation_id = "create_prompt", tag = "prompts", security(("bearer" = [])),
    request_body = NewTemplate,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "The user has `users.max_templates` templates already (`quota_exceeded`, limit `max_templates`)", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody), (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(input): AppJson<NewTemplate>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let (name, body) = checked(input)?;
    let template = Template {
        id: Uuid::now_v7(),
        user_id: user,
        name,
        body,
        created_at: now_micros(),
    };
    let max = state.settings.users.max_templates;
    match state.store.create_template(&template, max).await? {
        Capped::Created => Ok((StatusCode::CREATED, Json(template.into()))),
        Capped::Full => Err(ApiError::quota_exceeded("max_templates", max)),
    }
}

/// The template's name (trimmed) and body, checked.
fn checked(input: NewTemplate) -> Result<(String, String), ApiError> {
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
    Ok((name, input.body))
}

/// Replaces a template's name and body. Replies already asked keep what they were sent; a
/// retry of one uses the new body.
#[utoipa::path(put,
    path = "/api/prompts/{id}",
    operation_id = "update_prompt", tag = "prompts", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template")),
    request_body = NewTemplate,
    responses(
        (status = 200, description = "Updated", body = TemplateView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such template of this user's (`template_not_found`)", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    AppJson(input): AppJson<NewTemplate>,
) -> Result<Json<TemplateView>, ApiError> {
    let id = parse_id(&id, "template")?;
    let (name, body) = checked(input)?;
    state
        .store
        .update_template(user, id, &name, &body)
        .await?
        .map(|t| Json(t.into()))
        .ok_or_else(|| ApiError::not_found("template"))
}

/// Deletes a template. Messages that named it keep its id; a retry of one goes without a
/// system instruction.
#[utoipa::path(delete,
    path = "/api/prompts/{id}",
    operation_id = "delete_prompt", tag = "prompts", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such template of this user's (`template_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "template")?;
    if state.store.delete_template(user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("template"))
    }
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
