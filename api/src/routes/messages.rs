//! Posting a message (user message + pending reply + outbox row in one transaction, then 202)
//! and reading a chat's messages, oldest first, a user message always before its reply.

use super::chats::{owned_chat, page_end};
use super::views::{Cursor, MessageView, Page, PageQuery, now_micros};
use crate::AppState;
use crate::entities::{messages, outbox, prompt_templates};
use crate::error::ApiError;
use crate::extract::{AppJson, AuthUser, parse_id};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sluice_shared::envelope::{self, Params, RequestEnvelope, Role, Turn};
use sluice_shared::settings::is_model_name;
use uuid::Uuid;

pub const CONTENT_MAX_CHARS: usize = 32_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chats/{id}/messages", get(list).post(create))
        .route("/api/chats/{id}/messages/{message_id}", get(show))
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
    template_id: Option<String>,
    model: Option<String>,
}

#[derive(Serialize)]
struct Posted {
    user_message: MessageView,
    assistant_message: MessageView,
}

fn validate_content(content: &str) -> Result<(), ApiError> {
    let chars = content.chars().count();
    if chars == 0 || content.trim().is_empty() || chars > CONTENT_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_content",
            format!("`content` must be 1 to {CONTENT_MAX_CHARS} characters and not blank"),
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    AppJson(input): AppJson<NewMessage>,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let chat = owned_chat(&state.db, user, &chat_id).await?;
    validate_content(&input.content)?;
    let model = match input.model {
        Some(m) if !is_model_name(&m) => {
            return Err(ApiError::unprocessable(
                "invalid_model",
                "`model` may hold letters, digits, '.', '-' and '_' only",
            ));
        }
        Some(m) => m,
        None => state.settings.provider.model.clone(),
    };
    let system = match input.template_id {
        Some(raw) => {
            let id = parse_id(&raw, "template")?;
            let template = prompt_templates::Entity::find_by_id(id)
                .filter(prompt_templates::Column::UserId.eq(user))
                .one(&state.db)
                .await?
                .ok_or_else(|| ApiError::not_found("template"))?;
            Some(template.body)
        }
        None => None,
    };

    // The chat's last completed turns, newest first from the index, then put back in order.
    let turns = u64::from(state.settings.chat.history_turns) * 2;
    let mut earlier = messages::Entity::find()
        .filter(messages::Column::ChatId.eq(chat.id))
        .filter(messages::Column::Status.eq("completed"))
        .order_by_desc(messages::Column::CreatedAt)
        .order_by_desc(messages::Column::Id)
        .limit(turns)
        .all(&state.db)
        .await?;
    earlier.reverse();
    let mut history: Vec<Turn> = earlier
        .into_iter()
        .map(|m| Turn {
            role: if m.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            },
            text: m.content,
        })
        .collect();
    history.push(Turn {
        role: Role::User,
        text: input.content.clone(),
    });

    // Both ids come from one process-monotonic UUIDv7 source and share a timestamp, so
    // ordering by (created_at, id) always puts the question before its answer.
    let now = now_micros();
    let question = messages::Model {
        id: Uuid::now_v7(),
        chat_id: chat.id,
        role: "user".into(),
        content: input.content,
        status: "completed".into(),
        generation: 0,
        model: None,
        prompt_tokens: None,
        completion_tokens: None,
        key_alias: None,
        attempts: 0,
        error_kind: None,
        error_message: None,
        created_at: now,
        completed_at: Some(now),
    };
    let answer = messages::Model {
        id: Uuid::now_v7(),
        role: "assistant".into(),
        content: String::new(),
        status: "pending".into(),
        model: Some(model.clone()),
        completed_at: None,
        ..question.clone()
    };
    let request = RequestEnvelope {
        v: envelope::VERSION,
        request_id: answer.id,
        generation: answer.generation,
        chat_id: chat.id,
        user_id: user,
        model,
        system,
        history,
        params: Params::default(),
        enqueued_at: now,
        trace_id: Uuid::new_v4().simple().to_string(),
    };
    let payload = serde_json::to_value(&request)
        .map_err(|e| ApiError::Internal(format!("encode envelope: {e}")))?;

    let txn = state.db.begin().await?;
    messages::Entity::insert_many([active(&question), active(&answer)])
        .exec_without_returning(&txn)
        .await?;
    outbox::Entity::insert(outbox::ActiveModel {
        id: Set(Uuid::now_v7()),
        payload: Set(payload),
        created_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    state.relay_wake.notify_one();

    Ok((
        StatusCode::ACCEPTED,
        Json(Posted {
            user_message: question.into(),
            assistant_message: answer.into(),
        }),
    ))
}

fn active(m: &messages::Model) -> messages::ActiveModel {
    messages::ActiveModel {
        id: Set(m.id),
        chat_id: Set(m.chat_id),
        role: Set(m.role.clone()),
        content: Set(m.content.clone()),
        status: Set(m.status.clone()),
        generation: Set(m.generation),
        model: Set(m.model.clone()),
        prompt_tokens: Set(m.prompt_tokens),
        completion_tokens: Set(m.completion_tokens),
        key_alias: Set(m.key_alias.clone()),
        attempts: Set(m.attempts),
        error_kind: Set(m.error_kind.clone()),
        error_message: Set(m.error_message.clone()),
        created_at: Set(m.created_at),
        completed_at: Set(m.completed_at),
    }
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<MessageView>>, ApiError> {
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    let chat = owned_chat(&state.db, user, &chat_id).await?;
    let mut select = messages::Entity::find().filter(messages::Column::ChatId.eq(chat.id));
    if let Some(c) = cursor {
        select = select.filter(
            Condition::any()
                .add(messages::Column::CreatedAt.gt(c.created_at))
                .add(
                    Condition::all()
                        .add(messages::Column::CreatedAt.eq(c.created_at))
                        .add(messages::Column::Id.gt(c.id)),
                ),
        );
    }
    let mut rows = select
        .order_by_asc(messages::Column::CreatedAt)
        .order_by_asc(messages::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let next = page_end(&mut rows, limit, |m| Cursor {
        created_at: m.created_at,
        id: m.id,
    });
    Ok(Json(Page {
        items: rows.into_iter().map(MessageView::from).collect(),
        next,
    }))
}

async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((chat_id, message_id)): Path<(String, String)>,
) -> Result<Json<MessageView>, ApiError> {
    let chat = owned_chat(&state.db, user, &chat_id).await?;
    let id = parse_id(&message_id, "message")?;
    let message = messages::Entity::find_by_id(id)
        .filter(messages::Column::ChatId.eq(chat.id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(Json(message.into()))
}
