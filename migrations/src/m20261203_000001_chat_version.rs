//! `chats.version`: a counter bumped by every statement that changes one of the chat's
//! messages, so a poll can be answered `304 Not Modified` from the chat row alone. Adding a
//! column with a constant default rewrites nothing (PostgreSQL 11 and later).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE chats ADD COLUMN version bigint NOT NULL DEFAULT 0")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE chats DROP COLUMN IF EXISTS version")
            .await?;
        Ok(())
    }
}
