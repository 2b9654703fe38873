//! Posting a message (user message, pending reply and outbox row, committed by the store's
//! group-commit writer, then 202) and reading a chat's messages, oldest first, a user message
//! always before its reply. Reads carry an `ETag` built from the chat's version, so a poll of
//! an unchanged chat is a `304` that reads no message row.

use super::chats::owned_chat;
use super::paging::PageQuery;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AppQuery, AuthUser, parse_id};
use crate::http::idempotency::{IdempotencyKey, Keyed, accepted};
use crate::messaging::request::{self, Ask, BuildError, Question};
use crate::store::messages::HistoryEnd;
use crate::store::outbox::OutboxRow;
use crate::store::posts::{NewPost, PostError, exchange};
use crate::store::{Chat, Message, Status};
use crate::views::{MessageView, Page};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_shared::catalogue::Catalogue;
use sluice_shared::settings::is_model_name;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const CONTENT_MAX_CHARS: usize = 32_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct NewMessage {
    /// 1 to 32 000 characters, not blank.
    pub content: String,
    /// One of the user's prompt templates, sent as the system instruction.
    #[schema(value_type = Option<Uuid>)]
    pub template_id: Option<String>,
    /// One of the configured models; the default model when absent.
    pub model: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Posted {
    pub user_message: MessageView,
    pub assistant_message: MessageView,
}

pub(super) fn validate_content(content: &str) -> Result<(), ApiError> {
    let chars = content.chars().count();
    if chars == 0 || content.trim().is_empty() || chars > CONTENT_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_content",
            format!("`content` must be 1 to {CONTENT_MAX_CHARS} characters and not blank"),
        ));
    }
    Ok(())
}

/// Posts a message: the answer is 202 with the user message and the pending reply; poll the
/// chat's messages (or the reply) until the reply is `completed` or `failed`.
#[utoipa::path(post,
    path = "/api/chats/{id}/messages",
    operation_id = "post_message", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters, one per send: a repeat within 24 h answers the first 202 body and posts nothing"),
    ),
    request_body = NewMessage,
    responses(
        (status = 202, description = "Accepted; the reply is pending", body = Posted),
        (status = 400, description = "A malformed `Idempotency-Key` (`invalid_idempotency_key`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `template_not_found`", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still being processed (`idempotency_key_in_use`)", body = ErrorBody),
        (status = 413, description = "With its history and template the request is too large (`message_too_large`)", body = ErrorBody),
        (status = 422, description = "`invalid_content`, `invalid_model`, `unknown_model`, or `idempotency_key_reused` (the key came with a different request)", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`, naming it in `limit`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable, or the server is busy or stopping (`busy`, with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    AppJson(input): AppJson<NewMessage>,
) -> Result<Response, ApiError> {
    let chat_id = parse_id(&chat_id, "chat")?;
    let keyed = Keyed::new(
        user,
        key,
        &(
            "post_message",
            chat_id,
            &input.content,
            &input.template_id,
            &input.model,
        ),
    );
    // A repeat is answered before anything else, limits included: it costs nothing.
    if let Some(keyed) = &keyed
        && let Some(first) = keyed.replay(&state).await?
    {
        return Ok(first);
    }
    let (question, reply, request, body) =
        new_exchange(&state, user, chat_id, input, None, HistoryEnd::Now).await?;
    let post = NewPost {
        question,
        reply,
        request,
        idempotency: keyed.as_ref().map(|k| k.record(body.clone())),
    };
    match commit(&state, post).await {
        Ok(()) => Ok(accepted(body)),
        Err(Committed::KeyTaken) => match &keyed {
            Some(keyed) => keyed.lost_race(&state).await,
            None => Err(ApiError::Internal(
                "a unique violation without a key".into(),
            )),
        },
        Err(Committed::Refused(e)) => Err(e),
    }
}

/// What a post and an edit share, in their order: the content, model and template checked,
/// the question (hung on `parent` for an edit; a post's is found under the chat's lock) and
/// its pending reply, the request built on the
/// branch that ends at `end`, the user's limits spent (only by what would otherwise be
/// accepted: a 404 or a 422 costs nothing), and the 202's body.
pub(super) async fn new_exchange(
    state: &AppState,
    user: Uuid,
    chat_id: Uuid,
    input: NewMessage,
    parent: Option<Uuid>,
    end: HistoryEnd,
) -> Result<(Message, Message, OutboxRow, String), ApiError> {
    validate_content(&input.content)?;
    let model = chosen_model(&state.catalogue, input.model)?;
    let (template_id, system) = match input.template_id {
        Some(raw) => template(state, user, &raw).await?,
        None => (None, None),
    };
    let (mut question, reply) = exchange(chat_id, input.content, model.clone(), template_id);
    question.parent_id = parent;
    let ask = Ask {
        chat_id,
        request_id: reply.id,
        generation: reply.generation,
        model,
        system,
        question: Question::New(question.content.clone()),
        enqueued_at: question.created_at,
    };
    let request = request_for(state, user, ask, end).await?;
    state.limits.admit_message(user).await?;
    let body = serde_json::to_string(&Posted {
        user_message: question.clone().into(),
        assistant_message: reply.clone().into(),
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((question, reply, request, body))
}

/// The model asked for, or the default; it must be in the catalogue, which says who serves it.
pub(super) fn chosen_model(
    catalogue: &Catalogue,
    asked: Option<String>,
) -> Result<String, ApiError> {
    let model = match asked {
        Some(m) if !is_model_name(&m) => {
            return Err(ApiError::unprocessable(
                "invalid_model",
                "`model` may hold letters, digits, '.', '-' and '_' only",
            ));
        }
        Some(m) => m,
        None => catalogue.default_model().to_owned(),
    };
    if !catalogue.contains(&model) {
        return Err(unknown_model(catalogue));
    }
    Ok(model)
}

/// The user's template `raw` names: its id and body (the system instruction).
pub(super) async fn template(
    state: &AppState,
    user: Uuid,
    raw: &str,
) -> Result<(Option<Uuid>, Option<String>), ApiError> {
    let id = parse_id(raw, "template")?;
    let template = state
        .store
        .owned_template(user, id)
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok((Some(id), Some(template.body)))
}

/// The request of a post (or an edit, or a new answer), built on the branch that ends at
/// `end`; one query proves the chat is the user's and reads that history.
pub(super) async fn request_for(
    state: &AppState,
    user: Uuid,
    ask: Ask,
    end: HistoryEnd,
) -> Result<OutboxRow, ApiError> {
    let limit = request::history_limit(&state.settings, &ask.question);
    let history = state
        .store
        .history(ask.chat_id, Some(user), end, limit)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    request::build(&state.settings, ask, history).map_err(|e| match e {
        BuildError::TooLarge { size, max } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "with its template and history the request would be {size} bytes; \
                 at most {max} are allowed"
            ),
        ),
        e @ (BuildError::NoQuestion | BuildError::Encode(_)) => ApiError::Internal(e.to_string()),
    })
}

/// Why a post did not commit.
enum Committed {
    /// Its idempotency key was stored by a concurrent repeat first.
    KeyTaken,
    Refused(ApiError),
}

/// Hands the post to the group-commit writer and waits for its commit.
async fn commit(state: &AppState, post: NewPost) -> Result<(), Committed> {
    let keyed = post.idempotency.is_some();
    match state.posts.write(post).await {
        Ok(()) => Ok(()),
        // The chat was deleted between the history read and the commit.
        Err(PostError::Store(e)) if e.is_foreign_key_violation() => {
            Err(Committed::Refused(ApiError::not_found("chat")))
        }
        // Message and outbox ids are fresh: only the key can be taken.
        Err(PostError::Store(e)) if keyed && e.is_unique_violation() => Err(Committed::KeyTaken),
        Err(PostError::Store(e)) => Err(Committed::Refused(e.into())),
        Err(PostError::Stopped) => Err(Committed::Refused(ApiError::busy(
            "the server is shutting down",
            1,
        ))),
    }
}

/// 422 naming every model users may ask for.
pub(crate) fn unknown_model(catalogue: &Catalogue) -> ApiError {
    let names: Vec<&str> = catalogue.models().map(|m| m.name.as_str()).collect();
    ApiError::unprocessable(
        "unknown_model",
        format!("`model` must be one of: {}", names.join(", ")),
    )
}

/// The entity tag of what `scope` names in `chat` as it is now: every change to the chat's
/// messages bumps its version, and the scope (the query, or the message) is part of the tag,
/// so two different reads of one chat never share one.
fn etag(chat: &Chat, scope: &str) -> String {
    let digest = Sha256::new()
        .chain_update(chat.id.as_bytes())
        .chain_update(scope.as_bytes())
        .finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{}-{hex}\"", chat.version)
}

/// Whether `If-None-Match` names `tag` (weak comparison, as RFC 9110 asks for this header).
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

/// A 304 for `tag` when the client has it already, else `body` with the tag.
fn conditional<T: Serialize>(
    headers: &HeaderMap,
    tag: String,
    body: impl FnOnce() -> T,
) -> Response {
    let value = HeaderValue::from_str(&tag).ok();
    let mut response = if not_modified(headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body()).into_response()
    };
    let headers = response.headers_mut();
    if let Some(value) = value {
        headers.insert(header::ETAG, value);
    }
    // Browsers may keep it, but must ask again before using it.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

/// The chat's messages, oldest first, a user message always before its reply. A page holds up
/// to `limit` messages and about `http.max_page_bytes` (1 MiB) of them: it may end early, and
/// `next` continues; it always holds at least one message, however large. Conditional: send
/// the last `ETag` as `If-None-Match` and an unchanged chat answers 304.
#[utoipa::path(get,
    path = "/api/chats/{id}/messages",
    operation_id = "list_messages", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat"), PageQuery, ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier read: if the chat has not changed since, the answer is 304 with no body")),
    responses(
        (status = 200, description = "One page", body = Page<MessageView>, headers(("ETag" = String, description = "Changes whenever the chat's messages change"), ("Cache-Control" = String, description = "`private, no-cache`"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "The same tag"))),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 422, description = "`invalid_limit` or `invalid_cursor`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = query.page()?;
    // The chat (and its version) is read before the messages: a change committed in between
    // makes the tag older than the page, never newer, so the next poll fetches it.
    let chat = owned_chat(&state.store, user, &chat_id).await?;
    let max_bytes = state.settings.http.max_page_bytes;
    // The byte bound shapes the page too: replicas configured apart never share a tag.
    let scope = format!(
        "list:{}:{}:{max_bytes}",
        page.after.map(|c| c.encode()).unwrap_or_default(),
        page.limit
    );
    let tag = etag(&chat, &scope);
    if not_modified(&headers, &tag) {
        return Ok(conditional(&headers, tag, || ()));
    }
    let rows = state.store.messages_page(chat.id, page, max_bytes).await?;
    Ok(conditional(&headers, tag, || Page::<MessageView>::of(rows)))
}

/// One message, conditional like the list.
#[utoipa::path(get,
    path = "/api/chats/{id}/messages/{message_id}",
    operation_id = "show_message", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The message"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier read: if the chat has not changed since, the answer is 304 with no body"),
    ),
    responses(
        (status = 200, description = "The message", body = MessageView, headers(("ETag" = String, description = "Changes whenever the chat's messages change"), ("Cache-Control" = String, description = "`private, no-cache`"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "The same tag"))),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path((chat_id, message_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let chat = owned_chat(&state.store, user, &chat_id).await?;
    let id = parse_id(&message_id, "message")?;
    let tag = etag(&chat, &format!("message:{id}"));
    if not_modified(&headers, &tag) {
        return Ok(conditional(&headers, tag, || ()));
    }
    let message = state
        .store
        .message(chat.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(conditional(&headers, tag, || MessageView::from(message)))
}

/// Deletes a message and everything below it on its branch (and on the branches that grew
/// from those), stopping the removed replies still pending as the cancel endpoint does. A chat
/// that showed a removed message then shows the newest branch beside it, or the branch above.
#[utoipa::path(delete,
    path = "/api/chats/{id}/messages/{message_id}",
    operation_id = "delete_message", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        ("message_id" = Uuid, Path, description = "The message"),
    ),
    responses(
        (status = 204, description = "Deleted, with everything below it"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`chat_not_found` or `message_not_found`", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn remove(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((chat_id, message_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let chat = owned_chat(&state.store, user, &chat_id).await?;
    let id = parse_id(&message_id, "message")?;
    state.limits.admit_action(user).await?;
    let removed = state
        .store
        .delete_message(chat.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    for reply in removed.iter().filter(|r| r.status == Status::Pending) {
        tracing::info!(request = %reply.id, generation = reply.generation, "pending reply deleted by its user");
        state
            .stops
            .generations_below(reply.id, reply.generation.saturating_add(1))
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::paging::now_micros;

    fn chat(version: i64) -> Chat {
        Chat {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            title: String::new(),
            created_at: now_micros(),
            version,
            current_leaf: None,
            forked: false,
        }
    }

    #[test]
    fn tags_change_with_the_version_and_the_query() {
        let a = etag(&chat(1), "list::50");
        assert_eq!(a, etag(&chat(1), "list::50"));
        assert_ne!(a, etag(&chat(2), "list::50"));
        assert_ne!(a, etag(&chat(1), "list::10"));
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = etag(&chat(3), "x");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
            not_modified(&h, &tag)
        };
        assert!(with(&tag));
        assert!(with(&format!("\"other\", W/{tag}")));
        assert!(with("*"));
        assert!(!with("\"other\""));
        assert!(!not_modified(&HeaderMap::new(), &tag));
    }
}
