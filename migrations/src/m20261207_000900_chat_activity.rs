//! `chats.updated_at`: when a message of the chat was last created or changed, set by every
//! statement that bumps `version`, and indexed for retention's idle-chat scan. Existing chats
//! start at the upgrade (a constant default rewrites nothing), so none is deleted as idle
//! earlier than `retention.chat_idle_days` after it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE chats ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(); \
                 CREATE INDEX chats_by_activity ON chats (updated_at);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS chats_by_activity; \
                 ALTER TABLE chats DROP COLUMN IF EXISTS updated_at;",
            )
            .await?;
        Ok(())
    }
}
