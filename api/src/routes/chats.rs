//! `POST /api/chats`, `GET /api/chats` (newest first, paged) and `GET /api/chats/{id}`.

use super::views::{ChatView, Cursor, Page, PageQuery, now_micros};
use crate::AppState;
use crate::entities::chats;
use crate::error::ApiError;
use crate::extract::{AppJson, AuthUser, parse_id};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
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
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<ChatView>>, ApiError> {
    let limit = query.limit()?;
    let mut select = chats::Entity::find().filter(chats::Column::UserId.eq(user));
    if let Some(c) = query.cursor()? {
        select = select.filter(
            Condition::any()
                .add(chats::Column::CreatedAt.lt(c.created_at))
                .add(
                    Condition::all()
                        .add(chats::Column::CreatedAt.eq(c.created_at))
                        .add(chats::Column::Id.lt(c.id)),
                ),
        );
    }
    let mut rows = select
        .order_by_desc(chats::Column::CreatedAt)
        .order_by_desc(chats::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let next = page_end(&mut rows, limit, |c| Cursor {
        created_at: c.created_at,
        id: c.id,
    });
    Ok(Json(Page {
        items: rows.into_iter().map(ChatView::from).collect(),
        next,
    }))
}

/// Trims the one extra row fetched to learn whether another page exists.
pub fn page_end<T>(rows: &mut Vec<T>, limit: u64, cursor: impl Fn(&T) -> Cursor) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| cursor(r).encode())
    } else {
        None
    }
}

async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<ChatView>, ApiError> {
    Ok(Json(owned_chat(&state.db, user, &id).await?.into()))
}
