//! What a user may do to a reply: retry a `failed` one (a new generation, through the same
//! restart as an operator's replay) or stop a `pending` one (failed, kind `cancelled`; a late
//! answer then changes nothing). Both count against the user's message limits, and both mark
//! the generations left behind as stopped, so workers do not send them (or cut them short).

use super::chats::owned_chat;
use super::messages::unknown_model;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AuthUser, parse_id};
use crate::http::idempotency::{IdempotencyKey, Keyed, accepted};
use crate::messaging::request::{self, Question};
use crate::store::Message;
use crate::store::idempotency::IdempotencyRecord;
use crate::store::replies::{Cancel, Restart, RestartOf, SkipReason};
use crate::store::{Role, Status};
use crate::views::MessageView;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sluice_shared::catalogue::Catalogue;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(retry))
        .routes(routes!(cancel))
}

/// The chat's assistant message `message_id`, after proving the chat is the user's.
async fn reply_of(
    state: &AppState,
    user: Uuid,
    chat_id: &str,
    message_id: &str,
) -> Result<Message, ApiError> {
    let chat = owned_chat(&state.store, user, chat_id).await?;
    let id = parse_id(message_id, "message")?;
    state
        .store
        .message(chat.id, id)
        .await?
        .filter(|m| m.role == Role::Assistant)
        .ok_or_else(|| ApiError::not_found("message"))
}

/// The answer to a retry or a stop that changed nothing: the one place a [`SkipReason`] becomes
/// an HTTP error. Every reason is named, so a new one must be given its answer here.
fn skipped(reason: SkipReason, catalogue: &Catalogue) -> ApiError {
    let conflict = |code, message| ApiError::new(StatusCode::CONFLICT, code, message);
    match reason {
        SkipReason::MessageNotFailed => {
            conflict("message_not_failed", "only a failed reply can be retried")
        }
        SkipReason::MessageNotPending => {
            conflict("message_not_pending", "only a pending reply can be stopped")
        }
        SkipReason::UnknownModel => unknown_model(catalogue),
        SkipReason::MessageTooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            "with the chat's history the request would now be too large",
        ),
        SkipReason::ChatNotFound => ApiError::not_found("chat"),
        // Dead-letter reasons cannot arise from a user's retry; the rest look like a reply
        // that is not there, as before.
        SkipReason::MessageNotFound
        | SkipReason::NotFound
        | SkipReason::AlreadyReplayed
        | SkipReason::PoisonCannotBeReplayed
        | SkipReason::QuestionNotFound
        | SkipReason::CannotEncode => ApiError::not_found("message"),
    }
}

/// The message as the API shows it, as JSON text (a plain struct: serialising cannot fail).
fn view_json(message: Message) -> String {
    serde_json::to_string(&MessageView::from(message)).unwrap_or_default()
}

/// Asks again for a `failed` reply: it goes back to `pending` at the next generation and its
/// request is rebuilt from the chat as it is now.
#[utoipa::path(post,
    path = "/api/chats/{id}/messages/{message_id}/retry",
    operation_id = "retry_reply", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The failed assistant message"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a repeat within 24 h answers the first 202 body and retries nothing"),
    ),
    responses(
        (status = 202, description = "Accepted; the reply is pending again", body = MessageView),
        (status = 400, description = "A malformed `Idempotency-Key` (`invalid_idempotency_key`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found` (also for a user message)", body = ErrorBody),
        (status = 409, description = "The reply is not `failed` (`message_not_failed`), or a request with this `Idempotency-Key` is still being processed (`idempotency_key_in_use`)", body = ErrorBody),
        (status = 413, description = "With its history the request is now too large (`message_too_large`)", body = ErrorBody),
        (status = 422, description = "Its model is no longer offered (`unknown_model`), or the `Idempotency-Key` came with a different request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn retry(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path((chat_id, message_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // Hashed by the ids they name, however they were spelt.
    let ids = (
        parse_id(&chat_id, "chat")?,
        parse_id(&message_id, "message")?,
    );
    let keyed = Keyed::new(user, key, &("retry_reply", ids));
    // A repeat gets the first answer, though the reply is no longer `failed`.
    if let Some(keyed) = &keyed
        && let Some(first) = keyed.replay(&state).await?
    {
        return Ok(first);
    }
    let reply = reply_of(&state, user, &chat_id, &message_id).await?;
    if reply.status != Status::Failed {
        return Err(skipped(SkipReason::MessageNotFailed, &state.catalogue));
    }
    // Spent only by a retry that would otherwise go ahead.
    state.limits.admit_message(user).await?;
    let limit = request::history_limit(&state.settings, &Question::Stored);
    let of = RestartOf::Reply {
        chat_id: reply.chat_id,
        reply_id: reply.id,
    };
    let settings = &state.settings;
    // The answer is the reopened reply, stored by the transaction that reopens it.
    let record = keyed
        .as_ref()
        .map(|k| move |reply: &Message| k.record(view_json(reply.clone())));
    let restarted = state
        .store
        .restart_remembered(
            of,
            limit,
            |r| request::rebuild(settings, &state.catalogue, r),
            record
                .as_ref()
                .map(|f| f as &(dyn Fn(&Message) -> IdempotencyRecord + Sync)),
        )
        .await;
    match restarted {
        Ok(Restart::Done { reply, request }) => {
            tracing::info!(request = %reply.id, generation = reply.generation, "reply retried by its user");
            // An earlier generation may still wait on the retry ladder: it is not wanted.
            state
                .stops
                .generations_below(reply.id, reply.generation)
                .await;
            state.handoff.hand_over(vec![request]);
            Ok(accepted(view_json(*reply)))
        }
        // E.g. another retry (or a replay) took it first: `message_not_failed`.
        Ok(Restart::Skipped(reason)) => Err(skipped(reason, &state.catalogue)),
        // A concurrent repeat with the same key committed first.
        Err(e) if e.is_unique_violation() => match &keyed {
            Some(keyed) => keyed.lost_race(&state).await,
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Stops a `pending` reply: it becomes `failed`, kind `cancelled`, and an answer arriving
/// later changes nothing.
#[utoipa::path(post,
    path = "/api/chats/{id}/messages/{message_id}/cancel",
    operation_id = "cancel_reply", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The pending assistant message"),
    ),
    responses(
        (status = 200, description = "Stopped", body = MessageView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found` (also for a user message)", body = ErrorBody),
        (status = 409, description = "The reply is not `pending` any more (`message_not_pending`)", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((chat_id, message_id)): Path<(String, String)>,
) -> Result<Json<MessageView>, ApiError> {
    let reply = reply_of(&state, user, &chat_id, &message_id).await?;
    if reply.status != Status::Pending {
        return Err(skipped(SkipReason::MessageNotPending, &state.catalogue));
    }
    state.limits.admit_action(user).await?;
    let stopped = match state.store.cancel_reply(reply.chat_id, reply.id).await? {
        Cancel::Done(stopped) => stopped,
        // The answer (or another stop) arrived between the read and the update.
        Cancel::Skipped(reason) => return Err(skipped(reason, &state.catalogue)),
    };
    tracing::info!(request = %stopped.id, generation = stopped.generation, "reply stopped by its user");
    state
        .stops
        .generations_below(stopped.id, stopped.generation.saturating_add(1))
        .await;
    Ok(Json(MessageView::from(*stopped)))
}
