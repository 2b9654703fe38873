//! Counting a user's replies in flight (`users.max_pending`) at every post: a partial index on
//! the pending rows by chat, so the count touches only the few pending rows of their chats.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX messages_pending_by_chat ON messages (chat_id) \
                 WHERE status = 'pending'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_pending_by_chat")
            .await?;
        Ok(())
    }
}
