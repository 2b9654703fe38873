//! `POST /api/chats`, `GET /api/chats` (newest first, paged; with `q`, a full-text search of
//! the user's chats), `GET /api/chats/{id}`, `PATCH /api/chats/{id}` (a new title) and
//! `DELETE /api/chats/{id}` (with its messages). A user's chats are capped (`users.max_chats`).

use super::paging::PageQuery;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppJson, AppQuery, AuthUser, parse_id};
use crate::store::chats::DEFAULT_TITLE;
use crate::store::paging::now_micros;
use crate::store::search::{SearchCursor, SearchError, SearchRequest};
use crate::store::users::Capped;
use crate::store::{Chat, Store};
use crate::views::{ChatListing, ChatView, Page};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const TITLE_MAX_CHARS: usize = 200;
pub const QUERY_MAX_CHARS: usize = 200;

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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Searches the user's chats by title and message text instead of listing them: words
    /// (all must match), `"a phrase"`, `or`, `-word`; case-insensitive, no stemming. 1 to 200
    /// characters, not blank.
    q: Option<String>,
}

/// `q` checked: not blank, at most [`QUERY_MAX_CHARS`] characters.
fn query_of(raw: &str) -> Result<&str, ApiError> {
    if raw.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_query",
            "`q` must not be blank",
        ));
    }
    if raw.chars().count() > QUERY_MAX_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("`q` must be at most {QUERY_MAX_CHARS} characters"),
        ));
    }
    Ok(raw)
}

/// The user's chats, newest first; with `q`, the chats whose title or messages match it.
///
/// Search results are ranked (a title match weighs most; ties newest first) and carry a
/// `snippet` of the best matching message. A query that matches more than 500 of the user's
/// messages lists its chats newest first instead, unranked (`order` says which); such a page
/// looks through at most 100 chats, so it may hold fewer than `limit` (even none) and still
/// have a `next`. A query with no word in it (only punctuation) finds nothing.
#[utoipa::path(get,
    path = "/api/chats",
    operation_id = "list_chats", tag = "chats", security(("bearer" = [])),
    params(PageQuery, SearchQuery),
    responses(
        (status = 200, description = "One page: of chats (`Page`), or with `q` of search results (`SearchPageView`)", body = ChatListing),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "A field is invalid: `invalid_limit`, `invalid_cursor` (also a list's cursor given to a search, or the reverse), `invalid_query` (a blank `q` or one over 200 characters), `query_too_broad` (the search ran past its time; narrow it)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    AppQuery(query): AppQuery<PageQuery>,
    AppQuery(search): AppQuery<SearchQuery>,
) -> Result<Json<ChatListing>, ApiError> {
    let Some(q) = search.q else {
        let page = state.store.chats_page(user, query.page()?).await?;
        return Ok(Json(ChatListing::List(Page::of(page))));
    };
    let q = query_of(&q)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(raw) => Some(SearchCursor::decode(raw).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_cursor",
                "`after` is not a cursor this search gave out",
            )
        })?),
    };
    let page = SearchRequest {
        after,
        limit: query.limit()?,
    };
    match state.store.search_chats(user, q, page).await {
        Ok(found) => Ok(Json(ChatListing::Search(found.into()))),
        Err(SearchError::TooBroad) => {
            // The caps should keep every search far from its timeout: worth a look. Not the
            // text, which is the user's.
            tracing::warn!(%user, chars = q.chars().count(), "a search ran past its timeout");
            Err(ApiError::unprocessable(
                "query_too_broad",
                "the search took too long; add words to narrow it",
            ))
        }
        Err(SearchError::Store(e)) => Err(e.into()),
    }
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
