//! `POST /api/chats`, `GET /api/chats` (newest first, paged) and `GET /api/chats/{id}`.

use super::views::{ChatView, Cursor, Page, PageQuery, now_micros, paged};
use crate::AppState;
use crate::entities::chats;
use crate::error::ApiError;
use crate::extract::{AppJson, AppQuery, AuthUser, parse_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, Order, QueryFilter};
use serde::Deserialize;
use uuid::Uuid;

pub const TITLE_MAX_CHARS: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chats", get(list).post(create))
        .route("/api/chats/{id}", get(show))
}

/// The chat if it exists and belongs to `user`; otherwise not found, never forbidden.
pub async fn owned_chat(
    db: &DatabaseConnection,
    user: Uuid,
    raw_id: &str,
) -> Result<chats::Model, ApiError> {
    let id = parse_id(raw_id, "chat")?;
    chats::Entity::find_by_id(id)
        .filter(chats::Column::UserId.eq(user))
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))
}

#[derive(Deserialize, Default)]
struct NewChat {
    title: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    body: Option<AppJson<NewChat>>,
) -> Result<(StatusCode, Json<ChatView>), ApiError> {
    let title = body
        .and_then(|AppJson(b)| b.title)
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    if title.chars().count() > TITLE_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_title",
            format!("`title` must be at most {TITLE_MAX_CHARS} characters"),
        ));
    }
    let chat = chats::Model {
        id: Uuid::now_v7(),
        user_id: user,
        title: if title.is_empty() {
            "New chat".into()
        } else {
            title
        },
        created_at: now_micros(),
    };
    chats::Entity::insert(chats::ActiveModel {
        id: Set(chat.id),
        user_id: Set(chat.user_id),
        title: Set(chat.title.clone()),
        created_at: Set(chat.created_at),
    })
    .exec_without_returning(&state.db)
    .await?;
    Ok((StatusCode::CREATED, Json(chat.into())))
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Json<Page<ChatView>>, ApiError> {
    let (rows, next) = paged(
        &state.db,
        chats::Entity::find().filter(chats::Column::UserId.eq(user)),
        (chats::Column::CreatedAt, chats::Column::Id),
        Order::Desc,
        query.cursor()?,
        query.limit()?,
        |c| Cursor {
            created_at: c.created_at,
            id: c.id,
        },
    )
    .await?;
    Ok(Json(Page {
        items: rows.into_iter().map(ChatView::from).collect(),
        next,
    }))
}

async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ApiError> {
    Ok(Json(owned_chat(&state.db, user, &id).await?.into()))
}
