//! `POST /api/chats`, `GET /api/chats` (newest first, paged), `GET /api/chats/{id}`,
//! `PATCH /api/chats/{id}` (a new title) and `DELETE /api/chats/{id}` (with its messages). A
//! user's chats are capped (`users.max_chats`).

use super::paging::PageQuery;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AppQuery, AuthUser, parse_id};
use crate::store::chats::DEFAULT_TITLE;
use crate::store::paging::now_micros;
use crate::store::users::Capped;
use crate::store::{Chat, Store};
use crate::views::{ChatView, Page};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const TITLE_MAX_CHARS: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, rename, delete))
}

/// A title as given, trimmed; at most [`TITLE_MAX_CHARS`] characters.
fn title_of(raw: Option<String>) -> Result<String, ApiError> {
    let title = raw.map(|t| t.trim().to_owned()).unwrap_or_default();
    if title.chars().count() > TITLE_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_title",
            format!("`title` must be at most {TITLE_MAX_CHARS} characters"),
        ));
    }
    Ok(title)
}

/// The chat if it exists and belongs to `user`; otherwise not found, never forbidden.
pub async fn owned_chat(store: &Store, user: Uuid, raw_id: &str) -> Result<Chat, ApiError> {
    let id = parse_id(raw_id, "chat")?;
    store
        .owned_chat(user, id)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))
}

#[derive(Deserialize, Default, ToSchema)]
struct NewChat {
    /// At most 200 characters; blank or absent means "New chat".
    title: Option<String>,
}

/// Starts a chat. The body is optional. A user keeps at most `users.max_chats` (1 000).
#[utoipa::path(post,
    path = "/api/chats",
    operation_id = "create_chat", tag = "chats", security(("bearer" = [])),
    request_body(content = Option<NewChat>, description = "Optional"),
    responses(
        (status = 201, description = "Created", body = ChatView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "The user has `users.max_chats` chats already (`quota_exceeded`, limit `max_chats`)", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody), (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    body: Option<AppJson<NewChat>>,
) -> Result<(StatusCode, Json<ChatView>), ApiError> {
    let title = title_of(body.and_then(|AppJson(b)| b.title))?;
    let chat = Chat {
        id: Uuid::now_v7(),
        user_id: user,
        title: if title.is_empty() {
            DEFAULT_TITLE.into()
        } else {
            title
        },
        created_at: now_micros(),
        version: 0,
        current_leaf: None,
        forked: false,
    };
    let max = state.settings.users.max_chats;
    match state.store.create_chat(&chat, max).await? {
        Capped::Created => Ok((StatusCode::CREATED, Json(chat.into()))),
        Capped::Full => Err(ApiError::quota_exceeded("max_chats", max)),
    }
}

/// The user's chats, newest first.
#[utoipa::path(get,
    path = "/api/chats",
    operation_id = "list_chats", tag = "chats", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "One page", body = Page<ChatView>),
        (status = 401, description = "No valid token", body = ErrorBody), (status = 422, description = "A field is invalid", body = ErrorBody), (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Json<Page<ChatView>>, ApiError> {
    let page = state.store.chats_page(user, query.page()?).await?;
    Ok(Json(Page::of(page)))
}

/// One chat of the user's.
#[utoipa::path(get,
    path = "/api/chats/{id}",
    operation_id = "show_chat", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat")),
    responses(
        (status = 200, description = "The chat", body = ChatView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ApiError> {
    Ok(Json(owned_chat(&state.store, user, &id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
struct Rename {
    /// 1 to 200 characters (after trimming).
    title: String,
}

/// Renames one of the user's chats.
#[utoipa::path(patch,
    path = "/api/chats/{id}",
    operation_id = "rename_chat", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat")),
    request_body = Rename,
    responses(
        (status = 200, description = "Renamed", body = ChatView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 422, description = "A blank or too long title (`invalid_title`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn rename(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    AppJson(body): AppJson<Rename>,
) -> Result<Json<ChatView>, ApiError> {
    let id = parse_id(&id, "chat")?;
    let title = title_of(Some(body.title))?;
    if title.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_title",
            "`title` must not be blank",
        ));
    }
    state
        .store
        .rename_chat(user, id, &title)
        .await?
        .map(|chat| Json(chat.into()))
        .ok_or_else(|| ApiError::not_found("chat"))
}

/// Deletes one of the user's chats and every message in it. Replies still on their way are
/// dropped when they arrive.
#[utoipa::path(delete,
    path = "/api/chats/{id}",
    operation_id = "delete_chat", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "chat")?;
    if state.store.delete_chat(user, id).await? {
        tracing::info!(chat = %id, "chat deleted by its user");
        state.stops.chats(&[id]).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("chat"))
    }
}
