//! Branches: a message hangs from its `parent_id` (NULL for the first of a branch), so an edit
//! or a regenerated reply starts a new branch beside the old one instead of rewriting it, and
//! `chats.current_leaf` names the newest message of the branch the chat shows; `chats.forked`
//! says whether it ever branched (until then its branch is simply all its messages, read by
//! the time index without walking it). Chats from before become one straight branch: each
//! message hangs from the one before it in time.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE messages ADD COLUMN parent_id uuid; \
                 ALTER TABLE chats ADD COLUMN current_leaf uuid, \
                     ADD COLUMN forked boolean NOT NULL DEFAULT false; \
                 UPDATE messages AS m SET parent_id = o.before \
                 FROM (SELECT id, lag(id) OVER (PARTITION BY chat_id ORDER BY created_at, id) \
                       AS before FROM messages) AS o \
                 WHERE m.id = o.id AND o.before IS NOT NULL; \
                 UPDATE chats AS c SET current_leaf = l.id \
                 FROM (SELECT DISTINCT ON (chat_id) chat_id, id FROM messages \
                       ORDER BY chat_id, created_at DESC, id DESC) AS l \
                 WHERE c.id = l.chat_id; \
                 CREATE INDEX messages_by_parent ON messages (chat_id, parent_id);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS messages_by_parent; \
                 ALTER TABLE chats DROP COLUMN IF EXISTS current_leaf, \
                     DROP COLUMN IF EXISTS forked; \
                 ALTER TABLE messages DROP COLUMN IF EXISTS parent_id;",
            )
            .await?;
        Ok(())
    }
}
