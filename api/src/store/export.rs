//! What an export reads, a bounded page at a time: every message of a chat (all branches, in
//! time order), a user's templates and usage records.

use super::entities::{messages, prompt_templates};
use super::paging::{Direction, PageRequest, paged};
use super::{Message, Store, StoreError, Template};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, Statement};
use uuid::Uuid;

/// One recorded provider call of the user's, as an export shows it (its row id, which only
/// pages the reads, is left out).
#[derive(Debug, Clone, FromQueryResult, serde::Serialize, utoipa::ToSchema)]
pub struct UsageRecord {
    #[serde(skip)]
    pub id: i64,
    pub request_id: Option<Uuid>,
    pub generation: i32,
    pub attempt: i32,
    pub model: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    /// The provider reported no usage (a cut stream): the tokens are estimated.
    pub usage_estimated: bool,
    pub cost_nano_usd: i64,
    pub outcome: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Up to `limit` messages of `chat`, every branch, oldest first, after `page.after`.
    pub async fn chat_messages(
        &self,
        chat: Uuid,
        page: PageRequest,
    ) -> Result<super::paging::Page<Message>, StoreError> {
        Ok(paged(
            &self.db,
            messages::Entity::find().filter(messages::Column::ChatId.eq(chat)),
            (messages::Column::CreatedAt, messages::Column::Id),
            Direction::OldestFirst,
            page,
            |m| super::paging::Cursor {
                created_at: m.created_at,
                id: m.id,
            },
        )
        .await?)
    }

    /// The user's templates, oldest first, a page at a time.
    pub async fn templates_page(
        &self,
        user: Uuid,
        page: PageRequest,
    ) -> Result<super::paging::Page<Template>, StoreError> {
        Ok(paged(
            &self.db,
            prompt_templates::Entity::find().filter(prompt_templates::Column::UserId.eq(user)),
            (
                prompt_templates::Column::CreatedAt,
                prompt_templates::Column::Id,
            ),
            Direction::OldestFirst,
            page,
            |t| super::paging::Cursor {
                created_at: t.created_at,
                id: t.id,
            },
        )
        .await?)
    }

    /// Up to `limit` of the user's usage records after `after` (the last one of the previous
    /// page), oldest first: keyed by `(created_at, id)`, so the user's index serves each page.
    pub async fn usage_records(
        &self,
        user: Uuid,
        after: Option<&UsageRecord>,
        limit: u64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(
            UsageRecord::find_by_statement(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, request_id, generation, attempt, model, prompt_tokens, \
                 completion_tokens, usage_estimated, cost_nano_usd, outcome, created_at \
             FROM usage_records WHERE user_id = $1 \
             AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) \
             ORDER BY created_at, id LIMIT $4",
                [
                    user.into(),
                    after.map(|r| r.created_at).into(),
                    after.map_or(0, |r| r.id).into(),
                    limit.into(),
                ],
            ))
            .all(&self.db)
            .await?,
        )
    }
}
