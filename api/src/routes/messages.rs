//! Posting a message (user message + pending reply + outbox row in one transaction, then 202)
//! and reading a chat's messages, oldest first, a user message always before its reply.

use super::chats::owned_chat;
use super::views::{Cursor, MessageView, Page, PageQuery, now_micros, paged};
use crate::AppState;
use crate::entities::{messages, prompt_templates};
use crate::error::ApiError;
use crate::extract::{AppJson, AuthUser, parse_id};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, Order, QueryFilter, Statement,
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
    state.limits.admit_message(user).await?;
    let chat_id = parse_id(&chat_id, "chat")?;
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
    let (template_id, system) = match input.template_id {
        Some(raw) => {
            let id = parse_id(&raw, "template")?;
            let template = prompt_templates::Entity::find_by_id(id)
                .filter(prompt_templates::Column::UserId.eq(user))
                .one(&state.db)
                .await?
                .ok_or_else(|| ApiError::not_found("template"))?;
            (Some(id), Some(template.body))
        }
        None => (None, None),
    };
    let mut history = owned_history(&state, user, chat_id).await?;
    history.push(Turn {
        role: Role::User,
        text: input.content.clone(),
    });

    // Both ids come from one process-monotonic UUIDv7 source and share a timestamp, so
    // ordering by (created_at, id) always puts the question before its answer.
    let now = now_micros();
    let question = messages::Model {
        id: Uuid::now_v7(),
        chat_id,
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
        template_id: None,
        pending_since: now,
    };
    let answer = messages::Model {
        id: Uuid::now_v7(),
        role: "assistant".into(),
        content: String::new(),
        status: "pending".into(),
        model: Some(model.clone()),
        completed_at: None,
        template_id,
        ..question.clone()
    };
    let request = RequestEnvelope {
        v: envelope::VERSION,
        request_id: answer.id,
        generation: answer.generation,
        chat_id,
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

    // One statement, so one round trip and one commit: the outbox row and both messages
    // are written together or not at all. (The hot path of the API; see docs/BENCHMARKS.md.)
    state
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH outbox_row AS (INSERT INTO outbox (id, payload, created_at) VALUES ($1, $2, $3)) \
             INSERT INTO messages (id, chat_id, role, content, status, generation, model, attempts, \
             created_at, completed_at, template_id, pending_since) VALUES \
             ($4, $5, 'user', $6, 'completed', 0, NULL, 0, $3, $3, NULL, $3), \
             ($7, $5, 'assistant', '', 'pending', $8, $9, 0, $3, NULL, $10, $3)",
            [
                Uuid::now_v7().into(),
                payload.into(),
                now.into(),
                question.id.into(),
                chat_id.into(),
                question.content.clone().into(),
                answer.id.into(),
                answer.generation.into(),
                answer.model.clone().into(),
                answer.template_id.into(),
            ],
        ))
        .await?;
    state.relay_wake.notify_one();

    Ok((
        StatusCode::ACCEPTED,
        Json(Posted {
            user_message: question.into(),
            assistant_message: answer.into(),
        }),
    ))
}

/// The chat's last completed turns (oldest first), in the same query that proves `user` owns
/// the chat: no row at all means not found; one row of NULLs means no history yet.
async fn owned_history(state: &AppState, user: Uuid, chat: Uuid) -> Result<Vec<Turn>, ApiError> {
    let turns = i64::from(state.settings.chat.history_turns) * 2;
    let rows = state
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT m.role, m.content FROM chats c LEFT JOIN LATERAL ( \
                 SELECT role, content, created_at, id FROM messages \
                 WHERE chat_id = c.id AND status = 'completed' \
                 ORDER BY created_at DESC, id DESC LIMIT $3) m ON true \
             WHERE c.id = $1 AND c.user_id = $2 \
             ORDER BY m.created_at, m.id",
            [chat.into(), user.into(), turns.into()],
        ))
        .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found("chat"));
    }
    let mut history = Vec::with_capacity(rows.len() + 1);
    for row in rows {
        let role: Option<String> = row.try_get("", "role")?;
        let content: Option<String> = row.try_get("", "content")?;
        if let (Some(role), Some(text)) = (role, content) {
            history.push(Turn {
                role: if role == "assistant" {
                    Role::Assistant
                } else {
                    Role::User
                },
                text,
            });
        }
    }
    Ok(history)
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<MessageView>>, ApiError> {
    let (limit, cursor) = (query.limit()?, query.cursor()?);
    let chat = owned_chat(&state.db, user, &chat_id).await?;
    let (rows, next) = paged(
        &state.db,
        messages::Entity::find().filter(messages::Column::ChatId.eq(chat.id)),
        (messages::Column::CreatedAt, messages::Column::Id),
        Order::Asc,
        cursor,
        limit,
        |m| Cursor {
            created_at: m.created_at,
            id: m.id,
        },
    )
    .await?;
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
