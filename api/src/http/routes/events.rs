//! A chat's live events as server-sent events (`GET /api/chats/{id}/events`), and the short-lived
//! token that opens them for `EventSource`, which cannot send headers
//! (`POST /api/chats/{id}/events/token`, passed as `?token=`). The stream is served outside the
//! whole-request timeout (see [`crate::http::app`]) and ends on shutdown.

use super::chats::owned_chat;
use crate::http::AppState;
use crate::http::auth;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppQuery, SignedIn, bearer_token, parse_id};
use crate::live::watcher::{EventId, Watcher};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The token route (a REST route like any other).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(token))
}

/// The event stream itself, which must not get the whole-request timeout.
pub fn streams() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Serialize, ToSchema)]
struct EventsToken {
    /// Pass as `?token=` to `GET /api/chats/{id}/events`; good for this chat only.
    token: String,
    /// Seconds it stays valid.
    expires_in: u64,
}

/// A token that opens this chat's event stream for `stream.token_ttl_secs` (60 s): for
/// `EventSource`, which cannot send an `Authorization` header. It is good for nothing else.
#[utoipa::path(post,
    path = "/api/chats/{id}/events/token",
    operation_id = "events_token", tag = "chats", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The chat")),
    responses(
        (status = 200, description = "The token", body = EventsToken),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn token(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    Path(chat_id): Path<String>,
) -> Result<Json<EventsToken>, ApiError> {
    let chat = owned_chat(&state.store, session.user, &chat_id).await?;
    let ttl = state.settings.stream.token_ttl.as_secs();
    let token = auth::issue_events_token(
        state.settings.auth.jwt_secret.expose(),
        &session,
        chat.id,
        ttl,
    )?;
    Ok(Json(EventsToken {
        token,
        expires_in: ttl,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// An event-stream token, instead of the `Authorization` header. Never logged.
    token: Option<String>,
}

/// The chat's live events as `text/event-stream`. Each event has an `id:`
/// (`{message_id}:{generation}:{attempt}:{seq}`) and JSON `data:`: `message.created`,
/// `message.completed` and `message.failed` carry the message as the REST API shows it;
/// `message.delta` and `message.snapshot` carry `{message_id, generation, attempt, seq, text}`
/// (a delta appends, a snapshot replaces); `message.reset` carries `{message_id, generation,
/// attempt}` (drop the partial text). Send `Last-Event-ID` when reconnecting, to any replica:
/// a finished reply comes as its final message, one in progress as a snapshot. Comment lines
/// keep an idle stream open; a client too slow to read is disconnected. A user may have
/// `stream.max_per_user` (8) streams open across every replica.
#[utoipa::path(get,
    path = "/api/chats/{id}/events",
    operation_id = "chat_events", tag = "chats", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The chat"),
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event received, when reconnecting"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "`Last-Event-ID` is not an id this API sent (`invalid_last_event_id`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token or event-stream token for this chat", body = ErrorBody),
        (status = 404, description = "No such chat of this user's (`chat_not_found`)", body = ErrorBody),
        (status = 429, description = "Too many event streams open (`rate_limited`, limit `streams_per_user`: `stream.max_per_user` across the fleet, or `streams_per_process`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn events(
    State(state): State<AppState>,
    Path(chat_id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let secret = state.settings.auth.jwt_secret.expose();
    let session = match (bearer_token(&headers), query.token.as_deref()) {
        (Some(bearer), _) => auth::verify_token(secret, bearer)?,
        (None, Some(token)) => {
            let (session, chat) = auth::verify_events_token(secret, token)?;
            // A token of another chat is as good as none, whoever owns that chat.
            if parse_id(&chat_id, "chat").ok() != Some(chat) {
                return Err(ApiError::unauthorized(
                    "invalid_token",
                    "the token is not valid for this chat",
                ));
            }
            session
        }
        (None, None) => {
            return Err(ApiError::unauthorized(
                "unauthorized",
                "send Authorization: Bearer <token>, or ?token= from POST /api/chats/{id}/events/token",
            ));
        }
    };
    state.sessions.check(&session).await?;
    let chat = owned_chat(&state.store, session.user, &chat_id).await?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(raw) => Some(
            raw.to_str()
                .ok()
                .and_then(|s| s.parse::<EventId>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_last_event_id",
                        "`Last-Event-ID` is not an event id this API sent",
                    )
                })?,
        ),
    };
    let stream_settings = &state.settings.stream;
    let gap = stream_settings.gap_timeout;
    let heartbeat = stream_settings.heartbeat.max(Duration::from_millis(1));
    // Held as long as the stream is open: the per-process and per-user caps.
    let pass = state.limits.admit_stream(session.user).await?;
    // Bound before anything is read, so nothing committed or published from here on is missed.
    let watch = state.hub.watch(chat.id).await;
    let watcher = Watcher::start(chat.id, watch, state.store.clone(), gap, resume).await?;
    let refresh = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let events = futures_util::stream::unfold(
        (watcher, pass, refresh),
        |(mut watcher, pass, mut refresh)| async move {
            let event = {
                // One `next` kept across refreshes, so no event is lost to a cancelled poll.
                let next = watcher.next();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        event = &mut next => break event,
                        _ = refresh.tick() => pass.refresh().await,
                    }
                }
            }?;
            Some((Ok::<_, Infallible>(event), (watcher, pass, refresh)))
        },
    )
    // A stream ends within a heartbeat of its session ending (sign-out, password change,
    // suspension, deletion).
    .take_until(state.sessions.clone().until_ended(session, heartbeat));
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    // Proxies that buffer by default (nginx) pass this response on at once.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}
