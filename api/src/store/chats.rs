//! Chats, and [`touch`]: the lock every change to a chat's messages takes first, which also
//! bumps the chat's `version` (the `ETag` of its message lists) and `updated_at` (when it was
//! last active, for retention).

use super::entities::chats;
use super::paging::{Cursor, Direction, Page, PageRequest, paged};
use super::users::{Capped, Owned, capped_insert};
use super::{Chat, Store, StoreError};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    Statement, TransactionTrait,
};
use uuid::Uuid;

/// The title of a chat created without one, until its first message names it.
pub const DEFAULT_TITLE: &str = "New chat";

/// Locks the chats in id order and bumps their versions and activity times. Every transaction
/// that changes messages calls this before touching them (see the module docs of `store`): a
/// fixed order means two writers never wait for each other in a cycle.
pub(crate) async fn touch(db: &impl ConnectionTrait, chat_ids: &[Uuid]) -> Result<(), DbErr> {
    if chat_ids.is_empty() {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH locked AS ( \
             SELECT id FROM chats WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE chats AS c SET version = c.version + 1, updated_at = now() \
         FROM locked WHERE c.id = locked.id",
        [chat_ids.to_vec().into()],
    ))
    .await?;
    Ok(())
}

impl Store {
    /// Creates the chat unless its user already has `max` chats (0: no cap).
    pub async fn create_chat(&self, chat: &Chat, max: u32) -> Result<Capped, StoreError> {
        let model = chats::ActiveModel {
            id: Set(chat.id),
            user_id: Set(chat.user_id),
            title: Set(chat.title.clone()),
            created_at: Set(chat.created_at),
            version: Set(chat.version),
            current_leaf: Set(chat.current_leaf),
            forked: Set(chat.forked),
        };
        capped_insert(self, chat.user_id, Owned::Chats, max, async move |txn| {
            chats::Entity::insert(model)
                .exec_without_returning(txn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The chat if it exists and belongs to `user`.
    pub async fn owned_chat(&self, user: Uuid, id: Uuid) -> Result<Option<Chat>, StoreError> {
        Ok(chats::Entity::find_by_id(id)
            .filter(chats::Column::UserId.eq(user))
            .one(&self.db)
            .await?)
    }

    /// Deletes the user's chat and, by cascade, its messages, and its dead letters with it;
    /// `false` when there was no such chat of the user's. Taking the chat's row lock first
    /// keeps the lock order (chats before their messages). A reply still on its way finds no
    /// row and changes nothing.
    pub async fn delete_chat(&self, user: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let deleted = chats::Entity::delete_many()
            .filter(chats::Column::Id.eq(id))
            .filter(chats::Column::UserId.eq(user))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Ok(false);
        }
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM dead_letters WHERE chat_id = $1",
            [id.into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Gives the user's chat a new title; `None` when there is no such chat of the user's. Its
    /// version moves, as with every change a client may be polling for.
    pub async fn rename_chat(
        &self,
        user: Uuid,
        id: Uuid,
        title: &str,
    ) -> Result<Option<Chat>, StoreError> {
        Ok(chats::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE chats SET title = $3, version = version + 1, updated_at = now() \
                 WHERE id = $1 AND user_id = $2 RETURNING *",
                [id.into(), user.into(), title.into()],
            ))
            .one(&self.db)
            .await?)
    }

    /// The user's chats, newest first.
    pub async fn chats_page(
        &self,
        user: Uuid,
        page: PageRequest,
    ) -> Result<Page<Chat>, StoreError> {
        Ok(paged(
            &self.db,
            chats::Entity::find().filter(chats::Column::UserId.eq(user)),
            (chats::Column::CreatedAt, chats::Column::Id),
            Direction::NewestFirst,
            page,
            |c| Cursor {
                created_at: c.created_at,
                id: c.id,
            },
        )
        .await?)
    }
}
