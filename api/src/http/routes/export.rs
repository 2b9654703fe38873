//! Taking data out: `GET /api/chats/{id}/export` (a chat as Markdown or JSON) and
//! `GET /api/me/export` (the whole account as one JSON document), each a file download written
//! while it is sent (see `crate::export`).

use super::chats::owned_chat;
use crate::export::{self, Chunks, ExportedChat, ExportedMessage, Owner};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppQuery, AuthUser};
use crate::http::sessions::account_gone;
use crate::store::export::UsageRecord;
use crate::views::TemplateView;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export_chat))
        .routes(routes!(export_me))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Format {
    /// `markdown` (the branch the chat shows) or `json` (every branch; the default).
    format: Option<String>,
}

/// The shape of a chat's JSON export (documentation only: the body is written as it is sent).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct ChatExport {
    /// `sluice.chat.v1`
    format: String,
    exported_at: chrono::DateTime<chrono::Utc>,
    chat: ExportedChat,
    /// Every message of every branch, oldest first; `parent_id` links them into branches.
    messages: Vec<ExportedMessage>,
}

/// The shape of an account's JSON export (documentation only).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct AccountExport {
    /// `sluice.account.v1`
    format: String,
    exported_at: chrono::DateTime<chrono::Utc>,
    user: serde_json::Value,
    templates: Vec<TemplateView>,
    /// Every recorded provider call, oldest first.
    usage: Vec<UsageRecord>,
    /// Newest chat first, each `{"chat": …, "messages": […]}` as a chat's export has them.
    chats: Vec<serde_json::Value>,
}

/// A download of `chunks`, logged if the database fails part-way (the client then sees a cut
/// file: its last chunk never came).
fn download(chunks: Chunks, content_type: &'static str, filename: &str) -> Response {
    let body = Body::from_stream(chunks.inspect_err(|e| {
        tracing::warn!(error = %e, "an export failed part-way");
    }));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One chat as a file: `format=json` (the default) holds every message of every branch with
/// its `parent_id`, and every field the API shows of each; `format=markdown` is the branch the
/// chat shows, for reading.
#[utoipa::path(get,
    path = "/api/chats/{id}/export",
    operation_id = "export_chat", tag = "chats", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The chat"), Format),
    responses(
        (status = 200, description = "The file (`Content-Disposition: attachment`)", body = ChatExport, content_type = "application/json"),
        (status = 200, description = "The branch shown, as Markdown", body = String, content_type = "text/markdown"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 422, description = "`format` is neither `markdown` nor `json` (`invalid_format`)", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn export_chat(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(chat_id): Path<String>,
    AppQuery(query): AppQuery<Format>,
) -> Result<Response, ApiError> {
    let chat = owned_chat(&state.store, user, &chat_id).await?;
    let markdown = match query.format.as_deref() {
        None | Some("json") => false,
        Some("markdown") => true,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_format",
                "`format` must be `markdown` or `json`",
            ));
        }
    };
    state.limits.admit_action(user).await?;
    let store = state.store.clone();
    Ok(if markdown {
        download(
            export::chat_markdown(store, &chat),
            "text/markdown; charset=utf-8",
            &format!("chat-{}.md", chat.id),
        )
    } else {
        download(
            export::chat_json(store, &chat).map_err(|e| ApiError::Internal(e.to_string()))?,
            "application/json",
            &format!("chat-{}.json", chat.id),
        )
    })
}

/// Everything of the signed-in user's as one JSON file: the account, prompt templates, every
/// recorded provider call, and every chat with every message of every branch. Written while it
/// is sent, a page at a time, however large the account.
#[utoipa::path(get,
    path = "/api/me/export",
    operation_id = "export_me", tag = "me", security(("bearer" = [])),
    responses(
        (status = 200, description = "The file (`Content-Disposition: attachment`)", body = AccountExport),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Over one of the user's limits (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn export_me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, ApiError> {
    let account = state.store.user(user).await?.ok_or_else(account_gone)?;
    state.limits.admit_action(user).await?;
    let owner = Owner {
        id: account.id,
        email: account.email,
        created_at: account.created_at,
    };
    let chunks = export::account_json(state.store.clone(), &owner)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(download(
        chunks,
        "application/json",
        &format!(
            "sluice-export-{}.json",
            chrono::Utc::now().format("%Y-%m-%d")
        ),
    ))
}
