//! `idempotency_keys`: the first answer to a message post or retry sent with an
//! `Idempotency-Key`, written in the same transaction as the post, so a repeat within 24 h
//! gets that answer instead of a second post. Old rows are deleted by the API's reaper.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE idempotency_keys ( \
                     user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE, \
                     key          text NOT NULL, \
                     request_hash text NOT NULL, \
                     response     text NOT NULL, \
                     created_at   timestamptz NOT NULL DEFAULT now(), \
                     PRIMARY KEY (user_id, key)); \
                 CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS idempotency_keys")
            .await?;
        Ok(())
    }
}
