//! Dead letters: recorded once per (request, generation) together with the failure of their
//! reply, listed for operators, and picked for replay (the replay itself is a restart).

use super::chats::touch;
use super::entities::dead_letters;
use super::paging::{Cursor, Direction, Page, PageRequest, paged};
use super::replies::{GiveUp, give_up};
use super::{DeadLetterRow, Store, StoreError};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};
use uuid::Uuid;

/// A dead letter as it will be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// Request, generation and chat, when the letter says (poison does not).
    pub ids: Option<(Uuid, i32, Uuid)>,
    /// Whose request it was, when the letter says (a request does; for a response the chat's
    /// owner is looked up).
    pub user_id: Option<Uuid>,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub headers: serde_json::Value,
    pub body: String,
}

/// Which dead letters to list.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterFilter {
    pub reason: Option<String>,
    pub chat_id: Option<Uuid>,
    pub request_id: Option<Uuid>,
    pub replayed: Option<bool>,
}

impl Store {
    /// Stores the letter and, when given, fails its still-pending reply, in one transaction;
    /// recording the same (request, generation) again changes nothing.
    pub async fn record_dead_letter(
        &self,
        letter: &NewDeadLetter,
        fail: Option<&GiveUp>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        if let Some(fail) = fail {
            touch(&txn, &[fail.chat_id]).await?;
        }
        let ids = letter.ids;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO dead_letters (id, request_id, generation, chat_id, reason, attempts, \
             last_error, headers, body, created_at, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), \
             COALESCE($10, (SELECT user_id FROM chats WHERE id = $4))) \
             ON CONFLICT (request_id, generation) WHERE request_id IS NOT NULL DO NOTHING",
            [
                Uuid::now_v7().into(),
                ids.map(|(request, _, _)| request).into(),
                ids.map(|(_, generation, _)| generation).into(),
                ids.map(|(_, _, chat)| chat).into(),
                letter.reason.clone().into(),
                letter.attempts.into(),
                letter.last_error.clone().into(),
                letter.headers.clone().into(),
                letter.body.clone().into(),
                letter.user_id.into(),
            ],
        ))
        .await?;
        let failed = match fail {
            Some(fail) => give_up(&txn, fail).await?,
            None => 0,
        };
        txn.commit().await?;
        if let Some(fail) = fail
            && failed > 0
        {
            self.notices.changed(fail.chat_id, vec![fail.request_id]);
        }
        Ok(())
    }

    /// Oldest first.
    pub async fn dead_letters_page(
        &self,
        filter: &DeadLetterFilter,
        page: PageRequest,
    ) -> Result<Page<DeadLetterRow>, StoreError> {
        let mut select = dead_letters::Entity::find();
        if let Some(reason) = &filter.reason {
            select = select.filter(dead_letters::Column::Reason.eq(reason.as_str()));
        }
        if let Some(chat) = filter.chat_id {
            select = select.filter(dead_letters::Column::ChatId.eq(chat));
        }
        if let Some(request) = filter.request_id {
            select = select.filter(dead_letters::Column::RequestId.eq(request));
        }
        match filter.replayed {
            Some(true) => select = select.filter(dead_letters::Column::ReplayedAt.is_not_null()),
            Some(false) => select = select.filter(dead_letters::Column::ReplayedAt.is_null()),
            None => {}
        }
        Ok(paged(
            &self.db,
            select,
            (dead_letters::Column::CreatedAt, dead_letters::Column::Id),
            Direction::OldestFirst,
            page,
            |d| Cursor {
                created_at: d.created_at,
                id: d.id,
            },
        )
        .await?)
    }

    /// The oldest dead letters not yet replayed that have a request to replay, at most `max`.
    pub async fn replayable_dead_letters(&self, max: u64) -> Result<Vec<Uuid>, StoreError> {
        Ok(dead_letters::Entity::find()
            .filter(dead_letters::Column::ReplayedAt.is_null())
            .filter(dead_letters::Column::RequestId.is_not_null())
            .order_by_asc(dead_letters::Column::CreatedAt)
            .limit(max)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect())
    }
}
