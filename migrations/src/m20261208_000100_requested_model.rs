//! `messages.requested_model`: the model a reply was asked of. `model` becomes the model that
//! answered it (or was tried last), which differs after a fallback; a retry or a replay asks
//! the requested one again. Rows from before are left NULL and read as their `model`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE messages ADD COLUMN requested_model text;")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE messages DROP COLUMN IF EXISTS requested_model;")
            .await?;
        Ok(())
    }
}
