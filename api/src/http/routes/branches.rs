//! Branching a chat: edit a question or ask for another answer (each a new branch beside the
//! old one, built and limited like a post), switch the branch a chat shows, and delete a
//! message with everything below it.

use super::chats::owned_chat;
use super::messages::{NewMessage, Posted, chosen_model, new_exchange, request_for, unknown_model};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AuthUser, parse_id};
use crate::http::idempotency::{IdempotencyKey, Keyed, accepted};
use crate::messaging::request::{Ask, Question};
use crate::store::branches::{Branched, NewBranch};
use crate::store::messages::HistoryEnd;
use crate::store::posts::another_answer;
use crate::store::{Message, Role, Status};
use crate::views::MessageView;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(edit))
        .routes(routes!(regenerate))
        .routes(routes!(switch))
}

/// The chat's message `message_id` of `role`, after proving the chat is the user's.
async fn message_of(
    state: &AppState,
    user: Uuid,
    (chat_id, message_id): (Uuid, Uuid),
    role: Role,
) -> Result<Message, ApiError> {
    if state.store.owned_chat(user, chat_id).await?.is_none() {
        return Err(ApiError::not_found("chat"));
    }
    state
        .store
        .message(chat_id, message_id)
        .await?
        .filter(|m| m.role == role)
        .ok_or_else(|| ApiError::not_found("message"))
}

fn reply_in_flight() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "reply_in_flight",
        "a reply of this chat is still pending: wait for it or stop it first",
    )
}

/// 409 before anything is spent when a reply of the chat is pending (the store checks again
/// under the chat's lock).
async fn idle(state: &AppState, chat: Uuid) -> Result<(), ApiError> {
    if state.store.pending_in_chat(chat).await?.is_empty() {
        Ok(())
    } else {
        Err(reply_in_flight())
    }
}

/// Writes the branch and hands its request over; `body` is the 202's.
async fn commit(
    state: &AppState,
    branch: NewBranch,
    keyed: Option<&Keyed>,
    body: String,
) -> Result<Response, ApiError> {
    match state.store.branch_off(&branch).await {
        Ok(Branched::Done) => {
            state.handoff.hand_over(vec![branch.request]);
            Ok(accepted(body))
        }
        Ok(Branched::ReplyInFlight) => Err(reply_in_flight()),
        Ok(Branched::MessageNotFound) => Err(ApiError::not_found("message")),
        // A concurrent repeat with the same key committed first.
        Err(e) if e.is_unique_violation() => match keyed {
            Some(keyed) => keyed.lost_race(state).await,
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Edits a question: a new user message of `content` beside it (same parent) and a pending
/// reply to it, on a new branch the chat now shows. The old branch stays, one of the new
/// question's `siblings`. The history sent is the branch above the edited message.
#[utoipa::path(post,
    path = "/api/chats/{id}/messages/{message_id}/edit",
    operation_id = "edit_message", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The user message to edit"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a repeat within 24 h answers the first 202 body and edits nothing"),
    ),
    request_body = NewMessage,
    responses(
        (status = 202, description = "Accepted; the new reply is pending", body = Posted),
        (status = 400, description = "A malformed `Idempotency-Key` (`invalid_idempotency_key`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found`, `message_not_found` (also for a reply) or `template_not_found`", body = ErrorBody),
        (status = 409, description = "A reply of the chat is still pending (`reply_in_flight`), or a request with this `Idempotency-Key` is still being processed", body = ErrorBody),
        (status = 413, description = "With its history and template the request is too large (`message_too_large`)", body = ErrorBody),
        (status = 422, description = "`invalid_content`, `invalid_model`, `unknown_model`, or `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable, or the server is busy", body = ErrorBody),
    ))]
async fn edit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path((chat_id, message_id)): Path<(String, String)>,
    AppJson(input): AppJson<NewMessage>,
) -> Result<Response, ApiError> {
    let ids = (
        parse_id(&chat_id, "chat")?,
        parse_id(&message_id, "message")?,
    );
    let keyed = Keyed::new(
        user,
        key,
        &(
            "edit_message",
            ids,
            &input.content,
            &input.template_id,
            &input.model,
        ),
    );
    if let Some(keyed) = &keyed
        && let Some(first) = keyed.replay(&state).await?
    {
        return Ok(first);
    }
    let edited = message_of(&state, user, ids, Role::User).await?;
    idle(&state, edited.chat_id).await?;
    let (question, reply, request, body) = new_exchange(
        &state,
        user,
        edited.chat_id,
        input,
        edited.parent_id,
        HistoryEnd::Above(edited.id),
    )
    .await?;
    let branch = NewBranch {
        beside: edited.id,
        messages: vec![question, reply],
        request,
        idempotency: keyed.as_ref().map(|k| k.record(body.clone())),
    };
    commit(&state, branch, keyed.as_ref(), body).await
}

#[derive(Deserialize, Default, ToSchema)]
struct AnswerAgain {
    /// One of the configured models; the one the reply asked for when absent.
    model: Option<String>,
}

/// Asks again for an answer to the question of a completed or failed reply: a new pending
/// reply beside it, on a new branch the chat now shows, with the reply's template and (unless
/// another is named) its model.
#[utoipa::path(post,
    path = "/api/chats/{id}/messages/{message_id}/regenerate",
    operation_id = "regenerate_reply", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The assistant message to answer again"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a repeat within 24 h answers the first 202 body and asks nothing"),
    ),
    request_body(content = Option<AnswerAgain>, description = "Optional"),
    responses(
        (status = 202, description = "Accepted; the new reply is pending", body = MessageView),
        (status = 400, description = "A malformed `Idempotency-Key` (`invalid_idempotency_key`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found` (also for a user message)", body = ErrorBody),
        (status = 409, description = "A reply of the chat is still pending (`reply_in_flight`), or a request with this `Idempotency-Key` is still being processed", body = ErrorBody),
        (status = 413, description = "With its history the request is too large (`message_too_large`)", body = ErrorBody),
        (status = 422, description = "`invalid_model`, `unknown_model`, or `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable, or the server is busy", body = ErrorBody),
    ))]
async fn regenerate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path((chat_id, message_id)): Path<(String, String)>,
    body: Option<AppJson<AnswerAgain>>,
) -> Result<Response, ApiError> {
    let ids = (
        parse_id(&chat_id, "chat")?,
        parse_id(&message_id, "message")?,
    );
    let input = body.map(|AppJson(b)| b).unwrap_or_default();
    let keyed = Keyed::new(user, key, &("regenerate_reply", ids, &input.model));
    if let Some(keyed) = &keyed
        && let Some(first) = keyed.replay(&state).await?
    {
        return Ok(first);
    }
    let old = message_of(&state, user, ids, Role::Assistant).await?;
    if old.status == Status::Pending {
        return Err(reply_in_flight());
    }
    let question = match old.parent_id {
        Some(parent) => state.store.message(old.chat_id, parent).await?,
        None => None,
    }
    .filter(|q| q.role == Role::User)
    .ok_or_else(|| ApiError::not_found("message"))?;
    let model = match input.model {
        Some(asked) => chosen_model(&state.catalogue, Some(asked))?,
        None => old
            .requested_model
            .clone()
            .or_else(|| old.model.clone())
            .filter(|m| state.catalogue.contains(m))
            .ok_or_else(|| unknown_model(&state.catalogue))?,
    };
    // The reply's template as it reads now; a deleted one means none.
    let template = match old.template_id {
        Some(id) => state.store.owned_template(user, id).await?,
        None => None,
    };
    idle(&state, old.chat_id).await?;

    let reply = another_answer(&question, model.clone(), template.as_ref().map(|t| t.id));
    let ask = Ask {
        chat_id: reply.chat_id,
        request_id: reply.id,
        generation: reply.generation,
        model,
        system: template.map(|t| t.body),
        question: Question::Stored,
        enqueued_at: reply.created_at,
    };
    let request = request_for(&state, user, ask, HistoryEnd::Above(old.id)).await?;
    state.limits.admit_message(user).await?;
    let body = serde_json::to_string(&MessageView::from(reply.clone()))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let branch = NewBranch {
        beside: old.id,
        messages: vec![reply],
        request,
        idempotency: keyed.as_ref().map(|k| k.record(body.clone())),
    };
    commit(&state, branch, keyed.as_ref(), body).await
}

#[derive(Deserialize, ToSchema)]
struct BranchTo {
    /// A message of the branch to show: the chat then shows the newest branch through it.
    #[schema(value_type = Uuid)]
    message_id: String,
}

#[derive(Serialize, ToSchema)]
struct Shown {
    chat_id: Uuid,
    /// The newest message of the branch the chat now shows.
    current_leaf: Uuid,
}

/// Switches the branch the chat shows to the one through `message_id` (at each fork below it,
/// the newest branch). The chat's messages then list that branch.
#[utoipa::path(post,
    path = "/api/chats/{id}/branch",
    operation_id = "switch_branch", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat")),
    request_body = BranchTo,
    responses(
        (status = 200, description = "The chat now shows that branch", body = Shown),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found`", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn switch(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    AppJson(input): AppJson<BranchTo>,
) -> Result<Json<Shown>, ApiError> {
    let chat = owned_chat(&state.store, user, &chat_id).await?;
    let message = parse_id(&input.message_id, "message")?;
    state.limits.admit_action(user).await?;
    let leaf = state
        .store
        .switch_branch(chat.id, message)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(Json(Shown {
        chat_id: chat.id,
        current_leaf: leaf,
    }))
}
