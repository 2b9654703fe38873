//! Operators' endpoints (admin token): list dead letters and replay them.

use super::paging::PageQuery;
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Admin, AppJson, AppQuery};
use crate::messaging::request::{self, Question};
use crate::store::DeadLetterRow;
use crate::store::dead_letters::DeadLetterFilter;
use crate::store::replies::{Restart, RestartOf};
use crate::views::Page;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// At most this many dead letters are replayed by one call without `ids`.
const REPLAY_ALL_MAX: u64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
}

#[derive(Debug, Serialize, ToSchema)]
struct DeadLetterView {
    id: Uuid,
    request_id: Option<Uuid>,
    generation: Option<i32>,
    chat_id: Option<Uuid>,
    reason: String,
    attempts: i32,
    last_error: Option<String>,
    /// The AMQP headers the message died with.
    #[schema(value_type = Object)]
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

impl From<DeadLetterRow> for DeadLetterView {
    fn from(m: DeadLetterRow) -> Self {
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DlqQuery {
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// Items per page, 1 to 100 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Only dead letters of this reason.
    reason: Option<String>,
    #[param(value_type = Option<Uuid>)]
    chat_id: Option<String>,
    #[param(value_type = Option<Uuid>)]
    request_id: Option<String>,
    /// `true` or `false`.
    #[param(value_type = Option<bool>)]
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
#[utoipa::path(get,
    path = "/api/admin/dlq",
    operation_id = "list_dead_letters", tag = "admin", security(("admin" = [])),
    params(DlqQuery),
    responses(
        (status = 200, description = "One page", body = Page<DeadLetterView>),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 422, description = "`invalid_limit`, `invalid_cursor` or `invalid_filter`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<DlqQuery>,
) -> Result<Json<Page<DeadLetterView>>, ApiError> {
    // Taken apart by hand: serde's `flatten` turns every query value into a string.
    let page = PageQuery {
        after: query.after.clone(),
        limit: query.limit.clone(),
    }
    .page()?;
    let filter = DeadLetterFilter {
        reason: query.reason.clone(),
        chat_id: uuid_filter(&query.chat_id, "chat_id")?,
        request_id: uuid_filter(&query.request_id, "request_id")?,
        replayed: match query.replayed.as_deref() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => {
                return Err(ApiError::unprocessable(
                    "invalid_filter",
                    "`replayed` must be true or false",
                ));
            }
            None => None,
        },
    };
    let rows = state.store.dead_letters_page(&filter, page).await?;
    Ok(Json(Page::of(rows)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
struct ReplayRequest {
    /// The dead letters to replay; absent means every one not yet replayed (up to 1000).
    ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Skipped {
    id: Uuid,
    /// Why it was not replayed, e.g. `already_replayed`, `unknown_model`.
    reason: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
struct ReplayReport {
    replayed: Vec<Uuid>,
    skipped: Vec<Skipped>,
}

/// Sends dead letters back through the outbox: the reply goes back to `pending` with
/// `generation + 1` (so a late answer of the old generation changes nothing) and the attempt
/// count starts again. Without `ids`, every dead letter not yet replayed.
#[utoipa::path(post,
    path = "/api/admin/dlq/replay",
    operation_id = "replay_dead_letters", tag = "admin", security(("admin" = [])),
    request_body(content = Option<ReplayRequest>, description = "Optional"),
    responses(
        (status = 200, description = "What was replayed and what was skipped", body = ReplayReport),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 422, description = "The body is invalid", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
async fn replay(
    State(state): State<AppState>,
    _: Admin,
    body: Option<AppJson<ReplayRequest>>,
) -> Result<Json<ReplayReport>, ApiError> {
    let ids = match body.and_then(|AppJson(b)| b.ids) {
        Some(ids) => ids,
        None => state.store.replayable_dead_letters(REPLAY_ALL_MAX).await?,
    };
    let mut report = ReplayReport {
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    let limit = request::history_limit(&state.settings, &Question::Stored);
    for id in ids {
        let settings = &state.settings;
        let restart = state
            .store
            .restart(RestartOf::DeadLetter(id), limit, |r| {
                request::rebuild(settings, &state.catalogue, r)
            })
            .await?;
        match restart {
            Restart::Done { reply, request } => {
                tracing::info!(dead_letter = %id, request = %reply.id, generation = reply.generation, "replayed");
                state
                    .stops
                    .generations_below(reply.id, reply.generation)
                    .await;
                state.handoff.hand_over(vec![request]);
                report.replayed.push(id);
            }
            Restart::Skipped(reason) => report.skipped.push(Skipped {
                id,
                reason: reason.as_str(),
            }),
        }
    }
    Ok(Json(report))
}
