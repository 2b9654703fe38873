//! Posting a message (user message + pending reply + outbox row in one transaction, then 202)
//! and reading a chat's messages, oldest first, a user message always before its reply.

use super::chats::owned_chat;
use super::views::{Cursor, MessageView, Page, PageQuery, now_micros, paged};
use crate::AppState;
use crate::entities::{messages, prompt_templates};
use crate::error::ApiError;
use crate::extract::{AppJson, AppQuery, AuthUser, parse_id};
use crate::request::{self, Ask, BuildError, Question};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, Order, QueryFilter, Statement,
};
use serde::{Deserialize, Serialize};
use sluice_shared::Settings;
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
    // Budgets are keyed by model, so only the configured ones may be asked for.
    if !state.settings.allowed_model(&model) {
        return Err(unknown_model(&state.settings));
    }
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
    let ask = Ask {
        chat_id,
        owner: Some(user),
        request_id: answer.id,
        generation: answer.generation,
        model,
        system,
        question: Question::New(question.content.clone()),
        enqueued_at: now,
    };
    let payload = match request::build(&state.db, &state.settings, ask).await {
        Ok(built) => built.payload,
        Err(BuildError::ChatNotFound) => return Err(ApiError::not_found("chat")),
        Err(BuildError::TooLarge { size, max }) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_large",
                format!(
                    "with its template and history the request would be {size} bytes; \
                     at most {max} are allowed"
                ),
            ));
        }
        Err(BuildError::Database(e)) => return Err(e.into()),
        Err(e @ (BuildError::NoQuestion | BuildError::Encode(_))) => {
            return Err(ApiError::Internal(e.to_string()));
        }
    };
    // Limits are spent only by a post that would otherwise be accepted: a 404 or a 422
    // costs the user nothing.
    state.limits.admit_message(user).await?;

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

/// 422 naming every model users may ask for.
pub(crate) fn unknown_model(settings: &Settings) -> ApiError {
    let mut allowed = vec![settings.provider.model.as_str()];
    allowed.extend(
        settings
            .provider
            .models
            .iter()
            .map(String::as_str)
            .filter(|m| *m != settings.provider.model),
    );
    ApiError::unprocessable(
        "unknown_model",
        format!("`model` must be one of: {}", allowed.join(", ")),
    )
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    AppQuery(query): AppQuery<PageQuery>,
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
