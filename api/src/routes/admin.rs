//! Operators' endpoints (admin token): list dead letters and replay them.

use super::views::{Cursor, Page, PageQuery, paged};
use crate::AppState;
use crate::entities::{dead_letters, prompt_templates};
use crate::error::ApiError;
use crate::extract::{Admin, AppJson, AppQuery};
use crate::request::{self, Ask, BuildError, Question};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// At most this many dead letters are replayed by one call without `ids`.
const REPLAY_ALL_MAX: u64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/dlq", get(list))
        .route("/api/admin/dlq/replay", post(replay))
}

#[derive(Debug, Serialize)]
struct DeadLetterView {
    id: Uuid,
    request_id: Option<Uuid>,
    generation: Option<i32>,
    chat_id: Option<Uuid>,
    reason: String,
    attempts: i32,
    last_error: Option<String>,
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

impl From<dead_letters::Model> for DeadLetterView {
    fn from(m: dead_letters::Model) -> Self {
        Self {
            id: m.id,
            request_id: m.request_id,
            generation: m.generation,
            chat_id: m.chat_id,
            reason: m.reason,
            attempts: m.attempts,
            last_error: m.last_error,
            headers: m.headers,
            created_at: m.created_at,
            replayed_at: m.replayed_at,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DlqQuery {
    after: Option<String>,
    limit: Option<String>,
    reason: Option<String>,
    chat_id: Option<String>,
    request_id: Option<String>,
    replayed: Option<String>,
}

fn uuid_filter(raw: &Option<String>, name: &str) -> Result<Option<Uuid>, ApiError> {
    raw.as_deref()
        .map(|r| {
            Uuid::parse_str(r).map_err(|_| {
                ApiError::unprocessable("invalid_filter", format!("`{name}` must be a UUID"))
            })
        })
        .transpose()
}

/// Oldest first, paged like messages; filter by reason, chat, request or replay state.
async fn list(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<DlqQuery>,
) -> Result<Json<Page<DeadLetterView>>, ApiError> {
    // Taken apart by hand: serde's `flatten` turns every query value into a string.
    let page = PageQuery {
        after: query.after.clone(),
        limit: query.limit.clone(),
    };
    let limit = page.limit()?;
    let mut select = dead_letters::Entity::find();
    if let Some(reason) = &query.reason {
        select = select.filter(dead_letters::Column::Reason.eq(reason.as_str()));
    }
    if let Some(chat) = uuid_filter(&query.chat_id, "chat_id")? {
        select = select.filter(dead_letters::Column::ChatId.eq(chat));
    }
    if let Some(request) = uuid_filter(&query.request_id, "request_id")? {
        select = select.filter(dead_letters::Column::RequestId.eq(request));
    }
    match query.replayed.as_deref() {
        Some("true") => select = select.filter(dead_letters::Column::ReplayedAt.is_not_null()),
        Some("false") => select = select.filter(dead_letters::Column::ReplayedAt.is_null()),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_filter",
                "`replayed` must be true or false",
            ));
        }
        None => {}
    }
    let (rows, next) = paged(
        &state.db,
        select,
        (dead_letters::Column::CreatedAt, dead_letters::Column::Id),
        Order::Asc,
        page.cursor()?,
        limit,
        |d| Cursor {
            created_at: d.created_at,
            id: d.id,
        },
    )
    .await?;
    Ok(Json(Page {
        items: rows.into_iter().map(DeadLetterView::from).collect(),
        next,
    }))
}

#[derive(Debug, Default, Deserialize)]
struct ReplayRequest {
    ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    id: Uuid,
    reason: &'static str,
}

#[derive(Debug, Serialize)]
struct ReplayReport {
    replayed: Vec<Uuid>,
    skipped: Vec<Skipped>,
}

/// Sends dead letters back through the outbox: the reply goes back to `pending` with
/// `generation + 1` (so a late answer of the old generation changes nothing) and the attempt
/// count starts again. Without `ids`, every dead letter not yet replayed.
async fn replay(
    State(state): State<AppState>,
    _: Admin,
    body: Option<AppJson<ReplayRequest>>,
) -> Result<Json<ReplayReport>, ApiError> {
    let ids = match body.and_then(|AppJson(b)| b.ids) {
        Some(ids) => ids,
        None => dead_letters::Entity::find()
            .filter(dead_letters::Column::ReplayedAt.is_null())
            .filter(dead_letters::Column::RequestId.is_not_null())
            .order_by_asc(dead_letters::Column::CreatedAt)
            .limit(REPLAY_ALL_MAX)
            .all(&state.db)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect(),
    };
    let mut report = ReplayReport {
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    for id in ids {
        match replay_one(&state, id).await? {
            None => report.replayed.push(id),
            Some(reason) => report.skipped.push(Skipped { id, reason }),
        }
    }
    if !report.replayed.is_empty() {
        state.relay_wake.notify_one();
    }
    Ok(Json(report))
}

/// Replays one dead letter in one transaction; `Some(reason)` when it was skipped. The request
/// is rebuilt from the database (history, template, model, owner), never from the stored
/// body, which came back from the broker and is only kept for inspection.
async fn replay_one(state: &AppState, id: Uuid) -> Result<Option<&'static str>, ApiError> {
    let txn = state.db.begin().await?;
    let Some(letter) = dead_letters::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&txn)
        .await?
    else {
        return Ok(Some("not_found"));
    };
    if letter.replayed_at.is_some() {
        return Ok(Some("already_replayed"));
    }
    let Some(request_id) = letter.request_id else {
        return Ok(Some("poison_cannot_be_replayed"));
    };
    // Dropping `txn` without a commit (any skip below) undoes this.
    let bumped = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE messages SET status = 'pending', generation = generation + 1, content = '', \
             error_kind = NULL, error_message = NULL, attempts = 0, prompt_tokens = NULL, \
             completion_tokens = NULL, key_alias = NULL, completed_at = NULL, \
             pending_since = now() \
             WHERE id = $1 AND role = 'assistant' AND status = 'failed' \
             RETURNING chat_id, generation, created_at, model, template_id",
            [request_id.into()],
        ))
        .await?;
    let Some(row) = bumped else {
        return Ok(Some("message_not_failed"));
    };
    let chat_id: Uuid = row.try_get("", "chat_id")?;
    let generation: i32 = row.try_get("", "generation")?;
    let created_at: DateTime<Utc> = row.try_get("", "created_at")?;
    let model = row
        .try_get::<Option<String>>("", "model")?
        .unwrap_or_else(|| state.settings.provider.model.clone());
    let template_id: Option<Uuid> = row.try_get("", "template_id")?;
    if !state.settings.allowed_model(&model) {
        return Ok(Some("unknown_model"));
    }
    // The template's current body; a deleted one (template_id set to NULL) means none.
    let system = match template_id {
        Some(template) => prompt_templates::Entity::find_by_id(template)
            .one(&txn)
            .await?
            .map(|t| t.body),
        None => None,
    };
    let ask = Ask {
        chat_id,
        owner: None,
        request_id,
        generation,
        model,
        system,
        question: Question::Stored {
            reply_created_at: created_at,
            reply_id: request_id,
        },
        enqueued_at: super::views::now_micros(),
    };
    let payload = match request::build(&txn, &state.settings, ask).await {
        Ok(built) => built.payload,
        Err(BuildError::ChatNotFound) => return Ok(Some("chat_not_found")),
        Err(BuildError::NoQuestion) => return Ok(Some("question_not_found")),
        Err(BuildError::TooLarge { .. }) => return Ok(Some("message_too_large")),
        Err(BuildError::Database(e)) => return Err(e.into()),
        Err(e @ BuildError::Encode(_)) => return Err(ApiError::Internal(e.to_string())),
    };
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO outbox (id, payload, created_at) VALUES ($1, $2, now())",
        [Uuid::now_v7().into(), payload.into()],
    ))
    .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
        [id.into()],
    ))
    .await?;
    txn.commit().await?;
    tracing::info!(dead_letter = %id, request = %request_id, generation, "replayed");
    Ok(None)
}
