//! `usage_records`: one row per counted provider call — what it spent (reported, or estimated
//! when the provider reported nothing) and what that cost at the catalogue's prices when the
//! answer was stored, in nano-dollars. Not deleted with a chat; deleting an account clears the
//! row's user and request, so the totals stay and nothing points at the person.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE usage_records ( \
                     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                     user_id uuid, \
                     request_id uuid, \
                     generation int NOT NULL, \
                     attempt int NOT NULL, \
                     model text NOT NULL, \
                     key_alias text NOT NULL, \
                     prompt_tokens int NOT NULL, \
                     completion_tokens int NOT NULL, \
                     usage_estimated boolean NOT NULL, \
                     cost_nano_usd bigint NOT NULL, \
                     outcome text NOT NULL, \
                     created_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE UNIQUE INDEX usage_records_per_call \
                     ON usage_records (request_id, generation, attempt); \
                 CREATE INDEX usage_records_by_user ON usage_records (user_id, created_at); \
                 CREATE INDEX usage_records_by_time ON usage_records (created_at);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS usage_records;")
            .await?;
        Ok(())
    }
}
